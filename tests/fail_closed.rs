//! The findings of a review done as an attacker would, each through the wire (cedarpdp.v1
//! and Envoy's Check): no request, policy file or caller turns a deny into an allow.
//!
//! - A resource the store does not hold (or a stored id written another way: case, a
//!   path parameter, an encoded space) is denied to everyone, tenant admins included.
//! - A forbid whose evaluation errors denies, names itself, and is counted.
//! - Request entities cannot rewrite the store: a stored uid (forged membership, forged
//!   attribute), an Action entity, or a parent stored entities name is refused.
//! - A request's entity graph is bounded before Cedar sees it.

mod common;

use cedar_pdp::{
    Config,
    config::{OnForbidError, RequestEntities},
    proto::{
        cedarpdp::v1 as pb,
        envoy::service::auth::v3::{CheckRequest, authorization_client::AuthorizationClient},
    },
};
use common::*;
use tonic::Code;

/// Stored users of the example, each of one tenant; alice and grace administer theirs.
const USERS: [&str; 7] = ["alice", "bob", "carol", "erin", "mallory", "dave", "grace"];

/// Stored documents, and ids that are not stored: unknown, or a stored id written another
/// way (as a gateway may pass on a path segment).
const STORED_DOCS: [&str; 2] = ["acme-roadmap-q3", "globex-handbook"];

fn variants_of(id: &str) -> Vec<String> {
    vec![
        id.to_uppercase(),
        format!("{id};jsessionid=x"),
        format!("{id} "),
        id.replacen('-', " ", 1),
        format!("{id}/"),
    ]
}

fn unknown_docs() -> Vec<String> {
    let mut ids = vec!["no-such-doc".to_owned(), String::new()];
    for id in STORED_DOCS {
        ids.extend(variants_of(id));
    }
    ids
}

#[tokio::test]
async fn a_resource_the_store_does_not_hold_is_denied_to_everyone() {
    let server = TestServer::start(&example_policies()).await;
    let mut client = server.client().await;
    let mut decided = 0;
    for user in USERS {
        for act in ["read", "write", "share", "delete"] {
            for doc in unknown_docs() {
                let mut r = request(p("User", user), action(act), p("Document", &doc));
                // The strongest session there is: MFA, from the office network.
                r.context = strong_context();
                let response = client.is_authorized(r).await.unwrap().into_inner();
                let what = format!("{user} {act} {doc:?}");
                assert!(!is_allow(&response), "{what}: {response:?}");
                assert!(
                    reasons(&response).contains(&"tenant-isolation"),
                    "{what}: {response:?}"
                );
                assert!(response.errors.is_empty(), "{what}: {response:?}");
                decided += 1;
            }
        }
    }
    assert!(decided > 300, "{decided}");
    // The stored document itself is still served: alice, an Acme admin, deletes it.
    let mut r = request(
        p("User", "alice"),
        action("delete"),
        p("Document", "acme-roadmap-q3"),
    );
    r.context = strong_context();
    assert!(is_allow(
        &client.is_authorized(r).await.unwrap().into_inner()
    ));
    server.stop().await;
}

/// A check of `method` on `/projects/acme-roadmap/docs/{doc}` by the token subject `user`.
fn envoy_reads(user: &str, method: &str, doc: &str) -> CheckRequest {
    let path = format!("/projects/acme-roadmap/docs/{doc}");
    check(
        method,
        &path,
        Some(jwt(&[("sub", string_value(user))])),
        None,
    )
}

#[tokio::test]
async fn envoy_is_denied_a_document_the_store_does_not_hold() {
    let server = TestServer::start_with(Config {
        policies: example_policies(),
        ext_authz: docs_ext_authz(),
        ..Config::default()
    })
    .await;
    let mut client = AuthorizationClient::new(server.channel().await);
    // Path forms of unknown ids, as a client can write them.
    let mut docs = vec!["no-such-doc".to_owned(), "ACME-ROADMAP-Q3".to_owned()];
    docs.push("acme-roadmap-q3;jsessionid=x".to_owned());
    docs.push("acme%20roadmap-q3".to_owned());
    docs.push("acme-roadmap-q3%20".to_owned());
    for user in USERS {
        for method in ["GET", "POST", "DELETE"] {
            for doc in &docs {
                let answer = client
                    .check(envoy_reads(user, method, doc))
                    .await
                    .unwrap()
                    .into_inner();
                let status = answer.status.as_ref().map_or(-1, |s| s.code);
                assert_eq!(
                    status,
                    Code::PermissionDenied as i32,
                    "{user} {method} {doc}: {answer:?}"
                );
            }
        }
    }
    // The stored document: bob reads it.
    let bob = client
        .check(envoy_reads("bob", "GET", "acme-roadmap-q3"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bob.status.as_ref().map(|s| s.code), Some(0), "{bob:?}");
    server.stop().await;
}

/// Isolation and admin rights written without `has` guards, as the example's were: the
/// forbid errors on a resource the store does not hold.
const UNGUARDED: &str = r#"
@id("isolation")
forbid (principal, action, resource)
unless { principal.tenant == resource.tenant };

@id("admins")
permit (principal, action, resource)
when { principal.admin };
"#;

const ADMIN: &str = r#"[
  {"uid": {"type": "User", "id": "root"}, "attrs": {"tenant": "t1", "admin": true}, "parents": []},
  {"uid": {"type": "Doc", "id": "d1"}, "attrs": {"tenant": "t2"}, "parents": []}
]"#;

#[tokio::test]
async fn a_forbid_that_errors_denies_names_itself_and_is_counted() {
    let dir = policy_dir(&[("p.cedar", UNGUARDED), ("entities.json", ADMIN)]);
    let ask = |doc: &str| request(uid("User", "root"), uid("Action", "read"), uid("Doc", doc));

    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;
    let missing = client.is_authorized(ask("d9")).await.unwrap().into_inner();
    assert!(!is_allow(&missing), "{missing:?}");
    assert_eq!(reasons(&missing), ["isolation"]);
    assert_eq!(missing.errors.len(), 1, "{missing:?}");
    assert_eq!(missing.errors[0].policy_id, "isolation");
    // Another tenant's stored document: the forbid is satisfied, no error.
    let other = client.is_authorized(ask("d1")).await.unwrap().into_inner();
    assert!(!is_allow(&other));
    assert_eq!(reasons(&other), ["isolation"]);
    assert!(other.errors.is_empty());
    let text = server.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            r#"cedar_pdp_forbid_errors_total{policy_id="isolation"}"#
        ),
        Some(1.0),
        "{text}"
    );
    server.stop().await;

    // Cedar's own semantics, when asked for: the erroring forbid is left out.
    let skipping = TestServer::start_with(Config {
        policies: dir.path().to_owned(),
        on_forbid_error: OnForbidError::Skip,
        ..Config::default()
    })
    .await;
    let mut client = skipping.client().await;
    let missing = client.is_authorized(ask("d9")).await.unwrap().into_inner();
    assert!(is_allow(&missing), "{missing:?}");
    assert_eq!(reasons(&missing), ["admins"]);
    skipping.stop().await;
}

/// `who` with the attributes of an Acme user, `suspended` as given, in `groups`.
fn acme_user(who: &str, suspended: bool, groups: &[&str]) -> pb::Entity {
    pb::Entity {
        uid: Some(p("User", who)),
        attrs: context(&[
            ("tenant", entity_value(p("Tenant", "acme"))),
            ("email", string(&format!("{who}@acme.example"))),
            ("suspended", boolean(suspended)),
            ("contractor", boolean(false)),
        ]),
        parents: groups.iter().map(|g| p("Group", g)).collect(),
        tags: Default::default(),
    }
}

async fn refused_with(
    client: &mut pb::authorizer_client::AuthorizerClient<tonic::transport::Channel>,
    request: pb::IsAuthorizedRequest,
    code: Code,
    said: &[&str],
) {
    let status = client.is_authorized(request).await.unwrap_err();
    assert_eq!(status.code(), code, "{status:?}");
    for part in said {
        assert!(status.message().contains(part), "{part:?} in {status:?}");
    }
}

#[tokio::test]
async fn request_entities_cannot_rewrite_the_store() {
    let server = TestServer::start(&example_policies()).await;
    let mut client = server.client().await;
    let minutes = p("Document", "acme-board-minutes");

    // Forged membership: bob (stored) sends himself as an Acme admin.
    let mut r = request(p("User", "bob"), action("delete"), minutes.clone());
    r.context = strong_context();
    r.entities = vec![acme_user("bob", false, &["acme-admins"])];
    refused_with(
        &mut client,
        r.clone(),
        Code::InvalidArgument,
        &[
            "entities[0].uid",
            r#"Platform::User::"bob""#,
            "stored entity",
        ],
    )
    .await;
    // The same in Cedar's JSON form, and in a batch.
    let json = r#"[{"uid": {"type": "Platform::User", "id": "bob"},
        "attrs": {"tenant": {"__entity": {"type": "Platform::Tenant", "id": "acme"}},
                  "email": "bob@acme.example", "suspended": false, "contractor": false},
        "parents": [{"type": "Platform::Group", "id": "acme-admins"}]}]"#;
    let mut as_json = r.clone();
    as_json.entities = Vec::new();
    as_json.entities_json = json.to_owned();
    refused_with(
        &mut client,
        as_json,
        Code::InvalidArgument,
        &["entities_json[0].uid", "stored entity"],
    )
    .await;
    let batch = pb::BatchIsAuthorizedRequest {
        entities: vec![acme_user("bob", false, &["acme-admins"])],
        items: vec![pb::BatchItem {
            principal: r.principal.clone(),
            action: r.action.clone(),
            resource: r.resource.clone(),
            context: r.context.clone(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let status = client.batch_is_authorized(batch).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Forged attribute: mallory (stored, suspended) sends herself unsuspended.
    let mut r = request(
        p("User", "mallory"),
        action("read"),
        p("Document", "acme-roadmap-q3"),
    );
    r.entities = vec![acme_user("mallory", false, &["acme-engineering"])];
    refused_with(
        &mut client,
        r,
        Code::InvalidArgument,
        &[r#"Platform::User::"mallory""#, "stored entity"],
    )
    .await;

    // What was asked without the forgeries is decided as stored: denied.
    for (user, act, resource) in [
        ("bob", "delete", minutes.clone()),
        ("mallory", "read", p("Document", "acme-roadmap-q3")),
    ] {
        let mut r = request(p("User", user), action(act), resource);
        r.context = strong_context();
        assert!(!is_allow(
            &client.is_authorized(r).await.unwrap().into_inner()
        ));
    }
    server.stop().await;
}

#[tokio::test]
async fn actions_and_parents_the_store_names_cannot_be_sent() {
    // Without request validation nothing stops an Action entity but the trust mode.
    let dir = policy_dir(&[
        (
            "p.cedar",
            r#"permit (principal, action in Action::"admin", resource);"#,
        ),
        (
            "entities.json",
            r#"[{"uid": {"type": "User", "id": "u"}, "attrs": {},
                 "parents": [{"type": "Group", "id": "not-stored"}]}]"#,
        ),
    ]);
    let server = TestServer::start_with(Config {
        policies: dir.path().to_owned(),
        validate_requests: false,
        ..Config::default()
    })
    .await;
    let mut client = server.client().await;
    let read_as = |parents: Vec<pb::EntityUid>| {
        let mut r = request(uid("User", "u"), uid("Action", "read"), uid("Doc", "d"));
        r.entities = vec![pb::Entity {
            uid: Some(uid("Action", "read")),
            parents,
            ..Default::default()
        }];
        r
    };
    refused_with(
        &mut client,
        read_as(vec![uid("Action", "admin")]),
        Code::InvalidArgument,
        &["entities[0].uid", "Action entity"],
    )
    .await;
    // A group stored users name as their parent, defined by the request into admin.
    let mut r = request(uid("User", "u"), uid("Action", "read"), uid("Doc", "d"));
    r.entities = vec![pb::Entity {
        uid: Some(uid("Group", "not-stored")),
        parents: vec![uid("Action", "admin")],
        ..Default::default()
    }];
    refused_with(
        &mut client,
        r,
        Code::InvalidArgument,
        &[r#"Group::"not-stored""#, "named by the stored entities"],
    )
    .await;
    // A new entity the store does not know is fine.
    let mut r = request(uid("User", "new"), uid("Action", "read"), uid("Doc", "d"));
    r.entities = vec![pb::Entity {
        uid: Some(uid("User", "new")),
        ..Default::default()
    }];
    let answer = client.is_authorized(r).await.unwrap().into_inner();
    assert!(!is_allow(&answer), "{answer:?}");
    server.stop().await;
}

/// Found in review: Cedar takes a uid written as `{"__entity": <anything it cannot read>,
/// "type", "id"}` by its plain form; a check that read uids its own way missed it, and the
/// request could define a parent the store names (an ALLOW) or a graph past every limit.
#[tokio::test]
async fn every_form_of_a_uid_cedar_takes_is_checked() {
    let dir = policy_dir(&[
        (
            "p.cedar",
            "permit (principal in Role::\"admin\", action, resource);\n\
             permit (principal, action, resource) when { resource has owner && resource.owner.trusted };",
        ),
        (
            "entities.json",
            r#"[{"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": [{"type": "Role", "id": "viewer"}]},
                {"uid": {"type": "Doc", "id": "d"}, "attrs": {"owner": {"__entity": {"type": "User", "id": "ghost"}}}, "parents": []}]"#,
        ),
    ]);
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;
    let ask = |entities_json: &str| {
        let mut r = request(
            uid("User", "alice"),
            uid("Action", "delete"),
            uid("Doc", "d"),
        );
        r.entities_json = entities_json.to_owned();
        r
    };
    for form in [
        r#"{"type": "Role", "id": "viewer"}"#,
        r#"{"__entity": null, "type": "Role", "id": "viewer"}"#,
        r#"{"__entity": 3, "type": "Role", "id": "viewer"}"#,
        r#"{"__entity": {"type": "Role", "id": "viewer"}}"#,
    ] {
        let sent = format!(
            r#"[{{"uid": {form}, "attrs": {{}}, "parents": [{{"type": "Role", "id": "admin"}}]}}]"#
        );
        refused_with(
            &mut client,
            ask(&sent),
            Code::InvalidArgument,
            &[
                "entities_json[0].uid",
                r#"Role::"viewer""#,
                "not held by the store",
            ],
        )
        .await;
    }
    // The owner a stored document names, and the store does not hold.
    refused_with(
        &mut client,
        ask(r#"[{"uid": {"__entity": null, "type": "User", "id": "ghost"}, "attrs": {"trusted": true}, "parents": []}]"#),
        Code::InvalidArgument,
        &[r#"User::"ghost""#, "not held by the store"],
    )
    .await;
    // A parent in a form Cedar refuses is refused, named, before anything else.
    refused_with(
        &mut client,
        ask(r#"[{"uid": {"type": "User", "id": "new"}, "attrs": {}, "parents": [{"type": "Role"}]}]"#),
        Code::InvalidArgument,
        &["entities_json[0].parents[0]"],
    )
    .await;
    // Hidden parents count towards the limits like any other.
    let chain: Vec<String> = (0..100)
        .map(|i| {
            format!(
                r#"{{"uid": {{"type": "Group", "id": "g{i}"}}, "attrs": {{}}, "parents": [{{"__entity": null, "type": "Group", "id": "g{}"}}]}}"#,
                i + 1
            )
        })
        .collect();
    refused_with(
        &mut client,
        ask(&format!("[{}]", chain.join(","))),
        Code::ResourceExhausted,
        &["max_ancestor_depth"],
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn with_replace_or_off_request_entities_do_what_the_operator_chose() {
    let forged = || {
        let mut r = request(
            p("User", "bob"),
            action("delete"),
            p("Document", "acme-board-minutes"),
        );
        r.context = strong_context();
        r.entities = vec![acme_user("bob", false, &["acme-admins"])];
        r
    };
    // replace: Cedar's test-harness behaviour, for callers trusted with it.
    let replacing = TestServer::start_with(Config {
        policies: example_policies(),
        request_entities: RequestEntities::Replace,
        ..Config::default()
    })
    .await;
    let mut client = replacing.client().await;
    let answer = client.is_authorized(forged()).await.unwrap().into_inner();
    assert!(is_allow(&answer), "{answer:?}");
    assert_eq!(reasons(&answer), ["tenant-admins"]);
    replacing.stop().await;

    // off: no entities from requests at all.
    let off = TestServer::start_with(Config {
        policies: example_policies(),
        request_entities: RequestEntities::Off,
        ..Config::default()
    })
    .await;
    let mut client = off.client().await;
    refused_with(
        &mut client,
        forged(),
        Code::InvalidArgument,
        &["entities", "request_entities = off"],
    )
    .await;
    off.stop().await;
}

/// `layers` layers of `width` new Acme groups, each a member of every group of the next.
fn layered(width: usize, layers: usize) -> Vec<pb::Entity> {
    let group = |layer: usize, i: usize| p("Group", &format!("l{layer}-{i}"));
    (0..layers)
        .flat_map(|layer| {
            (0..width).map(move |i| pb::Entity {
                uid: Some(group(layer, i)),
                attrs: context(&[("tenant", entity_value(p("Tenant", "acme")))]),
                parents: if layer + 1 < layers {
                    (0..width).map(|j| group(layer + 1, j)).collect()
                } else {
                    Vec::new()
                },
                tags: Default::default(),
            })
        })
        .collect()
}

#[tokio::test]
async fn an_expensive_entity_graph_is_refused_before_cedar_sees_it() {
    let server = TestServer::start(&example_policies()).await;
    let mut client = server.client().await;
    let ask = |entities: Vec<pb::Entity>| {
        let mut r = bob_reads_roadmap();
        r.entities = entities;
        r
    };
    // Few edges, but deep: the closure Cedar would work out is past the limit.
    refused_with(
        &mut client,
        ask(layered(10, 10)),
        Code::ResourceExhausted,
        &["entities", "max_request_ancestor_closure"],
    )
    .await;
    // Wide and shallow: too many edges.
    refused_with(
        &mut client,
        ask(layered(50, 2)),
        Code::ResourceExhausted,
        &["entities", "2500 parent edges", "max_request_parent_edges"],
    )
    .await;
    // Within both, decided.
    let answer = client
        .is_authorized(ask(layered(20, 2)))
        .await
        .unwrap()
        .into_inner();
    assert!(is_allow(&answer), "{answer:?}");
    server.stop().await;
}

/// Found in review: tonic answered a check past `max_message_bytes` (or an answer past it)
/// with OUT_OF_RANGE, a gRPC error an Envoy set to fail open lets through.
#[tokio::test]
async fn an_oversized_check_or_answer_is_a_deny_never_a_grpc_error() {
    let mut config = Config {
        policies: example_policies(),
        ext_authz: docs_ext_authz(),
        ..Config::default()
    };
    config.limits.max_message_bytes = 4096;
    let server = TestServer::start_with(config).await;
    let mut client = AuthorizationClient::new(server.channel().await);

    let mut big = envoy_reads("bob", "GET", "acme-roadmap-q3");
    let http = big
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .unwrap();
    http.headers
        .insert("x-padding".to_owned(), "x".repeat(8192));
    let answer = client.check(big).await.expect("an answer, not an error");
    assert_eq!(
        answer.get_ref().status.as_ref().map(|s| s.code),
        Some(Code::PermissionDenied as i32),
        "{answer:?}"
    );

    // A check within the limit whose answer would quote a long, escaped resource id.
    let escaped = "%01".repeat(1000);
    let answer = client
        .check(envoy_reads("bob", "GET", &escaped))
        .await
        .expect("an answer, not an error");
    assert_eq!(
        answer.get_ref().status.as_ref().map(|s| s.code),
        Some(Code::PermissionDenied as i32),
        "{answer:?}"
    );
    let text = server.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            r#"cedar_pdp_requests_rejected_total{api="ext_authz",reason="limit_exceeded"}"#
        ),
        Some(1.0)
    );
    server.stop().await;
}
