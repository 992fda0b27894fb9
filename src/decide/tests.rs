//! The decide step on its own: what it counts and audits for decisions and refusals, and
//! that a batch past its limit is refused before any item is looked at.

use std::{str::FromStr, sync::Arc};

use cedar_policy::EntityUid;

use super::*;
use crate::{
    config::AuditOptions,
    policy::{LoadOptions, load_dir},
    telemetry::audit::Collect,
};

fn example() -> Snapshot {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    load_dir(dir.as_ref(), &LoadOptions::default())
        .expect("the example policies load")
        .snapshot
}

/// A decider over the example set, auditing into the returned sink, and its metrics.
fn decider(max_batch_items: usize) -> (Decider, Collect, Metrics) {
    let metrics = Metrics::new();
    let sink = Collect::default();
    let audit = AuditLog::with_writer(
        &AuditOptions::default(),
        Box::new(sink.clone()),
        metrics.clone(),
    )
    .unwrap();
    let telemetry = Telemetry {
        metrics: metrics.clone(),
        audit: Arc::new(audit),
    };
    let engine = Engine::new(EngineOptions::default());
    (
        Decider::new(engine, max_batch_items, telemetry),
        sink,
        metrics,
    )
}

fn uid(text: &str) -> EntityUid {
    EntityUid::from_str(text).unwrap()
}

fn question(principal: &str, action: &str, resource: &str) -> Question {
    Question::from(Query {
        principal: uid(&format!("Platform::User::\"{principal}\"")),
        action: uid(&format!("Platform::Action::\"{action}\"")),
        resource: uid(&format!("Platform::Document::\"{resource}\"")),
        context: ContextInput::Json(String::new()),
    })
}

/// The value of the series `series` in `metrics`.
fn series(metrics: &Metrics, series: &str) -> f64 {
    metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap())
}

/// The audit records written so far (the writer runs on a thread of its own: dropping
/// the decider flushes it).
fn records(decider: Decider, sink: &Collect) -> Vec<serde_json::Value> {
    drop(decider);
    sink.text()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn a_decision_is_counted_and_audited_with_what_was_asked() {
    let snapshot = example();
    let (decider, sink, metrics) = decider(10);
    let call = decider.start(Api::IsAuthorized, RequestId::parse("req-1"), None);
    let decision = decider
        .decide(
            &call,
            &snapshot,
            EntitiesInput::None,
            question("bob", "read", "acme-roadmap-q3"),
        )
        .unwrap();
    assert!(decision.allowed());
    assert_eq!(
        series(
            &metrics,
            r#"cedar_pdp_decisions_total{api="is_authorized",decision="allow"}"#
        ),
        1.0
    );
    let records = records(decider, &sink);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["request_id"], "req-1");
    assert_eq!(records[0]["principal"], r#"Platform::User::"bob""#);
    assert_eq!(records[0]["allowed"], "allow");
    assert_eq!(records[0]["policy_version"], snapshot.version());
}

#[test]
fn a_batch_past_its_limit_is_refused_before_any_item_is_looked_at() {
    let snapshot = example();
    let (decider, sink, metrics) = decider(2);
    let call = decider.start(Api::Batch, None, None);
    let items = (0..3).map(|_| -> Result<Question, Refusal> {
        panic!("an item was converted although the batch is refused")
    });
    let refusal = decider
        .decide_batch(&call, &snapshot, Ok(EntitiesInput::None), items)
        .unwrap_err();
    assert_eq!(refusal.reason(), Reason::Limit);
    assert_eq!(refusal.field(), "items");
    assert!(refusal.message().contains("max_batch_items"), "{refusal}");
    assert_eq!(
        series(
            &metrics,
            r#"cedar_pdp_requests_rejected_total{api="batch",reason="limit_exceeded"}"#
        ),
        1.0
    );
    assert!(
        records(decider, &sink).is_empty(),
        "a refusal is not audited"
    );
}

#[test]
fn a_refused_item_refuses_its_batch_naming_the_item() {
    let snapshot = example();
    let (decider, _sink, _metrics) = decider(10);
    let call = decider.start(Api::Batch, None, None);
    let mut unknown = question("bob", "fly", "acme-roadmap-q3");
    unknown.query.action = uid(r#"Platform::Action::"fly""#);
    let items = vec![Ok(question("bob", "read", "acme-roadmap-q3")), Ok(unknown)];
    let refusal = decider
        .decide_batch(&call, &snapshot, Ok(EntitiesInput::None), items.into_iter())
        .unwrap_err();
    assert_eq!(refusal.reason(), Reason::Invalid);
    assert_eq!(refusal.field(), "items[1].action");
}

#[test]
fn a_refusal_answered_with_a_deny_is_audited_saying_why() {
    let snapshot = example();
    let (decider, sink, metrics) = decider(10);
    let call = decider.start(Api::ExtAuthz, None, None).refusals_deny();
    let refusal = Refusal::invalid("attributes.request.http.path", "not absolute");
    decider.refuse(&call, &snapshot, &refusal, None);
    assert_eq!(
        series(
            &metrics,
            r#"cedar_pdp_requests_rejected_total{api="ext_authz",reason="invalid_argument"}"#
        ),
        1.0
    );
    let records = records(decider, &sink);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["allowed"], "deny");
    assert_eq!(
        records[0]["refused"],
        "invalid: attributes.request.http.path"
    );
}

#[test]
fn a_caller_off_the_allow_list_is_refused_counted_and_not_audited() {
    let (decider, sink, metrics) = decider(10);
    let mut call = decider.start(Api::IsAuthorized, None, None);
    let refusal = decider
        .admit(
            &mut call,
            "cedarpdp.v1.Authorizer",
            Admission::NotAllowed(vec!["spiffe://acme/ns/x/sa/y".to_owned()]),
        )
        .unwrap_err();
    assert_eq!(refusal.reason(), Reason::CallerNotAllowed);
    assert_eq!(
        refusal.to_string(),
        "cedarpdp.v1.Authorizer: caller spiffe://acme/ns/x/sa/y is not allowed"
    );
    assert_eq!(
        series(
            &metrics,
            r#"cedar_pdp_requests_rejected_total{api="is_authorized",reason="caller_not_allowed"}"#
        ),
        1.0
    );
    let mut admitted = decider.start(Api::IsAuthorized, None, None);
    decider
        .admit(
            &mut admitted,
            "cedarpdp.v1.Authorizer",
            Admission::Admitted(Some("gateway".to_owned())),
        )
        .unwrap();
    assert_eq!(admitted.caller(), Some("gateway"));
    assert!(records(decider, &sink).is_empty());
}

#[test]
fn replace_is_kept_for_the_callers_trusted_with_it() {
    let snapshot = example();
    let metrics = Metrics::new();
    let options = EngineOptions {
        request_entities: RequestEntities::Replace,
        ..EngineOptions::default()
    };
    let decider = Decider::new(Engine::new(options), 10, Telemetry::metrics_only(metrics))
        .replace_only_for(vec!["spiffe://acme.example/ns/qa/sa/harness".to_owned()]);
    // bob, stored, sent as suspended: only a trusted caller's copy replaces the store's.
    let bob = || {
        let json = r#"[{"uid": {"type": "Platform::User", "id": "bob"},
            "attrs": {"tenant": {"__entity": {"type": "Platform::Tenant", "id": "acme"}},
                      "email": "bob@acme.example", "suspended": true, "contractor": false},
            "parents": [{"type": "Platform::Group", "id": "acme-engineering"}]}]"#;
        EntitiesInput::Json(json.to_owned())
    };
    let ask = |caller: Option<&str>| {
        let mut call = decider.start(Api::IsAuthorized, None, None);
        let admission = Admission::Admitted(caller.map(str::to_owned));
        decider
            .admit(&mut call, "cedarpdp.v1.Authorizer", admission)
            .unwrap();
        decider.decide(
            &call,
            &snapshot,
            bob(),
            question("bob", "read", "acme-roadmap-q3"),
        )
    };
    let trusted = ask(Some("spiffe://acme.example/ns/qa/sa/harness")).unwrap();
    assert!(!trusted.allowed());
    assert_eq!(trusted.determining_policies(), ["suspended-users"]);
    for caller in [Some("spiffe://acme.example/ns/prod/sa/gateway"), None] {
        let refusal = ask(caller).unwrap_err();
        assert_eq!(refusal.reason(), Reason::Invalid, "{caller:?}");
        assert!(refusal.message().contains("stored entity"), "{refusal}");
    }
}
