//! Traces leave the process over OTLP and continue the caller's: an in-process collector
//! (the OpenTelemetry collector's trace service, from its own protos) receives the spans
//! of calls made through `cedarpdp.v1`, Envoy's ext_authz and AuthZEN, each a child of the
//! span named in the call's W3C `traceparent`, with the decision's span under it.
//!
//! One test in this binary: the subscriber and its exporter are the process's own.

mod common;
#[path = "common/http.rs"]
mod http;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use cedar_pdp::{
    Config,
    config::{LogFormat, TracingConfig},
    proto::envoy::{
        config::core::v3::HeaderValue, service::auth::v3::authorization_client::AuthorizationClient,
    },
    telemetry,
};
use common::*;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value as AnyValue,
    trace::v1::Span,
};
use serde_json::json;
use tonic::{Request, Response, Status, transport::server::TcpIncoming};

/// Every span the collector received.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A span's attributes as text.
fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// A caller's `traceparent`: trace `trace`, span `span`, sampled.
fn traceparent(trace: &str, span: &str) -> String {
    format!("00-{trace}-{span}-01")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_spans_of_the_callers_trace_exported_over_otlp() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let tracing = TracingConfig {
        otlp_endpoint: Some(format!("http://{collector_addr}")),
        ..TracingConfig::default()
    };
    let export = telemetry::init(LogFormat::Text, "warn", &tracing)
        .expect("the subscriber installs")
        .expect("a collector is configured");

    let mut config = Config {
        policies: example_policies(),
        ext_authz: docs_ext_authz(),
        ..Config::default()
    };
    config.authzen.listen = Some("127.0.0.1:0".parse().unwrap());
    config.authzen.namespace = Some("Platform".to_owned());
    let server = TestServer::start_with(config).await;
    let version = server.store.current().version().to_owned();

    // cedarpdp.v1, with the caller's trace in the call's metadata.
    let grpc_trace = "0af7651916cd43dd8448eb211c80319c";
    let grpc_parent = "b7ad6b7169203331";
    let mut request = Request::new(bob_reads_roadmap());
    request.metadata_mut().insert(
        "traceparent",
        traceparent(grpc_trace, grpc_parent).parse().unwrap(),
    );
    let answer = server
        .client()
        .await
        .is_authorized(request)
        .await
        .unwrap()
        .into_inner();

    // Envoy's check, with the client's trace in the HTTP request's headers.
    let envoy_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let envoy_parent = "00f067aa0ba902b7";
    let mut check = check(
        "GET",
        "/projects/acme-roadmap/docs/acme-roadmap-q3",
        Some(jwt(&[("sub", string_value("dave"))])),
        None,
    );
    let http = check
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .unwrap();
    http.headers.insert(
        "traceparent".to_owned(),
        traceparent(envoy_trace, envoy_parent),
    );
    let checked = AuthorizationClient::new(server.channel().await)
        .check(check)
        .await
        .unwrap()
        .into_inner();
    let denied_headers: Vec<HeaderValue> = match checked.http_response {
        Some(cedar_pdp::proto::envoy::service::auth::v3::check_response::HttpResponse::DeniedResponse(d)) => {
            d.headers.into_iter().filter_map(|h| h.header).collect()
        }
        other => panic!("{other:?}"),
    };
    let envoy_decision = denied_headers
        .iter()
        .find(|h| h.key == "x-decision-id")
        .map(|h| h.value.clone())
        .unwrap();

    // AuthZEN, with the trace in the HTTP headers.
    let authzen_trace = "5c4e7b2f9d1a0c3e6f8b9a0d1c2e3f40";
    let authzen_parent = "1111222233334444";
    let authzen = http::send(
        server.authzen_addr.unwrap(),
        "POST",
        "/access/v1/evaluation",
        &[
            ("content-type", "application/json"),
            ("traceparent", &traceparent(authzen_trace, authzen_parent)),
        ],
        json!({"subject": {"type": "User", "id": "bob"}, "action": {"name": "read"},
               "resource": {"type": "Document", "id": "acme-roadmap-q3"}})
        .to_string()
        .into_bytes(),
    )
    .await;
    assert_eq!(authzen.status, 200, "{}", authzen.text);

    // A caller's "not sampled" flag does not keep its call out of the export: the server
    // draws its own sample where a trace enters it (here at ratio 1).
    let unsampled_trace = "7d1c2e3f4a5b6c7d8e9f0a1b2c3d4e5f";
    let mut request = Request::new(bob_reads_roadmap());
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{unsampled_trace}-aaaaaaaaaaaaaaaa-00")
            .parse()
            .unwrap(),
    );
    server.client().await.is_authorized(request).await.unwrap();

    // A call with a malformed traceparent is answered, in a trace of its own.
    let mut request = Request::new(bob_reads_roadmap());
    request
        .metadata_mut()
        .insert("traceparent", "00-not-a-trace-01".parse().unwrap());
    server.client().await.is_authorized(request).await.unwrap();

    // A reload is a span too.
    server.watcher.reload_now();

    let spans = eventually(Duration::from_secs(15), "the spans to be exported", || {
        let spans = collector.spans.lock().unwrap().clone();
        let traced = |trace: &str| {
            spans
                .iter()
                .filter(|s| hex(&s.trace_id) == trace && s.name == "decide")
                .count()
        };
        let reloaded = spans.iter().any(|s| s.name == "reload");
        let ready = traced(grpc_trace) == 1
            && traced(unsampled_trace) == 1
            && traced(envoy_trace) == 1
            && traced(authzen_trace) == 1
            && reloaded;
        async move { ready.then_some(spans) }
    })
    .await;

    for (trace, parent, name, decision_id, decision) in [
        (
            grpc_trace,
            grpc_parent,
            "cedarpdp.v1.Authorizer/IsAuthorized",
            answer.decision_id.clone(),
            "allow",
        ),
        (
            envoy_trace,
            envoy_parent,
            "envoy.service.auth.v3.Authorization/Check",
            envoy_decision.clone(),
            "deny",
        ),
        (
            authzen_trace,
            authzen_parent,
            "authzen",
            authzen.json["context"]["decision_id"]
                .as_str()
                .unwrap()
                .to_owned(),
            "allow",
        ),
    ] {
        let call = spans
            .iter()
            .find(|s| hex(&s.trace_id) == trace && s.name == name)
            .unwrap_or_else(|| panic!("no {name} span in trace {trace}: {spans:#?}"));
        assert_eq!(
            hex(&call.parent_span_id),
            parent,
            "{name}: the caller's span is its parent"
        );
        let call_attributes = attributes(call);
        assert_eq!(call_attributes["decision_id"], decision_id, "{name}");
        let decide = spans
            .iter()
            .find(|s| hex(&s.trace_id) == trace && s.name == "decide")
            .unwrap();
        assert_eq!(
            decide.parent_span_id, call.span_id,
            "{name}: decide is the call's child"
        );
        let decided = attributes(decide);
        assert_eq!(decided["decision"], decision, "{name}: {decided:?}");
        assert_eq!(decided["policy_version"], version, "{name}");
        assert!(
            decided["policies_evaluated"].parse::<usize>().unwrap() > 0,
            "{name}: {decided:?}"
        );
        assert!(
            decided.contains_key("determining_policies"),
            "{name}: {decided:?}"
        );
    }
    let allowed = spans
        .iter()
        .find(|s| hex(&s.trace_id) == grpc_trace && s.name == "decide")
        .unwrap();
    assert_eq!(
        attributes(allowed)["determining_policies"],
        answer.determining_policies.join(",")
    );
    let reload = spans.iter().find(|s| s.name == "reload").unwrap();
    assert_eq!(attributes(reload)["outcome"], "unchanged");

    // The exporter counts what it sent (once the collector's answer is in); nothing was
    // dropped.
    let metrics_addr = server.metrics_addr;
    let metrics = eventually(
        Duration::from_secs(10),
        "the export to be counted",
        || async move {
            let (_, metrics) = http_get(metrics_addr, "/metrics").await;
            let exported = metric(&metrics, "cedar_pdp_trace_spans_exported_total").unwrap();
            (exported >= 7.0).then_some(metrics)
        },
    )
    .await;
    assert_eq!(
        metric(&metrics, "cedar_pdp_trace_spans_dropped_total"),
        Some(0.0)
    );
    server.stop().await;
    export.shutdown(Duration::from_secs(2));
}
