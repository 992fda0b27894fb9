//! What a call leaves behind besides its answer: metrics, a log span with its request id,
//! and audit records. The question of each decision is noted before the request is
//! consumed, and only when the audit log is on.

use std::{collections::HashMap, net::SocketAddr, time::Instant};

use serde_json::{Map, Value as Json};

use super::{
    callers::{CallerPolicy, CallerRefused},
    request_id::RequestId,
    throttle::OncePerSecond,
};
use crate::engine::RequestError;
use crate::{
    proto::cedarpdp::v1 as pb,
    telemetry::{
        AuditLog, Metrics,
        audit::{AuditError, Record},
        metrics::{Api, Rejection},
    },
};

/// The principal, action, resource and allow-listed context of one decision, as the
/// audit log writes them.
#[derive(Debug, Clone)]
pub(crate) struct Question {
    principal: String,
    action: String,
    resource: String,
    context: Map<String, Json>,
}

impl Question {
    /// Notes a question, keeping context values only for `keys`.
    pub(crate) fn new(
        principal: Option<&pb::EntityUid>,
        action: Option<&pb::EntityUid>,
        resource: Option<&pb::EntityUid>,
        context: &HashMap<String, pb::Value>,
        context_json: &str,
        keys: &[String],
    ) -> Self {
        let mut allowed = Map::new();
        if !keys.is_empty() {
            if context_json.is_empty() {
                for key in keys {
                    if let Some(value) = context.get(key) {
                        allowed.insert(key.clone(), value_json(value));
                    }
                }
            } else if let Ok(Json::Object(mut all)) = serde_json::from_str(context_json) {
                for key in keys {
                    if let Some(value) = all.remove(key) {
                        allowed.insert(key.clone(), value);
                    }
                }
            }
        }
        Self {
            principal: uid_text(principal),
            action: uid_text(action),
            resource: uid_text(resource),
            context: allowed,
        }
    }
}

impl Question {
    /// A question already in Cedar's terms (ext_authz maps it), its context values
    /// those of `keys` only.
    pub(crate) fn mapped(
        principal: String,
        action: String,
        resource: String,
        context: impl IntoIterator<Item = (String, Json)>,
        keys: &[String],
    ) -> Self {
        Self {
            principal,
            action,
            resource,
            context: context
                .into_iter()
                .filter(|(key, _)| keys.contains(key))
                .collect(),
        }
    }
}

/// `Type::"id"`, as Cedar writes an entity.
fn uid_text(uid: Option<&pb::EntityUid>) -> String {
    uid.map_or_else(String::new, |uid| format!("{}::{:?}", uid.r#type, uid.id))
}

/// A typed value in Cedar's JSON form (entities as `__entity`, extensions as `__extn`).
fn value_json(value: &pb::Value) -> Json {
    use pb::value::Kind;
    match &value.kind {
        None => Json::Null,
        Some(Kind::Boolean(b)) => Json::Bool(*b),
        Some(Kind::Long(n)) => Json::from(*n),
        Some(Kind::String(s)) => Json::String(s.clone()),
        Some(Kind::Set(list)) => Json::Array(list.values.iter().map(value_json).collect()),
        Some(Kind::Record(record)) => Json::Object(
            record
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), value_json(v)))
                .collect(),
        ),
        Some(Kind::Entity(uid)) => {
            serde_json::json!({ "__entity": { "type": uid.r#type, "id": uid.id } })
        }
        Some(Kind::Extension(ext)) => {
            serde_json::json!({ "__extn": { "fn": ext.r#fn, "arg": ext.arg } })
        }
    }
}

/// The `reason` label for a refused request.
pub(crate) fn rejection(error: &RequestError) -> Rejection {
    match error {
        RequestError::Invalid { .. } => Rejection::Invalid,
        RequestError::Limit { .. } => Rejection::Limit,
    }
}

/// One call being observed: its id, where it came from, when it started.
pub(crate) struct Call<'a> {
    pub(crate) api: Api,
    pub(crate) id: RequestId,
    pub(crate) peer: Option<SocketAddr>,
    /// The verified client identity (mutual TLS), when there is one.
    pub(crate) caller: Option<String>,
    pub(crate) started: Instant,
    pub(crate) metrics: &'a Metrics,
    pub(crate) audit: &'a AuditLog,
    /// Whether this call's allows are audited: drawn once per call by the server, so a
    /// caller cannot choose it (a batch is kept or left whole).
    pub(crate) keep_allows: bool,
}

impl<'a> Call<'a> {
    /// Starts observing a call under `id`: its peer, its clock, and whether its allows
    /// are audited. The caller is unknown until [`Call::admit`].
    pub(crate) fn start<T>(
        api: Api,
        id: RequestId,
        request: &tonic::Request<T>,
        metrics: &'a Metrics,
        audit: &'a AuditLog,
    ) -> Self {
        Self {
            api,
            id,
            peer: request.remote_addr(),
            caller: None,
            started: Instant::now(),
            metrics,
            audit,
            keep_allows: audit.sample_allows(),
        }
    }

    /// Checks the call's caller against `callers`: its identity is kept for the audit log,
    /// or the refusal is counted and logged and returned for the API to answer.
    pub(crate) fn admit<T>(
        &mut self,
        callers: &CallerPolicy,
        request: &tonic::Request<T>,
    ) -> Result<(), CallerRefused> {
        match callers.admit(request) {
            Ok(caller) => {
                self.caller = caller;
                Ok(())
            }
            Err(refused) => {
                self.caller_refused(&refused);
                Err(refused)
            }
        }
    }

    /// Whether questions should be noted for the audit log at all.
    pub(crate) fn auditing(&self) -> bool {
        self.audit.enabled()
    }

    /// Records a caller refused by the allow-list of its API: counted, and logged (the
    /// identity is a certificate's name, not a secret) as a warning once a second at
    /// most, so that a refused client cannot flood the log; the others at debug level.
    fn caller_refused(&self, refused: &CallerRefused) {
        static WARNINGS: OncePerSecond = OncePerSecond::new();
        self.metrics.call_took(self.api, self.started.elapsed());
        self.metrics.rejected(self.api, Rejection::CallerNotAllowed);
        let caller = refused.identities.join(", ");
        if WARNINGS.ready() {
            tracing::warn!(%caller, peer = ?self.peer, "caller refused: not on this API's allow-list");
        } else {
            tracing::debug!(%caller, peer = ?self.peer, "caller refused: not on this API's allow-list");
        }
    }

    /// Records a refused call: counted by reason, logged at debug in the call's span.
    pub(crate) fn refused(&self, error: &RequestError) {
        self.metrics.call_took(self.api, self.started.elapsed());
        let reason = rejection(error);
        self.metrics.rejected(self.api, reason);
        // The field only: the message quotes what was sent, which may be a credential.
        tracing::debug!(field = error.field(), reason = ?reason, "request refused");
    }

    /// Records a call answered with a deny that no policy made (ext_authz: no principal,
    /// or a check that cannot be mapped): counted as rejected by `reason`, and always
    /// written to the audit log with `refused` saying why.
    pub(crate) fn denied_undecided(
        &self,
        reason: Rejection,
        refused: String,
        question: Option<Question>,
        policy_version: &str,
    ) {
        let took = self.started.elapsed();
        self.metrics.call_took(self.api, took);
        self.metrics.rejected(self.api, reason);
        tracing::debug!(refused = %refused, "request denied before any decision");
        if !self.auditing() {
            return;
        }
        let question = question.unwrap_or(Question {
            principal: String::new(),
            action: String::new(),
            resource: String::new(),
            context: Map::new(),
        });
        self.audit.submit(Record {
            time: std::time::SystemTime::now(),
            kind: "decision",
            request_id: self.id.as_str().to_owned(),
            api: self.api,
            caller: self.caller.clone(),
            peer: self.peer.map(|p| p.to_string()),
            item: None,
            principal: question.principal,
            action: question.action,
            resource: question.resource,
            allowed: false,
            determining_policies: Vec::new(),
            errors: Vec::new(),
            policy_version: policy_version.to_owned(),
            latency: took,
            refused: Some(refused),
            context: question.context,
        });
    }

    /// Records the answers of a call: the call's time, each decision counted, and each
    /// one the audit log wants written (with its question, when noted).
    pub(crate) fn answered<'r>(
        &self,
        answers: impl IntoIterator<Item = (&'r pb::IsAuthorizedResponse, Option<Question>)>,
        batch: bool,
    ) {
        let took = self.started.elapsed();
        self.metrics.call_took(self.api, took);
        for (item, (answer, question)) in answers.into_iter().enumerate() {
            let allowed = answer.decision == pb::Decision::Allow as i32;
            self.metrics.decided(self.api, allowed);
            let Some(question) = question else { continue };
            if allowed && !self.keep_allows {
                continue;
            }
            self.audit.submit(Record {
                time: std::time::SystemTime::now(),
                kind: "decision",
                request_id: self.id.as_str().to_owned(),
                api: self.api,
                caller: self.caller.clone(),
                peer: self.peer.map(|p| p.to_string()),
                item: batch.then_some(item),
                principal: question.principal,
                action: question.action,
                resource: question.resource,
                allowed,
                determining_policies: answer.determining_policies.clone(),
                errors: answer
                    .errors
                    .iter()
                    .map(|e| AuditError {
                        policy_id: e.policy_id.clone(),
                        message: e.message.clone(),
                    })
                    .collect(),
                policy_version: answer.policy_version.clone(),
                latency: took,
                refused: None,
                context: question.context,
            });
        }
    }
}
