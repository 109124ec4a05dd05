#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time; exits non-zero
# on the first crash (libFuzzer writes the input to fuzz/artifacts/<target>/).
#
#   ./scripts/fuzz.sh [SECONDS]     default 20 s per target
#
# Works on the stable toolchain: `--sanitizer none` needs no -Z flag (the
# coverage instrumentation cargo-fuzz adds is stable -C options), so there is
# no nightly and no RUSTC_BOOTSTRAP. Without AddressSanitizer a crash is a
# panic, an abort, a timeout or running out of memory; choreo has no unsafe
# code for ASan to watch. Debug assertions are on (`-a`): an integer overflow
# panics here instead of wrapping silently in a release build.
#
# New inputs libFuzzer finds go to fuzz/target/corpus/<target> (ignored by
# git); the seeds in fuzz/corpus/<target> are only read.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-20}"
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if ! command -v cargo-fuzz >/dev/null 2>&1 && [ ! -x "$cargo_bin/cargo-fuzz" ]; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --version 0.13.2 --locked
fi

flags=(--sanitizer none --debug-assertions)
targets=$(cargo fuzz list)
start=$(date +%s)
cargo fuzz build "${flags[@]}"
echo "built $(echo $targets | wc -w) targets in $(( $(date +%s) - start )) s"

for target in $targets; do
  mkdir -p "target/corpus/$target" "corpus/$target"
  echo "==> fuzzing $target for ${seconds} s"
  if ! cargo fuzz run "${flags[@]}" "$target" "target/corpus/$target" "corpus/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      2> "target/fuzz-$target.log"; then
    tail -n 60 "target/fuzz-$target.log"
    echo "fuzz target $target crashed: the input is in fuzz/artifacts/$target/ (reproduce with: cd fuzz && cargo fuzz run ${flags[*]} $target fuzz/artifacts/$target/<file>)" >&2
    exit 1
  fi
  grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb" "target/fuzz-$target.log" | tr '\n' ' '
  echo
done
echo "fuzzing: no crash in $(echo $targets | wc -w) targets"
