#!/usr/bin/env bash
# Regenerates api-server/src/os_traits.txt: the standard trait names of
# os-traits (the vocabulary Ironic accepts besides CUSTOM_*), one per line,
# from the pinned release on PyPI. Run it when moving to a newer os-traits.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-3.9.0}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q "os-traits==$version"
{
  echo "# os-traits $version: standard trait names (scripts/gen-os-traits.sh)"
  "$tmp/venv/bin/python" -c 'import os_traits; print("\n".join(sorted(os_traits.get_traits())))'
} > api-server/src/os_traits.txt
wc -l api-server/src/os_traits.txt
