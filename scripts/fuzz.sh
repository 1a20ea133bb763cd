#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each (default 60): the join token, compose files,
# sealed records, service SPEC strings, placement constraints and node access reports. cargo-fuzz needs nightly features;
# RUSTC_BOOTSTRAP=1 lets the stable toolchain build them. A crash stops the script non-zero and
# leaves its input under fuzz/artifacts/TARGET/ (turn it into a unit test when fixing it).
set -euo pipefail
seconds="${1:-60}"
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
for target in $(cargo fuzz list); do
    echo "== $target (${seconds}s)"
    cargo fuzz run -O "$target" -- -max_total_time="$seconds" -max_len=65536
done
