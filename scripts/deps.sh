#!/usr/bin/env bash
# Install what berth's build, tests and quick start need on Debian/Ubuntu (as root).
# Idempotent: does nothing but a check when everything is already there.
set -euo pipefail

PACKAGES=(
  busybox-static   # the local busybox image is made from it (no hub needed)
  docker-registry  # the real registry server the tests start on 127.0.0.1
  nftables         # berth's firewall backend (nft)
  iproute2         # ip: used by tests to inspect links and namespaces
  conntrack        # flushing stale conntrack entries on port remap/teardown
  runc crun        # oracles for the runtime's differential tests and the bench
  qemu-system-x86 cpio binutils  # the VM of vm::cgroup_v2_limits_in_vm (qemu, initramfs, strip)
  ca-certificates curl gcc pkg-config
)

if [ "$(id -u)" != 0 ]; then
  echo "scripts/deps.sh: run as root (berth creates namespaces, mounts, cgroups, bridges)" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The package's own registry service (where systemd runs it) listens on :5000 on every
  # interface; berth's tests start their own on 127.0.0.1 instead.
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "scripts/deps.sh: cargo not found; install a stable Rust toolchain (rustup) first" >&2
    exit 1
  fi
fi
