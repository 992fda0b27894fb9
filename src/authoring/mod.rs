//! Tools for the people who write policies: `validate`, `test`, `authorize`, `fmt` and
//! `diff`.
//!
//! They sit beside the server, not on its path: each one loads the policy directory with
//! the same loader (`policy::read_dir` + `policy::build`) and decides through the same
//! [`Decider`] step that `serve` uses, so what passes here is what the server does. The
//! binary only parses flags, calls into this module and picks the exit code.

pub mod commands;
pub mod diagnostics;
pub mod diff;
pub mod format;
pub mod request;
pub mod suite;
pub mod usage;

use std::path::Path;

use serde_json::json;

use cedar_policy::EntityUid;

use crate::{
    decide::{Api, Decider, Decision, Question, Refusal},
    policy::{LoadError, LoadOptions, Loaded, Problem, Snapshot, Sources, build, read_dir},
};
use diagnostics::Severity;
use request::RequestSpec;

/// What `validate` found in a policy directory.
pub struct Validation {
    /// The files read, for showing each problem's source line.
    pub sources: Sources,
    /// What refuses the directory; empty when it is clean.
    pub errors: Vec<Problem>,
    /// What does not.
    pub warnings: Vec<Problem>,
    /// The snapshot, when it loaded.
    pub snapshot: Option<Snapshot>,
}

/// Reads and checks the directory at `dir` exactly as `serve` would load it; only an
/// unreadable directory is an `Err`.
pub fn validate(dir: &Path, options: &LoadOptions) -> Result<Validation, LoadError> {
    let sources = read_dir(dir, options.max_file_bytes)?;
    let (errors, warnings, snapshot) = match build(&sources, options) {
        Ok(Loaded { snapshot, warnings }) => (Vec::new(), warnings, Some(snapshot)),
        Err(LoadError::Invalid(errors)) => (errors, Vec::new(), None),
        Err(e) => return Err(e),
    };
    Ok(Validation {
        sources,
        errors,
        warnings,
        snapshot,
    })
}

impl Validation {
    /// Whether the directory can be served.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }

    fn all(&self) -> impl Iterator<Item = (Severity, &Problem)> {
        let errors = self.errors.iter().map(|p| (Severity::Error, p));
        errors.chain(self.warnings.iter().map(|p| (Severity::Warning, p)))
    }

    /// Every problem with its source snippet.
    pub fn problems_text(&self) -> String {
        let mut out = String::new();
        for (severity, problem) in self.all() {
            let text = self.sources.text(&problem.location.file);
            out.push_str(&diagnostics::render(severity, problem, text));
            out.push('\n');
        }
        out
    }

    /// Every problem with its source snippet, then a summary line.
    pub fn text(&self) -> String {
        let mut out = self.problems_text();
        let counts = format!(
            "{} error{}, {} warning{}",
            self.errors.len(),
            if self.errors.len() == 1 { "" } else { "s" },
            self.warnings.len(),
            if self.warnings.len() == 1 { "" } else { "s" },
        );
        match &self.snapshot {
            Some(s) => out.push_str(&format!(
                "ok: {} policies, {} templates, {} entities, {} (policy version {}); {counts}\n",
                s.policy_count(),
                s.template_count(),
                s.entity_count(),
                if s.schema().is_some() {
                    "schema"
                } else {
                    "no schema"
                },
                s.version()
            )),
            None => out.push_str(&format!("invalid: {counts}\n")),
        }
        out
    }

    /// `{"ok", "errors", "warnings", "diagnostics": [...]}` for CI annotations.
    pub fn json(&self) -> String {
        let diagnostics: Vec<_> = self
            .all()
            .map(|(severity, problem)| {
                let text = self.sources.text(&problem.location.file);
                diagnostics::to_json(severity, problem, text)
            })
            .collect();
        let value = json!({
            "ok": self.ok(),
            "errors": self.errors.len(),
            "warnings": self.warnings.len(),
            "policy_version": self.snapshot.as_ref().map(Snapshot::version),
            "diagnostics": diagnostics,
        });
        serde_json::to_string_pretty(&value).expect("JSON values serialize") + "\n"
    }
}

/// A decision, and the request's principal or resource that no entity stands for.
#[derive(Debug, Clone)]
pub struct Answer {
    /// What the server would answer.
    pub decision: Decision,
    /// `principal` or `resource`, with its uid, when it is neither stored nor sent with
    /// the request: Cedar then sees an entity with no attributes and no parents, which in
    /// a test is almost always a misspelt uid.
    pub unknown: Vec<(&'static str, String)>,
}

/// Decides `request` against `snapshot` as the server would: through `decider`, the
/// step every front end of the server takes.
pub fn decide(
    snapshot: &Snapshot,
    decider: &Decider,
    request: &RequestSpec,
) -> Result<Answer, Refusal> {
    // The engine names the gRPC fields; a request file calls them `context`, `entities`.
    let rename = |e: Refusal| {
        e.map_field(|field| {
            for (wire, written) in [("context_json", "context"), ("entities_json", "entities")] {
                if let Some(rest) = field.strip_prefix(wire) {
                    return format!("{written}{rest}");
                }
            }
            field
        })
    };
    let (query, entities) = request.query();
    let call = decider.start(Api::IsAuthorized, None, None);
    let decision = decider
        .decide(&call, snapshot, entities, Question::from(query))
        .map_err(rename)?;
    let sent: Vec<EntityUid> = request
        .entities
        .iter()
        .filter_map(|e| EntityUid::from_json(e.get("uid")?.clone()).ok())
        .collect();
    let unknown = [
        ("principal", &request.principal),
        ("resource", &request.resource),
    ]
    .into_iter()
    .filter(|(_, uid)| snapshot.entities().get(&uid.0).is_none() && !sent.contains(&uid.0))
    .map(|(role, uid)| (role, uid.to_string()))
    .collect();
    Ok(Answer { decision, unknown })
}

/// Notes on an answer's unknown entities, a line each.
pub fn unknown_lines(answer: &Answer) -> Vec<String> {
    answer
        .unknown
        .iter()
        .map(|(role, uid)| {
            format!(
                "note: the {role} {uid} is not a known entity (not in entities.json, not sent \
                 with the request): Cedar sees it with no attributes and no parents"
            )
        })
        .collect()
}

/// `authorize`'s answer for a reader: the decision, why, and the policy version.
pub fn decision_text(snapshot: &Snapshot, answer: &Answer) -> String {
    let decision = &answer.decision;
    let word = decision.effect().label();
    let mut out = format!("decision: {word}\n");
    for line in suite::decision_lines(snapshot, decision) {
        out.push_str(&line);
        out.push('\n');
    }
    for line in unknown_lines(answer) {
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str(&format!("policy version: {}\n", snapshot.version()));
    out
}

/// `authorize`'s answer as JSON, each determining policy with where it is.
pub fn decision_json(snapshot: &Snapshot, answer: &Answer) -> String {
    let decision = &answer.decision;
    let determining: Vec<_> = decision
        .determining_policies()
        .iter()
        .map(|id| {
            let at = snapshot.policy_location(id);
            json!({
                "id": id,
                "file": at.map(|l| &l.file),
                "line": at.and_then(|l| l.line),
                "column": at.and_then(|l| l.column),
            })
        })
        .collect();
    let errors: Vec<_> = decision
        .errors()
        .iter()
        .map(|e| json!({"policy_id": e.policy_id, "message": e.message}))
        .collect();
    let value = json!({
        "decision": decision.effect().label(),
        "determining_policies": determining,
        "errors": errors,
        "unknown_entities": answer
            .unknown
            .iter()
            .map(|(role, uid)| json!({"role": role, "uid": uid}))
            .collect::<Vec<_>>(),
        "policy_version": snapshot.version(),
    });
    serde_json::to_string_pretty(&value).expect("JSON values serialize") + "\n"
}
