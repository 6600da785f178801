"""A fresh machine: ``scripts/install-system-deps.sh`` on a clean Debian bookworm root
(mmdebstrap) installs everything podman's pods, networking and storage need, after which
a ``podman kube play`` pod reaches Running and serves over its pod network, and the local
stack's registry and emulators start — all inside that root.

What the root holds, and why ("a fresh machine of this kind"): this project's machines
are Debian 12 images that ship Python 3.11 (Debian's ``python3``/``python3-venv`` and a
pyenv build), CA certificates and the Google Cloud SDK with its Pub/Sub emulator component
(installed from Google's apt repository, which these machines cannot reach), and many
other packages (Java, iproute2, curl, …). The root is Debian's minimal set (Essential +
apt) plus Debian's ``python3``, ``python3-venv`` and ``ca-certificates`` only; the host's
preinstalled Google Cloud SDK and the Python that runs the tests (pyenv's) are bound in
read-only at their own paths, and so is the checkout with its venv (pip packages are
``make install``'s job, not a system dependency). Everything else the kind happens to
carry is left out on purpose: the script must bring it, so the test proves the script,
not the image's luck. (The first version of this test, run against the script of
5c37e65, failed with podman's ``finding pause binary: exec: "catatonit"``.)

Runs in a few minutes: the root is built anew each run, ``.deb`` files are cached
(tests/support/fresh_root.py says why that is safe). The pod and the stack run in the
root's own network namespace, so nothing touches the host's podman, ports or firewall.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.fresh_root import FreshRoot, Result, interpreter_prefix, preinstalled_gcloud_sdk

pytestmark = [pytest.mark.slow, pytest.mark.podman]

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "install-system-deps.sh"


@dataclass(repr=False)
class Fresh:
    root: FreshRoot
    before: Result  # the script as an unprivileged user, before anything is installed
    install: Result  # the script as root


def _require_host() -> Path:
    if os.geteuid() != 0:
        pytest.fail("the fresh-machine test needs root (mmdebstrap, chroot, unshare)")
    for tool in ("mmdebstrap", "unshare", "chroot"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: run 'make install'", pytrace=False)
    sdk = preinstalled_gcloud_sdk()
    if sdk is None:
        pytest.fail("gcloud is missing: this kind of machine ships the Google Cloud SDK")
    return sdk


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fresh]:
    sdk = _require_host()
    binds = [(REPO, True), (sdk, True)]
    prefix = interpreter_prefix()
    if prefix is not None:
        binds.append((prefix, True))
    if not Path(sys.prefix).resolve().is_relative_to(REPO):
        binds.append((Path(sys.prefix).resolve(), True))
    root = FreshRoot(tmp_path_factory.mktemp("fresh") / "root", binds=binds)
    root.env = {"PYTHONDONTWRITEBYTECODE": "1"}
    try:
        built = root.build()
        assert built.returncode == 0, f"mmdebstrap failed:\n{built.tail()}"
        # What google-cloud-cli's package puts on PATH.
        (root.path / "usr" / "bin" / "gcloud").symlink_to(sdk / "bin" / "gcloud")
        before = root.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", str(SCRIPT)],
            own_net=True,
            timeout=60,
        )
        install = root.run([str(SCRIPT)], own_net=False, timeout=600)
        print(f"install-system-deps.sh in the fresh root (exit {install.returncode}):")
        print(install.tail(60))
        yield Fresh(root, before, install)
    finally:
        root.remove()


def _installed(fresh: Fresh) -> None:
    assert fresh.install.returncode == 0, (
        f"install-system-deps.sh failed in the fresh root:\n{fresh.install.tail()}"
    )


def test_install_script_names_what_is_missing_before_installing(fresh: Fresh) -> None:
    out = fresh.before.output
    assert fresh.before.returncode == 1, out
    assert "edgefleet: missing " in out, out
    for package in ("podman", "catatonit", "docker-registry", "default-jre-headless"):
        assert package in out, f"{package} not named: {out}"


def test_install_script_installs_everything_on_a_minimal_bookworm_root(fresh: Fresh) -> None:
    _installed(fresh)
    again = fresh.root.run([str(SCRIPT)], own_net=True, timeout=120)
    # Nothing left to install (no network in an own namespace) and every check passes.
    assert again.returncode == 0, again.tail()
    assert again.output.strip() == "", again.tail()


POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: fresh
spec:
  containers:
  - name: web
    image: localhost/edgefleet-fresh/busybox:1
    command: ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
    ports:
    - containerPort: 8080
"""

# In the root's own network namespace: a busybox image from the static binary (a file
# copy, no registry), kube play on podman's default pod network, Running, then a request
# to the pod's address over that network.
PLAY = r"""
set -eu
work=$(mktemp -d)
mkdir -p "$work/img/bin" "$work/img/www"
cp /bin/busybox "$work/img/bin/busybox"
echo served-by-the-fresh-pod > "$work/img/www/index.html"
tar -C "$work/img" -cf "$work/img.tar" bin www
podman import -q "$work/img.tar" localhost/edgefleet-fresh/busybox:1 >/dev/null
printf '%s' "$POD" > "$work/pod.yaml"
podman kube play "$work/pod.yaml"
state=none
for _ in $(seq 1 60); do
  state=$(podman pod inspect fresh --format '{{.State}}')
  [ "$state" = Running ] && break
  sleep 0.5
done
echo "pod state: $state"
infra=$(podman pod inspect fresh --format '{{.InfraContainerID}}')
ip=$(podman inspect "$infra" --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}')
echo "pod address: $ip"
curl -fsS --max-time 5 "http://$ip:8080/index.html"
podman pod rm -f -t 0 fresh >/dev/null
"""


def test_podman_kube_play_pod_reaches_running_in_the_fresh_root(fresh: Fresh) -> None:
    _installed(fresh)
    conf = REPO / "deploy" / "podman" / "containers.conf"
    fresh.root.env.update(CONTAINERS_CONF=str(conf), POD=POD)
    try:
        played = fresh.root.run(["bash", "-c", PLAY], own_net=True, timeout=180)
    finally:
        for key in ("CONTAINERS_CONF", "POD"):
            fresh.root.env.pop(key, None)
    assert played.returncode == 0, f"podman kube play in the fresh root:\n{played.tail()}"
    assert "pod state: Running" in played.output, played.tail()
    assert "served-by-the-fresh-pod" in played.output, played.tail()


# The local stack's own classes, started from the checkout's venv inside the root.
STACK = """
import tempfile
from pathlib import Path

from edgefleet.localstack.gcs import GcsEmulator
from edgefleet.localstack.pubsub import PubsubEmulator
from edgefleet.localstack.registry import Registry

work = Path(tempfile.mkdtemp())
with Registry(work / "registry") as registry, GcsEmulator(work / "gcs") as gcs:
    print("registry pushed", registry.push_minimal_image("fresh/check", "v1"))
    gcs.create_bucket("fresh-check")
    print("gcs bucket fresh-check at", gcs.endpoint)
    with PubsubEmulator(work / "pubsub") as pubsub:
        pubsub.create_topic("gcr")
        print("pubsub published", pubsub.publish("gcr", b"{}"))
"""


def test_local_stack_registry_and_emulators_start_in_the_fresh_root(fresh: Fresh) -> None:
    _installed(fresh)
    python = str(Path(sys.prefix) / "bin" / "python")
    ran = fresh.root.run([python, "-c", STACK], own_net=True, timeout=240)
    assert ran.returncode == 0, f"local stack in the fresh root:\n{ran.tail()}"
    assert "registry pushed sha256:" in ran.output, ran.tail()
    assert "gcs bucket fresh-check" in ran.output, ran.tail()
    assert "pubsub published " in ran.output, ran.tail()
