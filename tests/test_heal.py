"""Self-healing's pure core (sync_pod.heal) and its configuration (HEAL_SECONDS). The
replay on real podman is tests/test_device_podman.py; on a whole device, tests/test_e2e.py."""

from __future__ import annotations

import pytest

from device.runtime import PodStatus
from edgefleet.core.errors import ConfigError
from sync_pod.config import DEFAULT_HEAL_SECONDS, from_env
from sync_pod.heal import Healer, down_pods, restarts_always


def _pod(policy: str | None = None) -> dict:
    spec: dict = {"containers": [{"name": "c", "image": "x"}]}
    if policy is not None:
        spec["restartPolicy"] = policy
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec}


def test_only_pods_meant_to_run_forever_count_as_down() -> None:
    wanted = {
        "web": _pod(),
        "api": _pod("Always"),
        "job": _pod("Never"),
        "retry": _pod("OnFailure"),
        "ok": _pod(),
    }
    running = {
        "api": PodStatus("api", running=False),  # stopped behind the runtime's back
        "job": PodStatus("job", running=False),  # finished on purpose
        "ok": PodStatus("ok", running=True),
        "stray": PodStatus("stray", running=False),  # not in the set: not ours to judge
    }
    assert down_pods(wanted, running) == ["api", "web"]
    assert down_pods({}, running) == []
    assert restarts_always({"spec": "garbage"})  # a malformed spec never reaches here; default


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_healer_looks_every_interval_and_backs_off_while_pods_stay_down() -> None:
    clock = Clock()
    healer = Healer(60.0, max_interval=300.0, clock=clock)
    assert not healer.due()  # the first look comes one interval after start-up
    clock.now += 59.9
    assert not healer.due()
    clock.now += 0.1
    assert healer.due()

    waits = []
    for _ in range(5):  # a pod that cannot stay up: 60, 120, 240, then capped at 300 s
        healer.looked(["web"])
        waits.append(healer.next_at - clock.now)
        clock.now = healer.next_at
        assert healer.due()
    assert waits == [60.0, 120.0, 240.0, 300.0, 300.0]
    assert healer.heals == 5 and healer.last == {"at": clock.now - 300.0, "pods": ["web"]}

    healer.looked([])  # everything runs again: back to the interval
    assert healer.next_at - clock.now == 60.0 and healer.streak == 0
    status = healer.status(lambda ts: f"t{ts:g}")
    assert status == {
        "intervalSeconds": 60.0,
        "heals": 5,
        "last": {"at": f"t{clock.now - 300.0:g}", "pods": ["web"]},
        "nextAt": f"t{clock.now + 60.0:g}",
    }


BASE = {"BUCKET": "b", "ARCH": "x86_64", "CHANNEL": "beta", "DEVICE_ID": "d1",
        "EDGEFLEET_INSECURE_ALLOW_UNSIGNED": "1"}  # fmt: skip


def test_heal_seconds_defaults_on_for_podman_and_off_for_kubelet() -> None:
    assert from_env({**BASE, "RUNTIME": "podman"}).heal_seconds == DEFAULT_HEAL_SECONDS == 60.0
    assert from_env({**BASE, "RUNTIME": "podman", "HEAL_SECONDS": "0"}).heal_seconds == 0.0
    assert from_env({**BASE, "RUNTIME": "podman", "HEAL_SECONDS": "5"}).heal_seconds == 5.0
    assert from_env({**BASE, "RUNTIME": "kubelet"}).heal_seconds == 0.0
    assert from_env({**BASE, "RUNTIME": "kubelet", "HEAL_SECONDS": "0"}).heal_seconds == 0.0


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"RUNTIME": "kubelet", "HEAL_SECONDS": "30"}, "kubelet restarts its pods itself"),
        ({"RUNTIME": "podman", "HEAL_SECONDS": "0.5"}, "0 (off) or at least 1 second"),
        ({"RUNTIME": "podman", "HEAL_SECONDS": "soon"}, "not a number of seconds"),
        ({"RUNTIME": "podman", "HEAL_SECONDS": "-1"}, "at least 0"),
    ],
)
def test_bad_heal_seconds_is_a_config_error_naming_it(env: dict, says: str) -> None:
    with pytest.raises(ConfigError, match="HEAL_SECONDS") as err:
        from_env({**BASE, **env})
    assert says in str(err.value)
