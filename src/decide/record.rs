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
    telemetry::audit::{AuditError, Record, SearchRecord},
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
        self.telemetry.metrics.call_took(call.api, took);
        for (item, (decision, asked)) in decisions.into_iter().enumerate() {
            let item = batch.then_some(item);
            self.record_decision(call, snapshot, item, decision, asked, took);
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
                    self.record_decision(call, snapshot, Some(item), decision, asked, took);
                }
                Err(refusal) => {
                    metrics.refused(call.api, refusal.reason());
                    tracing::debug!(
                        item,
                        decision_id = %call.item_decision_id(item),
                        field = refusal.field(),
                        reason = refusal.reason().label(),
                        "item refused"
                    );
                    if !self.telemetry.audit.enabled() {
                        continue;
                    }
                    self.telemetry.audit.submit(Record {
                        refused: Some(refused(refusal)),
                        ..record(
                            call,
                            Some(item),
                            asked.unwrap_or_default(),
                            snapshot.version(),
                            took,
                        )
                    });
                }
            }
        }
    }

    /// Reports one decision (item `item` of a call with many): counted, its erroring
    /// forbids counted, logged at debug level with its id, and audited when the log wants it.
    fn record_decision(
        &self,
        call: &Call,
        snapshot: &Snapshot,
        item: Option<usize>,
        decision: &Decision,
        asked: Option<Asked>,
        took: Duration,
    ) {
        let allowed = decision.allowed();
        let metrics = &self.telemetry.metrics;
        metrics.decided(call.api, allowed, decision.reused());
        snapshot
            .usage()
            .count(allowed, decision.determining_policies());
        for policy in decision.erroring_forbids() {
            metrics.forbid_errored(policy);
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!(
                decision_id = %call.decision_id_of(item),
                decision = decision.effect().label(),
                determining_policies = ?decision.determining_policies(),
                policy_version = snapshot.version(),
                "decided"
            );
        }
        let Some(asked) = asked else { return };
        if allowed && !call.keep_allows {
            return;
        }
        self.telemetry.audit.submit(Record {
            allowed,
            determining_policies: decision.determining_policies().to_vec(),
            errors: audit_errors(decision),
            ..record(call, item, asked, snapshot.version(), took)
        });
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
        let version = snapshot.map_or("", Snapshot::version);
        self.telemetry.audit.submit(Record {
            refused: Some(refused(refusal)),
            ..record(call, None, asked.unwrap_or_default(), version, took)
        });
    }
}

impl Decider {
    /// Writes the audit record of one search page (or of its refusal).
    pub(super) fn record_search(
        &self,
        call: &Call,
        snapshot: &Snapshot,
        asked: super::search::SearchAsked,
        page: &Result<super::SearchPage, Refusal>,
    ) {
        let (results, evaluated, more, refusal) = match page {
            Ok(page) => (page.found.len(), page.evaluated, page.next.is_some(), None),
            Err(refusal) => (0, 0, false, Some(refused(refusal))),
        };
        self.telemetry.audit.submit(SearchRecord {
            time: SystemTime::now(),
            kind: "search",
            request_id: call.id.as_str().to_owned(),
            decision_id: call.decision_id.clone(),
            api: call.api,
            caller: call.caller.clone(),
            peer: call.peer.map(|p| p.to_string()),
            searched: asked.searched,
            principal: asked.principal,
            action: asked.action,
            resource: asked.resource,
            results,
            evaluated,
            more,
            policy_version: snapshot.version().to_owned(),
            latency: call.started.elapsed(),
            refused: refusal,
        });
    }
}

/// The policies that failed to evaluate in `decision`, as audit records write them.
pub(super) fn audit_errors(decision: &Decision) -> Vec<AuditError> {
    decision
        .errors()
        .iter()
        .map(|e| AuditError {
            policy_id: e.policy_id.clone(),
            message: e.message.clone(),
        })
        .collect()
}

/// Why a refused question was not decided, as the audit record's `refused` says it: the
/// reason, and the field at fault when there is one.
pub(super) fn refused(refusal: &Refusal) -> String {
    let word = refusal.reason().word();
    if refusal.field().is_empty() {
        word.to_owned()
    } else {
        format!("{word}: {}", refusal.field())
    }
}

/// The audit record of `call` (of its item `item`, for a call with many) about `asked` on
/// policy `version`, answered after `took`: a deny no policy made, until the caller fills
/// in the decision.
fn record(call: &Call, item: Option<usize>, asked: Asked, version: &str, took: Duration) -> Record {
    Record {
        time: SystemTime::now(),
        kind: "decision",
        request_id: call.id.as_str().to_owned(),
        decision_id: call.decision_id_of(item),
        api: call.api,
        caller: call.caller.clone(),
        peer: call.peer.map(|p| p.to_string()),
        item,
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
