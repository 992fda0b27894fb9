//! The gRPC port: the `cedarpdp.v1.Authorizer` and ext_authz front ends, health and
//! reflection (v1 and v1alpha) as one set of routes, each call admitted ([`admission`])
//! on the connection's task, connections accepted plaintext or TLS ([`incoming`]) and
//! served by hyper ([`connections`]) until the shutdown signal, then drained.
//!
//! [`admission`]: super::admission
//! [`incoming`]: super::incoming
//! [`connections`]: super::connections

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch};
use tonic::service::Routes;
use tonic_health::server::HealthReporter;

use super::{
    AuthorizerService, ExtAuthzService,
    admission::{Admission, CallSlots},
    callers::CallerPolicy,
    connections,
    ext_authz::rules::ExtAuthz,
    incoming,
    tls::{Alpn, ServerTls},
};
use crate::{
    config::{Config, ConfigError, TlsConfig},
    decide::Decider,
    policy::PolicyStore,
    proto::{
        FILE_DESCRIPTOR_SET, cedarpdp::v1::authorizer_server::AuthorizerServer,
        envoy::service::auth::v3::authorization_server::AuthorizationServer,
    },
};

/// The gRPC port could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// The `[ext_authz]` table cannot be compiled; the message names the key.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Building the reflection service failed (a broken descriptor set).
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// The services of the gRPC port, built and ready to serve.
#[derive(Debug)]
pub struct GrpcPort {
    routes: Routes,
    health: HealthReporter,
    authorizer: AuthorizerService,
    ext_authz: ExtAuthzService,
}

/// Names of the services health reports on, the server as a whole (`""`) first.
const SERVICES: [&str; 3] = [
    "",
    <AuthorizerServer<AuthorizerService> as tonic::server::NamedService>::NAME,
    <AuthorizationServer<ExtAuthzService> as tonic::server::NamedService>::NAME,
];

impl GrpcPort {
    /// Builds the services of `config` over `store`, deciding with `decider`; the
    /// `[ext_authz]` table is compiled here, once.
    pub async fn new(
        config: &Config,
        store: Arc<PolicyStore>,
        decider: Arc<Decider>,
    ) -> Result<Self, GrpcError> {
        let limits = &config.limits;
        let callers = |list: fn(&TlsConfig) -> &Option<Vec<String>>| {
            CallerPolicy::new(config.tls.as_ref().and_then(|tls| list(tls).clone()))
        };
        let rules = ExtAuthz::compile(&config.ext_authz)?;
        let unmapped = rules.unmapped_grpc_actions(&store.current());
        if !unmapped.is_empty() {
            // Check once made a gRPC call's action its path from the client's
            // content-type; a policy written for that now matches nothing Check asks.
            tracing::warn!(
                actions = ?unmapped,
                "policies name gRPC-method actions that no [ext_authz] route produces: Check \
                 takes the action from the method, path and routes only (never content-type), \
                 so add a route with action = \"{{path}}\" for gRPC services (docs/envoy.md)"
            );
        }
        let ext_authz = ExtAuthzService::new(
            store.clone(),
            decider.clone(),
            rules,
            limits.max_value_depth,
            callers(|tls| &tls.ext_authz_callers),
        );
        let ext_authz_service = ext_authz.clone();
        // The gRPC port's admission enforces max_message_bytes on checks itself, answering
        // with a deny: tonic's limits would answer with a gRPC error, which an Envoy set to
        // fail open lets through. Answers are bounded by what the checks held.
        let ext_authz = AuthorizationServer::new(ext_authz)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let authorizer = AuthorizerService::new(
            store,
            decider,
            limits,
            callers(|tls| &tls.authorizer_callers),
        );
        let authorizer_service = authorizer.clone();
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
        let routes = Routes::new(authorizer)
            .add_service(ext_authz)
            .add_service(health_service)
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?);
        Ok(Self {
            routes,
            health,
            authorizer: authorizer_service,
            ext_authz: ext_authz_service,
        })
    }

    /// The `cedarpdp.v1.Authorizer` front end, to call in process (the fuzz target).
    pub fn authorizer(&self) -> &AuthorizerService {
        &self.authorizer
    }

    /// The ext_authz front end, to call in process (the fuzz target).
    pub fn ext_authz(&self) -> &ExtAuthzService {
        &self.ext_authz
    }

    /// Serves `listener` (with `tls`, when given; shedding calls past `slots`)
    /// until `shutdown` resolves, then: health
    /// says NOT_SERVING and `stopping` turns true (so `/readyz` answers 503); calls keep
    /// being answered for the configured drain; the port stops taking new connections and
    /// calls; calls in flight finish for up to the shutdown grace. Returns when the last
    /// connection has closed or the grace has run out.
    pub async fn serve(
        self,
        config: &Config,
        listener: TcpListener,
        tls: Option<Arc<ServerTls>>,
        slots: CallSlots,
        shutdown: impl Future<Output = ()>,
        stopping: watch::Sender<bool>,
    ) {
        let Self { routes, health, .. } = self;
        let (drain, grace) = (config.drain, config.shutdown_grace);
        let mut stopped = stopping.subscribe();
        let signal = async move {
            shutdown.await;
            stop_serving(health, &stopping, drain).await;
        };
        let admission = Admission::new(routes.prepare(), slots, &config.limits);
        let deadline = async move {
            if stopped.wait_for(|stopping| *stopping).await.is_err() {
                // The server ended before any shutdown: nothing to time out.
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(drain.saturating_add(grace)).await;
        };
        let limits = &config.limits;
        let streams = limits.max_concurrent_streams;
        match tls {
            None => {
                let incoming = incoming::plaintext(listener, limits.max_connections);
                let served = connections::serve(incoming, admission, streams, signal);
                run(served, deadline, grace).await;
            }
            Some(tls) => {
                tracing::info!(mutual = tls.mutual(), "gRPC port serves TLS 1.2/1.3 only");
                let incoming = incoming::tls(listener, limits.max_connections, tls, Alpn::H2);
                let served = connections::serve(incoming, admission, streams, signal);
                run(served, deadline, grace).await;
            }
        }
    }
}

/// The first steps of a shutdown: NOT_SERVING everywhere, answering on for `drain` while
/// callers move away, then the health services unregistered.
async fn stop_serving(mut health: HealthReporter, stopping: &watch::Sender<bool>, drain: Duration) {
    for service in SERVICES {
        health
            .set_service_status(service, tonic_health::ServingStatus::NotServing)
            .await;
    }
    let _ = stopping.send(true);
    if !drain.is_zero() {
        tracing::info!(
            drain_seconds = drain.as_secs_f64(),
            "draining: still answering while callers move away"
        );
        tokio::time::sleep(drain).await;
    }
    // Health `Watch` streams never end by themselves: a client watching (gRPC client-side
    // health checking) would hold the shutdown for the whole grace. Unregistering the
    // services ends them, after they have carried NOT_SERVING.
    for service in SERVICES {
        health.clear_service_status(service).await;
    }
    tracing::info!("shutting down: no new calls, finishing calls in flight");
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
