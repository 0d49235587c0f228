#!/usr/bin/env bash
# berth's benchmarks, from a clean clone, as root: builds release binaries, then prints the
# table (min/median/max ms, interleaved runs) and writes target/bench.json.
# Usage: sudo bash scripts/bench.sh [--runs N] [--only 4,7]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
# dnsperf drives section 4's DNS throughput; bench-only, so installed here and only when
# absent (without it the bench falls back to its own load client).
if ! command -v dnsperf >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dnsperf >/dev/null 2>&1 \
    || echo "dnsperf not installable: section 4 measures DNS qps with its own load client"
fi
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -p berth -p berth-bench
# crun refuses cgroup v1 "hybrid" hosts whose cgroup2 mount holds a controller; run the
# whole bench (berth, runc and crun alike) in a private mount namespace where that mount
# is hidden, never changing the host's own mounts.
if mountpoint -q /sys/fs/cgroup/unified 2>/dev/null && [ "${BERTH_BENCH_PRIVATE_NS:-}" != 1 ]; then
  exec env BERTH_BENCH_PRIVATE_NS=1 unshare -m --propagation private \
    sh -c 'umount /sys/fs/cgroup/unified && exec ./target/release/berth-bench --berth target/release/berth "$@"' bench "$@"
fi
exec ./target/release/berth-bench --berth target/release/berth "$@"
