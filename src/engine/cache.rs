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
//! Bounded: at most `capacity` decisions a version, of questions whose context is at
//! most [`MAX_CONTEXT_KEY_BYTES`]; when a version's table is full it is emptied and
//! fills again with what is asked from then on (no bookkeeping per hit, and a flood of
//! distinct questions cannot grow it). As with the slice cache ([`super::slice`]), the
//! tables of the version serving and the one before it are kept, so calls that started
//! before a reload finish on theirs and a reload empties the cache without anyone having
//! to say so.

use std::sync::Mutex;

use cedar_policy::{Context, EntityUid};

use super::{ContextInput, Decision, Query};
use crate::policy::FastMap;

/// Longest context (JSON text or canonical bytes) whose questions are kept: larger ones
/// are decided every time, so that the cache's memory stays small (about 1.5 KiB an entry
/// at most, decision included).
pub const MAX_CONTEXT_KEY_BYTES: usize = 1024;

/// Builds the canonical bytes of typed context values ([`ContextInput::Canonical`]): each
/// value a tag byte and its payload, every string and list length-prefixed, so that two
/// different sequences of calls never write the same bytes. Front ends write their values
/// in an order fixed by their content (map keys sorted) or by configuration; past
/// [`MAX_CONTEXT_KEY_BYTES`] there are no bytes, and the context is not looked up.
#[derive(Debug, Default)]
pub struct CanonicalBytes {
    out: Vec<u8>,
}

impl CanonicalBytes {
    /// Nothing written yet.
    pub fn new() -> Self {
        Self::default()
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
    /// [`MAX_CONTEXT_KEY_BYTES`], or typed values without their canonical bytes.
    pub fn of(query: &Query) -> Option<Self> {
        let context = match &query.context {
            ContextInput::Json(text) if text.len() <= MAX_CONTEXT_KEY_BYTES => {
                ContextKey::Json(text.as_str().into())
            }
            ContextInput::Canonical(_, bytes) if bytes.len() <= MAX_CONTEXT_KEY_BYTES => {
                ContextKey::Typed(bytes.clone())
            }
            ContextInput::Value(context) if *context == Context::empty() => {
                ContextKey::Typed(Box::default())
            }
            _ => return None,
        };
        Some(Self {
            principal: query.principal.clone(),
            action: query.action.clone(),
            resource: query.resource.clone(),
            context,
        })
    }
}

/// The decisions of the two most recent snapshot versions, at most `capacity` each.
#[derive(Debug)]
pub struct DecisionCache {
    capacity: usize,
    generations: Mutex<[Generation; 2]>,
}

/// The decisions kept for one snapshot version.
#[derive(Debug, Default)]
struct Generation {
    version: String,
    decisions: FastMap<QuestionKey, Decision>,
}

impl DecisionCache {
    /// A cache of at most `capacity` decisions a version; `0` keeps none.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            generations: Mutex::default(),
        }
    }

    /// Whether it keeps anything.
    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// The decision kept for `key` on snapshot `version`.
    pub fn get(&self, version: &str, key: &QuestionKey) -> Option<Decision> {
        let generations = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        generations
            .iter()
            .find(|g| g.version == version)
            .and_then(|g| g.decisions.get(key).cloned())
            .map(Decision::into_reused)
    }

    /// Keeps `decision` for `key` on snapshot `version`.
    pub fn keep(&self, version: &str, key: QuestionKey, decision: &Decision) {
        if !self.enabled() {
            return;
        }
        let mut generations = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        let at = match generations.iter().position(|g| g.version == version) {
            Some(at) => at,
            None => {
                // A version not seen yet (a reload): it replaces the older of the two.
                generations.swap(0, 1);
                generations[0] = Generation {
                    version: version.to_owned(),
                    ..Generation::default()
                };
                0
            }
        };
        let decisions = &mut generations[at].decisions;
        if decisions.len() >= self.capacity {
            decisions.clear();
        }
        decisions.insert(key, decision.clone());
    }

    /// How many decisions it holds for `version` (tests).
    #[cfg(test)]
    pub(crate) fn len(&self, version: &str) -> usize {
        let generations = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        generations
            .iter()
            .find(|g| g.version == version)
            .map_or(0, |g| g.decisions.len())
    }
}

#[cfg(test)]
mod tests;
