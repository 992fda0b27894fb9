//! Decisions counted by the policy that made them: `cedar_pdp_policy_decisions_total`
//! matches a known sequence of decisions exactly, groups policies without an `@id` by file
//! and caps its series; a reload starts the counts again and a removed policy leaves the
//! scrape; GetPolicyUsage and `cedar-pdp usage --unused` list the policies that decided
//! nothing.

mod common;

use std::time::Duration;

use cedar_pdp::{Config, proto::cedarpdp::v1 as pb};
use common::*;

const NAMED: &str = r#"
@id("alice-reads") permit(principal == User::"alice", action == Action::"read", resource);
@id("no-archive") forbid(principal, action, resource == Doc::"archive");
@id("never") permit(principal == User::"nobody", action, resource);
"#;

/// Two policies without an `@id`: `extra.0` and `extra.1`, one series `extra.*`.
const EXTRA: &str = r#"
permit(principal == User::"bob", action == Action::"read", resource);
permit(principal == User::"dave", action, resource);
"#;

fn read(who: &str, doc: &str) -> pb::IsAuthorizedRequest {
    request(uid("User", who), uid("Action", "read"), uid("Doc", doc))
}

fn series(id: &str, decision: &str) -> String {
    format!("cedar_pdp_policy_decisions_total{{policy_id=\"{id}\",decision=\"{decision}\"}}")
}

/// Sends the known sequence: alice reads the plan 3 times (alice-reads allows), alice
/// reads the archive twice (no-archive denies), bob reads the plan once (extra.0
/// allows, inside a batch), carol once (denied by no policy: counted nowhere).
async fn known_sequence(server: &TestServer) {
    let mut client = server.client().await;
    for _ in 0..3 {
        client.is_authorized(read("alice", "plan")).await.unwrap();
    }
    for _ in 0..2 {
        client
            .is_authorized(read("alice", "archive"))
            .await
            .unwrap();
    }
    client.is_authorized(read("carol", "plan")).await.unwrap();
    let batch = pb::BatchIsAuthorizedRequest {
        items: vec![pb::BatchItem {
            principal: Some(uid("User", "bob")),
            action: Some(uid("Action", "read")),
            resource: Some(uid("Doc", "plan")),
            ..Default::default()
        }],
        ..Default::default()
    };
    client.batch_is_authorized(batch).await.unwrap();
}

async fn usage(server: &TestServer, unused_only: bool, page_size: u32) -> Vec<pb::PolicyUsage> {
    let mut client = server.client().await;
    let mut pages = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .get_policy_usage(pb::GetPolicyUsageRequest {
                unused_only,
                page_token: page_token.clone(),
                page_size,
            })
            .await
            .unwrap()
            .into_inner();
        page_token = page.next_page_token.clone();
        pages.push(page);
        if page_token.is_empty() {
            return pages;
        }
    }
}

fn ids(pages: &[pb::PolicyUsage]) -> Vec<String> {
    pages
        .iter()
        .flat_map(|p| p.policies.iter().map(|p| p.policy_id.clone()))
        .collect()
}

#[tokio::test]
async fn counts_match_a_known_sequence_and_a_reload_starts_them_again_without_removed_policies() {
    let dir = policy_dir(&[("named.cedar", NAMED), ("extra.cedar", EXTRA)]);
    let server = TestServer::start(dir.path()).await;
    // Every policy's series exists from the load on, at 0.
    let text = server.metrics_text().await;
    assert!(text.contains("# TYPE cedar_pdp_policy_decisions_total counter"));
    for id in ["alice-reads", "no-archive", "never", "extra.*"] {
        assert_eq!(metric(&text, &series(id, "allow")), Some(0.0), "{id}");
        assert_eq!(metric(&text, &series(id, "deny")), Some(0.0), "{id}");
    }

    known_sequence(&server).await;
    let text = server.metrics_text().await;
    for (id, decision, n) in [
        ("alice-reads", "allow", 3.0),
        ("alice-reads", "deny", 0.0),
        ("no-archive", "deny", 2.0),
        ("no-archive", "allow", 0.0),
        ("extra.*", "allow", 1.0),
        ("never", "allow", 0.0),
        ("never", "deny", 0.0),
    ] {
        assert_eq!(
            metric(&text, &series(id, decision)),
            Some(n),
            "{id} {decision}"
        );
    }
    assert_eq!(
        metric(
            &text,
            "cedar_pdp_decisions_total{api=\"is_authorized\",decision=\"deny\"}"
        ),
        Some(3.0),
        "carol's deny is a decision no policy made"
    );

    // The list, page by page, and only the unused ones.
    let all = usage(&server, false, 2).await;
    assert_eq!(all.len(), 3, "five policies in pages of two");
    assert_eq!(
        ids(&all),
        ["alice-reads", "extra.0", "extra.1", "never", "no-archive"]
    );
    let alice = &all[0].policies[0];
    assert_eq!(
        (
            alice.effect.as_str(),
            alice.allow_decisions,
            alice.deny_decisions
        ),
        ("permit", 3, 0)
    );
    assert_eq!(alice.file, "named.cedar");
    assert_eq!(alice.line, 2);
    let unused = usage(&server, true, 0).await;
    assert_eq!(ids(&unused), ["extra.1", "never"]);
    assert_eq!(unused[0].policy_count, 5);

    // The CLI against the running server.
    let endpoint = server.endpoint();
    let out = run_cli(&[
        "usage", "--server", &endpoint, "--unused", "--format", "json",
    ])
    .await;
    assert!(out.status.success(), "{}", stderr_of(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<&str> = doc["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["policy_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["extra.1", "never"]);
    assert_eq!(doc["policy_version"], all[0].policy_version.as_str());
    let out = run_cli(&["usage", "--server", &endpoint, "--unused"]).await;
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("never") && text.contains("named.cedar:4"),
        "{text}"
    );
    assert!(
        text.contains("2 of 5 policies determined no decision"),
        "{text}"
    );

    // A reload: `never` removed. Its series leave the scrape; the others start again.
    let before = all[0].policy_version.clone();
    write(
        dir.path(),
        "named.cedar",
        &NAMED.replace(
            r#"@id("never") permit(principal == User::"nobody", action, resource);"#,
            "",
        ),
    );
    eventually(Duration::from_secs(10), "the reload", || async {
        (server.store.current().version() != before).then_some(())
    })
    .await;
    let text = server.metrics_text().await;
    assert!(!text.contains("policy_id=\"never\""), "{text}");
    assert_eq!(metric(&text, &series("alice-reads", "allow")), Some(0.0));
    client_reads_once(&server).await;
    let text = server.metrics_text().await;
    assert_eq!(metric(&text, &series("alice-reads", "allow")), Some(1.0));
    server.stop().await;
}

/// Runs the binary off the runtime's thread: the server under test answers on it.
async fn run_cli(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || cedar_pdp().args(&args).output().unwrap())
        .await
        .unwrap()
}

async fn client_reads_once(server: &TestServer) {
    server
        .client()
        .await
        .is_authorized(read("alice", "plan"))
        .await
        .unwrap();
}

#[tokio::test]
async fn series_past_the_cap_add_up_under_other_and_a_page_too_large_is_refused() {
    let dir = policy_dir(&[("named.cedar", NAMED), ("extra.cedar", EXTRA)]);
    let server = TestServer::start_with(Config {
        policies: dir.path().to_owned(),
        policy_metrics_max_series: 2,
        ..Config::default()
    })
    .await;
    known_sequence(&server).await;
    let text = server.metrics_text().await;
    // In id order: alice-reads, extra.* (extra.0 and extra.1), then never and
    // no-archive past the cap.
    let rendered: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("cedar_pdp_policy_decisions_total{"))
        .collect();
    assert_eq!(rendered.len(), 6, "{rendered:?}");
    assert_eq!(metric(&text, &series("alice-reads", "allow")), Some(3.0));
    assert_eq!(metric(&text, &series("extra.*", "allow")), Some(1.0));
    assert_eq!(metric(&text, &series("other", "deny")), Some(2.0));
    assert_eq!(metric(&text, &series("other", "allow")), Some(0.0));

    let refused = server
        .client()
        .await
        .get_policy_usage(pb::GetPolicyUsageRequest {
            page_size: 20_000,
            ..Default::default()
        })
        .await
        .expect_err("a page past the limit");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("page_size"),
        "{}",
        refused.message()
    );
    server.stop().await;
}

#[test]
fn the_usage_command_names_a_server_it_cannot_reach() {
    let out = cedar_pdp()
        .args(["usage", "--server", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("127.0.0.1:1"),
        "{}",
        stderr_of(&out)
    );
}
