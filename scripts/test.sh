#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs what the tests need, then runs
# every unit, FUSE and end-to-end test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
need() { command -v "$1" >/dev/null || packages+=("$2"); }
need fusermount3 fuse3      # FUSE userspace tools (unmounting a crashed agent's mount by hand)
need unshare util-linux     # namespaces in the FUSE and task tests
need setpriv util-linux     # running test readers as other users
need mount mount
need ps procps              # a task's /proc is checked with ps
need dockerd docker.io      # container tests run real Docker (tests/src/docker.rs starts dockerd if needed)
need docker docker.io
need podman podman
need docker-compose docker-compose
# a static busybox is the whole test image (docker import of a rootfs, no registry)
dpkg -s busybox-static >/dev/null 2>&1 || packages+=(busybox-static)
need protoc protobuf-compiler  # etcd-client's build script compiles etcd's protos
need etcd etcd-server       # the HA store's tests run a real etcd cluster on loopback
need systemd systemd        # tests/systemd.rs runs systemd as PID 1 of a container with the shipped unit
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
