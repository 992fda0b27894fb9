//! Policy tests: the case files under a policy directory's top-level `tests/` folder, run
//! against the directory's snapshot by the same engine `serve` uses, reported like
//! `cargo test`, as JUnit XML for CI systems, and as coverage (which policies no case
//! ever saw decide).
//!
//! A case file (YAML, or the same shape in JSON):
//!
//! ```yaml
//! entities: []            # optional: entities every case of this file sends
//! cases:
//!   - name: bob reads his team's roadmap
//!     principal: Platform::User::"bob"
//!     action: Platform::Action::"read"
//!     resource: Platform::Document::"acme-roadmap-q3"
//!     context: { mfa: true }          # optional, Cedar's JSON context format
//!     entities: []                    # optional, this case's own entities
//!     expect: allow                   # allow | deny
//!     determining: [project-readers]  # optional: exactly these policies decide
//! ```

use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::request::{RequestSpec, Uid, merge_entities};
use crate::{
    decide::{Decider, Decision, Refusal},
    policy::{Location, Problem, Snapshot},
};

/// The decision a case expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// Some permit applies and no forbid does.
    Allow,
    /// Anything else.
    Deny,
}

impl Expect {
    fn word(self) -> &'static str {
        match self {
            Expect::Allow => "allow",
            Expect::Deny => "deny",
        }
    }

    fn of(allowed: bool) -> Self {
        if allowed { Expect::Allow } else { Expect::Deny }
    }
}

/// One test case: a request and what it must decide.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Shown in the output; unique within its file.
    pub name: String,
    /// Who asks.
    pub principal: Uid,
    /// What they want to do.
    pub action: Uid,
    /// To what.
    pub resource: Uid,
    /// Cedar's JSON context format.
    #[serde(default)]
    pub context: Map<String, Value>,
    /// This case's own entities, over the file's and the stored ones.
    #[serde(default)]
    pub entities: Vec<Value>,
    /// The decision it must get.
    pub expect: Expect,
    /// When given, exactly these policy ids must be the determining ones.
    #[serde(default)]
    pub determining: Option<Vec<String>>,
    /// The policies expected to fail evaluation (a permit that errors is skipped, a forbid
    /// that errors denies); any other evaluation error fails the case.
    #[serde(default)]
    pub errors: Vec<String>,
    /// Let the principal or resource be an entity that is neither stored nor sent;
    /// otherwise that fails the case, as it is almost always a misspelt uid.
    #[serde(default)]
    pub allow_unknown_entities: bool,
}

/// A case file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default)]
    entities: Vec<Value>,
    cases: Vec<Case>,
}

/// The cases of one file, with the file's shared entities.
#[derive(Debug, Clone)]
pub struct Suite {
    /// Path relative to the policy directory, e.g. `tests/tenancy.yaml`.
    pub file: String,
    /// Entities every case of the file sends.
    pub entities: Vec<Value>,
    /// The cases, in file order.
    pub cases: Vec<Case>,
}

/// Every case file under `dir/tests` (`*.yaml`, `*.yml`, `*.json`, subfolders included,
/// hidden entries skipped), parsed; or every problem found, each located in its file.
pub fn discover(dir: &Path) -> Result<Vec<Suite>, Vec<Problem>> {
    let root = dir.join("tests");
    if !root.is_dir() {
        return Err(vec![Problem::new(
            Location::file("tests"),
            "no tests folder: put case files (*.yaml, *.yml, *.json) in tests/ at the top \
             of the policy directory",
        )]);
    }
    let mut suites = Vec::new();
    let mut problems = Vec::new();
    let walker = walkdir::WalkDir::new(&root)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
    for entry in walker {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                let rel = e
                    .path()
                    .map_or_else(|| "tests".to_owned(), |p| relative(dir, p));
                problems.push(Problem::new(
                    Location::file(rel),
                    format!("cannot read: {e}"),
                ));
                continue;
            }
        };
        let name = entry.file_name().to_string_lossy();
        let json = name.ends_with(".json");
        if !entry.file_type().is_file()
            || !(json || name.ends_with(".yaml") || name.ends_with(".yml"))
        {
            continue;
        }
        let rel = relative(dir, entry.path());
        match std::fs::read_to_string(entry.path()) {
            Ok(text) => match parse(&rel, &text, json) {
                Ok(suite) => suites.push(suite),
                Err(problem) => problems.push(problem),
            },
            Err(e) => problems.push(Problem::new(
                Location::file(rel),
                format!("cannot read: {e}"),
            )),
        }
    }
    if problems.is_empty() && suites.iter().all(|s| s.cases.is_empty()) {
        problems.push(Problem::new(
            Location::file("tests"),
            "no test cases found (case files are *.yaml, *.yml or *.json with a `cases` list)",
        ));
    }
    match problems.is_empty() {
        true => Ok(suites),
        false => Err(problems),
    }
}

fn relative(dir: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(dir).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// One case file's text, as YAML or JSON, into a suite; a problem names the line.
fn parse(rel: &str, text: &str, json: bool) -> Result<Suite, Problem> {
    let parsed: Result<CaseFile, (String, Option<(usize, usize)>)> = if json {
        serde_json::from_str(text)
            .map_err(|e| (e.to_string(), Some((e.line().max(1), e.column().max(1)))))
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| {
            let at = e.location().map(|l| (l.line(), l.column()));
            (e.to_string(), at)
        })
    };
    let file = parsed.map_err(|(mut message, at)| {
        // The location is shown apart; drop the parser's own " at line L column C".
        if let Some(cut) = message.rfind(" at line ") {
            message.truncate(cut);
        }
        let location = Location {
            file: rel.to_owned(),
            line: at.map(|(line, _)| line),
            column: at.map(|(_, column)| column),
        };
        Problem::new(location, message)
    })?;
    let mut seen = HashSet::new();
    for (i, case) in file.cases.iter().enumerate() {
        if !seen.insert(case.name.as_str()) {
            return Err(Problem::new(
                Location::file(rel),
                format!("cases[{i}]: the case name `{}` is used twice", case.name),
            ));
        }
    }
    Ok(Suite {
        file: rel.to_owned(),
        entities: file.entities,
        cases: file.cases,
    })
}

/// How one case went.
#[derive(Debug, Clone)]
pub struct CaseReport {
    /// The case's name.
    pub name: String,
    /// Time to decide it (building the request included).
    pub elapsed: Duration,
    /// The decision, or why the engine refused the request.
    pub result: Result<super::Answer, Refusal>,
    /// Why it failed: one line per unmet expectation; empty when it passed.
    pub failures: Vec<String>,
    /// Failure details for a reader: the decision, determining policies, errors.
    pub details: Vec<String>,
}

impl CaseReport {
    /// Whether every expectation held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// How one case file went.
#[derive(Debug, Clone)]
pub struct SuiteReport {
    /// The file, relative to the policy directory.
    pub file: String,
    /// Its cases, in file order.
    pub cases: Vec<CaseReport>,
}

/// Which policies determined at least one case.
#[derive(Debug, Clone)]
pub struct Coverage {
    /// Every policy id with where it starts and how many cases it determined, in
    /// file and line order.
    pub policies: Vec<(String, Option<Location>, usize)>,
}

impl Coverage {
    /// Policies that determined at least one case.
    pub fn covered(&self) -> usize {
        self.policies.iter().filter(|(_, _, n)| *n > 0).count()
    }
}

/// The outcome of a test run.
#[derive(Debug, Clone)]
pub struct Report {
    /// Per file, in directory order.
    pub suites: Vec<SuiteReport>,
    /// Policy coverage over the cases that ran.
    pub coverage: Coverage,
    /// The version of the policy set tested.
    pub policy_version: String,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

/// Runs every case of `suites` whose `file: name` contains `filter` (all when `None`)
/// against `snapshot`.
pub fn run(
    snapshot: &Snapshot,
    decider: &Decider,
    suites: &[Suite],
    filter: Option<&str>,
) -> Report {
    let started = Instant::now();
    let mut determined: BTreeMap<String, usize> = BTreeMap::new();
    let known: HashSet<String> = snapshot
        .policies()
        .policies()
        .map(|p| p.id().to_string())
        .collect();
    let mut reports = Vec::new();
    for suite in suites {
        let mut cases = Vec::new();
        for case in &suite.cases {
            if filter.is_some_and(|f| !format!("{}: {}", suite.file, case.name).contains(f)) {
                continue;
            }
            let report = run_case(snapshot, decider, suite, case, &known);
            if let Ok(answer) = &report.result {
                for id in answer.decision.determining_policies() {
                    *determined.entry(id.clone()).or_default() += 1;
                }
            }
            cases.push(report);
        }
        if !cases.is_empty() {
            reports.push(SuiteReport {
                file: suite.file.clone(),
                cases,
            });
        }
    }
    let mut policies: Vec<(String, Option<Location>, usize)> = known
        .into_iter()
        .map(|id| {
            let location = snapshot.policy_location(&id).cloned();
            let count = determined.get(&id).copied().unwrap_or(0);
            (id, location, count)
        })
        .collect();
    policies.sort_by(|a, b| {
        let key = |p: &(String, Option<Location>, usize)| {
            p.1.as_ref()
                .map(|l| (l.file.clone(), l.line.unwrap_or(0), l.column.unwrap_or(0)))
        };
        key(a).cmp(&key(b)).then_with(|| a.0.cmp(&b.0))
    });
    Report {
        suites: reports,
        coverage: Coverage { policies },
        policy_version: snapshot.version().to_owned(),
        elapsed: started.elapsed(),
    }
}

fn run_case(
    snapshot: &Snapshot,
    decider: &Decider,
    suite: &Suite,
    case: &Case,
    known: &HashSet<String>,
) -> CaseReport {
    let spec = RequestSpec {
        principal: case.principal.clone(),
        action: case.action.clone(),
        resource: case.resource.clone(),
        context: case.context.clone(),
        entities: merge_entities(&suite.entities, &case.entities),
    };
    let started = Instant::now();
    let result = super::decide(snapshot, decider, &spec);
    let elapsed = started.elapsed();
    let mut failures = Vec::new();
    let mut details = Vec::new();
    match &result {
        Err(e) => failures.push(format!("the request was refused: {e}")),
        Ok(answer) => {
            let decision = &answer.decision;
            if !case.allow_unknown_entities {
                for (role, uid) in &answer.unknown {
                    failures.push(format!(
                        "the {role} {uid} is not a known entity (not in entities.json, not \
                         sent with the case); fix the uid, or set allow_unknown_entities: true"
                    ));
                }
            }
            let mut errored: Vec<&str> = decision
                .errors()
                .iter()
                .map(|e| e.policy_id.as_str())
                .collect();
            errored.dedup();
            let mut expected_errors: Vec<&str> = case.errors.iter().map(String::as_str).collect();
            expected_errors.sort_unstable();
            expected_errors.dedup();
            if errored != expected_errors {
                failures.push(format!(
                    "expected evaluation errors in [{}], got [{}] (an erroring permit is \
                     skipped and an erroring forbid denies; list the ones you expect under \
                     `errors`)",
                    expected_errors.join(", "),
                    errored.join(", ")
                ));
            }
            let got = Expect::of(decision.allowed());
            details.push(format!("decision: {}", got.word()));
            if got != case.expect {
                failures.push(format!(
                    "expected {}, got {}",
                    case.expect.word(),
                    got.word()
                ));
            }
            if let Some(expected) = &case.determining {
                for id in expected.iter().filter(|id| !known.contains(*id)) {
                    failures.push(format!(
                        "`determining` names `{id}`, which is not a policy of this set"
                    ));
                }
                let mut expected = expected.clone();
                expected.sort_unstable();
                expected.dedup();
                if expected != decision.determining_policies() {
                    failures.push(format!(
                        "expected determining policies [{}], got [{}]",
                        expected.join(", "),
                        decision.determining_policies().join(", ")
                    ));
                }
            }
            details.extend(decision_lines(snapshot, decision));
        }
    }
    CaseReport {
        name: case.name.clone(),
        elapsed,
        result,
        failures,
        details,
    }
}

/// The determining policies (each with where it is) and the evaluation errors of a
/// decision, as lines for a reader; shared by `test` failures and `authorize`.
pub fn decision_lines(snapshot: &Snapshot, decision: &Decision) -> Vec<String> {
    let mut lines = Vec::new();
    if decision.determining_policies().is_empty() {
        lines.push(match decision.allowed() {
            true => "determining policies: none".to_owned(),
            false => "determining policies: none (no permit applies: default deny)".to_owned(),
        });
    } else {
        lines.push("determining policies:".to_owned());
        for id in decision.determining_policies() {
            lines.push(match snapshot.policy_location(id) {
                Some(at) => format!("  {id} ({at})"),
                None => format!("  {id}"),
            });
        }
    }
    if decision.errors().is_empty() {
        lines.push("errors: none".to_owned());
    } else {
        lines.push("errors (these policies were skipped):".to_owned());
        for e in decision.errors() {
            lines.push(format!("  {}: {}", e.policy_id, e.message));
        }
    }
    lines
}

impl Report {
    /// Cases that passed.
    pub fn passed(&self) -> usize {
        self.cases().filter(|(_, c)| c.passed()).count()
    }

    /// Cases that failed.
    pub fn failed(&self) -> usize {
        self.cases().filter(|(_, c)| !c.passed()).count()
    }

    fn cases(&self) -> impl Iterator<Item = (&str, &CaseReport)> {
        self.suites
            .iter()
            .flat_map(|s| s.cases.iter().map(move |c| (s.file.as_str(), c)))
    }

    /// The `cargo test`-like report: a line per case, failure details, optionally
    /// coverage, and the closing `N passed, M failed` line.
    pub fn text(&self, coverage: bool) -> String {
        let mut out = String::new();
        let total = self.passed() + self.failed();
        let _ = writeln!(
            out,
            "running {total} case{} from {} file{} (policy version {})\n",
            plural(total),
            self.suites.len(),
            plural(self.suites.len()),
            self.policy_version
        );
        for (file, case) in self.cases() {
            let verdict = if case.passed() { "ok" } else { "FAILED" };
            let _ = writeln!(out, "case {file}: {} ... {verdict}", case.name);
        }
        let failed: Vec<_> = self.cases().filter(|(_, c)| !c.passed()).collect();
        if !failed.is_empty() {
            out.push_str("\nfailures:\n");
            for (file, case) in &failed {
                let _ = writeln!(out, "\n---- {file}: {} ----", case.name);
                for failure in &case.failures {
                    let _ = writeln!(out, "{failure}");
                }
                for line in &case.details {
                    let _ = writeln!(out, "  {line}");
                }
            }
            out.push_str("\nfailures:\n");
            for (file, case) in &failed {
                let _ = writeln!(out, "    {file}: {}", case.name);
            }
        }
        if coverage {
            out.push('\n');
            out.push_str(&self.coverage_text());
        }
        let _ = writeln!(out, "\n{} passed, {} failed", self.passed(), self.failed());
        out
    }

    /// Which policies determined a case and which never did.
    pub fn coverage_text(&self) -> String {
        let policies = &self.coverage.policies;
        let covered = self.coverage.covered();
        let percent = match policies.len() {
            0 => 100.0,
            n => covered as f64 * 100.0 / n as f64,
        };
        let mut out = format!(
            "coverage: {covered} of {} policies determined at least one case ({percent:.1}%)\n",
            policies.len()
        );
        for (id, location, count) in policies {
            let at = location
                .as_ref()
                .map(|l| format!(" ({l})"))
                .unwrap_or_default();
            let _ = match count {
                0 => writeln!(out, "  never  {id}{at}"),
                n => writeln!(out, "  {n:>5}  {id}{at}"),
            };
        }
        if covered < policies.len() {
            out.push_str(
                "policies marked `never` determined no case: add a case that they decide\n",
            );
        }
        out
    }

    /// JUnit XML, as CI systems (GitHub, GitLab, Jenkins) read it: a test suite per file,
    /// a test case per case, a `failure` with the details for each failed one.
    pub fn junit(&self) -> String {
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            out,
            "<testsuites name=\"cedar-pdp\" tests=\"{}\" failures=\"{}\" errors=\"0\" time=\"{:.6}\">",
            self.passed() + self.failed(),
            self.failed(),
            self.elapsed.as_secs_f64()
        );
        for suite in &self.suites {
            let failures = suite.cases.iter().filter(|c| !c.passed()).count();
            let time: Duration = suite.cases.iter().map(|c| c.elapsed).sum();
            let _ = writeln!(
                out,
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" time=\"{:.6}\">",
                xml_escape(&suite.file),
                suite.cases.len(),
                time.as_secs_f64()
            );
            for case in &suite.cases {
                let _ = write!(
                    out,
                    "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.6}\"",
                    xml_escape(&case.name),
                    xml_escape(&suite.file),
                    case.elapsed.as_secs_f64()
                );
                if case.passed() {
                    out.push_str("/>\n");
                    continue;
                }
                let mut body = case.failures.join("\n");
                for line in &case.details {
                    body.push('\n');
                    body.push_str(line);
                }
                let _ = writeln!(
                    out,
                    ">\n      <failure message=\"{}\" type=\"decision\">{}</failure>\n    </testcase>",
                    xml_escape(&case.failures.join("; ")),
                    xml_text(&body)
                );
            }
            out.push_str("  </testsuite>\n");
        }
        out.push_str("</testsuites>\n");
        out
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Text made safe for an XML attribute value: markup escaped, line breaks kept as
/// references, and characters XML 1.0 cannot hold at all (most controls) replaced.
fn xml_escape(text: &str) -> String {
    xml_text(text).replace('\n', "&#10;")
}

/// Text made safe for XML element content (line breaks stay as they are).
fn xml_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push('\n'),
            '\t' | '\r' => out.push(' '),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_escape_leaves_no_markup_and_no_forbidden_characters() {
        let escaped = xml_escape("a<b>&\"c'\u{1}\u{0}\n");
        assert_eq!(escaped, "a&lt;b&gt;&amp;&quot;c&apos;\u{FFFD}\u{FFFD}&#10;");
    }

    #[test]
    fn a_yaml_type_error_is_located_at_its_line() {
        let text = "cases:\n  - name: x\n    principal: User::\"a\"\n    action: Action::\"r\"\n    resource: Doc::\"d\"\n    expected: allow\n";
        let problem = parse("tests/x.yaml", text, false).unwrap_err();
        assert_eq!(problem.location.line, Some(6), "{problem}");
        assert!(
            problem.message.contains("unknown field `expected`"),
            "{problem}"
        );
    }

    #[test]
    fn a_bad_uid_is_refused_at_its_line() {
        let text = "cases:\n  - name: x\n    principal: alice\n    action: Action::\"r\"\n    resource: Doc::\"d\"\n    expect: allow\n";
        let problem = parse("tests/x.yaml", text, false).unwrap_err();
        assert_eq!(problem.location.line, Some(3), "{problem}");
        assert!(
            problem.message.contains("`alice` is not an entity uid"),
            "{problem}"
        );
    }

    #[test]
    fn a_json_case_file_parses_like_yaml() {
        let text = r#"{"cases": [{"name": "x", "principal": {"type": "User", "id": "a"},
            "action": "Action::\"r\"", "resource": "Doc::\"d\"", "expect": "deny"}]}"#;
        let suite = parse("tests/x.json", text, true).unwrap();
        assert_eq!(suite.cases[0].principal.to_string(), "User::\"a\"");
        assert_eq!(suite.cases[0].expect, Expect::Deny);
    }

    #[test]
    fn a_case_name_used_twice_is_refused() {
        let case = "  - {name: x, principal: 'U::\"a\"', action: 'A::\"r\"', resource: 'D::\"d\"', expect: deny}\n";
        let problem = parse("tests/x.yaml", &format!("cases:\n{case}{case}"), false).unwrap_err();
        assert!(problem.message.contains("used twice"), "{problem}");
    }
}
