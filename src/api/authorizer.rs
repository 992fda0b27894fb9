//! The `cedarpdp.v1.Authorizer` service: IsAuthorized, BatchIsAuthorized and
//! GetPolicySetInfo over the serving snapshot.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{convert::Converter, status::to_status};
use crate::{
    engine::{Decision, Engine, RequestError},
    policy::{PolicyStore, Snapshot},
    proto::cedarpdp::v1::{self as pb, authorizer_server},
};

/// Serves decisions from a [`PolicyStore`] with an [`Engine`].
#[derive(Debug, Clone)]
pub struct AuthorizerService {
    store: Arc<PolicyStore>,
    engine: Arc<Engine>,
    convert: Converter,
    max_batch_items: usize,
}

impl AuthorizerService {
    /// A service deciding with `engine` against whatever `store` serves at each call.
    pub fn new(
        store: Arc<PolicyStore>,
        engine: Arc<Engine>,
        max_value_depth: usize,
        max_batch_items: usize,
    ) -> Self {
        Self {
            store,
            engine,
            convert: Converter { max_value_depth },
            max_batch_items,
        }
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
        let entities = self.engine.entities(snapshot, entities)?;
        let decision = self.engine.decide(snapshot, &entities, query)?;
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
        let results = request
            .items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let query = self
                    .convert
                    .query(
                        item.principal,
                        item.action,
                        item.resource,
                        &item.context,
                        item.context_json,
                    )
                    .and_then(|query| self.engine.decide(snapshot, &entities, query))
                    .map_err(|e| e.within(&format!("items[{i}]")))?;
                Ok(response(query, snapshot))
            })
            .collect::<Result<Vec<_>, RequestError>>()?;
        Ok(pb::BatchIsAuthorizedResponse {
            results,
            policy_version: snapshot.version().to_owned(),
        })
    }
}

fn response(decision: Decision, snapshot: &Snapshot) -> pb::IsAuthorizedResponse {
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

#[tonic::async_trait]
impl authorizer_server::Authorizer for AuthorizerService {
    async fn is_authorized(
        &self,
        request: Request<pb::IsAuthorizedRequest>,
    ) -> Result<Response<pb::IsAuthorizedResponse>, Status> {
        let snapshot = self.store.current();
        let result = AuthorizerService::is_authorized(self, &snapshot, request.into_inner());
        result.map(Response::new).map_err(to_status)
    }

    async fn batch_is_authorized(
        &self,
        request: Request<pb::BatchIsAuthorizedRequest>,
    ) -> Result<Response<pb::BatchIsAuthorizedResponse>, Status> {
        let snapshot = self.store.current();
        let result = self.batch(&snapshot, request.into_inner());
        result.map(Response::new).map_err(to_status)
    }

    async fn get_policy_set_info(
        &self,
        _request: Request<pb::GetPolicySetInfoRequest>,
    ) -> Result<Response<pb::PolicySetInfo>, Status> {
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
