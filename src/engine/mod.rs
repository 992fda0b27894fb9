//! The decision engine: a [`Snapshot`] plus one [`Query`] gives a [`Decision`], or a
//! [`Refusal`] when the query cannot be decided.
//!
//! Everything here is synchronous and knows nothing of the wire: front ends convert
//! their requests into a [`Query`] and [`EntitiesInput`] (through `decide`, which also
//! counts and audits), and map a [`Refusal`] to their own answer.
//!
//! Cedar's rules decide, failing closed: default deny; forbid wins over permit; a permit
//! whose evaluation errors is skipped (it cannot allow), and a forbid that errors makes
//! the decision DENY (`on_forbid_error = "deny"`, the default; `"skip"` is Cedar's own
//! semantics). A call's entities are untrusted: by default they may only add entities
//! the store does not hold (`request_entities`). Inputs are checked against the limits
//! (entity count, parent chain length, parent edges, the closure Cedar would work out,
//! JSON nesting) before Cedar sees them, so every admitted decision has a bounded cost.
//! Request-time policy slicing and its cache are here too ([`slice`]); the snapshot they
//! read stays immutable.

pub mod cache;
mod decision;
mod entities;
mod json;
mod refusal;
mod request;
pub mod slice;

/// The tests' seeded random numbers (shared with the integration tests).
#[cfg(test)]
#[path = "../../tests/common/rng.rs"]
mod rng;

use cedar_policy::{
    AuthorizationError, Authorizer, Context, Effect as PolicyEffect, Entities, EntityUid,
    PolicySet, Request, RestrictedExpression,
};

pub use decision::{Decision, Effect, PolicyError};
pub use entities::{CallEntities, Store};
pub use refusal::Refusal;
pub use request::CheckedContexts;

use self::{
    cache::{DecisionCache, QuestionKey},
    slice::{Slice, Slicer},
};
pub use crate::config::{OnForbidError, RequestEntities};
use crate::{config::Limits, policy::Snapshot};

/// Engine settings, fixed for the life of a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOptions {
    /// Validate requests against the snapshot's schema, when it has one.
    pub validate_requests: bool,
    /// Most entities one call may send.
    pub max_request_entities: usize,
    /// Longest parent chain among one call's entities.
    pub max_ancestor_depth: usize,
    /// Most parent edges among one call's entities.
    pub max_parent_edges: usize,
    /// Most steps working out the ancestors of one call's entities may take.
    pub max_ancestor_closure: usize,
    /// What a forbid whose evaluation errors does to the decision.
    pub on_forbid_error: OnForbidError,
    /// What calls may do with the entities they send (see [`Engine::entities`] for a
    /// call whose caller is not trusted with `Replace`).
    pub request_entities: RequestEntities,
    /// Deepest bracket nesting of a JSON field.
    pub max_value_depth: usize,
    /// Longest string in a JSON field, in bytes as written.
    pub max_string_bytes: usize,
    /// Evaluate only the policies whose scope can match the request (the same answer,
    /// faster); `false` evaluates the whole set, as a reference.
    pub slice_policies: bool,
    /// Merge a call's entities over only the part of the stored entities it can reach
    /// (the same answer, at a cost that does not grow with the store) when the store
    /// holds more than this many entities; below, merging over the whole store is cheaper.
    /// `0` slices whenever anything is stored (tests), `usize::MAX` never (the reference).
    pub slice_entities_over: usize,
    /// Most decisions kept for reuse per snapshot version (see [`cache`]); `0` keeps none.
    pub decision_cache_entries: usize,
}

impl EngineOptions {
    /// Options from the resolved limits, failing closed (`on_forbid_error = "deny"`,
    /// `request_entities = "add"`).
    pub fn new(validate_requests: bool, limits: &Limits) -> Self {
        Self {
            validate_requests,
            max_request_entities: limits.max_request_entities,
            max_ancestor_depth: limits.max_ancestor_depth,
            max_parent_edges: limits.max_request_parent_edges,
            max_ancestor_closure: limits.max_request_ancestor_closure,
            on_forbid_error: OnForbidError::Deny,
            request_entities: RequestEntities::Add,
            max_value_depth: limits.max_value_depth,
            max_string_bytes: limits.max_string_bytes,
            slice_policies: true,
            slice_entities_over: SLICE_ENTITIES_OVER,
            decision_cache_entries: limits.decision_cache_entries,
        }
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self::new(true, &Limits::default())
    }
}

/// Stored entities past which a call's entities are merged over only what it can reach:
/// below, copying the whole (small) store costs less than finding that part
/// (`cargo bench --bench entities`). `usize::MAX` merges over the whole store (the
/// reference the differential tests compare with).
pub const SLICE_ENTITIES_OVER: usize = 100;

/// The request context, typed or in Cedar's JSON context format.
#[derive(Debug, Clone)]
pub enum ContextInput {
    /// Built from typed values (an empty context when there are none).
    Value(Context),
    /// Cedar JSON; with a schema, `__entity`/`__extn` escapes may be left implicit.
    Json(String),
    /// Typed values with their canonical bytes (map keys sorted, every value tagged and
    /// length-prefixed: equal bytes are an equal context), which let its decisions be
    /// reused ([`cache`]).
    Canonical(CanonicalContext),
}

/// A typed context with its canonical bytes: built already, or built only when
/// evaluating needs it (a decision found in the cache needs none: its bytes converted
/// before, and converting is a function of them).
#[derive(Clone)]
pub struct CanonicalContext {
    bytes: Box<[u8]>,
    build: std::sync::Arc<dyn Fn() -> Result<Context, Refusal> + Send + Sync>,
}

impl CanonicalContext {
    /// `context`, built already, with its canonical `bytes`.
    pub fn built(bytes: Box<[u8]>, context: Context) -> Self {
        Self::deferred(bytes, move || Ok(context.clone()))
    }

    /// A context with canonical `bytes`, built by `build` when needed (its refusal names
    /// the field).
    pub fn deferred(
        bytes: Box<[u8]>,
        build: impl Fn() -> Result<Context, Refusal> + Send + Sync + 'static,
    ) -> Self {
        Self {
            bytes,
            build: std::sync::Arc::new(build),
        }
    }

    /// Its canonical bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The Cedar context.
    pub fn build(&self) -> Result<Context, Refusal> {
        (self.build)()
    }
}

impl std::fmt::Debug for CanonicalContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CanonicalContext")
            .field("bytes", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

/// One authorization question.
#[derive(Debug, Clone)]
pub struct Query {
    /// Who asks.
    pub principal: EntityUid,
    /// What they want to do.
    pub action: EntityUid,
    /// To what.
    pub resource: EntityUid,
    /// The circumstances.
    pub context: ContextInput,
}

/// An entity sent with a call, in typed form.
#[derive(Debug, Clone)]
pub struct EntityInput {
    /// Its uid.
    pub uid: EntityUid,
    /// Attribute values.
    pub attrs: Vec<(String, RestrictedExpression)>,
    /// Direct parents.
    pub parents: Vec<EntityUid>,
    /// Tag values.
    pub tags: Vec<(String, RestrictedExpression)>,
}

/// The entities sent with a call; what they may do is [`EngineOptions::request_entities`].
#[derive(Debug, Clone, Default)]
pub enum EntitiesInput {
    /// None: decide against the stored entities alone.
    #[default]
    None,
    /// Typed entities.
    Typed(Vec<EntityInput>),
    /// Cedar's JSON entity format.
    Json(String),
}

/// Decides queries against snapshots.
#[derive(Debug)]
pub struct Engine {
    authorizer: Authorizer,
    options: EngineOptions,
    /// Slices built for the snapshots served, kept for reuse.
    slicer: Slicer,
    /// Decisions made for the snapshots served, kept for reuse.
    cache: DecisionCache,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new(EngineOptions::default())
    }
}

impl Engine {
    /// An engine with these options.
    pub fn new(options: EngineOptions) -> Self {
        Self {
            authorizer: Authorizer::new(),
            cache: DecisionCache::new(options.decision_cache_entries),
            options,
            slicer: Slicer::new(),
        }
    }

    /// The options it decides with.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Decides one query with the entities its call sent: [`Engine::entities`],
    /// [`Engine::request`], [`Engine::store`] and [`Engine::decide_request`] in one.
    pub fn decide(
        &self,
        snapshot: &Snapshot,
        entities: EntitiesInput,
        query: Query,
    ) -> Result<Decision, Refusal> {
        let entities = self.entities(snapshot, entities)?;
        let request = self.request(snapshot, query)?;
        let store = self.store(snapshot, entities, std::slice::from_ref(&request))?;
        Ok(self.decide_request(snapshot, &store, &request))
    }

    /// Decides `query` against the stored entities alone (a call that sent none):
    /// [`Engine::request`] then [`Engine::decide_request`], or the decision made for the
    /// same question on the same snapshot before, when one is kept ([`cache`]).
    pub fn decide_stored(&self, snapshot: &Snapshot, query: Query) -> Result<Decision, Refusal> {
        let key = QuestionKey::of(&query).filter(|_| self.cache.enabled());
        if let Some(key) = &key
            && let Some(decision) = self.cache.get(snapshot.version(), key)
        {
            return Ok(decision);
        }
        let request = self.request(snapshot, query)?;
        let decision = self.decide_request(snapshot, &snapshot.entities().into(), &request);
        if let Some(key) = key {
            self.cache.keep(snapshot.version(), key, &decision);
        }
        Ok(decision)
    }

    /// The decision kept for `query` on `snapshot` by [`Engine::decide_stored`], if any:
    /// a lookup, no evaluation (cheap enough for an async worker).
    pub fn kept(&self, snapshot: &Snapshot, query: &Query) -> Option<Decision> {
        if !self.cache.enabled() {
            return None;
        }
        self.cache.get(snapshot.version(), &QuestionKey::of(query)?)
    }

    /// Whether it keeps decisions for reuse at all.
    pub fn keeps_decisions(&self) -> bool {
        self.cache.enabled()
    }

    /// A call's entities, checked against the limits and the configured
    /// [`RequestEntities`] mode, and validated on their own (not yet merged over the store:
    /// see [`Engine::store`]).
    pub fn entities(
        &self,
        snapshot: &Snapshot,
        input: EntitiesInput,
    ) -> Result<CallEntities, Refusal> {
        self.entities_as(snapshot, input, self.options.request_entities)
    }

    /// [`Engine::entities`] under `mode` instead of the configured one (a caller not
    /// trusted with `Replace` gets `Add`).
    pub fn entities_as(
        &self,
        snapshot: &Snapshot,
        input: EntitiesInput,
        mode: RequestEntities,
    ) -> Result<CallEntities, Refusal> {
        entities::check(snapshot, input, &self.options, mode)
    }

    /// The Cedar request for `query`, validated against the snapshot's schema when
    /// requests are validated.
    pub fn request(&self, snapshot: &Snapshot, query: Query) -> Result<Request, Refusal> {
        request::build(snapshot, query, &self.options, None)
    }

    /// [`Engine::request`] for one of the requests of a call: a context `checked` holds
    /// as validated for the same action (an earlier item's) is not validated again.
    pub fn request_among(
        &self,
        snapshot: &Snapshot,
        query: Query,
        checked: &mut CheckedContexts,
    ) -> Result<Request, Refusal> {
        request::build(snapshot, query, &self.options, Some(checked))
    }

    /// The context `json` (Cedar JSON) of requests for `action` on `snapshot`, read once
    /// for many requests that share it (a search's candidates).
    pub fn context(
        &self,
        snapshot: &Snapshot,
        json: &str,
        action: &EntityUid,
    ) -> Result<Context, Refusal> {
        let schema = snapshot.schema().filter(|_| self.options.validate_requests);
        request::context_from_json(json, action, schema, &self.options)
    }

    /// The entity store to decide all of one call's `requests` against: the stored
    /// entities with the call's merged over them (only new ones, unless the call was
    /// allowed to replace). Borrows the snapshot's store when the call sends none; else
    /// copies only what the requests can reach. Build once per call: a batch shares it.
    pub fn store<'s>(
        &self,
        snapshot: &'s Snapshot,
        entities: CallEntities,
        requests: &[Request],
    ) -> Result<Store<'s>, Refusal> {
        entities::merge(snapshot, entities, requests, &self.options)
    }

    /// Decides `request` (from [`Engine::request`]) against `entities` (from
    /// [`Engine::store`] for a set of requests that included it), on `snapshot`.
    pub fn decide_request(
        &self,
        snapshot: &Snapshot,
        store: &Store<'_>,
        request: &Request,
    ) -> Decision {
        let entities = store.entities();
        let (Some(principal), Some(action), Some(resource)) =
            (request.principal(), request.action(), request.resource())
        else {
            // Every request the engine builds names all three.
            return self.evaluate(snapshot.policies(), entities, request);
        };
        let policies = if self.options.slice_policies {
            let (version, index) = (snapshot.version(), snapshot.index());
            let uids = [principal, action, resource];
            match store.picked(uids) {
                Some(picked) => self
                    .slicer
                    .slice_picked(version, index, snapshot, uids, entities, picked),
                None => self
                    .slicer
                    .slice(version, index, snapshot, uids, entities, true),
            }
        } else {
            Slice::Whole(snapshot.policies())
        };
        self.evaluate(&policies, entities, request)
    }

    /// Cedar's answer for `request` on `policies`, as a [`Decision`]: Cedar's, except
    /// that with `on_forbid_error = "deny"` a forbid whose evaluation errored denies.
    fn evaluate(&self, policies: &PolicySet, entities: &Entities, request: &Request) -> Decision {
        let response = self.authorizer.is_authorized(request, policies, entities);
        let diagnostics = response.diagnostics();
        let mut erroring_forbids = Vec::new();
        let errors = diagnostics
            .errors()
            .map(|e| match e {
                AuthorizationError::PolicyEvaluationError(e) => {
                    let forbid = policies
                        .policy(e.policy_id())
                        .is_some_and(|p| p.effect() == PolicyEffect::Forbid);
                    if forbid {
                        erroring_forbids.push(e.policy_id().to_string());
                    }
                    PolicyError {
                        policy_id: e.policy_id().to_string(),
                        message: e.inner().to_string(),
                    }
                }
            })
            .collect();
        let allowed = response.decision() == cedar_policy::Decision::Allow;
        let reasons = diagnostics.reason().map(ToString::to_string).collect();
        let decision = match self.options.on_forbid_error {
            OnForbidError::Deny if !erroring_forbids.is_empty() => {
                // The satisfied forbids still decide, with the erroring ones; the
                // satisfied permits of an allow Cedar made do not.
                let reasons = if allowed { Vec::new() } else { reasons };
                Decision::denied_by_error(reasons, erroring_forbids, errors)
            }
            _ => Decision::evaluated(allowed, reasons, errors),
        };
        decision.after_evaluating(policies.num_of_policies())
    }
}
