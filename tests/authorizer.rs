//! The cedarpdp.v1 Authorizer over loopback: decisions on the example policy set, the JSON
//! forms, request entities, batches, policy info, and every kind of bad input.

mod common;

use cedar_pdp::proto::cedarpdp::v1 as pb;
use common::*;
use tonic::Code;

#[tokio::test]
async fn decisions_on_the_example_policy_set() {
    let server = TestServer::start(&example_policies()).await;
    let mut client = server.client().await;
    let doc = p("Document", "acme-roadmap-q3");

    // Allowed, with every satisfied permit as a reason.
    let bob = client
        .is_authorized(request(p("User", "bob"), action("read"), doc.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(is_allow(&bob));
    assert_eq!(reasons(&bob), ["document-owner", "project-readers"]);
    assert!(bob.errors.is_empty());
    assert_eq!(bob.policy_version, server.store.current().version());

    // Another tenant's record: the isolation guardrail decides.
    let dave = client
        .is_authorized(request(p("User", "dave"), action("read"), doc.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dave.decision, pb::Decision::Deny as i32);
    assert_eq!(reasons(&dave), ["tenant-isolation"]);

    // Nothing permits it: default deny, no reasons.
    let carol = client
        .is_authorized(request(p("User", "carol"), action("write"), doc.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(carol.decision, pb::Decision::Deny as i32);
    assert!(carol.determining_policies.is_empty());

    // A sensitive action needs MFA and the corporate network ...
    let weak = client
        .is_authorized(request(p("User", "alice"), action("delete"), doc.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(!is_allow(&weak));
    assert_eq!(
        reasons(&weak),
        ["sensitive-from-corp-network", "sensitive-needs-mfa"]
    );
    // ... and with both, the tenant admin may.
    let mut strong = request(p("User", "alice"), action("delete"), doc.clone());
    strong.context = strong_context();
    let strong = client.is_authorized(strong).await.unwrap().into_inner();
    assert!(is_allow(&strong));
    assert_eq!(reasons(&strong), ["tenant-admins"]);

    // A suspended user gets nothing, whatever else holds.
    let mut mallory = request(p("User", "mallory"), action("read"), doc.clone());
    mallory.context = strong_context();
    let mallory = client.is_authorized(mallory).await.unwrap().into_inner();
    assert!(!is_allow(&mallory));
    assert_eq!(reasons(&mallory), ["suspended-users"]);

    server.stop().await;
}

#[tokio::test]
async fn api_keys_are_limited_by_scope_and_expiry() {
    let server = TestServer::start(&example_policies()).await;
    let mut client = server.client().await;
    let doc = p("Document", "acme-roadmap-q3");
    let ask = |key: &str, act: &str| {
        let mut r = request(p("ApiKey", key), action(act), doc.clone());
        r.context = strong_context();
        r
    };
    let read_only_read = client
        .is_authorized(ask("acme-ci-readonly", "read"))
        .await
        .unwrap()
        .into_inner();
    assert!(is_allow(&read_only_read));
    assert_eq!(reasons(&read_only_read), ["api-key-read"]);

    let read_only_write = client
        .is_authorized(ask("acme-ci-readonly", "write"))
        .await
        .unwrap()
        .into_inner();
    assert!(!is_allow(&read_only_write));
    assert_eq!(reasons(&read_only_write), ["api-key-read-only"]);

    let deploy_write = client
        .is_authorized(ask("acme-ci-deploy", "write"))
        .await
        .unwrap()
        .into_inner();
    assert!(is_allow(&deploy_write));
    assert_eq!(reasons(&deploy_write), ["api-key-write"]);

    let expired = client
        .is_authorized(ask("acme-old-key", "read"))
        .await
        .unwrap()
        .into_inner();
    assert!(!is_allow(&expired));
    assert_eq!(reasons(&expired), ["api-key-expired"]);

    // Without a time in the context a key is refused, not trusted.
    let no_time = client
        .is_authorized(request(
            p("ApiKey", "acme-ci-deploy"),
            action("read"),
            doc.clone(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!is_allow(&no_time));
    assert_eq!(reasons(&no_time), ["api-key-expired"]);
    server.stop().await;
}

#[tokio::test]
async fn services_call_services_they_are_allowed_to() {
    let server = TestServer::start(&example_policies()).await;
    let mut client = server.client().await;
    let allowed = client
        .is_authorized(request(
            p("Service", "acme/frontend"),
            action("invoke"),
            p("Service", "acme/billing"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(is_allow(&allowed));
    assert_eq!(reasons(&allowed), ["service-invoke"]);
    let refused = client
        .is_authorized(request(
            p("Service", "acme/reports"),
            action("invoke"),
            p("Service", "acme/billing"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!is_allow(&refused));

    // High risk overrides everything (a decimal in the context).
    let mut risky = request(
        p("Service", "acme/frontend"),
        action("invoke"),
        p("Service", "acme/billing"),
    );
    risky.context = context(&[("risk_score", ext("decimal", "0.95"))]);
    let risky = client.is_authorized(risky).await.unwrap().into_inner();
    assert!(!is_allow(&risky));
    assert_eq!(reasons(&risky), ["high-risk-deny"]);
    server.stop().await;
}

#[tokio::test]
async fn json_context_and_entities_decide_like_typed_ones() {
    let server = TestServer::start(&example_policies()).await;
    let mut client = server.client().await;
    let doc = p("Document", "acme-roadmap-q3");

    // With a schema, extension values in JSON may be written as plain strings.
    let mut r = request(p("User", "alice"), action("delete"), doc.clone());
    r.context_json = r#"{"mfa": true, "source_ip": "10.0.0.7"}"#.to_owned();
    let allowed = client.is_authorized(r).await.unwrap().into_inner();
    assert!(is_allow(&allowed), "{allowed:?}");
    assert_eq!(reasons(&allowed), ["tenant-admins"]);

    // A request entity the store does not hold is decided by its own attributes.
    let suspended_ernie = r#"[{
        "uid": {"type": "Platform::User", "id": "ernie"},
        "attrs": {"tenant": {"__entity": {"type": "Platform::Tenant", "id": "acme"}},
                  "email": "ernie@acme.example", "suspended": true, "contractor": false},
        "parents": [{"type": "Platform::Group", "id": "acme-engineering"}]
    }]"#;
    let mut r = request(p("User", "ernie"), action("read"), doc.clone());
    r.entities_json = suspended_ernie.to_owned();
    let denied = client.is_authorized(r).await.unwrap().into_inner();
    assert!(!is_allow(&denied));
    assert_eq!(reasons(&denied), ["suspended-users"]);

    // One with a stored entity's uid is refused, naming it: the store is the truth.
    let mut r = request(p("User", "bob"), action("read"), doc.clone());
    r.entities_json = suspended_ernie.replace("\"ernie\"", "\"bob\"");
    let status = client.is_authorized(r).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("entities_json[0].uid: Platform::User::\"bob\" is a stored entity"),
        "{status:?}"
    );
    let again = client
        .is_authorized(request(p("User", "bob"), action("read"), doc.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(is_allow(&again), "the stored bob is unchanged");
    server.stop().await;
}

fn carol_as_editor() -> pb::Entity {
    pb::Entity {
        uid: Some(p("User", "carol")),
        attrs: context(&[
            ("tenant", entity_value(p("Tenant", "acme"))),
            ("email", string("carol@acme.example")),
            ("suspended", boolean(false)),
            ("contractor", boolean(false)),
        ]),
        parents: vec![p("Group", "acme-roadmap-editors")],
        tags: Default::default(),
    }
}

#[tokio::test]
async fn typed_request_entities_add_to_the_stored_ones() {
    let server = TestServer::start(&example_policies()).await;
    let mut client = server.client().await;
    let doc = p("Document", "acme-roadmap-q3");

    // carol is stored (not an editor): a request cannot make her one.
    let mut r = request(p("User", "carol"), action("write"), doc.clone());
    r.entities = vec![carol_as_editor()];
    let status = client.is_authorized(r).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("entities[0].uid: Platform::User::\"carol\" is a stored entity"),
        "{status:?}"
    );

    // A brand-new entity that the store does not know, referenced from the request.
    let mut r = request(p("User", "zoe"), action("read"), doc.clone());
    r.entities = vec![pb::Entity {
        uid: Some(p("User", "zoe")),
        ..carol_as_editor()
    }];
    let zoe = client.is_authorized(r).await.unwrap().into_inner();
    assert!(is_allow(&zoe));
    assert_eq!(reasons(&zoe), ["project-readers"]);

    let stored = client
        .is_authorized(request(p("User", "carol"), action("write"), doc))
        .await
        .unwrap()
        .into_inner();
    assert!(!is_allow(&stored));
    server.stop().await;
}

#[tokio::test]
async fn a_batch_is_decided_in_order_with_shared_entities() {
    let server = TestServer::start(&example_policies()).await;
    let mut client = server.client().await;
    let doc = p("Document", "acme-roadmap-q3");
    let item = |principal: pb::EntityUid, act: &str| pb::BatchItem {
        principal: Some(principal),
        action: Some(action(act)),
        resource: Some(doc.clone()),
        ..Default::default()
    };
    let zoe = pb::Entity {
        uid: Some(p("User", "zoe")),
        ..carol_as_editor()
    };
    let batch = pb::BatchIsAuthorizedRequest {
        entities: vec![zoe],
        items: vec![
            item(p("User", "zoe"), "write"),
            item(p("User", "dave"), "read"),
            pb::BatchItem {
                context_json: r#"{"mfa": true, "source_ip": "10.9.9.9"}"#.to_owned(),
                ..item(p("User", "alice"), "delete")
            },
            item(p("User", "alice"), "delete"),
        ],
        ..Default::default()
    };
    let response = client
        .batch_is_authorized(batch)
        .await
        .unwrap()
        .into_inner();
    let version = server.store.current().version().to_owned();
    assert_eq!(response.policy_version, version);
    let decisions: Vec<bool> = response.results.iter().map(is_allow).collect();
    assert_eq!(decisions, [true, false, true, false]);
    assert_eq!(reasons(&response.results[1]), ["tenant-isolation"]);
    assert!(response.results.iter().all(|r| r.policy_version == version));

    let empty = client
        .batch_is_authorized(pb::BatchIsAuthorizedRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(empty.results.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn policy_set_info_describes_the_serving_snapshot() {
    let server = TestServer::start(&example_policies()).await;
    let mut client = server.client().await;
    let info = client
        .get_policy_set_info(pb::GetPolicySetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.policy_version, server.store.current().version());
    assert_eq!(info.policy_version.len(), 16);
    assert_eq!(info.policy_count, 19);
    assert_eq!(info.template_count, 0);
    assert_eq!(info.entity_count, 40);
    assert!(info.schema_loaded);
    assert!(info.loaded_at.is_some_and(|t| t.seconds > 1_700_000_000));
    assert_eq!(info.last_reload_error, "");
    assert!(info.last_reload_error_at.is_none());
    server.stop().await;
}

#[tokio::test]
async fn evaluation_errors_are_reported_and_never_allow() {
    // No schema: requests are evaluated as given, so a policy can meet a wrong type.
    let dir = policy_dir(&[(
        "main.cedar",
        r#"
        @id("needs-number")
        permit (principal, action, resource) when { context.level > 1 };
        @id("open")
        permit (principal, action == Action::"ping", resource);
        "#,
    )]);
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;
    let mut r = request(uid("User", "a"), uid("Action", "view"), uid("Doc", "d"));
    r.context = context(&[("level", string("high"))]);
    let response = client.is_authorized(r).await.unwrap().into_inner();
    assert!(!is_allow(&response));
    assert!(response.determining_policies.is_empty());
    assert_eq!(response.errors.len(), 1);
    assert_eq!(response.errors[0].policy_id, "needs-number");
    assert!(
        response.errors[0].message.contains("type"),
        "{:?}",
        response.errors[0]
    );

    // The erroring policy is skipped; the others still decide.
    let mut r = request(uid("User", "a"), uid("Action", "ping"), uid("Doc", "d"));
    r.context = context(&[("level", string("high"))]);
    let response = client.is_authorized(r).await.unwrap().into_inner();
    assert!(is_allow(&response));
    assert_eq!(reasons(&response), ["open"]);
    assert_eq!(response.errors.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn policies_without_an_id_are_named_by_path_and_position() {
    let dir = policy_dir(&[(
        "team/file.cedar",
        "permit (principal, action, resource) when { context.n == 0 };\n\
         permit (principal, action, resource) when { context.n == 1 };\n",
    )]);
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;
    for (n, id) in [(0, "team/file.0"), (1, "team/file.1")] {
        let mut r = request(uid("User", "a"), uid("Action", "view"), uid("Doc", "d"));
        r.context = context(&[("n", long(n))]);
        let response = client.is_authorized(r).await.unwrap().into_inner();
        assert_eq!(reasons(&response), [id]);
    }
    server.stop().await;
}

/// Sends `r` and returns the status it fails with.
async fn refused(server: &TestServer, r: pb::IsAuthorizedRequest) -> tonic::Status {
    let mut client = server.client().await;
    match client.is_authorized(r).await {
        Ok(response) => panic!("expected an error, got {:?}", response.into_inner()),
        Err(status) => status,
    }
}

fn assert_status(status: &tonic::Status, code: Code, needles: &[&str]) {
    assert_eq!(status.code(), code, "{status:?}");
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "message {:?} should contain {needle:?}",
            status.message()
        );
    }
}

#[tokio::test]
async fn malformed_requests_are_invalid_argument_naming_the_field() {
    let server = TestServer::start(&example_policies()).await;
    let ok = || {
        request(
            p("User", "bob"),
            action("read"),
            p("Document", "acme-roadmap-q3"),
        )
    };
    let cases: Vec<(pb::IsAuthorizedRequest, &[&str])> = vec![
        (
            pb::IsAuthorizedRequest {
                principal: None,
                ..ok()
            },
            &["principal", "missing"],
        ),
        (
            pb::IsAuthorizedRequest {
                action: None,
                ..ok()
            },
            &["action", "missing"],
        ),
        (
            pb::IsAuthorizedRequest {
                resource: None,
                ..ok()
            },
            &["resource", "missing"],
        ),
        (
            pb::IsAuthorizedRequest {
                principal: Some(uid("", "bob")),
                ..ok()
            },
            &["principal.type", "empty"],
        ),
        (
            pb::IsAuthorizedRequest {
                principal: Some(uid("not a type!", "bob")),
                ..ok()
            },
            &["principal.type", "not a valid entity type name"],
        ),
        (
            pb::IsAuthorizedRequest {
                principal: Some(p("Robot", "r2")),
                ..ok()
            },
            &["principal", "Platform::Robot"],
        ),
        (
            pb::IsAuthorizedRequest {
                resource: Some(p("Secret", "acme-db-password")),
                ..ok()
            },
            &["resource", "Platform::Secret"],
        ),
        (
            pb::IsAuthorizedRequest {
                action: Some(action("fly")),
                ..ok()
            },
            &["action", "fly"],
        ),
        (
            pb::IsAuthorizedRequest {
                context: context(&[("mfa", long(1))]),
                ..ok()
            },
            &["context.mfa", "expected Bool, got long 1"],
        ),
        (
            pb::IsAuthorizedRequest {
                context: context(&[("colour", string("red"))]),
                ..ok()
            },
            &["context", "colour"],
        ),
        (
            pb::IsAuthorizedRequest {
                context: context(&[("source_ip", ext("ip", "not-an-ip"))]),
                ..ok()
            },
            &["context.source_ip", "not-an-ip"],
        ),
        (
            pb::IsAuthorizedRequest {
                context: context(&[("risk_score", ext("decimal", "1.23456789"))]),
                ..ok()
            },
            &["context.risk_score", "decimal"],
        ),
        (
            pb::IsAuthorizedRequest {
                context: context(&[("now", ext("datetime", "yesterday"))]),
                ..ok()
            },
            &["context.now", "datetime"],
        ),
        (
            pb::IsAuthorizedRequest {
                context: context(&[("x", ext("duration", "forever"))]),
                ..ok()
            },
            &["context.x", "duration"],
        ),
        (
            pb::IsAuthorizedRequest {
                context: context(&[(
                    "net",
                    record(&[(
                        "addrs",
                        set(vec![ext("ip", "10.0.0.1"), ext("ip", "not-an-ip")]),
                    )]),
                )]),
                ..ok()
            },
            &["context.net.addrs[1]", "not-an-ip"],
        ),
        (
            pb::IsAuthorizedRequest {
                context: context(&[("x", ext("colour", "red"))]),
                ..ok()
            },
            &["context.x.fn", "unknown extension `colour`"],
        ),
        (
            pb::IsAuthorizedRequest {
                context: context(&[("x", pb::Value { kind: None })]),
                ..ok()
            },
            &["context.x", "empty"],
        ),
        (
            pb::IsAuthorizedRequest {
                context_json: "{\"mfa\": tru".to_owned(),
                ..ok()
            },
            &["context_json"],
        ),
        (
            pb::IsAuthorizedRequest {
                context_json: r#"{"mfa": "yes"}"#.to_owned(),
                ..ok()
            },
            &["context_json.mfa", "expected Bool, got string \"yes\""],
        ),
        (
            pb::IsAuthorizedRequest {
                context: context(&[("mfa", boolean(true))]),
                context_json: r#"{"mfa": true}"#.to_owned(),
                ..ok()
            },
            &["context", "context_json", "both"],
        ),
        (
            pb::IsAuthorizedRequest {
                entities: vec![carol_as_editor()],
                entities_json: "[]".to_owned(),
                ..ok()
            },
            &["entities", "entities_json", "both"],
        ),
        (
            pb::IsAuthorizedRequest {
                entities_json: "[{\"uid\": ".to_owned(),
                ..ok()
            },
            &["entities_json", "invalid JSON"],
        ),
        (
            pb::IsAuthorizedRequest {
                entities_json: "{}".to_owned(),
                ..ok()
            },
            &["entities_json", "array"],
        ),
        (
            pb::IsAuthorizedRequest {
                entities: vec![pb::Entity {
                    uid: None,
                    ..carol_as_editor()
                }],
                ..ok()
            },
            &["entities[0].uid", "missing"],
        ),
        (
            pb::IsAuthorizedRequest {
                entities: vec![pb::Entity {
                    attrs: context(&[("suspended", string("no"))]),
                    ..carol_as_editor()
                }],
                ..ok()
            },
            &["entities", "carol"],
        ),
        (
            pb::IsAuthorizedRequest {
                entities: vec![pb::Entity {
                    parents: vec![uid("", "x")],
                    ..carol_as_editor()
                }],
                ..ok()
            },
            &["entities[0].parents[0].type", "empty"],
        ),
    ];
    for (r, needles) in cases {
        let status = refused(&server, r).await;
        assert_status(&status, Code::InvalidArgument, needles);
    }
    server.stop().await;
}

#[tokio::test]
async fn limits_are_enforced_before_cedar_sees_the_input() {
    let server = TestServer::start(&example_policies()).await;
    let ok = || {
        request(
            p("User", "bob"),
            action("read"),
            p("Document", "acme-roadmap-q3"),
        )
    };

    // A 5,000-long parent chain would cost Cedar seconds and a deep stack.
    let chain: Vec<pb::Entity> = (0..5_000)
        .map(|i| pb::Entity {
            uid: Some(p("Group", &format!("g{i}"))),
            attrs: context(&[("tenant", entity_value(p("Tenant", "acme")))]),
            parents: vec![p("Group", &format!("g{}", i + 1))],
            tags: Default::default(),
        })
        .collect();
    let mut too_many = ok();
    too_many.entities = chain.clone();
    let status = refused(&server, too_many).await;
    assert_status(
        &status,
        Code::ResourceExhausted,
        &["entities", "max_request_entities"],
    );

    let mut too_deep = ok();
    too_deep.entities = chain[..200].to_vec();
    let status = refused(&server, too_deep).await;
    assert_status(
        &status,
        Code::ResourceExhausted,
        &["entities", "max_ancestor_depth"],
    );

    let json_chain = serde_json::to_string(
        &(0..200)
            .map(|i| {
                serde_json::json!({
                    "uid": {"type": "Platform::Group", "id": format!("g{i}")},
                    "attrs": {"tenant": {"__entity": {"type": "Platform::Tenant", "id": "acme"}}},
                    "parents": [{"type": "Platform::Group", "id": format!("g{}", i + 1)}],
                })
            })
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let mut too_deep_json = ok();
    too_deep_json.entities_json = json_chain;
    let status = refused(&server, too_deep_json).await;
    assert_status(
        &status,
        Code::ResourceExhausted,
        &["entities_json", "max_ancestor_depth"],
    );

    let mut cycle = ok();
    cycle.entities = vec![
        pb::Entity {
            parents: vec![p("Group", "b")],
            ..chain[0].clone()
        },
        pb::Entity {
            uid: Some(p("Group", "b")),
            parents: vec![p("Group", "g0")],
            ..chain[0].clone()
        },
    ];
    let status = refused(&server, cycle).await;
    assert_status(&status, Code::InvalidArgument, &["entities", "cycle"]);

    let mut nested = string("leaf");
    for _ in 0..40 {
        nested = set(vec![nested]);
    }
    let mut deep_value = ok();
    deep_value.context = context(&[("deep", nested)]);
    let status = refused(&server, deep_value).await;
    assert_status(
        &status,
        Code::ResourceExhausted,
        &["context.deep", "max_value_depth"],
    );

    let mut deep_json = ok();
    deep_json.context_json = format!("{{\"deep\": {}1{}}}", "[".repeat(40), "]".repeat(40));
    let status = refused(&server, deep_json).await;
    assert_status(
        &status,
        Code::ResourceExhausted,
        &["context_json", "max_value_depth"],
    );

    // A batch past the item limit, and a bad item named by its index.
    let mut client = server.client().await;
    let item = pb::BatchItem {
        principal: Some(p("User", "bob")),
        action: Some(action("read")),
        resource: Some(p("Document", "acme-roadmap-q3")),
        ..Default::default()
    };
    let big = pb::BatchIsAuthorizedRequest {
        items: vec![item.clone(); 1_001],
        ..Default::default()
    };
    let status = client.batch_is_authorized(big).await.unwrap_err();
    assert_status(
        &status,
        Code::ResourceExhausted,
        &["items", "max_batch_items"],
    );
    let bad = pb::BatchIsAuthorizedRequest {
        items: vec![
            item.clone(),
            pb::BatchItem {
                principal: None,
                ..item
            },
        ],
        ..Default::default()
    };
    let status = client.batch_is_authorized(bad).await.unwrap_err();
    assert_status(
        &status,
        Code::InvalidArgument,
        &["items[1].principal", "missing"],
    );
    server.stop().await;
}

#[tokio::test]
async fn strings_at_the_length_limit_pass_and_one_byte_more_is_refused() {
    const LIMIT: usize = 64;
    let mut config = cedar_pdp::Config {
        policies: example_policies(),
        // Any context shape, so that only the length decides.
        validate_requests: false,
        ..Default::default()
    };
    config.limits.max_string_bytes = LIMIT;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let text = |n: usize| "x".repeat(n);
    let ok = || {
        request(
            p("User", "bob"),
            action("read"),
            p("Document", "acme-roadmap-q3"),
        )
    };
    type Case = (&'static str, Box<dyn Fn(usize) -> pb::IsAuthorizedRequest>);
    let cases: Vec<Case> = vec![
        (
            "principal.id",
            Box::new(move |n| pb::IsAuthorizedRequest {
                principal: Some(p("User", &text(n))),
                ..ok()
            }),
        ),
        (
            "context.note",
            Box::new(move |n| pb::IsAuthorizedRequest {
                context: context(&[("note", string(&text(n)))]),
                ..ok()
            }),
        ),
        (
            "context.nested.inner",
            Box::new(move |n| pb::IsAuthorizedRequest {
                context: context(&[("nested", record(&[("inner", string(&text(n)))]))]),
                ..ok()
            }),
        ),
        (
            "context (a key)",
            Box::new(move |n| pb::IsAuthorizedRequest {
                context: context(&[(text(n).as_str(), boolean(true))]),
                ..ok()
            }),
        ),
        (
            "context.when.arg",
            Box::new(move |n| pb::IsAuthorizedRequest {
                context: context(&[(
                    "when",
                    ext("datetime", &format!("2026-01-01{}", " ".repeat(n - 10))),
                )]),
                ..ok()
            }),
        ),
        (
            "context_json",
            Box::new(move |n| pb::IsAuthorizedRequest {
                context_json: format!("{{\"note\": \"{}\"}}", text(n)),
                ..ok()
            }),
        ),
        (
            "entities_json",
            Box::new(move |n| pb::IsAuthorizedRequest {
                entities_json: format!(
                    "[{{\"uid\": {{\"type\": \"Platform::Tag\", \"id\": \"{}\"}}, \"attrs\": {{}}, \"parents\": []}}]",
                    text(n)
                ),
                ..ok()
            }),
        ),
    ];
    for (field, build) in &cases {
        // At the limit the length is not what refuses it (a datetime padded with spaces
        // is invalid in its own right, and says so).
        match client.is_authorized(build(LIMIT)).await {
            Ok(_) => {}
            Err(status) => assert_ne!(
                status.code(),
                Code::ResourceExhausted,
                "{field} at the limit: {status:?}"
            ),
        }
        let status = client.is_authorized(build(LIMIT + 1)).await.unwrap_err();
        assert_status(
            &status,
            Code::ResourceExhausted,
            &[
                field,
                "65 bytes is longer than the limit of 64 (max_string_bytes)",
            ],
        );
    }
    // Long keys on the way to the refused one are shown by their length only, so the
    // status stays small enough for a trailer.
    let outer = "k".repeat(LIMIT);
    let long_inner = pb::IsAuthorizedRequest {
        context: context(&[(
            outer.as_str(),
            record(&[(text(LIMIT + 1).as_str(), boolean(true))]),
        )]),
        ..ok()
    };
    let status = client.is_authorized(long_inner).await.unwrap_err();
    assert_status(
        &status,
        Code::ResourceExhausted,
        &["(a key)", "max_string_bytes"],
    );
    assert!(!status.message().contains(&text(LIMIT + 1)), "{status:?}");
    // Nothing of the refused text is echoed back.
    let status = client
        .is_authorized(cases[1].1(LIMIT + 1))
        .await
        .unwrap_err();
    assert!(!status.message().contains(&text(LIMIT)), "{status:?}");
    server.stop().await;
}

#[tokio::test]
async fn without_request_validation_unknown_types_are_evaluated_as_given() {
    let server = TestServer::start_with(cedar_pdp::Config {
        policies: example_policies(),
        validate_requests: false,
        ..Default::default()
    })
    .await;
    let mut client = server.client().await;
    let r = request(
        p("Robot", "r2"),
        action("read"),
        p("Document", "acme-roadmap-q3"),
    );
    let response = client.is_authorized(r).await.unwrap().into_inner();
    // An unknown principal has no tenant: the isolation guardrail (guarded with `has`)
    // denies it without erroring, and nothing permits.
    assert!(!is_allow(&response));
    assert_eq!(reasons(&response), ["tenant-isolation"], "{response:?}");
    assert!(response.errors.is_empty(), "{response:?}");
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_message_is_refused_by_the_transport() {
    let mut config = cedar_pdp::Config {
        policies: example_policies(),
        ..Default::default()
    };
    config.limits.max_message_bytes = 1024;
    let server = TestServer::start_with(config).await;
    let mut r = request(
        p("User", "bob"),
        action("read"),
        p("Document", "acme-roadmap-q3"),
    );
    r.context_json = format!("{{\"pad\": \"{}\"}}", "x".repeat(4096));
    let status = refused(&server, r).await;
    assert_status(&status, Code::OutOfRange, &["1024"]);
    // The server is unharmed.
    let mut client = server.client().await;
    let ok = client
        .is_authorized(request(
            p("User", "bob"),
            action("read"),
            p("Document", "acme-roadmap-q3"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(is_allow(&ok));
    server.stop().await;
}
