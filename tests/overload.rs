//! Load shedding and deadlines on the gRPC port: past `max_concurrent_calls` a decision call
//! is refused at once (RESOURCE_EXHAUSTED; ext_authz a 503 deny), health still answers, a
//! slot comes back when its call is answered or reset, and a call past its deadline is
//! answered DEADLINE_EXCEEDED.
//!
//! Calls are held in flight deterministically with a raw HTTP/2 client: it sends a call's
//! headers (which is when the server admits it) and keeps the body back until the test
//! says. The server's `calls_in_flight` gauge tells when it has counted them.

#[path = "common/http.rs"]
mod authzen_http;
mod common;

use std::{task::Poll, time::Duration};

use bytes::{BufMut as _, Bytes, BytesMut};
use cedar_pdp::{
    Config,
    proto::{
        cedarpdp::v1 as pb,
        envoy::service::auth::v3::{CheckRequest, authorization_client::AuthorizationClient},
    },
};
use common::*;
use tonic::codegen::http::{self, HeaderMap};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const IS_AUTHORIZED: &str = "/cedarpdp.v1.Authorizer/IsAuthorized";

/// A test is failed, not hung, if an answer never comes.
const PATIENCE: Duration = Duration::from_secs(30);

fn config(max_concurrent_calls: usize) -> Config {
    let mut config = Config {
        policies: example_policies(),
        ..Config::default()
    };
    config.limits.max_concurrent_calls = max_concurrent_calls;
    // Held calls must outlive a slow, loaded machine's connects and scrapes.
    config.limits.request_timeout = Duration::from_secs(60);
    config
}

/// A raw HTTP/2 connection to the server, for calls whose body the test holds back.
struct RawClient {
    sender: h2::client::SendRequest<Bytes>,
    authority: String,
}

/// A call whose headers were sent and whose body is held back.
struct Held {
    body: h2::SendStream<Bytes>,
    response: h2::client::ResponseFuture,
}

/// What a gRPC call came back with: its status, message, and the body's bytes.
struct Answer {
    status: i32,
    message: String,
    body: Bytes,
}

impl RawClient {
    async fn connect(server: &TestServer) -> Self {
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let (sender, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Self {
            sender,
            authority: server.addr.to_string(),
        }
    }

    /// Sends the headers of a call to `path` (with `headers` added) and holds its body.
    async fn start(&mut self, path: &str, headers: &[(&str, &str)]) -> Held {
        let mut request = http::Request::post(format!("http://{}{path}", self.authority))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let sender = self.sender.clone();
        let mut sender = sender.ready().await.expect("the connection takes a stream");
        let (response, body) = sender
            .send_request(request.body(()).unwrap(), false)
            .expect("headers sent");
        Held { body, response }
    }
}

impl Held {
    /// Sends `message` as the call's one gRPC message and ends the body.
    fn finish(&mut self, message: &impl prost::Message) {
        let encoded = message.encode_to_vec();
        let mut frame = BytesMut::with_capacity(5 + encoded.len());
        frame.put_u8(0);
        frame.put_u32(u32::try_from(encoded.len()).unwrap());
        frame.put_slice(&encoded);
        self.body
            .send_data(frame.freeze(), true)
            .expect("body sent");
    }

    /// The call's answer: status from the trailers (or a trailers-only response).
    async fn answer(self) -> Answer {
        answer_of(self.response).await
    }
}

/// The answer `response` brings: status from the trailers (or a trailers-only response).
async fn answer_of(response: h2::client::ResponseFuture) -> Answer {
    tokio::time::timeout(PATIENCE, async move {
        let response = response.await.expect("a response");
        let (head, mut body) = response.into_parts();
        let mut bytes = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("body data");
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.put_slice(&chunk);
        }
        let trailers = body.trailers().await.expect("trailers").unwrap_or_default();
        let status_of = |map: &HeaderMap| {
            map.get("grpc-status")
                .map(|s| s.to_str().unwrap().parse::<i32>().unwrap())
        };
        let (status, from) = match status_of(&trailers) {
            Some(status) => (status, &trailers),
            None => (
                status_of(&head.headers).expect("grpc-status in trailers or headers"),
                &head.headers,
            ),
        };
        let message = from
            .get("grpc-message")
            .map(|m| m.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Answer {
            status,
            message,
            body: bytes.freeze(),
        }
    })
    .await
    .expect("the call is answered")
}

impl Answer {
    /// The one gRPC message of the body.
    fn decode<M: prost::Message + Default>(&self) -> M {
        assert!(self.body.len() >= 5, "a framed message");
        M::decode(&self.body[5..]).expect("decodes")
    }
}

async fn in_flight(server: &TestServer) -> f64 {
    metric(&server.metrics_text().await, "cedar_pdp_calls_in_flight").expect("the gauge")
}

/// Waits until the server counts `n` decision calls in flight.
async fn until_in_flight(server: &TestServer, n: f64) {
    eventually(PATIENCE, &format!("{n} calls in flight"), || async {
        (in_flight(server).await == n).then_some(())
    })
    .await;
}

fn overloaded(server_metrics: &str, api: &str) -> f64 {
    metric(
        server_metrics,
        &format!("cedar_pdp_requests_rejected_total{{api=\"{api}\",reason=\"overloaded\"}}"),
    )
    .unwrap()
}

#[tokio::test]
async fn calls_past_max_concurrent_calls_are_shed_at_once_and_freed_slots_are_reused() {
    let server = TestServer::start_with(config(2)).await;
    let mut raw = RawClient::connect(&server).await;
    let mut client = server.client().await;

    // One held: a second call is exactly at the limit and is decided.
    let mut first = raw.start(IS_AUTHORIZED, &[]).await;
    until_in_flight(&server, 1.0).await;
    let at_limit = client.is_authorized(bob_reads_roadmap()).await.unwrap();
    assert!(is_allow(at_limit.get_ref()));

    // Two held: the next call of each decision API is refused at once.
    let second = raw.start(IS_AUTHORIZED, &[]).await;
    until_in_flight(&server, 2.0).await;
    let shed = client.is_authorized(bob_reads_roadmap()).await.unwrap_err();
    assert_eq!(shed.code(), tonic::Code::ResourceExhausted, "{shed:?}");
    assert!(shed.message().contains("max_concurrent_calls"), "{shed:?}");
    let batch = pb::BatchIsAuthorizedRequest {
        items: vec![pb::BatchItem::default()],
        ..Default::default()
    };
    let shed = client.batch_is_authorized(batch).await.unwrap_err();
    assert_eq!(shed.code(), tonic::Code::ResourceExhausted, "{shed:?}");

    // ext_authz: a 503 deny, never a gRPC error an Envoy failing open would let through.
    let check = AuthorizationClient::new(server.channel().await)
        .check(CheckRequest::default())
        .await
        .expect("a CheckResponse, not an error")
        .into_inner();
    assert_eq!(
        check.status.as_ref().unwrap().code,
        tonic::Code::ResourceExhausted as i32
    );
    let Some(
        cedar_pdp::proto::envoy::service::auth::v3::check_response::HttpResponse::DeniedResponse(
            denied,
        ),
    ) = check.http_response
    else {
        panic!("a denied response: {check:?}");
    };
    assert_eq!(denied.status.unwrap().code, 503);

    // Health is never shed: a probe under load still gets its answer.
    let health = HealthClient::new(server.channel().await)
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(health.get_ref().status, ServingStatus::Serving as i32);

    let text = server.metrics_text().await;
    assert_eq!(overloaded(&text, "is_authorized"), 1.0);
    assert_eq!(overloaded(&text, "batch"), 1.0);
    assert_eq!(overloaded(&text, "ext_authz"), 1.0);

    // An answered call gives its slot back: the held call, finished, is decided.
    first.finish(&bob_reads_roadmap());
    let answer = first.answer().await;
    assert_eq!(answer.status, 0, "{}", answer.message);
    assert!(is_allow(&answer.decode::<pb::IsAuthorizedResponse>()));
    until_in_flight(&server, 1.0).await;
    assert!(is_allow(
        client
            .is_authorized(bob_reads_roadmap())
            .await
            .unwrap()
            .get_ref()
    ));

    // So does a call the client resets.
    let Held { mut body, .. } = second;
    body.send_reset(h2::Reason::CANCEL);
    until_in_flight(&server, 0.0).await;
    server.stop().await;
}

#[tokio::test]
async fn an_authzen_call_past_max_concurrent_calls_is_a_503_never_a_decision() {
    let mut config = config(1);
    config.authzen.listen = Some("127.0.0.1:0".parse().unwrap());
    config.authzen.namespace = Some("Platform".to_owned());
    let server = TestServer::start_with(config).await;
    let authzen = server.authzen_addr.unwrap();
    let bob_reads = serde_json::json!({
        "subject": {"type": "User", "id": "bob"}, "action": {"name": "read"},
        "resource": {"type": "Document", "id": "acme-roadmap-q3"}});

    // One gRPC call held: the one slot both ports share is taken.
    let mut raw = RawClient::connect(&server).await;
    let mut held = raw.start(IS_AUTHORIZED, &[]).await;
    until_in_flight(&server, 1.0).await;
    let shed = authzen_http::post_json(authzen, "/access/v1/evaluation", &bob_reads).await;
    assert_eq!(shed.status, 503, "{}", shed.text);
    assert_eq!(shed.headers["retry-after"], "1");
    assert!(shed.json.get("decision").is_none(), "{}", shed.text);
    assert!(
        shed.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_concurrent_calls"),
        "{}",
        shed.text
    );
    assert_eq!(overloaded(&server.metrics_text().await, "authzen"), 1.0);

    // The slot back, the same question is decided (and allowed).
    held.finish(&bob_reads_roadmap());
    assert_eq!(held.answer().await.status, 0);
    until_in_flight(&server, 0.0).await;
    let decided = authzen_http::post_json(authzen, "/access/v1/evaluation", &bob_reads).await;
    assert_eq!(decided.status, 200, "{}", decided.text);
    assert_eq!(decided.json["decision"], true);
    server.stop().await;
}

#[tokio::test]
async fn a_shed_call_is_read_to_its_end_not_reset() {
    // A busy client's message often arrives after its headers, and so after the refusal.
    // Answered before its request has ended, a stream is reset by hyper, and hyper closes
    // a connection after 1,024 such resets: a client shed that often would lose its
    // connection and every call on it. So the server reads a shed call's message first.
    let server = TestServer::start_with(config(1)).await;
    let mut raw = RawClient::connect(&server).await;
    let held = raw.start(IS_AUTHORIZED, &[]).await;
    until_in_flight(&server, 1.0).await;
    for i in 1..=3 {
        let mut shed = raw.start(IS_AUTHORIZED, &[]).await;
        eventually(PATIENCE, &format!("call {i} refused"), || async {
            (overloaded(&server.metrics_text().await, "is_authorized") >= f64::from(i))
                .then_some(())
        })
        .await;
        shed.finish(&bob_reads_roadmap());
        let Held { mut body, response } = shed;
        let answer = answer_of(response).await;
        assert_eq!(
            answer.status,
            tonic::Code::ResourceExhausted as i32,
            "{}",
            answer.message
        );
        let reset = std::future::poll_fn(|cx| Poll::Ready(body.poll_reset(cx))).await;
        assert!(
            reset.is_pending(),
            "call {i}: the server reset the stream: {reset:?}"
        );
    }
    let Held { body: mut held, .. } = held;
    held.send_reset(h2::Reason::CANCEL);
    server.stop().await;
}

#[tokio::test]
async fn a_call_whose_body_does_not_arrive_in_time_is_answered_deadline_exceeded() {
    let mut config = config(10);
    config.limits.request_timeout = Duration::from_millis(300);
    let server = TestServer::start_with(config).await;
    let mut raw = RawClient::connect(&server).await;

    // The server's request_timeout_ms, and a client's shorter grpc-timeout.
    for headers in [&[][..], &[("grpc-timeout", "100m")][..]] {
        let held = raw.start(IS_AUTHORIZED, headers).await;
        let answer = held.answer().await;
        assert_eq!(
            answer.status,
            tonic::Code::DeadlineExceeded as i32,
            "{headers:?}"
        );
        assert!(answer.message.contains("deadline"), "{}", answer.message);
    }
    until_in_flight(&server, 0.0).await;
    server.stop().await;
}

/// Envoy's Check: a gRPC error would let an Envoy set to fail open through, so a check
/// past its deadline gets an answer, a deny.
#[tokio::test]
async fn a_check_past_its_deadline_is_a_504_deny_never_a_grpc_error() {
    let server = TestServer::start_with(config(10)).await;
    let mut raw = RawClient::connect(&server).await;
    let held = raw
        .start(
            "/envoy.service.auth.v3.Authorization/Check",
            &[("grpc-timeout", "100m")],
        )
        .await;
    let answer = held.answer().await;
    assert_eq!(
        answer.status, 0,
        "an answer, not an error: {}",
        answer.message
    );
    let check: cedar_pdp::proto::envoy::service::auth::v3::CheckResponse = answer.decode();
    assert_eq!(
        check.status.as_ref().map(|s| s.code),
        Some(tonic::Code::DeadlineExceeded as i32),
        "{check:?}"
    );
    let Some(
        cedar_pdp::proto::envoy::service::auth::v3::check_response::HttpResponse::DeniedResponse(
            denied,
        ),
    ) = &check.http_response
    else {
        panic!("not denied: {check:?}")
    };
    assert_eq!(denied.status.as_ref().map(|s| s.code), Some(504));
    let text = server.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            r#"cedar_pdp_requests_rejected_total{api="ext_authz",reason="deadline_exceeded"}"#
        ),
        Some(1.0)
    );
    until_in_flight(&server, 0.0).await;
    server.stop().await;
}

#[tokio::test]
async fn a_call_already_past_its_deadline_when_its_turn_comes_is_not_decided() {
    let server = TestServer::start_with(config(10)).await;
    let mut raw = RawClient::connect(&server).await;
    // A deadline of one nanosecond has passed by the time any worker picks the call up.
    let mut late = raw.start(IS_AUTHORIZED, &[("grpc-timeout", "1n")]).await;
    late.finish(&bob_reads_roadmap());
    let answer = late.answer().await;
    assert_eq!(
        answer.status,
        tonic::Code::DeadlineExceeded as i32,
        "{}",
        answer.message
    );
    let text = server.metrics_text().await;
    let decided = |decision: &str| {
        metric(
            &text,
            &format!("cedar_pdp_decisions_total{{api=\"is_authorized\",decision=\"{decision}\"}}"),
        )
        .unwrap()
    };
    assert_eq!(
        decided("allow") + decided("deny"),
        0.0,
        "no decision was made"
    );

    // A grpc-timeout that is not one is ignored: the server's own timeout applies.
    let mut odd = raw.start(IS_AUTHORIZED, &[("grpc-timeout", "soon")]).await;
    odd.finish(&bob_reads_roadmap());
    let answer = odd.answer().await;
    assert_eq!(answer.status, 0, "{}", answer.message);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_past_the_limit_is_answered_call_by_call_and_accounted_for() {
    let server = TestServer::start_with(config(4)).await;
    let channels = channels(&server, 4).await;
    let calls = 400;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..calls {
        let mut client =
            pb::authorizer_client::AuthorizerClient::new(channels[i % channels.len()].clone());
        tasks.spawn(async move { client.is_authorized(bob_reads_roadmap()).await });
    }
    let (mut allowed, mut shed) = (0.0, 0.0);
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(answer) => {
                assert!(is_allow(answer.get_ref()));
                allowed += 1.0;
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                shed += 1.0;
            }
        }
    }
    // Every call was either decided or counted as shed, and no slot leaked.
    let text = server.metrics_text().await;
    assert_eq!(allowed + shed, f64::from(u32::try_from(calls).unwrap()));
    assert_eq!(overloaded(&text, "is_authorized"), shed);
    assert_eq!(
        metric(
            &text,
            "cedar_pdp_decisions_total{api=\"is_authorized\",decision=\"allow\"}"
        ),
        Some(allowed)
    );
    until_in_flight(&server, 0.0).await;
    // And the server still answers.
    assert!(is_allow(
        server
            .client()
            .await
            .is_authorized(bob_reads_roadmap())
            .await
            .unwrap()
            .get_ref()
    ));
    server.stop().await;
}

async fn channels(server: &TestServer, n: usize) -> Vec<tonic::transport::Channel> {
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n {
        channels.push(server.channel().await);
    }
    channels
}
