//! Compiles `proto/` in pure Rust (protox: no system `protoc`) into tonic/prost code, and
//! writes the encoded descriptor set that server reflection serves.
//!
//! Two services are compiled: our own `cedarpdp.v1` contract, and Envoy's external
//! authorization API (`envoy.service.auth.v3`) from the upstream protos vendored under
//! `proto/` (see `proto/README.md`), with the messages they import.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/cedarpdp/v1/authorizer.proto",
        "proto/envoy/service/auth/v3/external_auth.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("descriptor.bin"), fds.encode_to_vec())?;
    // Upstream comments are reStructuredText for Envoy's own site: as rustdoc they would
    // be broken links and, worse, doctests. Our own contract keeps its comments.
    let upstream = [".envoy", ".google", ".udpa", ".validate", ".xds"];
    let mut messages = tonic_prost_build::Config::new();
    messages.disable_comments(upstream);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // prost's codec, but a message nested too deep is a limit, not an internal error,
        // and an undecodable Envoy check is denied (src/proto/codec.rs).
        .codec_path("crate::proto::codec::PdpCodec")
        .disable_comments(upstream)
        .include_file("protos.rs")
        .compile_fds_with_config(fds, messages)?;
    Ok(())
}
