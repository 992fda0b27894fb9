//! The `cedar-pdp` binary: parses flags, sets up logging and the runtime, and hands over
//! to the library. Exit codes: 0 ok, 1 the policies or tests are wrong, 2 usage or I/O
//! error.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use anyhow::Context as _;
use cedar_pdp::{
    Config, api,
    authoring::{self, diagnostics, format::FileStatus, request::RequestSpec, suite},
    config::Settings,
    engine::{Engine, EngineOptions},
    policy::{LoadError, LoadOptions, PolicyStore, PolicyValidation, WatchOptions, Watcher},
    telemetry::{self, AuditLog, Metrics},
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
}

/// How a command prints its findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// For a person.
    Text,
    /// For a program (CI annotations, scripts).
    Json,
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

/// The directory an author command works on and the settings it decides with.
struct Setup {
    dir: PathBuf,
    load: LoadOptions,
    engine: EngineOptions,
}

impl LoadArgs {
    /// The directory (`dir`, else the config file's) and the server's settings.
    fn setup(&self, dir: Option<PathBuf>) -> Result<Setup, ExitCode> {
        let overrides = Settings {
            policies: dir,
            policy_validation: self.policy_validation,
            ..Settings::default()
        };
        let config = Config::resolve(self.config.as_deref(), overrides).map_err(usage_error)?;
        Ok(Setup {
            load: LoadOptions::new(config.policy_validation, &config.limits),
            engine: EngineOptions::new(config.validate_requests, &config.limits),
            dir: config.policies,
        })
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
        Command::Serve(args) => serve(*args),
        Command::Validate(args) => validate(args),
        Command::Test(args) => test(args),
        Command::Authorize(args) => authorize(args),
        Command::Fmt(args) => fmt(args),
    }
}

/// Exit code 1: the policies or the tests are wrong.
const WRONG: u8 = 1;
/// Exit code 2: a usage or I/O error.
const USAGE: u8 = 2;

fn validate(args: ValidateArgs) -> ExitCode {
    let setup = match args.load.setup(args.dir) {
        Ok(setup) => setup,
        Err(code) => return code,
    };
    let validation = match authoring::validate(&setup.dir, &setup.load) {
        Ok(validation) => validation,
        Err(e) => return usage_error(e),
    };
    match args.format {
        Format::Text => print!("{}", validation.text()),
        Format::Json => print!("{}", validation.json()),
    }
    if validation.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(WRONG)
    }
}

/// Loads `dir` for `test` and `authorize`; prints every problem when it does not load.
fn load(setup: &Setup) -> Result<cedar_pdp::policy::Snapshot, ExitCode> {
    let dir = &setup.dir;
    match authoring::validate(dir, &setup.load) {
        Err(e) => Err(usage_error(e)),
        Ok(mut validation) => match validation.snapshot.take() {
            Some(snapshot) => {
                eprint!("{}", validation.problems_text());
                Ok(snapshot)
            }
            None => {
                eprint!("{}", validation.text());
                eprintln!("error: the policies in {} do not load", dir.display());
                Err(ExitCode::from(WRONG))
            }
        },
    }
}

fn usage_error(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(USAGE)
}

fn test(args: TestArgs) -> ExitCode {
    let setup = match args.load.setup(args.dir) {
        Ok(setup) => setup,
        Err(code) => return code,
    };
    let snapshot = match load(&setup) {
        Ok(snapshot) => snapshot,
        Err(code) => return code,
    };
    let suites = match suite::discover(&setup.dir) {
        Ok(suites) => suites,
        Err(problems) => {
            for problem in &problems {
                eprint!(
                    "{}",
                    diagnostics::render(diagnostics::Severity::Error, problem, None)
                );
            }
            eprintln!(
                "error: the test cases in {} cannot be read",
                setup.dir.join("tests").display()
            );
            return ExitCode::from(WRONG);
        }
    };
    let engine = Engine::new(setup.engine);
    let report = suite::run(&snapshot, &engine, &suites, args.filter.as_deref());
    print!("{}", report.text(args.coverage));
    if let Some(path) = &args.junit
        && let Err(e) = std::fs::write(path, report.junit())
    {
        return usage_error(format!("cannot write {}: {e}", path.display()));
    }
    if report.passed() + report.failed() == 0 {
        eprintln!(
            "error: no case matches --filter {:?}",
            args.filter.unwrap_or_default()
        );
        return ExitCode::from(WRONG);
    }
    match report.failed() {
        0 => ExitCode::SUCCESS,
        _ => ExitCode::from(WRONG),
    }
}

fn authorize(args: AuthorizeArgs) -> ExitCode {
    let request = match authorize_request(&args) {
        Ok(request) => request,
        Err(message) => return usage_error(message),
    };
    let setup = match args.load.setup(args.policies.clone()) {
        Ok(setup) => setup,
        Err(code) => return code,
    };
    let snapshot = match load(&setup) {
        Ok(snapshot) => snapshot,
        Err(code) => return code,
    };
    let engine = Engine::new(setup.engine);
    match authoring::decide(&snapshot, &engine, &request) {
        Ok(answer) => {
            match args.format {
                Format::Text => print!("{}", authoring::decision_text(&snapshot, &answer)),
                Format::Json => print!("{}", authoring::decision_json(&snapshot, &answer)),
            }
            ExitCode::SUCCESS
        }
        Err(e) => usage_error(format!("the request is refused: {e}")),
    }
}

/// The request from `--request` with the flags laid over it.
fn authorize_request(args: &AuthorizeArgs) -> Result<RequestSpec, String> {
    let mut fields = match &args.request {
        None => serde_json::Map::new(),
        Some(path) => {
            let text = read_input(path)?;
            let value: serde_json::Value = if path.extension().is_some_and(|e| e == "json") {
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
            } else {
                serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
            };
            match value {
                serde_json::Value::Object(fields) => fields,
                _ => return Err(format!("{}: must hold one request object", path.display())),
            }
        }
    };
    for (key, flag) in [
        ("principal", &args.principal),
        ("action", &args.action),
        ("resource", &args.resource),
    ] {
        if let Some(uid) = flag {
            uid.parse::<authoring::request::Uid>()
                .map_err(|e| format!("--{key}: {e}"))?;
            fields.insert(key.to_owned(), uid.clone().into());
        }
    }
    if let Some(context) = &args.context {
        let value = serde_json::from_str(context).map_err(|e| format!("--context: {e}"))?;
        fields.insert("context".to_owned(), value);
    }
    if let Some(path) = &args.entities {
        let text = read_input(path)?;
        let value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        fields.insert("entities".to_owned(), value);
    }
    RequestSpec::from_fields(fields).map_err(|e| format!("request: {e}"))
}

/// A file's text, or standard input for `-`.
fn read_input(path: &Path) -> Result<String, String> {
    let mut text = String::new();
    let read = if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(path).map(|t| text = t)
    };
    read.map(|()| text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn fmt(args: FmtArgs) -> ExitCode {
    let statuses = match authoring::format::format_dir(&args.dir, args.check) {
        Ok(statuses) => statuses,
        Err(e) => return usage_error(e),
    };
    let (mut changed, mut failed, mut unwritable) = (0, 0, 0);
    for (file, status) in &statuses {
        let problem = match status {
            FileStatus::Formatted => continue,
            FileStatus::Changed => {
                changed += 1;
                let verb = if args.check {
                    "not formatted"
                } else {
                    "formatted"
                };
                println!("{verb}: {file}");
                continue;
            }
            FileStatus::Failed(problem) => {
                failed += 1;
                problem
            }
            FileStatus::Unwritable(problem) => {
                unwritable += 1;
                problem
            }
        };
        let text = std::fs::read_to_string(args.dir.join(&problem.location.file)).ok();
        let shown = diagnostics::render(diagnostics::Severity::Error, problem, text.as_deref());
        eprint!("{shown}");
    }
    let verb = if args.check {
        "need formatting"
    } else {
        "reformatted"
    };
    println!(
        "{} files checked, {changed} {verb}, {} could not be formatted",
        statuses.len(),
        failed + unwritable
    );
    if unwritable > 0 {
        ExitCode::from(USAGE)
    } else if failed > 0 || (args.check && changed > 0) {
        ExitCode::from(WRONG)
    } else {
        ExitCode::SUCCESS
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match Config::resolve(args.config.as_deref(), args.settings) {
        Ok(config) => config,
        Err(e) => return usage_error(e),
    };
    if let Err(e) = telemetry::init(config.log_format, &config.log_level) {
        return usage_error(e);
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
                LoadError::Directory { .. } => USAGE,
                LoadError::Invalid(_) => WRONG,
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
            ExitCode::from(USAGE)
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
