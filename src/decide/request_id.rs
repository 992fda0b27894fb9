//! Request ids: the caller's (`x-request-id`) when it is a sensible token, else one made
//! up by the server's [`RequestIds`], so every call's log lines and audit records can be
//! tied together. And decision ids ([`DecisionIds`]): always the server's own, unique
//! whatever request ids callers send, so an answer leads to its audit record.

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

/// Makes up decision ids: 32 hex digits, the first 16 random per generator, the last 16
/// its sequence number through a keyed pseudorandom permutation (four Feistel rounds of
/// SipHash under a random key), so ids are unique (within a generator the permutation
/// never repeats; across servers the prefixes differ) and opaque: without the key, ids do
/// not tell how many decisions were made between them, nor which comes next.
#[derive(Debug)]
pub struct DecisionIds {
    prefix: u64,
    /// The round function's key (SipHash, randomly keyed).
    rounds: RandomState,
    next: AtomicU64,
}

impl DecisionIds {
    /// A generator with a fresh random prefix and key.
    pub fn new() -> Self {
        Self {
            prefix: RandomState::new().hash_one(("decision ids", std::process::id())),
            rounds: RandomState::new(),
            next: AtomicU64::new(0),
        }
    }

    /// A new id.
    pub fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{:016x}", self.prefix, self.permute(n))
    }

    /// A Feistel network on the two 32-bit halves of `n`: a bijection on `u64` whatever
    /// the round function, and with a keyed pseudorandom round function, pseudorandom.
    fn permute(&self, n: u64) -> u64 {
        let (mut left, mut right) = ((n >> 32) as u32, n as u32);
        for round in 0u8..4 {
            let f = self.rounds.hash_one((round, right)) as u32;
            (left, right) = (right, left ^ f);
        }
        (u64::from(left) << 32) | u64::from(right)
    }
}

impl Default for DecisionIds {
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

    #[test]
    fn decision_ids_are_unique_tokens_that_do_not_count_out_loud() {
        let ids = DecisionIds::new();
        let made: Vec<String> = (0..10_000).map(|_| ids.next()).collect();
        let distinct: std::collections::HashSet<&String> = made.iter().collect();
        assert_eq!(distinct.len(), made.len());
        for id in &made[..3] {
            assert_eq!(id.len(), 32);
            assert!(is_token(id));
        }
        // Consecutive ids differ in more than their last digits, and the XOR of two ids'
        // sequence parts is not the XOR of their sequence numbers.
        assert_ne!(made[0][16..28], made[1][16..28]);
        let seq = |id: &str| u64::from_str_radix(&id[16..], 16).unwrap();
        assert_ne!(seq(&made[1000]) ^ seq(&made[1037]), 1000 ^ 1037);
        assert_ne!(
            DecisionIds::new().next()[..16],
            DecisionIds::new().next()[..16]
        );
    }
}
