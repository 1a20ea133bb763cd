#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs what the tests need, then runs
# every unit, FUSE and end-to-end test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
command -v fusermount3 >/dev/null || packages+=(fuse3)       # FUSE mount helper (auto-unmount)
command -v unshare >/dev/null || packages+=(util-linux)      # namespaces in FUSE isolation tests
command -v setpriv >/dev/null || packages+=(util-linux)
if ((${#packages[@]})); then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
    echo "error: cargo not found: install the Rust toolchain (rustup) first" >&2
    exit 1
fi
# --workspace builds the binaries the end-to-end tests drive (see tests/src/lib.rs).
cargo test --workspace --locked
