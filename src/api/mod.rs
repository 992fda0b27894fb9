//! The network surface: the `cedarpdp.v1.Authorizer` service, Envoy's
//! `envoy.service.auth.v3.Authorization` ([`ExtAuthzService`]), `grpc.health.v1.Health`
//! and server reflection (v1 and v1alpha) on one port, the Prometheus `/metrics` endpoint on
//! another ([`metrics`]), and the server loop with graceful shutdown.
//!
//! This is the only module that knows tonic. It converts wire types to engine types
//! ([`convert`]), engine errors to status (`status`), and serves whatever snapshot the
//! [`PolicyStore`] holds at the moment each call starts.

mod admission;
mod authorizer;
mod callers;
pub mod codec;
mod connections;
mod convert;
mod ext_authz;
pub mod incoming;
mod metrics;
mod observe;
pub mod request_id;
mod status;
mod throttle;

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch};
use tonic::service::Routes;

use admission::Admission;
pub use authorizer::AuthorizerService;
pub use callers::CallerPolicy;
pub use ext_authz::ExtAuthzService;
pub use metrics::serve_metrics;

use crate::{
    config::Config,
    engine::{Engine, EngineOptions},
    policy::PolicyStore,
    proto::{
        FILE_DESCRIPTOR_SET, cedarpdp::v1::authorizer_server::AuthorizerServer,
        envoy::service::auth::v3::authorization_server::AuthorizationServer,
    },
    telemetry::{AuditLog, Metrics},
    tls::{CertWatcher, ServerTls},
};

/// Where [`serve`] reports: the metrics registry and the decision log.
#[derive(Debug, Clone)]
pub struct Telemetry {
    /// Counted into by every call and reload; rendered at `/metrics`.
    pub metrics: Metrics,
    /// One record per decision (or none, when off).
    pub audit: Arc<AuditLog>,
}

impl Telemetry {
    /// Metrics only; the audit log off (tests and benchmarks).
    pub fn metrics_only(metrics: Metrics) -> Self {
        Self {
            audit: Arc::new(AuditLog::off(metrics.clone())),
            metrics,
        }
    }
}

/// The sockets [`serve`] answers on, bound by the caller (so tests can bind port 0 and
/// read the address first).
#[derive(Debug)]
pub struct Listeners {
    /// gRPC: the authorizer, health and reflection.
    pub grpc: TcpListener,
    /// Plain HTTP: `GET /metrics`.
    pub metrics: TcpListener,
}

/// The server could not start or failed while running.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration cannot be served (an `[ext_authz]` mistake `Config::check`
    /// would also have named).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Building the reflection service failed (a broken descriptor set).
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The TLS files cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The TLS files cannot be watched for rotation.
    #[error("cannot watch the TLS files for changes: {0}")]
    TlsWatch(#[from] notify::Error),
}

/// Serves `store` until `shutdown` resolves, then stops taking calls, marks itself
/// NOT_SERVING and lets calls in flight finish for up to the configured grace. The
/// metrics endpoint answers until the gRPC server has stopped.
pub async fn serve(
    config: &Config,
    store: Arc<PolicyStore>,
    telemetry: Telemetry,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let (stopping_tx, stopping_rx) = watch::channel(false);
    let metrics_server = tokio::spawn(serve_metrics(
        telemetry.metrics.clone(),
        stopping_rx.clone(),
        listeners.metrics,
        async {
            let _ = metrics_stopped.await;
        },
    ));
    let stopping = (stopping_tx, stopping_rx);
    let served = serve_grpc(config, store, telemetry, listeners.grpc, shutdown, stopping).await;
    let _ = stop_metrics.send(());
    let _ = metrics_server.await;
    served
}

/// The gRPC half of [`serve`].
async fn serve_grpc(
    config: &Config,
    store: Arc<PolicyStore>,
    telemetry: Telemetry,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    (stopping_tx, mut stopping_rx): (watch::Sender<bool>, watch::Receiver<bool>),
) -> Result<(), ServeError> {
    let limits = &config.limits;
    let engine = Arc::new(Engine::new(EngineOptions::new(
        config.validate_requests,
        limits,
    )));
    let tls = match &config.tls {
        Some(tls) => Some(Arc::new(ServerTls::load(tls.files.clone())?)),
        None => None,
    };
    let callers = |list: fn(&crate::config::TlsConfig) -> &Option<Vec<String>>| {
        CallerPolicy::new(config.tls.as_ref().and_then(|tls| list(tls).clone()))
    };
    let ext_authz = ExtAuthzService::new(
        store.clone(),
        engine.clone(),
        config.ext_authz.compile()?,
        limits.max_value_depth,
        telemetry.clone(),
        callers(|tls| &tls.ext_authz_callers),
    );
    let ext_authz = AuthorizationServer::new(ext_authz)
        .max_decoding_message_size(limits.max_message_bytes)
        .max_encoding_message_size(limits.max_message_bytes);
    let metrics = telemetry.metrics.clone();
    let authorizer = AuthorizerService::new(
        store,
        engine,
        limits,
        telemetry,
        callers(|tls| &tls.authorizer_callers),
    );
    let authorizer = AuthorizerServer::new(authorizer)
        .max_decoding_message_size(limits.max_message_bytes)
        .max_encoding_message_size(limits.max_message_bytes);

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AuthorizerServer<AuthorizerService>>()
        .await;
    health
        .set_serving::<AuthorizationServer<ExtAuthzService>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let drain = config.drain;
    let mut health = health;
    let signal = async move {
        shutdown.await;
        health
            .set_not_serving::<AuthorizerServer<AuthorizerService>>()
            .await;
        health
            .set_not_serving::<AuthorizationServer<ExtAuthzService>>()
            .await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let _ = stopping_tx.send(true);
        if !drain.is_zero() {
            tracing::info!(
                drain_seconds = drain.as_secs_f64(),
                "draining: still answering while callers move away"
            );
            tokio::time::sleep(drain).await;
        }
        // Health `Watch` streams never end by themselves: a client watching (gRPC
        // client-side health checking) would hold the shutdown for the whole grace.
        // Unregistering the services ends them, after they have carried NOT_SERVING.
        for service in [
            "",
            <AuthorizerServer<AuthorizerService> as tonic::server::NamedService>::NAME,
            <AuthorizationServer<ExtAuthzService> as tonic::server::NamedService>::NAME,
        ] {
            health.clear_service_status(service).await;
        }
        tracing::info!("shutting down: no new calls, finishing calls in flight");
    };
    let grace = config.shutdown_grace;
    let routes = Routes::new(authorizer)
        .add_service(ext_authz)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .prepare();
    let admission = Admission::new(routes, metrics, limits);
    let streams = limits.max_concurrent_streams;
    let deadline = async move {
        if stopping_rx.wait_for(|stopping| *stopping).await.is_err() {
            // The server ended before any shutdown: nothing to time out.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(drain.saturating_add(grace)).await;
    };
    match tls {
        None => {
            let incoming = incoming::plaintext(listener, limits.max_connections);
            let served = connections::serve(incoming, admission, streams, signal);
            run(served, deadline, grace).await;
        }
        Some(tls) => {
            // Rotations are followed for as long as the server runs.
            let _watcher = CertWatcher::start(tls.clone())?;
            tracing::info!(mutual = tls.mutual(), "gRPC port serves TLS 1.2/1.3 only");
            let incoming = incoming::tls(listener, limits.max_connections, tls);
            let served = connections::serve(incoming, admission, streams, signal);
            run(served, deadline, grace).await;
        }
    }
    Ok(())
}

/// Runs `served` until it ends (every connection closed after the shutdown signal) or
/// `deadline` passes.
async fn run(
    served: impl Future<Output = ()>,
    deadline: impl Future<Output = ()>,
    grace: Duration,
) {
    tokio::select! {
        () = served => {}
        () = deadline => tracing::warn!(
            grace_seconds = grace.as_secs_f64(),
            "calls still in flight after the shutdown grace period; stopping anyway"
        ),
    }
}
