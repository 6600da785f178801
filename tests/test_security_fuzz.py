"""Fuzz: thousands of generated hostile manifests through the device's check.

Each sample starts from a pod the allowlist accepts and applies one to three mutations,
every one of which the allowlist must refuse on its own (YAML tricks, case variants,
unknown fields, forbidden values, huge and deep documents). The generator is seeded, so a
failure names a reproducible sample. Expected: 0 accepted, 0 exceptions other than the
check's own InvalidInput. Benign variants (reordered keys, other labels, JSON form) must
still pass, so the check is not refusing everything.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from typing import Any

import yaml
from support.security import POLICY, good_pod

from edgefleet.core import policy
from edgefleet.core.errors import InvalidInput

SAMPLES = 1200
Pod = dict[str, Any]


def _container(p: Pod) -> Pod:
    return p["spec"]["containers"][0]


def _objects(node: Any, out: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        out.append(node)
        for v in node.values():
            _objects(v, out)
    elif isinstance(node, list):
        for v in node:
            _objects(v, out)
    return out


def _unknown_key(p: Pod, r: random.Random) -> None:
    target = r.choice([o for o in _objects(p, []) if o is not p["metadata"].get("labels")])
    key = r.choice(["sysctls", "ephemeralContainers", "x", "hostUsers", "nodeName", "shell"])
    target[key + r.choice(["", "X", "_1"])] = r.choice([True, "x", 1, [], {"a": 1}])


def _case_variant(p: Pod, r: random.Random) -> None:
    candidates = [
        (o, k)
        for o in _objects(p, [])
        for k in o
        if any(c.isalpha() for c in k) and o is not p["metadata"].get("labels")
    ]
    obj, key = r.choice(candidates)
    letters = [i for i, c in enumerate(key) if c.isalpha()]
    i = r.choice(letters)
    variant = key[:i] + key[i].swapcase() + key[i + 1 :]
    obj[variant] = copy.deepcopy(obj[key])
    if r.random() < 0.5:
        del obj[key]


def _set(path: Callable[[Pod], dict[str, Any]], key: str, values: list[Any]) -> Callable[..., None]:
    def mutate(p: Pod, r: random.Random) -> None:
        path(p)[key] = copy.deepcopy(r.choice(values))

    return mutate


def _sc(p: Pod) -> dict[str, Any]:
    return _container(p)["securityContext"]


def _caps(p: Pod, r: random.Random) -> None:
    bad = ["NET_ADMIN", "SYS_TIME", "BPF", "SYS_ADMIN", "CAP_SYS_ADMIN", "net_admin", "ALL",
           "SYS_PTRACE", "NET_RAW", "DAC_OVERRIDE", "CAP_NET_BIND_SERVICE", "PERFMON"]  # fmt: skip
    caps = _sc(p)["capabilities"]
    if r.random() < 0.2:
        caps["drop"] = r.choice([[], ["NET_RAW"], ["all"], "ALL"])
    else:
        caps["add"] = r.sample(bad, r.randint(1, 3))


def _host_path(p: Pod, r: random.Random) -> None:
    path = r.choice(["/", "/etc", "/var/spool/edgefleet", "/var/spool/edgefleet/other",
                     "/var/spool/edgefleet/model/../..", "/var/spool/edgefleet/model/",
                     "/var/spool//edgefleet/model", "/run/podman", "/var/lib/edgefleet",
                     "/dev/mem", "var/spool/edgefleet/model", "/opt/device"])  # fmt: skip
    kind = r.choice(["Directory", "DirectoryOrCreate", "", "Socket"])
    p["spec"]["volumes"][0]["hostPath"] = {"path": path, "type": kind}


def _volume_kind(p: Pod, r: random.Random) -> None:
    kind = r.choice(["nfs", "iscsi", "secret", "persistentVolumeClaim", "configMap", "projected",
                     "csi", "downwardAPI", "gitRepo", "hostpath"])  # fmt: skip
    p["spec"]["volumes"].append({"name": "extra", kind: {"path": "/"}})


def _image(p: Pod, r: random.Random) -> None:
    digest = "sha256:" + "cd" * 32
    _container(p)["image"] = r.choice(
        [
            "127.0.0.1:5000/team/model:latest",
            f"127.0.0.1:5000/teamx/model@{digest}",
            f"127.0.0.1:50001/team/model@{digest}",
            f"attacker.example/team/model@{digest}",
            f"europe-docker.pkg.dev/other/x/model@{digest}",
            "model",
            f"127.0.0.1:5000/team/model@sha256:{'CD' * 32}",
        ]
    )


def _name(p: Pod, r: random.Random) -> None:
    p["metadata"]["name"] = r.choice(
        ["model\n", "Model", "model/../x", "-model", "m" * 64, "", "mödel"]
    )


def _limits(p: Pod, r: random.Random) -> None:
    limits = _container(p)["resources"]["limits"]
    del limits[r.choice(["cpu", "memory"])]


def _port(p: Pod, r: random.Random) -> None:
    port = _container(p)["ports"][0]
    if r.random() < 0.5:
        port["hostIP"] = r.choice(["0.0.0.0", "::", "", "10.0.0.1"])
    else:
        port["hostPort"] = r.choice([22, 80, 0, 70000, -1])


def _seccomp(p: Pod, r: random.Random) -> None:
    choice = r.random()
    if choice < 0.4:
        p["spec"]["securityContext"]["seccompProfile"] = {
            "type": r.choice(["Unconfined", "Localhost"])
        }
    elif choice < 0.7:
        del p["spec"]["securityContext"]
    else:
        _sc(p)["seccompProfile"] = {"type": "Unconfined"}


def _type_confusion(p: Pod, r: random.Random) -> None:
    target = r.choice([_sc(p), p["spec"], _container(p), _container(p)["ports"][0]])
    key = r.choice(list(target))
    target[key] = (
        r.choice([None, "true", 1.5, {"x": 1}, [[]]])
        if not isinstance(target[key], str)
        else r.choice([1, True, None, ["x"]])
    )


def _probe_host(p: Pod, r: random.Random) -> None:
    _container(p)["readinessProbe"] = {
        "httpGet": {"host": "169.254.169.254", "port": 80, "path": "/"}
    }


def _env_from(p: Pod, r: random.Random) -> None:
    _container(p)["env"] = [
        {"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
    ]


DICT_MUTATIONS: list[Callable[[Pod, random.Random], None]] = [
    _unknown_key,
    _case_variant,
    _set(lambda p: p["spec"], "hostNetwork", [True]),
    _set(lambda p: p["spec"], "hostPID", [True]),
    _set(lambda p: p["spec"], "hostIPC", [True]),
    _set(lambda p: p["spec"]["securityContext"], "runAsUser", [0]),
    _set(_sc, "privileged", [True]),
    _set(_sc, "allowPrivilegeEscalation", [True]),
    _set(_sc, "procMount", ["Unmasked", "unmasked"]),
    _set(lambda p: p["spec"], "ephemeralContainers", [[{"name": "x", "image": "a.b/c"}]]),
    _set(lambda p: p["spec"], "sysctls", [[{"name": "net.ipv4.ip_forward", "value": "1"}]]),
    _set(lambda p: p, "kind", ["Deployment", "pod"]),
    _set(lambda p: p, "apiVersion", ["v2", "apps/v1"]),
    _caps,
    _host_path,
    _volume_kind,
    _image,
    _name,
    _limits,
    _port,
    _seccomp,
    _type_confusion,
    _probe_host,
    _env_from,
]


def _text_trick(r: random.Random, p: Pod) -> str | bytes:
    """A YAML-level trick on an otherwise acceptable pod."""
    text = yaml.safe_dump(p, sort_keys=r.random() < 0.5)
    trick = r.randrange(11)
    if trick == 0:  # duplicate key: the second value wins in one reader, the first in another
        return text + "kind: Pod\n"
    if trick == 1:  # an alias of a shared node
        return text.replace("metadata:\n", "metadata: &m\n", 1) + "extra: *m\n"
    if trick == 2:  # merge key
        return text.replace(
            "      allowPrivilegeEscalation: false",
            "      <<: {privileged: true}\n      allowPrivilegeEscalation: false",
        )
    if trick == 3:  # explicit tag
        return text.replace(
            "name: model\n",
            f"name: {r.choice(['!!str', '!!binary', '!x', '!!python/name:os.system'])} model\n",
            1,
        )
    if trick == 4:  # YAML 1.1 booleans that YAML 1.2 reads as strings
        return text.replace(
            "allowPrivilegeEscalation: false",
            f"allowPrivilegeEscalation: {r.choice(['no', 'off', 'n', 'No', 'False'])}",
        )
    if trick == 5:  # deep nesting
        depth = r.choice([33, 100, 5000, 200_000])
        return text + "deep: " + "[" * depth + "]" * (depth if r.random() < 0.5 else 0) + "\n"
    if trick == 6:  # huge
        return text + "padding: " + "x" * (policy.MAX_MANIFEST_BYTES + r.randint(0, 1000)) + "\n"
    if trick == 7:  # lone surrogate
        return text.replace(
            "app: model", f'app: "\\u{r.choice(["d800", "dbff", "dc00", "DFFF"])}"', 1
        )
    if trick == 8:  # two documents
        return text + "---\n" + text
    if trick == 9:  # ambiguous scalars
        return text.replace(
            "containerPort: 5000",
            f"containerPort: {r.choice(['0o11610', '0x1388', '5_000', '1:23:20', '5e3'])}",
        )
    return text.replace("name: model\n", "name: model\\n\n", 1).replace(  # escaped newline
        "name: model\\n\n", 'name: "model\\n"\n', 1
    )


def hostile_samples(n: int, seed: int = 12) -> list[tuple[str, str | bytes]]:
    r = random.Random(seed)
    out = []
    for i in range(n):
        p = good_pod()
        if r.random() < 0.3:
            out.append((f"text#{i}", _text_trick(r, p)))
            continue
        applied = []
        for mutate in r.sample(DICT_MUTATIONS, r.randint(1, 3)):
            try:
                mutate(p, r)
            except (TypeError, KeyError, IndexError, AttributeError, ValueError):
                continue  # an earlier mutation removed what this one changes
            applied.append(mutate.__name__)
        if not applied:
            p["spec"]["hostNetwork"] = True
            applied.append("hostNetwork")
        text = json.dumps(p) if r.random() < 0.2 else yaml.safe_dump(p, sort_keys=r.random() < 0.5)
        out.append((f"{'+'.join(applied)}#{i}", text))
    return out


def test_hostile_manifests_are_all_refused_without_a_crash() -> None:
    samples = hostile_samples(SAMPLES)
    accepted, crashed = [], []
    for label, text in samples:
        try:
            policy.check_manifest(text, POLICY, expected_name="model", model_check=False)
        except InvalidInput:
            continue
        except Exception as exc:
            crashed.append((label, repr(exc)[:200]))
            continue
        accepted.append(label)
    assert len(samples) >= 1000
    assert crashed == []
    assert accepted == []


def test_benign_variants_still_pass() -> None:
    r = random.Random(7)
    for _ in range(50):
        p = good_pod()
        p["metadata"]["labels"] = {f"k{r.randint(0, 9)}": f"v{r.randint(0, 99)}"}
        text = json.dumps(p) if r.random() < 0.5 else yaml.safe_dump(p, sort_keys=r.random() < 0.5)
        pod = policy.check_manifest(text, POLICY, expected_name="model", model_check=False)
        assert json.loads(policy.canonical(pod)) == p
