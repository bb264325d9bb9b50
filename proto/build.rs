//! Compiles the .proto files with protox (pure Rust), so building Lookout
//! never needs a system `protoc`, and generates serde impls for every
//! message with pbjson: the proto3 JSON mapping etcd's grpc-gateway writes
//! (original field names, int64 as strings, bytes as base64, enums by
//! name, zero values omitted).

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/mvccpb/kv.proto",
        "proto/authpb/auth.proto",
        "proto/etcdserverpb/rpc.proto",
        "proto/v3lockpb/v3lock.proto",
        "proto/v3electionpb/v3election.proto",
        "proto/lookout/peer.proto",
        "proto/lookout/gateway.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let descriptors = fds.encode_to_vec();
    tonic_prost_build::configure()
        // Keys and values are shared between snapshot, history and every
        // watcher's response, so they are reference-counted, never copied.
        .bytes(".")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    // etcd 3.4's gateway marshals with `OrigName: true`: JSON keys are the
    // names written in the .proto ("create_revision", "ID", "dbSize").
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .preserve_proto_field_names()
        // jsonpb as etcd's gateway configures it skips unknown fields.
        .ignore_unknown_fields()
        .build(&[
            ".mvccpb",
            ".authpb",
            ".etcdserverpb",
            ".v3lockpb",
            ".v3electionpb",
        ])?;
    Ok(())
}
