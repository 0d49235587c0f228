#!/usr/bin/env bash
# Run berth's whole test suite on this machine: installs what it needs, then unit tests,
# golden tests and the privileged integration tests (real containers, bridges, overlay
# mounts, a real registry on 127.0.0.1). Run as root from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
# berth's DNS never forwards test queries to the host's resolver.
export BERTH_DNS_UPSTREAM=none
mkdir -p target
log=target/test-output.txt
set +e
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log" | tee target/test-summary.txt
exit "$status"
