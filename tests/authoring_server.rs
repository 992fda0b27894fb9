//! `cedar-pdp test` and the server agree: every case of the example `policies/tests/`,
//! sent over gRPC in Cedar's JSON forms (`context_json`, `entities_json`), gets the
//! decision, determining policies and errors the test runner reported (set up as the
//! `test` command sets it up), and the one it expects.

mod common;

use cedar_pdp::{
    Config,
    authoring::{
        commands::Setup,
        request::merge_entities,
        suite::{self, Expect},
    },
    policy::load_dir,
    proto::cedarpdp::v1 as pb,
};
use cedar_policy::EntityUid;
use common::*;

fn wire_uid(uid: &EntityUid) -> pb::EntityUid {
    pb::EntityUid {
        r#type: uid.type_name().to_string(),
        id: uid.id().unescaped().to_owned(),
    }
}

#[tokio::test]
async fn every_example_case_decides_over_grpc_as_the_test_runner_reported() {
    let dir = example_policies();
    let config = Config {
        policies: dir.clone(),
        ..Config::default()
    };
    let setup = Setup::new(&config);
    let snapshot = load_dir(&setup.dir, &setup.load)
        .expect("the example loads")
        .snapshot;
    let suites = suite::discover(&dir).expect("the example cases read");
    let report = suite::run(&snapshot, &setup.decider, &suites, None);
    assert_eq!(report.failed(), 0, "{}", report.text(false));

    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let mut compared = 0;
    assert_eq!(suites.len(), report.suites.len());
    for (suite, suite_report) in suites.iter().zip(&report.suites) {
        assert_eq!(suite.file, suite_report.file);
        assert_eq!(suite.cases.len(), suite_report.cases.len());
        for (case, case_report) in suite.cases.iter().zip(&suite_report.cases) {
            let entities = merge_entities(&suite.entities, &case.entities);
            let request = pb::IsAuthorizedRequest {
                principal: Some(wire_uid(&case.principal.0)),
                action: Some(wire_uid(&case.action.0)),
                resource: Some(wire_uid(&case.resource.0)),
                context_json: serde_json::Value::Object(case.context.clone()).to_string(),
                entities_json: match entities.is_empty() {
                    true => String::new(),
                    false => serde_json::Value::Array(entities).to_string(),
                },
                ..Default::default()
            };
            let answer = client
                .is_authorized(request)
                .await
                .unwrap_or_else(|e| panic!("{}: {}: {e}", suite.file, case.name))
                .into_inner();
            let decided = &case_report
                .result
                .as_ref()
                .expect("the case was decided")
                .decision;
            let what = format!("{}: {}", suite.file, case.name);
            assert_eq!(is_allow(&answer), decided.allowed(), "{what}");
            assert_eq!(is_allow(&answer), case.expect == Expect::Allow, "{what}");
            let mut served = answer.determining_policies.clone();
            served.sort();
            assert_eq!(served, decided.determining_policies(), "{what}");
            let errors: Vec<(&str, &str)> = answer
                .errors
                .iter()
                .map(|e| (e.policy_id.as_str(), e.message.as_str()))
                .collect();
            let reported: Vec<(&str, &str)> = decided
                .errors()
                .iter()
                .map(|e| (e.policy_id.as_str(), e.message.as_str()))
                .collect();
            assert_eq!(errors, reported, "{what}");
            compared += 1;
        }
    }
    assert!(compared >= 30, "only {compared} cases compared");
    server.stop().await;
}
