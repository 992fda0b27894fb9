//! Decisions kept for reuse: a question asked again of the same snapshot, by a call that
//! sends no entities, is answered with the decision Cedar made the first time, without
//! building a request or evaluating a policy.
//!
//! Cedar's evaluation is a function of the policies, the entities and the request, with
//! no clock and no randomness. A decision is reused only when all of them are the same:
//! the snapshot version (a hash of every policy, schema and entity file: any reload that
//! changes a byte changes it), the stored entities alone (a call that sends entities is
//! never looked up here), and the question itself, principal, action, resource and the
//! context *as its caller wrote it* (the JSON text, or the canonical bytes of typed
//! values: see [`ContextInput::Canonical`]). Keys are compared in full, never by their
//! hash alone, so a collision costs a lookup and never an answer. Refusals (a request
//! the schema rejects) are not kept: they are worked out again each time.
//!
//! Bounded: at most `capacity` decisions a version, each of at most [`MAX_ENTRY_BYTES`]
//! (a question whose context passes [`MAX_CONTEXT_KEY_BYTES`], or whose uids or decision
//! text make the entry larger, is decided every time); when a table is full it is emptied
//! and fills again with what is asked from then on (no bookkeeping per hit, and a flood
//! of distinct questions cannot grow it). The tables are split into [`SHARDS`] by the
//! key's hash, each behind its own lock held only to look up or insert (decisions are
//! shared, not copied, and emptied tables are dropped after the lock is let go). As with
//! the slice cache ([`super::slice`]), the tables of the version serving and the one
//! before it are kept, so calls that started before a reload finish on theirs and a
//! reload empties the cache without anyone having to say so.

use std::{
    hash::{BuildHasher, Hash},
    sync::{Arc, Mutex},
};

use cedar_policy::{Context, EntityUid};

use super::{ContextInput, Decision, Query};
use crate::policy::FastMap;

/// Longest context (JSON text or canonical bytes) whose questions are kept: larger ones
/// are decided every time.
pub const MAX_CONTEXT_KEY_BYTES: usize = 1024;

/// Most bytes of text one entry may hold: its key (context and uids) and its decision
/// (the ids and messages of its reasons and errors). With the tables' own overhead an
/// entry takes at most about 4.5 KiB; usually a few hundred bytes.
pub const MAX_ENTRY_BYTES: usize = 4 * 1024;

/// Tables the cache is split into, each behind its own lock.
pub const SHARDS: usize = 16;

/// What the canonical bytes of a front end's typed context start with, so that two front
/// ends' encodings never share bytes (the values they can hold differ).
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
pub enum Encoder {
    /// `cedarpdp.v1` typed values.
    Grpc = 1,
    /// The context ext_authz builds from a check.
    ExtAuthz = 2,
}

/// Builds the canonical bytes of typed context values ([`ContextInput::Canonical`]): the
/// [`Encoder`]'s byte, then each value a tag byte and its payload, every string and list
/// length-prefixed, so that two different sequences of calls never write the same bytes. Front ends write their values
/// in an order fixed by their content (map keys sorted) or by configuration; past
/// [`MAX_CONTEXT_KEY_BYTES`] there are no bytes, and the context is not looked up.
#[derive(Debug)]
pub struct CanonicalBytes {
    out: Vec<u8>,
}

impl CanonicalBytes {
    /// The bytes of a context `encoder` writes.
    pub fn new(encoder: Encoder) -> Self {
        Self {
            out: vec![encoder as u8],
        }
    }

    /// How many bytes are written.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// Whether nothing is written (never: the encoder's byte comes first).
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Whether it is past the bound already (writers stop early).
    pub fn full(&self) -> bool {
        self.out.len() > MAX_CONTEXT_KEY_BYTES
    }

    /// A value's kind.
    pub fn tag(&mut self, tag: u8) {
        self.out.push(tag);
    }

    /// A length or a count.
    pub fn count(&mut self, n: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.out.extend_from_slice(&n.to_le_bytes());
    }

    /// A string, length first.
    pub fn text(&mut self, text: &str) {
        self.count(text.len());
        self.out.extend_from_slice(text.as_bytes());
    }

    /// A long.
    pub fn long(&mut self, n: i64) {
        self.out.extend_from_slice(&n.to_le_bytes());
    }

    /// A boolean.
    pub fn boolean(&mut self, b: bool) {
        self.out.push(u8::from(b));
    }

    /// The bytes, or `None` past the bound.
    pub fn finish(self) -> Option<Box<[u8]>> {
        (!self.full()).then(|| self.out.into_boxed_slice())
    }
}

/// A question, as exactly as its caller asked it: equal keys decide alike on one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QuestionKey {
    principal: EntityUid,
    action: EntityUid,
    resource: EntityUid,
    context: ContextKey,
}

/// A context as its caller wrote it. The two forms never compare equal, even for the same
/// values: only a cache hit is lost.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ContextKey {
    /// Cedar JSON text (read against the schema and the action, both in the key).
    Json(Box<str>),
    /// Canonical bytes of typed values; empty for the empty context.
    Typed(Box<[u8]>),
}

impl QuestionKey {
    /// The key of `query`, or `None` when it is not kept: a context larger than
    /// [`MAX_CONTEXT_KEY_BYTES`], typed values without their canonical bytes, or a key of
    /// more than half of [`MAX_ENTRY_BYTES`].
    pub fn of(query: &Query) -> Option<Self> {
        let context = match &query.context {
            ContextInput::Json(text) if text.len() <= MAX_CONTEXT_KEY_BYTES => {
                ContextKey::Json(text.as_str().into())
            }
            ContextInput::Canonical(typed) if typed.bytes().len() <= MAX_CONTEXT_KEY_BYTES => {
                ContextKey::Typed(typed.bytes().into())
            }
            ContextInput::Value(context) if *context == Context::empty() => {
                ContextKey::Typed(Box::default())
            }
            _ => return None,
        };
        let key = Self {
            principal: query.principal.clone(),
            action: query.action.clone(),
            resource: query.resource.clone(),
            context,
        };
        (key.bytes() <= MAX_ENTRY_BYTES / 2).then_some(key)
    }
}

/// The decisions of the two most recent snapshot versions, at most `capacity` each.
#[derive(Debug)]
pub struct DecisionCache {
    /// Most decisions a shard keeps per version.
    per_shard: usize,
    shards: Box<[Mutex<[Generation; 2]>]>,
    hasher: foldhash::fast::RandomState,
}

/// The decisions kept for one snapshot version (in one shard).
#[derive(Debug, Default)]
struct Generation {
    version: String,
    decisions: FastMap<QuestionKey, Arc<Decision>>,
}

impl DecisionCache {
    /// A cache of at most `capacity` decisions a version; `0` keeps none.
    pub fn new(capacity: usize) -> Self {
        // Fewer shards than [`SHARDS`] for a small capacity: never more than it in all.
        let shards = capacity.clamp(1, SHARDS);
        Self {
            per_shard: capacity / shards,
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
        }
    }

    /// Whether it keeps anything.
    pub fn enabled(&self) -> bool {
        self.per_shard > 0
    }

    fn shard(&self, key: &QuestionKey) -> std::sync::MutexGuard<'_, [Generation; 2]> {
        // The key is hashed out of the lock (the table hashes it again, cheaply: keys are
        // small).
        let shards = self.shards.len() as u64;
        let at = usize::try_from(self.hasher.hash_one(key) % shards).unwrap_or(0);
        self.shards[at].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The decision kept for `key` on snapshot `version`.
    pub fn get(&self, version: &str, key: &QuestionKey) -> Option<Decision> {
        let kept = {
            let generations = self.shard(key);
            generations
                .iter()
                .find(|g| g.version == version)
                .and_then(|g| g.decisions.get(key).cloned())
        }?;
        Some(Decision::clone(&kept).into_reused())
    }

    /// Keeps `decision` for `key` on snapshot `version`, unless the entry would hold more
    /// than [`MAX_ENTRY_BYTES`] of text.
    pub fn keep(&self, version: &str, key: QuestionKey, decision: &Decision) {
        if !self.enabled() || key.bytes() + decision_bytes(decision) > MAX_ENTRY_BYTES {
            return;
        }
        let decision = Arc::new(decision.clone());
        // Tables emptied here are dropped once the lock is let go.
        let mut dropped = None;
        {
            let mut generations = self.shard(&key);
            let at = match generations.iter().position(|g| g.version == version) {
                Some(at) => at,
                None => {
                    // A version not seen yet (a reload): it replaces the older of the two.
                    generations.swap(0, 1);
                    let fresh = Generation {
                        version: version.to_owned(),
                        ..Generation::default()
                    };
                    dropped = Some(std::mem::replace(&mut generations[0], fresh).decisions);
                    0
                }
            };
            let decisions = &mut generations[at].decisions;
            if decisions.len() >= self.per_shard {
                dropped = Some(std::mem::take(decisions));
            }
            decisions.insert(key, decision);
        }
        drop(dropped);
    }

    /// How many decisions it holds for `version` (tests).
    #[cfg(test)]
    pub(crate) fn len(&self, version: &str) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                let generations = shard.lock().unwrap_or_else(|p| p.into_inner());
                generations
                    .iter()
                    .find(|g| g.version == version)
                    .map_or(0, |g| g.decisions.len())
            })
            .sum()
    }
}

impl QuestionKey {
    /// The bytes of text it holds.
    fn bytes(&self) -> usize {
        let uids: usize = [&self.principal, &self.action, &self.resource]
            .iter()
            .map(|uid| {
                let ty = uid.type_name();
                let path: usize = ty.namespace_components().map(|c| c.len() + 2).sum();
                path + ty.basename().len() + uid.id().unescaped().len()
            })
            .sum();
        uids + match &self.context {
            ContextKey::Json(text) => text.len(),
            ContextKey::Typed(bytes) => bytes.len(),
        }
    }
}

/// The bytes of text `decision` holds: the ids of its reasons and erroring forbids, the
/// ids and messages of its errors.
fn decision_bytes(decision: &Decision) -> usize {
    let ids = |ids: &[String]| ids.iter().map(String::len).sum::<usize>();
    ids(decision.determining_policies())
        + ids(decision.erroring_forbids())
        + decision
            .errors()
            .iter()
            .map(|e| e.policy_id.len() + e.message.len())
            .sum::<usize>()
}

#[cfg(test)]
mod tests;
