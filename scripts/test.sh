#!/usr/bin/env bash
# Run berth's whole test suite on this machine: installs what it needs, then unit tests,
# golden tests and the privileged integration tests (real containers, bridges, overlay
# mounts, a real registry on 127.0.0.1). Run as root from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo test --workspace --no-fail-fast "$@"
