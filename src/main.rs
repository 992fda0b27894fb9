//! The `cedar-pdp` binary: parses flags, sets up logging and the runtime, and hands over
//! to the library. Exit codes: 0 ok, 1 the policies are wrong, 2 usage or I/O error.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context as _;
use cedar_pdp::{
    Config, api,
    config::Settings,
    policy::{LoadError, LoadOptions, PolicyStore, WatchOptions, Watcher},
    telemetry::{self, AuditLog, Metrics},
};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cedar-pdp",
    version,
    about = "A Cedar policy decision point over gRPC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the policy directory over gRPC.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TOML config file; flags and CEDAR_PDP_* variables override its keys.
    #[arg(long, env = "CEDAR_PDP_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match Config::resolve(args.config.as_deref(), args.settings) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = telemetry::init(config.log_format, &config.log_level) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let options = LoadOptions::new(config.policy_validation, &config.limits);
    let store = match PolicyStore::open(&config.policies, options) {
        Ok((store, warnings)) => {
            for warning in warnings {
                tracing::warn!(location = %warning.location, "{}", warning.message);
            }
            store
        }
        Err(e) => {
            eprintln!("error: cannot serve {}:\n{e}", config.policies.display());
            return ExitCode::from(match e {
                LoadError::Directory { .. } => 2,
                LoadError::Invalid(_) => 1,
            });
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(cedar_pdp::policy::STACK_BYTES)
        .build()
        .expect("the tokio runtime starts");
    match runtime.block_on(run(config, Arc::new(store))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(config: Config, store: Arc<PolicyStore>) -> anyhow::Result<()> {
    // Handlers go in before the server says it is listening: from then on SIGTERM means
    // "drain", never the default "die", and SIGHUP means "reload".
    let shutdown = shutdown_signal().context("cannot install signal handlers")?;
    #[cfg(unix)]
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot install the SIGHUP handler")?;
    let grpc = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let metrics_listener = tokio::net::TcpListener::bind(config.metrics_listen)
        .await
        .with_context(|| format!("cannot listen on {} for metrics", config.metrics_listen))?;
    let addr = grpc.local_addr()?;
    let metrics_addr = metrics_listener.local_addr()?;

    let metrics = Metrics::new();
    let audit =
        AuditLog::start(&config.audit, metrics.clone()).context("cannot open the audit log")?;
    let watch = WatchOptions {
        watch_files: config.watch,
        ..WatchOptions::default()
    };
    let watcher = Arc::new(
        Watcher::start(store.clone(), metrics.clone(), watch)
            .context("cannot watch the policy directory")?,
    );
    #[cfg(unix)]
    let reloads = {
        let watcher = watcher.clone();
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!(signal = "SIGHUP", "reload requested");
                watcher.reload_now();
            }
        })
    };

    let snapshot = store.current();
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
    let listeners = api::Listeners {
        grpc,
        metrics: metrics_listener,
    };
    let telemetry = api::Telemetry {
        metrics,
        audit: Arc::new(audit),
    };
    api::serve(&config, store, telemetry, listeners, shutdown).await?;
    // Stop the SIGHUP loop first, so the watcher below is the last handle and stops now.
    #[cfg(unix)]
    {
        reloads.abort();
        let _ = reloads.await;
    }
    drop(watcher);
    tracing::info!("stopped");
    Ok(())
}

/// Installs the Ctrl-C and SIGTERM handlers now and returns a future that resolves on
/// either.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
            _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
        }
    })
}

/// Installs the Ctrl-C handler and returns a future that resolves on it.
#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    })
}
