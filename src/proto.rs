//! Code generated from `proto/` at build time (see `build.rs`), plus the encoded
//! descriptor set that server reflection serves.

/// The `cedarpdp.v1` package: messages, the `Authorizer` server trait and a client.
pub mod cedarpdp {
    /// Version 1 of the wire contract.
    pub mod v1 {
        tonic::include_proto!("cedarpdp.v1");
    }
}

/// Encoded `FileDescriptorSet` of every proto this crate compiles, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptor");
