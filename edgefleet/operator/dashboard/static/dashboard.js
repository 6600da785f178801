// edgefleet dashboard: renders each view from its /api answer and refreshes it in place.
// Every value from the API is set with textContent (never innerHTML): device reports are
// untrusted, and the Content-Security-Policy forbids inline script anyway.
"use strict";
(function () {
  const main = document.getElementById("main");
  const statusLine = document.getElementById("status");
  const every = Number(document.body.dataset.refreshMs) || 5000;
  const view = main.dataset.view;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const badge = (text, kind) => el("span", { class: "badge " + (kind || text) }, text);
  const num = (v, digits) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
  const val = (v) => (v === null || v === undefined ? "–" : String(Number(Number(v).toFixed(4))));
  const pct = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(2) + " %");
  function ago(seconds) {
    if (seconds === null || seconds === undefined) return "never";
    if (seconds < 90) return Math.round(seconds) + " s ago";
    if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
    if (seconds < 172800) return Math.round(seconds / 3600) + " h ago";
    return Math.round(seconds / 86400) + " d ago";
  }
  function fill(tbody, rows) {
    tbody.replaceChildren(...rows);
  }
  function emptyRow(cols, text) {
    return el("tr", {}, el("td", { colspan: cols }, text));
  }

  // -- fleet ----------------------------------------------------------------------------
  const params = new URLSearchParams(location.search);
  let sort = params.get("sort") || "device";
  let dir = params.get("dir") || "asc";
  let page = Number(params.get("page")) || 1;

  function fleetUrl() {
    const q = new URLSearchParams();
    const form = document.getElementById("filters");
    for (const field of form.elements) {
      if (!field.name) continue;
      if (field.type === "checkbox") { if (field.checked) q.set(field.name, "1"); }
      else if (field.value) q.set(field.name, field.value);
    }
    q.set("sort", sort); q.set("dir", dir); q.set("page", String(page));
    return q;
  }
  function setOptions(select, values) {
    const current = select.value;
    const want = ["", ...values];
    const have = [...select.options].map((o) => o.value);
    if (want.join("\n") === have.join("\n")) return;
    select.replaceChildren(...want.map((v) => el("option", { value: v }, v || "all")));
    select.value = want.includes(current) ? current : "";
  }
  function renderFleet(body) {
    const counts = body.counts;
    fill(document.getElementById("counts"), [
      el("li", {}, `${body.total} devices`),
      el("li", {}, badge("fresh"), ` ${counts.fresh}`),
      el("li", {}, badge("stale"), ` ${counts.stale}`),
      el("li", {}, badge("offline"), ` ${counts.offline}`),
      el("li", {}, `unhealthy ${counts.unhealthy}`),
      el("li", {}, `reports flagged ${counts.flagged}`),
    ]);
    setOptions(document.getElementById("f-channel"), body.channels);
    setOptions(document.getElementById("f-arch"), body.arches);
    const rows = body.devices.map((d) =>
      el("tr", { class: d.liveness, "data-device": d.id },
        el("th", { scope: "row" }, el("a", { href: "/devices/" + encodeURIComponent(d.id) }, d.id)),
        el("td", {}, d.arch),
        el("td", {}, d.channel),
        el("td", { class: "version" }, d.version || "–"),
        el("td", {}, el("code", { title: d.digests.join(", ") }, d.digest || "–")),
        el("td", { class: "health" }, d.healthy ? badge("healthy", "ok") : badge(d.health, "bad")),
        el("td", { class: "seen", title: d.lastSeen || "" },
          badge(d.liveness), " ", ago(d.ageSeconds)),
        el("td", {}, d.problems.join("; ") || "–")));
    fill(document.querySelector("#devices tbody"),
      rows.length ? rows : [emptyRow(8, "No device matches.")]);
    document.getElementById("devices-caption").textContent =
      `Devices ${body.matched ? (body.page - 1) * body.perPage + 1 : 0}–` +
      `${Math.min(body.page * body.perPage, body.matched)} of ${body.matched}` +
      (body.matched !== body.total ? ` (filtered from ${body.total})` : "");
    document.getElementById("page-info").textContent = `Page ${body.page} of ${body.pages}`;
    document.getElementById("prev").disabled = body.page <= 1;
    document.getElementById("next").disabled = body.page >= body.pages;
    for (const th of document.querySelectorAll("th[data-sort]")) {
      th.setAttribute("aria-sort", th.dataset.sort === sort ? (dir === "desc" ? "descending" : "ascending") : "none");
    }
  }
  function setupFleet() {
    const form = document.getElementById("filters");
    for (const [k, v] of params) {
      const field = form.elements.namedItem(k);
      if (!field) continue;
      if (field.type === "checkbox") field.checked = v === "1";
      else if (field.tagName === "SELECT") field.append(el("option", { value: v }, v)), (field.value = v);
      else field.value = v;
    }
    let timer = null;
    const changed = () => { page = 1; clearTimeout(timer); timer = setTimeout(refresh, 200); };
    form.addEventListener("input", changed);
    form.addEventListener("change", changed);
    form.addEventListener("submit", (e) => { e.preventDefault(); changed(); });
    for (const th of document.querySelectorAll("th[data-sort]")) {
      th.querySelector("button").addEventListener("click", () => {
        dir = sort === th.dataset.sort && dir === "asc" ? "desc" : "asc";
        sort = th.dataset.sort; refresh();
      });
    }
    document.getElementById("prev").addEventListener("click", () => { page = Math.max(1, page - 1); refresh(); });
    document.getElementById("next").addEventListener("click", () => { page += 1; refresh(); });
  }

  // -- device ---------------------------------------------------------------------------
  function renderDevice(body) {
    const d = body.device;
    const facts = [
      ["Arch", d.arch], ["Channel", d.channel], ["Version", d.version || "–"],
      ["Digests", d.digests.join(", ") || "–"], ["Images", d.images.join(", ") || "–"],
      ["Health", d.health], ["Seen", `${d.liveness}, ${ago(d.ageSeconds)} (${d.lastSeen || "never"})`],
      ["Stale after", `${Math.round(d.staleAfterSeconds)} s (its own report interval: ${d.reportInterval} s)`],
      ["Applied set", d.setSequence === null ? "–" : String(d.setSequence)],
      ["Runtime", `${d.runtime}, agent ${d.agentVersion}`],
      ["Last error", d.lastError || "–"], ["Report problems", d.flags.join("; ") || "–"],
    ];
    fill(document.getElementById("facts"), facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    fill(document.querySelector("#models tbody"), d.models.length ? d.models.map((m) =>
      el("tr", {}, el("td", {}, el("code", {}, m.digest)), el("td", {}, m.requests), el("td", {}, pct(m.errorRate)),
        el("td", {}, num(m.latencyP50Ms, 1)), el("td", {}, num(m.latencyP95Ms, 1)),
        el("td", {}, num(m.confidenceMean, 3)), el("td", {}, num(m.drift, 3)), el("td", {}, m.accelerator)))
      : [emptyRow(8, "The report carries no model summary.")]);
    fill(document.querySelector("#history tbody"), d.history.length ? d.history.map((h) =>
      el("tr", {}, el("td", {}, h.at || "–"), el("td", {}, h.channel), el("td", {}, el("code", {}, h.digest || "–")),
        el("td", {}, h.health), el("td", {}, h.setSequence === null ? "–" : String(h.setSequence))))
      : [emptyRow(5, "No change seen yet.")]);
    fill(document.querySelector("#rejections tbody"), d.rejections.length ? d.rejections.map((r) =>
      el("tr", {}, el("td", {}, r.at), el("td", {}, r.reason), el("td", {}, r.detail), el("td", {}, el("code", {}, r.set || "–"))))
      : [emptyRow(4, "No rejection reported.")]);
  }

  // -- channels -------------------------------------------------------------------------
  function renderChannels(body) {
    const table = document.getElementById("matrix");
    fill(table.querySelector("thead tr"), [el("th", { scope: "col" }, "Channel"),
      ...body.arches.map((a) => el("th", { scope: "col" }, a))]);
    const cell = (channel, arch) => body.cells.find((c) => c.channel === channel && c.arch === arch);
    fill(table.querySelector("tbody"), body.channels.length ? body.channels.map((channel) =>
      el("tr", {}, el("th", { scope: "row" }, channel), ...body.arches.map((arch) => {
        const c = cell(channel, arch);
        if (!c) return el("td", {}, "–");
        return el("td", { "data-cell": `${channel}/${arch}` },
          el("div", {}, badge(`${c.agree} of ${c.devices} agree`, c.agree === c.devices ? "ok" : "stale")),
          ...c.running.map((r) => el("div", { class: "cell-line" },
            `${r.version || "unlabelled"} `, el("code", {}, r.digest), `: ${r.devices}`)));
      })))
      : [emptyRow(1, "No device has reported yet.")]);
  }

  // -- rollouts -------------------------------------------------------------------------
  function renderRollouts(body) {
    const box = document.getElementById("rollouts");
    if (!body.rollouts.length) { fill(box, [el("p", {}, "No rollout state in the bucket (rollouts/ARCH/CHANNEL.json).")]); return; }
    fill(box, body.rollouts.map((r) => {
      const step = r.steps.length ? `step ${r.stepIndex + 1} of ${r.steps.length} (${num(r.percent, 0)} %)` : "";
      const gates = r.gates.map((g) => el("tr", { class: g.ok === false ? "failing" : "" },
        el("th", { scope: "row" }, g.metric),
        el("td", {}, `${g.op} ${g.value === null ? "?" : g.value}${g.relative ? "× baseline" : ""}`),
        el("td", {}, val(g.candidate)), el("td", {}, val(g.baseline)),
        el("td", {}, g.ok === null ? badge("pending", "hold") : g.ok ? badge("pass", "ok") : badge("fail", "bad"))));
      const history = r.history.map((h) => el("tr", {}, el("td", {}, h.at), el("td", {}, h.event),
        el("td", {}, num(h.percent, 0) + " %"), el("td", {}, h.detail)));
      return el("section", { class: "rollout", "data-rollout": `${r.arch}/${r.channel}`, "aria-label": `Rollout ${r.arch} ${r.channel}` },
        el("h2", {}, `${r.channel} · ${r.arch} `, badge(r.state)),
        el("p", { class: "verdict" }, r.verdict || "–"),
        el("dl", { class: "facts" },
          el("dt", {}, "Candidate"), el("dd", {}, el("code", {}, r.candidate.short || "–"), " ", r.candidate.image),
          el("dt", {}, "Baseline"), el("dd", {}, el("code", {}, r.baseline.short || "–"), " ", r.baseline.image),
          el("dt", {}, "Step"), el("dd", {}, `${step} of steps ${r.steps.join(", ")} %`),
          el("dt", {}, "Cohort"), el("dd", {}, `${num(r.cohort.devices, 0)} devices, ${num(r.cohort.reported, 0)} reported, ` +
            `${num(r.cohort.failures, 0)} failures; baseline ${num(r.cohort.baselineDevices, 0)} devices`),
          el("dt", {}, "Updated"), el("dd", {}, r.updatedAt || "–")),
        el("div", { class: "table-wrap" }, el("table", { class: "gates" }, el("caption", {}, "Gates: candidate vs baseline"),
          el("thead", {}, el("tr", {}, ...["Metric", "Threshold", "Candidate", "Baseline", "Result"].map((h) => el("th", { scope: "col" }, h)))),
          el("tbody", {}, gates.length ? gates : [emptyRow(5, "No gate.")]))),
        el("div", { class: "table-wrap" }, el("table", {}, el("caption", {}, "History (newest first)"),
          el("thead", {}, el("tr", {}, ...["At", "Event", "Step", "Detail"].map((h) => el("th", { scope: "col" }, h)))),
          el("tbody", {}, history.length ? history : [emptyRow(4, "No event yet.")]))));
    }));
  }

  // -- models ---------------------------------------------------------------------------
  let chartTick = 0;
  function renderModels(body) {
    fill(document.querySelector("#versions tbody"), body.models.length ? body.models.map((m) => {
      const total = Object.values(m.accelerators).reduce((a, b) => a + b, 0);
      const tpu = m.accelerators.edgetpu || 0;
      return el("tr", { "data-digest": m.digest },
        el("th", { scope: "row" }, `${m.version || "unlabelled"} `, el("code", {}, m.short)),
        el("td", {}, m.devices), el("td", {}, num(m.requestRate, 2)), el("td", {}, pct(m.errorRate)),
        el("td", {}, num(m.latencyP50Ms, 1)), el("td", {}, num(m.latencyP95Ms, 1)),
        el("td", {}, num(m.confidenceMean, 3)), el("td", {}, num(m.drift, 3)),
        el("td", {}, total ? `${Math.round((100 * tpu) / total)} % (${tpu} of ${total} devices)` : "–"));
    }) : [emptyRow(9, "No device reports a model summary yet.")]);
    chartTick += 1;
    for (const img of document.querySelectorAll("img[data-chart]")) {
      img.src = `/charts/models/${img.dataset.chart}.svg?n=${chartTick}`;
    }
  }

  // -- refresh loop ---------------------------------------------------------------------
  const views = {
    fleet: { url: () => "/api/devices?" + fleetUrl(), render: renderFleet, setup: setupFleet },
    device: { url: () => main.dataset.api, render: renderDevice },
    channels: { url: () => main.dataset.api, render: renderChannels },
    rollouts: { url: () => main.dataset.api, render: renderRollouts },
    models: { url: () => main.dataset.api, render: renderModels },
  };
  const current = views[view];
  let busy = false;

  function showStatus(s, failure) {
    statusLine.classList.toggle("error", Boolean(failure || (s && s.error)));
    if (failure) { statusLine.textContent = failure; return; }
    if (!s.ready) { statusLine.textContent = `Reading the fleet from gs://${s.bucket}…`; return; }
    const at = new Date(s.refreshedAt).toLocaleTimeString();
    statusLine.textContent = (s.error ? `Last refresh failed (${s.error}); showing data from ${at}` : `Updated ${at}`) +
      ` · ${s.devices} devices` + (s.unreadable ? ` · ${s.unreadable} unreadable reports` : "");
  }
  async function refresh() {
    if (!current || busy) return;
    busy = true;
    try {
      const url = current.url();
      if (view === "fleet") history.replaceState(null, "", "/?" + fleetUrl());
      const resp = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
      const body = await resp.json();
      if (!resp.ok) { showStatus(null, body.error || `HTTP ${resp.status}`); return; }
      current.render(body);
      showStatus(body.status);
      main.dataset.loaded = String(Number(main.dataset.loaded || 0) + 1);
    } catch (err) {
      showStatus(null, `Cannot reach the dashboard server (${err.message}); retrying`);
    } finally {
      busy = false;
    }
  }
  if (current) {
    if (current.setup) current.setup();
    refresh();
    setInterval(() => { if (!document.hidden) refresh(); }, every);
  }
})();
