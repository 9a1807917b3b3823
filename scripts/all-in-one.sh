#!/usr/bin/env bash
# Run Ferric all-in-one (API + conductor, SQLite under .ferric/, Ironic API
# on 127.0.0.1:6385). Extra arguments go to `ferric all-in-one`, e.g.
#   scripts/all-in-one.sh --listen 127.0.0.1:7000 --data-dir /var/lib/ferric
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh build
exec cargo run --release --quiet --bin ferric -- all-in-one "$@"
