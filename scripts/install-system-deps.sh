#!/usr/bin/env bash
# Installs the Debian 12 packages edgefleet's local stack, demo and tests need, when
# missing, then checks each one and names what is still missing (non-zero exit).
#
# Proven on a minimal bookworm root by tests/test_fresh_machine.py (part of `make test`).
# Installs use --no-install-recommends, so every package podman's pods, networking and
# storage need is named here, not left to Recommends (catatonit is one: without it
# `podman kube play` fails with 'finding pause binary: exec: "catatonit"').
#
# To add a dependency, add one line to NEEDS below: what to check, the apt package that
# provides it, and why. The check is a command on PATH, an absolute path, or "-" (the
# package itself must be installed, for packages whose files another package can shadow).
set -euo pipefail
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

NEEDS=(
  # check                        package                        why
  "podman                        podman"                        # runs device pods (kube play)
  "runc                          runc"                          # crun fails on hybrid cgroups
  "conmon                        conmon"                        # podman's container monitor
  "catatonit                     catatonit"                     # the pause binary of every pod
  "/usr/lib/cni/bridge           containernetworking-plugins"   # podman 4.3's pod networks (CNI)
  "/usr/lib/cni/portmap          containernetworking-plugins"   # hostPort of a pod
  "iptables                      iptables"                      # CNI bridge/portmap NAT rules
  "newuidmap                     uidmap"                        # podman's user namespaces
  "docker-registry               docker-registry"               # the local registry
  "mmdebstrap                    mmdebstrap"                    # base image, fresh-machine test
  "ip                            iproute2"                      # device network namespaces
  "nsenter                       util-linux"                    # podman inside a namespace
  "java                          default-jre-headless"          # the Pub/Sub emulator
  "curl                          curl"                          # tests probe device ports
  "/etc/ssl/certs/ca-certificates.crt ca-certificates"          # pip inside image builds
  "-                             busybox-static"                # tiny test images (a file copy)
)

# found CHECK PACKAGE: is the dependency present?
found() {
  case "$1" in
    -) dpkg-query -W -f='${db:Status-Status}' "$2" 2>/dev/null | grep -qx installed ;;
    /*) [ -e "$1" ] ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}

# missing: "package (check)" for each dependency not present, one per line.
missing() {
  local entry check package
  for entry in "${NEEDS[@]}"; do
    read -r check package <<<"$entry"
    found "$check" "$package" || echo "$package ($check)"
  done
}

mapfile -t absent < <(missing)
if ((${#absent[@]})); then
  packages=$(printf '%s\n' "${absent[@]}" | cut -d' ' -f1 | sort -u | tr '\n' ' ')
  if [ "$(id -u)" != 0 ]; then
    echo "edgefleet: missing ${packages% }; run 'sudo apt-get install -y --no-install-recommends ${packages% }'" >&2
    exit 1
  fi
  echo "edgefleet: installing ${packages% } (apt)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086  # one word per package
  apt-get install -y -qq --no-install-recommends $packages >/dev/null
fi

mapfile -t absent < <(missing)
if ((${#absent[@]})); then
  echo "edgefleet: still missing after apt-get install: ${absent[*]}" >&2
  exit 1
fi

# The official Pub/Sub emulator ships with the Google Cloud CLI.
if ! gcloud beta emulators pubsub --help >/dev/null 2>&1; then
  echo "edgefleet: the Pub/Sub emulator is missing; install google-cloud-cli with its" \
       "pubsub-emulator component (apt: google-cloud-cli-pubsub-emulator)" >&2
  exit 1
fi
