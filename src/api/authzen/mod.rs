//! The AuthZEN 1.0 front end: the Authorization API's HTTPS binding (evaluation,
//! evaluations, subject/resource/action search, and the PDP metadata) on a listener of
//! its own, beside the gRPC port, with the same TLS and caller allow-list, the same
//! limit on calls in flight and deadline, and the same metrics (`api="authzen"`) and
//! audit records. A wire adapter only: bodies are read into questions ([`wire`]), the
//! decider answers them (off the async workers), and the answers are written back.
//!
//! HTTP status codes follow the specification: a decision, allow or deny, is always a
//! `200` with `decision` true or false; `400` is a request that cannot be read (its JSON
//! error names the field); `403` a caller off the allow-list; `500` a failure of the
//! server. Past `max_concurrent_calls` a call gets `503`, past its deadline `504`: no
//! error status is ever a decision, so a PEP that reads `decision` fails closed.

mod wire;

use std::{
    convert::Infallible, future::Future, net::SocketAddr, pin::pin, sync::Arc, time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse as _, Response},
    routing::{get, post},
};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use rustls::pki_types::CertificateDer;
use serde_json::{Value as Json, json};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::watch,
};
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};
use tower::ServiceExt as _;

use self::wire::{Names, PageBounds, SearchKind};
use super::{
    admission::CallSlots,
    callers::CallerPolicy,
    incoming,
    tls::{Alpn, ServerTls},
};
use crate::{
    config::Config,
    decide::{Api, Call, Decider, EntitiesInput, Reason, Refusal, RequestId},
    policy::{PolicyStore, Snapshot},
    telemetry::trace,
};

/// The service name callers are refused for.
const SERVICE: &str = "AuthZEN";

/// The paths served, as the specification's HTTPS binding names them.
const EVALUATION: &str = "/access/v1/evaluation";
const EVALUATIONS: &str = "/access/v1/evaluations";
const SEARCH_SUBJECT: &str = "/access/v1/search/subject";
const SEARCH_RESOURCE: &str = "/access/v1/search/resource";
const SEARCH_ACTION: &str = "/access/v1/search/action";
const METADATA: &str = "/.well-known/authzen-configuration";

/// The caller's request id header.
const REQUEST_ID: &str = "x-request-id";

/// Who is at the other end of a connection: its address, and under mutual TLS the first
/// certificate of its verified chain.
#[derive(Debug, Clone, Default)]
struct Peer {
    addr: Option<SocketAddr>,
    certificate: Option<Arc<CertificateDer<'static>>>,
}

/// A connection's [`Peer`], from what tonic's acceptors say of it.
trait PeerOf {
    fn peer(&self) -> Peer;
}

impl PeerOf for TcpConnectInfo {
    fn peer(&self) -> Peer {
        Peer {
            addr: self.remote_addr(),
            certificate: None,
        }
    }
}

impl PeerOf for TlsConnectInfo<TcpConnectInfo> {
    fn peer(&self) -> Peer {
        Peer {
            addr: self.get_ref().remote_addr(),
            certificate: self
                .peer_certs()
                .and_then(|chain| chain.first().cloned().map(Arc::new)),
        }
    }
}

/// What every AuthZEN call shares.
#[derive(Debug)]
struct Shared {
    store: Arc<PolicyStore>,
    decider: Arc<Decider>,
    names: Names,
    bounds: PageBounds,
    callers: CallerPolicy,
    slots: CallSlots,
    request_timeout: Duration,
    max_body_bytes: usize,
    /// Most items in one evaluations call (`max_batch_items`).
    max_items: usize,
    /// The configured `policy_decision_point`, if any.
    base_url: Option<String>,
    tls: bool,
}

/// The AuthZEN port's routes, ready to serve.
#[derive(Debug, Clone)]
pub struct AuthzenPort {
    router: Router,
}

impl AuthzenPort {
    /// The routes of `config`'s AuthZEN API over `store`, deciding with `decider`, taking
    /// calls in flight from `slots` (shared with the gRPC port).
    pub fn new(
        config: &Config,
        store: Arc<PolicyStore>,
        decider: Arc<Decider>,
        slots: CallSlots,
    ) -> Self {
        let authzen = &config.authzen;
        let shared = Arc::new(Shared {
            store,
            decider,
            names: Names::new(authzen.namespace.as_deref()),
            bounds: PageBounds {
                default_limit: authzen.default_page_limit,
                max_limit: authzen.max_page_limit,
                max_evaluations: authzen.max_search_evaluations,
            },
            callers: CallerPolicy::new(
                config
                    .tls
                    .as_ref()
                    .and_then(|tls| tls.authzen_callers.clone()),
            ),
            slots,
            request_timeout: config.limits.request_timeout,
            max_body_bytes: config.limits.max_message_bytes,
            max_items: config.limits.max_batch_items,
            base_url: authzen.policy_decision_point.clone(),
            tls: config.tls.is_some(),
        });
        let router = Router::new()
            .route(EVALUATION, post(evaluation))
            .route(EVALUATIONS, post(evaluations))
            .route(SEARCH_SUBJECT, post(search_subject))
            .route(SEARCH_RESOURCE, post(search_resource))
            .route(SEARCH_ACTION, post(search_action))
            .route(METADATA, get(metadata))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .with_state(shared);
        Self { router }
    }

    /// Serves `listener` (TLS when `tls` is given, offering HTTP/1.1 and HTTP/2) until
    /// `shutdown` resolves; then stops taking connections and lets the open ones finish
    /// their requests for up to `grace`.
    pub async fn serve(
        self,
        config: &Config,
        listener: TcpListener,
        tls: Option<Arc<ServerTls>>,
        shutdown: impl Future<Output = ()>,
        grace: Duration,
    ) {
        let max = config.limits.max_connections;
        let streams = config.limits.max_concurrent_streams;
        match tls {
            None => {
                let incoming = incoming::plaintext(listener, max);
                serve_connections(incoming, self.router, streams, shutdown, grace).await;
            }
            Some(tls) => {
                let incoming = incoming::tls(listener, max, tls, Alpn::Http);
                serve_connections(incoming, self.router, streams, shutdown, grace).await;
            }
        }
    }
}

/// Serves every connection `incoming` yields with `router` (HTTP/2: at most
/// `max_streams` requests at once on one) until `shutdown` resolves, then closes them
/// gracefully, waiting at most `grace`.
async fn serve_connections<I, IO, IE>(
    incoming: I,
    router: Router,
    max_streams: usize,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: PeerOf,
    IE: std::fmt::Display,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(incoming::HANDSHAKE_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(u32::try_from(max_streams).unwrap_or(u32::MAX))
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    let (stop, stopping) = watch::channel(());
    {
        let mut incoming = pin!(incoming);
        let mut shutdown = pin!(shutdown);
        loop {
            let io = tokio::select! {
                () = &mut shutdown => break,
                io = incoming.next() => match io {
                    Some(Ok(io)) => io,
                    Some(Err(error)) => {
                        tracing::debug!(%error, "accepting an AuthZEN connection failed");
                        continue;
                    }
                    None => break,
                },
            };
            let peer = io.connect_info().peer();
            let router = router.clone();
            let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
                request.extensions_mut().insert(peer.clone());
                let router = router.clone();
                async move {
                    let request = request.map(Body::new);
                    Ok::<_, Infallible>(router.oneshot(request).await.into_response())
                }
            });
            let builder = builder.clone();
            let mut stopping = stopping.clone();
            tokio::spawn(async move {
                let connection = builder.serve_connection(TokioIo::new(io), service);
                let mut connection = pin!(connection);
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(error) = result {
                            tracing::debug!(%error, "AuthZEN connection ended with an error");
                        }
                        return;
                    }
                    _ = stopping.changed() => connection.as_mut().graceful_shutdown(),
                }
                let _ = connection.await;
            });
        }
    }
    drop(stopping);
    let _ = stop.send(());
    let _ = tokio::time::timeout(grace, stop.closed()).await;
}

/// Which POST endpoint a call came to.
#[derive(Debug, Clone, Copy)]
enum Endpoint {
    Evaluation,
    Evaluations,
    Search(SearchKind),
}

async fn evaluation(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    answer(shared, request, Endpoint::Evaluation).await
}

async fn evaluations(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    answer(shared, request, Endpoint::Evaluations).await
}

async fn search_subject(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    answer(shared, request, Endpoint::Search(SearchKind::Subject)).await
}

async fn search_resource(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    answer(shared, request, Endpoint::Search(SearchKind::Resource)).await
}

async fn search_action(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    answer(shared, request, Endpoint::Search(SearchKind::Action)).await
}

async fn not_found(request: Request) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        request_id_of(request.headers()).as_ref(),
        "path",
        &format!(
            "no AuthZEN endpoint at {}; see {METADATA}",
            request.uri().path()
        ),
    )
}

async fn method_not_allowed(request: Request) -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        request_id_of(request.headers()).as_ref(),
        "method",
        &format!(
            "{} is not served at {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// The PDP metadata: the endpoints actually served, under the configured base URL, or the
/// one the request was made to.
async fn metadata(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let id = request_id_of(request.headers());
    let base = match &shared.base_url {
        Some(base) => base.clone(),
        None => {
            let scheme = if shared.tls { "https" } else { "http" };
            // The request line's authority (HTTP/2's `:authority`) first, then the one
            // Host header: two Host headers name no host.
            let hosts = request.headers().get_all(header::HOST);
            let one_host = match (hosts.iter().next(), hosts.iter().nth(1)) {
                (Some(host), None) => host.to_str().ok(),
                _ => None,
            };
            let host = request
                .uri()
                .authority()
                .map(|a| a.as_str())
                .or(one_host)
                .filter(|h| is_host(h));
            let Some(host) = host else {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    id.as_ref(),
                    "host",
                    "the request names no usable Host, and authzen.policy_decision_point \
                     is not set",
                );
            };
            format!("{scheme}://{host}")
        }
    };
    let body = json!({
        "policy_decision_point": base,
        "access_evaluation_endpoint": format!("{base}{EVALUATION}"),
        "access_evaluations_endpoint": format!("{base}{EVALUATIONS}"),
        "search_subject_endpoint": format!("{base}{SEARCH_SUBJECT}"),
        "search_resource_endpoint": format!("{base}{SEARCH_RESOURCE}"),
        "search_action_endpoint": format!("{base}{SEARCH_ACTION}"),
    });
    let mut response = json_response(StatusCode::OK, id.as_ref(), &body);
    // Cacheable only when the URLs are the configured ones: URLs taken from the request's
    // Host must not be served from a shared cache to a client that asked another host.
    let cache = if shared.base_url.is_some() {
        "public, max-age=300"
    } else {
        "no-store"
    };
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

/// Whether `host` is a plain `host[:port]` (names, IPv4, bracketed IPv6): anything else
/// is not echoed back into the metadata.
fn is_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
}

/// The caller's `X-Request-ID`, when it is a sensible token.
fn request_id_of(headers: &HeaderMap) -> Option<RequestId> {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(RequestId::parse)
}

/// Whether the request says its body is JSON (`application/json`, parameters allowed).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// Answers one POST call: admitted (a slot, the caller), its body read within the limit
/// and deadline, decided off the async workers, every refusal an error status.
async fn answer(shared: Arc<Shared>, request: Request, endpoint: Endpoint) -> Response {
    let (parts, body) = request.into_parts();
    let peer = parts.extensions.get::<Peer>().cloned().unwrap_or_default();
    let given = request_id_of(&parts.headers);
    let decider = &shared.decider;
    let deadline = tokio::time::Instant::now() + shared.request_timeout;
    let mut call = decider
        .start(Api::Authzen, given, peer.addr)
        .until(deadline.into_std());
    let admission = shared
        .callers
        .admit_certificate(peer.certificate.as_deref());
    if let Err(refusal) = decider.admit(&mut call, SERVICE, admission) {
        return refused(&call, &refusal);
    }
    let refuse = |refusal: Refusal| {
        decider.refuse(&call, &shared.store.current(), &refusal, None);
        refused(&call, &refusal)
    };
    if !is_json(&parts.headers) {
        return refuse(Refusal::invalid(
            "content-type",
            "AuthZEN requests are JSON: send Content-Type: application/json",
        ));
    }
    let announced = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > shared.max_body_bytes as u64) {
        return refuse(too_large(shared.max_body_bytes));
    }
    // The body is read before the call takes a slot: a client that sends its body slowly
    // holds a connection (bounded by max_connections) until the deadline, never a slot
    // that calls on either port need.
    let body = match tokio::time::timeout_at(deadline, read_body(body, shared.max_body_bytes)).await
    {
        Ok(Ok(body)) => body,
        Ok(Err(refusal)) => return refuse(refusal),
        Err(_) => return timed_out(&shared, &call),
    };
    let Some(slot) = shared.slots.take(Api::Authzen) else {
        let mut response = error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(call.id()),
            "",
            &format!(
                "the server has {} calls in flight, its limit (max_concurrent_calls); retry \
                 with backoff or on another replica",
                shared.slots.limit()
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    call.weighs(body.len());
    // Searches and batches can be long: they keep one decision thread free for the rest.
    let heavy = matches!(endpoint, Endpoint::Search(_) | Endpoint::Evaluations)
        || body.len() > super::authorizer::LIGHT_MESSAGE_BYTES;
    let (work, decided) = (shared.clone(), call.clone());
    let span = call.span();
    trace::continue_trace(&span, |name| {
        parts.headers.get(name).and_then(|v| v.to_str().ok())
    });
    let run = decider.off_workers(heavy, move || {
        // The slot is held while the work runs, even past a deadline the caller was
        // already answered at (the work stops at its next check of the deadline).
        let _slot = slot;
        let _in_span = span.enter();
        let snapshot = work.store.current();
        decide(&work, &decided, &snapshot, endpoint, &body)
    });
    match tokio::time::timeout_at(deadline, run).await {
        Err(_) => timed_out(&shared, &call),
        Ok(Err(failed)) => refused(&call, &decider.failed(&call, failed)),
        Ok(Ok(Err(refusal))) => refused(&call, &refusal),
        Ok(Ok(Ok(answer))) => json_response(StatusCode::OK, Some(call.id()), &answer),
    }
}

/// Decides one call's body on `snapshot`; a refusal of the whole call is reported here
/// (as the decider reports the ones it makes itself).
fn decide(
    shared: &Shared,
    call: &Call,
    snapshot: &Snapshot,
    endpoint: Endpoint,
    body: &[u8],
) -> Result<Json, Refusal> {
    let decider = &shared.decider;
    let refuse = |refusal: Refusal| {
        decider.refuse(call, snapshot, &refusal, None);
        refusal
    };
    let map = wire::parse_body(body).map_err(refuse)?;
    let names = &shared.names;
    let keys = decider.recorded_keys();
    let single = |map: &serde_json::Map<String, Json>| {
        let asked = wire::evaluation(names, snapshot, map, "", keys).map_err(refuse)?;
        let decision = decider.decide(call, snapshot, EntitiesInput::None, asked.question)?;
        let id = call.decision_id().to_owned();
        Ok(wire::decision(&decision, id, snapshot, &asked.dropped))
    };
    match endpoint {
        Endpoint::Evaluation => single(&map),
        Endpoint::Evaluations => {
            let (evaluations, defaults) =
                wire::evaluations(map, shared.max_items, shared.max_body_bytes).map_err(refuse)?;
            let Some(items) = evaluations.items else {
                return single(&defaults);
            };
            let mut dropped = Vec::with_capacity(items.len());
            let questions = items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let path = format!("evaluations[{i}]");
                    let asked = wire::item_object(item, &path)
                        .and_then(|item| wire::evaluation(names, snapshot, item, &path, keys));
                    match asked {
                        Ok(asked) => {
                            dropped.push(asked.dropped);
                            Ok(asked.question)
                        }
                        Err(refusal) => {
                            dropped.push(Vec::new());
                            Err(refusal)
                        }
                    }
                })
                .collect();
            let semantic = evaluations.semantic;
            let answers = decider
                .decide_each(call, snapshot, questions, |allowed| semantic.go_on(allowed))?;
            let stopped_early = answers.len() < items.len();
            let mut rendered: Vec<Json> = answers
                .iter()
                .zip(&dropped)
                .enumerate()
                .map(|(i, (answer, dropped))| {
                    let id = call.item_decision_id(i);
                    match answer {
                        Ok(decision) => wire::decision(decision, id, snapshot, dropped),
                        Err(refusal) => wire::refused_item(refusal, id),
                    }
                })
                .collect();
            if stopped_early && let Some(last) = rendered.last_mut() {
                last["context"]["reason"] = json!(semantic.name());
            }
            Ok(json!({"evaluations": rendered}))
        }
        Endpoint::Search(kind) => {
            let (request, search) =
                wire::search(names, snapshot, kind, &map, shared.bounds).map_err(refuse)?;
            let page = decider.search(call, snapshot, request)?;
            Ok(search.page(names, &page))
        }
    }
}

/// The refusal of a body over `limit` bytes.
fn too_large(limit: usize) -> Refusal {
    Refusal::limit(
        "body",
        format!("is larger than the limit of {limit} bytes (max_message_bytes)"),
    )
}

/// Reads a body of at most `limit` bytes.
async fn read_body(mut body: Body, limit: usize) -> Result<Bytes, Refusal> {
    let mut read = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Refusal::invalid("body", format!("cannot be read: {e}")))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        if read.len() + data.len() > limit {
            return Err(too_large(limit));
        }
        read.extend_from_slice(data);
    }
    Ok(read.freeze())
}

/// The answer to a call past its deadline (counted): `504`.
fn timed_out(shared: &Shared, call: &Call) -> Response {
    shared
        .decider
        .telemetry()
        .metrics
        .refused(Api::Authzen, Reason::Timeout);
    error_response(
        StatusCode::GATEWAY_TIMEOUT,
        Some(call.id()),
        "",
        &format!(
            "the call was not answered within request_timeout_ms ({:?})",
            shared.request_timeout
        ),
    )
}

/// The status and JSON error for a refusal.
fn refused(call: &Call, refusal: &Refusal) -> Response {
    let status = match refusal.reason() {
        Reason::Invalid | Reason::Limit => StatusCode::BAD_REQUEST,
        Reason::Unauthenticated => StatusCode::UNAUTHORIZED,
        Reason::CallerNotAllowed => StatusCode::FORBIDDEN,
        Reason::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        Reason::Timeout => StatusCode::GATEWAY_TIMEOUT,
        Reason::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error_response(
        status,
        Some(call.id()),
        refusal.field(),
        &refusal.to_string(),
    )
}

/// An error answer: `{"error": {"status", "field", "message"}}`.
fn error_response(
    status: StatusCode,
    id: Option<&RequestId>,
    field: &str,
    message: &str,
) -> Response {
    let body = json!({"error": {"status": status.as_u16(), "field": field, "message": message}});
    json_response(status, id, &body)
}

/// A JSON answer with the request id echoed.
fn json_response(status: StatusCode, id: Option<&RequestId>, body: &Json) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(id) = id
        && let Ok(value) = HeaderValue::from_str(id.as_str())
    {
        headers.insert(REQUEST_ID, value);
    }
    response
}
