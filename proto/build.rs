//! Compiles the `.proto` files under `proto/` with `protox` (a pure-Rust
//! protobuf compiler, so no system `protoc` is needed) and generates the
//! prost messages and tonic clients and servers from the descriptors.

use std::path::Path;

const PROTO_DIR: &str = "proto";

const PROTOS: &[&str] = &[
    "etcd/api/mvccpb/kv.proto",
    "etcd/api/authpb/auth.proto",
    "etcd/api/etcdserverpb/rpc.proto",
    "cairn/peer/v1/peer.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_DIR}");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", Path::new(PROTO_DIR).join(proto).display());
    }

    let fds = protox::compile(PROTOS, [PROTO_DIR])?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The rerun-if-changed lines above cover every input; protox reads no
        // files tonic-prost-build would know about.
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;

    Ok(())
}
