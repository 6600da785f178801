#!/usr/bin/env bash
# Sets up arm64 emulation (qemu-user-static registered in binfmt_misc) when it is missing,
# and says what it did. edgefleet builds linux/arm64 images and runs an emulated arm64
# device with it (docs/operations.md, "arm64 and armv7").
#
#   apt: qemu-user-static (the emulators, registered with flag F: they work inside
#        containers), binfmt-support (update-binfmts), arch-test (mmdebstrap --arch=arm64)
#   mount binfmt_misc at /proc/sys/fs/binfmt_misc when it is not mounted
#   update-binfmts --enable qemu-aarch64
#
# EDGEFLEET_NO_QEMU=1 skips all of it (x86_64-only hosts that never build arm64 images).
# Fails loudly (non-zero, one line naming the fix) when something cannot be done.
set -euo pipefail

say() { echo "edgefleet: $*" >&2; }
BINFMT=/proc/sys/fs/binfmt_misc
ENTRY=qemu-aarch64

if [ "${EDGEFLEET_NO_QEMU:-}" = 1 ]; then
  say "EDGEFLEET_NO_QEMU=1: arm64 emulation not set up (arm64 images will not be built here)"
  exit 0
fi
if [ "$(uname -m)" = aarch64 ]; then
  exit 0  # an arm64 host runs arm64 images natively
fi
if [ -f "$BINFMT/$ENTRY" ] && head -n1 "$BINFMT/$ENTRY" | grep -qx enabled; then
  exit 0
fi

need=()
[ -x /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static)
command -v update-binfmts >/dev/null 2>&1 || need+=(binfmt-support)
command -v arch-test >/dev/null 2>&1 || need+=(arch-test)
if [ "$(id -u)" != 0 ]; then
  say "arm64 emulation is not set up; run 'sudo make install' (or: sudo apt-get install" \
      "-y qemu-user-static binfmt-support arch-test && sudo update-binfmts --enable $ENTRY)"
  exit 1
fi
if ((${#need[@]})); then
  say "installing ${need[*]} (apt) for arm64 emulation"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ ! -e "$BINFMT/register" ]; then
  say "mounting binfmt_misc at $BINFMT"
  mount -t binfmt_misc binfmt_misc "$BINFMT"
fi
say "enabling $ENTRY in binfmt_misc (update-binfmts): arm64 images now run under qemu"
update-binfmts --enable "$ENTRY" >/dev/null 2>&1 || update-binfmts --import "$ENTRY"
if ! head -n1 "$BINFMT/$ENTRY" 2>/dev/null | grep -qx enabled; then
  say "could not enable $ENTRY in $BINFMT: check 'update-binfmts --display $ENTRY'"
  exit 1
fi
