//! Request ids: the caller's (`x-request-id`) when it is a sensible token, else one made
//! up by the server's [`RequestIds`], so every call's log lines and audit records can be
//! tied together.

use std::{
    fmt,
    hash::{BuildHasher as _, RandomState},
    sync::atomic::{AtomicU64, Ordering},
};

/// Longest caller-supplied id kept; longer ones are replaced, not truncated.
const MAX_LEN: usize = 128;

/// One call's id: 1–128 characters of `[A-Za-z0-9._:-]`, so it is always a valid header
/// value and can neither forge nor break a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// `id` as a request id, if it is a sensible one (a short token); else `None`.
    pub fn parse(id: &str) -> Option<Self> {
        is_token(id).then(|| Self(id.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Makes up ids for calls that bring none: 16 hex digits random per generator, then its
/// sequence number, so ids are unique across servers and restarts.
#[derive(Debug)]
pub struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl RequestIds {
    /// A generator with a fresh random prefix.
    pub fn new() -> Self {
        Self {
            prefix: RandomState::new().hash_one(std::process::id()),
            next: AtomicU64::new(1),
        }
    }

    /// A new id.
    pub fn next(&self) -> RequestId {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        RequestId(format!("{:016x}-{n}", self.prefix))
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
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

    #[test]
    fn a_sensible_caller_id_is_kept_and_anything_else_refused() {
        assert_eq!(
            RequestId::parse("abc-123_x.y:z").map(|id| id.0),
            Some("abc-123_x.y:z".to_owned())
        );
        for bad in ["", "has space", "quote\"", "new\nline", &"x".repeat(129)] {
            assert_eq!(RequestId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn made_up_ids_are_tokens_and_unique() {
        let ids = RequestIds::new();
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        assert!(is_token(a.as_str()) && is_token(b.as_str()));
        assert_ne!(RequestIds::new().next(), RequestIds::new().next());
    }
}
