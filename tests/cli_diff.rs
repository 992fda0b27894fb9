//! `cedar-pdp diff` as a policy author or a CI job runs it: traffic recorded by the real
//! server's audit log (gRPC decisions, a batch, AuthZEN evaluations and a search) is
//! replayed against the example policies and a hand-made change of them, and the command
//! must report exactly the flips that change causes — which requests, which direction,
//! which policies decided before and after — with the exit code DESIGN.md gives (1 when a
//! deny becomes an allow; `--fail-on any` for any flip). Request files, mixed inputs and
//! bad input (a malformed line named by file and line, a missing file, an invalid
//! directory) are checked through the built binary too.

mod common;
#[path = "common/http.rs"]
mod http;

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Output, Stdio},
};

use cedar_pdp::{
    Config,
    proto::cedarpdp::v1 as pb,
    telemetry::{AuditOptions, AuditSink},
};
use common::*;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------------------

/// Runs `cedar-pdp diff ARGS...`.
fn diff<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    cedar_pdp()
        .arg("diff")
        .args(args)
        .output()
        .expect("run cedar-pdp")
}

fn stdout_of(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("stdout is UTF-8")
}

/// Panics with both streams when `output` did not exit with `code`.
#[track_caller]
fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "expected exit {code}\n--- stdout:\n{}\n--- stderr:\n{}",
        stdout_of(output),
        stderr_of(output)
    );
}

/// Fails showing the whole `text` unless it contains `needle`.
#[track_caller]
fn assert_contains(text: &str, needle: &str) {
    assert!(text.contains(needle), "expected {needle:?} in:\n{text}");
}

/// The JSON report on stdout.
#[track_caller]
fn report_of(output: &Output) -> Value {
    serde_json::from_str(&stdout_of(output))
        .unwrap_or_else(|e| panic!("stdout is one JSON document ({e}):\n{}", stdout_of(output)))
}

/// Prints the report when `CEDAR_PDP_SHOW_DIFF` is set (`--nocapture` shows it): how the
/// README's examples are made.
fn show(output: &Output) {
    if std::env::var_os("CEDAR_PDP_SHOW_DIFF").is_some() {
        println!("{}", stdout_of(output));
    }
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

// ---------------------------------------------------------------------------------------
// Policy directories: the example set and hand-made changes of it
// ---------------------------------------------------------------------------------------

/// Replaces `old` (which must be there) with `new` in `rel` under `dir`.
fn edit(dir: &Path, rel: &str, old: &str, new: &str) {
    let path = dir.join(rel);
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains(old), "{rel} holds {old:?}");
    fs::write(&path, text.replacen(old, new, 1)).unwrap();
}

/// The Acme contractor rule (`tenants/acme.0`): contractors may not share.
const CONTRACTOR_FORBID: &str = r#"forbid (
  principal is Platform::User,
  action == Platform::Action::"share",
  resource is Platform::Document
)
unless
{
  (principal has contractor && !principal.contractor) ||
  (resource has tenant && resource.tenant != Platform::Tenant::"acme")
};
"#;

/// A new permit: project viewers may write the project's documents.
const VIEWERS_WRITE: &str = r#"
@id("viewers-write")
permit (
  principal is Platform::User,
  action == Platform::Action::"write",
  resource is Platform::Document
)
when
{
  resource has project &&
  resource.project has viewers &&
  principal in resource.project.viewers
};
"#;

/// `project-readers` narrowed: editors read, viewers no longer do.
fn narrow_project_readers(dir: &Path) {
    edit(
        dir,
        "users.cedar",
        "  ((resource.project has viewers && principal in resource.project.viewers) ||\n   \
         (resource.project has editors && principal in resource.project.editors))",
        "  (resource.project has editors && principal in resource.project.editors)",
    );
}

/// A copy of the example set at `to` with the contractor forbid removed, the viewers'
/// write permit added and `project-readers` narrowed.
fn widened_copy(to: &Path) {
    copy_dir(&example_policies(), to);
    edit(to, "tenants/acme.cedar", CONTRACTOR_FORBID, "");
    let users = to.join("users.cedar");
    let mut text = fs::read_to_string(&users).unwrap();
    text.push_str(VIEWERS_WRITE);
    fs::write(&users, text).unwrap();
    narrow_project_readers(to);
}

/// A copy of the example set at `to` with `project-readers` narrowed only.
fn narrowed_copy(to: &Path) {
    copy_dir(&example_policies(), to);
    narrow_project_readers(to);
}

/// The 1-based line of the first line of `rel` under `dir` that holds `text`.
fn line_of(dir: &Path, rel: &str, text: &str) -> u64 {
    let content = fs::read_to_string(dir.join(rel)).unwrap();
    let index = content
        .lines()
        .position(|line| line.contains(text))
        .unwrap_or_else(|| panic!("{rel} has no line with {text:?}"));
    index as u64 + 1
}

// ---------------------------------------------------------------------------------------
// Traffic recorded by the real server
// ---------------------------------------------------------------------------------------

/// What the server was asked, and the audit log it wrote.
struct Traffic {
    _dir: tempfile::TempDir,
    /// The audit log.
    log: PathBuf,
    /// The decision id each named request got.
    ids: BTreeMap<&'static str, String>,
}

impl Traffic {
    fn id(&self, name: &str) -> &str {
        &self.ids[name]
    }

    /// The 1-based line of the audit log whose record has decision id `id`.
    fn line(&self, id: &str) -> u64 {
        let text = fs::read_to_string(&self.log).unwrap();
        let index = text
            .lines()
            .position(|line| serde_json::from_str::<Value>(line).unwrap()["decision_id"] == id)
            .unwrap_or_else(|| panic!("no record of {id}"));
        index as u64 + 1
    }
}

/// A server on the example policies that audits every decision (allows sampled at 1)
/// with `mfa`, `source_ip` and `now` on the context allow-list — but not `risk_score` —
/// and answers AuthZEN in the example's namespace.
fn audited(log: &Path) -> Config {
    let mut config = Config {
        policies: example_policies(),
        audit: AuditOptions {
            sink: AuditSink::File(log.to_owned()),
            allow_sample_rate: 1.0,
            context_keys: ["mfa", "source_ip", "now"].map(String::from).to_vec(),
            ..AuditOptions::default()
        },
        ..Config::default()
    };
    config.authzen.listen = Some("127.0.0.1:0".parse().unwrap());
    config.authzen.namespace = Some("Platform".to_owned());
    config
}

/// zed, a user the directory does not know, sent with the request: in Acme engineering.
const ZED: &str = r#"[{"uid": {"type": "Platform::User", "id": "zed"},
  "attrs": {"tenant": {"__entity": {"type": "Platform::Tenant", "id": "acme"}},
            "email": "zed@acme.example", "suspended": false, "contractor": false},
  "parents": [{"type": "Platform::Group", "id": "acme-engineering"}]}]"#;

/// Sends a known set of requests through the real server (gRPC one by one, a gRPC batch,
/// AuthZEN evaluations and a search) and returns the audit log once every record is in.
async fn record_traffic() -> Traffic {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let server = TestServer::start_with(audited(&log)).await;
    let mut client = server.client().await;
    let mut ids = BTreeMap::new();
    let doc = |id: &str| p("Document", id);
    let user = |id: &str| p("User", id);

    let one = |name: &'static str, request: pb::IsAuthorizedRequest, allowed: bool| {
        let mut client = client.clone();
        async move {
            let answer = client.is_authorized(request).await.unwrap().into_inner();
            assert_eq!(is_allow(&answer), allowed, "{name}: {answer:?}");
            (name, answer.decision_id)
        }
    };
    let mut sent = Vec::new();
    // bob owns and edits the roadmap.
    sent.push(
        one(
            "bob reads",
            request(user("bob"), action("read"), doc("acme-roadmap-q3")),
            true,
        )
        .await,
    );
    // carol is an Acme contractor: she may not share, even her own notes.
    sent.push(
        one(
            "carol shares",
            request(user("carol"), action("share"), doc("acme-carol-notes")),
            false,
        )
        .await,
    );
    // carol views the roadmap project: she reads, she may not write.
    sent.push(
        one(
            "carol writes",
            request(user("carol"), action("write"), doc("acme-roadmap-q3")),
            false,
        )
        .await,
    );
    sent.push(
        one(
            "carol reads",
            request(user("carol"), action("read"), doc("acme-roadmap-q3")),
            true,
        )
        .await,
    );
    // dave is at Globex.
    sent.push(
        one(
            "dave reads",
            request(user("dave"), action("read"), doc("acme-roadmap-q3")),
            false,
        )
        .await,
    );
    // erin audits Acme; the board minutes are restricted: she reads them with MFA only.
    let mut erin = request(user("erin"), action("read"), doc("acme-board-minutes"));
    erin.context = strong_context();
    sent.push(one("erin reads with mfa", erin, true).await);
    sent.push(
        one(
            "erin reads without mfa",
            request(user("erin"), action("read"), doc("acme-board-minutes")),
            false,
        )
        .await,
    );
    // zed exists only in the entities sent with the request.
    let mut zed = request(user("zed"), action("read"), doc("acme-roadmap-q3"));
    zed.entities_json = ZED.to_owned();
    sent.push(one("zed reads", zed, true).await);
    // A risk score above 0.8 denies; the key is not on the audit allow-list.
    let mut risky = request(user("bob"), action("read"), doc("acme-roadmap-q3"));
    risky.context = context(&[("risk_score", ext("decimal", "0.9"))]);
    sent.push(one("bob reads at high risk", risky, false).await);
    ids.extend(sent);

    // A batch: each item is a record of its own.
    let item = |principal: pb::EntityUid, act: &str, resource: pb::EntityUid| pb::BatchItem {
        principal: Some(principal),
        action: Some(action(act)),
        resource: Some(resource),
        ..Default::default()
    };
    let batch = client
        .batch_is_authorized(pb::BatchIsAuthorizedRequest {
            items: vec![
                item(user("carol"), "share", doc("acme-carol-notes")),
                item(user("bob"), "read", doc("acme-roadmap-q3")),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    ids.insert("batch: carol shares", batch.results[0].decision_id.clone());
    ids.insert("batch: bob reads", batch.results[1].decision_id.clone());

    // AuthZEN: a search (not a decision) and two evaluations, one refused.
    let authzen = server.authzen_addr.unwrap();
    let search = http::post_json(
        authzen,
        "/access/v1/search/resource",
        &json!({"subject": {"type": "User", "id": "bob"}, "action": {"name": "read"},
                "resource": {"type": "Document"}}),
    )
    .await;
    assert_eq!(search.status, 200, "{}", search.text);
    let evaluations = http::post_json(
        authzen,
        "/access/v1/evaluations",
        &json!({"subject": {"type": "User", "id": "bob"}, "action": {"name": "read"},
                "evaluations": [
                    {"resource": {"type": "Document", "id": "acme-roadmap-q3"}},
                    {"resource": {"type": "Document"}}]}),
    )
    .await;
    assert_eq!(evaluations.status, 200, "{}", evaluations.text);
    ids.insert(
        "authzen: bob reads",
        evaluations.json["evaluations"][0]["context"]["decision_id"]
            .as_str()
            .unwrap()
            .to_owned(),
    );

    // 11 gRPC decisions, 1 search, 2 AuthZEN evaluations.
    let records = audit_lines(&log, 14).await;
    server.stop().await;
    assert_eq!(records.len(), 14, "{records:#?}");
    let entities: Vec<_> = records
        .iter()
        .filter(|r| r.get("request_entities").is_some())
        .collect();
    assert_eq!(entities.len(), 1, "only zed's call sent entities");
    assert_eq!(
        entities[0]["request_entities"],
        json!([r#"Platform::User::"zed""#])
    );
    Traffic {
        _dir: dir,
        log,
        ids,
    }
}

/// A flip as the JSON report gives it, reduced to what identifies it: decision id,
/// (principal, action, resource), and each side's decision and determining policies.
type FlipKey = (
    String,
    [String; 3],
    (String, Vec<String>),
    (String, Vec<String>),
);

fn flip_keys(report: &Value) -> Vec<FlipKey> {
    let side = |s: &Value| {
        let ids = s["determining_policies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect();
        (s["decision"].as_str().unwrap().to_owned(), ids)
    };
    report["flips"]
        .as_array()
        .expect("a flips array")
        .iter()
        .map(|f| {
            let text = |k: &str| f[k].as_str().unwrap().to_owned();
            (
                f["source"]["decision_id"].as_str().unwrap_or("").to_owned(),
                [text("principal"), text("action"), text("resource")],
                side(&f["from"]),
                side(&f["to"]),
            )
        })
        .collect()
}

fn key(
    id: &str,
    (principal, act, resource): (&str, &str, &str),
    from: (&str, &[&str]),
    to: (&str, &[&str]),
) -> FlipKey {
    let owned = |ids: &[&str]| ids.iter().map(|s| (*s).to_owned()).collect();
    (
        id.to_owned(),
        [
            format!(r#"Platform::User::"{principal}""#),
            format!(r#"Platform::Action::"{act}""#),
            format!(r#"Platform::Document::"{resource}""#),
        ],
        (from.0.to_owned(), owned(from.1)),
        (to.0.to_owned(), owned(to.1)),
    )
}

fn counts(allow_allow: u64, allow_deny: u64, deny_allow: u64, deny_deny: u64) -> Value {
    json!({
        "allow": {"allow": allow_allow, "deny": allow_deny, "error": 0},
        "deny": {"allow": deny_allow, "deny": deny_deny, "error": 0},
        "error": {"allow": 0, "deny": 0, "error": 0},
    })
}

#[tokio::test]
async fn a_recorded_audit_log_shows_exactly_the_flips_a_policy_change_causes() {
    let traffic = record_traffic().await;
    let scratch = tempfile::tempdir().unwrap();
    let changed = scratch.path().join("changed");
    widened_copy(&changed);
    let from = example_policies();

    let output = diff(&[
        "--from",
        arg(&from),
        "--to",
        arg(&changed),
        arg(&traffic.log),
        "--format",
        "json",
    ]);
    assert_exit(&output, 1);
    let report = report_of(&output);
    show(&output);

    // 12 decisions replayed: 11 gRPC (2 of them a batch) and the AuthZEN evaluation
    // decided; its refused item and the search are skipped.
    assert_eq!(report["requests"], 12, "{report:#}");
    assert_eq!(
        report["skipped"],
        json!({"search": 1, "shadow": 0, "refused": 1, "log": 0, "other": 0})
    );
    // allow→allow: bob reads (3 times: alone, in the batch, through AuthZEN), erin reads
    // with MFA, bob's high-risk read (replayed without its risk score);
    // allow→deny: carol reads; deny→allow: carol shares (twice), carol writes;
    // deny→deny: dave reads, erin without MFA, zed (replayed without his entity).
    assert_eq!(report["counts"], counts(5, 1, 3, 3), "{report:#}");
    assert_eq!(report["flipped"], 4);
    assert_eq!(report["widened"], 3);
    assert_eq!(report["unreplayable"], 1, "zed's call sent entities");
    // zed (allowed with his entity, denied without) and the high-risk read (denied for a
    // context key the log did not keep, allowed without it).
    assert_eq!(report["not_reproduced"], 2, "{report:#}");
    let not_reproduced: Vec<_> = report["not_reproduced_at"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["decision_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        not_reproduced,
        [
            traffic.id("zed reads"),
            traffic.id("bob reads at high risk")
        ]
    );
    assert_eq!(report["other_policy_version"], 0);
    assert_eq!(report["fail_on"], "deny-to-allow");
    assert_eq!(report["failed"], true);

    let expected = vec![
        key(
            traffic.id("carol shares"),
            ("carol", "share", "acme-carol-notes"),
            ("deny", &["tenants/acme.0"]),
            ("allow", &["document-owner"]),
        ),
        key(
            traffic.id("carol writes"),
            ("carol", "write", "acme-roadmap-q3"),
            ("deny", &[]),
            ("allow", &["viewers-write"]),
        ),
        key(
            traffic.id("carol reads"),
            ("carol", "read", "acme-roadmap-q3"),
            ("allow", &["project-readers"]),
            ("deny", &[]),
        ),
        key(
            traffic.id("batch: carol shares"),
            ("carol", "share", "acme-carol-notes"),
            ("deny", &["tenants/acme.0"]),
            ("allow", &["document-owner"]),
        ),
    ];
    assert_eq!(flip_keys(&report), expected, "{report:#}");

    // Each flip says where it came from and where each deciding policy is written.
    let flips = report["flips"].as_array().unwrap();
    for flip in flips {
        let id = flip["source"]["decision_id"].as_str().unwrap();
        assert_eq!(flip["source"]["file"], arg(&traffic.log));
        assert_eq!(flip["source"]["line"], traffic.line(id), "{flip:#}");
        assert_eq!(flip["exact"], true);
        assert_eq!(flip["recorded"], flip["from"]["decision"]);
    }
    assert_eq!(
        flips[0]["from"]["determining_policies"][0],
        json!({"id": "tenants/acme.0", "file": "tenants/acme.cedar",
               "line": line_of(&from, "tenants/acme.cedar", "forbid ("), "column": 1})
    );
    assert_eq!(
        flips[0]["to"]["determining_policies"][0],
        json!({"id": "document-owner", "file": "users.cedar",
               "line": line_of(&changed, "users.cedar", r#"@id("document-owner")"#), "column": 1})
    );
    assert_eq!(
        flips[1]["to"]["determining_policies"][0],
        json!({"id": "viewers-write", "file": "users.cedar",
               "line": line_of(&changed, "users.cedar", r#"@id("viewers-write")"#), "column": 1})
    );
    assert_eq!(flips[1]["from"]["errors"], json!([]));
    assert_eq!(flips[1]["from"]["refusal"], Value::Null);

    // The same as text: counts, warnings, each flip with its policies, the verdict.
    let output = diff(&[
        "--from",
        arg(&from),
        "--to",
        arg(&changed),
        arg(&traffic.log),
    ]);
    assert_exit(&output, 1);
    show(&output);
    let text = stdout_of(&output);
    assert_contains(&text, "replayed 12 requests from 1 file");
    assert_contains(&text, "skipped: 1 search record, 1 refused call");
    assert_contains(
        &text,
        "warning: 1 record sent entities with the call (request_entities)",
    );
    assert_contains(
        &text,
        &format!(
            "warning: 2 records are not reproduced by --from (the decision differs from the \
             recorded one): a context key the policies read may be missing from the audit \
             allow-list ([audit] context_keys), or the entities changed since; at {log}:{}, \
             {log}:{}\n",
            traffic.line(traffic.id("zed reads")),
            traffic.line(traffic.id("bob reads at high risk")),
            log = arg(&traffic.log)
        ),
    );
    assert_contains(&text, "  allow -> allow        5\n");
    assert_contains(&text, "  allow -> deny         1  flipped\n");
    assert_contains(&text, "  deny  -> allow        3  flipped\n");
    assert_contains(&text, "  deny  -> deny         3\n");
    let carol = traffic.id("carol shares");
    assert_contains(
        &text,
        &format!(
            "deny -> allow  {}:{} (decision {carol})\n  \
             principal: Platform::User::\"carol\"\n  \
             action:    Platform::Action::\"share\"\n  \
             resource:  Platform::Document::\"acme-carol-notes\"\n  \
             from: deny\n    \
             tenants/acme.0 (tenants/acme.cedar:{}:1)\n  \
             to: allow\n    \
             document-owner (users.cedar:{}:1)\n",
            arg(&traffic.log),
            traffic.line(carol),
            line_of(&from, "tenants/acme.cedar", "forbid ("),
            line_of(&changed, "users.cedar", r#"@id("document-owner")"#),
        ),
    );
    assert_contains(
        &text,
        "  from: deny (no permit applies: default deny)\n  to: allow\n    viewers-write (users.cedar:",
    );
    assert!(
        text.ends_with("fail: 3 requests go from deny (or error) to allow\n"),
        "{text}"
    );
}

#[tokio::test]
async fn a_change_that_only_narrows_passes_unless_any_flip_fails() {
    let traffic = record_traffic().await;
    let scratch = tempfile::tempdir().unwrap();
    let changed = scratch.path().join("narrowed");
    narrowed_copy(&changed);
    let from = example_policies();
    let args = |extra: &[&str]| {
        let mut args = vec![
            "--from",
            arg(&from),
            "--to",
            arg(&changed),
            arg(&traffic.log),
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };

    let output = diff(&args(&["--format", "json"]));
    assert_exit(&output, 0);
    show(&output);
    let report = report_of(&output);
    assert_eq!(report["counts"], counts(5, 1, 0, 6), "{report:#}");
    assert_eq!(report["widened"], 0);
    assert_eq!(report["failed"], false);
    assert_eq!(
        flip_keys(&report),
        [key(
            traffic.id("carol reads"),
            ("carol", "read", "acme-roadmap-q3"),
            ("allow", &["project-readers"]),
            ("deny", &[]),
        )]
    );

    let output = diff(&args(&[]));
    assert_exit(&output, 0);
    show(&output);
    let text = stdout_of(&output);
    assert!(
        text.ends_with("ok: 1 request flips but none goes from deny (or error) to allow\n"),
        "{text}"
    );

    let output = diff(&args(&["--fail-on", "any", "--format", "json"]));
    assert_exit(&output, 1);
    let report = report_of(&output);
    assert_eq!(report["fail_on"], "any");
    assert_eq!(report["failed"], true);
    let output = diff(&args(&["--fail-on", "any"]));
    assert_exit(&output, 1);
    assert!(
        stdout_of(&output).ends_with("fail: 1 request flips (--fail-on any), 0 of them to allow\n"),
        "{}",
        stdout_of(&output)
    );

    // The set against itself: nothing flips, whatever --fail-on says.
    let output = cedar_pdp()
        .args([
            "diff",
            "--from",
            arg(&from),
            "--to",
            arg(&from),
            "--fail-on",
            "any",
        ])
        .arg(&traffic.log)
        .output()
        .unwrap();
    assert_exit(&output, 0);
    assert!(stdout_of(&output).ends_with("ok: no request flips\n"));
}

// ---------------------------------------------------------------------------------------
// Request files, mixed inputs and bad input
// ---------------------------------------------------------------------------------------

/// A temporary folder for inputs and changed policy directories.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes `text` at `rel` and returns its path.
    fn file(&self, rel: &str, text: &str) -> PathBuf {
        write(self.dir.path(), rel, text);
        self.path(rel)
    }
}

/// An audit record as the server writes it.
fn record(id: &str, principal: &str, act: &str, resource: &str, allowed: &str) -> String {
    json!({
        "time": "2026-11-23T12:00:00.000000Z", "kind": "decision", "request_id": id,
        "decision_id": id, "api": "is_authorized",
        "principal": format!(r#"Platform::User::"{principal}""#),
        "action": format!(r#"Platform::Action::"{act}""#),
        "resource": format!(r#"Platform::Document::"{resource}""#),
        "allowed": allowed, "determining_policies": [], "errors": [],
        "policy_version": "0000000000000000", "latency": 20,
    })
    .to_string()
}

#[test]
fn request_files_and_audit_logs_mix_and_an_error_that_becomes_an_allow_is_a_widening() {
    let scratch = Scratch::new();
    // --to knows a `ticket` context key, and lets a ticket holder write.
    let changed = scratch.path("changed");
    copy_dir(&example_policies(), &changed);
    edit(
        &changed,
        "platform.cedarschema",
        "    mfa?: Bool,\n",
        "    mfa?: Bool,\n    ticket?: String,\n",
    );
    write(
        &changed,
        "tickets.cedar",
        "@id(\"ticket-write\")\npermit (principal is Platform::User, action == \
         Platform::Action::\"write\", resource is Platform::Document)\nwhen { context has ticket };\n",
    );
    // One request as `authorize --request` reads it (YAML): refused by --from's schema.
    let yaml = scratch.file(
        "ticket.yaml",
        "principal: Platform::User::\"carol\"\naction: Platform::Action::\"write\"\n\
         resource: Platform::Document::\"acme-roadmap-q3\"\ncontext: {ticket: T-1}\n",
    );
    // A JSON array of requests, pretty-printed: one unchanged, one unknown action.
    let array = scratch.file(
        "requests.json",
        r#"[
  {"principal": "Platform::User::\"bob\"", "action": "Platform::Action::\"read\"",
   "resource": "Platform::Document::\"acme-roadmap-q3\""},
  {"principal": {"type": "Platform::User", "id": "bob"},
   "action": {"type": "Platform::Action", "id": "fly"},
   "resource": {"type": "Platform::Document", "id": "acme-roadmap-q3"}}
]
"#,
    );
    // An audit log with one replayable record, and lines that are not replayed.
    let log = scratch.file(
        "audit.log",
        &[
            record("d-1", "carol", "write", "acme-roadmap-q3", "deny"),
            r#"{"time":"2026-11-23T12:00:00Z","kind":"search","request_id":"s","decision_id":"s","api":"authzen","searched":"resource","principal":"Platform::User::\"bob\"","action":"Platform::Action::\"read\"","resource":"Platform::Document","results":2,"evaluated":5,"more":false,"policy_version":"0","latency":9}"#.to_owned(),
            r#"{"kind":"shadow","decision_id":"x"}"#.to_owned(),
            r#"{"timestamp":"2026-11-23T12:00:00Z","level":"INFO","message":"policies loaded"}"#.to_owned(),
            String::new(),
        ]
        .join("\n"),
    );
    // The example set's own test cases, a case file.
    let cases = example_policies().join("tests/users.yaml");

    let output = diff(&[
        "--from",
        arg(&example_policies()),
        "--to",
        arg(&changed),
        arg(&yaml),
        arg(&array),
        arg(&log),
        arg(&cases),
        "--format",
        "json",
    ]);
    assert_exit(&output, 1);
    let report = report_of(&output);
    assert_eq!(report["files"], 4);
    assert_eq!(
        report["skipped"],
        json!({"search": 1, "shadow": 1, "refused": 0, "log": 1, "other": 0})
    );
    // The example set's policy version is not the one the hand-made record names.
    assert_eq!(report["other_policy_version"], 1);
    assert_eq!(report["not_reproduced"], 0);
    assert_eq!(report["counts"]["error"]["allow"], 1, "{report:#}");
    assert_eq!(report["counts"]["error"]["error"], 1, "the unknown action");
    assert_eq!(report["widened"], 1, "{report:#}");
    let flips = report["flips"].as_array().unwrap();
    // The ticket request: refused by --from, allowed by --to.
    assert_eq!(flips[0]["source"]["file"], arg(&yaml));
    assert_eq!(flips[0]["source"]["line"], Value::Null);
    assert_eq!(flips[0]["from"]["decision"], "error");
    assert_contains(flips[0]["from"]["refusal"].as_str().unwrap(), "ticket");
    assert_eq!(flips[0]["to"]["decision"], "allow");
    assert_eq!(
        flips[0]["to"]["determining_policies"][0]["id"],
        "ticket-write"
    );
    assert_eq!(
        flips[0]["to"]["determining_policies"][0]["file"],
        "tickets.cedar"
    );
    // The audit record, and the case of users.yaml: both are carol writing the roadmap
    // (a viewer may not write) with no ticket: denied on both sides, no flip.
    assert_eq!(flips.len(), 1, "{report:#}");

    // The same as text: the error is shown with why it was refused.
    let output = diff(&[
        "--from",
        arg(&example_policies()),
        "--to",
        arg(&changed),
        arg(&yaml),
    ]);
    assert_exit(&output, 1);
    let text = stdout_of(&output);
    assert_contains(&text, "  error -> allow        1  flipped\n");
    assert_contains(&text, "  from: error (the request is refused: context");
    assert_contains(&text, "  to: allow\n    ticket-write (tickets.cedar:1:1)\n");
}

#[test]
fn a_test_case_file_replays_each_case_named() {
    let scratch = Scratch::new();
    let changed = scratch.path("changed");
    copy_dir(&example_policies(), &changed);
    edit(&changed, "tenants/acme.cedar", CONTRACTOR_FORBID, "");
    let output = diff(&[
        "--from",
        arg(&example_policies()),
        "--to",
        arg(&changed),
        arg(&example_policies().join("tests/users.yaml")),
    ]);
    assert_exit(&output, 1);
    let text = stdout_of(&output);
    assert_contains(
        &text,
        "users.yaml[5] \"an Acme contractor may not share, even her own document\"\n",
    );
}

#[test]
fn standard_input_is_read_as_a_dash() {
    let mut child = cedar_pdp()
        .args([
            "diff",
            "--from",
            EXAMPLE_POLICIES,
            "--to",
            EXAMPLE_POLICIES,
            "-",
        ])
        .args(["--format", "json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = record("d-1", "bob", "read", "acme-roadmap-q3", "allow");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{line}\n{line}\n").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_exit(&output, 0);
    let report = report_of(&output);
    assert_eq!(report["requests"], 2);
    assert_eq!(report["counts"]["allow"]["allow"], 2);
    assert_eq!(report["not_reproduced"], 0);
}

#[test]
fn a_malformed_line_is_named_by_file_and_line_and_exits_2() {
    let scratch = Scratch::new();
    let good = record("d-1", "bob", "read", "acme-roadmap-q3", "allow");
    let from = arg(&example_policies()).to_owned();
    let cases: [(&str, String, &str); 5] = [
        (
            "truncated.log",
            format!("{good}\n\n{}\n", &good[..40]),
            "truncated.log:3: not valid JSON: EOF while parsing",
        ),
        (
            "garbage.log",
            format!("{good}\n<<not JSON>>\n"),
            "garbage.log:2: not valid JSON: expected value",
        ),
        (
            "missing.log",
            format!(
                "{good}\n{}\n",
                json!({"kind": "decision", "principal": "Platform::User::\"bob\"",
                       "action": "Platform::Action::\"read\""})
            ),
            "missing.log:2: no `resource`: a decision record needs principal, action and resource",
        ),
        (
            "request.log",
            format!(
                "{good}\n{}\n",
                json!({"principal": "Platform::User::\"bob\""})
            ),
            "request.log:2: no `action`: a request needs principal, action and resource",
        ),
        (
            "uid.log",
            format!(
                "{good}\n{}\n",
                good.replace(r#"Platform::User::\"bob\""#, "bob")
            ),
            "uid.log:2: principal: `bob` is not an entity uid",
        ),
    ];
    for (name, text, expected) in cases {
        let path = scratch.file(name, &text);
        let output = diff(&["--from", &from, "--to", &from, arg(&path)]);
        assert_exit(&output, 2);
        let stderr = stderr_of(&output);
        assert_contains(&stderr, &format!("error: {}", arg(&scratch.path(""))));
        assert_contains(&stderr, expected);
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(stdout_of(&output), "", "no report after bad input");
    }
    // A pretty-printed document is read whole; its error gives the line too.
    let path = scratch.file(
        "request.json",
        "{\n  \"principal\": \"Platform::User::\\\"bob\\\"\",\n  ]\n",
    );
    let output = diff(&["--from", &from, "--to", &from, arg(&path)]);
    assert_exit(&output, 2);
    assert_contains(&stderr_of(&output), "request.json:3: not valid JSON");
}

#[test]
fn a_missing_input_or_an_unreadable_directory_exits_2() {
    let scratch = Scratch::new();
    let from = arg(&example_policies()).to_owned();
    let log = scratch.file(
        "audit.log",
        &record("d", "bob", "read", "acme-roadmap-q3", "allow"),
    );
    let missing = scratch.path("no-such.log");
    let output = diff(&["--from", &from, "--to", &from, arg(&log), arg(&missing)]);
    assert_exit(&output, 2);
    assert_contains(
        &stderr_of(&output),
        &format!("cannot read {}", arg(&missing)),
    );
    assert_eq!(stdout_of(&output), "");

    let output = diff(&[
        "--from",
        &from,
        "--to",
        arg(&scratch.path("no-such-dir")),
        arg(&log),
    ]);
    assert_exit(&output, 2);
    assert_contains(&stderr_of(&output), "no-such-dir");

    let output = diff(&["--from", &from, "--to", &from, arg(&scratch.path(""))]);
    assert_exit(&output, 2);
    assert_contains(&stderr_of(&output), "is a directory, not a file");

    // No REQUESTS, or no --to: usage errors.
    assert_exit(&diff(&["--from", &from, "--to", &from]), 2);
    assert_exit(&diff(&["--from", &from, arg(&log)]), 2);
    assert_exit(&diff(&["--from", &from, "--to", &from, "-", "-"]), 2);
}

#[test]
fn an_invalid_to_directory_exits_1_with_its_problems() {
    let scratch = Scratch::new();
    let broken = scratch.path("broken");
    copy_dir(&example_policies(), &broken);
    write(
        &broken,
        "typo.cedar",
        "permit (principal, action, resource) when { context.nope };\n",
    );
    let log = scratch.file(
        "audit.log",
        &record("d", "bob", "read", "acme-roadmap-q3", "allow"),
    );
    let output = diff(&[
        "--from",
        arg(&example_policies()),
        "--to",
        arg(&broken),
        arg(&log),
    ]);
    assert_exit(&output, 1);
    let stderr = stderr_of(&output);
    assert_contains(&stderr, "typo.cedar:1:");
    assert_contains(&stderr, "invalid: ");
    assert_contains(
        &stderr,
        &format!("error: the policies in {} do not load", arg(&broken)),
    );
    assert_eq!(stdout_of(&output), "", "no report without both sets");
}

#[test]
fn an_input_with_nothing_to_replay_passes_with_a_warning() {
    let scratch = Scratch::new();
    let log = scratch.file(
        "stdout.log",
        "{\"timestamp\":\"2026-11-23T12:00:00Z\",\"level\":\"INFO\",\"message\":\"listening\"}\n\n",
    );
    let from = arg(&example_policies()).to_owned();
    let output = diff(&["--from", &from, "--to", &from, arg(&log)]);
    assert_exit(&output, 0);
    let text = stdout_of(&output);
    assert_contains(&text, "skipped: 1 log line\n");
    assert_contains(&text, "warning: no request was replayed");
    assert!(text.ends_with("ok: no request flips\n"), "{text}");
}
