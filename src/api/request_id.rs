//! Request ids on the wire: read from a call's `x-request-id` metadata and echoed back on
//! its answer (the id itself is `decide::RequestId`).

use tonic::metadata::{Ascii, MetadataMap, MetadataValue};

use crate::decide::RequestId;

/// The metadata key read and echoed back.
pub const HEADER: &str = "x-request-id";

/// The caller's id from the call's metadata, if it sent a sensible one.
pub(crate) fn from_metadata(metadata: &MetadataMap) -> Option<RequestId> {
    metadata
        .get(HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(RequestId::parse)
}

/// The id as a metadata value, to echo back to the caller.
pub(crate) fn to_metadata(id: &RequestId) -> MetadataValue<Ascii> {
    // Only token characters make a request id, which are always valid metadata.
    MetadataValue::try_from(id.as_str()).expect("a request id is valid metadata")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(id: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert(HEADER, id.parse().unwrap());
        metadata
    }

    #[test]
    fn a_sensible_caller_id_is_read_and_echoed_and_anything_else_ignored() {
        let id = from_metadata(&with("abc-123_x.y:z")).unwrap();
        assert_eq!(to_metadata(&id), "abc-123_x.y:z");
        assert_eq!(from_metadata(&with("has space")), None);
        assert_eq!(from_metadata(&MetadataMap::new()), None);
    }
}
