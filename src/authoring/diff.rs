//! `diff`: what a policy change would do to traffic already seen.
//!
//! It replays recorded requests — the audit log's own decision records, or request files
//! as `authorize --request` reads them — against two policy directories (`--from`, the
//! set that is serving, and `--to`, the candidate) and reports every request whose
//! outcome (allow, deny, or error: refused) differs, with the policies that decided it on
//! each side. It sits with the other author commands: both directories are loaded by the
//! loader `serve` uses, and every request is decided through the [`Decider`] step that
//! `authorize` takes, so request validation, limits and fail-closed rules are the
//! server's. Input is read a line at a time and only the flips are kept, so a long audit
//! log costs the memory of its flips, not of its lines.
//!
//! An audit record holds what replay needs — `principal`, `action`, `resource` and the
//! allow-listed `context` values — but only the uids of the entities a call sent
//! (`request_entities`), not the entities: such records are replayed against the stored
//! entities alone and counted as not exactly replayable. A record whose decision `--from`
//! does not reproduce is counted too: a sign that a context key the policies read was
//! not on the audit allow-list, or that the entities changed since.

use std::{
    fmt,
    fs::File,
    io::{self, BufRead, BufReader, Read as _},
    path::Path,
};

use serde::Deserialize as _;
use serde_json::{Map, Value, json};

use super::{
    Answer, decide,
    request::{RequestSpec, Uid, merge_entities},
};
use crate::{
    decide::{Decider, PolicyError, Refusal},
    policy::{FastMap, Location, Snapshot},
};

/// One side's answer to a replayed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// Some permit applies and no forbid does.
    Allow,
    /// Anything else that was decided.
    Deny,
    /// The request was refused (it fails schema validation, a limit, …): not decided.
    Error,
}

impl Outcome {
    /// Every outcome, in the order reports list them.
    pub const ALL: [Outcome; 3] = [Outcome::Allow, Outcome::Deny, Outcome::Error];

    /// `allow`, `deny` or `error`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Error => "error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn of(answer: &Result<Answer, Refusal>) -> Self {
        match answer {
            Ok(answer) if answer.decision.allowed() => Self::Allow,
            Ok(_) => Self::Deny,
            Err(_) => Self::Error,
        }
    }
}

/// Which flips make `diff` fail (exit 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FailOn {
    /// A request that `--from` does not allow (a deny, or an error) and `--to` allows.
    #[default]
    DenyToAllow,
    /// Any request whose outcome differs.
    Any,
}

impl FailOn {
    /// `deny-to-allow` or `any`, as the flag takes it.
    pub fn label(self) -> &'static str {
        match self {
            Self::DenyToAllow => "deny-to-allow",
            Self::Any => "any",
        }
    }
}

/// Where a replayed request was read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The file as given on the command line (`-`: standard input).
    pub file: String,
    /// Its 1-based line, for a record or request on a line of its own.
    pub line: Option<usize>,
    /// Its 0-based position in a file holding a list (a JSON or YAML array, a case
    /// file's `cases`).
    pub item: Option<usize>,
    /// The request's `name`, when it has one (a test case).
    pub name: Option<String>,
    /// The audit record's `decision_id`, for a record.
    pub decision_id: Option<String>,
}

impl fmt::Display for Origin {
    /// `file:line`, `file[item]` or `file`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        match (self.line, self.item) {
            (Some(line), _) => write!(f, ":{line}"),
            (None, Some(item)) => write!(f, "[{item}]"),
            (None, None) => Ok(()),
        }
    }
}

/// One request read from an input file, ready to replay.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Where it was read.
    pub origin: Origin,
    /// What was asked.
    pub request: RequestSpec,
    /// The decision the audit record says the server made (`None` for a request file).
    pub recorded: Option<Outcome>,
    /// The policy version the audit record says decided it.
    pub policy_version: Option<String>,
    /// Whether replaying it can give the server's answer: not for an audit record of a
    /// call that sent entities, which the log names but does not keep.
    pub exact: bool,
}

/// Why an input line is not replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// An AuthZEN search record (`"kind":"search"`): not one decision.
    Search,
    /// A shadow disagreement record (`"kind":"shadow"`).
    Shadow,
    /// A decision record with `refused`: the call was never decided.
    Refused,
    /// A JSON log line of the server (an audit log on a shared stdout).
    Log,
    /// A record of another kind.
    Other,
}

/// A line (or list item) of an input file.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A request to replay.
    Request(Box<Recorded>),
    /// A line that is not replayed, and why.
    Skipped(Skip),
}

/// How many input lines were skipped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Search records.
    pub search: u64,
    /// Shadow records.
    pub shadow: u64,
    /// Refused calls' records.
    pub refused: u64,
    /// Server log lines.
    pub log: u64,
    /// Records of another kind.
    pub other: u64,
}

impl Skipped {
    fn add(&mut self, skip: Skip) {
        *match skip {
            Skip::Search => &mut self.search,
            Skip::Shadow => &mut self.shadow,
            Skip::Refused => &mut self.refused,
            Skip::Log => &mut self.log,
            Skip::Other => &mut self.other,
        } += 1;
    }

    /// All skipped lines.
    pub fn total(&self) -> u64 {
        self.search + self.shadow + self.refused + self.log + self.other
    }
}

/// A policy id and where the policy is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The policy id.
    pub id: String,
    /// Its file, line and column in the directory, when known.
    pub location: Option<Location>,
}

/// How one policy set answered a flipped request.
#[derive(Debug, Clone)]
pub struct Side {
    /// Allow, deny or error.
    pub outcome: Outcome,
    /// The policies that decided it, each with where it is written.
    pub determining: Vec<Located>,
    /// Policies whose evaluation errored, and why.
    pub errors: Vec<PolicyError>,
    /// Why the request was refused, for an error.
    pub refusal: Option<String>,
}

impl Side {
    fn of(snapshot: &Snapshot, answer: &Result<Answer, Refusal>) -> Self {
        let outcome = Outcome::of(answer);
        match answer {
            Ok(answer) => Self {
                outcome,
                determining: located(snapshot, answer.decision.determining_policies()),
                errors: answer.decision.errors().to_vec(),
                refusal: None,
            },
            Err(refusal) => Self {
                outcome,
                determining: Vec::new(),
                errors: Vec::new(),
                refusal: Some(refusal.to_string()),
            },
        }
    }
}

fn located(snapshot: &Snapshot, ids: &[String]) -> Vec<Located> {
    ids.iter()
        .map(|id| Located {
            id: id.clone(),
            location: snapshot.policy_location(id).cloned(),
        })
        .collect()
}

/// A request whose outcome differs between the two policy sets.
#[derive(Debug, Clone)]
pub struct Flip {
    /// Where it was read.
    pub origin: Origin,
    /// `Type::"id"` of the principal.
    pub principal: String,
    /// `Type::"id"` of the action.
    pub action: String,
    /// `Type::"id"` of the resource.
    pub resource: String,
    /// Whether the replay is exact (see [`Recorded::exact`]).
    pub exact: bool,
    /// The decision the audit record says the server made.
    pub recorded: Option<Outcome>,
    /// The answer of `--from`.
    pub from: Side,
    /// The answer of `--to`.
    pub to: Side,
}

impl Flip {
    /// Whether `--to` allows what `--from` did not.
    pub fn widens(&self) -> bool {
        widens(self.from.outcome, self.to.outcome)
    }
}

fn widens(from: Outcome, to: Outcome) -> bool {
    to == Outcome::Allow && from != Outcome::Allow
}

/// A policy directory the requests were replayed against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetInfo {
    /// The directory as given.
    pub dir: String,
    /// Its policy version.
    pub version: String,
}

/// How many records `--from` does not reproduce are listed by where they are.
const NOT_REPRODUCED_SHOWN: usize = 10;

/// What replaying found.
#[derive(Debug, Clone)]
pub struct Report {
    /// `--from`.
    pub from: SetInfo,
    /// `--to`.
    pub to: SetInfo,
    /// Input files read.
    pub files: usize,
    /// Requests replayed.
    pub requests: u64,
    /// `counts[from][to]`: requests by outcome on each side, indexed in
    /// [`Outcome::ALL`]'s order.
    pub counts: [[u64; 3]; 3],
    /// Every request whose outcome differs, in input order.
    pub flips: Vec<Flip>,
    /// Input lines not replayed, by reason.
    pub skipped: Skipped,
    /// Audit records of calls that sent entities (`request_entities`): replayed against
    /// the stored entities alone, so not exactly.
    pub unreplayable: u64,
    /// Audit records whose recorded decision `--from` does not reproduce.
    pub not_reproduced: u64,
    /// Where the first of them are.
    pub not_reproduced_at: Vec<Origin>,
    /// Audit records decided by a policy version other than `--from`'s.
    pub other_version: u64,
}

impl Report {
    /// Requests that went from `from` to `to`.
    pub fn count(&self, from: Outcome, to: Outcome) -> u64 {
        self.counts[from.index()][to.index()]
    }

    /// Requests `--to` allows that `--from` does not.
    pub fn widened(&self) -> u64 {
        let mut n = 0;
        for from in Outcome::ALL {
            for to in Outcome::ALL {
                if widens(from, to) {
                    n += self.count(from, to);
                }
            }
        }
        n
    }

    /// Whether the flips fail the command under `fail_on`.
    pub fn fails(&self, fail_on: FailOn) -> bool {
        match fail_on {
            FailOn::DenyToAllow => self.widened() > 0,
            FailOn::Any => !self.flips.is_empty(),
        }
    }

    /// The report for a person: counts, warnings, then each flip and the verdict.
    pub fn text(&self, fail_on: FailOn) -> String {
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        line(format!(
            "replayed {} from {} file{}",
            plural(self.requests, "request", "requests"),
            self.files,
            if self.files == 1 { "" } else { "s" }
        ));
        line(format!(
            "  from: {} (policy version {})",
            self.from.dir, self.from.version
        ));
        line(format!(
            "  to:   {} (policy version {})",
            self.to.dir, self.to.version
        ));
        let s = &self.skipped;
        if s.total() > 0 {
            let parts: Vec<String> = [
                (s.search, "search record", "search records"),
                (s.shadow, "shadow record", "shadow records"),
                (s.refused, "refused call", "refused calls"),
                (s.log, "log line", "log lines"),
                (s.other, "record of another kind", "records of another kind"),
            ]
            .into_iter()
            .filter(|(n, _, _)| *n > 0)
            .map(|(n, one, many)| plural(n, one, many))
            .collect();
            line(format!("skipped: {}", parts.join(", ")));
        }
        if self.requests == 0 {
            line(
                "warning: no request was replayed: the inputs hold no decision record and no \
                 request"
                    .to_owned(),
            );
        }
        if self.unreplayable > 0 {
            line(format!(
                "warning: {} sent entities with the call (request_entities); the audit log \
                 keeps only their uids, so {} replayed against the stored entities alone \
                 and may not get the server's answer",
                plural(self.unreplayable, "record", "records"),
                if self.unreplayable == 1 {
                    "it is"
                } else {
                    "they are"
                },
            ));
        }
        if self.not_reproduced > 0 {
            let at: Vec<String> = self
                .not_reproduced_at
                .iter()
                .map(|o| o.to_string())
                .collect();
            line(format!(
                "warning: {} not reproduced by --from (the decision differs from the \
                 recorded one): a context key the policies read may be missing from the audit \
                 allow-list ([audit] context_keys), or the entities changed since; at {}{}",
                plural(self.not_reproduced, "record is", "records are"),
                at.join(", "),
                if self.not_reproduced as usize > at.len() {
                    ", …"
                } else {
                    ""
                },
            ));
        }
        if self.other_version > 0 {
            line(format!(
                "note: {} decided by a policy version other than --from's ({})",
                plural(self.other_version, "record was", "records were"),
                self.from.version
            ));
        }
        line(String::new());
        line("outcomes (from -> to):".to_owned());
        for from in Outcome::ALL {
            for to in Outcome::ALL {
                let n = self.count(from, to);
                if n > 0 {
                    let mark = if from != to { "  flipped" } else { "" };
                    line(format!(
                        "  {:<5} -> {:<5} {n:>8}{mark}",
                        from.label(),
                        to.label()
                    ));
                }
            }
        }
        if self.requests == 0 {
            line("  (none)".to_owned());
        }
        if !self.flips.is_empty() {
            line(String::new());
            line(format!(
                "{}:",
                plural(self.flips.len() as u64, "flip", "flips")
            ));
            for flip in &self.flips {
                line(String::new());
                for text in flip_lines(flip) {
                    line(text);
                }
            }
        }
        line(String::new());
        let widened = self.widened();
        let verdict = match (self.fails(fail_on), fail_on) {
            (true, FailOn::DenyToAllow) => format!(
                "fail: {} from deny (or error) to allow",
                plural(widened, "request goes", "requests go")
            ),
            (true, FailOn::Any) => format!(
                "fail: {} (--fail-on any), {widened} of them to allow",
                plural(self.flips.len() as u64, "request flips", "requests flip")
            ),
            (false, _) if self.flips.is_empty() => "ok: no request flips".to_owned(),
            (false, _) => format!(
                "ok: {} but none goes from deny (or error) to allow",
                plural(self.flips.len() as u64, "request flips", "requests flip")
            ),
        };
        line(verdict);
        out
    }

    /// The report as one JSON document, for CI.
    pub fn json(&self, fail_on: FailOn) -> String {
        let counts: Map<String, Value> = Outcome::ALL
            .into_iter()
            .map(|from| {
                let row: Map<String, Value> = Outcome::ALL
                    .into_iter()
                    .map(|to| (to.label().to_owned(), json!(self.count(from, to))))
                    .collect();
                (from.label().to_owned(), Value::Object(row))
            })
            .collect();
        let s = &self.skipped;
        let value = json!({
            "from": {"dir": self.from.dir, "policy_version": self.from.version},
            "to": {"dir": self.to.dir, "policy_version": self.to.version},
            "files": self.files,
            "requests": self.requests,
            "counts": counts,
            "flipped": self.flips.len(),
            "widened": self.widened(),
            "skipped": {
                "search": s.search,
                "shadow": s.shadow,
                "refused": s.refused,
                "log": s.log,
                "other": s.other,
            },
            "unreplayable": self.unreplayable,
            "not_reproduced": self.not_reproduced,
            "not_reproduced_at": self.not_reproduced_at.iter().map(origin_json).collect::<Vec<_>>(),
            "other_policy_version": self.other_version,
            "fail_on": fail_on.label(),
            "failed": self.fails(fail_on),
            "flips": self.flips.iter().map(flip_json).collect::<Vec<_>>(),
        });
        serde_json::to_string_pretty(&value).expect("JSON values serialize") + "\n"
    }
}

/// `n` and `one` (for 1) or `many`: "1 record is", "2 records are".
fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn flip_lines(flip: &Flip) -> Vec<String> {
    let mut lines = Vec::new();
    let mut head = format!(
        "{} -> {}  {}",
        flip.from.outcome.label(),
        flip.to.outcome.label(),
        flip.origin
    );
    if let Some(name) = &flip.origin.name {
        head.push_str(&format!(" {name:?}"));
    }
    if let Some(id) = &flip.origin.decision_id {
        head.push_str(&format!(" (decision {id})"));
    }
    if !flip.exact {
        head.push_str(" [not exact: the call sent entities]");
    }
    lines.push(head);
    lines.push(format!("  principal: {}", flip.principal));
    lines.push(format!("  action:    {}", flip.action));
    lines.push(format!("  resource:  {}", flip.resource));
    for (name, side) in [("from", &flip.from), ("to", &flip.to)] {
        match (&side.refusal, side.determining.is_empty()) {
            (Some(refusal), _) => {
                lines.push(format!(
                    "  {name}: error (the request is refused: {refusal})"
                ));
            }
            (None, true) if side.outcome == Outcome::Deny => {
                lines.push(format!("  {name}: deny (no permit applies: default deny)"));
            }
            (None, _) => {
                lines.push(format!("  {name}: {}", side.outcome.label()));
                for policy in &side.determining {
                    lines.push(match &policy.location {
                        Some(at) => format!("    {} ({at})", policy.id),
                        None => format!("    {}", policy.id),
                    });
                }
            }
        }
        for e in &side.errors {
            lines.push(format!("    error in {}: {}", e.policy_id, e.message));
        }
    }
    lines
}

fn origin_json(origin: &Origin) -> Value {
    json!({
        "file": origin.file,
        "line": origin.line,
        "item": origin.item,
        "name": origin.name,
        "decision_id": origin.decision_id,
    })
}

fn side_json(side: &Side) -> Value {
    json!({
        "decision": side.outcome.label(),
        "determining_policies": side.determining.iter().map(|p| json!({
            "id": p.id,
            "file": p.location.as_ref().map(|l| &l.file),
            "line": p.location.as_ref().and_then(|l| l.line),
            "column": p.location.as_ref().and_then(|l| l.column),
        })).collect::<Vec<_>>(),
        "errors": side.errors.iter().map(|e| json!({
            "policy_id": e.policy_id,
            "message": e.message,
        })).collect::<Vec<_>>(),
        "refusal": side.refusal,
    })
}

fn flip_json(flip: &Flip) -> Value {
    json!({
        "source": origin_json(&flip.origin),
        "principal": flip.principal,
        "action": flip.action,
        "resource": flip.resource,
        "exact": flip.exact,
        "recorded": flip.recorded.map(Outcome::label),
        "from": side_json(&flip.from),
        "to": side_json(&flip.to),
    })
}

/// Requests whose answers are kept, so that a request repeated in a log is decided once;
/// when full, the cache starts over.
const CACHED_REQUESTS: usize = 1 << 14;

/// Both answers to a request already replayed: its outcomes, and both sides when they
/// differ.
#[derive(Debug, Clone)]
struct Decided {
    from: Outcome,
    to: Outcome,
    sides: Option<(Side, Side)>,
}

/// Replays requests against two snapshots and gathers the [`Report`].
pub struct Replay<'a> {
    from: &'a Snapshot,
    to: &'a Snapshot,
    decider: &'a Decider,
    report: Report,
    /// Answers by request (principal, action, resource and context, as JSON text); a
    /// request that sends entities is always decided afresh. Snapshots and the engine
    /// are deterministic, so a cached answer is the answer.
    decided: FastMap<String, Decided>,
}

impl<'a> Replay<'a> {
    /// A replay against `from` and `to` (each with the directory it was loaded from),
    /// deciding through `decider`.
    pub fn new(
        from: (&Path, &'a Snapshot),
        to: (&Path, &'a Snapshot),
        decider: &'a Decider,
    ) -> Self {
        let info = |(dir, snapshot): (&Path, &Snapshot)| SetInfo {
            dir: dir.display().to_string(),
            version: snapshot.version().to_owned(),
        };
        Self {
            from: from.1,
            to: to.1,
            decider,
            report: Report {
                from: info(from),
                to: info(to),
                files: 0,
                requests: 0,
                counts: [[0; 3]; 3],
                flips: Vec::new(),
                skipped: Skipped::default(),
                unreplayable: 0,
                not_reproduced: 0,
                not_reproduced_at: Vec::new(),
                other_version: 0,
            },
            decided: FastMap::default(),
        }
    }

    /// Reads the input file at `path` (`-`: standard input) and replays each request in
    /// it; the error names the file and line at fault.
    pub fn file(&mut self, path: &Path) -> Result<(), String> {
        self.report.files += 1;
        read_requests(path, |entry| self.entry(entry))
    }

    /// Replays one entry of an input file (or counts it as skipped).
    pub fn entry(&mut self, entry: Entry) {
        match entry {
            Entry::Skipped(skip) => self.report.skipped.add(skip),
            Entry::Request(recorded) => self.request(*recorded),
        }
    }

    /// Decides `recorded` against both sets and notes the outcome.
    pub fn request(&mut self, recorded: Recorded) {
        let Decided {
            from: from_outcome,
            to: to_outcome,
            sides,
        } = self.decided(&recorded.request);
        let report = &mut self.report;
        report.requests += 1;
        report.counts[from_outcome.index()][to_outcome.index()] += 1;
        if !recorded.exact {
            report.unreplayable += 1;
        }
        if recorded.recorded.is_some_and(|r| r != from_outcome) {
            report.not_reproduced += 1;
            if report.not_reproduced_at.len() < NOT_REPRODUCED_SHOWN {
                report.not_reproduced_at.push(recorded.origin.clone());
            }
        }
        if recorded
            .policy_version
            .as_deref()
            .is_some_and(|v| v != report.from.version)
        {
            report.other_version += 1;
        }
        if let Some((from, to)) = sides {
            let request = &recorded.request;
            report.flips.push(Flip {
                principal: request.principal.to_string(),
                action: request.action.to_string(),
                resource: request.resource.to_string(),
                exact: recorded.exact,
                recorded: recorded.recorded,
                from,
                to,
                origin: recorded.origin,
            });
        }
    }

    /// Both answers to `request`: from the cache, or decided now (and cached).
    fn decided(&mut self, request: &RequestSpec) -> Decided {
        let key = request.entities.is_empty().then(|| {
            let parts = (
                request.principal.to_string(),
                request.action.to_string(),
                request.resource.to_string(),
                &request.context,
            );
            serde_json::to_string(&parts).expect("JSON values serialize")
        });
        if let Some(decided) = key.as_ref().and_then(|k| self.decided.get(k)) {
            return decided.clone();
        }
        let from = decide(self.from, self.decider, request);
        let to = decide(self.to, self.decider, request);
        let (from_outcome, to_outcome) = (Outcome::of(&from), Outcome::of(&to));
        let decided = Decided {
            from: from_outcome,
            to: to_outcome,
            sides: (from_outcome != to_outcome)
                .then(|| (Side::of(self.from, &from), Side::of(self.to, &to))),
        };
        if let Some(key) = key {
            if self.decided.len() >= CACHED_REQUESTS {
                self.decided.clear();
            }
            self.decided.insert(key, decided.clone());
        }
        decided
    }

    /// What was found.
    pub fn finish(self) -> Report {
        self.report
    }
}

// ---------------------------------------------------------------------------------------
// Reading input files
// ---------------------------------------------------------------------------------------

/// Reads the file at `path` (`-`: standard input) and hands each request or skipped line
/// to `each`, in order. The format is told by the content: JSON lines (audit records and
/// request objects, a line each; read a line at a time) when the first line is a whole
/// JSON object, else one document (JSON, or YAML as `authorize --request` reads it)
/// holding a request, a list of requests or records, or a test case file (`cases:`).
/// An error names the file and the line at fault.
pub fn read_requests(path: &Path, mut each: impl FnMut(Entry)) -> Result<(), String> {
    let label = path.display().to_string();
    let reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(BufReader::new(io::stdin().lock()))
    } else {
        let file = File::open(path).map_err(|e| format!("cannot read {label}: {e}"))?;
        Box::new(BufReader::with_capacity(256 * 1024, file))
    };
    let mut lines = Lines {
        reader,
        label: &label,
        number: 0,
        text: String::new(),
    };
    // Blank lines first, kept so that a document's positions stay right.
    let mut read = String::new();
    loop {
        if !lines.next()? {
            return Ok(());
        }
        read.push_str(&lines.text);
        if !lines.text.trim().is_empty() {
            break;
        }
    }
    let first = lines.text.trim_start_matches('\u{feff}').trim();
    let one_line_object =
        first.starts_with('{') && serde_json::from_str::<Map<String, Value>>(first).is_ok();
    if !one_line_object {
        lines
            .reader
            .read_to_string(&mut read)
            .map_err(|e| format!("cannot read {label}: {e}"))?;
        let document = read.trim_start_matches('\u{feff}');
        return read_document(path, &label, document, &mut each);
    }
    loop {
        let text = lines.text.trim_start_matches('\u{feff}').trim();
        if !text.is_empty() {
            let at = |message: String| format!("{label}:{}: {message}", lines.number);
            let fields = match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(fields)) => fields,
                Ok(_) => return Err(at("not a JSON object (a record or a request)".into())),
                Err(e) => return Err(at(format!("not valid JSON: {}", json_message(&e)))),
            };
            let origin = Origin {
                file: label.clone(),
                line: Some(lines.number),
                ..Origin::default()
            };
            each(entry(fields, origin).map_err(at)?);
        }
        if !lines.next()? {
            return Ok(());
        }
    }
}

/// A file read a line at a time.
struct Lines<'a> {
    reader: Box<dyn BufRead + 'a>,
    label: &'a str,
    /// The 1-based number of the line in `text`.
    number: usize,
    text: String,
}

impl Lines<'_> {
    /// Reads the next line into `text`; `false` at the end.
    fn next(&mut self) -> Result<bool, String> {
        self.text.clear();
        let n = self
            .reader
            .read_line(&mut self.text)
            .map_err(|e| format!("{}:{}: cannot read: {e}", self.label, self.number + 1))?;
        self.number += 1;
        Ok(n > 0)
    }
}

/// serde_json's message without its own "at line 1 column N" (the caller says where).
fn json_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&suffix) {
        Some(message) => format!("{message} (column {})", e.column()),
        None => text,
    }
}

/// The requests of a file read whole: JSON when it starts like JSON (or is named
/// `.json`), else YAML.
fn read_document(
    path: &Path,
    label: &str,
    text: &str,
    each: &mut impl FnMut(Entry),
) -> Result<(), String> {
    let json_named = path
        .extension()
        .is_some_and(|e| e == "json" || e == "jsonl" || e == "ndjson");
    let looks_json = matches!(text.trim_start().chars().next(), Some('{' | '['));
    let value: Value = if json_named || looks_json {
        match serde_json::from_str(text) {
            Ok(value) => value,
            // A YAML flow mapping starts like JSON; `authorize` reads it as YAML.
            Err(e) => match (json_named, serde_yaml_ng::from_str(text)) {
                (false, Ok(value)) => value,
                _ => {
                    return Err(format!(
                        "{label}:{}: not valid JSON: {}",
                        e.line(),
                        json_message(&e)
                    ));
                }
            },
        }
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| match e.location() {
            Some(at) => format!("{label}:{}: not valid YAML: {e}", at.line()),
            None => format!("{label}: not valid YAML: {e}"),
        })?
    };
    let origin = |item: Option<usize>| Origin {
        file: label.to_owned(),
        item,
        ..Origin::default()
    };
    let object = |value: Value, item: Option<usize>| match value {
        Value::Object(fields) => Ok(fields),
        _ => Err(format!(
            "{}: not an object (a request or a decision record)",
            origin(item)
        )),
    };
    match value {
        Value::Null => Ok(()),
        Value::Array(items) => {
            for (i, item) in items.into_iter().enumerate() {
                let at = origin(Some(i));
                let fields = object(item, Some(i))?;
                each(entry(fields, at.clone()).map_err(|e| format!("{at}: {e}"))?);
            }
            Ok(())
        }
        Value::Object(mut fields) if fields.contains_key("cases") => {
            let shared = match fields.remove("entities") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(entities)) => entities,
                Some(_) => return Err(format!("{label}: entities: not a list of entities")),
            };
            let Some(Value::Array(cases)) = fields.remove("cases") else {
                return Err(format!("{label}: cases: not a list of cases"));
            };
            if let Some(key) = fields.keys().next() {
                return Err(format!(
                    "{label}: unknown field `{key}`; a case file has entities and cases"
                ));
            }
            for (i, case) in cases.into_iter().enumerate() {
                let at = origin(Some(i));
                let mut fields = object(case, Some(i))?;
                let own = match fields.remove("entities") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(entities)) => entities,
                    Some(_) => return Err(format!("{at}: entities: not a list of entities")),
                };
                let entities = merge_entities(&shared, &own);
                if !entities.is_empty() {
                    fields.insert("entities".to_owned(), Value::Array(entities));
                }
                let request =
                    request_entry(fields, at.clone()).map_err(|e| format!("{at}: {e}"))?;
                each(request);
            }
            Ok(())
        }
        value => {
            let at = origin(None);
            let fields = object(value, None)?;
            each(entry(fields, at.clone()).map_err(|e| format!("{at}: {e}"))?);
            Ok(())
        }
    }
}

/// What one JSON object of an input is: an audit line (by its `kind`), a server log
/// line, or a request.
fn entry(fields: Map<String, Value>, origin: Origin) -> Result<Entry, String> {
    match fields.get("kind") {
        None if is_log_line(&fields) => Ok(Entry::Skipped(Skip::Log)),
        None => request_entry(fields, origin),
        Some(Value::String(kind)) => match kind.as_str() {
            "decision" if fields.contains_key("refused") => Ok(Entry::Skipped(Skip::Refused)),
            "decision" => audit_entry(fields, origin),
            "search" => Ok(Entry::Skipped(Skip::Search)),
            "shadow" => Ok(Entry::Skipped(Skip::Shadow)),
            _ => Ok(Entry::Skipped(Skip::Other)),
        },
        Some(_) => Err("kind: not a string (an audit record's kind is \"decision\")".to_owned()),
    }
}

/// A line `serve` logs as JSON (`timestamp`, `level`), on a stdout shared with the audit
/// log, that names no request.
fn is_log_line(fields: &Map<String, Value>) -> bool {
    fields.contains_key("timestamp")
        && fields.contains_key("level")
        && !fields.contains_key("principal")
}

/// Fails naming the first of principal, action and resource that `fields` lacks.
fn require_parts(fields: &Map<String, Value>, what: &str) -> Result<(), String> {
    match ["principal", "action", "resource"]
        .into_iter()
        .find(|key| !fields.contains_key(*key))
    {
        Some(key) => Err(format!(
            "no `{key}`: {what} needs principal, action and resource"
        )),
        None => Ok(()),
    }
}

/// A request object, as `authorize --request` reads one (a test case's own keys ignored).
fn request_entry(fields: Map<String, Value>, mut origin: Origin) -> Result<Entry, String> {
    require_parts(&fields, "a request")?;
    origin.name = fields
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let request = RequestSpec::from_fields(fields)?;
    Ok(Entry::Request(Box::new(Recorded {
        origin,
        request,
        recorded: None,
        policy_version: None,
        exact: true,
    })))
}

/// An audit decision record: what was asked (principal, action, resource, allow-listed
/// context), what was answered, and whether the call sent entities.
fn audit_entry(mut fields: Map<String, Value>, mut origin: Origin) -> Result<Entry, String> {
    require_parts(&fields, "a decision record")?;
    let uid = |key: &str| Uid::deserialize(&fields[key]).map_err(|e| format!("{key}: {e}"));
    let (principal, action, resource) = (uid("principal")?, uid("action")?, uid("resource")?);
    let context = match fields.remove("context") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(context)) => context,
        Some(_) => return Err("context: not an object".to_owned()),
    };
    let recorded = match fields.get("allowed") {
        Some(Value::String(word)) if word == "allow" => Some(Outcome::Allow),
        Some(Value::String(word)) if word == "deny" => Some(Outcome::Deny),
        Some(Value::Bool(true)) => Some(Outcome::Allow),
        Some(Value::Bool(false)) => Some(Outcome::Deny),
        _ => None,
    };
    let exact = match fields.get("request_entities") {
        None | Some(Value::Null) => true,
        Some(Value::Array(uids)) => uids.is_empty(),
        Some(_) => false,
    };
    let text = |key: &str| fields.get(key).and_then(Value::as_str).map(str::to_owned);
    origin.decision_id = text("decision_id");
    let policy_version = text("policy_version");
    Ok(Entry::Request(Box::new(Recorded {
        origin,
        request: RequestSpec {
            principal,
            action,
            resource,
            context,
            entities: Vec::new(),
        },
        recorded,
        policy_version,
        exact,
    })))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn entries(name: &str, text: &str) -> Result<Vec<Entry>, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let mut out = Vec::new();
        read_requests(&path, |e| out.push(e))?;
        Ok(out)
    }

    fn requests(found: &[Entry]) -> Vec<&Recorded> {
        found
            .iter()
            .filter_map(|e| match e {
                Entry::Request(r) => Some(&**r),
                Entry::Skipped(_) => None,
            })
            .collect()
    }

    const RECORD: &str = r#"{"time":"2026-01-01T00:00:00Z","kind":"decision","request_id":"r","decision_id":"d1","api":"is_authorized","principal":"Platform::User::\"bob\"","action":"Platform::Action::\"read\"","resource":"Platform::Document::\"acme-roadmap-q3\"","allowed":"allow","determining_policies":["project-readers"],"errors":[],"policy_version":"v1","latency":12,"context":{"mfa":true}}"#;

    #[test]
    fn an_audit_log_gives_its_decision_records_and_counts_the_rest() {
        let log = format!(
            "{RECORD}\n\n{}\n{}\n{}\n{}\n",
            r#"{"kind":"search","principal":"Platform::User::\"bob\"","action":"a","resource":"r"}"#,
            r#"{"kind":"shadow","principal":"x"}"#,
            r#"{"kind":"decision","refused":"invalid: principal","principal":"","action":"","resource":""}"#,
            r#"{"timestamp":"t","level":"INFO","message":"listening"}"#,
        );
        let found = entries("audit.log", &log).unwrap();
        let skips: Vec<_> = found
            .iter()
            .filter_map(|e| match e {
                Entry::Skipped(s) => Some(*s),
                Entry::Request(_) => None,
            })
            .collect();
        assert_eq!(
            skips,
            [Skip::Search, Skip::Shadow, Skip::Refused, Skip::Log]
        );
        let replayed = requests(&found);
        assert_eq!(replayed.len(), 1);
        let r = replayed[0];
        assert_eq!(r.origin.to_string(), format!("{}:1", r.origin.file));
        assert_eq!(r.origin.decision_id.as_deref(), Some("d1"));
        assert_eq!(r.recorded, Some(Outcome::Allow));
        assert_eq!(r.policy_version.as_deref(), Some("v1"));
        assert!(r.exact);
        assert_eq!(r.request.principal.to_string(), r#"Platform::User::"bob""#);
        assert_eq!(r.request.context["mfa"], json!(true));
    }

    #[test]
    fn a_record_of_a_call_that_sent_entities_is_not_exact() {
        let line = RECORD.replace(
            r#""context""#,
            r#""request_entities":["Platform::User::\"zed\""],"context""#,
        );
        let found = entries("audit.log", &line).unwrap();
        assert!(!requests(&found)[0].exact);
    }

    #[test]
    fn a_bad_line_is_named_by_file_and_line() {
        let log = format!("{RECORD}\n{{\"kind\":\"decision\",\"principal\n");
        let e = entries("audit.log", &log).unwrap_err();
        assert!(e.contains("audit.log:2: not valid JSON"), "{e}");
        let log = format!(
            "{RECORD}\n\n{}\n",
            r#"{"kind":"decision","principal":"Platform::User::\"bob\""}"#
        );
        let e = entries("audit.log", &log).unwrap_err();
        assert!(e.contains("audit.log:3: no `action`"), "{e}");
        let log = format!(
            "{RECORD}\n{}\n",
            RECORD.replace(r#"Platform::User::\"bob\""#, "bob")
        );
        let e = entries("audit.log", &log).unwrap_err();
        assert!(
            e.contains("audit.log:2: principal: `bob` is not an entity uid"),
            "{e}"
        );
        let e = entries("audit.log", &format!("{RECORD}\n[1]\n")).unwrap_err();
        assert!(e.contains("audit.log:2: not a JSON object"), "{e}");
    }

    #[test]
    fn request_files_are_read_as_authorize_reads_them() {
        let yaml = "principal: Platform::User::\"bob\"\naction: Platform::Action::\"read\"\n\
                    resource: Platform::Document::\"acme-roadmap-q3\"\ncontext: {mfa: true}\n";
        let found = entries("req.yaml", yaml).unwrap();
        let r = requests(&found);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].origin.to_string(), r[0].origin.file);
        assert_eq!(r[0].recorded, None);

        let pretty = "{\n  \"principal\": {\"type\": \"Platform::User\", \"id\": \"bob\"},\n  \
                      \"action\": \"Platform::Action::\\\"read\\\"\",\n  \
                      \"resource\": \"Platform::Document::\\\"x\\\"\"\n}\n";
        assert_eq!(requests(&entries("req.json", pretty).unwrap()).len(), 1);

        let array = format!(
            "[{RECORD}, {}]",
            r#"{"principal":"A::\"a\"","action":"A::\"b\"","resource":"A::\"c\""}"#
        );
        let found = entries("reqs.json", &array).unwrap();
        let r = requests(&found);
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].origin.to_string(), format!("{}[1]", r[1].origin.file));
        assert_eq!(r[0].recorded, Some(Outcome::Allow));

        let cases = "entities: [{uid: {type: A, id: e}, attrs: {}, parents: []}]\ncases:\n  - name: one\n    \
                     principal: A::\"a\"\n    action: A::\"b\"\n    resource: A::\"c\"\n    expect: allow\n";
        let found = entries("cases.yaml", cases).unwrap();
        let r = requests(&found);
        assert_eq!(r[0].origin.name.as_deref(), Some("one"));
        assert_eq!(r[0].request.entities.len(), 1);

        let e = entries("req.yaml", "principal: A::\"a\"\n").unwrap_err();
        assert!(e.contains("no `action`"), "{e}");
        let e = entries("req.json", "{\n  \"principal\": \n").unwrap_err();
        assert!(e.contains("req.json:3: not valid JSON"), "{e}");
        assert!(entries("empty.log", "\n\n").unwrap().is_empty());
    }
}
