//! Differential test: for a few hundred generated requests over the example policy set,
//! a service configured with Cedar's own semantics (`on_forbid_error = "skip"`,
//! `request_entities = "replace"`) gives the decision, determining policies and errors
//! that `cedar_policy::Authorizer` gives in-process for the same inputs, one call at a
//! time and in batches; and a service with the defaults (failing closed) never allows
//! what Cedar denies, agrees with Cedar wherever no forbid errored and no stored entity was
//! sent, and otherwise denies or refuses.

mod common;
#[path = "common/rng.rs"]
mod rng;

use std::{collections::HashSet, str::FromStr};

use cedar_pdp::proto::cedarpdp::v1 as pb;
use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityUid, Request, RestrictedExpression,
    Schema,
};
use common::*;
use rng::Rng;

/// One generated question, in both the wire form and Cedar's own.
struct Case {
    wire: pb::IsAuthorizedRequest,
    principal: EntityUid,
    action: EntityUid,
    resource: EntityUid,
    context: Vec<(String, RestrictedExpression)>,
    extra: Vec<Entity>,
}

fn cedar_uid(uid: &pb::EntityUid) -> EntityUid {
    EntityUid::from_str(&format!("{}::{:?}", uid.r#type, uid.id)).unwrap()
}

fn generate(rng: &mut Rng) -> Case {
    let principals = [
        p("User", "alice"),
        p("User", "bob"),
        p("User", "carol"),
        p("User", "erin"),
        p("User", "mallory"),
        p("User", "dave"),
        p("User", "grace"),
        p("ApiKey", "acme-ci-readonly"),
        p("ApiKey", "acme-ci-deploy"),
        p("ApiKey", "acme-old-key"),
        p("Service", "acme/frontend"),
        p("Service", "acme/billing"),
        p("Service", "globex/billing"),
    ];
    let resources = [
        p("Document", "acme-roadmap-q3"),
        p("Document", "acme-board-minutes"),
        p("Document", "acme-carol-notes"),
        p("Document", "globex-salaries"),
        p("Project", "acme-roadmap"),
        p("Project", "globex-payroll"),
        p("Secret", "acme-db-password"),
        p("Secret", "globex-db-password"),
        p("Service", "acme/billing"),
        p("Service", "globex/billing"),
    ];
    // Mostly well-typed questions (the schema's appliesTo), some deliberately not.
    let actions: [(&str, &[&str], &[&str]); 8] = [
        (
            "read",
            &["User", "ApiKey", "Service"],
            &["Project", "Document"],
        ),
        (
            "list",
            &["User", "ApiKey", "Service"],
            &["Project", "Document"],
        ),
        ("write", &["User", "ApiKey"], &["Document"]),
        ("share", &["User", "ApiKey"], &["Document"]),
        ("delete", &["User", "ApiKey"], &["Document", "Project"]),
        ("invoke", &["Service"], &["Service"]),
        ("readSecret", &["User", "Service"], &["Secret"]),
        ("rotateSecret", &["User"], &["Secret"]),
    ];
    let (name, principal_types, resource_types) = *rng.pick(&actions);
    let well_typed = rng.chance(90);
    let fits = |uid: &pb::EntityUid, types: &[&str]| {
        !well_typed || types.iter().any(|t| uid.r#type == format!("Platform::{t}"))
    };
    let principal = loop {
        let candidate = rng.pick(&principals);
        if fits(candidate, principal_types) {
            break candidate.clone();
        }
    };
    let resource = loop {
        let candidate = rng.pick(&resources);
        if fits(candidate, resource_types) {
            break candidate.clone();
        }
    };
    let act = action(name);
    let mut wire_context = Vec::new();
    let mut cedar_context = Vec::new();
    if rng.chance(80) {
        let mfa = rng.chance(75);
        wire_context.push(("mfa", boolean(mfa)));
        cedar_context.push(("mfa".to_owned(), RestrictedExpression::new_bool(mfa)));
    }
    if rng.chance(80) {
        let ip = *rng.pick(&[
            "10.1.2.3",
            "10.255.255.254",
            "192.168.7.7",
            "::1",
            "10.9.8.7",
        ]);
        wire_context.push(("source_ip", ext("ip", ip)));
        cedar_context.push(("source_ip".to_owned(), RestrictedExpression::new_ip(ip)));
    }
    if rng.chance(80) {
        let now = *rng.pick(&[
            "2023-05-01",
            "2026-11-23T12:00:00Z",
            "2029-01-01T00:00:00+0100",
        ]);
        wire_context.push(("now", ext("datetime", now)));
        cedar_context.push(("now".to_owned(), RestrictedExpression::new_datetime(now)));
    }
    if rng.chance(30) {
        let risk = *rng.pick(&["0.1", "0.8", "0.8001", "0.95"]);
        wire_context.push(("risk_score", ext("decimal", risk)));
        cedar_context.push((
            "risk_score".to_owned(),
            RestrictedExpression::new_decimal(risk),
        ));
    }
    // Sometimes the caller sends its own view of the principal: moved to another group.
    let mut wire_entities = Vec::new();
    let mut extra = Vec::new();
    if principal.r#type == "Platform::User" && rng.chance(25) {
        let group = *rng.pick(&[
            "acme-roadmap-editors",
            "acme-admins",
            "globex-admins",
            "acme-auditors",
        ]);
        let tenant = if group.starts_with("acme") {
            "acme"
        } else {
            "globex"
        };
        let suspended = rng.chance(20);
        wire_entities.push(pb::Entity {
            uid: Some(principal.clone()),
            attrs: context(&[
                ("tenant", entity_value(p("Tenant", tenant))),
                ("email", string("someone@example.com")),
                ("suspended", boolean(suspended)),
                ("contractor", boolean(false)),
            ]),
            parents: vec![p("Group", group)],
            tags: Default::default(),
        });
        extra.push(
            Entity::new(
                cedar_uid(&principal),
                [
                    (
                        "tenant".to_owned(),
                        RestrictedExpression::new_entity_uid(cedar_uid(&p("Tenant", tenant))),
                    ),
                    (
                        "email".to_owned(),
                        RestrictedExpression::new_string("someone@example.com".into()),
                    ),
                    (
                        "suspended".to_owned(),
                        RestrictedExpression::new_bool(suspended),
                    ),
                    (
                        "contractor".to_owned(),
                        RestrictedExpression::new_bool(false),
                    ),
                ]
                .into_iter()
                .collect(),
                [cedar_uid(&p("Group", group))].into_iter().collect(),
            )
            .unwrap(),
        );
    }
    Case {
        principal: cedar_uid(&principal),
        action: cedar_uid(&act),
        resource: cedar_uid(&resource),
        wire: pb::IsAuthorizedRequest {
            principal: Some(principal),
            action: Some(act),
            resource: Some(resource),
            context: context(&wire_context),
            entities: wire_entities,
            ..Default::default()
        },
        context: cedar_context,
        extra,
    }
}

/// What Cedar says in-process: `None` when Cedar refuses the request under the schema.
fn oracle(
    case: &Case,
    schema: &Schema,
    stored: &Entities,
    policies: &cedar_policy::PolicySet,
) -> Option<(bool, Vec<String>, Vec<String>)> {
    let context = Context::from_pairs(case.context.clone()).unwrap();
    let request = Request::new(
        case.principal.clone(),
        case.action.clone(),
        case.resource.clone(),
        context,
        Some(schema),
    )
    .ok()?;
    let entities = if case.extra.is_empty() {
        stored.clone()
    } else {
        stored
            .clone()
            .upsert_entities(case.extra.clone(), Some(schema))
            .unwrap()
    };
    let response = Authorizer::new().is_authorized(&request, policies, &entities);
    let mut reasons: Vec<String> = response
        .diagnostics()
        .reason()
        .map(ToString::to_string)
        .collect();
    reasons.sort();
    let mut errors: Vec<String> = response
        .diagnostics()
        .errors()
        .map(|cedar_policy::AuthorizationError::PolicyEvaluationError(e)| e.policy_id().to_string())
        .collect();
    errors.sort();
    Some((response.decision() == Decision::Allow, reasons, errors))
}

fn observed(response: &pb::IsAuthorizedResponse) -> (bool, Vec<String>, Vec<String>) {
    let errors = response
        .errors
        .iter()
        .map(|e| e.policy_id.clone())
        .collect();
    (
        is_allow(response),
        response.determining_policies.clone(),
        errors,
    )
}

#[tokio::test]
async fn the_service_decides_exactly_as_cedar_does_in_process() {
    let dir = example_policies();
    let schema_text = std::fs::read_to_string(dir.join("platform.cedarschema")).unwrap();
    let (schema, _) = Schema::from_cedarschema_str(&schema_text).unwrap();
    let entities_text = std::fs::read_to_string(dir.join("entities.json")).unwrap();
    let stored = Entities::from_json_str(&entities_text, Some(&schema)).unwrap();

    let server = TestServer::start_with(cedar_pdp::Config {
        policies: dir.clone(),
        on_forbid_error: cedar_pdp::config::OnForbidError::Skip,
        request_entities: cedar_pdp::config::RequestEntities::Replace,
        ..cedar_pdp::Config::default()
    })
    .await;
    let failing_closed = TestServer::start(&dir).await;
    let policies = server.store.current().policies().clone();
    let mut client = server.client().await;
    let mut closed = failing_closed.client().await;
    let (mut agreed, mut stricter) = (0, 0);
    let mut rng = Rng::new(0x5eed_cedaa);
    let (mut allows, mut denies, mut refused) = (0, 0, 0);
    let mut batchable = Vec::new();
    for i in 0..400 {
        let case = generate(&mut rng);
        let expected = oracle(&case, &schema, &stored, &policies);
        let strict = closed.is_authorized(case.wire.clone()).await;
        match (&expected, strict) {
            (_, Err(status)) => {
                assert_eq!(status.code(), tonic::Code::InvalidArgument, "case {i}");
                assert!(
                    expected.is_none() || rewrites_the_store(&case, &stored),
                    "case {i}: refused, though Cedar decides it and it sends no stored \
                     entity: {status:?} for {:?}",
                    case.wire
                );
                if expected.is_some() {
                    stricter += 1;
                }
            }
            (None, Ok(response)) => panic!("case {i}: decided {response:?}, Cedar refuses it"),
            (Some(expected), Ok(response)) => {
                let got = observed(&response.into_inner());
                assert!(
                    !got.0 || expected.0,
                    "case {i}: allowed what Cedar denies: {got:?} for {:?}",
                    case.wire
                );
                assert_eq!(got.2, expected.2, "case {i}: the errors are Cedar's");
                if forbid_errored(&expected.2, &policies) || rewrites_the_store(&case, &stored) {
                    assert!(!got.0, "case {i}: a forbid errored, yet allowed");
                    stricter += 1;
                } else {
                    assert_eq!(&got, expected, "case {i}: {:?}", case.wire);
                    agreed += 1;
                }
            }
        }
        let got = client.is_authorized(case.wire.clone()).await;
        match (&expected, got) {
            (None, Err(status)) => {
                assert_eq!(
                    status.code(),
                    tonic::Code::InvalidArgument,
                    "case {i}: {status:?}"
                );
                refused += 1;
            }
            (Some(expected), Ok(response)) => {
                assert_eq!(
                    &observed(&response.into_inner()),
                    expected,
                    "case {i}: {:?}",
                    case.wire
                );
                if expected.0 {
                    allows += 1
                } else {
                    denies += 1
                }
                if case.extra.is_empty() {
                    batchable.push((case, expected.clone()));
                }
            }
            (expected, got) => panic!(
                "case {i}: expected {expected:?}, got {got:?} for {:?}",
                case.wire
            ),
        }
    }
    // The generator must exercise every outcome, or this test proves little.
    assert!(
        allows >= 30 && denies >= 100 && refused >= 10,
        "allows {allows}, denies {denies}, refused {refused}"
    );
    assert!(
        agreed >= 100 && stricter >= 10,
        "failing closed: {agreed} agreed, {stricter} stricter"
    );

    for chunk in batchable.chunks(50) {
        let items = chunk
            .iter()
            .map(|(case, _)| pb::BatchItem {
                principal: case.wire.principal.clone(),
                action: case.wire.action.clone(),
                resource: case.wire.resource.clone(),
                context: case.wire.context.clone(),
                ..Default::default()
            })
            .collect();
        let response = client
            .batch_is_authorized(pb::BatchIsAuthorizedRequest {
                items,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.results.len(), chunk.len());
        for ((case, expected), result) in chunk.iter().zip(&response.results) {
            assert_eq!(&observed(result), expected, "batch item {:?}", case.wire);
        }
    }
    let distinct: HashSet<_> = batchable.iter().flat_map(|(_, e)| e.1.clone()).collect();
    assert!(
        distinct.len() >= 10,
        "only {} policies ever decided: {distinct:?}",
        distinct.len()
    );
    failing_closed.stop().await;
    server.stop().await;
}

/// Whether any of `errors` (policy ids) is a forbid.
fn forbid_errored(errors: &[String], policies: &cedar_policy::PolicySet) -> bool {
    errors.iter().any(|id| {
        policies
            .policy(&cedar_policy::PolicyId::new(id))
            .is_some_and(|p| p.effect() == cedar_policy::Effect::Forbid)
    })
}

/// Whether the case sends an entity the store holds (or an Action entity), which a
/// server failing closed refuses.
fn rewrites_the_store(case: &Case, stored: &Entities) -> bool {
    case.extra.iter().any(|entity| {
        stored.get(&entity.uid()).is_some() || entity.uid().type_name().basename() == "Action"
    })
}
