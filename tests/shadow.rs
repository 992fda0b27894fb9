//! Shadow evaluation: a candidate policy set decided alongside the live one. The live
//! answers never change, disagreements are counted and audited with both answers, a
//! shadow set far slower than the live one only drops (and counts) shadow work, and the
//! shadow directory reloads and refuses bad changes as the live one does.

mod common;

use std::time::Duration;

use cedar_pdp::{
    Config,
    config::{AuditOptions, ShadowConfig},
    proto::cedarpdp::v1 as pb,
    server::{ServeError, Server},
    telemetry::AuditSink,
};
use common::*;

/// Live: alice may read; bob may not.
const LIVE: &str = r#"
@id("alice-reads") permit(principal == User::"alice", action == Action::"read", resource);
@id("no-archive") forbid(principal, action, resource == Doc::"archive");
"#;

/// The candidate: alice's permit removed, bob's added (one narrowing, one widening).
const CANDIDATE: &str = r#"
@id("bob-reads") permit(principal == User::"bob", action == Action::"read", resource);
@id("no-archive") forbid(principal, action, resource == Doc::"archive");
"#;

/// The candidate's schema knows users, docs and `read` only: a `Robot` principal is an
/// invalid request for it (an `error`), while the live set (no schema) decides it.
const CANDIDATE_SCHEMA: &str = r#"
entity User;
entity Doc;
action "read" appliesTo { principal: [User], resource: [Doc], context: { ip?: String, token?: String } };
"#;

fn read(principal: pb::EntityUid, doc: &str) -> pb::IsAuthorizedRequest {
    request(principal, uid("Action", "read"), uid("Doc", doc))
}

fn shadow_config(live: &std::path::Path, shadow: &std::path::Path) -> Config {
    Config {
        policies: live.to_owned(),
        shadow: ShadowConfig {
            policies: Some(shadow.to_owned()),
            ..ShadowConfig::default()
        },
        ..Config::default()
    }
}

/// The value of `series`, 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or(0.0)
}

fn shadow_series(api: &str, live: &str, shadow: &str) -> String {
    format!("cedar_pdp_shadow_decisions_total{{api=\"{api}\",live=\"{live}\",shadow=\"{shadow}\"}}")
}

#[tokio::test]
async fn disagreements_are_counted_and_audited_with_both_answers_and_the_live_answer_is_unchanged()
{
    let live = policy_dir(&[("live.cedar", LIVE)]);
    let shadow = policy_dir(&[
        ("candidate.cedar", CANDIDATE),
        ("schema.cedarschema", CANDIDATE_SCHEMA),
    ]);
    let audit_dir = tempfile::tempdir().unwrap();
    let audit = audit_dir.path().join("audit.jsonl");
    let mut config = shadow_config(live.path(), shadow.path());
    config.audit = AuditOptions {
        sink: AuditSink::File(audit.clone()),
        context_keys: vec!["ip".to_owned()],
        ..AuditOptions::default()
    };
    let server = TestServer::start_with(config).await;
    // The same questions to a server without a shadow set: the answers must be the same.
    let plain = TestServer::start(live.path()).await;
    let (mut client, mut plain_client) = (server.client().await, plain.client().await);

    let mut alice = read(uid("User", "alice"), "plan");
    alice.context = context(&[("ip", string("10.0.0.1")), ("token", string("s3cret"))]);
    let questions = [
        alice,                               // live allow, shadow deny
        read(uid("User", "bob"), "plan"),    // live deny, shadow allow
        read(uid("User", "carol"), "plan"),  // deny, deny
        read(uid("User", "bob"), "archive"), // deny, deny (the forbid)
        read(uid("Robot", "r2"), "plan"),    // live deny, shadow error
    ];
    for question in &questions {
        let with_shadow = client.is_authorized(question.clone()).await.unwrap();
        let without = plain_client.is_authorized(question.clone()).await.unwrap();
        let (with_shadow, without) = (with_shadow.into_inner(), without.into_inner());
        assert_eq!(with_shadow.decision, without.decision);
        assert_eq!(
            with_shadow.determining_policies,
            without.determining_policies
        );
        assert_eq!(with_shadow.policy_version, without.policy_version);
    }
    // A batch: each item shadowed, item numbers kept.
    let batch = pb::BatchIsAuthorizedRequest {
        items: [("alice", "plan"), ("bob", "plan")]
            .iter()
            .map(|(who, doc)| pb::BatchItem {
                principal: Some(uid("User", who)),
                action: Some(uid("Action", "read")),
                resource: Some(uid("Doc", doc)),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let answered = client
        .batch_is_authorized(batch)
        .await
        .unwrap()
        .into_inner();
    let allowed: Vec<bool> = answered.results.iter().map(is_allow).collect();
    assert_eq!(
        allowed,
        [true, false],
        "live answers, as without a shadow set"
    );

    let text = eventually(Duration::from_secs(10), "7 shadow decisions", || async {
        let text = server.metrics_text().await;
        let total: f64 = ["allow", "deny", "error"]
            .iter()
            .flat_map(|l| ["allow", "deny", "error"].map(|s| (*l, s)))
            .flat_map(|(l, s)| {
                ["is_authorized", "batch"].map(|api| value(&text, &shadow_series(api, l, s)))
            })
            .sum();
        (total >= 7.0).then_some(text)
    })
    .await;
    for (api, live, shadow, n) in [
        ("is_authorized", "allow", "deny", 1.0),
        ("is_authorized", "deny", "allow", 1.0),
        ("is_authorized", "deny", "deny", 2.0),
        ("is_authorized", "deny", "error", 1.0),
        ("batch", "allow", "deny", 1.0),
        ("batch", "deny", "allow", 1.0),
    ] {
        assert_eq!(
            value(&text, &shadow_series(api, live, shadow)),
            n,
            "{api} {live}->{shadow}"
        );
    }
    assert_eq!(
        value(
            &text,
            "cedar_pdp_shadow_disagreements_total{api=\"is_authorized\"}"
        ),
        3.0
    );
    assert_eq!(
        value(&text, "cedar_pdp_shadow_disagreements_total{api=\"batch\"}"),
        2.0
    );
    assert_eq!(value(&text, "cedar_pdp_shadow_dropped_total"), 0.0);
    let shadow_version = server_info(&server).await.shadow.unwrap().policy_version;
    assert!(
        text.contains(&format!(
            "cedar_pdp_shadow_policy_info{{version=\"{shadow_version}\"}} 1"
        )),
        "{text}"
    );

    // Five disagreements, each a "shadow" record with both answers.
    let records = eventually(Duration::from_secs(10), "5 shadow records", || async {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        let shadows: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["kind"] == "shadow")
            .collect();
        (shadows.len() >= 5).then_some(shadows)
    })
    .await;
    assert_eq!(records.len(), 5);
    let alice = records
        .iter()
        .find(|r| r["principal"] == "User::\"alice\"" && r.get("item").is_none())
        .expect("alice's disagreement");
    assert_eq!(alice["live"]["decision"], "allow");
    assert_eq!(
        alice["live"]["determining_policies"],
        serde_json::json!(["alice-reads"])
    );
    assert_eq!(alice["shadow"]["decision"], "deny");
    assert_eq!(
        alice["shadow"]["determining_policies"],
        serde_json::json!([])
    );
    assert_eq!(alice["shadow"]["policy_version"], shadow_version.as_str());
    // Only allow-listed context, as in decision records: the token is never written.
    assert_eq!(alice["context"], serde_json::json!({"ip": "10.0.0.1"}));
    assert!(!std::fs::read_to_string(&audit).unwrap().contains("s3cret"));
    let robot = records
        .iter()
        .find(|r| r["principal"] == "Robot::\"r2\"")
        .expect("the robot's disagreement");
    assert_eq!(robot["live"]["decision"], "deny");
    assert_eq!(robot["shadow"]["decision"], "error");
    assert!(
        robot["shadow"]["refused"]
            .as_str()
            .unwrap()
            .starts_with("invalid"),
        "{robot}"
    );
    // The decision id of a shadow record is the live decision's.
    let batch_bob = records
        .iter()
        .find(|r| r["principal"] == "User::\"bob\"" && r["item"] == 1)
        .expect("bob's batch disagreement");
    assert!(batch_bob["decision_id"].as_str().unwrap().ends_with(".1"));

    // Live per-policy counts are the live set's alone.
    let usage_text = server.metrics_text().await;
    assert!(!usage_text.contains("policy_id=\"bob-reads\""));
    server.stop().await;
    plain.stop().await;
}

async fn server_info(server: &TestServer) -> pb::PolicySetInfo {
    server
        .client()
        .await
        .get_policy_set_info(pb::GetPolicySetInfoRequest {})
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn the_shadow_directory_reloads_refuses_bad_changes_and_keeps_its_last_good_set() {
    let live = policy_dir(&[("live.cedar", LIVE)]);
    let shadow = policy_dir(&[("candidate.cedar", CANDIDATE)]);
    let server = TestServer::start_with(shadow_config(live.path(), shadow.path())).await;
    let live_version = server_info(&server).await.policy_version;
    let first = server_info(&server).await.shadow.expect("a shadow set");
    assert_eq!(first.policy_count, 2);
    assert_eq!(first.sample_rate, 1.0);
    assert!(first.last_reload_error.is_empty());

    // A good change is served by the shadow set, not the live one.
    write(
        shadow.path(),
        "more.cedar",
        r#"@id("carol-reads") permit(principal == User::"carol", action, resource);"#,
    );
    let second = eventually(Duration::from_secs(10), "the shadow reload", || async {
        let info = server_info(&server).await;
        let shadow = info.shadow.unwrap();
        (shadow.policy_version != first.policy_version).then_some(shadow)
    })
    .await;
    assert_eq!(second.policy_count, 3);
    assert_eq!(server_info(&server).await.policy_version, live_version);
    let mut client = server.client().await;
    let carol = client
        .is_authorized(read(uid("User", "carol"), "plan"))
        .await
        .unwrap()
        .into_inner();
    assert!(!is_allow(&carol), "the shadow set never answers");
    eventually(Duration::from_secs(10), "carol's disagreement", || async {
        let text = server.metrics_text().await;
        (value(&text, &shadow_series("is_authorized", "deny", "allow")) == 1.0).then_some(())
    })
    .await;

    // A broken change is refused: the last good shadow set keeps deciding.
    write(shadow.path(), "broken.cedar", "permit(principal, action");
    let refused = eventually(Duration::from_secs(10), "the refused reload", || async {
        let shadow = server_info(&server).await.shadow.unwrap();
        (!shadow.last_reload_error.is_empty()).then_some(shadow)
    })
    .await;
    assert_eq!(refused.policy_version, second.policy_version);
    assert!(
        refused.last_reload_error.contains("broken.cedar"),
        "{}",
        refused.last_reload_error
    );
    let text = server.metrics_text().await;
    assert!(
        value(
            &text,
            "cedar_pdp_shadow_policy_reloads_total{result=\"failure\"}"
        ) >= 1.0
    );
    assert!(
        value(
            &text,
            "cedar_pdp_shadow_policy_reloads_total{result=\"success\"}"
        ) >= 1.0
    );
    // The live reload counter is the live directory's alone.
    assert_eq!(
        value(&text, "cedar_pdp_policy_reloads_total{result=\"failure\"}"),
        0.0
    );
    client
        .is_authorized(read(uid("User", "carol"), "plan"))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the last good set deciding",
        || async {
            let text = server.metrics_text().await;
            (value(&text, &shadow_series("is_authorized", "deny", "allow")) == 2.0).then_some(())
        },
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn an_invalid_shadow_directory_at_start_up_waits_without_stopping_the_live_service() {
    let live = policy_dir(&[("live.cedar", LIVE)]);
    let shadow = policy_dir(&[("candidate.cedar", "permit(principal, action")]);
    let server = TestServer::start_with(shadow_config(live.path(), shadow.path())).await;
    let info = server_info(&server).await;
    let waiting = info.shadow.expect("a shadow set is configured");
    assert_eq!(waiting.policy_version, "", "nothing loaded yet");
    assert!(
        waiting.last_reload_error.contains("candidate.cedar"),
        "{}",
        waiting.last_reload_error
    );
    // The live set answers; nothing is shadowed against a set that never loaded.
    let mut client = server.client().await;
    let alice = client
        .is_authorized(read(uid("User", "alice"), "plan"))
        .await
        .unwrap()
        .into_inner();
    assert!(is_allow(&alice));
    let text = server.metrics_text().await;
    assert_eq!(
        value(&text, &shadow_series("is_authorized", "allow", "deny")),
        0.0
    );
    // The start-up load, and the watcher's first look.
    assert!(
        value(
            &text,
            "cedar_pdp_shadow_policy_reloads_total{result=\"failure\"}"
        ) >= 1.0
    );
    assert!(!text.contains("cedar_pdp_shadow_policy_info{"), "{text}");

    // Fixed: the shadow set loads and shadowing starts.
    write(shadow.path(), "candidate.cedar", CANDIDATE);
    eventually(
        Duration::from_secs(10),
        "the shadow set to load",
        || async {
            let shadow = server_info(&server).await.shadow.unwrap();
            (!shadow.policy_version.is_empty()).then_some(())
        },
    )
    .await;
    client
        .is_authorized(read(uid("User", "alice"), "plan"))
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "alice's disagreement", || async {
        let text = server.metrics_text().await;
        (value(&text, &shadow_series("is_authorized", "allow", "deny")) == 1.0).then_some(())
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_missing_shadow_directory_stops_start_up_naming_it() {
    let live = policy_dir(&[("live.cedar", LIVE)]);
    let missing = live.path().join("no-such-dir");
    let mut config = shadow_config(live.path(), &missing);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics_listen = "127.0.0.1:0".parse().unwrap();
    config.audit.sink = AuditSink::Off;
    let error = Server::bind(config).await.expect_err("start-up refuses");
    assert!(
        matches!(error, ServeError::ShadowPolicies { .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(message.contains("no-such-dir"), "{message}");
}

/// Shadow policies that take far longer than the live ones: 400 forbids, each matching
/// every request and testing a long string against many patterns.
fn slow_shadow_set() -> String {
    let mut text = String::new();
    for i in 0..400 {
        text.push_str(&format!(
            "forbid(principal, action, resource) when {{ context has s && (context.s like \"*a*b*c*d*e*{i}\" || context.s like \"*x*y*z*{i}*q\") }};\n"
        ));
    }
    text.push_str(r#"permit(principal == User::"alice", action == Action::"read", resource);"#);
    text
}

#[tokio::test]
async fn a_shadow_set_far_slower_than_the_live_one_only_drops_shadow_work_and_counts_it() {
    let live = policy_dir(&[("live.cedar", LIVE)]);
    let shadow = policy_dir(&[("slow.cedar", &slow_shadow_set())]);
    let mut config = shadow_config(live.path(), shadow.path());
    config.shadow.queue_capacity = 1;
    let server = TestServer::start_with(config).await;
    let long = "ab".repeat(2000);
    let calls = 400;
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let mut client = server.client().await;
        let long = long.clone();
        tasks.push(tokio::spawn(async move {
            let mut allows = 0;
            for i in (worker..calls).step_by(8) {
                let who = if i % 2 == 0 { "alice" } else { "bob" };
                let mut question = read(uid("User", who), "plan");
                question.context = context(&[("s", string(&long))]);
                let answer = client.is_authorized(question).await.unwrap().into_inner();
                // Every live answer is the live set's, whatever the shadow set is doing.
                assert_eq!(is_allow(&answer), who == "alice");
                allows += usize::from(is_allow(&answer));
            }
            allows
        }));
    }
    let mut allows = 0;
    for task in tasks {
        allows += task.await.unwrap();
    }
    assert_eq!(allows, calls / 2);
    // Every call is either shadowed or dropped, once the shadow thread catches up.
    let (decided, dropped) = eventually(
        Duration::from_secs(60),
        "every call shadowed or dropped",
        || async {
            let text = server.metrics_text().await;
            let decided: f64 = ["allow", "deny", "error"]
                .iter()
                .flat_map(|l| ["allow", "deny", "error"].map(|s| (*l, s)))
                .map(|(l, s)| value(&text, &shadow_series("is_authorized", l, s)))
                .sum();
            let dropped = value(&text, "cedar_pdp_shadow_dropped_total");
            (decided + dropped == calls as f64).then_some((decided, dropped))
        },
    )
    .await;
    assert!(
        dropped > 0.0,
        "a queue of one must overflow: {decided} decided"
    );
    assert!(decided > 0.0);
    server.stop().await;
}

#[tokio::test]
async fn a_sample_rate_of_zero_shadows_nothing() {
    let live = policy_dir(&[("live.cedar", LIVE)]);
    let shadow = policy_dir(&[("candidate.cedar", CANDIDATE)]);
    let mut config = shadow_config(live.path(), shadow.path());
    config.shadow.sample_rate = 0.0;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    for _ in 0..20 {
        client
            .is_authorized(read(uid("User", "alice"), "plan"))
            .await
            .unwrap();
    }
    // Give a wrongly queued job time to be counted before looking.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = server.metrics_text().await;
    assert_eq!(
        value(&text, &shadow_series("is_authorized", "allow", "deny")),
        0.0
    );
    assert_eq!(value(&text, "cedar_pdp_shadow_dropped_total"), 0.0);
    assert_eq!(server_info(&server).await.shadow.unwrap().sample_rate, 0.0);
    server.stop().await;
}
