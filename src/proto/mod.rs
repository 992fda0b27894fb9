//! Code generated from `proto/` at build time (see `build.rs`), the encoded descriptor
//! set that server reflection serves, and the [`codec`] the generated services use.
//!
//! The module tree follows the proto packages:
//! - `cedarpdp::v1`: our own contract, the `Authorizer` server trait and a client;
//! - `envoy::service::auth::v3`: Envoy's external authorization API (`Authorization`
//!   server trait, `CheckRequest`, `CheckResponse`), with the Envoy, `google.rpc`, xDS
//!   and validation messages it imports. These are upstream's protos, unchanged.

// Generated code is checked by its generator, not by our lints.
#![allow(clippy::large_enum_variant, clippy::len_without_is_empty)]

pub mod codec;

include!(concat!(env!("OUT_DIR"), "/protos.rs"));

/// Encoded `FileDescriptorSet` of every proto this crate compiles, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptor");
