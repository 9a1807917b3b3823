#!/usr/bin/env bash
# Emulated Redfish machines with simulated deploy ramdisks, to deploy by
# hand against a running Ferric (README, "Deploy a machine"). Arguments go
# to redfish-lab (--systems N, --images-dir DIR, --disk-mib N; --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --quiet -p ferric-tests --bin redfish-lab
exec target/debug/redfish-lab "$@"
