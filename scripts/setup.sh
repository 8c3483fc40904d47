#!/usr/bin/env bash
# Installs what building and testing Cairn needs on a fresh Debian machine, and
# only what is missing: libclang (RocksDB's bindings), etcd's server and client
# (compatibility tests, side-by-side benchmarks), nftables, iproute2 and a font
# (the jepsen/ chaos harness), promtool (Debian package prometheus, to check
# ops/alerts.yml), and
# protoc for the etcd-client test dependency.
set -euo pipefail

need=()
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v nft >/dev/null 2>&1 || need+=(nftables)
# promtool checks the alerting rules in ops/.
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# The jepsen/ harness: `ip` and `tc` (iproute2) for namespaces and slow links,
# and a font for the axis labels of its reports' plots.
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v tc >/dev/null 2>&1 || need+=(iproute2)
[[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || need+=(fonts-dejavu-core)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
# Only the etcd-client crate (a test dependency) needs protoc; Cairn's own crates
# compile their .proto files with protox.
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)

if ((${#need[@]})); then
    echo "setup: installing ${need[*]}" >&2
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; install the stable Rust toolchain (rustup) first" >&2
    exit 1
fi
