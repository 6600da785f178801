#!/usr/bin/env bash
# Installs the system packages edgefleet's local stack and tests need, when missing.
# Fails loudly (non-zero, one line naming the fix) when something cannot be installed.
set -euo pipefail

need=()
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || need+=(runc)
# podman builds its pause image from catatonit (a Recommends of podman)
command -v catatonit >/dev/null 2>&1 || need+=(catatonit)
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
command -v newuidmap >/dev/null 2>&1 || need+=(uidmap)
command -v java >/dev/null 2>&1 || need+=(default-jre-headless)
# Device tests build tiny images from the static busybox (a file copy, no network).
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)

if ((${#need[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "edgefleet: missing ${need[*]}; run 'sudo apt-get install -y ${need[*]}'" >&2
    exit 1
  fi
  echo "edgefleet: installing ${need[*]} (apt)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The official Pub/Sub emulator ships with the Google Cloud CLI.
if ! gcloud beta emulators pubsub --help >/dev/null 2>&1; then
  echo "edgefleet: the Pub/Sub emulator is missing; install google-cloud-cli with its" \
       "pubsub-emulator component (apt: google-cloud-cli-pubsub-emulator)" >&2
  exit 1
fi
