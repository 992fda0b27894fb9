//! The AuthZEN 1.0 API through a real HTTP client against the real server: every example
//! of the specification's text (with policies written for them), batch semantics, search
//! paged to the end, malformed bodies, metadata, and agreement with `cedarpdp.v1`.

mod common;
#[path = "common/http.rs"]
mod http;
#[path = "common/rng.rs"]
mod rng;

use std::{collections::BTreeSet, net::SocketAddr, path::Path};

use cedar_pdp::{config::Config, proto::cedarpdp::v1 as pb};
use serde_json::{Value, json};

use common::{TestServer, write};
use http::{post_json, send};

/// Policies written for the specification's examples (no schema: types as the spec
/// writes them).
const POLICIES: &str = r#"
// Readers read the shared accounts; alice also writes account 123.
permit(principal in group::"readers", action == Action::"can_read", resource in account_set::"shared");
permit(principal == user::"alice@example.com", action == Action::"can_write", resource == account::"123");
// alice reads every document, and todo 1; she may not edit resource-search.md.
permit(principal == user::"alice@example.com", action in [Action::"can_read", Action::"read", Action::"can_edit"], resource is document);
forbid(principal, action == Action::"read", resource == document::"2");
forbid(principal, action == Action::"can_edit", resource == document::"resource-search.md");
permit(principal == user::"alice@example.com", action == Action::"can_read", resource == todo::"1");
// Sales may print: a caller-asserted property.
permit(principal, action == Action::"can_print", resource)
  when { context.subject has department && context.subject.department == "Sales" };
// Folder members read what is in the folder (for paging).
permit(principal in group::"staff", action == Action::"view", resource in folder::"big");
"#;

/// The stored entities: users, groups, accounts, documents, and `big_docs` documents in
/// `folder::"big"`.
fn entities(big_docs: usize) -> Value {
    let mut list = vec![
        json!({"uid": {"type": "group", "id": "readers"}, "attrs": {}, "parents": []}),
        json!({"uid": {"type": "group", "id": "staff"}, "attrs": {}, "parents": []}),
        json!({"uid": {"type": "user", "id": "alice@example.com"}, "attrs": {},
               "parents": [{"type": "group", "id": "readers"}, {"type": "group", "id": "staff"}]}),
        json!({"uid": {"type": "user", "id": "bob@example.com"}, "attrs": {},
               "parents": [{"type": "group", "id": "readers"}]}),
        json!({"uid": {"type": "user", "id": "carol@example.com"}, "attrs": {}, "parents": []}),
        json!({"uid": {"type": "account_set", "id": "shared"}, "attrs": {}, "parents": []}),
        json!({"uid": {"type": "account", "id": "123"}, "attrs": {},
               "parents": [{"type": "account_set", "id": "shared"}]}),
        json!({"uid": {"type": "account", "id": "456"}, "attrs": {},
               "parents": [{"type": "account_set", "id": "shared"}]}),
        json!({"uid": {"type": "account", "id": "789"}, "attrs": {}, "parents": []}),
        json!({"uid": {"type": "todo", "id": "1"}, "attrs": {}, "parents": []}),
        json!({"uid": {"type": "folder", "id": "big"}, "attrs": {}, "parents": []}),
    ];
    for id in [
        "1",
        "2",
        "3",
        "boxcarring.md",
        "subject-search.md",
        "resource-search.md",
    ] {
        list.push(json!({"uid": {"type": "document", "id": id}, "attrs": {}, "parents": []}));
    }
    for i in 0..big_docs {
        list.push(
            json!({"uid": {"type": "document", "id": format!("big-{i:05}")}, "attrs": {},
                         "parents": [{"type": "folder", "id": "big"}]}),
        );
    }
    Value::Array(list)
}

fn fixture(dir: &Path, big_docs: usize) {
    write(dir, "spec.cedar", POLICIES);
    write(dir, "entities.json", &entities(big_docs).to_string());
}

async fn start(dir: &Path) -> (TestServer, SocketAddr) {
    let mut config = Config {
        policies: dir.to_owned(),
        ..Config::default()
    };
    config.authzen.listen = Some("127.0.0.1:0".parse().unwrap());
    let server = TestServer::start_with(config).await;
    let addr = server.authzen_addr.expect("AuthZEN is on");
    (server, addr)
}

async fn served(big_docs: usize) -> (tempfile::TempDir, TestServer, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), big_docs);
    let (server, addr) = start(dir.path()).await;
    (dir, server, addr)
}

fn decisions(answer: &Value) -> Vec<bool> {
    answer["evaluations"]
        .as_array()
        .expect("an evaluations array")
        .iter()
        .map(|e| e["decision"].as_bool().expect("a decision"))
        .collect()
}

#[tokio::test]
async fn the_specifications_evaluation_examples_decide_as_their_policies_say() {
    let (_dir, server, addr) = served(0).await;
    // Access Evaluation API request example.
    let answer = post_json(
        addr,
        "/access/v1/evaluation",
        &json!({
            "subject": {"type": "user", "id": "alice@example.com"},
            "resource": {"type": "account", "id": "123"},
            "action": {"name": "can_read", "properties": {"method": "GET"}},
            "context": {"time": "1985-10-26T01:22-07:00"}
        }),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json["decision"], json!(true));
    assert_eq!(answer.headers["content-type"], "application/json");
    let reasons = &answer.json["context"]["determining_policies"];
    assert_eq!(reasons.as_array().map(Vec::len), Some(1), "{}", answer.text);
    // The HTTPS binding's example (todo 1) with its request id echoed.
    let answer = send(
        addr,
        "POST",
        "/access/v1/evaluation",
        &[
            ("content-type", "application/json"),
            ("x-request-id", "bfe9eb29-ab87-4ca3-be83-a1d5d8305716"),
            ("authorization", "Bearer <myoauthtoken>"),
        ],
        json!({
            "subject": {"type": "user", "id": "alice@example.com"},
            "resource": {"type": "todo", "id": "1"},
            "action": {"name": "can_read"},
            "context": {"time": "1985-10-26T01:22-07:00"}
        })
        .to_string()
        .into_bytes(),
    )
    .await;
    assert_eq!(
        answer.json,
        json!({"decision": true, "context": answer.json["context"]})
    );
    assert_eq!(answer.json["decision"], json!(true));
    assert_eq!(
        answer.headers["x-request-id"],
        "bfe9eb29-ab87-4ca3-be83-a1d5d8305716"
    );
    // A subject with a department property may print ("Can a manager print?").
    for (department, allowed) in [("Sales", true), ("Engineering", false)] {
        let answer = post_json(
            addr,
            "/access/v1/evaluation",
            &json!({
                "subject": {"type": "user", "id": "alice@example.com",
                            "properties": {"department": department, "ip_address": "172.217.22.14",
                                           "device_id": "8:65:ee:17:7e:0b"}},
                "resource": {"type": "book", "id": "123",
                             "properties": {"library_record": {"title": "AuthZEN in Action",
                                                               "isbn": "978-0593383322"}}},
                "action": {"name": "can_print"}
            }),
        )
        .await;
        assert_eq!(
            answer.json["decision"],
            json!(allowed),
            "{department}: {}",
            answer.text
        );
    }
    // carol is no reader: a deny is a 200 with decision false.
    let answer = post_json(
        addr,
        "/access/v1/evaluation",
        &json!({
            "subject": {"type": "user", "id": "carol@example.com"},
            "resource": {"type": "account", "id": "123"},
            "action": {"name": "can_read"}
        }),
    )
    .await;
    assert_eq!(
        (answer.status, &answer.json["decision"]),
        (200, &json!(false))
    );
    server.stop().await;
}

#[tokio::test]
async fn the_specifications_evaluations_examples_merge_defaults_and_honour_each_semantic() {
    let (_dir, server, addr) = served(0).await;
    let alice = json!({"type": "user", "id": "alice@example.com"});
    let doc = |id: &str| json!({"resource": {"type": "document", "id": id}});
    // Three requests, no defaults.
    let full = |id: &str| {
        json!({"subject": alice, "action": {"name": "can_read"},
               "resource": {"type": "document", "id": id},
               "context": {"time": "2024-05-31T15:22-07:00"}})
    };
    let body = json!({"evaluations": [full("boxcarring.md"), full("subject-search.md"), full("resource-search.md")]});
    let answer = post_json(addr, "/access/v1/evaluations", &body).await;
    assert_eq!(
        decisions(&answer.json),
        [true, true, true],
        "{}",
        answer.text
    );
    // Defaults for subject and context, each item's action.
    let body = json!({
        "subject": alice, "context": {"time": "2024-05-31T15:22-07:00"},
        "evaluations": [
            {"action": {"name": "can_read"}, "resource": {"type": "document", "id": "boxcarring.md"}},
            {"action": {"name": "can_read"}, "resource": {"type": "document", "id": "subject-search.md"}},
            {"action": {"name": "can_read"}, "resource": {"type": "document", "id": "resource-search.md"}}
        ]
    });
    let answer = post_json(addr, "/access/v1/evaluations", &body).await;
    assert_eq!(decisions(&answer.json), [true, true, true]);
    // A default action, overridden by the third item (can_edit on resource-search.md is
    // forbidden).
    let body = json!({
        "subject": alice, "context": {"time": "2024-05-31T15:22-07:00"},
        "action": {"name": "can_read"},
        "evaluations": [doc("boxcarring.md"), doc("subject-search.md"),
                        {"action": {"name": "can_edit"}, "resource": {"type": "document", "id": "resource-search.md"}}]
    });
    let answer = post_json(addr, "/access/v1/evaluations", &body).await;
    assert_eq!(decisions(&answer.json), [true, true, false]);
    // The options example: unknown options are ignored.
    let body = json!({
        "evaluations": [{"resource": {"type": "doc", "id": "1"}, "subject": {"type": "doc", "id": "2"}}],
        "options": {"evaluations_semantic": "execute_all", "another_option": "value"}
    });
    let answer = post_json(addr, "/access/v1/evaluations", &body).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        decisions(&answer.json),
        [false],
        "no action: a false decision with its error"
    );
    assert_eq!(
        answer.json["evaluations"][0]["context"]["error"]["field"],
        "evaluations[0].action"
    );
    // read on documents 1, 2, 3 under each semantic: 2 is forbidden.
    let three = |semantic: &str| {
        json!({"subject": {"type": "user", "id": "alice@example.com"}, "action": {"name": "read"},
               "options": {"evaluations_semantic": semantic},
               "evaluations": [doc("1"), doc("2"), doc("3")]})
    };
    let answer = post_json(addr, "/access/v1/evaluations", &three("execute_all")).await;
    assert_eq!(decisions(&answer.json), [true, false, true]);
    let answer = post_json(addr, "/access/v1/evaluations", &three("deny_on_first_deny")).await;
    assert_eq!(decisions(&answer.json), [true, false]);
    assert_eq!(
        answer.json["evaluations"][1]["context"]["reason"],
        "deny_on_first_deny"
    );
    let answer = post_json(
        addr,
        "/access/v1/evaluations",
        &three("permit_on_first_permit"),
    )
    .await;
    assert_eq!(decisions(&answer.json), [true]);
    // Without an evaluations array (or with an empty one) it is a single evaluation.
    for body in [
        json!({"subject": alice, "action": {"name": "read"}, "resource": {"type": "document", "id": "1"}}),
        json!({"subject": alice, "action": {"name": "read"}, "resource": {"type": "document", "id": "1"},
               "evaluations": []}),
    ] {
        let answer = post_json(addr, "/access/v1/evaluations", &body).await;
        assert_eq!(answer.json["decision"], json!(true), "{}", answer.text);
    }
    // An unknown semantic is the caller's mistake.
    let answer = post_json(addr, "/access/v1/evaluations", &three("all_at_once")).await;
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.json["error"]["field"],
        "options.evaluations_semantic"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_invalid_item_is_a_false_decision_with_its_error_while_the_others_are_decided() {
    let (_dir, server, addr) = served(0).await;
    let body = json!({
        "subject": {"type": "user", "id": "alice@example.com"},
        "action": {"name": "read"},
        "evaluations": [
            {"resource": {"type": "document", "id": "1"}},
            {"resource": {"type": "document"}},
            "not an object",
            {"resource": {"type": "not a type!", "id": "1"}},
            {"resource": {"type": "document", "id": "3"}, "context": {"subject": 1}},
            {"resource": {"type": "document", "id": "3"}}
        ]
    });
    let answer = post_json(addr, "/access/v1/evaluations", &body).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        decisions(&answer.json),
        [true, false, false, false, false, true]
    );
    let field = |i: usize| answer.json["evaluations"][i]["context"]["error"]["field"].clone();
    assert_eq!(field(1), "evaluations[1].resource.id");
    assert_eq!(field(2), "evaluations[2]");
    assert_eq!(field(3), "evaluations[3].resource.type");
    assert_eq!(field(4), "evaluations[4].context.subject");
    assert_eq!(
        answer.json["evaluations"][1]["context"]["error"]["status"],
        400
    );
    server.stop().await;
}

#[tokio::test]
async fn defaults_that_would_grow_a_small_body_past_the_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), 0);
    let mut config = Config {
        policies: dir.path().to_owned(),
        ..Config::default()
    };
    config.authzen.listen = Some("127.0.0.1:0".parse().unwrap());
    config.limits.max_message_bytes = 64 * 1024;
    let server = TestServer::start_with(config).await;
    let addr = server.authzen_addr.unwrap();
    // A 2 KB context repeated into 1,000 items is 2 MB: far past 64 KB.
    let context: serde_json::Map<String, Value> =
        (0..200).map(|i| (format!("k{i:05}"), json!(i))).collect();
    let items: Vec<Value> = (0..1000).map(|_| json!({})).collect();
    let body = json!({"subject": {"type": "user", "id": "alice@example.com"},
                      "action": {"name": "can_read"}, "resource": {"type": "todo", "id": "1"},
                      "context": context, "evaluations": items});
    assert!(body.to_string().len() < 64 * 1024);
    let answer = post_json(addr, "/access/v1/evaluations", &body).await;
    assert_eq!(answer.status, 400, "{}", answer.text);
    assert_eq!(
        answer.json["error"]["field"], "evaluations",
        "{}",
        answer.text
    );
    assert!(
        answer.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_message_bytes"),
        "{}",
        answer.text
    );
    // The same defaults for a few items are fine.
    let mut few = body.clone();
    few["evaluations"] = json!([{}, {}]);
    let answer = post_json(addr, "/access/v1/evaluations", &few).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(decisions(&answer.json), vec![true, true]);
    server.stop().await;
}

#[tokio::test]
async fn the_specifications_search_examples_answer_from_the_stored_entities() {
    let (_dir, server, addr) = served(0).await;
    // Subject search: which users can_read account 123.
    let answer = post_json(
        addr,
        "/access/v1/search/subject",
        &json!({"subject": {"type": "user"}, "action": {"name": "can_read"},
                "resource": {"type": "account", "id": "123"},
                "context": {"time": "2024-10-26T01:22-07:00"}}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        answer.json["results"],
        json!([{"type": "user", "id": "alice@example.com"}, {"type": "user", "id": "bob@example.com"}])
    );
    assert_eq!(
        answer.json["page"],
        json!({"next_token": "", "count": 2, "total": 2})
    );
    // Resource search: which accounts alice can_read.
    let answer = post_json(
        addr,
        "/access/v1/search/resource",
        &json!({"subject": {"type": "user", "id": "alice@example.com"},
                "action": {"name": "can_read"}, "resource": {"type": "account"}}),
    )
    .await;
    assert_eq!(
        answer.json["results"],
        json!([{"type": "account", "id": "123"}, {"type": "account", "id": "456"}])
    );
    // Action search: what alice may do on account 123.
    let answer = post_json(
        addr,
        "/access/v1/search/action",
        &json!({"subject": {"type": "user", "id": "alice@example.com"},
                "resource": {"type": "account", "id": "123"},
                "context": {"time": "2024-10-26T01:22-07:00"}}),
    )
    .await;
    assert_eq!(
        answer.json["results"],
        json!([{"name": "can_read"}, {"name": "can_write"}]),
        "{}",
        answer.text
    );
    // Every result fed back as an evaluation is allowed.
    let answer = post_json(
        addr,
        "/access/v1/evaluation",
        &json!({"subject": {"type": "user", "id": "alice@example.com"},
                "action": {"name": "can_write"}, "resource": {"type": "account", "id": "123"}}),
    )
    .await;
    assert_eq!(answer.json["decision"], json!(true));
    server.stop().await;
}

/// Walks a search to its end, `limit` at a time; the results in order.
async fn walk(addr: SocketAddr, path: &str, mut body: Value, limit: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let mut token = String::new();
    for _ in 0..10_000 {
        body["page"] = json!({"token": token, "limit": limit});
        let answer = post_json(addr, path, &body).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        let results = answer.json["results"].as_array().unwrap();
        assert!(results.len() <= limit);
        assert_eq!(answer.json["page"]["count"], json!(results.len()));
        seen.extend(results.iter().map(|r| {
            r.get("id")
                .or(r.get("name"))
                .and_then(Value::as_str)
                .unwrap()
                .to_owned()
        }));
        token = answer.json["page"]["next_token"]
            .as_str()
            .unwrap()
            .to_owned();
        if token.is_empty() {
            return seen;
        }
    }
    panic!("the search did not end");
}

#[tokio::test]
async fn a_search_paged_to_the_end_returns_every_result_once_in_a_stable_order() {
    let (_dir, server, addr) = served(237).await;
    let search = json!({"subject": {"type": "user", "id": "alice@example.com"},
                        "action": {"name": "view"}, "resource": {"type": "document"}});
    let expected: Vec<String> = (0..237).map(|i| format!("big-{i:05}")).collect();
    for limit in [1, 10, 50, 236, 237, 1000] {
        let seen = walk(addr, "/access/v1/search/resource", search.clone(), limit).await;
        assert_eq!(seen, expected, "limit {limit}");
    }
    // The first page counts them all.
    let answer = post_json(addr, "/access/v1/search/resource", &search).await;
    assert_eq!(answer.json["page"]["total"], json!(237));
    assert_eq!(
        answer.json["page"]["count"],
        json!(50),
        "the default page limit"
    );
    // Subject search pages the same way: staff may view a big document.
    let subjects = json!({"subject": {"type": "user"}, "action": {"name": "view"},
                          "resource": {"type": "document", "id": "big-00007"}});
    let seen = walk(addr, "/access/v1/search/subject", subjects, 1).await;
    assert_eq!(seen, ["alice@example.com"]);
    // A token goes on the search it came from only.
    let mut first = search.clone();
    first["page"] = json!({"limit": 5});
    let answer = post_json(addr, "/access/v1/search/resource", &first).await;
    let token = answer.json["page"]["next_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!token.is_empty());
    let mut other = json!({"subject": {"type": "user", "id": "bob@example.com"},
                           "action": {"name": "view"}, "resource": {"type": "document"}});
    other["page"] = json!({"token": token});
    let answer = post_json(addr, "/access/v1/search/resource", &other).await;
    assert_eq!(
        (answer.status, &answer.json["error"]["field"]),
        (400, &json!("page.token"))
    );
    let mut forged = search.clone();
    forged["page"] = json!({"token": "not-hex"});
    let answer = post_json(addr, "/access/v1/search/resource", &forged).await;
    assert_eq!(answer.status, 400);
    server.stop().await;
}

#[tokio::test]
async fn a_search_past_its_evaluation_bound_ends_the_page_early_and_goes_on_from_there() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), 120);
    let mut config = Config {
        policies: dir.path().to_owned(),
        ..Config::default()
    };
    config.authzen.listen = Some("127.0.0.1:0".parse().unwrap());
    config.authzen.max_search_evaluations = 7;
    let server = TestServer::start_with(config).await;
    let addr = server.authzen_addr.unwrap();
    let search = json!({"subject": {"type": "user", "id": "alice@example.com"},
                        "action": {"name": "view"}, "resource": {"type": "document"}});
    let seen = walk(addr, "/access/v1/search/resource", search.clone(), 50).await;
    let expected: Vec<String> = (0..120).map(|i| format!("big-{i:05}")).collect();
    assert_eq!(seen, expected);
    let answer = post_json(addr, "/access/v1/search/resource", &search).await;
    assert_eq!(answer.json["page"]["count"], json!(7), "{}", answer.text);
    assert!(
        answer.json["page"].get("total").is_none(),
        "not counted past the bound"
    );
    server.stop().await;
}

/// The text inside a page token (hex of JSON).
fn token_text(token: &str) -> String {
    let bytes: Vec<u8> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16).unwrap())
        .collect();
    String::from_utf8(bytes).unwrap()
}

#[tokio::test]
async fn page_tokens_name_no_denied_entity_and_paging_survives_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), 60);
    // Every third document is forbidden: pages that end at the evaluation bound often end
    // on one of them.
    let mut forbids = String::new();
    for i in (0..60).step_by(3) {
        forbids.push_str(&format!(
            "forbid(principal, action, resource == document::\"big-{i:05}\");\n"
        ));
    }
    write(dir.path(), "forbids.cedar", &forbids);
    let mut config = Config {
        policies: dir.path().to_owned(),
        ..Config::default()
    };
    config.authzen.listen = Some("127.0.0.1:0".parse().unwrap());
    config.authzen.max_search_evaluations = 4;
    let server = TestServer::start_with(config).await;
    let addr = server.authzen_addr.unwrap();
    let mut body = json!({"subject": {"type": "user", "id": "alice@example.com"},
                          "action": {"name": "view"}, "resource": {"type": "document"}});
    let expected: Vec<String> = (0..60)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("big-{i:05}"))
        .collect();
    let mut seen: Vec<String> = Vec::new();
    let mut token = String::new();
    let mut reloaded = false;
    for _ in 0..1_000 {
        body["page"] = json!({"token": token, "limit": 3});
        let answer = post_json(addr, "/access/v1/search/resource", &body).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        for result in answer.json["results"].as_array().unwrap() {
            seen.push(result["id"].as_str().unwrap().to_owned());
        }
        token = answer.json["page"]["next_token"]
            .as_str()
            .unwrap()
            .to_owned();
        if token.is_empty() {
            break;
        }
        // The token names no document the caller was not given.
        let inside = token_text(&token);
        for i in (0..60).step_by(3) {
            let denied = format!("big-{i:05}");
            assert!(!inside.contains(&denied), "{inside} names {denied}");
        }
        // Half way, the policies change (a new version): paging goes on.
        if !reloaded && seen.len() >= expected.len() / 2 {
            reloaded = true;
            let before = server.store.current().version().to_owned();
            write(
                dir.path(),
                "more.cedar",
                "permit(principal, action == Action::\"can_print\", resource == todo::\"1\");\n",
            );
            server.watcher.reload_now();
            common::eventually(
                std::time::Duration::from_secs(10),
                "the new policies to be served",
                || {
                    let version = server.store.current().version().to_owned();
                    let changed = version != before;
                    async move { changed.then_some(()) }
                },
            )
            .await;
        }
    }
    assert!(reloaded, "the walk was long enough to reload in the middle");
    assert_eq!(
        seen, expected,
        "every result once, in order, across the reload"
    );
    server.stop().await;
}

#[tokio::test]
async fn each_search_page_is_audited_with_what_was_searched_and_found() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), 7);
    let audit = dir.path().join("audit.jsonl");
    let mut config = Config {
        policies: dir.path().to_owned(),
        audit: cedar_pdp::telemetry::AuditOptions {
            sink: cedar_pdp::telemetry::AuditSink::File(audit.clone()),
            ..Default::default()
        },
        ..Config::default()
    };
    config.authzen.listen = Some("127.0.0.1:0".parse().unwrap());
    let server = TestServer::start_with(config).await;
    let addr = server.authzen_addr.unwrap();
    let answer = post_json(
        addr,
        "/access/v1/search/resource",
        &json!({"subject": {"type": "user", "id": "alice@example.com"},
                "action": {"name": "view"}, "resource": {"type": "document"},
                "page": {"limit": 5}}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let records = common::audit_lines(&audit, 1).await;
    let search = records
        .iter()
        .find(|r| r["kind"] == "search" && r["searched"] == "resource")
        .unwrap_or_else(|| panic!("{records:#?}"));
    assert_eq!(search["api"], "authzen");
    assert_eq!(search["principal"], r#"user::"alice@example.com""#);
    assert_eq!(search["action"], r#"Action::"view""#);
    assert_eq!(search["resource"], "document");
    assert_eq!(search["results"], 5);
    assert_eq!(search["more"], true);
    assert!(search["evaluated"].as_u64().unwrap() >= 5);
    assert!(
        search.get("allowed").is_none(),
        "a search is not a decision"
    );
    assert_eq!(search["decision_id"].as_str().unwrap().len(), 32);
    server.stop().await;
}

#[tokio::test]
async fn properties_never_stand_in_for_stored_attributes_or_entities() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "owner.cedar",
        "permit(principal, action == Action::\"read\", resource) \
         when { resource has owner && resource.owner == principal };\n",
    );
    let entities = json!([
        {"uid": {"type": "user", "id": "alice"}, "attrs": {}, "parents": []},
        {"uid": {"type": "user", "id": "bob"}, "attrs": {}, "parents": []},
        {"uid": {"type": "document", "id": "d1"},
         "attrs": {"owner": {"__entity": {"type": "user", "id": "bob"}}}, "parents": []},
    ]);
    write(dir.path(), "entities.json", &entities.to_string());
    let (server, addr) = start(dir.path()).await;
    let ask = |subject: &str, properties: Value| {
        json!({"subject": {"type": "user", "id": subject, "properties": properties},
               "action": {"name": "read"},
               "resource": {"type": "document", "id": "d1",
                            "properties": {"owner": {"type": "user", "id": subject},
                                           "__entity": {"type": "user", "id": subject}}}})
    };
    // The stored owner reads it.
    let bob = post_json(addr, "/access/v1/evaluation", &ask("bob", json!({}))).await;
    assert_eq!(bob.json["decision"], true, "{}", bob.text);
    // Alice asserting she owns it, in every place a caller can assert things, does not.
    let alice = post_json(
        addr,
        "/access/v1/evaluation",
        &ask("alice", json!({"owner": {"type": "user", "id": "alice"}})),
    )
    .await;
    assert_eq!(alice.status, 200, "{}", alice.text);
    assert_eq!(alice.json["decision"], false, "{}", alice.text);
    // Nor does a resource the store does not hold, whatever its properties say.
    let mut unknown = ask("alice", json!({}));
    unknown["resource"]["id"] = json!("d2");
    let unknown = post_json(addr, "/access/v1/evaluation", &unknown).await;
    assert_eq!(unknown.json["decision"], false, "{}", unknown.text);
    server.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_a_400_naming_the_problem_and_never_a_500() {
    let (_dir, server, addr) = served(0).await;
    let good = json!({"subject": {"type": "user", "id": "alice@example.com"},
                      "action": {"name": "can_read"}, "resource": {"type": "todo", "id": "1"}});
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (b"".to_vec(), "application/json", "body"),
        (b"   ".to_vec(), "application/json", "body"),
        (b"{\"subject\":".to_vec(), "application/json", "body"),
        (b"[1,2]".to_vec(), "application/json", "body"),
        // Two subjects: which counts must not depend on who reads the body.
        (
            br#"{"subject":{"type":"user","id":"mallory"},"subject":{"type":"user","id":"alice@example.com"},"action":{"name":"can_read"},"resource":{"type":"todo","id":"1"}}"#.to_vec(),
            "application/json",
            "body",
        ),
        (good.to_string().into_bytes(), "text/plain", "content-type"),
        (good.to_string().into_bytes(), "", "content-type"),
        (json!({"action": {"name": "x"}, "resource": {"type": "a", "id": "1"}}).to_string().into_bytes(), "application/json", "subject"),
        (json!({"subject": {"id": "x"}, "action": {"name": "x"}, "resource": {"type": "a", "id": "1"}}).to_string().into_bytes(), "application/json", "subject.type"),
        (json!({"subject": {"type": "user", "id": 7}, "action": {"name": "x"}, "resource": {"type": "a", "id": "1"}}).to_string().into_bytes(), "application/json", "subject.id"),
        (json!({"subject": "alice", "action": {"name": "x"}, "resource": {"type": "a", "id": "1"}}).to_string().into_bytes(), "application/json", "subject"),
        (json!({"subject": {"type": "user", "id": "a"}, "action": {}, "resource": {"type": "a", "id": "1"}}).to_string().into_bytes(), "application/json", "action.name"),
        (json!({"subject": {"type": "user", "id": "a"}, "action": {"name": "x"}, "resource": {"type": "a"}}).to_string().into_bytes(), "application/json", "resource.id"),
        (json!({"subject": {"type": "user", "id": "a", "properties": [1]}, "action": {"name": "x"}, "resource": {"type": "a", "id": "1"}}).to_string().into_bytes(), "application/json", "subject.properties"),
        (json!({"subject": {"type": "user", "id": "a"}, "action": {"name": "x"}, "resource": {"type": "a", "id": "1"}, "context": {"action": {}}}).to_string().into_bytes(), "application/json", "context.action"),
        (json!({"subject": {"type": "user", "id": "a"}, "action": {"name": "x"}, "resource": {"type": "a", "id": "1"}, "context": 5}).to_string().into_bytes(), "application/json", "context"),
        (format!("{}{}", "[".repeat(200), "]".repeat(200)).into_bytes(), "application/json", "body"),
    ];
    for (body, content_type, field) in cases {
        let headers: Vec<(&str, &str)> = if content_type.is_empty() {
            vec![]
        } else {
            vec![("content-type", content_type)]
        };
        let answer = send(
            addr,
            "POST",
            "/access/v1/evaluation",
            &headers,
            body.clone(),
        )
        .await;
        assert_eq!(answer.status, 400, "{field}: {}", answer.text);
        assert_eq!(
            answer.json["error"]["field"],
            json!(field),
            "{}",
            answer.text
        );
        assert!(answer.json["error"]["message"].as_str().is_some());
    }
    // Unknown top-level fields are ignored (forward compatibility).
    let mut extra = good.clone();
    extra["future_field"] = json!({"anything": [1, 2]});
    let answer = post_json(addr, "/access/v1/evaluation", &extra).await;
    assert_eq!(answer.json["decision"], json!(true), "{}", answer.text);
    // A float property is not a Cedar value: refused by name.
    let mut float = good.clone();
    float["subject"]["properties"] = json!({"score": 1.5});
    let answer = post_json(addr, "/access/v1/evaluation", &float).await;
    assert_eq!(answer.status, 400, "{}", answer.text);
    // Wrong method and unknown path.
    let answer = send(addr, "GET", "/access/v1/evaluation", &[], vec![]).await;
    assert_eq!(answer.status, 405);
    let answer = send(addr, "POST", "/access/v2/evaluation", &[], vec![]).await;
    assert_eq!(answer.status, 404);
    // Past max_message_bytes.
    let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(5 * 1024 * 1024));
    let answer = send(
        addr,
        "POST",
        "/access/v1/evaluation",
        &[("content-type", "application/json")],
        huge.into_bytes(),
    )
    .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json["error"]["field"], "body");
    let text = server.metrics_text().await;
    assert!(text.contains(
        "cedar_pdp_requests_rejected_total{api=\"authzen\",reason=\"invalid_argument\"}"
    ));
    assert!(text.contains("cedar_pdp_decisions_total{api=\"authzen\",decision=\"allow\"}"));
    server.stop().await;
}

#[tokio::test]
async fn the_metadata_names_the_endpoints_served() {
    let (_dir, server, addr) = served(0).await;
    let answer = send(
        addr,
        "GET",
        "/.well-known/authzen-configuration",
        &[],
        vec![],
    )
    .await;
    assert_eq!(answer.status, 200);
    let base = format!("http://{addr}");
    assert_eq!(
        answer.json,
        json!({
            "policy_decision_point": base,
            "access_evaluation_endpoint": format!("{base}/access/v1/evaluation"),
            "access_evaluations_endpoint": format!("{base}/access/v1/evaluations"),
            "search_subject_endpoint": format!("{base}/access/v1/search/subject"),
            "search_resource_endpoint": format!("{base}/access/v1/search/resource"),
            "search_action_endpoint": format!("{base}/access/v1/search/action"),
        })
    );
    // URLs taken from the request's Host are never for a shared cache, and two Host
    // headers name no host.
    assert_eq!(answer.headers["cache-control"], "no-store");
    let doubled = send(
        addr,
        "GET",
        "/.well-known/authzen-configuration",
        &[("host", "evil.example")],
        vec![],
    )
    .await;
    assert_eq!(doubled.status, 400, "{}", doubled.text);
    assert!(!doubled.text.contains("evil.example"), "{}", doubled.text);
    // Every endpoint it names answers a POST with a JSON body.
    for key in [
        "access_evaluation_endpoint",
        "access_evaluations_endpoint",
        "search_subject_endpoint",
        "search_resource_endpoint",
        "search_action_endpoint",
    ] {
        let url = answer.json[key].as_str().unwrap();
        let path = url.strip_prefix(&base).unwrap();
        let reply = post_json(addr, path, &json!({})).await;
        assert_eq!(reply.status, 400, "{path} is served and reads the body");
    }
    server.stop().await;
}

#[tokio::test]
async fn undeclared_properties_are_dropped_and_named_when_a_schema_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "schema.cedarschema",
        r#"
        entity user;
        entity report;
        action print appliesTo {
            principal: [user], resource: [report],
            context: { subject: { department: String }, resource: {}, action: {}, time?: String }
        };
    "#,
    );
    write(
        dir.path(),
        "p.cedar",
        r#"permit(principal, action == Action::"print", resource)
        when { context.subject.department == "Sales" };"#,
    );
    let (server, addr) = start(dir.path()).await;
    let answer = post_json(
        addr,
        "/access/v1/evaluation",
        &json!({"subject": {"type": "user", "id": "a", "properties": {"department": "Sales", "colour": "red"}},
                "action": {"name": "print", "properties": {"copies": 2}},
                "resource": {"type": "report", "id": "q3"},
                "context": {"time": "now", "weather": "rain"}}),
    )
    .await;
    assert_eq!(answer.json["decision"], json!(true), "{}", answer.text);
    let mut dropped: Vec<&str> = answer.json["context"]["dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    dropped.sort_unstable();
    assert_eq!(
        dropped,
        [
            "action.properties.copies",
            "context.weather",
            "subject.properties.colour"
        ]
    );
    // A declared property of the wrong type is the caller's mistake.
    let answer = post_json(
        addr,
        "/access/v1/evaluation",
        &json!({"subject": {"type": "user", "id": "a", "properties": {"department": 7}},
                "action": {"name": "print"}, "resource": {"type": "report", "id": "q3"}}),
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.text);
    // An unknown type is named.
    let answer = post_json(
        addr,
        "/access/v1/evaluation",
        &json!({"subject": {"type": "robot", "id": "a"},
                "action": {"name": "print"}, "resource": {"type": "report", "id": "q3"}}),
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.text);
    server.stop().await;
}

#[tokio::test]
async fn random_requests_decide_the_same_through_authzen_and_cedarpdp_v1() {
    let (_dir, server, addr) = served(20).await;
    let mut client = server.client().await;
    let mut rng = rng::Rng::new(0xA07_2E11);
    let subjects = [
        "alice@example.com",
        "bob@example.com",
        "carol@example.com",
        "dave@example.com",
    ];
    let resources = [
        ("account", "123"),
        ("account", "456"),
        ("account", "789"),
        ("document", "1"),
        ("document", "2"),
        ("document", "resource-search.md"),
        ("todo", "1"),
        ("document", "big-00003"),
        ("book", "9"),
    ];
    let actions = [
        "can_read",
        "can_write",
        "can_edit",
        "read",
        "can_print",
        "view",
    ];
    let departments = [None, Some("Sales"), Some("Legal")];
    let mut allows = 0;
    for _ in 0..200 {
        let subject = subjects[rng.below(subjects.len())];
        let (rtype, rid) = resources[rng.below(resources.len())];
        let action = actions[rng.below(actions.len())];
        let department = departments[rng.below(departments.len())];
        let properties = department.map_or(json!({}), |d| json!({"department": d}));
        let answer = post_json(
            addr,
            "/access/v1/evaluation",
            &json!({"subject": {"type": "user", "id": subject, "properties": properties},
                    "action": {"name": action}, "resource": {"type": rtype, "id": rid}}),
        )
        .await;
        let context = json!({"subject": properties, "resource": {}, "action": {}});
        let grpc = client
            .is_authorized(pb::IsAuthorizedRequest {
                principal: Some(common::uid("user", subject)),
                action: Some(common::uid("Action", action)),
                resource: Some(common::uid(rtype, rid)),
                context_json: context.to_string(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let allowed = common::is_allow(&grpc);
        allows += usize::from(allowed);
        assert_eq!(
            answer.json["decision"],
            json!(allowed),
            "{subject} {action} {rtype}::{rid}"
        );
        let reasons: BTreeSet<&str> = common::reasons(&grpc).into_iter().collect();
        let authzen: BTreeSet<&str> = answer.json["context"]["determining_policies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(reasons, authzen);
    }
    assert!(allows > 10, "the sample holds allows too ({allows})");
    server.stop().await;
}
