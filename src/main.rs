//! The `cedar-pdp` binary: parses flags, sets up logging, the runtime and the signals, and
//! hands over to the library (`server` for `serve`, `authoring::commands` for the rest).
//! Exit codes: 0 ok, 1 the policies or tests are wrong, 2 usage or I/O error.

use std::{path::PathBuf, process::ExitCode};

use cedar_pdp::{
    Config,
    api::ext_authz::rules::ExtAuthz,
    authoring::{
        commands::{self, Exit, Format, RequestFlags, Setup, usage_error},
        diff::FailOn,
    },
    config::{PolicyValidation, Settings},
    policy::LoadError,
    server::{self, ServeError},
    telemetry,
};
use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: a decision allocates and frees many small values
/// on every worker thread, and glibc's arenas contend on their locks (benches/load.rs,
/// README "Under load").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    Serve(Box<ServeArgs>),
    /// Check a policy directory as `serve` would load it and report every problem.
    Validate(ValidateArgs),
    /// Run the test cases in DIR/tests against the policy directory.
    Test(TestArgs),
    /// Decide one request against a policy directory and say why.
    Authorize(AuthorizeArgs),
    /// Format the policy files with Cedar's formatter.
    Fmt(FmtArgs),
    /// Replay recorded requests against two policy directories and show what flips.
    Diff(DiffArgs),
    /// Ask a running server how many decisions each policy determined since it was loaded.
    Usage(UsageArgs),
}

#[derive(Debug, clap::Args)]
struct UsageArgs {
    /// The server's gRPC address (`https://` for TLS).
    #[arg(long, default_value = "http://127.0.0.1:50051", value_name = "URL")]
    server: String,
    /// List only the policies that determined no decision since the set was loaded.
    #[arg(long)]
    unused: bool,
    /// PEM CA certificates that signed an `https://` server's certificate.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// PEM client certificate, for a server that requires mutual TLS (needs --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

#[derive(Debug, clap::Args)]
struct ValidateArgs {
    /// The policy directory [default: the config file's `policies`, else `policies`].
    dir: Option<PathBuf>,
    #[command(flatten)]
    load: LoadArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

/// How the author commands load a directory and decide: as the server would, with its
/// config file when given.
#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// The server's TOML config file: its policy validation, request validation and limits
    /// apply, so that what passes here is what that server does.
    #[arg(long, env = "CEDAR_PDP_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Policy validation against the schema, as `serve --policy-validation` does it
    /// [default: the config file's, else strict].
    #[arg(long, value_enum)]
    policy_validation: Option<PolicyValidation>,
}

impl LoadArgs {
    /// The directory (`dir`, else the config file's) and the server's settings, checked
    /// as `serve` checks them.
    fn setup(&self, dir: Option<PathBuf>) -> Result<Setup, Exit> {
        let overrides = Settings {
            policies: dir,
            policy_validation: self.policy_validation,
            ..Settings::default()
        };
        let config = Config::resolve(self.config.as_deref(), overrides).map_err(usage_error)?;
        ExtAuthz::compile(&config.ext_authz).map_err(usage_error)?;
        Ok(Setup::new(&config))
    }
}

#[derive(Debug, clap::Args)]
struct TestArgs {
    /// The policy directory; cases are read from its `tests/` folder [default: the config
    /// file's `policies`, else `policies`].
    dir: Option<PathBuf>,
    /// Also write the results as JUnit XML to FILE.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Report which policies determined at least one case and which never did.
    #[arg(long)]
    coverage: bool,
    /// Run only the cases whose `file: name` contains TEXT.
    #[arg(long, value_name = "TEXT")]
    filter: Option<String>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Debug, clap::Args)]
struct AuthorizeArgs {
    /// The policy directory [default: the config file's `policies`, else `policies`].
    #[arg(long, value_name = "DIR")]
    policies: Option<PathBuf>,
    /// A request file (JSON or YAML, the fields of a test case; `-` reads standard input).
    /// Flags given as well override its fields.
    #[arg(long, value_name = "FILE")]
    request: Option<PathBuf>,
    /// Who asks, e.g. 'Platform::User::"alice"'.
    #[arg(long, value_name = "UID")]
    principal: Option<String>,
    /// The action, e.g. 'Platform::Action::"read"'.
    #[arg(long, value_name = "UID")]
    action: Option<String>,
    /// The resource, e.g. 'Platform::Document::"acme-roadmap-q3"'.
    #[arg(long, value_name = "UID")]
    resource: Option<String>,
    /// The context as a JSON object, e.g. '{"mfa": true}'.
    #[arg(long, value_name = "JSON")]
    context: Option<String>,
    /// A JSON file of entities sent with the request (Cedar's entity format).
    #[arg(long, value_name = "FILE")]
    entities: Option<PathBuf>,
    #[command(flatten)]
    load: LoadArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

#[derive(Debug, clap::Args)]
struct FmtArgs {
    /// The policy directory.
    #[arg(default_value = "policies")]
    dir: PathBuf,
    /// Change nothing; list the files that are not formatted and exit 1 if any.
    #[arg(long)]
    check: bool,
}

#[derive(Debug, clap::Args)]
struct DiffArgs {
    /// The policy directory the requests are replayed against first (the serving set).
    #[arg(long, value_name = "DIR")]
    from: PathBuf,
    /// The changed policy directory, loaded with the same settings.
    #[arg(long, value_name = "DIR")]
    to: PathBuf,
    /// Audit logs (one JSON record a line; decision records are replayed) or request
    /// files as `authorize --request` reads them (one request, a list, or a test case
    /// file); `-` reads standard input.
    #[arg(required = true, value_name = "REQUESTS")]
    requests: Vec<PathBuf>,
    /// Which flips exit 1: a request that --from does not allow and --to allows, or any.
    #[arg(long, value_enum, default_value = "deny-to-allow")]
    fail_on: FailOn,
    #[command(flatten)]
    load: LoadArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
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
    let exit = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Validate(args) => match args.load.setup(args.dir) {
            Ok(setup) => commands::validate_dir(&setup, args.format),
            Err(exit) => exit,
        },
        Command::Test(args) => match args.load.setup(args.dir) {
            Ok(setup) => commands::test(
                &setup,
                args.junit.as_deref(),
                args.coverage,
                args.filter.as_deref(),
            ),
            Err(exit) => exit,
        },
        Command::Authorize(args) => authorize(&args),
        Command::Fmt(args) => commands::fmt(&args.dir, args.check),
        Command::Diff(args) => match args.load.setup(Some(args.from)) {
            Ok(setup) => {
                commands::diff(&setup, &args.to, &args.requests, args.format, args.fail_on)
            }
            Err(exit) => exit,
        },
        Command::Usage(args) => usage(args),
    };
    ExitCode::from(exit as u8)
}

/// `usage`: lists the running server's policies with their decision counts.
fn usage(args: UsageArgs) -> Exit {
    let target = cedar_pdp::authoring::usage::Target {
        server: args.server,
        ca: args.tls_ca,
        identity: args.tls_cert.zip(args.tls_key),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return usage_error(format!("cannot start a runtime: {e}")),
    };
    match runtime.block_on(cedar_pdp::authoring::usage::fetch(&target, args.unused)) {
        Ok(usage) => {
            match args.format {
                Format::Json => println!("{}", usage.json()),
                Format::Text => print!("{}", usage.text(args.unused)),
            }
            Exit::Ok
        }
        Err(message) => usage_error(message),
    }
}

fn authorize(args: &AuthorizeArgs) -> Exit {
    let flags = RequestFlags {
        file: args.request.as_deref(),
        principal: args.principal.as_deref(),
        action: args.action.as_deref(),
        resource: args.resource.as_deref(),
        context: args.context.as_deref(),
        entities: args.entities.as_deref(),
    };
    let request = match flags.request() {
        Ok(request) => request,
        Err(message) => return usage_error(message),
    };
    match args.load.setup(args.policies.clone()) {
        Ok(setup) => commands::authorize(&setup, &request, args.format),
        Err(exit) => exit,
    }
}

fn serve(args: ServeArgs) -> Exit {
    let config = match Config::resolve(args.config.as_deref(), args.settings) {
        Ok(config) => config,
        Err(e) => return usage_error(e),
    };
    let export = match telemetry::init(config.log_format, &config.log_level, &config.tracing) {
        Ok(export) => export,
        Err(e) => return usage_error(e),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(cedar_pdp::policy::STACK_BYTES)
        .build()
        .expect("the tokio runtime starts");
    let served = runtime.block_on(async {
        // Handlers go in before the server says it is listening: from then on SIGTERM
        // means "drain", never the default "die".
        let shutdown = match shutdown_signal() {
            Ok(shutdown) => shutdown,
            Err(e) => return Err(usage_error(format!("cannot install signal handlers: {e}"))),
        };
        server::run(config, shutdown).await.map_err(|e| {
            eprintln!("error: {e}");
            match e {
                ServeError::Policies {
                    source: LoadError::Invalid(_),
                    ..
                } => Exit::Wrong,
                _ => Exit::Usage,
            }
        })
    });
    // Spans still queued are sent before the process ends (for a few seconds at most).
    if let Some(export) = export {
        export.shutdown(std::time::Duration::from_secs(3));
    }
    match served {
        Ok(()) => Exit::Ok,
        Err(exit) => exit,
    }
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
