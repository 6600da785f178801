"""The harness over the local stack: the product's story as small steps that the demo
(edgefleet.operator.demo), the end-to-end test and the benchmarks share.

Steps: start a stack with devices (:func:`start`), "train" a model version by writing a
model package and, last, ``TRAINER-DONE`` (:func:`train`), wait for model_done_watcher's
image (:func:`wait_built`), move a channel tag (:func:`promote`), wait until every
device of the channel serves a digest (:func:`wait_serving`), ask devices what they run
(:func:`observe`).

Waits fail fast with the reason, not at their timeout: :func:`wait_built` stops when
model_done_watcher logged that it rejected or failed the version (:func:`build_failure`),
:func:`wait_serving` when a device reported that it rejected or rolled back the set
carrying the digest (:func:`check_refusals`, the same rule as ``edgefleet rollout wait``).
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
from edgefleet.operator.fleet import one_line

REPO_ROOT = Path(__file__).resolve().parents[2]
# The demo's own data, in the repository (demo/coral/README.md says what and whose).
DATA_REL = Path("demo") / "coral"
MODEL = "mobilenet"
IMAGE = "grace_hopper.bmp"
# (model file, expected top-1 of grace_hopper.bmp) per "trained" major version; see
# demo/coral/README.md.
VERSIONS: dict[int, tuple[str, int, str]] = {
    1: ("mobilenet_v1_0.25_128_quant.tflite", 401, "academic gown"),
    2: ("mobilenet_v2_1.0_224_quant.tflite", 653, "military uniform"),
}
Say = Callable[[str], None]


class StepError(EdgefleetError):
    """A step did not reach its goal in time; the message says which and why."""


def data_dir(root: Path = REPO_ROOT) -> Path:
    """The models, labels and image the steps use, carried by the repository
    (``demo/coral``) so that a clone alone runs the demo."""
    path = root / DATA_REL
    needed = [VERSIONS[1][0], VERSIONS[2][0], "imagenet_labels.txt", IMAGE]
    missing = [n for n in needed if not (path / n).is_file()]
    if missing:
        raise ConfigError(
            f"demo data missing in {path}: {', '.join(missing)}; restore it from the "
            "repository (git checkout -- demo/coral)"
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
    mqtt: bool = True,
    device_env: Mapping[str, str] | None = None,
) -> Fleet:
    """A fresh stack with functions, build service, signing and ``devices`` devices
    (anything a previous run left in ``workdir`` is stopped first); ``device_env`` is
    added to every device agent's environment."""
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
        mqtt=mqtt,
        device_env=device_env,
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


def train(
    fleet: Fleet,
    major: int,
    trained_at: int | None = None,
    *,
    data: Path,
    golden_top1: int | None = None,
) -> str:
    """Write model version ``major`` as training does: package files, then TRAINER-DONE.
    Returns the version name (``mobilenet_MAJOR_UNIXTIME``). ``golden_top1``: another
    expected answer for the golden image (a wrong one makes a version that never gets
    ready: its self-test fails)."""
    model_file, top1, _label = VERSIONS[major]
    top1 = top1 if golden_top1 is None else golden_top1
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
    log = fleet.stack.workdir / "logs" / "function-model_done_watcher.log"
    start = time.monotonic()
    last = start
    while time.monotonic() - start < timeout:
        try:
            return client.resolve(ref)
        except NotFound:
            pass
        except EdgefleetError:
            pass  # the repository does not exist yet
        failed = build_failure(log, version)
        if failed:
            raise StepError(f"{failed}; see {log}")
        if time.monotonic() - last >= 30:
            say(f"  … still building {version} ({time.monotonic() - start:.0f} s)")
            last = time.monotonic()
        time.sleep(1.0)
    raise StepError(f"{ref} was not pushed within {timeout:.0f} s; see {log}")


def build_failure(log: Path, version: str) -> str | None:
    """Why model_done_watcher did not build ``version``, from its structured log (the
    ``build-failed`` and ``model-done-rejected`` entries), or None while it has not said."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        event, error = entry.get("event"), one_line(str(entry.get("error") or "no reason given"))
        if event == "build-failed" and entry.get("version") == version:
            return f"model_done_watcher failed to build {version}: {error}"
        if event == "model-done-rejected" and f"/{version}/" in str(entry.get("object") or ""):
            return f"model_done_watcher rejected {version}: {error}"
    return None


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
    refusal_interval: float = 1.0,
) -> dict[str, float]:
    """Seconds from ``since`` until each device's ``/version/`` reports ``digest`` (its
    arch's image of it, for an index) and its ``/readyz`` passes (``/version/`` answers
    before the golden self-test is done). Stops at once, with the device's reason, when
    one of them reports that it rejected or rolled back the set carrying it (checked
    every ``refusal_interval`` s)."""
    from edgefleet.localstack.arm64 import expected_digest, platform_digests

    digests = platform_digests(fleet, digest)
    done: dict[str, float] = {}
    deadline = since + timeout
    next_check = time.monotonic()
    while len(done) < len(devices):
        if time.monotonic() >= next_check:
            pending = [d for d in devices if d["id"] not in done]
            for want in sorted({expected_digest(d, digests, digest) for d in pending}):
                on = [d for d in pending if expected_digest(d, digests, digest) == want]
                check_refusals(fleet, on, want)
            next_check = time.monotonic() + refusal_interval
        for d in devices:
            if d["id"] in done:
                continue
            info = version_of(d)
            want = expected_digest(d, digests, digest)
            if info and info.get("version") == want and is_ready(d):
                done[d["id"]] = time.monotonic() - since
        if len(done) == len(devices):
            break
        if time.monotonic() > deadline:
            waiting = [str(d["id"]) for d in devices if d["id"] not in done]
            raise StepError(
                f"devices {', '.join(waiting)} do not serve {digest[:19]}… after "
                f"{timeout:.0f} s; see {fleet.stack.workdir}/logs/agent-ef-*.log"
            )
        time.sleep(interval)
    return done


def check_refusals(fleet: Fleet, devices: Sequence[Mapping[str, Any]], digest: str) -> None:
    """Raise StepError naming each of ``devices`` that reported it refused ``digest``
    (rejected or rolled back the set carrying it): device, reason, runtime's message."""
    from edgefleet.operator import watch

    ids = {str(d["id"]) for d in devices}
    bucket = fleet.bucket(fleet.stack.config.deploy_bucket)
    refused = []
    for channel in sorted({str(d.get("channel")) for d in devices}):
        seen = watch.look(bucket, channel, digest)
        refused += [r for r in seen.refusals if r.device_id in ids]
    if refused:
        logs = fleet.stack.workdir / "logs"
        raise StepError(
            f"rollout of {digest[:19]}… failed: "
            + "; ".join(r.line() for r in refused)
            + f" (see {logs}/agent-*.log)"
        )


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


def wait_reported(fleet: Fleet, channel: str, digest: str, timeout: float = 120.0) -> None:
    """``edgefleet rollout wait``: every device of the channel reported ``digest`` (per
    arch: its image of the index), healthy (reports lag serving by up to a gate round)."""
    from edgefleet.localstack.arm64 import platform_digests
    from edgefleet.operator import cli
    from edgefleet.operator.commands.fleet import EXIT_REFUSED

    digests = platform_digests(fleet, digest)
    for arch in sorted({str(d.get("arch")) for d in fleet.on(channel)}):
        want = digests.get(arch, digest)
        argv = ["rollout", "wait", "--channel", channel, "--digest", want, "--arch", arch]
        code = cli.main([*argv, "--timeout", f"{timeout:g}"])
        if code == EXIT_REFUSED:
            raise StepError(f"a device of {channel} refused {want[:19]}… (its reason is above)")
        if code != 0:
            raise StepError(f"{arch} devices of {channel} did not report {want[:19]}…")


def print_status(fleet: Fleet) -> None:
    """The real ``edgefleet status`` (this process is a client of the stack)."""
    from edgefleet.operator import cli

    cli.main(["status", "--bucket", fleet.stack.config.deploy_bucket])
