#!/usr/bin/env bash
# berth quick start, on a fresh Debian/Ubuntu machine, as root, from the repository root:
# installs dependencies, builds berth, makes the local busybox image from Debian's
# busybox-static (no registry or hub needed), and brings up compose-examples/quickstart.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

echo "== building berth (release)"
cargo build --release -q -p berth -p berth-fixtures
BERTH="$PWD/target/release/berth"

echo "== making the local busybox image"
layout="$PWD/target/fixtures/busybox-oci"
rm -rf "$layout"
./target/release/berth-fixtures busybox-layout "$layout" >/dev/null
"$BERTH" image load -i "$layout"

echo "== berth up -d (compose-examples/quickstart)"
cd compose-examples/quickstart
"$BERTH" up -d
"$BERTH" ps

# The client fetches http://web:8080/ by service name every two seconds.
for _ in $(seq 1 50); do
  if "$BERTH" logs client 2>/dev/null | grep -q "hello from web"; then
    break
  fi
  sleep 0.2
done
"$BERTH" logs --tail 3 client
echo "== published port: curl http://127.0.0.1:18080/"
curl -fsS --max-time 5 http://127.0.0.1:18080/

cat <<MSG

The quick-start stack is up. From compose-examples/quickstart:
  $BERTH ps          # containers
  $BERTH logs -f     # follow the logs
  $BERTH down        # take it all away
MSG
