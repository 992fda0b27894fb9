//! The decision engine: a [`Snapshot`] plus one [`Query`] gives a [`Decision`], or a
//! [`Refusal`] when the query cannot be decided.
//!
//! Everything here is synchronous and knows nothing of the wire: front ends convert
//! their requests into a [`Query`] and [`EntitiesInput`] (through `decide`, which also
//! counts and audits), and map a [`Refusal`] to their own answer. Cedar's own rules
//! decide: default deny, forbid wins over permit, a policy that errors is reported.
//! Inputs are checked against the limits (entity count, parent chain length, JSON
//! nesting) before Cedar sees them. Request-time policy slicing and its cache are here
//! too ([`slice`]); the snapshot they read stays immutable.

mod decision;
mod entities;
mod json;
mod refusal;
mod request;
pub mod slice;

use std::borrow::Cow;

use cedar_policy::{
    AuthorizationError, Authorizer, Context, Entities, EntityUid, Request, RestrictedExpression,
};

pub use decision::{Decision, Effect, PolicyError};
pub use entities::CallEntities;
pub use refusal::Refusal;

use self::slice::{Slice, Slicer};
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
}

impl EngineOptions {
    /// Options from the resolved limits.
    pub fn new(validate_requests: bool, limits: &Limits) -> Self {
        Self {
            validate_requests,
            max_request_entities: limits.max_request_entities,
            max_ancestor_depth: limits.max_ancestor_depth,
            max_value_depth: limits.max_value_depth,
            max_string_bytes: limits.max_string_bytes,
            slice_policies: true,
            slice_entities_over: SLICE_ENTITIES_OVER,
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
/// (`cargo bench --bench entities`).
pub const SLICE_ENTITIES_OVER: usize = 100;

/// The request context, typed or in Cedar's JSON context format.
#[derive(Debug, Clone)]
pub enum ContextInput {
    /// Built from typed values (an empty context when there are none).
    Value(Context),
    /// Cedar JSON; with a schema, `__entity`/`__extn` escapes may be left implicit.
    Json(String),
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

/// The entities sent with a call; they replace stored entities with the same uid.
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
#[derive(Debug, Default)]
pub struct Engine {
    authorizer: Authorizer,
    options: EngineOptions,
    /// Slices built for the snapshots served, kept for reuse.
    slicer: Slicer,
}

impl Engine {
    /// An engine with these options.
    pub fn new(options: EngineOptions) -> Self {
        Self {
            authorizer: Authorizer::new(),
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

    /// A call's entities, checked against the limits and validated on their own (not yet
    /// merged over the store: see [`Engine::store`]).
    pub fn entities(
        &self,
        snapshot: &Snapshot,
        input: EntitiesInput,
    ) -> Result<CallEntities, Refusal> {
        entities::check(snapshot, input, &self.options)
    }

    /// The Cedar request for `query`, validated against the snapshot's schema when
    /// requests are validated.
    pub fn request(&self, snapshot: &Snapshot, query: Query) -> Result<Request, Refusal> {
        request::build(snapshot, query, &self.options)
    }

    /// The entity store to decide all of one call's `requests` against: the stored
    /// entities with the call's merged over them (a call's entity replaces a stored one
    /// with the same uid). Borrows the snapshot's store when the call sends none; else
    /// copies only what the requests can reach. Build once per call: a batch shares it.
    pub fn store<'s>(
        &self,
        snapshot: &'s Snapshot,
        entities: CallEntities,
        requests: &[Request],
    ) -> Result<Cow<'s, Entities>, Refusal> {
        entities::merge(snapshot, entities, requests, &self.options)
    }

    /// Decides `request` (from [`Engine::request`]) against `entities` (from
    /// [`Engine::store`] for a set of requests that included it), on `snapshot`.
    pub fn decide_request(
        &self,
        snapshot: &Snapshot,
        entities: &Entities,
        request: &Request,
    ) -> Decision {
        let (Some(principal), Some(action), Some(resource)) =
            (request.principal(), request.action(), request.resource())
        else {
            // Every request the engine builds names all three.
            return self.evaluate(snapshot.policies(), entities, request);
        };
        let policies = if self.options.slice_policies {
            self.slicer.slice(
                snapshot.version(),
                snapshot.index(),
                snapshot.policies(),
                [principal, action, resource],
                entities,
                true,
            )
        } else {
            Slice::Whole(snapshot.policies())
        };
        self.evaluate(&policies, entities, request)
    }

    /// Cedar's answer for `request` on `policies`, as a [`Decision`].
    fn evaluate(
        &self,
        policies: &cedar_policy::PolicySet,
        entities: &Entities,
        request: &Request,
    ) -> Decision {
        let response = self.authorizer.is_authorized(request, policies, entities);
        let diagnostics = response.diagnostics();
        let errors = diagnostics
            .errors()
            .map(|e| match e {
                AuthorizationError::PolicyEvaluationError(e) => PolicyError {
                    policy_id: e.policy_id().to_string(),
                    message: e.inner().to_string(),
                },
            })
            .collect();
        Decision::evaluated(
            response.decision() == cedar_policy::Decision::Allow,
            diagnostics.reason().map(ToString::to_string).collect(),
            errors,
        )
    }
}
