//! The Prometheus scrape endpoint: `GET /metrics` over plain HTTP/1.1 on a port of its
//! own (`--metrics-listen`), rendering the server's [`Metrics`], and plain-HTTP health for
//! probes that cannot speak gRPC over TLS: `/healthz` (the process answers) and
//! `/readyz` (the gRPC port is taking calls: 503 once shutdown has begun). Anything else
//! is 404, and a method other than GET or HEAD is 405.
//!
//! A scraper needs little, so the endpoint gives little: at most [`MAX_CONNECTIONS`]
//! connections (more are closed at once), request headers within [`HEADER_TIMEOUT`], and
//! no connection longer than [`CONNECTION_LIFETIME`], so idle or trickling clients cannot
//! hold file descriptors the gRPC port needs.

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, header, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
};

use crate::telemetry::Metrics;
use crate::telemetry::OncePerSecond;

/// How often the exporter's housekeeping runs (it folds histogram samples).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Longest a client may take to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest any one connection stays open.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// The content type of the Prometheus text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown` resolves;
/// `/readyz` answers 503 once `stopping` is true.
pub async fn serve_metrics(
    metrics: Metrics,
    stopping: watch::Receiver<bool>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let mut upkeep = tokio::time::interval(UPKEEP_EVERY);
    upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let warnings = OncePerSecond::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = upkeep.tick() => metrics.run_upkeep(),
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        // Out of file descriptors and the like: say so (once a second at
                        // most), and keep serving.
                        if warnings.ready() {
                            tracing::warn!(error = %err, "metrics endpoint cannot accept a connection");
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    // Full: closing at once costs less than queueing.
                    continue;
                };
                let metrics = metrics.clone();
                let stopping = stopping.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let response = respond(&metrics, !*stopping.borrow(), &request);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service);
                    match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                        Ok(Ok(())) | Err(_) => {}
                        Ok(Err(err)) => {
                            tracing::debug!(error = %err, "metrics connection ended with an error");
                        }
                    }
                    drop(slot);
                });
            }
        }
    }
}

fn respond(
    metrics: &Metrics,
    serving: bool,
    request: &Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a response built from valid parts")
    };
    let known = ["/metrics", "/healthz", "/readyz"];
    if !known.contains(&request.uri().path()) {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; this port serves /metrics, /healthz and /readyz\n".to_owned(),
        );
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".to_owned(),
        );
    }
    match request.uri().path() {
        "/metrics" => reply(StatusCode::OK, TEXT_FORMAT, metrics.render()),
        "/readyz" if !serving => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not serving: shutting down\n".to_owned(),
        ),
        _ => reply(StatusCode::OK, "text/plain", "ok\n".to_owned()),
    }
}
