//! Envoy's external authorization API, `envoy.service.auth.v3.Authorization/Check`, on
//! the same port as `cedarpdp.v1`: gateways and sidecars (Envoy, Istio, Emissary, Gloo,
//! Contour) ask it for every HTTP request, with no code in the services behind them.
//!
//! A wire adapter like the `cedarpdp.v1` one: [`mapping`] turns each check into a
//! [`Question`] by the compiled [`ExtAuthz`] rules ([`rules`]), the [`Decider`] answers
//! it exactly as `IsAuthorized` would (and counts and audits it, `api="ext_authz"`), and
//! [`response`] renders the answer. The answer is always a `CheckResponse`, never a gRPC
//! error for bad input, because Envoy set to `failure_mode_allow: true` lets a request
//! through on an error: every refusal is a deny (see [`response`] for which status).

mod mapping;
pub(crate) mod response;
pub mod rules;

use std::{panic::AssertUnwindSafe, sync::Arc};

use cedar_policy::EntityUid;
use futures_util::FutureExt as _;

use prost::Message as _;
use tonic::{Request, Response, Status};

use self::{
    response::{Names, header},
    rules::ExtAuthz,
};
use super::{
    admission::Overloaded, authorizer::LIGHT_MESSAGE_BYTES, callers::CallerPolicy, request_id,
};
use crate::{
    decide::{
        Api, Call, Decider, Decision, EntitiesInput, Kept, PoolError, Question, Reason, Refusal,
        RequestId,
    },
    policy::{PolicyStore, Snapshot},
    proto::envoy::{
        config::core::v3::HeaderValueOption,
        service::auth::v3::{CheckRequest, CheckResponse, authorization_server::Authorization},
    },
    telemetry::trace,
};

/// Largest check whose decision is looked up on the async worker before it goes to a
/// decide thread: mapping it takes a few microseconds at most.
const KEPT_LOOKUP_BYTES: usize = 8 * 1024;

/// What the answer to a mapped check names, and the upstream headers an allow carries.
struct Answering {
    principal: EntityUid,
    action: String,
    resource: String,
    headers: Vec<HeaderValueOption>,
}

impl Answering {
    /// The names the answer and the upstream headers are made of, on `snapshot`.
    fn names<'a>(&'a self, snapshot: &'a Snapshot) -> Names<'a> {
        Names {
            principal: &self.principal,
            action: &self.action,
            resource: &self.resource,
            version: snapshot.version(),
        }
    }

    /// The response for what deciding the check on `snapshot` came to.
    fn answer(mut self, snapshot: &Snapshot, decided: Result<Decision, Refusal>) -> CheckResponse {
        let headers = std::mem::take(&mut self.headers);
        match decided {
            Ok(decision) => response::decided(&decision, &self.names(snapshot), headers),
            Err(refusal) => response::refused(&refusal, Some(snapshot.version())),
        }
    }
}

/// The service name callers are refused for.
const SERVICE: &str = "envoy.service.auth.v3.Authorization";

/// Serves `Check` from a [`PolicyStore`] through a [`Decider`], mapping by [`ExtAuthz`].
#[derive(Debug, Clone)]
pub struct ExtAuthzService {
    store: Arc<PolicyStore>,
    decider: Arc<Decider>,
    rules: Arc<ExtAuthz>,
    max_value_depth: usize,
    callers: CallerPolicy,
}

impl ExtAuthzService {
    /// A service deciding with `decider` against whatever `store` serves at each call.
    pub fn new(
        store: Arc<PolicyStore>,
        decider: Arc<Decider>,
        rules: ExtAuthz,
        max_value_depth: usize,
        callers: CallerPolicy,
    ) -> Self {
        Self {
            store,
            decider,
            rules: Arc::new(rules),
            max_value_depth,
            callers,
        }
    }

    /// Decides one admitted check on `snapshot`; every outcome is a response.
    fn check(&self, call: &Call, snapshot: &Snapshot, check: &CheckRequest) -> CheckResponse {
        match self.prepare(call, snapshot, check) {
            Ok((question, answering)) => self.decide(call, snapshot, question, answering),
            Err(answer) => *answer,
        }
    }

    /// Maps a check to its question and fills in the upstream headers an allow carries;
    /// a check that cannot be asked is answered (and reported) here.
    fn prepare(
        &self,
        call: &Call,
        snapshot: &Snapshot,
        check: &CheckRequest,
    ) -> Result<(Question, Answering), Box<CheckResponse>> {
        let version = Some(snapshot.version());
        let question = match mapping::map(&self.rules, check, self.max_value_depth) {
            Ok(mapped) => mapped.into_question(self.decider.recorded_keys()),
            Err(refusal) => {
                self.decider.refuse(call, snapshot, &refusal, None);
                return Err(Box::new(response::refused(&refusal, version)));
            }
        };
        let mut answering = Answering {
            principal: question.query.principal.clone(),
            action: question.query.action.to_string(),
            resource: question.query.resource.to_string(),
            headers: Vec::new(),
        };
        // Filled in before deciding, so that a check whose allow could not be sent on is
        // refused (and recorded as refused), never recorded as an allow and sent as a deny.
        match self.upstream_headers(&answering.names(snapshot)) {
            Ok(headers) => answering.headers = headers,
            Err(refusal) => {
                self.decider
                    .refuse(call, snapshot, &refusal, Some(question));
                return Err(Box::new(response::refused(&refusal, version)));
            }
        }
        Ok((question, answering))
    }

    /// The answer to a prepared check, decided on `snapshot`.
    fn decide(
        &self,
        call: &Call,
        snapshot: &Snapshot,
        question: Question,
        answering: Answering,
    ) -> CheckResponse {
        let decided = self
            .decider
            .decide(call, snapshot, EntitiesInput::None, question);
        answering.answer(snapshot, decided)
    }

    /// Answers a small check on this async worker when its decision is kept
    /// ([`Decider::decide_if_kept`]): mapping it and a lookup, no evaluation, cost less
    /// than the hand-over to a decide thread. Otherwise the prepared check, for the decide
    /// threads. A panic here is a deny, as on the decide threads.
    fn answer_if_kept(
        &self,
        call: &Call,
        snapshot: &Snapshot,
        check: &CheckRequest,
    ) -> Result<CheckResponse, Box<(Question, Answering)>> {
        let tried = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let (question, answering) = match self.prepare(call, snapshot, check) {
                Ok(prepared) => prepared,
                Err(answer) => return Ok(*answer),
            };
            match self.decider.decide_if_kept(call, snapshot, question) {
                Kept::Answered(decided) => Ok(answering.answer(snapshot, decided)),
                Kept::No(question) => Err(Box::new((*question, answering))),
            }
        }));
        tried.unwrap_or_else(|_| {
            let refusal = self.decider.failed(call, PoolError::Panicked);
            Ok(response::refused(&refusal, Some(snapshot.version())))
        })
    }

    /// The configured upstream headers, filled in; a value that would not be a valid
    /// header value (a control character from an entity id) refuses the check.
    fn upstream_headers(&self, names: &Names<'_>) -> Result<Vec<HeaderValueOption>, Refusal> {
        if self.rules.upstream_headers.is_empty() {
            return Ok(Vec::new());
        }
        let principal_type = names.principal.type_name().to_string();
        let principal_id = names.principal.id().unescaped().to_owned();
        let principal = names.principal.to_string();
        self.rules
            .upstream_headers
            .iter()
            .map(|(name, template)| {
                let value = template.render(|placeholder| match placeholder {
                    "policy_version" => Some(names.version),
                    "principal" => Some(principal.as_str()),
                    "principal_type" => Some(principal_type.as_str()),
                    "principal_id" => Some(principal_id.as_str()),
                    "action" => Some(names.action),
                    "resource" => Some(names.resource),
                    _ => None,
                });
                if value.chars().any(|c| c.is_control() && c != '\t') {
                    return Err(Refusal::invalid(
                        format!("upstream_headers.{name}"),
                        "the value would hold a control character",
                    ));
                }
                Ok(header(name, value))
            })
            .collect()
    }

    /// The answer to a check shed on arrival (counted and logged there): a deny rather
    /// than a gRPC error, so an Envoy set to fail open cannot turn overload into allow.
    fn overloaded(snapshot: &Snapshot) -> CheckResponse {
        let refusal = Refusal::new(Reason::Overloaded, "", "max_concurrent_calls");
        response::refused(&refusal, Some(snapshot.version()))
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        // Whatever fails, a deny: a panic anywhere in answering (deciding runs on the
        // pool, which catches its own) must not reach Envoy as a reset stream.
        let answer = AssertUnwindSafe(self.answer(request))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                let call = self.decider.start(Api::ExtAuthz, None, None);
                let refusal = self.decider.failed(&call, PoolError::Panicked);
                let answer = response::refused(&refusal, Some(self.store.current().version()));
                response::stamped(answer, call.decision_id())
            });
        Ok(Response::new(answer))
    }
}

impl ExtAuthzService {
    /// The answer to one check: admitted, mapped and decided off the async workers.
    async fn answer(&self, request: Request<CheckRequest>) -> CheckResponse {
        if request.extensions().get::<Overloaded>().is_some() {
            return Self::overloaded(&self.store.current());
        }
        // The HTTP request's `x-request-id` (which Envoy sets) ties the audit record to
        // Envoy's access log; then the call's own; then `http.id`, Envoy's stream id,
        // unique only within one Envoy.
        let http = request
            .get_ref()
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let given = http
            .and_then(|http| mapping::header(http, "x-request-id"))
            .and_then(|id| RequestId::parse(&id))
            .or_else(|| request_id::from_metadata(request.metadata()))
            .or_else(|| http.and_then(|http| RequestId::parse(&http.id)));
        let mut call = self
            .decider
            .start(Api::ExtAuthz, given, request.remote_addr())
            .refusals_deny();
        let span = call.span();
        // The caller's trace: the HTTP request's own headers (what the client sent through
        // Envoy), else the check's gRPC metadata (Envoy's own span, when it traces).
        let (parent, state) = (
            http.and_then(|http| mapping::header(http, "traceparent")),
            http.and_then(|http| mapping::header(http, "tracestate")),
        );
        if parent.is_some() {
            trace::continue_trace(&span, |name| match name {
                "traceparent" => parent.as_deref(),
                "tracestate" => state.as_deref(),
                _ => None,
            });
        } else {
            trace::continue_trace(&span, |name| {
                request.metadata().get(name).and_then(|v| v.to_str().ok())
            });
        }
        let admission = self.callers.admit(&request);
        if let Err(refusal) = span.in_scope(|| self.decider.admit(&mut call, SERVICE, admission)) {
            // A 403 answer rather than a gRPC error: an Envoy set to fail open must not
            // turn this refusal into an allow.
            return response::stamped(response::refused(&refusal, None), call.decision_id());
        }
        // A check sends no entities: light work, unless it is large.
        let size = request.get_ref().encoded_len();
        call.weighs(size);
        let heavy = size > LIGHT_MESSAGE_BYTES;
        let snapshot = self.store.current();
        let ready = if !heavy && size <= KEPT_LOOKUP_BYTES && self.decider.keeps_decisions() {
            let tried = span.in_scope(|| self.answer_if_kept(&call, &snapshot, request.get_ref()));
            match tried {
                Ok(answer) => return response::stamped(answer, call.decision_id()),
                Err(ready) => Some(ready),
            }
        } else {
            None
        };
        let (this, decided) = (self.clone(), call.clone());
        let answer = self
            .decider
            .off_workers(heavy, move || {
                let _in_span = span.enter();
                match ready {
                    Some(ready) => {
                        let (question, answering) = *ready;
                        this.decide(&decided, &snapshot, question, answering)
                    }
                    None => this.check(&decided, &snapshot, request.get_ref()),
                }
            })
            .await
            .unwrap_or_else(|error| {
                // Whatever failed, a deny: never a gRPC error an Envoy may fail open on.
                let refusal = self.decider.failed(&call, error);
                response::refused(&refusal, Some(self.store.current().version()))
            });
        response::stamped(answer, call.decision_id())
    }
}
