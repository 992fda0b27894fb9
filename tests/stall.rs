//! One caller cannot stall the others: while clients send the most expensive requests the
//! limits admit, back to back, another client's health checks and simple decisions are
//! all answered promptly. (Its own test binary, so that no other test competes for the
//! machine while it measures.)

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use cedar_pdp::{Config, proto::cedarpdp::v1 as pb};
use common::*;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// How long any health check or simple decision may take while the load runs.
const PROMPTLY: Duration = Duration::from_millis(100);

/// The costliest request the default limits admit here: 44 new groups in two layers, each
/// of the first a member of every one of the second (1,980 parent edges), and a new user
/// in all of the first.
fn expensive() -> pb::IsAuthorizedRequest {
    let group = |layer: usize, i: usize| p("Group", &format!("l{layer}-{i}"));
    let acme = || entity_value(p("Tenant", "acme"));
    let mut entities: Vec<pb::Entity> = (0..2)
        .flat_map(|layer| {
            (0..44).map(move |i| pb::Entity {
                uid: Some(group(layer, i)),
                attrs: context(&[("tenant", acme())]),
                parents: if layer == 0 {
                    (0..44).map(|j| group(1, j)).collect()
                } else {
                    Vec::new()
                },
                tags: Default::default(),
            })
        })
        .collect();
    entities.push(pb::Entity {
        uid: Some(p("User", "intruder")),
        attrs: context(&[
            ("tenant", acme()),
            ("email", string("intruder@acme.example")),
            ("suspended", boolean(false)),
            ("contractor", boolean(false)),
        ]),
        parents: (0..44).map(|i| group(0, i)).collect(),
        tags: Default::default(),
    });
    let mut r = request(
        p("User", "intruder"),
        action("read"),
        p("Document", "acme-roadmap-q3"),
    );
    r.entities = entities;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expensive_requests_do_not_stall_health_checks_or_simple_decisions() {
    let mut config = Config {
        policies: example_policies(),
        ..Config::default()
    };
    // As on a two-core machine, wherever the test runs.
    config.limits.decision_threads = 2;
    let server = TestServer::start_with(config).await;
    let stop = Arc::new(AtomicBool::new(false));
    let expensive_done = Arc::new(AtomicUsize::new(0));
    let request = expensive();
    let mut load = Vec::new();
    for _ in 0..4 {
        let mut client = server.client().await;
        let (stop, done, request) = (stop.clone(), expensive_done.clone(), request.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let answer = client.is_authorized(request.clone()).await;
                assert!(
                    answer.is_ok(),
                    "the expensive request is admitted: {answer:?}"
                );
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // The load is running before anything is timed.
    eventually(Duration::from_secs(30), "the load to start", || async {
        (expensive_done.load(Ordering::Relaxed) >= 4).then_some(())
    })
    .await;

    let mut client = server.client().await;
    let mut health = HealthClient::new(server.channel().await);
    let mut slowest = Duration::ZERO;
    for i in 0..40 {
        let started = Instant::now();
        if i % 2 == 0 {
            let served = health
                .check(HealthCheckRequest::default())
                .await
                .unwrap()
                .into_inner();
            assert_eq!(served.status, 1, "SERVING");
        } else {
            let answer = client
                .is_authorized(bob_reads_roadmap())
                .await
                .unwrap()
                .into_inner();
            assert!(is_allow(&answer));
        }
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let done = expensive_done.load(Ordering::Relaxed);
    assert!(
        done >= 8,
        "the load kept running: {done} expensive requests"
    );
    assert!(
        slowest < PROMPTLY,
        "a health check or simple decision took {slowest:?} while {done} expensive requests \
         were decided"
    );
    server.stop().await;
}
