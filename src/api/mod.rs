//! The network surface: the `cedarpdp.v1.Authorizer` service, Envoy's
//! `envoy.service.auth.v3.Authorization` ([`ExtAuthzService`]), `grpc.health.v1.Health`
//! and server reflection (v1 and v1alpha) on one port, the Prometheus `/metrics` endpoint on
//! another ([`metrics`]), and the server loop with graceful shutdown.
//!
//! This is the only module that knows tonic. It converts wire types to engine types
//! ([`convert`]), engine errors to status (`status`), and serves whatever snapshot the
//! [`PolicyStore`] holds at the moment each call starts.

mod authorizer;
mod convert;
mod ext_authz;
mod metrics;
mod observe;
pub mod request_id;
mod status;

use std::{future::Future, sync::Arc};

use tokio::{net::TcpListener, sync::watch};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

pub use authorizer::AuthorizerService;
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
    /// The transport failed.
    #[error("gRPC transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
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
    let metrics_server = tokio::spawn(serve_metrics(
        telemetry.metrics.clone(),
        listeners.metrics,
        async {
            let _ = metrics_stopped.await;
        },
    ));
    let served = serve_grpc(config, store, telemetry, listeners.grpc, shutdown).await;
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
) -> Result<(), ServeError> {
    let limits = &config.limits;
    let engine = Arc::new(Engine::new(EngineOptions::new(
        config.validate_requests,
        limits,
    )));
    let ext_authz = ExtAuthzService::new(
        store.clone(),
        engine.clone(),
        config.ext_authz.compile()?,
        limits.max_value_depth,
        telemetry.metrics.clone(),
        telemetry.audit.clone(),
    );
    let ext_authz = AuthorizationServer::new(ext_authz)
        .max_decoding_message_size(limits.max_message_bytes)
        .max_encoding_message_size(limits.max_message_bytes);
    let authorizer = AuthorizerService::new(
        store,
        engine,
        limits.max_value_depth,
        limits.max_batch_items,
        telemetry.metrics,
        telemetry.audit,
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

    let (stopping_tx, mut stopping_rx) = watch::channel(false);
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: no new calls, finishing calls in flight");
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
    };
    let grace = config.shutdown_grace;
    let server = Server::builder()
        .timeout(limits.request_timeout)
        .add_service(authorizer)
        .add_service(ext_authz)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        // Nagle's algorithm would hold a small response back until the caller's delayed
        // ACK: tens of milliseconds on a sub-millisecond decision.
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), signal);
    let deadline = async move {
        if stopping_rx.wait_for(|stopping| *stopping).await.is_err() {
            // The server ended before any shutdown: nothing to time out.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server => result?,
        () = deadline => tracing::warn!(
            grace_seconds = grace.as_secs_f64(),
            "calls still in flight after the shutdown grace period; stopping anyway"
        ),
    }
    Ok(())
}
