#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs, checks
# formatting and lints, builds, checks the Helm chart, and runs every test (unit, property, DB on
# SQLite and PostgreSQL, and the compatibility suite that drives a real
# Ferric with the real `baremetal` CLI and openstacksdk).
#
#   scripts/test.sh                 the suite CI runs
#   scripts/test.sh -E 'test(compat)'   pass-through filter to cargo nextest
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh

export FERRIC_TEST_VENV="$PWD/.venv"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# the suites spawn the real binaries, so build them first
cargo build --workspace --bins --quiet
# kernel, ramdisk and GRUB loader the boot-ISO tests boot in QEMU
scripts/boot-fixtures.sh >/dev/null
# the Helm chart: lint, render, validate against Kubernetes' schemas (and
# install helm + kubernetes-validate, which tests/tests/helm.rs uses too)
scripts/helm-check.sh
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
