//! The `cedarpdp.v1.Authorizer` front end: IsAuthorized, BatchIsAuthorized and
//! GetPolicySetInfo over the serving snapshot. A wire adapter only: each call becomes
//! [`Question`]s ([`Converter`]), [`Decider`] answers them (and counts and audits), and
//! each [`Decision`] becomes an `IsAuthorizedResponse`; a [`Refusal`] becomes a status.

use std::{collections::HashMap, sync::Arc};

use prost::Message as _;
use serde_json::{Map, Value as Json};
use tonic::{Request, Response, Status};

use super::{callers::CallerPolicy, convert::Converter, request_id, status::to_status};
use crate::{
    config::Limits,
    decide::{
        Api, Call, ContextInput, Decider, Decision, EntitiesInput, Kept, PoolError, Question,
        Refusal,
    },
    policy::{PolicyStore, Snapshot},
    proto::cedarpdp::v1::{self as pb, authorizer_server},
    telemetry::trace,
};

/// Serves decisions from a [`PolicyStore`] through a [`Decider`].
#[derive(Debug, Clone)]
pub struct AuthorizerService {
    store: Arc<PolicyStore>,
    decider: Arc<Decider>,
    convert: Converter,
    callers: CallerPolicy,
}

/// The service name callers are refused for.
const SERVICE: &str = "cedarpdp.v1.Authorizer";

/// Largest batch (sending no entities) decided as light work: past it a batch may wait
/// for the threads heavy work shares, so that it cannot crowd out single questions.
const LIGHT_BATCH_ITEMS: usize = 256;

/// What [`AuthorizerService::answer_if_kept`] did with a call.
enum Fast {
    /// Answered on the async worker.
    Answered(Result<pb::IsAuthorizedResponse, Refusal>),
    /// Converted (or refused while converting), for a decide thread.
    Decide(Box<Result<(EntitiesInput, Question), Refusal>>),
}

/// Largest message whose decision is looked up on the async worker before it goes to
/// a decide thread: converting it takes a few microseconds at most.
const KEPT_LOOKUP_BYTES: usize = 4 * 1024;

/// Largest message decided as light work (converting and validating a large context
/// costs time too).
pub(crate) const LIGHT_MESSAGE_BYTES: usize = 64 * 1024;

impl AuthorizerService {
    /// A service deciding with `decider` against whatever `store` serves at each call,
    /// converting values within `limits`, for the `callers` it admits.
    pub fn new(
        store: Arc<PolicyStore>,
        decider: Arc<Decider>,
        limits: &Limits,
        callers: CallerPolicy,
    ) -> Self {
        Self {
            store,
            decider,
            convert: Converter::new(limits),
            callers,
        }
    }

    /// Starts a call: its id (from `x-request-id`, else new), peer and caller; a caller
    /// off the allow-list is refused here.
    fn start<T>(&self, api: Api, request: &Request<T>) -> Result<Call, Status> {
        let given = request_id::from_metadata(request.metadata());
        let mut call = self.decider.start(api, given, request.remote_addr());
        let admission = self.callers.admit(request);
        match self.decider.admit(&mut call, SERVICE, admission) {
            Ok(()) => Ok(call),
            Err(refusal) => Err(with_id(to_status(refusal), &call)),
        }
    }

    /// One question from the parts every request shape carries, with the context values
    /// the audit log keeps.
    fn question(
        &self,
        principal: Option<pb::EntityUid>,
        action: Option<pb::EntityUid>,
        resource: Option<pb::EntityUid>,
        context: &std::collections::HashMap<String, pb::Value>,
        context_json: String,
    ) -> Result<Question, Refusal> {
        let keys = self.decider.recorded_keys();
        let recorded_context = self.convert.recorded_context(context, &context_json, keys);
        let query = self
            .convert
            .query(principal, action, resource, context, context_json)?;
        Ok(Question {
            query,
            recorded_context,
        })
    }

    /// The call's entities and question (converting does not depend on the snapshot).
    fn convert_one(
        &self,
        request: pb::IsAuthorizedRequest,
    ) -> Result<(EntitiesInput, Question), Refusal> {
        let entities = self
            .convert
            .entities(&request.entities, request.entities_json)?;
        let question = self.question(
            request.principal,
            request.action,
            request.resource,
            &request.context,
            request.context_json,
        )?;
        Ok((entities, question))
    }

    fn is_authorized(
        &self,
        call: &Call,
        snapshot: &Snapshot,
        converted: Result<(EntitiesInput, Question), Refusal>,
    ) -> Result<pb::IsAuthorizedResponse, Refusal> {
        let (entities, question) = converted.inspect_err(|refusal| {
            self.decider.refuse(call, snapshot, refusal, None);
        })?;
        let decision = self.decider.decide(call, snapshot, entities, question)?;
        Ok(response(&decision, snapshot, call.decision_id().to_owned()))
    }

    /// Answers a small call that sends no entities on this async worker when its
    /// decision is kept ([`Decider::decide_if_kept`]): a conversion and a lookup, no
    /// evaluation, so the hand-over to a decide thread would cost more than the answer.
    /// Otherwise its converted question, for the decide threads. A panic here is an
    /// INTERNAL error, as on the decide threads.
    fn answer_if_kept(
        &self,
        call: &Call,
        span: &tracing::Span,
        message: pb::IsAuthorizedRequest,
    ) -> Fast {
        let tried = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            span.in_scope(|| {
                let (entities, question) = match self.convert_one(message) {
                    Ok(converted) => converted,
                    // Reported on the decide threads, as any refusal to convert.
                    Err(refusal) => return Fast::Decide(Box::new(Err(refusal))),
                };
                if !matches!(entities, EntitiesInput::None) {
                    return Fast::Decide(Box::new(Ok((entities, question))));
                }
                let snapshot = self.store.current();
                match self.decider.decide_if_kept(call, &snapshot, question) {
                    Kept::Answered(decided) => Fast::Answered(decided.map(|decision| {
                        response(&decision, &snapshot, call.decision_id().to_owned())
                    })),
                    Kept::No(question) => Fast::Decide(Box::new(Ok((entities, *question)))),
                }
            })
        }));
        tried
            .unwrap_or_else(|_| Fast::Answered(Err(self.decider.failed(call, PoolError::Panicked))))
    }

    fn batch(
        &self,
        call: &Call,
        snapshot: &Snapshot,
        request: pb::BatchIsAuthorizedRequest,
    ) -> Result<pb::BatchIsAuthorizedResponse, Refusal> {
        let entities: Result<EntitiesInput, Refusal> = self
            .convert
            .entities(&request.entities, request.entities_json);
        // The items of a call often carry one context (that of the call a sidecar
        // checks): a typed context equal to the item's before is converted once.
        let mut last: Option<Converted> = None;
        let items = request.items.into_iter().map(move |item| {
            let typed_only = item.context_json.is_empty() && !item.context.is_empty();
            if typed_only
                && let Some(last) = &last
                && last.typed == item.context
            {
                let query =
                    self.convert
                        .query_in(item.principal, item.action, item.resource, || {
                            Ok(last.context.clone())
                        })?;
                return Ok(Question {
                    query,
                    recorded_context: last.recorded.clone(),
                });
            }
            let question = self.question(
                item.principal,
                item.action,
                item.resource,
                &item.context,
                item.context_json,
            )?;
            if typed_only {
                last = Some(Converted {
                    typed: item.context,
                    context: question.query.context.clone(),
                    recorded: question.recorded_context.clone(),
                });
            }
            Ok(question)
        });
        let decisions = self.decider.decide_batch(call, snapshot, entities, items)?;
        Ok(pb::BatchIsAuthorizedResponse {
            results: decisions
                .iter()
                .enumerate()
                .map(|(i, d)| response(d, snapshot, call.item_decision_id(i)))
                .collect(),
            policy_version: snapshot.version().to_owned(),
        })
    }
}

/// A batch item's typed context and what converting it gave.
struct Converted {
    typed: HashMap<String, pb::Value>,
    context: ContextInput,
    recorded: Map<String, Json>,
}

impl AuthorizerService {
    /// Runs `decide` for `call` (in `span`, on the serving snapshot) off the async
    /// workers, and answers with its result, or with INTERNAL if it failed unexpectedly.
    async fn answer<T: Send + 'static>(
        &self,
        call: Call,
        span: tracing::Span,
        heavy: bool,
        decide: impl FnOnce(&Self, &Call, &Snapshot) -> Result<T, Refusal> + Send + 'static,
    ) -> Result<Response<T>, Status> {
        let (this, decided) = (self.clone(), call.clone());
        let result = self
            .decider
            .off_workers(heavy, move || {
                let _in_span = span.enter();
                let snapshot = this.store.current();
                decide(&this, &decided, &snapshot)
            })
            .await
            .unwrap_or_else(|error| Err(self.decider.failed(&call, error)));
        reply(&call, result)
    }
}

/// The wire answer for a decision made on `snapshot`, with its id.
fn response(
    decision: &Decision,
    snapshot: &Snapshot,
    decision_id: String,
) -> pb::IsAuthorizedResponse {
    let verdict = if decision.allowed() {
        pb::Decision::Allow
    } else {
        pb::Decision::Deny
    };
    pb::IsAuthorizedResponse {
        decision: verdict.into(),
        determining_policies: decision.determining_policies().to_vec(),
        errors: decision
            .errors()
            .iter()
            .map(|e| pb::EvaluationError {
                policy_id: e.policy_id.clone(),
                message: e.message.clone(),
            })
            .collect(),
        policy_version: snapshot.version().to_owned(),
        decision_id,
    }
}

/// `status` carrying the call's request id.
fn with_id(mut status: Status, call: &Call) -> Status {
    status
        .metadata_mut()
        .insert(request_id::HEADER, request_id::to_metadata(call.id()));
    status
}

/// The answer with the call's request id echoed back, or the refusal as a status that
/// carries it too.
fn reply<T>(call: &Call, result: Result<T, Refusal>) -> Result<Response<T>, Status> {
    match result {
        Ok(answer) => {
            let mut response = Response::new(answer);
            response
                .metadata_mut()
                .insert(request_id::HEADER, request_id::to_metadata(call.id()));
            Ok(response)
        }
        Err(refusal) => Err(with_id(to_status(refusal), call)),
    }
}

#[tonic::async_trait]
impl authorizer_server::Authorizer for AuthorizerService {
    async fn is_authorized(
        &self,
        request: Request<pb::IsAuthorizedRequest>,
    ) -> Result<Response<pb::IsAuthorizedResponse>, Status> {
        let mut call = self.start(Api::IsAuthorized, &request)?;
        let span = call.span();
        trace::continue_trace(&span, |name| {
            request.metadata().get(name).and_then(|v| v.to_str().ok())
        });
        let message = request.into_inner();
        let size = message.encoded_len();
        call.weighs(size);
        let heavy = !message.entities.is_empty()
            || !message.entities_json.is_empty()
            || size > LIGHT_MESSAGE_BYTES;
        let converted = if !heavy && size <= KEPT_LOOKUP_BYTES && self.decider.keeps_decisions() {
            match self.answer_if_kept(&call, &span, message) {
                Fast::Answered(answered) => return reply(&call, answered),
                Fast::Decide(converted) => *converted,
            }
        } else {
            // Converted on the decide thread: a large context takes a while.
            return self
                .answer(call, span, heavy, move |this, call, snapshot| {
                    this.is_authorized(call, snapshot, this.convert_one(message))
                })
                .await;
        };
        self.answer(call, span, heavy, move |this, call, snapshot| {
            this.is_authorized(call, snapshot, converted)
        })
        .await
    }

    async fn batch_is_authorized(
        &self,
        request: Request<pb::BatchIsAuthorizedRequest>,
    ) -> Result<Response<pb::BatchIsAuthorizedResponse>, Status> {
        let mut call = self.start(Api::Batch, &request)?;
        let span = call.span();
        trace::continue_trace(&span, |name| {
            request.metadata().get(name).and_then(|v| v.to_str().ok())
        });
        let message = request.into_inner();
        let size = message.encoded_len();
        call.weighs(size);
        let heavy = !message.entities.is_empty()
            || !message.entities_json.is_empty()
            || message.items.len() > LIGHT_BATCH_ITEMS
            || size > LIGHT_MESSAGE_BYTES;
        self.answer(call, span, heavy, move |this, call, snapshot| {
            this.batch(call, snapshot, message)
        })
        .await
    }

    async fn get_policy_set_info(
        &self,
        request: Request<pb::GetPolicySetInfoRequest>,
    ) -> Result<Response<pb::PolicySetInfo>, Status> {
        // Not a decision: a refusal here counts under the service's unary API.
        self.start(Api::IsAuthorized, &request)?;
        let snapshot = self.store.current();
        let last_error = self.store.last_error();
        Ok(Response::new(pb::PolicySetInfo {
            policy_version: snapshot.version().to_owned(),
            policy_count: snapshot.policy_count() as u64,
            template_count: snapshot.template_count() as u64,
            entity_count: snapshot.entity_count() as u64,
            schema_loaded: snapshot.schema().is_some(),
            loaded_at: Some(snapshot.loaded_at().into()),
            last_reload_error: last_error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_default(),
            last_reload_error_at: last_error.map(|e| e.at.into()),
            shadow: self.decider.shadow().map(|shadow| {
                let store = shadow.store();
                let snapshot = store.current();
                let last_error = store.last_error();
                pb::ShadowPolicySetInfo {
                    policies: store.dir().display().to_string(),
                    policy_version: snapshot.version().to_owned(),
                    policy_count: snapshot.policy_count() as u64,
                    loaded_at: Some(snapshot.loaded_at().into()),
                    last_reload_error: last_error
                        .as_ref()
                        .map(|e| e.message.clone())
                        .unwrap_or_default(),
                    last_reload_error_at: last_error.map(|e| e.at.into()),
                    sample_rate: shadow.sample_rate(),
                }
            }),
        }))
    }

    async fn get_policy_usage(
        &self,
        request: Request<pb::GetPolicyUsageRequest>,
    ) -> Result<Response<pb::PolicyUsage>, Status> {
        // Not a decision: admitted as GetPolicySetInfo is.
        let call = self.start(Api::IsAuthorized, &request)?;
        let pb::GetPolicyUsageRequest {
            unused_only,
            page_token,
            page_size,
        } = request.into_inner();
        let page_size = match page_size {
            0 => DEFAULT_USAGE_PAGE,
            n if n as usize > MAX_USAGE_PAGE => {
                return Err(with_id(
                    Status::invalid_argument(format!(
                        "page_size: {n} is more than the limit of {MAX_USAGE_PAGE}"
                    )),
                    &call,
                ));
            }
            n => n as usize,
        };
        let snapshot = self.store.current();
        let mut listed = snapshot
            .usage()
            .list_after(&page_token, unused_only, |id| snapshot.policy_location(id));
        let policies: Vec<pb::PolicyUse> = listed
            .by_ref()
            .take(page_size)
            .map(|p| pb::PolicyUse {
                policy_id: p.id,
                effect: p.effect.to_owned(),
                allow_decisions: p.allow,
                deny_decisions: p.deny,
                line: p
                    .location
                    .as_ref()
                    .and_then(|l| l.line)
                    .map_or(0, |l| u32::try_from(l).unwrap_or(u32::MAX)),
                file: p.location.map(|l| l.file).unwrap_or_default(),
            })
            .collect();
        let next_page_token = match (listed.next(), policies.last()) {
            (Some(_), Some(last)) => last.policy_id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(pb::PolicyUsage {
            policy_version: snapshot.version().to_owned(),
            loaded_at: Some(snapshot.loaded_at().into()),
            policies,
            next_page_token,
            policy_count: snapshot.policy_count() as u64,
        }))
    }
}

/// Policies in a page of GetPolicyUsage when the caller names no size.
const DEFAULT_USAGE_PAGE: usize = 1000;

/// Policies in a page of GetPolicyUsage at most: a page stays far below the message limit.
const MAX_USAGE_PAGE: usize = 10_000;
