//! What an answered call leaves behind besides its answer, written in one place from the
//! decisions or the refusal: the call's duration, a count per decision or refusal, a log
//! line in the call's span, and audit records.
//!
//! Decisions are audited (allows at the sampled rate, denies always); refusals only when
//! the front end answers them with a deny (ext_authz), with `refused` saying why. Log
//! lines name the field at fault, never the value sent, which may be a credential.

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value as Json};

use super::{Call, Decider, Decision, Query, Refusal};
use crate::engine::CallEntities;
use crate::{
    policy::Snapshot,
    telemetry::audit::{AuditError, Record},
};

/// The principal, action, resource and allow-listed context of one question, as the
/// audit log writes them; noted only while the audit log is on.
#[derive(Debug, Clone, Default)]
pub(super) struct Asked {
    principal: String,
    action: String,
    resource: String,
    context: Map<String, Json>,
    /// The uids of the entities the call sent.
    entities: Vec<String>,
}

/// Notes in `asked` (when the audit log is on) which entities the call sent.
pub(super) fn note_entities(asked: &mut Option<Asked>, entities: &CallEntities) {
    if let Some(asked) = asked {
        asked.entities = entities.uids().iter().map(ToString::to_string).collect();
    }
}

impl Decider {
    /// What `query` asks, for the audit log (`None` when the log is off).
    pub(super) fn asked(
        &self,
        query: &Query,
        recorded_context: Map<String, Json>,
    ) -> Option<Asked> {
        self.telemetry.audit.enabled().then(|| Asked {
            principal: query.principal.to_string(),
            action: query.action.to_string(),
            resource: query.resource.to_string(),
            context: recorded_context,
            entities: Vec::new(),
        })
    }

    /// Reports the decisions of a call: its time, each decision counted, and each one the
    /// audit log wants written.
    pub(super) fn record_decisions<'d>(
        &self,
        call: &Call,
        snapshot: &Snapshot,
        decisions: impl IntoIterator<Item = (&'d Decision, Option<Asked>)>,
        batch: bool,
    ) {
        let took = call.started.elapsed();
        let metrics = &self.telemetry.metrics;
        metrics.call_took(call.api, took);
        for (item, (decision, asked)) in decisions.into_iter().enumerate() {
            let allowed = decision.allowed();
            metrics.decided(call.api, allowed);
            for policy in decision.erroring_forbids() {
                metrics.forbid_errored(policy);
            }
            let Some(asked) = asked else { continue };
            if allowed && !call.keep_allows {
                continue;
            }
            self.telemetry.audit.submit(Record {
                item: batch.then_some(item),
                allowed,
                determining_policies: decision.determining_policies().to_vec(),
                errors: decision
                    .errors()
                    .iter()
                    .map(|e| AuditError {
                        policy_id: e.policy_id.clone(),
                        message: e.message.clone(),
                    })
                    .collect(),
                ..record(call, asked, snapshot.version(), took)
            });
        }
    }

    /// Reports the answers of a call whose items are answered one by one (AuthZEN
    /// evaluations): its time, then each item's decision, or its refusal, which the caller
    /// gets as a deny and so is audited like one.
    pub(super) fn record_each(
        &self,
        call: &Call,
        snapshot: &Snapshot,
        answers: &[Result<Decision, Refusal>],
        asked: Vec<Option<Asked>>,
    ) {
        let took = call.started.elapsed();
        let metrics = &self.telemetry.metrics;
        metrics.call_took(call.api, took);
        for (item, (answer, asked)) in answers.iter().zip(asked).enumerate() {
            match answer {
                Ok(decision) => {
                    let allowed = decision.allowed();
                    metrics.decided(call.api, allowed);
                    for policy in decision.erroring_forbids() {
                        metrics.forbid_errored(policy);
                    }
                    let Some(asked) = asked else { continue };
                    if allowed && !call.keep_allows {
                        continue;
                    }
                    self.telemetry.audit.submit(Record {
                        item: Some(item),
                        allowed,
                        determining_policies: decision.determining_policies().to_vec(),
                        errors: decision
                            .errors()
                            .iter()
                            .map(|e| AuditError {
                                policy_id: e.policy_id.clone(),
                                message: e.message.clone(),
                            })
                            .collect(),
                        ..record(call, asked, snapshot.version(), took)
                    });
                }
                Err(refusal) => {
                    metrics.refused(call.api, refusal.reason());
                    tracing::debug!(
                        item,
                        field = refusal.field(),
                        reason = refusal.reason().label(),
                        "item refused"
                    );
                    if !self.telemetry.audit.enabled() {
                        continue;
                    }
                    let word = refusal.reason().word();
                    let refused = if refusal.field().is_empty() {
                        word.to_owned()
                    } else {
                        format!("{word}: {}", refusal.field())
                    };
                    self.telemetry.audit.submit(Record {
                        item: Some(item),
                        refused: Some(refused),
                        ..record(call, asked.unwrap_or_default(), snapshot.version(), took)
                    });
                }
            }
        }
    }

    /// Reports a refused call: its time, counted by reason, logged at debug level; and,
    /// when the call's refusals are answered with a deny, an audit record saying why
    /// (with what was asked, when it got that far).
    pub(super) fn record_refusal(
        &self,
        call: &Call,
        refusal: &Refusal,
        asked: Option<Asked>,
        snapshot: Option<&Snapshot>,
    ) {
        let took = call.started.elapsed();
        let metrics = &self.telemetry.metrics;
        metrics.call_took(call.api, took);
        metrics.refused(call.api, refusal.reason());
        // The field only: the message may quote what was sent, which may be a credential.
        tracing::debug!(
            field = refusal.field(),
            reason = refusal.reason().label(),
            "request refused"
        );
        if !call.refusals_deny || !self.telemetry.audit.enabled() {
            return;
        }
        let word = refusal.reason().word();
        let refused = if refusal.field().is_empty() {
            word.to_owned()
        } else {
            format!("{word}: {}", refusal.field())
        };
        let version = snapshot.map_or("", Snapshot::version);
        self.telemetry.audit.submit(Record {
            refused: Some(refused),
            ..record(call, asked.unwrap_or_default(), version, took)
        });
    }
}

/// The audit record of `call` about `asked` on policy `version`, answered after `took`: a
/// deny no policy made, until the caller fills in the decision.
fn record(call: &Call, asked: Asked, version: &str, took: Duration) -> Record {
    Record {
        time: SystemTime::now(),
        kind: "decision",
        request_id: call.id.as_str().to_owned(),
        api: call.api,
        caller: call.caller.clone(),
        peer: call.peer.map(|p| p.to_string()),
        item: None,
        principal: asked.principal,
        action: asked.action,
        resource: asked.resource,
        allowed: false,
        determining_policies: Vec::new(),
        errors: Vec::new(),
        policy_version: version.to_owned(),
        latency: took,
        refused: None,
        context: asked.context,
        request_entities: asked.entities,
    }
}
