//! Admission of calls on the gRPC port: the limit on decision calls in flight and each
//! call's deadline, applied the moment a call's headers arrive, before it waits anywhere.
//!
//! hyper reads a stream's headers on the connection's task, calls [`Admitting::call`]
//! there, and spawns the future it returns; that future then waits in the runtime's queue
//! for a free worker. A limit kept inside a handler would only ever see the calls a worker
//! is already running. Counted here, a call holds its slot from arrival to answer, queued
//! time included, so past `max_concurrent_calls` a new decision call is refused at once
//! instead of joining a queue that only grows:
//!
//! - an Authorizer call gets RESOURCE_EXHAUSTED naming the limit, without its message being
//!   decoded (it is read to its end first, see [`discard`]);
//! - an ext_authz check is marked [`Overloaded`] and its handler answers a 503 deny: a gRPC
//!   error would let an Envoy set to fail open turn overload into allow.
//!
//! Health and reflection are never refused: a probe under load still gets its answer.
//!
//! Every call's deadline is the shorter of `request_timeout_ms` and the client's
//! `grpc-timeout`, counted from arrival. A call that waited past it is answered
//! DEADLINE_EXCEEDED without being decided (its caller has stopped waiting), and one whose
//! body is still arriving when it passes is cut off the same way.
//!
//! A call holds its slot while its message arrives, so a client that sends headers and
//! holds its messages back keeps slots until their deadlines pass. With mutual TLS only
//! clients of the configured CA can connect at all; a lower `request_timeout_ms` shortens
//! how long a slot can be held that way. There is no per-caller quota.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::BytesMut;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use tokio::time::Instant;
use tonic::{
    Status,
    body::Body,
    codegen::http::{HeaderMap, Request, Response},
    service::Routes,
};
use tower::ServiceExt as _;

use super::ext_authz::response;
use crate::{
    config::Limits,
    telemetry::{
        Metrics, OncePerSecond,
        metrics::{Api, Reason},
    },
};

/// Marks an ext_authz check that arrived past `max_concurrent_calls`: its handler answers
/// a 503 deny without deciding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Overloaded;

/// The decision calls in flight across every port of one server (gRPC and AuthZEN),
/// under one limit, `max_concurrent_calls`.
#[derive(Debug, Clone)]
pub struct CallSlots {
    metrics: Metrics,
    /// Decision calls in flight: taken on arrival, given back when answered or reset.
    in_flight: Arc<AtomicUsize>,
    /// Shed warnings, once a second at most.
    shed_warnings: Arc<OncePerSecond>,
    max_concurrent_calls: usize,
}

impl CallSlots {
    /// At most `max_concurrent_calls` decision calls in flight, exported and counted in
    /// `metrics`.
    pub fn new(metrics: Metrics, max_concurrent_calls: usize) -> Self {
        let in_flight = Arc::new(AtomicUsize::new(0));
        metrics.export_calls_in_flight(in_flight.clone());
        Self {
            metrics,
            in_flight,
            shed_warnings: Arc::new(OncePerSecond::new()),
            max_concurrent_calls,
        }
    }

    /// The limit.
    pub(crate) fn limit(&self) -> usize {
        self.max_concurrent_calls
    }

    /// Takes a slot for a decision call on `api`, or counts and logs the call as shed.
    pub(crate) fn take(&self, api: Api) -> Option<Slot> {
        let in_flight = &self.in_flight;
        // Taken only when one is free: a refused call never counts, even for an instant.
        let taken = in_flight.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < self.max_concurrent_calls).then_some(n + 1)
        });
        if taken.is_ok() {
            return Some(Slot(in_flight.clone()));
        }
        self.metrics.refused(api, Reason::Overloaded);
        if self.shed_warnings.ready() {
            tracing::warn!(
                max_concurrent_calls = self.max_concurrent_calls,
                "shedding load: a call arrived with max_concurrent_calls already in flight"
            );
        }
        None
    }
}

/// The admission rules of one server, shared by all its connections.
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    routes: Routes,
    metrics: Metrics,
    slots: CallSlots,
    request_timeout: Duration,
    max_message_bytes: usize,
}

impl Admission {
    /// Admits calls to `routes` under `limits`: at most `max_concurrent_calls` decision
    /// calls in flight (`slots`, shared with the other ports), each answered within
    /// `request_timeout` or its own deadline.
    pub(crate) fn new(routes: Routes, slots: CallSlots, limits: &Limits) -> Self {
        Self {
            routes,
            metrics: slots.metrics.clone(),
            slots,
            request_timeout: limits.request_timeout,
            max_message_bytes: limits.max_message_bytes,
        }
    }

    /// The service for one connection, which gives each of its calls `connect_info` (the
    /// peer's address and, under TLS, its certificates) as tonic's own server would.
    pub(crate) fn connection<C>(&self, connect_info: C) -> Admitting<C> {
        Admitting {
            admission: self.clone(),
            connect_info,
        }
    }

    /// The status a shed Authorizer call gets.
    fn overloaded(&self) -> Status {
        Status::resource_exhausted(format!(
            "the server has {} calls in flight, its limit (max_concurrent_calls); retry with \
             backoff or on another replica",
            self.slots.limit()
        ))
    }
}

/// A decision call's place among the `max_concurrent_calls`, given back when dropped: when
/// the call is answered, or when the client resets it.
#[derive(Debug)]
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The decision API a request path names, if any.
fn decision_api(path: &str) -> Option<Api> {
    match path {
        "/cedarpdp.v1.Authorizer/IsAuthorized" => Some(Api::IsAuthorized),
        "/cedarpdp.v1.Authorizer/BatchIsAuthorized" => Some(Api::Batch),
        "/envoy.service.auth.v3.Authorization/Check" => Some(Api::ExtAuthz),
        _ => None,
    }
}

/// The `grpc-timeout` a client sent, if it is one: up to 8 digits and a unit (`H`, `M`,
/// `S`, `m`, `u`, `n`). A malformed value is ignored, as other gRPC servers do, and the
/// server's own timeout still applies.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Reads a shed call's message to its end without decoding it, for at most `limit` bytes
/// (the gRPC frame's header included) and until `deadline`. Answering before the request
/// has ended would make hyper reset the stream, and an HTTP/2 server closes a connection
/// after enough resets (1,024 in hyper, a defence against reset floods): a client shed
/// that often would lose its connection and every call on it. Past either bound the answer
/// goes out anyway.
async fn discard(mut body: Incoming, limit: usize, deadline: Option<Instant>) {
    let drain = async {
        let mut read = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                read = read.saturating_add(data.len());
                if read > limit.saturating_add(5) {
                    return;
                }
            }
        }
    };
    match deadline {
        Some(deadline) => {
            let _ = tokio::time::timeout_at(deadline, drain).await;
        }
        None => drain.await,
    }
}

impl Admission {
    /// Serves an ext_authz check: its message is read whole first, so that one larger than
    /// `max_message_bytes` gets a deny (tonic's own limit would answer it with a gRPC error,
    /// which an Envoy set to fail open lets through); the rest of it is read and dropped.
    async fn check(
        &self,
        routes: Routes,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let (parts, mut body) = request.into_parts();
        let limit = self.max_message_bytes.saturating_add(5);
        let mut message = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                // The stream broke: whatever arrived is not a check; tonic refuses it.
                break;
            };
            let Some(data) = frame.data_ref() else {
                continue;
            };
            if message.len() + data.len() > limit {
                self.metrics.refused(Api::ExtAuthz, Reason::Limit);
                discard(body, usize::MAX, None).await;
                return Ok(response::as_grpc_http(&response::too_large(
                    self.max_message_bytes,
                )));
            }
            message.extend_from_slice(data);
        }
        let whole = Request::from_parts(parts, Full::new(message.freeze()));
        routes.oneshot(whole).await
    }

    /// The answer for a call past its deadline: DEADLINE_EXCEEDED, except that an ext_authz
    /// check gets a 504 deny (an Envoy set to fail open would let a gRPC error through).
    /// A decision call's timeout is counted.
    fn timed_out(&self, api: Option<Api>, timeout: Duration) -> Response<Body> {
        if let Some(api) = api {
            self.metrics.refused(api, Reason::Timeout);
        }
        if api == Some(Api::ExtAuthz) {
            return response::as_grpc_http(&response::timed_out(timeout));
        }
        Status::deadline_exceeded(format!(
            "the call was not answered within its deadline of {timeout:?} (the shorter of \
             request_timeout_ms and the client's grpc-timeout)"
        ))
        .into_http()
    }
}

/// [`Admission`] for the calls of one connection, as hyper calls it.
#[derive(Debug, Clone)]
pub(crate) struct Admitting<C> {
    admission: Admission,
    connect_info: C,
}

/// What [`Admitting`] answers with.
type Responding = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<C> hyper::service::Service<Request<Incoming>> for Admitting<C>
where
    C: Clone + Send + Sync + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Responding;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let arrived = Instant::now();
        let admission = &self.admission;
        let timeout = grpc_timeout(request.headers()).map_or(admission.request_timeout, |t| {
            t.min(admission.request_timeout)
        });
        let deadline = arrived.checked_add(timeout);
        let mut slot = None;
        let api = decision_api(request.uri().path());
        if let Some(api) = api {
            slot = admission.slots.take(api);
            if slot.is_none() {
                if api != Api::ExtAuthz {
                    let shed = admission.overloaded().into_http();
                    let limit = admission.max_message_bytes;
                    return Box::pin(async move {
                        discard(request.into_body(), limit, deadline).await;
                        Ok(shed)
                    });
                }
                request.extensions_mut().insert(Overloaded);
            }
        }
        request.extensions_mut().insert(self.connect_info.clone());
        let routes = admission.routes.clone();
        let admission = admission.clone();
        Box::pin(async move {
            let _slot = slot;
            // Past the deadline already, after waiting for a worker: the caller has given
            // up, and deciding now would only take time from calls that can still be
            // answered in time.
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Ok(admission.timed_out(api, timeout));
            }
            let served = async {
                if api == Some(Api::ExtAuthz) {
                    return admission.check(routes, request).await;
                }
                routes.oneshot(request).await
            };
            let Some(deadline) = deadline else {
                return served.await;
            };
            match tokio::time::timeout_at(deadline, served).await {
                Ok(answer) => answer,
                Err(_) => Ok(admission.timed_out(api, timeout)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::codegen::http::HeaderValue;

    fn timeout_of(value: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", HeaderValue::from_str(value).unwrap());
        grpc_timeout(&headers)
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(timeout_of("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(timeout_of("3M"), Some(Duration::from_secs(180)));
        assert_eq!(timeout_of("4S"), Some(Duration::from_secs(4)));
        assert_eq!(timeout_of("250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            timeout_of("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(timeout_of("7n"), Some(Duration::from_nanos(7)));
    }

    #[test]
    fn malformed_grpc_timeouts_are_ignored() {
        for value in [
            "",
            "m",
            "100",
            "123456789m",
            "-1m",
            "1.5S",
            "10x",
            "1 S",
            "١m",
        ] {
            assert_eq!(timeout_of(value), None, "{value:?}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn only_decision_paths_are_limited() {
        assert_eq!(
            decision_api("/cedarpdp.v1.Authorizer/IsAuthorized"),
            Some(Api::IsAuthorized)
        );
        assert_eq!(
            decision_api("/cedarpdp.v1.Authorizer/BatchIsAuthorized"),
            Some(Api::Batch)
        );
        assert_eq!(
            decision_api("/envoy.service.auth.v3.Authorization/Check"),
            Some(Api::ExtAuthz)
        );
        for path in [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/cedarpdp.v1.Authorizer/Unknown",
        ] {
            assert_eq!(decision_api(path), None, "{path}");
        }
    }

    #[test]
    fn slots_are_counted_up_to_the_limit_and_given_back() {
        let metrics = Metrics::new();
        let slots = CallSlots::new(metrics.clone(), 2);
        let first = slots.take(Api::IsAuthorized).expect("one of two");
        let second = slots.take(Api::Batch).expect("two of two");
        assert!(slots.take(Api::ExtAuthz).is_none(), "three of two");
        assert_eq!(slots.in_flight.load(Ordering::Relaxed), 2);
        drop(first);
        let third = slots.take(Api::IsAuthorized).expect("a freed slot");
        drop((second, third));
        assert_eq!(slots.in_flight.load(Ordering::Relaxed), 0);
        assert!(metrics.render().contains(
            "cedar_pdp_requests_rejected_total{api=\"ext_authz\",reason=\"overloaded\"} 1"
        ));
    }
}
