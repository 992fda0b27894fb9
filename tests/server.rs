//! The server around the Authorizer: gRPC health, server reflection (v1 and v1alpha), and
//! graceful shutdown.

mod common;

use common::*;
use tonic::codegen::http::uri::PathAndQuery;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[tokio::test]
async fn health_reports_serving_for_the_server_and_the_authorizer() {
    let server = TestServer::start(&example_policies()).await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "cedarpdp.v1.Authorizer"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    server.stop().await;
}

/// Lists services through one reflection protocol version; the two versions share one
/// message shape in different packages.
macro_rules! list_services {
    ($channel:expr, $pb:path, $service:literal) => {{
        use reflection::{
            ServerReflectionRequest, ServerReflectionResponse,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        use $pb as reflection;
        let mut grpc = tonic::client::Grpc::new($channel);
        grpc.ready().await.unwrap();
        let request = tonic::Request::new(tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]));
        let codec =
            tonic_prost::ProstCodec::<ServerReflectionRequest, ServerReflectionResponse>::default();
        let path = PathAndQuery::from_static(concat!("/", $service, "/ServerReflectionInfo"));
        let mut stream = grpc
            .streaming(request, path, codec)
            .await
            .unwrap()
            .into_inner();
        let response = stream.message().await.unwrap().expect("one response");
        match response.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
                names.sort();
                names
            }
            other => panic!("unexpected reflection response {other:?}"),
        }
    }};
}

#[tokio::test]
async fn reflection_lists_the_services_in_both_protocol_versions() {
    let server = TestServer::start(&example_policies()).await;
    let v1 = list_services!(
        server.channel().await,
        tonic_reflection::pb::v1,
        "grpc.reflection.v1.ServerReflection"
    );
    let v1alpha = list_services!(
        server.channel().await,
        tonic_reflection::pb::v1alpha,
        "grpc.reflection.v1alpha.ServerReflection"
    );
    for names in [&v1, &v1alpha] {
        assert!(
            names.contains(&"cedarpdp.v1.Authorizer".to_owned()),
            "{names:?}"
        );
        assert!(
            names.contains(&"grpc.health.v1.Health".to_owned()),
            "{names:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn shutdown_lets_running_clients_finish_cleanly_then_stops_listening() {
    let server = TestServer::start(&example_policies()).await;
    let channel = server.channel().await;
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel::<()>(8);
    // Clients calling in a loop: some call is in flight whenever the shutdown comes.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let mut client =
                cedar_pdp::proto::cedarpdp::v1::authorizer_client::AuthorizerClient::new(
                    channel.clone(),
                );
            let started = started_tx.clone();
            tokio::spawn(async move {
                let mut answered = 0usize;
                loop {
                    let call = client.is_authorized(bob_reads_roadmap()).await;
                    match call {
                        Ok(response) => {
                            // Every answer is the right one, up to the very end.
                            assert!(is_allow(&response.into_inner()));
                            answered += 1;
                            if answered == 1 {
                                started.send(()).await.unwrap();
                            }
                        }
                        Err(status) => return (answered, status),
                    }
                }
            })
        })
        .collect();
    for _ in 0..4 {
        started_rx.recv().await.unwrap();
    }
    let addr = server.addr;
    server.stop().await;
    for client in clients {
        let (answered, status) = client.await.unwrap();
        assert!(answered > 0);
        // After the stop a call is refused, never answered wrongly or left hanging.
        assert!(
            matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
            ),
            "{status:?}"
        );
    }
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still listening after stop"
    );
}

#[tokio::test]
async fn during_the_drain_period_calls_are_answered_while_health_says_not_serving() {
    let mut server = TestServer::start_with(cedar_pdp::config::Config {
        policies: example_policies(),
        drain: std::time::Duration::from_millis(1500),
        ..Default::default()
    })
    .await;
    let channel = server.channel().await;
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    assert_eq!(http_get(server.metrics_addr, "/readyz").await.0, 200);
    assert_eq!(http_get(server.metrics_addr, "/healthz").await.0, 200);

    server.begin_shutdown();
    eventually(std::time::Duration::from_secs(5), "NOT_SERVING", || {
        let mut health = health.clone();
        async move {
            let status = health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .ok()?
                .into_inner()
                .status;
            (status == tonic_health::pb::health_check_response::ServingStatus::NotServing as i32)
                .then_some(())
        }
    })
    .await;
    let (status, body) = http_get(server.metrics_addr, "/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (503, "not serving: shutting down\n")
    );
    assert_eq!(http_get(server.metrics_addr, "/healthz").await.0, 200);

    // Still answering, on open connections and on new ones.
    let mut open =
        cedar_pdp::proto::cedarpdp::v1::authorizer_client::AuthorizerClient::new(channel);
    assert!(is_allow(
        open.is_authorized(bob_reads_roadmap())
            .await
            .unwrap()
            .get_ref()
    ));
    let mut fresh = server.client().await;
    assert!(is_allow(
        fresh
            .is_authorized(bob_reads_roadmap())
            .await
            .unwrap()
            .get_ref()
    ));
    drop((open, fresh, health));

    let addr = server.addr;
    server.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still listening after the drain"
    );
}

/// A rolling restart as Kubernetes does it: clients call instance A, which is told to
/// stop; they follow its health to instance B. With a drain period, no call is lost and
/// none is even refused.
#[tokio::test]
async fn a_restart_with_a_second_instance_taking_over_loses_no_call() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };
    let config = || cedar_pdp::config::Config {
        policies: example_policies(),
        drain: std::time::Duration::from_millis(1000),
        ..Default::default()
    };
    let a = TestServer::start_with(config()).await;
    let b = TestServer::start_with(config()).await;
    let channel = |server: &TestServer| {
        tonic::transport::Channel::from_shared(server.endpoint())
            .unwrap()
            .timeout(std::time::Duration::from_secs(5))
            .connect_lazy()
    };
    let (to_a, to_b) = (channel(&a), channel(&b));
    let on_b = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, refused, issued) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );

    // The load balancer: follows A's health and moves traffic when it says NOT_SERVING.
    let balancer = {
        let (on_b, stop) = (on_b.clone(), stop.clone());
        let mut health = tonic_health::pb::health_client::HealthClient::new(to_a.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let status = health
                    .check(tonic_health::pb::HealthCheckRequest::default())
                    .await
                    .map(|r| r.into_inner().status)
                    .ok();
                if status != Some(ServingStatus::Serving as i32) {
                    on_b.store(true, Ordering::SeqCst);
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
    };
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (to_a, to_b) = (to_a.clone(), to_b.clone());
            let (on_b, stop) = (on_b.clone(), stop.clone());
            let (answered, refused, issued) = (answered.clone(), refused.clone(), issued.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let target = if on_b.load(Ordering::SeqCst) {
                        &to_b
                    } else {
                        &to_a
                    };
                    let mut client =
                        cedar_pdp::proto::cedarpdp::v1::authorizer_client::AuthorizerClient::new(
                            target.clone(),
                        );
                    issued.fetch_add(1, Ordering::SeqCst);
                    let call = client.is_authorized(bob_reads_roadmap()).await;
                    match call {
                        Ok(response) => {
                            assert!(is_allow(response.get_ref()), "a wrong answer");
                            answered.fetch_add(1, Ordering::SeqCst);
                        }
                        // Seen by the client, so not lost; a real client retries on B.
                        Err(status) => {
                            assert_ne!(status.code(), tonic::Code::DeadlineExceeded, "a hung call");
                            refused.fetch_add(1, Ordering::SeqCst);
                            on_b.store(true, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();

    eventually(
        std::time::Duration::from_secs(10),
        "calls answered by A",
        || {
            let answered = answered.clone();
            async move { (answered.load(Ordering::SeqCst) >= 100).then_some(()) }
        },
    )
    .await;
    a.stop().await;
    let at_stop = answered.load(Ordering::SeqCst);
    eventually(
        std::time::Duration::from_secs(10),
        "calls answered by B",
        || {
            let answered = answered.clone();
            async move { (answered.load(Ordering::SeqCst) >= at_stop + 100).then_some(()) }
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client
            .await
            .expect("no client saw a wrong answer or a hung call");
    }
    balancer.await.unwrap();
    let (answered, refused, issued) = (
        answered.load(Ordering::SeqCst),
        refused.load(Ordering::SeqCst),
        issued.load(Ordering::SeqCst),
    );
    eprintln!("{issued} calls: {answered} answered, {refused} refused");
    assert_eq!(answered + refused, issued, "calls lost");
    assert_eq!(
        refused, 0,
        "with a drain period no call should even be refused"
    );
    assert!(on_b.load(Ordering::SeqCst));
    b.stop().await;
}

#[tokio::test]
async fn connections_past_max_connections_are_closed_and_a_freed_slot_is_reused() {
    let mut config = cedar_pdp::config::Config {
        policies: example_policies(),
        ..Default::default()
    };
    config.limits.max_connections = 2;
    let server = TestServer::start_with(config).await;
    let call = |channel: tonic::transport::Channel| async move {
        cedar_pdp::proto::cedarpdp::v1::authorizer_client::AuthorizerClient::new(channel)
            .is_authorized(bob_reads_roadmap())
            .await
    };
    // Exactly at the limit: both connections are served.
    let first = server.channel().await;
    let second = server.channel().await;
    assert!(is_allow(call(first.clone()).await.unwrap().get_ref()));
    assert!(is_allow(call(second.clone()).await.unwrap().get_ref()));

    // One past it: closed at once, an error the client sees, not a hang.
    let third = tonic::transport::Channel::from_shared(server.endpoint())
        .unwrap()
        .timeout(std::time::Duration::from_secs(5))
        .connect_lazy();
    let refused = call(third).await.unwrap_err();
    assert!(
        matches!(
            refused.code(),
            tonic::Code::Unavailable | tonic::Code::Cancelled
        ),
        "{refused:?}"
    );
    // Those open are unaffected.
    assert!(is_allow(call(first).await.unwrap().get_ref()));

    // A closed connection frees its slot.
    drop(second);
    eventually(
        std::time::Duration::from_secs(10),
        "a freed slot",
        || async {
            let fresh = tonic::transport::Channel::from_shared(server.endpoint())
                .unwrap()
                .connect()
                .await
                .ok()?;
            call(fresh).await.ok()
        },
    )
    .await;
    server.stop().await;
}

/// A client watching health (gRPC client-side health checking) sees NOT_SERVING and then
/// the end of its stream: it does not hold the shutdown for the whole grace period.
#[tokio::test]
async fn a_health_watch_sees_not_serving_then_ends_and_does_not_hold_the_shutdown() {
    use tokio_stream::StreamExt as _;
    let mut server = TestServer::start_with(cedar_pdp::config::Config {
        policies: example_policies(),
        drain: std::time::Duration::from_millis(300),
        // Longer than `stop` waits: a held shutdown fails the test.
        shutdown_grace: std::time::Duration::from_secs(120),
        ..Default::default()
    })
    .await;
    let mut health = HealthClient::new(server.channel().await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "cedarpdp.v1.Authorizer".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    server.begin_shutdown();
    let mut seen = Vec::new();
    while let Some(update) = tokio::time::timeout(std::time::Duration::from_secs(20), watch.next())
        .await
        .expect("the watch ends")
    {
        seen.push(update.expect("updates, not errors").status);
    }
    assert!(
        seen.contains(&(ServingStatus::NotServing as i32)),
        "{seen:?}"
    );
    server.stop().await;
}
