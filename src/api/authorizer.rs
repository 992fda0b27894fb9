//! The `cedarpdp.v1.Authorizer` service: IsAuthorized, BatchIsAuthorized and
//! GetPolicySetInfo over the serving snapshot.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    callers::CallerPolicy,
    convert::Converter,
    observe::{Call, Question},
    request_id::{self, RequestId},
    status::to_status,
};
use crate::{
    config::Limits,
    engine::{Decision, Engine, RequestError},
    policy::{PolicyStore, Snapshot},
    proto::cedarpdp::v1::{self as pb, authorizer_server},
    telemetry::{AuditLog, Metrics, metrics::Api},
};

/// Serves decisions from a [`PolicyStore`] with an [`Engine`].
#[derive(Debug, Clone)]
pub struct AuthorizerService {
    store: Arc<PolicyStore>,
    engine: Arc<Engine>,
    convert: Converter,
    max_batch_items: usize,
    metrics: Metrics,
    audit: Arc<AuditLog>,
    callers: CallerPolicy,
}

/// The service name callers are refused for.
const SERVICE: &str = "cedarpdp.v1.Authorizer";

impl AuthorizerService {
    /// A service deciding with `engine` against whatever `store` serves at each call,
    /// counting into `metrics`, recording decisions in `audit`, for the `callers` it
    /// admits.
    pub fn new(
        store: Arc<PolicyStore>,
        engine: Arc<Engine>,
        limits: &Limits,
        telemetry: super::Telemetry,
        callers: CallerPolicy,
    ) -> Self {
        Self {
            store,
            engine,
            convert: Converter {
                max_value_depth: limits.max_value_depth,
                max_string_bytes: limits.max_string_bytes,
            },
            max_batch_items: limits.max_batch_items,
            metrics: telemetry.metrics,
            audit: telemetry.audit,
            callers,
        }
    }

    /// Starts observing a call: its id (from `x-request-id`, else new), peer, caller and
    /// clock; a caller off the allow-list is refused here, counted and logged.
    fn call<T>(&self, api: Api, request: &Request<T>) -> Result<Call<'_>, Status> {
        let id = RequestId::of(request.metadata());
        let mut call = Call::start(api, id, request, &self.metrics, &self.audit);
        call.admit(&self.callers, request).map_err(|refused| {
            let mut status = Status::permission_denied(refused.message(SERVICE));
            status
                .metadata_mut()
                .insert(request_id::HEADER, call.id.to_metadata());
            status
        })?;
        Ok(call)
    }

    fn is_authorized(
        &self,
        snapshot: &Snapshot,
        request: pb::IsAuthorizedRequest,
    ) -> Result<pb::IsAuthorizedResponse, RequestError> {
        let entities = self
            .convert
            .entities(&request.entities, request.entities_json)?;
        let query = self.convert.query(
            request.principal,
            request.action,
            request.resource,
            &request.context,
            request.context_json,
        )?;
        let decision = self.engine.decide(snapshot, entities, query)?;
        Ok(response(decision, snapshot))
    }

    fn batch(
        &self,
        snapshot: &Snapshot,
        request: pb::BatchIsAuthorizedRequest,
    ) -> Result<pb::BatchIsAuthorizedResponse, RequestError> {
        if request.items.len() > self.max_batch_items {
            return Err(RequestError::limit(
                "items",
                format!(
                    "{} items is more than the limit of {} (max_batch_items)",
                    request.items.len(),
                    self.max_batch_items
                ),
            ));
        }
        let entities = self
            .convert
            .entities(&request.entities, request.entities_json)?;
        let entities = self.engine.entities(snapshot, entities)?;
        let requests = request
            .items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                self.convert
                    .query(
                        item.principal,
                        item.action,
                        item.resource,
                        &item.context,
                        item.context_json,
                    )
                    .and_then(|query| self.engine.request(snapshot, query))
                    .map_err(|e| e.within(&format!("items[{i}]")))
            })
            .collect::<Result<Vec<_>, RequestError>>()?;
        // One store for every item: built from what all of them can reach.
        let store = self.engine.store(snapshot, entities, &requests)?;
        let results = requests
            .iter()
            .map(|request| {
                response(
                    self.engine.decide_request(snapshot, &store, request),
                    snapshot,
                )
            })
            .collect();
        Ok(pb::BatchIsAuthorizedResponse {
            results,
            policy_version: snapshot.version().to_owned(),
        })
    }
}

/// The wire answer for a decision on `snapshot` (ext_authz builds it too, so that both
/// APIs are observed alike).
pub(super) fn response(decision: Decision, snapshot: &Snapshot) -> pb::IsAuthorizedResponse {
    let verdict = if decision.allowed {
        pb::Decision::Allow
    } else {
        pb::Decision::Deny
    };
    pb::IsAuthorizedResponse {
        decision: verdict.into(),
        determining_policies: decision.determining_policies,
        errors: decision
            .errors
            .into_iter()
            .map(|e| pb::EvaluationError {
                policy_id: e.policy_id,
                message: e.message,
            })
            .collect(),
        policy_version: snapshot.version().to_owned(),
    }
}

/// The answer with the call's request id echoed back, or the refusal as a status that
/// carries it too.
fn reply<T>(id: &RequestId, result: Result<T, RequestError>) -> Result<Response<T>, Status> {
    match result {
        Ok(answer) => {
            let mut response = Response::new(answer);
            response
                .metadata_mut()
                .insert(request_id::HEADER, id.to_metadata());
            Ok(response)
        }
        Err(error) => {
            let mut status = to_status(error);
            status
                .metadata_mut()
                .insert(request_id::HEADER, id.to_metadata());
            Err(status)
        }
    }
}

#[tonic::async_trait]
impl authorizer_server::Authorizer for AuthorizerService {
    async fn is_authorized(
        &self,
        request: Request<pb::IsAuthorizedRequest>,
    ) -> Result<Response<pb::IsAuthorizedResponse>, Status> {
        let call = self.call(Api::IsAuthorized, &request)?;
        let span = tracing::info_span!("call", api = "is_authorized", request_id = %call.id);
        let _in_span = span.enter();
        let request = request.into_inner();
        let question = call.auditing().then(|| {
            Question::new(
                request.principal.as_ref(),
                request.action.as_ref(),
                request.resource.as_ref(),
                &request.context,
                &request.context_json,
                self.audit.context_keys(),
            )
        });
        let snapshot = self.store.current();
        let result = AuthorizerService::is_authorized(self, &snapshot, request);
        match &result {
            Ok(answer) => call.answered([(answer, question)], false),
            Err(error) => call.refused(error),
        }
        reply(&call.id, result)
    }

    async fn batch_is_authorized(
        &self,
        request: Request<pb::BatchIsAuthorizedRequest>,
    ) -> Result<Response<pb::BatchIsAuthorizedResponse>, Status> {
        let call = self.call(Api::Batch, &request)?;
        let span = tracing::info_span!("call", api = "batch", request_id = %call.id);
        let _in_span = span.enter();
        let request = request.into_inner();
        // Past the batch limit the call is refused below; note nothing for it.
        let questions: Vec<Question> =
            if call.auditing() && request.items.len() <= self.max_batch_items {
                request
                    .items
                    .iter()
                    .map(|item| {
                        Question::new(
                            item.principal.as_ref(),
                            item.action.as_ref(),
                            item.resource.as_ref(),
                            &item.context,
                            &item.context_json,
                            self.audit.context_keys(),
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            };
        let snapshot = self.store.current();
        let result = self.batch(&snapshot, request);
        match &result {
            Ok(answer) => {
                let mut questions = questions.into_iter();
                call.answered(answer.results.iter().map(|r| (r, questions.next())), true);
            }
            Err(error) => call.refused(error),
        }
        reply(&call.id, result)
    }

    async fn get_policy_set_info(
        &self,
        request: Request<pb::GetPolicySetInfoRequest>,
    ) -> Result<Response<pb::PolicySetInfo>, Status> {
        // Not a decision: a refusal here counts under the service's unary API.
        self.call(Api::IsAuthorized, &request)?;
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
        }))
    }
}
