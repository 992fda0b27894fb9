//! What an operator sees of the calls a server answers: Prometheus counts and latency
//! histograms, request ids, and the decision audit log.

mod common;

use std::fs;

use cedar_pdp::{
    Config,
    proto::cedarpdp::v1 as pb,
    telemetry::{AuditOptions, AuditSink},
};
use common::*;
use tonic::Request;

fn doc() -> pb::EntityUid {
    p("Document", "acme-roadmap-q3")
}

/// bob may read the roadmap; carol may not write it.
fn allow() -> pb::IsAuthorizedRequest {
    request(p("User", "bob"), action("read"), doc())
}

fn deny() -> pb::IsAuthorizedRequest {
    request(p("User", "carol"), action("write"), doc())
}

fn series(text: &str, name: &str, labels: &str) -> f64 {
    metric(text, &format!("{name}{{{labels}}}"))
        .unwrap_or_else(|| panic!("no {name}{{{labels}}} in:\n{text}"))
}

#[tokio::test]
async fn metrics_count_each_decision_and_time_each_call() {
    let server = TestServer::start(&example_policies()).await;
    let mut client = server.client().await;
    for _ in 0..3 {
        assert!(is_allow(
            &client.is_authorized(allow()).await.unwrap().into_inner()
        ));
    }
    for _ in 0..2 {
        assert!(!is_allow(
            &client.is_authorized(deny()).await.unwrap().into_inner()
        ));
    }
    // One batch of three items: two allows and a deny, one call.
    let items = [allow(), allow(), deny()]
        .into_iter()
        .map(|r| pb::BatchItem {
            principal: r.principal,
            action: r.action,
            resource: r.resource,
            ..Default::default()
        })
        .collect();
    client
        .batch_is_authorized(pb::BatchIsAuthorizedRequest {
            items,
            ..Default::default()
        })
        .await
        .unwrap();
    // A refused call: no principal.
    let mut bad = allow();
    bad.principal = None;
    client.is_authorized(bad).await.unwrap_err();

    let text = server.metrics_text().await;
    let decisions = "cedar_pdp_decisions_total";
    assert_eq!(
        series(&text, decisions, r#"api="is_authorized",decision="allow""#),
        3.0
    );
    assert_eq!(
        series(&text, decisions, r#"api="is_authorized",decision="deny""#),
        2.0
    );
    assert_eq!(
        series(&text, decisions, r#"api="batch",decision="allow""#),
        2.0
    );
    assert_eq!(
        series(&text, decisions, r#"api="batch",decision="deny""#),
        1.0
    );
    assert_eq!(
        series(&text, decisions, r#"api="ext_authz",decision="allow""#),
        0.0
    );
    let rejected = "cedar_pdp_requests_rejected_total";
    assert_eq!(
        series(
            &text,
            rejected,
            r#"api="is_authorized",reason="invalid_argument""#
        ),
        1.0
    );
    assert_eq!(
        series(
            &text,
            rejected,
            r#"api="is_authorized",reason="limit_exceeded""#
        ),
        0.0
    );
    // The histogram saw every call (six answered or refused single calls, one batch),
    // and each one took well under a second.
    let count = "cedar_pdp_decision_duration_seconds_count";
    assert_eq!(series(&text, count, r#"api="is_authorized""#), 6.0);
    assert_eq!(series(&text, count, r#"api="batch""#), 1.0);
    let bucket = "cedar_pdp_decision_duration_seconds_bucket";
    // In seconds: every call is far below 250 ms (in milliseconds none would be).
    assert_eq!(
        series(&text, bucket, r#"api="is_authorized",le="0.25""#),
        6.0
    );
    assert_eq!(
        series(&text, bucket, r#"api="is_authorized",le="+Inf""#),
        6.0
    );
    assert!(
        series(
            &text,
            "cedar_pdp_decision_duration_seconds_sum",
            r#"api="is_authorized""#
        ) > 0.0
    );
    assert!(
        text.contains("# TYPE cedar_pdp_decision_duration_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("le=\"0.00001\""),
        "buckets start at 10 µs:\n{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_callers_request_id_is_echoed_and_a_new_one_made_when_missing_or_unusable() {
    let server = TestServer::start(&example_policies()).await;
    let mut client = server.client().await;

    let mut request = Request::new(allow());
    request
        .metadata_mut()
        .insert("x-request-id", "trace-42".parse().unwrap());
    let response = client.is_authorized(request).await.unwrap();
    assert_eq!(response.metadata().get("x-request-id").unwrap(), "trace-42");

    let response = client.is_authorized(allow()).await.unwrap();
    let made = response
        .metadata()
        .get("x-request-id")
        .expect("an id is made up");
    assert!(!made.is_empty());

    let mut request = Request::new(allow());
    request
        .metadata_mut()
        .insert("x-request-id", "not an id; drop table".parse().unwrap());
    let response = client.is_authorized(request).await.unwrap();
    assert_ne!(
        response.metadata().get("x-request-id").unwrap(),
        "not an id; drop table"
    );

    // Refusals carry it too.
    let mut bad = Request::new(allow());
    bad.get_mut().action = None;
    bad.metadata_mut()
        .insert("x-request-id", "bad-1".parse().unwrap());
    let status = client.is_authorized(bad).await.unwrap_err();
    assert_eq!(status.metadata().get("x-request-id").unwrap(), "bad-1");
    server.stop().await;
}

fn audited_server_config(path: &std::path::Path, allow_sample_rate: f64) -> Config {
    Config {
        policies: example_policies(),
        audit: AuditOptions {
            sink: AuditSink::File(path.to_owned()),
            allow_sample_rate,
            context_keys: vec!["mfa".to_owned()],
            ..AuditOptions::default()
        },
        ..Config::default()
    }
}

#[tokio::test]
async fn each_decision_is_audited_with_only_allow_listed_context() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let server = TestServer::start_with(audited_server_config(&path, 1.0)).await;
    let mut client = server.client().await;

    let mut request = Request::new(allow());
    // mfa (allow-listed), source_ip and now (not): the schema allows no others.
    request.get_mut().context = strong_context();
    request
        .metadata_mut()
        .insert("x-request-id", "audit-1".parse().unwrap());
    let answer = client.is_authorized(request).await.unwrap().into_inner();
    client.is_authorized(deny()).await.unwrap();

    let records = audit_lines(&path, 2).await;
    let allowed = records
        .iter()
        .find(|r| r["request_id"] == "audit-1")
        .expect("the allow is recorded under its request id");
    assert_eq!(allowed["kind"], "decision");
    assert_eq!(allowed["api"], "is_authorized");
    assert_eq!(allowed["allowed"], "allow");
    assert_eq!(allowed["principal"], r#"Platform::User::"bob""#);
    assert_eq!(allowed["action"], r#"Platform::Action::"read""#);
    assert_eq!(
        allowed["resource"],
        r#"Platform::Document::"acme-roadmap-q3""#
    );
    assert_eq!(
        allowed["determining_policies"],
        serde_json::json!(answer.determining_policies)
    );
    assert_eq!(allowed["policy_version"], answer.policy_version);
    assert!(allowed["latency"].as_u64().is_some());
    assert!(allowed["time"].as_str().unwrap().ends_with('Z'));
    assert!(allowed["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(allowed["context"], serde_json::json!({"mfa": true}));
    let text = fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains("10.1.2.3"),
        "a context value off the allow-list was written"
    );
    assert!(!text.contains("source_ip"));

    let denied = records
        .iter()
        .find(|r| r["allowed"] == "deny")
        .expect("the deny is recorded");
    assert_eq!(denied["principal"], r#"Platform::User::"carol""#);
    assert!(
        denied.get("context").is_none(),
        "no allow-listed key was sent"
    );
    server.stop().await;
}

#[tokio::test]
async fn with_allows_unsampled_only_denies_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let server = TestServer::start_with(audited_server_config(&path, 0.0)).await;
    let mut client = server.client().await;
    for _ in 0..5 {
        client.is_authorized(allow()).await.unwrap();
    }
    client.is_authorized(deny()).await.unwrap();
    // The writer keeps order, so once the deny is there, any allow before it would be too.
    let records = audit_lines(&path, 1).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["allowed"], "deny");
    server.stop().await;
}
