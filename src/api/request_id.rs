//! Request ids: the caller's `x-request-id` when it is a sensible token, else one made up
//! here, so every call's log lines and audit records can be tied together.

use std::{
    fmt,
    hash::{BuildHasher as _, RandomState},
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use tonic::metadata::{MetadataMap, MetadataValue};

/// The metadata key read and echoed back.
pub const HEADER: &str = "x-request-id";

/// Longest caller-supplied id kept; longer ones are replaced, not truncated.
const MAX_LEN: usize = 128;

/// One call's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// The caller's id if it is 1–128 characters of `[A-Za-z0-9._:-]`, else a new one
    /// (anything else could be used to forge or flood log lines).
    pub fn of(metadata: &MetadataMap) -> Self {
        Self::from_metadata(metadata).unwrap_or_default()
    }

    /// The caller's id from the call's metadata, if it sent a sensible one.
    pub fn from_metadata(metadata: &MetadataMap) -> Option<Self> {
        metadata
            .get(HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(Self::parse)
    }

    /// `id` as a request id, if it is a sensible one (a short token); else `None`.
    pub fn parse(id: &str) -> Option<Self> {
        is_token(id).then(|| Self(id.to_owned()))
    }

    /// A new id: 16 hex digits random per process, then a per-process sequence number.
    pub fn new() -> Self {
        static PREFIX: OnceLock<u64> = OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let prefix = *PREFIX.get_or_init(|| RandomState::new().hash_one(std::process::id()));
        Self(format!(
            "{prefix:016x}-{}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as a metadata value, to echo back to the caller.
    pub fn to_metadata(&self) -> MetadataValue<tonic::metadata::Ascii> {
        // Only token characters reach here, which are always valid metadata.
        MetadataValue::try_from(self.0.as_str()).expect("a request id is valid metadata")
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_token(id: &str) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
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
    fn a_sensible_caller_id_is_kept_and_anything_else_replaced() {
        assert_eq!(
            RequestId::of(&with("abc-123_x.y:z")).as_str(),
            "abc-123_x.y:z"
        );
        for bad in ["has space", "quote\"", &"x".repeat(129)] {
            let id = RequestId::of(&with(bad));
            assert_ne!(id.as_str(), bad);
            assert!(is_token(id.as_str()));
        }
        let a = RequestId::of(&MetadataMap::new());
        let b = RequestId::of(&MetadataMap::new());
        assert_ne!(a, b, "made-up ids are unique");
    }
}
