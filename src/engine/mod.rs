//! The decision engine: a [`Snapshot`] plus one request gives a [`Decision`].
//!
//! Everything here is synchronous and knows nothing of gRPC: the API layer converts wire
//! types into a [`Query`] and [`EntitiesInput`], and maps [`RequestError`] to a status.
//! Cedar's own rules decide: default deny, forbid wins over permit, a policy that errors
//! is skipped and reported. Inputs are checked against the limits (entity count, parent
//! chain length, JSON nesting) before Cedar sees them.

mod entities;
mod json;
mod request;

use std::borrow::Cow;

use cedar_policy::{
    AuthorizationError, Authorizer, Context, Entities, EntityUid, Request, RestrictedExpression,
};

pub use entities::CallEntities;

use crate::{
    config::Limits,
    policy::{Snapshot, slice::Slice},
};

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

/// An error inside one policy during evaluation; Cedar skips that policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The policy that errored.
    pub policy_id: String,
    /// What went wrong.
    pub message: String,
}

/// The answer to one [`Query`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// `true` only when some permit is satisfied and no forbid is.
    pub allowed: bool,
    /// The satisfied forbids (deny) or permits (allow), sorted; empty for a default deny.
    pub determining_policies: Vec<String>,
    /// Policies that errored and were skipped, sorted by policy id.
    pub errors: Vec<PolicyError>,
}

/// A request the engine refuses to decide; `field` names the input at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The input is malformed or does not match the schema.
    #[error("{field}: {message}")]
    Invalid {
        /// The request field at fault, e.g. `context.mfa` or `entities[2]`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The input is past a configured limit.
    #[error("{field}: {message}")]
    Limit {
        /// The request field at fault.
        field: String,
        /// Which limit, and by how much.
        message: String,
    },
}

impl RequestError {
    /// An [`RequestError::Invalid`] for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A [`RequestError::Limit`] for `field`.
    pub fn limit(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Limit {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The request field at fault (never the value sent, which may be a secret).
    pub fn field(&self) -> &str {
        match self {
            Self::Invalid { field, .. } | Self::Limit { field, .. } => field,
        }
    }

    /// The same error, its field placed under `prefix` (e.g. `items[3]`).
    pub fn within(self, prefix: &str) -> Self {
        self.map_field(|field| format!("{prefix}.{field}"))
    }

    /// The same error with its field renamed by `rename` (e.g. a wire name to the name
    /// the caller wrote).
    pub fn map_field(self, rename: impl FnOnce(String) -> String) -> Self {
        match self {
            Self::Invalid { field, message } => Self::Invalid {
                field: rename(field),
                message,
            },
            Self::Limit { field, message } => Self::Limit {
                field: rename(field),
                message,
            },
        }
    }
}

/// Decides queries against snapshots.
#[derive(Debug, Default)]
pub struct Engine {
    authorizer: Authorizer,
    options: EngineOptions,
}

impl Engine {
    /// An engine with these options.
    pub fn new(options: EngineOptions) -> Self {
        Self {
            authorizer: Authorizer::new(),
            options,
        }
    }

    /// Decides one query with the entities its call sent: [`Engine::entities`],
    /// [`Engine::request`], [`Engine::store`] and [`Engine::decide_request`] in one.
    pub fn decide(
        &self,
        snapshot: &Snapshot,
        entities: EntitiesInput,
        query: Query,
    ) -> Result<Decision, RequestError> {
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
    ) -> Result<CallEntities, RequestError> {
        entities::check(snapshot, input, &self.options)
    }

    /// The Cedar request for `query`, validated against the snapshot's schema when
    /// requests are validated.
    pub fn request(&self, snapshot: &Snapshot, query: Query) -> Result<Request, RequestError> {
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
    ) -> Result<Cow<'s, Entities>, RequestError> {
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
            snapshot
                .index()
                .slice(snapshot.policies(), principal, action, resource, entities)
        } else {
            Slice::Whole(snapshot.policies())
        };
        self.evaluate(&policies, entities, request)
    }

    fn evaluate(
        &self,
        policies: &cedar_policy::PolicySet,
        entities: &Entities,
        request: &Request,
    ) -> Decision {
        let response = self.authorizer.is_authorized(request, policies, entities);
        let diagnostics = response.diagnostics();
        let mut determining_policies: Vec<String> =
            diagnostics.reason().map(ToString::to_string).collect();
        determining_policies.sort_unstable();
        let mut errors: Vec<PolicyError> = diagnostics
            .errors()
            .map(|e| match e {
                AuthorizationError::PolicyEvaluationError(e) => PolicyError {
                    policy_id: e.policy_id().to_string(),
                    message: e.inner().to_string(),
                },
            })
            .collect();
        errors.sort_unstable_by(|a, b| a.policy_id.cmp(&b.policy_id));
        Decision {
            allowed: response.decision() == cedar_policy::Decision::Allow,
            determining_policies,
            errors,
        }
    }
}
