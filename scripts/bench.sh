#!/usr/bin/env bash
# berth's benchmarks, from a clean clone, as root: builds release binaries, then prints the
# table (min/median/max ms, interleaved runs) and writes target/bench.json.
# Usage: sudo bash scripts/bench.sh [--runs N]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -p berth -p berth-bench
exec ./target/release/berth-bench --berth target/release/berth "$@"
