#!/usr/bin/env bash
# Runs one fuzz target (docs/fuzzing.md) on the stable toolchain, niced, then
# minimises its corpus:
#   scripts/fuzz.sh TARGET [SECONDS]        e.g. scripts/fuzz.sh smtp_data 600
#   scripts/fuzz.sh --list
# libFuzzer through cargo-fuzz: RUSTC_BOOTSTRAP=1 lets stable rustc take the -Z flags
# cargo-fuzz passes; --sanitizer none because AddressSanitizer needs a nightly std
# (and the code has no unsafe). A crash is written to fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo_fuzz_version=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -qF "$cargo_fuzz_version"; then
    cargo install --locked --quiet cargo-fuzz --version "$cargo_fuzz_version"
fi
export RUSTC_BOOTSTRAP=1
if [ "${1:-}" = --list ]; then
    exec cargo fuzz list
fi
target=${1:?usage: scripts/fuzz.sh TARGET [SECONDS]}
seconds=${2:-600}

nice -n 19 cargo fuzz run --sanitizer none -O "$target" -- \
    -max_total_time="$seconds" -max_len=4096 -print_final_stats=1
# Keep only the inputs that add coverage (cmin rewrites fuzz/corpus/TARGET).
nice -n 19 cargo fuzz cmin --sanitizer none -O "$target" -- -max_len=4096
