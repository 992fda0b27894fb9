//! The gRPC codec of the services built from `proto/`: prost's, except for what happens to
//! a message that cannot be decoded.
//!
//! prost refuses messages nested deeper than 100 levels (a typed value costs two or three
//! levels per set or record), and tonic would answer INTERNAL. Nesting is a limit the
//! caller went past, so the answer here is RESOURCE_EXHAUSTED naming `max_value_depth`;
//! other malformed bytes stay INTERNAL, as gRPC specifies for a request that does not
//! parse. Envoy's `CheckRequest` is different: its caller may be set to fail open on any
//! gRPC error, so an undecodable check is decoded as a marked, empty check that the
//! service answers with a 403 deny, like any other malformed check.

use std::marker::PhantomData;

use prost::{Message, bytes::Buf};
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::ProstEncoder;

use crate::proto::{cedarpdp::v1 as pb, envoy::service::auth::v3 as envoy};

/// The key of `attributes.context_extensions` that marks a check that did not decode; its
/// value says why.
pub(crate) const UNDECODABLE: &str = "cedar-pdp.undecodable";

/// What to do with a message of this type that does not decode.
pub trait Undecodable: Message + Default + Sized {
    /// The status to answer (the default), or a stand-in message to serve instead.
    fn undecodable(error: prost::DecodeError) -> Result<Self, Status> {
        Err(status(&error))
    }
}

/// Whether prost gave up on the message's nesting (its error has no kind to match on).
fn too_deep(error: &prost::DecodeError) -> bool {
    error.to_string().contains("recursion limit")
}

/// The status for a message that does not decode.
fn status(error: &prost::DecodeError) -> Status {
    if too_deep(error) {
        Status::resource_exhausted(
            "the message nests deeper than the decoder allows; values are nested deeper \
             than the limit (max_value_depth)",
        )
    } else {
        Status::internal(format!("the message does not decode: {error}"))
    }
}

impl Undecodable for pb::IsAuthorizedRequest {}
impl Undecodable for pb::IsAuthorizedResponse {}
impl Undecodable for pb::BatchIsAuthorizedRequest {}
impl Undecodable for pb::BatchIsAuthorizedResponse {}
impl Undecodable for pb::GetPolicySetInfoRequest {}
impl Undecodable for pb::PolicySetInfo {}
impl Undecodable for pb::GetPolicyUsageRequest {}
impl Undecodable for pb::PolicyUsage {}
impl Undecodable for envoy::CheckResponse {}

impl Undecodable for envoy::CheckRequest {
    fn undecodable(error: prost::DecodeError) -> Result<Self, Status> {
        let reason = if too_deep(&error) {
            "nested deeper than the decoder allows"
        } else {
            "malformed protobuf"
        };
        Ok(Self {
            attributes: Some(envoy::AttributeContext {
                context_extensions: [(UNDECODABLE.to_owned(), reason.to_owned())].into(),
                ..Default::default()
            }),
        })
    }
}

/// prost's codec with [`Undecodable`] deciding about messages that do not decode.
#[derive(Debug, Clone)]
pub struct PdpCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for PdpCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for PdpCodec<T, U>
where
    T: Message + Send + 'static,
    U: Undecodable + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = PdpDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        PdpDecoder(PhantomData)
    }
}

/// Decodes with prost; see [`Undecodable`].
#[derive(Debug, Clone)]
pub struct PdpDecoder<U>(PhantomData<U>);

impl<U: Undecodable> Decoder for PdpDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        match U::decode(&mut *buf) {
            Ok(message) => Ok(Some(message)),
            Err(error) => {
                // What prost left of this message must not be read as the next one.
                let rest = buf.remaining();
                buf.advance(rest);
                U::undecodable(error).map(Some)
            }
        }
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
