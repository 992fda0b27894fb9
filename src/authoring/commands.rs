//! The author commands as the binary runs them: each takes what its flags resolved to,
//! prints its findings (text for a person, JSON for a program) and says how to exit:
//! 0 ok, 1 the policies or tests are wrong, 2 a usage or I/O error.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
};

use super::{
    decide, decision_json, decision_text, diagnostics,
    diff::{FailOn, Replay},
    format::{FileStatus, format_dir},
    request::{RequestSpec, Uid},
    suite, validate,
};
use crate::{
    config::Config,
    decide::{Decider, Telemetry},
    policy::{LoadOptions, Snapshot},
    telemetry::Metrics,
};

/// How a command ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything checked out.
    Ok = 0,
    /// The policies or the tests are wrong.
    Wrong = 1,
    /// A usage or I/O error.
    Usage = 2,
}

/// How a command prints its findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For a person.
    Text,
    /// For a program (CI annotations, scripts).
    Json,
}

/// A usage or I/O error, said on stderr.
pub fn usage_error(error: impl std::fmt::Display) -> Exit {
    eprintln!("error: {error}");
    Exit::Usage
}

/// The directory an author command works on, and how the server configured by the same
/// settings would load and decide it.
pub struct Setup {
    /// The policy directory.
    pub dir: PathBuf,
    /// How it is loaded.
    pub load: LoadOptions,
    /// How it is decided: the server's decide step, reporting nowhere.
    pub decider: Decider,
}

impl Setup {
    /// The setup of a server running with `config`.
    pub fn new(config: &Config) -> Self {
        Self {
            dir: config.policies.clone(),
            load: LoadOptions::new(config.policy_validation, &config.limits),
            decider: Decider::for_config(config, Telemetry::metrics_only(Metrics::new())),
        }
    }
}

/// `validate`: every problem of the directory, and whether it loads.
pub fn validate_dir(setup: &Setup, format: Format) -> Exit {
    let validation = match validate(&setup.dir, &setup.load) {
        Ok(validation) => validation,
        Err(e) => return usage_error(e),
    };
    match format {
        Format::Text => print!("{}", validation.text()),
        Format::Json => print!("{}", validation.json()),
    }
    if validation.ok() {
        Exit::Ok
    } else {
        Exit::Wrong
    }
}

/// Loads the directory for `test` and `authorize`; prints every problem when it does not
/// load, and its warnings when it does.
fn load(setup: &Setup) -> Result<Snapshot, Exit> {
    load_dir(&setup.dir, &setup.load)
}

/// Loads `dir` with `options` as [`load`] does: 2 when it cannot be read, 1 (with every
/// problem printed) when it does not load.
fn load_dir(dir: &Path, options: &LoadOptions) -> Result<Snapshot, Exit> {
    match validate(dir, options) {
        Err(e) => Err(usage_error(e)),
        Ok(mut validation) => match validation.snapshot.take() {
            Some(snapshot) => {
                eprint!("{}", validation.problems_text());
                Ok(snapshot)
            }
            None => {
                eprint!("{}", validation.text());
                eprintln!("error: the policies in {} do not load", dir.display());
                Err(Exit::Wrong)
            }
        },
    }
}

/// `test`: runs the cases under `tests/` (those matching `filter`), prints the report (with
/// coverage when asked) and writes JUnit XML to `junit` when given.
pub fn test(setup: &Setup, junit: Option<&Path>, coverage: bool, filter: Option<&str>) -> Exit {
    let snapshot = match load(setup) {
        Ok(snapshot) => snapshot,
        Err(exit) => return exit,
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
            return Exit::Wrong;
        }
    };
    let report = suite::run(&snapshot, &setup.decider, &suites, filter);
    print!("{}", report.text(coverage));
    if let Some(path) = junit
        && let Err(e) = std::fs::write(path, report.junit())
    {
        return usage_error(format!("cannot write {}: {e}", path.display()));
    }
    if report.passed() + report.failed() == 0 {
        eprintln!(
            "error: no case matches --filter {:?}",
            filter.unwrap_or_default()
        );
        return Exit::Wrong;
    }
    match report.failed() {
        0 => Exit::Ok,
        _ => Exit::Wrong,
    }
}

/// `authorize`: decides `request` and says why.
pub fn authorize(setup: &Setup, request: &RequestSpec, format: Format) -> Exit {
    let snapshot = match load(setup) {
        Ok(snapshot) => snapshot,
        Err(exit) => return exit,
    };
    match decide(&snapshot, &setup.decider, request) {
        Ok(answer) => {
            match format {
                Format::Text => print!("{}", decision_text(&snapshot, &answer)),
                Format::Json => print!("{}", decision_json(&snapshot, &answer)),
            }
            Exit::Ok
        }
        Err(e) => usage_error(format!("the request is refused: {e}")),
    }
}

/// `diff`: replays the `requests` files (audit logs or request files; `-` is standard
/// input) against the directory of `setup` (`--from`) and `to`, both loaded and decided as
/// the server would, prints what flips, and fails (1) as `fail_on` says.
pub fn diff(
    setup: &Setup,
    to: &Path,
    requests: &[PathBuf],
    format: Format,
    fail_on: FailOn,
) -> Exit {
    // Inputs that cannot be opened fail before any work is done.
    if requests.iter().filter(|p| *p == Path::new("-")).count() > 1 {
        return usage_error("standard input (-) can be read once only");
    }
    for path in requests.iter().filter(|p| *p != Path::new("-")) {
        match std::fs::File::open(path).and_then(|f| f.metadata()) {
            Ok(meta) if meta.is_dir() => {
                return usage_error(format!("{} is a directory, not a file", path.display()));
            }
            Ok(_) => {}
            Err(e) => return usage_error(format!("cannot read {}: {e}", path.display())),
        }
    }
    let from_snapshot = match load(setup) {
        Ok(snapshot) => snapshot,
        Err(exit) => return exit,
    };
    let to_snapshot = match load_dir(to, &setup.load) {
        Ok(snapshot) => snapshot,
        Err(exit) => return exit,
    };
    let mut replay = Replay::new(
        (&setup.dir, &from_snapshot),
        (to, &to_snapshot),
        &setup.decider,
    );
    for path in requests {
        if let Err(e) = replay.file(path) {
            return usage_error(e);
        }
    }
    let report = replay.finish();
    match format {
        Format::Text => print!("{}", report.text(fail_on)),
        Format::Json => print!("{}", report.json(fail_on)),
    }
    if report.fails(fail_on) {
        Exit::Wrong
    } else {
        Exit::Ok
    }
}

/// What `authorize` is asked, as its flags give it: a request file (JSON or YAML; `-`
/// reads standard input) with the flags laid over its fields.
#[derive(Debug, Default)]
pub struct RequestFlags<'a> {
    /// `--request`.
    pub file: Option<&'a Path>,
    /// `--principal`.
    pub principal: Option<&'a str>,
    /// `--action`.
    pub action: Option<&'a str>,
    /// `--resource`.
    pub resource: Option<&'a str>,
    /// `--context`, a JSON object.
    pub context: Option<&'a str>,
    /// `--entities`, a JSON file of entities.
    pub entities: Option<&'a Path>,
}

impl RequestFlags<'_> {
    /// The request, or what is wrong with the flags or the file.
    pub fn request(&self) -> Result<RequestSpec, String> {
        let mut fields = match self.file {
            None => serde_json::Map::new(),
            Some(path) => {
                let text = read_input(path)?;
                let value: serde_json::Value = if path.extension().is_some_and(|e| e == "json") {
                    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
                } else {
                    serde_yaml_ng::from_str(&text)
                        .map_err(|e| format!("{}: {e}", path.display()))?
                };
                match value {
                    serde_json::Value::Object(fields) => fields,
                    _ => return Err(format!("{}: must hold one request object", path.display())),
                }
            }
        };
        for (key, flag) in [
            ("principal", self.principal),
            ("action", self.action),
            ("resource", self.resource),
        ] {
            if let Some(uid) = flag {
                uid.parse::<Uid>().map_err(|e| format!("--{key}: {e}"))?;
                fields.insert(key.to_owned(), uid.into());
            }
        }
        if let Some(context) = self.context {
            let value = serde_json::from_str(context).map_err(|e| format!("--context: {e}"))?;
            fields.insert("context".to_owned(), value);
        }
        if let Some(path) = self.entities {
            let text = read_input(path)?;
            let value =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            fields.insert("entities".to_owned(), value);
        }
        RequestSpec::from_fields(fields).map_err(|e| format!("request: {e}"))
    }
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

/// `fmt`: formats the policy files under `dir` (with `check`, only lists those that are
/// not formatted).
pub fn fmt(dir: &Path, check: bool) -> Exit {
    let statuses = match format_dir(dir, check) {
        Ok(statuses) => statuses,
        Err(e) => return usage_error(e),
    };
    let (mut changed, mut failed, mut unwritable) = (0, 0, 0);
    for (file, status) in &statuses {
        let problem = match status {
            FileStatus::Formatted => continue,
            FileStatus::Changed => {
                changed += 1;
                let verb = if check { "not formatted" } else { "formatted" };
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
        let text = std::fs::read_to_string(dir.join(&problem.location.file)).ok();
        let shown = diagnostics::render(diagnostics::Severity::Error, problem, text.as_deref());
        eprint!("{shown}");
    }
    let verb = if check {
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
        Exit::Usage
    } else if failed > 0 || (check && changed > 0) {
        Exit::Wrong
    } else {
        Exit::Ok
    }
}
