"""The device's V1Pod model check in a child process (device.podcheck), through the
real agent on the device's GCS adapter (device.gcs_json) over the real emulator, and
check_manifests == a loop over check_manifest."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.sync import (
    FAKE_DIGEST,
    TEST_REGISTRY,
    ManualClock,
    SetPublisher,
    agent_env,
    entries,
    pod_yaml,
)

from device import gcs_json
from device.podcheck import ChildModelCheck
from device.runtime import KubeletRuntime
from edgefleet.core import policy
from edgefleet.core.errors import InvalidInput, PolicyViolation
from sync_pod.agent import APPLIED, BACKING_OFF, FAILED, REJECTED, UNCHANGED, Agent
from sync_pod.config import from_env

REG = TEST_REGISTRY
IMAGE = f"{REG}/edgefleet/web@{FAKE_DIGEST}"
REPO = Path(__file__).resolve().parent.parent
IMAGE_AS_NUMBER = (
    "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n"
    "  - name: main\n    image: 12345\n    resources: {limits: {cpu: 100m, memory: 32Mi}}\n"
)


def _without_container_name() -> str:
    pod = yaml.safe_load(pod_yaml("web", IMAGE))
    del pod["spec"]["containers"][0]["name"]
    return yaml.safe_dump(pod)


NO_CONTAINER_NAME = _without_container_name()


class Counting:
    """The real child check, counting how often the agent runs it."""

    def __init__(self, check: ChildModelCheck) -> None:
        self.check = check
        self.batches: list[list[str]] = []

    def __call__(self, manifests):  # type: ignore[no-untyped-def]
        self.batches.append(sorted(manifests))
        return self.check(manifests)


def _device_bucket(bucket, gcs) -> gcs_json.JsonBucket:  # type: ignore[no-untyped-def]
    """The device's adapter (what `python -m sync_pod` reads through) on the test bucket."""
    return gcs_json.connect(bucket.name, timeout=5.0, retry=gcs_json.NO_RETRY, env=gcs.env())


def _agent(bucket, gcs, tmp_path: Path, check) -> Agent:  # type: ignore[no-untyped-def]
    env = agent_env(bucket.name, tmp_path)
    return Agent(from_env(env), _device_bucket(bucket, gcs), KubeletRuntime(), model_check=check)


def _assert_rejected_and_kept(agent: Agent, pub: SetPublisher, bad) -> None:  # type: ignore[no-untyped-def]
    """Each ``bad`` case (name -> manifest text, reason, words of the detail) is published,
    rejected for that reason, and the folder keeps the set applied before."""
    good = (agent.config.manifest_dir / "web-pod.yaml").read_text()
    for case, (text, reason, words) in bad.items():
        pub.publish(entries({"web": text}))
        assert agent.poll_once() == REJECTED, case
        last = agent.state.last_rejection
        assert last is not None and last.reason == reason and words in last.detail, case
        assert (agent.config.manifest_dir / "web-pod.yaml").read_text() == good, case


def test_device_rejects_invalid_pods_through_the_child(bucket, gcs, tmp_path) -> None:
    pub = SetPublisher(bucket, "x86_64", "beta")
    check = Counting(ChildModelCheck(timeout=60))
    agent = _agent(bucket, gcs, tmp_path, check)
    agent.recover()
    pub.publish(entries({"web": pod_yaml("web", IMAGE)}))
    assert agent.poll_once() == APPLIED
    assert agent.poll_once() == UNCHANGED
    assert check.batches == [["web-pod.yaml"]]  # once per new set, not on no-op polls
    privileged = pod_yaml("web", IMAGE, container_extra={"securityContext": {"privileged": True}})
    bad = {
        "image-as-number": (IMAGE_AS_NUMBER, "invalid-manifest", "not a valid v1 Pod"),
        "container-without-name": (NO_CONTAINER_NAME, "invalid-manifest", "not a valid v1 Pod"),
        "privileged": (privileged, "policy", "privileged is not allowed"),
    }
    _assert_rejected_and_kept(agent, pub, bad)
    # The strict in-process reading already refuses wrong types and missing fields: the
    # child (the V1Pod model) runs only on manifests that pass it.
    assert len(check.batches) == 1


def test_a_check_that_cannot_run_keeps_the_set_and_is_retried_after_a_backoff(
    bucket, gcs, tmp_path
) -> None:
    pub = SetPublisher(bucket, "x86_64", "beta")
    clock = ManualClock()
    env = agent_env(bucket.name, tmp_path, POLL_SECONDS="30")
    agent = Agent(
        from_env(env),
        _device_bucket(bucket, gcs),
        KubeletRuntime(),
        model_check=ChildModelCheck(timeout=60),
        clock=clock,
        sleep=clock.sleep,
    )
    agent.recover()
    first = pub.publish(entries({"web": pod_yaml("web", IMAGE)}))
    assert agent.poll_once() == APPLIED
    pub.publish(entries({"web": pod_yaml("web", IMAGE, command=["/bin/true"])}))
    for failures, broken in enumerate(
        (
            ChildModelCheck(command=[str(tmp_path / "no-such-python")]),
            ChildModelCheck(
                command=[sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5
            ),
            ChildModelCheck(command=[sys.executable, "-c", "print('garbage')"]),
            ChildModelCheck(command=[sys.executable, "-c", "raise SystemExit(3)"]),
        ),
        start=1,
    ):
        agent.model_check = broken
        assert agent.poll_once() == FAILED, broken.command
        assert agent.state.applied is not None and agent.state.applied.digest == first.digest()
        assert agent.last_error is not None and agent.last_error["reason"] == "check-failed"
        # Backing off: the next polls neither download the set nor run the check again.
        backoff = agent.state.backoff
        assert backoff is not None and backoff.failures == failures
        assert backoff.until - clock.now == 30 * 2 ** (failures - 1)
        agent.model_check = _must_not_run
        mark = gcs.mark()
        assert agent.poll_once() == BACKING_OFF
        assert [r.method for r in gcs.requests(mark)] == ["GET"]  # the generation only
        clock.now = backoff.until
    agent.model_check = ChildModelCheck(timeout=60)
    assert agent.poll_once() == APPLIED  # retried once the back-off is over, not skipped
    assert agent.state.backoff is None
    assert "/bin/true" in (agent.config.manifest_dir / "web-pod.yaml").read_text()


def _must_not_run(manifests):  # type: ignore[no-untyped-def]
    raise AssertionError(f"the check ran while backing off: {sorted(manifests)}")


def test_podcheck_cli_contract() -> None:
    manifests = {"a": IMAGE_AS_NUMBER, "b": pod_yaml("b", IMAGE), "c": "kind: ["}
    proc = subprocess.run(
        [sys.executable, "-m", "device.podcheck"],
        input=json.dumps({"manifests": manifests}).encode(),
        capture_output=True,
        check=True,
    )
    results = json.loads(proc.stdout)["results"]
    assert results["b"] is None
    assert "not a valid v1 Pod" in results["a"] and "not valid YAML" in results["c"]
    bad = subprocess.run(
        [sys.executable, "-m", "device.podcheck"], input=b"[]", capture_output=True
    )
    assert bad.returncode == 2 and bad.stderr.startswith(b"edgefleet: ")


def test_podcheck_child_leaves_the_kube_config_loaders_out() -> None:
    """The child judges pods with kubernetes.client alone; the kubernetes package's own
    __init__ (kube-config loaders, google-auth, requests) would double its run time."""
    manifests = {"a": IMAGE_AS_NUMBER, "b": pod_yaml("b", IMAGE)}
    script = (
        "import json, sys\n"
        "from device import podcheck\nfrom edgefleet.core import policy\n"
        "podcheck.skip_kubernetes_package_init()\n"
        f"errors = policy.model_errors({manifests!r})\n"
        "print(json.dumps({'errors': errors, 'modules': sorted(sys.modules)}))\n"
    )
    out = json.loads(
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, check=True, text=True
        ).stdout
    )
    assert out["errors"]["b"] is None and "not a valid v1 Pod" in out["errors"]["a"]
    loaded = set(out["modules"])
    assert "kubernetes.client.models.v1_pod" in loaded
    assert not loaded & {"kubernetes.config", "kubernetes.watch", "google.auth", "requests"}


def _oldest_allowed(name: str) -> str:
    """The lower bound pyproject.toml sets on dependency ``name``."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        bound = re.fullmatch(rf"{name}>=([0-9.]+)", requirement.replace(" ", ""))
        if bound:
            return bound.group(1)
    raise AssertionError(f"pyproject.toml sets no lower bound on {name}")


@pytest.fixture(scope="module")
def oldest_kubernetes(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The oldest kubernetes client pyproject allows, with six (which it imports), pip
    installed into a directory of its own from the package index."""
    version = _oldest_allowed("kubernetes")
    target = tmp_path_factory.mktemp("kubernetes-oldest")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    done = subprocess.run(
        [*pip, "--no-deps", "--target", str(target), f"kubernetes=={version}.*", "six"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (
        f"pip could not install kubernetes=={version}.* (the package index must be "
        f"reachable, as for make install): {done.stderr[-600:]}"
    )
    return version, target


def test_the_oldest_kubernetes_client_the_pin_allows_gives_the_same_verdicts(
    oldest_kubernetes: tuple[str, Path],
) -> None:
    """pyproject allows kubernetes clients older than 37, whose models are not pydantic
    models (no ``V1Pod.from_dict``): there the model check goes through ``ApiClient``'s
    deserializer, policy._check_model's other branch. The check (the allowlist's type
    walk, then the model) judges alike on both; the model alone, asked directly, refuses
    a missing required field and a mistyped number on both (the old client turns a
    number into a string where a string is due: the walk refuses that first)."""
    version, target = oldest_kubernetes
    port_as_text = pod_yaml("p", IMAGE).replace(
        "name: main", "name: main\n    ports: [{containerPort: http}]"
    )
    manifests = {
        "ok": pod_yaml("ok", IMAGE),
        "image_as_number": IMAGE_AS_NUMBER,
        "no_container_name": NO_CONTAINER_NAME,
        "port_as_text": port_as_text,
        "policy_as_number": pod_yaml("q", IMAGE).replace(
            "restartPolicy: Always", "restartPolicy: 5"
        ),
    }
    model_alone = ("ok", "no_container_name", "port_as_text")
    script = (
        "import json\n"
        "from device import podcheck\nfrom edgefleet.core import policy, strict_yaml\n"
        "from edgefleet.core.errors import InvalidInput\n"
        "podcheck.skip_kubernetes_package_init()\n"
        "from kubernetes.client import __version__ as version\n"
        "from kubernetes.client.models.v1_pod import V1Pod\n"
        f"manifests = {manifests!r}\n"
        "def model_accepts(text):\n"
        "    try:\n"
        "        policy._check_model(strict_yaml.load(text))\n"
        "    except InvalidInput:\n"
        "        return False\n"
        "    return True\n"
        "print(json.dumps({'errors': policy.model_errors(manifests), 'version': version,\n"
        "    'pydantic': hasattr(V1Pod, 'from_dict'),\n"
        f"    'model': {{k: model_accepts(manifests[k]) for k in {model_alone!r}}}}}))\n"
    )

    def judge(path: str) -> dict[str, Any]:
        env = {**os.environ, "PYTHONPATH": path}
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO
        )
        assert done.returncode == 0, done.stderr[-800:]
        return json.loads(done.stdout)

    installed = judge(str(REPO))
    oldest = judge(f"{target}{os.pathsep}{REPO}")
    assert oldest["version"].startswith(f"{version}.") and not oldest["pydantic"]
    assert installed["pydantic"], "the installed client takes from_dict (kubernetes 37+)"
    assert oldest["errors"] == installed["errors"]
    errors = installed["errors"]
    assert errors["ok"] is None
    assert all("not a valid v1 Pod" in errors[k] for k in manifests if k != "ok"), errors
    expected = {"ok": True, "no_container_name": False, "port_as_text": False}
    assert installed["model"] == expected
    assert oldest["model"] == expected


def _loop(manifests: dict[str, str], p: policy.Policy) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, text in manifests.items():
        try:
            out[key] = policy.check_manifest(text, p, expected_name=key)
        except InvalidInput as exc:
            out[key] = exc
            break
    return out


@pytest.mark.parametrize(
    "order",
    [
        ["ok", "policy", "model"],
        ["model", "policy"],
        ["ok", "yaml", "model"],
        ["both", "ok"],
        ["ok", "ok2"],
        ["yaml"],
    ],
)
def test_check_manifests_matches_a_loop_of_check_manifest(order: list[str]) -> None:
    texts = {
        "ok": pod_yaml("ok", IMAGE),
        "ok2": pod_yaml("ok2", IMAGE),
        "policy": pod_yaml("policy", f"{REG}/web:latest"),
        "model": IMAGE_AS_NUMBER.replace("name: web", "name: model"),
        "yaml": "apiVersion: v1\nkind: Pod\n  : [",
        "both": IMAGE_AS_NUMBER.replace("name: web", "name: both").replace(
            "spec:", "spec:\n  hostPID: true"
        ),
    }
    manifests = {k: texts[k] for k in order}
    p = policy.Policy.for_device((REG,))
    asked: list[list[str]] = []

    def model_check(batch):  # type: ignore[no-untyped-def]
        asked.append(sorted(batch))
        return policy.model_errors(batch)

    got = policy.check_manifests(
        manifests, p, expected_names={k: k for k in manifests}, model_check=model_check
    )
    want = _loop(manifests, p)
    assert list(got) == list(want)
    for key, value in want.items():
        if isinstance(value, InvalidInput):
            assert type(got[key]) is type(value) and str(got[key]) == str(value), key
        else:
            assert got[key] == value
    assert len(asked) <= 1
    if order[0] == "yaml":
        assert asked == []  # nothing before the first failure needs the model check
    assert isinstance(got.get("both"), InvalidInput | type(None))
    assert not isinstance(got.get("both"), PolicyViolation)


@pytest.mark.parametrize(("v1pod_check", "children"), [("", 0), ("on", 1)])
def test_agent_process_keeps_heavy_libraries_out(
    bucket, gcs, tmp_path, v1pod_check, children
) -> None:
    """The long-lived device process never imports google-cloud-storage or kubernetes
    (what keeps it within its RSS budget), even after applying a set. By default its
    checks are the allowlist's walk alone; ``V1POD_CHECK=on`` adds the V1Pod model, in
    one child for the new set."""
    SetPublisher(bucket, "x86_64", "beta").publish(entries({"web": pod_yaml("web", IMAGE)}))
    env = {
        **os.environ,
        **gcs.env(),
        **agent_env(bucket.name, tmp_path),
        "KUBELET_API": "off",  # no kubelet here; this test is about imports
        "PYTHONPATH": str(REPO),
        "V1POD_CHECK": v1pod_check,
    }
    code = (
        "import sys\n"
        "from edgefleet.core import logs\n"
        "logs.configure('sync_pod')\n"
        "from sync_pod.__main__ import make_agent\n"
        "from sync_pod.config import from_env\n"
        "agent = make_agent(from_env())\n"
        "agent.recover()\n"
        "print(agent.poll_once(), agent.report(force=True))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('kubernetes', 'requests', 'pydantic') or m.startswith('google.cloud.storage')))\n"
        "print(getattr(agent.model_check, 'misses', 0))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["applied True", "[]", str(children)], proc.stderr
    said = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    checks = [e["checks"] for e in said if e.get("message") == "manifest checks"]
    assert checks == ["allowlist+v1pod-model" if v1pod_check else "allowlist"], proc.stderr


def test_a_device_with_the_walk_alone_rejects_what_the_model_would(bucket, gcs, tmp_path) -> None:
    """The default device check (``policy.walk_only`` after the walk): wrong types, missing
    required fields and policy violations are rejected as with the child, and the current
    set stays."""
    pub = SetPublisher(bucket, "x86_64", "beta")
    agent = _agent(bucket, gcs, tmp_path, policy.walk_only)
    agent.recover()
    pub.publish(entries({"web": pod_yaml("web", IMAGE)}))
    assert agent.poll_once() == APPLIED
    without_port = yaml.safe_load(pod_yaml("web", IMAGE))
    without_port["spec"]["containers"][0]["readinessProbe"] = {"httpGet": {"path": "/"}}
    bad = {
        "image-as-number": (IMAGE_AS_NUMBER, "invalid-manifest", "not a valid v1 Pod"),
        "container-without-name": (NO_CONTAINER_NAME, "invalid-manifest", "not a valid v1 Pod"),
        "probe-without-port": (yaml.safe_dump(without_port), "invalid-manifest", "httpGet.port"),
    }
    for case, (text, _, _) in bad.items():
        assert policy.model_errors({case: text})[case] is not None, case  # the model refuses
    _assert_rejected_and_kept(agent, pub, bad)
