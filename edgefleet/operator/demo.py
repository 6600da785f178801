"""The product's whole story on one machine, as small steps the demo, the end-to-end test
and the rollout benchmark share.

Steps: start a stack with devices (:func:`start`), "train" a model version by writing a
model package and, last, ``TRAINER-DONE`` (:func:`train`), wait for model_done_watcher's
image (:func:`wait_built`), move a channel tag (:func:`promote`), wait until every
device of the channel serves a digest (:func:`wait_serving`), ask devices what they run
(:func:`observe`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.cloud import storage
from edgefleet.core import refs
from edgefleet.core.errors import ConfigError, EdgefleetError
from edgefleet.localstack import devices as dev

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTDATA_REL = Path("..") / "shared" / "testdata" / "coral"
MODEL = "mobilenet"
IMAGE = "grace_hopper.bmp"
# (model file, expected top-1 of grace_hopper.bmp) per "trained" major version; see
# ../shared/testdata/README.md.
VERSIONS: dict[int, tuple[str, int, str]] = {
    1: ("mobilenet_v1_0.25_128_quant.tflite", 401, "academic gown"),
    2: ("mobilenet_v2_1.0_224_quant.tflite", 653, "military uniform"),
}
Say = Callable[[str], None]


class DemoError(EdgefleetError):
    """A demo step did not reach its goal in time; the message says which and why."""


def testdata_dir(root: Path = REPO_ROOT) -> Path:
    """The Coral test data next to the checkout (``../shared/testdata/coral``)."""
    path = (root / TESTDATA_REL).resolve()
    needed = [VERSIONS[1][0], VERSIONS[2][0], "imagenet_labels.txt", IMAGE]
    missing = [n for n in needed if not (path / n).is_file()]
    if missing:
        raise ConfigError(
            f"test data missing in {path}: {', '.join(missing)}; put the Coral test data "
            "(models, imagenet_labels.txt, images) in ../shared/testdata/coral"
        )
    return path


@dataclass
class Fleet:
    """A running stack with its devices, and what the steps need to reach them."""

    stack: Any  # LocalStack
    devices: list[dict[str, Any]]
    saved_env: dict[str, str | None]

    @property
    def env(self) -> dict[str, str]:
        return self.stack.env()

    @property
    def registry_host(self) -> str:
        return str(self.stack.registry.host)

    @property
    def repo(self) -> str:
        return f"{self.registry_host}/edgefleet/{MODEL}"

    def on(self, channel: str) -> list[dict[str, Any]]:
        return [d for d in self.devices if d.get("channel") == channel]

    def bucket(self, name: str) -> storage.Bucket:
        return storage.Bucket(storage.make_client(), name, timeout=30.0)

    def registry(self) -> Any:
        from edgefleet.cloud.registry import RegistryClient

        return RegistryClient(insecure=frozenset({self.registry_host}))


def start(
    workdir: Path,
    *,
    devices: int = 3,
    channels: Sequence[str] = dev.DEFAULT_DEVICE_CHANNELS,
    poll_seconds: float = dev.DEFAULT_POLL_SECONDS,
    say: Say = print,
    prefix: str = "dev",
) -> Fleet:
    """A fresh stack with functions, build service, signing and ``devices`` devices
    (anything a previous run left in ``workdir`` is stopped first)."""
    from edgefleet.localstack.stack import down

    for item in down(workdir):
        say(f"  cleaned up a previous run: {item}")
    stack = dev.launch(
        workdir,
        devices=devices,
        channels=channels,
        poll_seconds=poll_seconds,
        progress=say,
        prefix=prefix,
    )
    # This process becomes a client of the stack (storage, registry, `edgefleet status`);
    # stop() restores the environment.
    env = stack.env()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    return Fleet(stack, list(stack.devices), saved)


def ensure_base(fleet: Fleet, say: Say = print) -> str:
    """The local base image (mmdebstrap + podman import, ~25 s) unless it exists."""
    from edgefleet.packaging.base_image import ensure_base_image, tag_for

    arch = dev.host_arch()
    return ensure_base_image(
        tag_for(arch), arch=arch, env={**fleet.env}, progress=lambda m: say(f"  {m}")
    )


def version_name(major: int, trained_at: int) -> str:
    return f"{MODEL}_{major}_{trained_at}"


def train(fleet: Fleet, major: int, trained_at: int | None = None, *, data: Path) -> str:
    """Write model version ``major`` as training does: package files, then TRAINER-DONE.
    Returns the version name (``mobilenet_MAJOR_UNIXTIME``)."""
    model_file, top1, _label = VERSIONS[major]
    version = version_name(major, trained_at or int(time.time()))
    bucket = fleet.bucket(fleet.stack.config.model_bucket)
    prefix = f"{MODEL}/{version}/"
    metadata = {
        "name": MODEL,
        "version": version,
        "task": "image",
        "golden": [{"input": f"golden/{IMAGE}", "top1": top1}],
    }
    bucket.write(prefix + "model.tflite", (data / model_file).read_bytes())
    bucket.write(prefix + "labels.txt", (data / "imagenet_labels.txt").read_bytes())
    bucket.write(prefix + f"golden/{IMAGE}", (data / IMAGE).read_bytes())
    bucket.write(prefix + "metadata.json", json.dumps(metadata).encode())
    bucket.write(prefix + "TRAINER-DONE", b"")
    return version


def wait_built(fleet: Fleet, version: str, *, timeout: float = 900.0, say: Say = print) -> str:
    """The digest of ``REPO:VERSION`` once model_done_watcher pushed it."""
    from edgefleet.cloud.registry import NotFound

    ref = refs.parse(f"{fleet.repo}:{version}")
    client = fleet.registry()
    start = time.monotonic()
    last = start
    while time.monotonic() - start < timeout:
        try:
            return client.resolve(ref)
        except NotFound:
            pass
        except EdgefleetError:
            pass  # the repository does not exist yet
        if time.monotonic() - last >= 30:
            say(f"  … still building {version} ({time.monotonic() - start:.0f} s)")
            last = time.monotonic()
        time.sleep(1.0)
    log = fleet.stack.workdir / "logs" / "function-model_done_watcher.log"
    raise DemoError(f"{ref} was not pushed within {timeout:.0f} s; see {log}")


def promote(fleet: Fleet, digest: str, channel: str) -> float:
    """Point ``REPO:CHANNEL`` at ``REPO@DIGEST`` (what ``edgefleet promote`` does);
    returns the monotonic time of the tag move."""
    client = fleet.registry()
    manifest = client.get_manifest(refs.parse(f"{fleet.repo}@{digest}"))
    client.put_manifest(refs.parse(f"{fleet.repo}:{channel}"), manifest)
    return time.monotonic()


def version_of(device: Mapping[str, Any]) -> dict[str, Any] | None:
    return dev.device_json(str(device["name"]), "GET", "/version/", timeout=3.0)


def is_ready(device: Mapping[str, Any]) -> bool:
    """``/readyz`` answers 2xx: the model loaded and passed its golden self-test."""
    return dev.device_json(str(device["name"]), "GET", "/readyz", timeout=3.0) is not None


def predict_of(device: Mapping[str, Any], image: bytes) -> dict[str, Any] | None:
    return dev.device_json(
        str(device["name"]),
        "POST",
        "/predict/",
        body=image,
        headers={"Content-Type": "application/octet-stream"},
        timeout=30.0,
    )


def wait_serving(
    fleet: Fleet,
    devices: Sequence[Mapping[str, Any]],
    digest: str,
    *,
    since: float,
    timeout: float = 300.0,
    interval: float = 0.1,
) -> dict[str, float]:
    """Seconds from ``since`` until each device's ``/version/`` reports ``digest`` and its
    ``/readyz`` passes (``/version/`` answers before the golden self-test is done)."""
    done: dict[str, float] = {}
    deadline = since + timeout
    while len(done) < len(devices):
        for d in devices:
            if d["id"] in done:
                continue
            info = version_of(d)
            if info and info.get("version") == digest and is_ready(d):
                done[d["id"]] = time.monotonic() - since
        if len(done) == len(devices):
            break
        if time.monotonic() > deadline:
            waiting = [str(d["id"]) for d in devices if d["id"] not in done]
            raise DemoError(
                f"devices {', '.join(waiting)} do not serve {digest[:19]}… after "
                f"{timeout:.0f} s; see {fleet.stack.workdir}/logs/agent-ef-*.log"
            )
        time.sleep(interval)
    return done


@dataclass(frozen=True)
class Observation:
    device: str
    channel: str
    digest: str
    model_version: str
    label: str
    score: float


def observe(fleet: Fleet, image: bytes) -> list[Observation]:
    """What each device answers now: /version/ and a /predict/ of ``image``."""
    out = []
    for d in fleet.devices:
        info = version_of(d) or {}
        pred = predict_of(d, image) or {}
        out.append(
            Observation(
                device=str(d["id"]),
                channel=str(d.get("channel")),
                digest=str(info.get("version", "-")),
                model_version=str(info.get("model_version", "-")),
                label=str(pred.get("label", "-")),
                score=float(pred.get("score", 0.0) or 0.0),
            )
        )
    return out


def show(observations: Sequence[Observation], say: Say = print) -> None:
    for o in observations:
        digest = o.digest[:19] + "…" if o.digest.startswith("sha256:") else o.digest
        say(
            f"  {o.device:6} {o.channel:7} /version/ {digest:21} {o.model_version:24} "
            f"/predict/ {IMAGE}: {o.label} ({o.score:.2f})"
        )


def stop(fleet: Fleet | None, workdir: Path) -> None:
    """Tear down everything: agents, device pods and storage, namespaces, processes."""
    from edgefleet.localstack.stack import down

    if fleet is not None:
        fleet.stack.stop()
        for key, value in fleet.saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    down(workdir)


# -- the demo ---------------------------------------------------------------------------


def run(workdir: Path, *, poll_seconds: float = dev.DEFAULT_POLL_SECONDS, say: Say = print) -> int:
    """The demo: see docs/local-stack.md ("Local demo")."""
    data = testdata_dir()
    image = (data / IMAGE).read_bytes()
    began = time.monotonic()
    fleet: Fleet | None = None
    steps: list[tuple[str, float]] = []

    def step(title: str) -> None:
        say(f"\n== [{time.monotonic() - began:5.0f} s] {title}")

    def converge(channel: str, digest: str, since: float, what: str) -> None:
        assert fleet is not None
        on = fleet.on(channel)
        times = wait_serving(fleet, on, digest, since=since)
        slowest = max(times.values()) if times else 0.0
        steps.append((what, slowest))
        per = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(times.items()))
        say(f"  converged: every {channel} device serves {digest[:19]}… ({per})")
        show(observe(fleet, image), say)

    try:
        step("starting the local stack: emulators, registry, functions, 3 devices")
        # Own device ids: namespace names are global, `edgefleet up` uses dev1..N.
        fleet = start(workdir, devices=3, poll_seconds=poll_seconds, say=say, prefix="demo")
        for d in fleet.devices:
            say(f"  device {d['id']} in netns {d['name']} on channel {d['channel']}")
        step("base image (built once, then cached)")
        say(f"  {ensure_base(fleet, say)}")

        step(f"training v1 ({VERSIONS[1][0]}): model package + TRAINER-DONE")
        v1 = train(fleet, 1, data=data)
        say(f"  wrote gs://{fleet.stack.config.model_bucket}/{MODEL}/{v1}/…/TRAINER-DONE")
        say("  model_done_watcher builds and pushes the image (a minute or two)")
        t0 = time.monotonic()
        d1 = wait_built(fleet, v1, say=say)
        say(f"  pushed {fleet.repo}:{v1} and :latest = {d1} ({time.monotonic() - t0:.0f} s)")
        converge("latest", d1, time.monotonic(), "v1 -> latest (after the push)")

        step("promoting v1 to beta and stable")
        t = promote(fleet, d1, "beta")
        converge("beta", d1, t, "v1 -> beta")
        t = promote(fleet, d1, "stable")
        converge("stable", d1, t, "v1 -> stable")

        step(f"training v2 ({VERSIONS[2][0]})")
        v2 = train(fleet, 2, data=data)
        t0 = time.monotonic()
        d2 = wait_built(fleet, v2, say=say)
        say(f"  pushed {fleet.repo}:{v2} and :latest = {d2} ({time.monotonic() - t0:.0f} s)")
        converge("latest", d2, time.monotonic(), "v2 -> latest (after the push)")

        for channel in ("beta", "stable"):
            step(f"promoting v2 to {channel}: edgefleet promote {fleet.repo}@{d2[:19]}…")
            t = promote(fleet, d2, channel)
            converge(channel, d2, t, f"v2 -> {channel}")

        step("rolling stable back to v1")
        t = promote(fleet, d1, "stable")
        converge("stable", d1, t, "stable rolled back to v1")

        step(f"edgefleet rollout wait --channel stable --digest {d1[:19]}… (device reports)")
        wait_reported(fleet, "stable", d1)
        step("edgefleet status")
        _print_status(fleet)

        step("convergence times (tag move -> every device of the channel serving it)")
        for what, seconds in steps:
            say(f"  {what:34} {seconds:6.1f} s")
    finally:
        step("tearing down: agents, device pods and storage, namespaces, stack")
        stop(fleet, workdir)
    say(f"\ndemo finished in {time.monotonic() - began:.0f} s")
    return 0


def wait_reported(fleet: Fleet, channel: str, digest: str, timeout: float = 120.0) -> None:
    """``edgefleet rollout wait``: every device of the channel reported ``digest``, healthy
    (reports lag serving by up to a health-gate round)."""
    from edgefleet.operator import cli

    argv = ["rollout", "wait", "--channel", channel, "--digest", digest]
    if cli.main([*argv, "--timeout", f"{timeout:g}"]) != 0:
        raise DemoError(f"devices of {channel} did not report {digest[:19]}… in {timeout:.0f} s")


def _print_status(fleet: Fleet) -> None:
    """The real ``edgefleet status`` (this process is a client of the stack)."""
    from edgefleet.operator import cli

    cli.main(["status", "--bucket", fleet.stack.config.deploy_bucket])
