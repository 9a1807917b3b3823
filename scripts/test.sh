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
# A clean CI build never reuses incremental state, which is about a quarter
# of target/ (6 GB of 25 here): the last CI run died with the linker's bus
# error when the disk filled while linking a test binary.
if [[ "${CI:-}" == true ]]; then export CARGO_INCREMENTAL=0; fi
# say so early when the build is likely to run out of disk
free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
if (( free_kb < 15 * 1024 * 1024 )); then
  echo "warning: only $((free_kb / 1024)) MiB free under $PWD; a full build and test run needs about 15 GiB" >&2
fi

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
