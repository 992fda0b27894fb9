//! The server as a library: [`run`] (or [`Server::bind`] then [`Server::run`]) owns
//! everything `serve` is made of — the policy store and its watcher, the metrics and the
//! audit log, the decider, SIGHUP, the TLS files and their watcher, and the two
//! listeners — and shuts them down in a stated order. The binary, the tests, the
//! benchmarks and the fuzz target all start the server this way, so it is wired once.
//!
//! Start-up ([`Server::bind`]) does everything that can fail before anything is served:
//! TLS files, the `[ext_authz]` table, the policy directory, the audit sink, the watch,
//! the signal handler and both listeners. Shutdown ([`Server::run`], once its `shutdown`
//! future resolves):
//! 1. health reports NOT_SERVING and `/readyz` answers 503; calls are still answered for
//!    `drain_seconds` while callers move away;
//! 2. the gRPC port stops taking connections and calls and lets calls in flight finish,
//!    for up to `shutdown_grace_seconds`;
//! 3. the metrics endpoint stops;
//! 4. SIGHUP, the policy watcher and the TLS watcher stop;
//! 5. the audit log is flushed as the last handle to it goes.

use std::{future::Future, io, net::SocketAddr, path::PathBuf, sync::Arc};

use tokio::{net::TcpListener, sync::watch};

use crate::{
    api::{
        AuthzenPort, CallSlots, GrpcError, GrpcPort, serve_metrics,
        tls::{CertWatcher, ServerTls, TlsError},
    },
    config::Config,
    decide::{Decider, Pool, Shadow, Telemetry},
    policy::{
        LoadError, LoadOptions, PolicyStore, Rebuilt, Snapshot, WatchError, WatchOptions, Watcher,
    },
    telemetry::{
        AuditLog, Metrics,
        metrics::{PolicySetSummary, ReloadResult},
    },
};

/// The server could not start, or failed while running.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The policy directory does not load (an invalid one is exit code 1 in `serve`).
    #[error("cannot serve {}:\n{source}", dir.display())]
    Policies {
        /// The directory.
        dir: PathBuf,
        /// Every problem, with file and line.
        source: LoadError,
    },
    /// The gRPC port cannot be set up (an `[ext_authz]` mistake, named by its key).
    #[error(transparent)]
    Grpc(#[from] GrpcError),
    /// The TLS files cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The TLS files cannot be watched for rotation.
    #[error("cannot watch the TLS files for changes: {0}")]
    TlsWatch(#[source] notify::Error),
    /// The shadow policy directory cannot be read (an invalid one does not stop start-up:
    /// shadow evaluation waits until it loads).
    #[error("cannot read shadow policies {}:\n{source}", dir.display())]
    ShadowPolicies {
        /// The directory.
        dir: PathBuf,
        /// Every problem, with file and line.
        source: LoadError,
    },
    /// The policy directory cannot be watched.
    #[error("cannot watch the policy directory: {0}")]
    Watch(#[from] WatchError),
    /// The audit sink cannot be opened.
    #[error("cannot open the audit log: {0}")]
    Audit(#[source] io::Error),
    /// The decision threads cannot be started.
    #[error("cannot start the decision threads: {0}")]
    Threads(#[source] io::Error),
    /// A signal handler cannot be installed.
    #[error("cannot install the SIGHUP handler: {0}")]
    Signal(#[source] io::Error),
    /// A listener cannot be bound.
    #[error("cannot listen on {addr}{what}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// What for (empty for the gRPC port).
        what: &'static str,
        /// Why.
        source: io::Error,
    },
}

/// What the metrics say about `snapshot`.
fn summary(snapshot: &Snapshot) -> PolicySetSummary<'_> {
    PolicySetSummary {
        version: snapshot.version(),
        policies: snapshot.policy_count(),
        entities: snapshot.entity_count(),
        loaded_at: snapshot.loaded_at(),
    }
}

/// A server that has loaded its policies and bound its ports, ready to [`Server::run`].
#[derive(Debug)]
pub struct Server {
    config: Config,
    store: Arc<PolicyStore>,
    decider: Arc<Decider>,
    metrics: Metrics,
    watcher: Arc<Watcher>,
    /// The shadow directory's watcher, when there is a shadow set.
    shadow_watcher: Option<Arc<Watcher>>,
    grpc: GrpcPort,
    /// The AuthZEN port and its listener, when configured.
    authzen: Option<(AuthzenPort, TcpListener)>,
    slots: CallSlots,
    tls: Option<Arc<ServerTls>>,
    tls_watcher: Option<CertWatcher>,
    #[cfg(unix)]
    hangups: tokio::signal::unix::Signal,
    grpc_listener: TcpListener,
    metrics_listener: TcpListener,
}

impl Server {
    /// Starts everything `config` asks for except serving: reads the TLS files, compiles
    /// the `[ext_authz]` table, loads the policy directory (logging its warnings), opens
    /// the audit log, starts watching, installs the SIGHUP handler and binds both ports
    /// (port 0 picks a free one: see [`Server::grpc_addr`]).
    pub async fn bind(config: Config) -> Result<Self, ServeError> {
        let tls = match &config.tls {
            Some(tls) => Some(Arc::new(ServerTls::load(tls.files.clone())?)),
            None => None,
        };
        let options = LoadOptions::new(config.policy_validation, &config.limits);
        let (store, warnings) = PolicyStore::open(&config.policies, options).map_err(|source| {
            ServeError::Policies {
                dir: config.policies.clone(),
                source,
            }
        })?;
        for warning in warnings {
            tracing::warn!(location = %warning.location, "{}", warning.message);
        }
        let store = Arc::new(store);
        let metrics = Metrics::new();
        metrics.started(&summary(&store.current()));
        // Rotations are followed for as long as the server runs.
        let tls_watcher = match &tls {
            Some(tls) => Some(
                CertWatcher::start(tls.clone(), metrics.clone()).map_err(ServeError::TlsWatch)?,
            ),
            None => None,
        };
        let audit = AuditLog::start(&config.audit, metrics.clone()).map_err(ServeError::Audit)?;
        let telemetry = Telemetry {
            metrics: metrics.clone(),
            audit: Arc::new(audit),
        };
        let pool = Pool::new(config.limits.decision_threads).map_err(ServeError::Threads)?;
        let decider = Decider::for_config(&config, telemetry.clone()).on_pool(pool);
        let (decider, shadow_watcher) = match &config.shadow.policies {
            Some(dir) => {
                let (shadow, watcher) = start_shadow(&config, dir, &decider, telemetry)?;
                (decider.with_shadow(shadow), Some(Arc::new(watcher)))
            }
            None => (decider, None),
        };
        let decider = Arc::new(decider);
        {
            // Per-policy counts belong to the serving snapshot: rendered from it.
            let store = store.clone();
            let max_series = config.policy_metrics_max_series;
            let files = store.clone();
            metrics.export_policy_usage(Box::new(move || store.current().usage_series(max_series)));
            metrics.export_policy_files(Box::new(move || files.current().files_series(max_series)));
        }
        let grpc = GrpcPort::new(&config, store.clone(), decider.clone()).await?;
        // One limit on decision calls in flight, whichever port they come to.
        let slots = CallSlots::new(metrics.clone(), config.limits.max_concurrent_calls);
        let watch = WatchOptions {
            watch_files: config.watch,
            rescan: config.rescan_interval,
            ..WatchOptions::default()
        };
        let counted = metrics.clone();
        let watcher = Watcher::start(
            store.clone(),
            watch,
            Box::new(move |rebuilt, took| {
                counted.reload_took(took);
                match rebuilt {
                    Rebuilt::Unchanged => counted.reloaded(ReloadResult::Success),
                    Rebuilt::Swapping(snapshot) => {
                        counted.reloaded(ReloadResult::Success);
                        counted.serving(&summary(snapshot));
                    }
                    Rebuilt::Failed(error) => {
                        counted.reloaded(ReloadResult::Failure);
                        for kind in error.kinds() {
                            counted.reload_failed_for(kind.label());
                        }
                    }
                }
            }),
        )?;
        #[cfg(unix)]
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(ServeError::Signal)?;
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Listen { addr, what, source })
        };
        let grpc_listener = bind(config.listen, "").await?;
        let metrics_listener = bind(config.metrics_listen, " for metrics").await?;
        let authzen = match config.authzen.listen {
            Some(addr) => {
                let port = AuthzenPort::new(&config, store.clone(), decider.clone(), slots.clone());
                Some((port, bind(addr, " for AuthZEN").await?))
            }
            None => None,
        };
        Ok(Self {
            config,
            store,
            decider,
            metrics,
            watcher: Arc::new(watcher),
            shadow_watcher,
            grpc,
            authzen,
            slots,
            tls,
            tls_watcher,
            #[cfg(unix)]
            hangups,
            grpc_listener,
            metrics_listener,
        })
    }

    /// The address the gRPC port listens on.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The address of the metrics endpoint.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The address the AuthZEN API listens on, when it is on.
    pub fn authzen_addr(&self) -> Option<SocketAddr> {
        self.authzen
            .as_ref()
            .map(|(_, l)| l.local_addr().expect("a bound listener has an address"))
    }

    /// The store whose snapshot is served.
    pub fn store(&self) -> &Arc<PolicyStore> {
        &self.store
    }

    /// The shadow directory's watcher, when there is a shadow set.
    pub fn shadow_watcher(&self) -> Option<&Arc<Watcher>> {
        self.shadow_watcher.as_ref()
    }

    /// The policy watcher, to ask for a reload (as SIGHUP does).
    pub fn watcher(&self) -> &Arc<Watcher> {
        &self.watcher
    }

    /// The gRPC port's services.
    pub fn grpc(&self) -> &GrpcPort {
        &self.grpc
    }

    /// The decider the front ends answer with.
    pub fn decider(&self) -> &Arc<Decider> {
        &self.decider
    }

    /// Serves until `shutdown` resolves, then shuts down in the order the module docs
    /// give.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let Self {
            config,
            store,
            decider,
            metrics,
            watcher,
            shadow_watcher,
            grpc,
            authzen,
            slots,
            tls,
            tls_watcher,
            #[cfg(unix)]
            mut hangups,
            grpc_listener,
            metrics_listener,
        } = self;
        #[cfg(unix)]
        let reloads = {
            let watcher = watcher.clone();
            let shadow_watcher = shadow_watcher.clone();
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    tracing::info!(signal = "SIGHUP", "reload requested");
                    watcher.reload_now();
                    if let Some(shadow) = &shadow_watcher {
                        shadow.reload_now();
                    }
                }
            })
        };
        let snapshot = store.current();
        let (addr, metrics_addr) = (grpc_listener.local_addr(), metrics_listener.local_addr());
        let (Ok(addr), Ok(metrics_addr)) = (addr, metrics_addr) else {
            unreachable!("a bound listener has an address");
        };
        tracing::info!(
            %addr,
            %metrics_addr,
            policies = %store.dir().display(),
            watch = config.watch,
            policy_version = snapshot.version(),
            policy_count = snapshot.policy_count(),
            entity_count = snapshot.entity_count(),
            schema_loaded = snapshot.schema().is_some(),
            "listening"
        );
        drop(snapshot);

        let (stopping, stopping_rx) = watch::channel(false);
        let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
        let metrics_server = tokio::spawn(serve_metrics(
            metrics.clone(),
            stopping_rx,
            metrics_listener,
            async {
                let _ = metrics_stopped.await;
            },
        ));
        // AuthZEN answers on through the drain, and stops taking calls with the gRPC port.
        let authzen_server = authzen.map(|(port, listener)| {
            let mut stopped = stopping.subscribe();
            let (config, tls, drain) = (config.clone(), tls.clone(), config.drain);
            let addr = listener.local_addr().ok();
            tracing::info!(authzen_addr = ?addr, "AuthZEN API listening");
            tokio::spawn(async move {
                let stop = async move {
                    if stopped.wait_for(|stopping| *stopping).await.is_ok() {
                        tokio::time::sleep(drain).await;
                    } else {
                        std::future::pending::<()>().await;
                    }
                };
                port.serve(&config, listener, tls, stop, config.shutdown_grace)
                    .await;
            })
        });
        grpc.serve(&config, grpc_listener, tls, slots, shutdown, stopping)
            .await;
        if let Some(server) = authzen_server {
            let _ = server.await;
        }
        let _ = stop_metrics.send(());
        let _ = metrics_server.await;
        // Stop the SIGHUP loop first, so the watcher below is the last handle and stops now.
        #[cfg(unix)]
        {
            reloads.abort();
            let _ = reloads.await;
        }
        drop(watcher);
        drop(shadow_watcher);
        drop(tls_watcher);
        drop(decider);
        tracing::info!("stopped");
        Ok(())
    }
}

/// Loads the shadow directory `dir` as the live one is loaded, starts its shadow thread
/// (deciding with the live engine's options) and its watcher (counting its reloads).
fn start_shadow(
    config: &Config,
    dir: &std::path::Path,
    decider: &Decider,
    telemetry: Telemetry,
) -> Result<(Shadow, Watcher), ServeError> {
    let options = LoadOptions::new(config.policy_validation, &config.limits);
    let (store, loaded) =
        PolicyStore::open_or_wait(dir, options).map_err(|source| ServeError::ShadowPolicies {
            dir: dir.to_owned(),
            source,
        })?;
    let store = Arc::new(store);
    let metrics = telemetry.metrics.clone();
    match loaded {
        Ok(warnings) => {
            for warning in warnings {
                tracing::warn!(location = %warning.location, shadow = true, "{}", warning.message);
            }
            metrics.shadow_serving(store.current().version());
            tracing::info!(
                shadow_policies = %dir.display(),
                shadow_policy_version = store.current().version(),
                sample_rate = config.shadow.sample_rate,
                "shadow evaluation on"
            );
        }
        Err(err) => {
            // A broken candidate must not keep the live service from starting: shadow
            // evaluation waits until the directory loads (the watcher follows it).
            metrics.shadow_reloaded(ReloadResult::Failure);
            crate::policy::log_failure(&err, &store);
            tracing::error!(
                shadow_policies = %dir.display(),
                "the shadow policy directory is invalid; shadow evaluation starts once it loads"
            );
        }
    }
    let shadow = Shadow::start(
        store.clone(),
        decider.engine().options().clone(),
        &config.shadow,
        telemetry,
    )
    .map_err(ServeError::Threads)?;
    let watch = WatchOptions {
        watch_files: config.watch,
        rescan: config.rescan_interval,
        ..WatchOptions::default()
    };
    let watcher = Watcher::start(
        store,
        watch,
        Box::new(move |rebuilt, _took| match rebuilt {
            Rebuilt::Unchanged => metrics.shadow_reloaded(ReloadResult::Success),
            Rebuilt::Swapping(snapshot) => {
                metrics.shadow_reloaded(ReloadResult::Success);
                metrics.shadow_serving(snapshot.version());
            }
            Rebuilt::Failed(_) => metrics.shadow_reloaded(ReloadResult::Failure),
        }),
    )?;
    Ok((shadow, watcher))
}

/// Serves `config` until `shutdown` resolves: [`Server::bind`], then [`Server::run`].
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    Server::bind(config).await?.run(shutdown).await
}
