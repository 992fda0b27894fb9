//! Decision ids: every decision a caller gets — `IsAuthorized`, each batch item, an Envoy
//! check, an AuthZEN evaluation and each of its items — carries the server's own unique id,
//! and the audit record of that decision carries the same one, so a support engineer goes
//! from a denied call to its record in one search.

mod common;
#[path = "common/http.rs"]
mod http;

use std::collections::{HashMap, HashSet};

use cedar_pdp::{
    Config,
    proto::{
        cedarpdp::v1 as pb,
        envoy::service::auth::v3::{
            authorization_client::AuthorizationClient, check_response::HttpResponse,
        },
    },
    telemetry::{AuditOptions, AuditSink},
};
use common::*;
use serde_json::{Value, json};
use tonic::Request;

/// Example policies, Envoy's mapping from docs/envoy.md, AuthZEN in the example's
/// namespace, and every decision audited to `path`.
fn audited(path: &std::path::Path) -> Config {
    let mut config = Config {
        policies: example_policies(),
        ext_authz: docs_ext_authz(),
        audit: AuditOptions {
            sink: AuditSink::File(path.to_owned()),
            allow_sample_rate: 1.0,
            ..AuditOptions::default()
        },
        ..Config::default()
    };
    config.authzen.listen = Some("127.0.0.1:0".parse().unwrap());
    config.authzen.namespace = Some("Platform".to_owned());
    config
}

/// 32 lowercase hex digits, optionally a dot and an item index.
fn assert_shape(id: &str, item: Option<usize>) {
    let (base, suffix) = match id.split_once('.') {
        Some((base, suffix)) => (base, Some(suffix)),
        None => (id, None),
    };
    assert_eq!(base.len(), 32, "{id}");
    assert!(
        base.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{id}"
    );
    assert_eq!(suffix, item.map(|i| i.to_string()).as_deref(), "{id}");
}

#[tokio::test]
async fn every_decision_has_a_unique_id_that_its_audit_record_carries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let server = TestServer::start_with(audited(&path)).await;
    let mut client = server.client().await;
    let mut ids: Vec<String> = Vec::new();

    // Two calls with one caller-chosen request id: two decisions, two ids.
    for _ in 0..2 {
        let mut request = Request::new(bob_reads_roadmap());
        request
            .metadata_mut()
            .insert("x-request-id", "same-request".parse().unwrap());
        let answer = client.is_authorized(request).await.unwrap().into_inner();
        assert_shape(&answer.decision_id, None);
        ids.push(answer.decision_id);
    }
    assert_ne!(
        ids[0], ids[1],
        "a repeated request id must not repeat a decision id"
    );

    // A batch: one id per item, the call's id with the item's index.
    let item = |principal: &str| pb::BatchItem {
        principal: Some(p("User", principal)),
        action: Some(action("read")),
        resource: Some(p("Document", "acme-roadmap-q3")),
        ..Default::default()
    };
    let batch = client
        .batch_is_authorized(pb::BatchIsAuthorizedRequest {
            items: vec![item("bob"), item("dave"), item("alice")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let base = batch.results[0]
        .decision_id
        .split_once('.')
        .unwrap()
        .0
        .to_owned();
    for (i, result) in batch.results.iter().enumerate() {
        assert_shape(&result.decision_id, Some(i));
        assert_eq!(result.decision_id, format!("{base}.{i}"));
        ids.push(result.decision_id.clone());
    }

    // An Envoy check, allowed and denied: the id in a header for the client, and in the
    // dynamic metadata for Envoy's access log.
    let mut envoy = AuthorizationClient::new(server.channel().await);
    let path_q3 = "/projects/acme-roadmap/docs/acme-roadmap-q3";
    for (user, allowed) in [("bob", true), ("dave", false)] {
        let answer = envoy
            .check(check(
                "GET",
                path_q3,
                Some(jwt(&[("sub", string_value(user))])),
                None,
            ))
            .await
            .unwrap()
            .into_inner();
        if let Some(HttpResponse::OkResponse(ok)) = &answer.http_response {
            // A client's own x-decision-id does not go on to the upstream.
            assert_eq!(ok.headers_to_remove, vec!["x-decision-id".to_owned()]);
        }
        let headers = match &answer.http_response {
            Some(HttpResponse::OkResponse(ok)) if allowed => &ok.response_headers_to_add,
            Some(HttpResponse::DeniedResponse(denied)) if !allowed => &denied.headers,
            other => panic!("{user}: {other:?}"),
        };
        let headers: HashMap<&str, &str> = headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .map(|h| (h.key.as_str(), h.value.as_str()))
            .collect();
        let id = headers["x-decision-id"].to_owned();
        assert_shape(&id, None);
        let metadata = answer.dynamic_metadata.as_ref().unwrap();
        assert_eq!(
            metadata.fields["decision_id"].kind,
            Some(prost_types::value::Kind::StringValue(id.clone()))
        );
        ids.push(id);
    }

    // AuthZEN: one evaluation, and a batch of two with one invalid item.
    let authzen = server.authzen_addr.unwrap();
    let one = http::post_json(
        authzen,
        "/access/v1/evaluation",
        &json!({"subject": {"type": "User", "id": "bob"}, "action": {"name": "read"},
                "resource": {"type": "Document", "id": "acme-roadmap-q3"}}),
    )
    .await;
    assert_eq!(one.status, 200, "{}", one.text);
    let id = one.json["context"]["decision_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_shape(&id, None);
    ids.push(id);
    let many = http::post_json(
        authzen,
        "/access/v1/evaluations",
        &json!({"subject": {"type": "User", "id": "bob"}, "action": {"name": "read"},
                "evaluations": [
                    {"resource": {"type": "Document", "id": "globex-salaries"}},
                    {"resource": {"type": "Document"}}]}),
    )
    .await;
    assert_eq!(many.status, 200, "{}", many.text);
    for (i, answer) in many.json["evaluations"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let id = answer["context"]["decision_id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_shape(&id, Some(i));
        ids.push(id);
    }

    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "{ids:?}");

    // Every decision answered is in the audit log under the id its caller got (the
    // invalid AuthZEN item too: its caller saw a false decision).
    let records = audit_lines(&path, ids.len()).await;
    let recorded: HashMap<&str, &Value> = records
        .iter()
        .map(|r| (r["decision_id"].as_str().expect("a decision_id"), r))
        .collect();
    assert_eq!(recorded.len(), records.len(), "ids are unique in the log");
    for id in &ids {
        assert!(
            recorded.contains_key(id.as_str()),
            "no record of {id}: {records:?}"
        );
    }
    assert_eq!(recorded[ids[0].as_str()]["request_id"], "same-request");
    assert_eq!(recorded[ids[1].as_str()]["request_id"], "same-request");
    assert_eq!(recorded[ids[2].as_str()]["item"], 0);
    assert_eq!(recorded[ids[6].as_str()]["api"], "ext_authz");
    assert_eq!(recorded[ids[6].as_str()]["allowed"], "deny");
    let invalid = recorded[ids.last().unwrap().as_str()];
    assert_eq!(invalid["api"], "authzen");
    assert_eq!(invalid["refused"], "invalid: evaluations[1].resource.id");
    server.stop().await;
}
