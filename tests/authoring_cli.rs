//! The policy-author subcommands of the `cedar-pdp` binary, run as an author or a CI job runs
//! them: `validate` (every problem with its file, line and a source snippet, as text and as
//! JSON), `test` (case files, failure reports, coverage and a JUnit file parsed as XML),
//! `authorize` (one decision and the policies that determined it) and `fmt` (`--check`
//! changes nothing; a rewrite makes `--check` pass). Each checks the exit code: 0 ok,
//! 1 policies or tests wrong, 2 usage or I/O error.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Output, Stdio},
};

use quick_xml::{
    XmlVersion,
    escape::resolve_predefined_entity,
    events::{BytesStart, Event},
};

mod common;

use common::{EXAMPLE_POLICIES, cedar_pdp, stderr_of};

// ---------------------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------------------

/// Runs `cedar-pdp ARGS...`; these subcommands exit by themselves.
fn run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    cedar_pdp().args(args).output().expect("run cedar-pdp")
}

/// Runs `cedar-pdp ARGS...` with `input` on its standard input.
fn run_with_stdin(args: &[&str], input: &str) -> Output {
    let mut child = cedar_pdp()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cedar-pdp");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait for cedar-pdp")
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

fn last_line(text: &str) -> &str {
    text.lines().last().unwrap_or("")
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

// ---------------------------------------------------------------------------------------
// Scratch copies of the example directory
// ---------------------------------------------------------------------------------------

/// A copy of `policies/` (with its `tests/`) in a fresh temp dir, at `<tmp>/policies`.
struct Scratch {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("policies");
        common::copy_dir(Path::new(EXAMPLE_POLICIES), &dir);
        Scratch { _tmp: tmp, dir }
    }

    fn path(&self) -> &str {
        path_arg(&self.dir)
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.dir.join(rel)).unwrap()
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    /// Replaces the one occurrence of `from` in `rel` by `to`; returns the new text.
    fn edit(&self, rel: &str, from: &str, to: &str) -> String {
        let text = self.read(rel);
        assert_eq!(
            text.matches(from).count(),
            1,
            "{rel} should contain {from:?} exactly once"
        );
        let text = text.replacen(from, to, 1);
        self.write(rel, &text);
        text
    }

    /// Every file under the copy, by relative path, with its bytes.
    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(root: &Path, dir: &Path, into: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(root, &path, into);
                } else {
                    let bytes = fs::read(&path).unwrap();
                    into.insert(path.strip_prefix(root).unwrap().to_path_buf(), bytes);
                }
            }
        }
        let mut files = BTreeMap::new();
        walk(&self.dir, &self.dir, &mut files);
        files
    }
}

fn example(rel: &str) -> String {
    fs::read_to_string(Path::new(EXAMPLE_POLICIES).join(rel)).unwrap()
}

/// The 1-based line and column of the one occurrence of `needle` in `text`.
#[track_caller]
fn position_of(text: &str, needle: &str) -> (usize, usize) {
    assert_eq!(text.matches(needle).count(), 1, "{needle:?} occurs once");
    let at = text.find(needle).unwrap();
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    (
        text[..at].matches('\n').count() + 1,
        text[line_start..at].chars().count() + 1,
    )
}

/// The text of 1-based line `line` of `text`.
fn line_text(text: &str, line: usize) -> &str {
    text.lines().nth(line - 1).expect("line exists")
}

/// The 1-based line and column of the `{` that opens the entity whose uid carries `id`,
/// in an `entities.json` laid out as the example's is (one entity per `  {` block).
#[track_caller]
fn entity_start(entities_json: &str, id: &str) -> (usize, usize) {
    let uid = entities_json
        .find(&format!("\"id\": \"{id}\"\n    }},\n    \"attrs\""))
        .unwrap_or_else(|| panic!("entity {id} in entities.json"));
    let open = entities_json[..uid].rfind("\n  {\n").unwrap() + 1;
    (entities_json[..open].matches('\n').count() + 1, 3)
}

/// Where `@id("<id>")` annotates a policy in `text` (line and column of the `@`).
fn policy_location(text: &str, id: &str) -> (usize, usize) {
    position_of(text, &format!("@id(\"{id}\")"))
}

/// The cases of every case file in the example's `tests/`: (`tests/<file>`, name).
fn example_cases() -> Vec<(String, String)> {
    let mut files: Vec<PathBuf> = fs::read_dir(Path::new(EXAMPLE_POLICIES).join("tests"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for file in files {
        // YAML is a superset of JSON, so one parser reads both kinds of case file.
        let doc: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
        let rel = format!("tests/{}", file.file_name().unwrap().to_str().unwrap());
        for case in doc["cases"].as_sequence().expect("a cases list") {
            let name = case["name"].as_str().expect("a case name").to_owned();
            cases.push((rel.clone(), name));
        }
    }
    assert!(!cases.is_empty());
    cases
}

// ---------------------------------------------------------------------------------------
// Output checks
// ---------------------------------------------------------------------------------------

/// Checks that `output` shows a diagnostic at `file:line:col` with the source line `source`
/// under it and a caret under column `col`.
#[track_caller]
fn assert_snippet(output: &str, file: &str, line: usize, col: usize, source: &str) {
    let lines: Vec<&str> = output.lines().collect();
    let arrow = format!("--> {file}:{line}:{col}");
    let at = lines
        .iter()
        .position(|l| l.trim_start() == arrow)
        .unwrap_or_else(|| panic!("no `{arrow}` in:\n{output}"));
    let quoted = format!("{line} | {source}");
    let src = (at..lines.len())
        .take(4)
        .find(|&i| lines[i] == quoted)
        .unwrap_or_else(|| panic!("no `{quoted}` after `{arrow}` in:\n{output}"));
    let caret_line = lines.get(src + 1).expect("a caret line");
    let (_, marks) = caret_line
        .split_once(" | ")
        .unwrap_or_else(|| panic!("caret line `{caret_line}` has a gutter"));
    assert_eq!(
        marks.find('^'),
        Some(col - 1),
        "caret under column {col}:\n{quoted}\n{caret_line}"
    );
    assert!(
        marks[..col - 1].chars().all(|c| c == ' '),
        "only spaces before the caret: {caret_line}"
    );
}

/// The `determining policies:` entries of `authorize`'s text output.
fn determining_lines(output: &str) -> Vec<String> {
    output
        .lines()
        .skip_while(|l| *l != "determining policies:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.trim().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------
// JUnit, parsed as XML
// ---------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct JUnit {
    /// The attributes of the root `testsuites` element.
    root: BTreeMap<String, String>,
    /// Each `testsuite`'s attributes, with the number of `testcase`s and `failure`s inside.
    suites: Vec<(BTreeMap<String, String>, usize, usize)>,
    testcases: Vec<TestCase>,
}

#[derive(Debug, Default)]
struct TestCase {
    name: String,
    classname: String,
    /// Each `failure` inside this testcase: its `message` attribute and its text.
    failures: Vec<(String, String)>,
}

impl JUnit {
    fn failures(&self) -> usize {
        self.testcases.iter().map(|t| t.failures.len()).sum()
    }
}

fn attributes(element: &BytesStart<'_>) -> BTreeMap<String, String> {
    element
        .attributes()
        .map(|attr| {
            let attr = attr.expect("well-formed attribute");
            let key = attr.key.as_ref().to_owned();
            let value = attr
                .normalized_value(XmlVersion::Implicit1_0)
                .expect("attribute value unescapes")
                .into_owned();
            (key, value)
        })
        .collect()
}

/// Parses a JUnit report; panics on XML that is not well-formed, on a `testcase` outside a
/// `testsuite`, on a `failure` outside a `testcase`, or on unknown elements.
fn parse_junit(path: &Path) -> JUnit {
    let xml = fs::read_to_string(path).expect("JUnit file written");
    let mut reader = quick_xml::Reader::from_str(&xml);
    reader.config_mut().expand_empty_elements = true;
    let mut junit = JUnit::default();
    let mut stack: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut failure_message = String::new();
    loop {
        let event = reader.read_event().unwrap_or_else(|e| {
            panic!("malformed JUnit at {}: {e}\n{xml}", reader.error_position())
        });
        match event {
            Event::Start(element) => {
                let name = element.name().as_ref().to_owned();
                let parent = stack.last().map(String::as_str);
                let attrs = attributes(&element);
                match (parent, name.as_str()) {
                    (None, "testsuites") => junit.root = attrs,
                    (Some("testsuites"), "testsuite") => junit.suites.push((attrs, 0, 0)),
                    (Some("testsuite"), "testcase") => {
                        junit.suites.last_mut().unwrap().1 += 1;
                        junit.testcases.push(TestCase {
                            name: attrs.get("name").expect("testcase name").clone(),
                            classname: attrs.get("classname").expect("classname").clone(),
                            failures: Vec::new(),
                        });
                    }
                    (Some("testcase"), "failure") => {
                        junit.suites.last_mut().unwrap().2 += 1;
                        failure_message = attrs.get("message").cloned().unwrap_or_default();
                        text.clear();
                    }
                    (Some("testcase"), "system-out" | "system-err") => {}
                    (parent, name) => panic!("unexpected <{name}> inside {parent:?}:\n{xml}"),
                }
                stack.push(name);
            }
            Event::End(element) => {
                let name = element.name().as_ref().to_owned();
                assert_eq!(stack.pop().as_deref(), Some(name.as_str()));
                if name == "failure" {
                    let failure = (std::mem::take(&mut failure_message), text.clone());
                    junit.testcases.last_mut().unwrap().failures.push(failure);
                }
            }
            Event::Text(t) => text.push_str(&t.xml_content(XmlVersion::Implicit1_0)),
            Event::CData(t) => text.push_str(&t.xml_content(XmlVersion::Implicit1_0)),
            Event::GeneralRef(r) => {
                let name = r.xml_content(XmlVersion::Implicit1_0);
                if let Some(c) = r.resolve_char_ref().expect("valid character reference") {
                    text.push(c);
                } else {
                    let value = resolve_predefined_entity(&name)
                        .unwrap_or_else(|| panic!("unknown entity &{name};"));
                    text.push_str(value);
                }
            }
            Event::Eof => break,
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
            Event::Empty(_) => unreachable!("empty elements are expanded"),
        }
    }
    assert!(stack.is_empty(), "unclosed elements {stack:?} in:\n{xml}");
    assert!(!junit.root.is_empty(), "no <testsuites> root in:\n{xml}");
    for (attrs, testcases, failures) in &junit.suites {
        assert_eq!(attrs["tests"], testcases.to_string(), "suite {attrs:?}");
        assert_eq!(attrs["failures"], failures.to_string(), "suite {attrs:?}");
    }
    junit
}

// ---------------------------------------------------------------------------------------
// validate
// ---------------------------------------------------------------------------------------

#[test]
fn validate_accepts_the_example_directory() {
    let output = run(["validate", EXAMPLE_POLICIES]);
    assert_exit(&output, 0);
    let stdout = stdout_of(&output);
    let ok = last_line(&stdout);
    assert!(
        ok.starts_with("ok: 19 policies, 0 templates, 40 entities, schema (policy version ")
            && ok.ends_with("); 0 errors, 0 warnings"),
        "{stdout}"
    );
    assert!(!stdout.contains("error:"), "{stdout}");

    // DIR defaults to `policies` in the working directory.
    let default = cedar_pdp()
        .arg("validate")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_exit(&default, 0);
    assert_eq!(last_line(&stdout_of(&default)), ok);
}

/// A copy of the example with four problems in three files; returns it with the expected
/// (file, line, column, source line) of each problem, in the order the files are listed.
fn broken_example() -> (Scratch, Vec<(&'static str, usize, usize, String)>) {
    let scratch = Scratch::new();
    let mut expected = Vec::new();

    // A syntax error: the `}` that closes the condition is gone.
    let tenancy = scratch.edit(
        "tenancy.cedar",
        "principal.tenant == resource.tenant\n};",
        "principal.tenant == resource.tenant ;",
    );
    let (line, col) = position_of(&tenancy, "resource.tenant ;");
    let col = col + "resource.tenant ".len();
    expected.push((
        "tenancy.cedar",
        line,
        col,
        line_text(&tenancy, line).to_owned(),
    ));

    // A schema-validation error: an attribute the schema does not declare.
    let users = scratch.edit(
        "users.cedar",
        "when { resource has owner && resource.owner == principal };",
        "when { resource has owner && resource.owner == principal && resource.tennant == principal.tenant };",
    );
    let (line, col) = position_of(&users, "resource.tennant");
    expected.push(("users.cedar", line, col, line_text(&users, line).to_owned()));

    // Two entities that do not conform: bob's `suspended` is a string, dave has no
    // `contractor`.
    let mut entities = scratch.read("entities.json");
    let bob = entities
        .find("\"id\": \"bob\"\n    },\n    \"attrs\"")
        .unwrap();
    let at = bob + entities[bob..].find("\"suspended\": false,").unwrap();
    entities.replace_range(
        at..at + "\"suspended\": false".len(),
        "\"suspended\": \"no\"",
    );
    let dave = entities
        .find("\"id\": \"dave\"\n    },\n    \"attrs\"")
        .unwrap();
    let removed = ",\n      \"contractor\": false";
    let at = dave + entities[dave..].find(removed).unwrap();
    entities.replace_range(at..at + removed.len(), "");
    scratch.write("entities.json", &entities);
    for id in ["bob", "dave"] {
        let (line, col) = entity_start(&entities, id);
        expected.push((
            "entities.json",
            line,
            col,
            line_text(&entities, line).to_owned(),
        ));
    }
    (scratch, expected)
}

#[test]
fn validate_reports_every_problem_with_its_file_line_and_source() {
    let (scratch, expected) = broken_example();
    let output = run(["validate", scratch.path()]);
    assert_exit(&output, 1);
    let stdout = stdout_of(&output);

    for (file, line, col, source) in &expected {
        assert_snippet(&stdout, file, *line, *col, source);
    }
    assert!(stdout.contains("error: unexpected token `;`"), "{stdout}");
    assert!(
        stdout.contains("tennant") && stdout.contains("document-owner"),
        "the schema error names the attribute and the policy:\n{stdout}"
    );
    let entity_errors: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("error: entity "))
        .collect();
    assert_eq!(entity_errors.len(), 2, "{stdout}");
    assert!(
        entity_errors[0].contains(r#"Platform::User::"bob""#),
        "{stdout}"
    );
    assert!(entity_errors[0].contains("suspended"), "{stdout}");
    assert!(
        entity_errors[1].contains(r#"Platform::User::"dave""#),
        "{stdout}"
    );
    assert!(entity_errors[1].contains("contractor"), "{stdout}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("error:")).count(),
        4,
        "{stdout}"
    );
    assert_eq!(last_line(&stdout), "invalid: 4 errors, 0 warnings");
}

#[test]
fn validate_as_json_gives_one_diagnostic_per_problem() {
    let (scratch, expected) = broken_example();
    let output = run(["validate", scratch.path(), "--format", "json"]);
    assert_exit(&output, 1);
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("stdout is one JSON object");

    assert_eq!(report["ok"], false, "{report:#}");
    assert_eq!(report["errors"], 4, "{report:#}");
    assert_eq!(report["warnings"], 0, "{report:#}");
    let diagnostics = report["diagnostics"].as_array().expect("diagnostics");
    assert_eq!(diagnostics.len(), 4, "{report:#}");
    for diagnostic in diagnostics {
        for key in [
            "severity",
            "file",
            "line",
            "column",
            "end_line",
            "end_column",
            "message",
            "label",
        ] {
            assert!(diagnostic.get(key).is_some(), "{key} in {diagnostic:#}");
        }
        assert_eq!(diagnostic["severity"], "error", "{diagnostic:#}");
    }
    let found: BTreeSet<(String, u64, u64)> = diagnostics
        .iter()
        .map(|d| {
            (
                d["file"].as_str().unwrap().to_owned(),
                d["line"].as_u64().unwrap(),
                d["column"].as_u64().unwrap(),
            )
        })
        .collect();
    let wanted: BTreeSet<(String, u64, u64)> = expected
        .iter()
        .map(|(file, line, col, _)| (file.to_string(), *line as u64, *col as u64))
        .collect();
    assert_eq!(found, wanted, "{report:#}");

    let message_at = |file: &str, line: usize| {
        diagnostics
            .iter()
            .find(|d| d["file"] == file && d["line"] == line)
            .and_then(|d| d["message"].as_str())
            .unwrap()
            .to_owned()
    };
    let (_, bob_line, ..) = expected[2];
    let (_, dave_line, ..) = expected[3];
    assert!(message_at("entities.json", bob_line).contains(r#"Platform::User::"bob""#));
    assert!(message_at("entities.json", dave_line).contains(r#"Platform::User::"dave""#));
    assert!(message_at("users.cedar", expected[1].1).contains("tennant"));
}

#[test]
fn validate_of_a_missing_directory_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-policies");
    for format in ["text", "json"] {
        let output = run(["validate", path_arg(&missing), "--format", format]);
        assert_exit(&output, 2);
        assert_contains(&stderr_of(&output), "no-such-policies");
    }
}

// ---------------------------------------------------------------------------------------
// test
// ---------------------------------------------------------------------------------------

#[test]
fn test_passes_every_example_case_with_full_coverage_and_a_junit_report() {
    let cases = example_cases();
    let files: BTreeSet<&str> = cases.iter().map(|(f, _)| f.as_str()).collect();
    let tmp = tempfile::tempdir().unwrap();
    let junit_path = tmp.path().join("report.xml");

    let output = run([
        "test",
        EXAMPLE_POLICIES,
        "--coverage",
        "--junit",
        path_arg(&junit_path),
    ]);
    assert_exit(&output, 0);
    let stdout = stdout_of(&output);

    let first = stdout.lines().next().unwrap();
    assert!(
        first.starts_with(&format!(
            "running {} cases from {} files (policy version ",
            cases.len(),
            files.len()
        )),
        "{stdout}"
    );
    for (file, name) in &cases {
        let line = format!("case {file}: {name} ... ok");
        assert!(
            stdout.lines().any(|l| l == line),
            "no `{line}` in:\n{stdout}"
        );
    }
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("case ")).count(),
        cases.len()
    );
    assert!(!stdout.contains("FAILED"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l == "coverage: 19 of 19 policies determined at least one case (100.0%)"),
        "{stdout}"
    );
    assert!(!stdout.contains("never"), "{stdout}");
    let (line, col) = policy_location(&example("tenancy.cedar"), "tenant-isolation");
    let covered = format!("tenant-isolation (tenancy.cedar:{line}:{col})");
    assert!(
        stdout.lines().any(|l| l.trim_start().ends_with(&covered)),
        "{stdout}"
    );
    assert_eq!(
        last_line(&stdout),
        format!("{} passed, 0 failed", cases.len())
    );

    let junit = parse_junit(&junit_path);
    assert_eq!(junit.root["tests"], cases.len().to_string());
    assert_eq!(junit.root["failures"], "0");
    assert_eq!(junit.testcases.len(), cases.len());
    assert_eq!(junit.failures(), 0);
    let reported: BTreeSet<(String, String)> = junit
        .testcases
        .iter()
        .map(|t| (t.classname.clone(), t.name.clone()))
        .collect();
    assert_eq!(reported, cases.into_iter().collect());
}

#[test]
fn test_reports_a_case_that_expects_the_wrong_decision() {
    let total = example_cases().len();
    let scratch = Scratch::new();
    // A name with characters XML must escape, so the JUnit writer is exercised too.
    let name = r#"a "foreign" user <dave & co> cannot read it"#;
    scratch.edit(
        "tests/tenancy.yaml",
        "  - name: a user of another tenant cannot read it\n    \
         principal: Platform::User::\"dave\"\n    \
         action: Platform::Action::\"read\"\n    \
         resource: Platform::Document::\"acme-roadmap-q3\"\n    \
         expect: deny\n",
        &format!(
            "  - name: '{name}'\n    \
             principal: Platform::User::\"dave\"\n    \
             action: Platform::Action::\"read\"\n    \
             resource: Platform::Document::\"acme-roadmap-q3\"\n    \
             expect: allow\n"
        ),
    );
    let junit_path = scratch.dir.join("../report.xml");

    let output = run(["test", scratch.path(), "--junit", path_arg(&junit_path)]);
    assert_exit(&output, 1);
    let stdout = stdout_of(&output);

    let case = format!("case tests/tenancy.yaml: {name} ... FAILED");
    assert!(
        stdout.lines().any(|l| l == case),
        "no `{case}` in:\n{stdout}"
    );
    assert_eq!(stdout.matches("... FAILED").count(), 1, "{stdout}");

    let header = format!("---- tests/tenancy.yaml: {name} ----");
    let report: Vec<&str> = stdout
        .lines()
        .skip_while(|l| *l != "failures:")
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    assert!(!report.is_empty(), "no `{header}` block in:\n{stdout}");
    let (line, col) = policy_location(&example("tenancy.cedar"), "tenant-isolation");
    let trimmed: Vec<&str> = report.iter().map(|l| l.trim()).collect();
    assert_eq!(
        trimmed,
        [
            "expected allow, got deny",
            "decision: deny",
            "determining policies:",
            &format!("tenant-isolation (tenancy.cedar:{line}:{col})"),
            "errors: none",
        ],
        "{stdout}"
    );
    assert_eq!(
        last_line(&stdout),
        format!("{} passed, 1 failed", total - 1)
    );

    let junit = parse_junit(&junit_path);
    assert_eq!(junit.root["tests"], total.to_string());
    assert_eq!(junit.root["failures"], "1");
    assert_eq!(junit.testcases.len(), total);
    assert_eq!(junit.failures(), 1);
    let failed: Vec<&TestCase> = junit
        .testcases
        .iter()
        .filter(|t| !t.failures.is_empty())
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].name, name);
    assert_eq!(failed[0].classname, "tests/tenancy.yaml");
    let (message, text) = &failed[0].failures[0];
    assert!(message.contains("expected allow, got deny"), "{message}");
    assert!(text.contains("tenant-isolation (tenancy.cedar:"), "{text}");
}

#[test]
fn test_coverage_marks_a_policy_no_case_determines_as_never() {
    let scratch = Scratch::new();
    scratch.write(
        "extra.cedar",
        "// Nobody has written a case for this one.\n\
         @id(\"uncovered-rule\")\n\
         forbid (\n  principal,\n  action == Platform::Action::\"rotateSecret\",\n  resource\n)\n\
         when { context has risk_score };\n",
    );
    let (line, col) = policy_location(&scratch.read("extra.cedar"), "uncovered-rule");
    let validated = stdout_of(&run(["validate", scratch.path()]));
    let policies: usize = validated
        .strip_prefix("ok: ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the copy validates:\n{validated}"));
    assert_eq!(policies, 20);

    let output = run(["test", scratch.path(), "--coverage"]);
    assert_exit(&output, 0);
    let stdout = stdout_of(&output);
    let percent = format!("{:.1}", 100.0 * (policies - 1) as f64 / policies as f64);
    let summary = format!(
        "coverage: {} of {policies} policies determined at least one case ({percent}%)",
        policies - 1
    );
    assert!(
        stdout.lines().any(|l| l == summary),
        "no `{summary}` in:\n{stdout}"
    );
    let never: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("never"))
        .collect();
    assert_eq!(never.len(), 1, "{stdout}");
    let words: Vec<&str> = never[0].split_whitespace().collect();
    assert_eq!(
        words,
        [
            "never",
            "uncovered-rule",
            &format!("(extra.cedar:{line}:{col})")
        ]
    );
    assert!(!stdout.contains("(100.0%)"), "{stdout}");
}

#[test]
fn test_refuses_a_case_file_with_an_unknown_key_and_names_its_line() {
    let scratch = Scratch::new();
    let text = scratch.read("tests/sensitive.yaml");
    let first = text.find("    expect: deny\n").unwrap();
    let mut edited = text.clone();
    edited.replace_range(first..first + "    expect:".len(), "    expected:");
    scratch.write("tests/sensitive.yaml", &edited);
    let (line, col) = position_of(&edited, "expected:");

    let output = run(["test", scratch.path()]);
    assert_exit(&output, 1);
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains(&format!("tests/sensitive.yaml:{line}:{col}")),
        "stderr names tests/sensitive.yaml:{line}:{col}:\n{stderr}"
    );
    assert!(stderr.contains("`expected`"), "{stderr}");
    assert!(!stdout_of(&output).contains(" passed, "), "no cases ran");
}

#[test]
fn test_refuses_a_policy_directory_that_does_not_load_and_names_the_file() {
    let scratch = Scratch::new();
    let tenancy = scratch.edit(
        "tenancy.cedar",
        "unless { principal has suspended && !principal.suspended };",
        "unless { principal has suspended && !principal.suspended ;",
    );
    let (line, col) = position_of(&tenancy, "suspended ;");
    let col = col + "suspended ".len();

    let output = run(["test", scratch.path()]);
    assert_exit(&output, 1);
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains(&format!("tenancy.cedar:{line}:{col}")),
        "stderr names tenancy.cedar:{line}:{col}:\n{stderr}"
    );
    assert!(!stdout_of(&output).contains(" passed, "), "no cases ran");
}

#[test]
fn test_fails_a_case_whose_determining_id_is_not_a_policy() {
    let total = example_cases().len();
    let scratch = Scratch::new();
    scratch.edit(
        "tests/tenancy.yaml",
        "determining: [high-risk-deny]",
        "determining: [high-risk-denial]",
    );

    let output = run(["test", scratch.path()]);
    assert_exit(&output, 1);
    let stdout = stdout_of(&output);
    assert!(
        stdout
            .lines()
            .any(|l| l
                == "case tests/tenancy.yaml: a high risk score is refused outright ... FAILED"),
        "{stdout}"
    );
    let failures = stdout.split_once("\nfailures:\n").map_or("", |(_, f)| f);
    assert!(
        failures
            .lines()
            .any(|l| l.contains("`high-risk-denial`") && l.contains("not a policy")),
        "the failure names the unknown id:\n{stdout}"
    );
    assert_eq!(
        last_line(&stdout),
        format!("{} passed, 1 failed", total - 1)
    );
}

#[test]
fn test_with_a_filter_runs_only_the_matching_cases_and_fails_when_none_match() {
    let output = run([
        "test",
        EXAMPLE_POLICIES,
        "--filter",
        "tenancy.yaml: a high risk",
    ]);
    assert_exit(&output, 0);
    let stdout = stdout_of(&output);
    let cases: Vec<&str> = stdout.lines().filter(|l| l.starts_with("case ")).collect();
    assert_eq!(
        cases,
        ["case tests/tenancy.yaml: a high risk score is refused outright ... ok"]
    );
    assert_eq!(last_line(&stdout), "1 passed, 0 failed");

    let none = run([
        "test",
        EXAMPLE_POLICIES,
        "--filter",
        "no case is called this",
    ]);
    assert_exit(&none, 1);
    assert!(
        stderr_of(&none).contains("no case is called this"),
        "{}",
        stderr_of(&none)
    );
}

// ---------------------------------------------------------------------------------------
// authorize
// ---------------------------------------------------------------------------------------

const DAVE: &str = r#"Platform::User::"dave""#;
const BOB: &str = r#"Platform::User::"bob""#;
const READ: &str = r#"Platform::Action::"read""#;
const ROADMAP: &str = r#"Platform::Document::"acme-roadmap-q3""#;

/// `cedar-pdp authorize --policies <the example> ARGS…`.
fn authorize<const N: usize>(args: [&str; N]) -> Output {
    let mut all = vec!["authorize", "--policies", EXAMPLE_POLICIES];
    all.extend(args);
    run(all)
}

#[test]
fn authorize_denies_a_cross_tenant_read_by_tenant_isolation() {
    let output = authorize(["--principal", DAVE, "--action", READ, "--resource", ROADMAP]);
    assert_exit(&output, 0);
    let stdout = stdout_of(&output);
    let (line, col) = policy_location(&example("tenancy.cedar"), "tenant-isolation");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "decision: deny", "{stdout}");
    assert_eq!(
        determining_lines(&stdout),
        [format!("tenant-isolation (tenancy.cedar:{line}:{col})")],
        "{stdout}"
    );
    assert!(lines.contains(&"errors: none"), "{stdout}");
    assert!(
        lines.iter().any(|l| l.starts_with("policy version: ")),
        "{stdout}"
    );
}

#[test]
fn authorize_as_json_names_the_determining_policy_and_its_file() {
    let output = authorize([
        "--principal",
        DAVE,
        "--action",
        READ,
        "--resource",
        ROADMAP,
        "--format",
        "json",
    ]);
    assert_exit(&output, 0);
    let answer: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("stdout is one JSON object");
    let (line, col) = policy_location(&example("tenancy.cedar"), "tenant-isolation");
    assert_eq!(answer["decision"], "deny", "{answer:#}");
    assert_eq!(
        answer["determining_policies"],
        serde_json::json!([
            { "id": "tenant-isolation", "file": "tenancy.cedar", "line": line, "column": col }
        ]),
        "{answer:#}"
    );
    assert_eq!(answer["errors"], serde_json::json!([]), "{answer:#}");

    // The same version `validate` reports for the same directory.
    let validated = run(["validate", EXAMPLE_POLICIES, "--format", "json"]);
    let validated: serde_json::Value = serde_json::from_slice(&validated.stdout).unwrap();
    assert!(answer["policy_version"].is_string(), "{answer:#}");
    assert_eq!(answer["policy_version"], validated["policy_version"]);
}

#[test]
fn authorize_says_when_no_permit_applies() {
    let output = authorize([
        "--principal",
        r#"Platform::User::"carol""#,
        "--action",
        r#"Platform::Action::"write""#,
        "--resource",
        ROADMAP,
    ]);
    assert_exit(&output, 0);
    let stdout = stdout_of(&output);
    assert!(stdout.starts_with("decision: deny\n"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l == "determining policies: none (no permit applies: default deny)"),
        "{stdout}"
    );
}

#[test]
fn authorize_reads_a_request_file_and_flags_override_its_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let request = tmp.path().join("request.yaml");
    let text = format!(
        "principal: {DAVE}\naction: {READ}\nresource: {ROADMAP}\ncontext: {{ mfa: true }}\n"
    );
    fs::write(&request, &text).unwrap();
    let users = example("users.cedar");

    let as_written = authorize(["--request", path_arg(&request)]);
    assert_exit(&as_written, 0);
    let stdout = stdout_of(&as_written);
    assert!(stdout.starts_with("decision: deny\n"), "{stdout}");
    assert_eq!(determining_lines(&stdout).len(), 1, "{stdout}");
    assert!(determining_lines(&stdout)[0].starts_with("tenant-isolation "));

    let overridden = authorize(["--request", path_arg(&request), "--principal", BOB]);
    assert_exit(&overridden, 0);
    let stdout = stdout_of(&overridden);
    assert!(stdout.starts_with("decision: allow\n"), "{stdout}");
    let mut determining = determining_lines(&stdout);
    determining.sort();
    let at = |id| {
        let (line, col) = policy_location(&users, id);
        format!("{id} (users.cedar:{line}:{col})")
    };
    assert_eq!(
        determining,
        [at("document-owner"), at("project-readers")],
        "{stdout}"
    );

    // `-` reads the request from standard input.
    let piped = run_with_stdin(
        &[
            "authorize",
            "--policies",
            EXAMPLE_POLICIES,
            "--request",
            "-",
            "--principal",
            BOB,
        ],
        &text,
    );
    assert_exit(&piped, 0);
    assert_eq!(stdout_of(&piped), stdout);
}

#[test]
fn authorize_refuses_a_principal_that_is_not_an_entity_uid() {
    let output = authorize([
        "--principal",
        "Platform::User::bob",
        "--action",
        READ,
        "--resource",
        ROADMAP,
    ]);
    assert_exit(&output, 2);
    assert_contains(&stderr_of(&output), "--principal");
    assert!(!stdout_of(&output).contains("decision:"));
}

#[test]
fn authorize_refuses_a_context_the_schema_does_not_allow() {
    let output = authorize([
        "--principal",
        BOB,
        "--action",
        READ,
        "--resource",
        ROADMAP,
        "--context",
        r#"{"mfa": "yes"}"#,
    ]);
    assert_exit(&output, 2);
    assert_contains(&stderr_of(&output), "context.mfa");
    assert!(!stdout_of(&output).contains("decision:"));
}

#[test]
fn authorize_refuses_a_request_without_a_resource() {
    let output = authorize(["--principal", BOB, "--action", READ]);
    assert_exit(&output, 2);
    assert_contains(&stderr_of(&output), "resource");
    assert!(!stdout_of(&output).contains("decision:"));
}

// ---------------------------------------------------------------------------------------
// fmt
// ---------------------------------------------------------------------------------------

/// The example's `services.cedar` with its first policy squeezed onto one long line.
const SERVICE_INVOKE: &str = "permit (\n  principal is Platform::Service,\n  \
     action == Platform::Action::\"invoke\",\n  resource is Platform::Service\n)\n\
     when { resource has callers && principal in resource.callers };";
const SERVICE_INVOKE_ONE_LINE: &str = "permit (principal is Platform::Service, \
     action == Platform::Action::\"invoke\", resource is Platform::Service) \
     when { resource has callers && principal in resource.callers };";

#[test]
fn fmt_check_accepts_the_example_directory() {
    let scratch = Scratch::new();
    let before = scratch.snapshot();
    let output = run(["fmt", scratch.path(), "--check"]);
    assert_exit(&output, 0);
    assert!(
        !stdout_of(&output).contains("not formatted:"),
        "{}",
        stdout_of(&output)
    );
    assert_eq!(scratch.snapshot(), before);
}

#[test]
fn fmt_check_names_a_badly_formatted_file_and_fmt_rewrites_it() {
    let scratch = Scratch::new();
    scratch.edit("services.cedar", SERVICE_INVOKE, SERVICE_INVOKE_ONE_LINE);
    scratch.edit(
        "tenants/acme.cedar",
        "when { resource has tenant && resource.tenant == Platform::Tenant::\"acme\" };",
        "when {\nresource has tenant && resource.tenant ==\n          Platform::Tenant::\"acme\" };",
    );
    let before = scratch.snapshot();

    let check = run(["fmt", scratch.path(), "--check"]);
    assert_exit(&check, 1);
    let stdout = stdout_of(&check);
    let listed: BTreeSet<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("not formatted: "))
        .collect();
    assert_eq!(
        listed,
        BTreeSet::from(["services.cedar", "tenants/acme.cedar"]),
        "{stdout}"
    );
    assert_eq!(scratch.snapshot(), before, "--check changes nothing");

    let format = run(["fmt", scratch.path()]);
    assert_exit(&format, 0);
    let stdout = stdout_of(&format);
    let formatted: BTreeSet<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("formatted: "))
        .collect();
    assert_eq!(
        formatted,
        BTreeSet::from(["services.cedar", "tenants/acme.cedar"]),
        "{stdout}"
    );
    // The example is formatted, so formatting the damaged copies restores them.
    assert_eq!(scratch.read("services.cedar"), example("services.cedar"));
    assert_eq!(
        scratch.read("tenants/acme.cedar"),
        example("tenants/acme.cedar")
    );

    assert_exit(&run(["fmt", scratch.path(), "--check"]), 0);
    let validated = run(["validate", scratch.path()]);
    assert_exit(&validated, 0);
    assert_eq!(
        last_line(&stdout_of(&validated)),
        last_line(&stdout_of(&run(["validate", EXAMPLE_POLICIES])))
    );
}

#[test]
fn fmt_reports_a_file_with_a_syntax_error_and_still_formats_the_others() {
    let scratch = Scratch::new();
    scratch.edit("services.cedar", SERVICE_INVOKE, SERVICE_INVOKE_ONE_LINE);
    let tenancy = scratch.edit(
        "tenancy.cedar",
        "unless { principal has suspended && !principal.suspended };",
        "unless { principal has suspended && !principal.suspended ;",
    );
    let (line, col) = position_of(&tenancy, "suspended ;");
    let location = format!("tenancy.cedar:{line}:{}", col + "suspended ".len());

    let check = run(["fmt", scratch.path(), "--check"]);
    assert_exit(&check, 1);
    assert!(
        stderr_of(&check).contains(&location),
        "stderr names {location}:\n{}",
        stderr_of(&check)
    );
    assert!(
        stdout_of(&check)
            .lines()
            .any(|l| l == "not formatted: services.cedar"),
        "{}",
        stdout_of(&check)
    );

    let format = run(["fmt", scratch.path()]);
    assert_exit(&format, 1);
    assert!(
        stderr_of(&format).contains(&location),
        "stderr names {location}:\n{}",
        stderr_of(&format)
    );
    assert!(
        stdout_of(&format)
            .lines()
            .any(|l| l == "formatted: services.cedar"),
        "{}",
        stdout_of(&format)
    );
    assert_eq!(scratch.read("services.cedar"), example("services.cedar"));
    assert_eq!(
        scratch.read("tenancy.cedar"),
        tenancy,
        "the broken file is left alone"
    );
}

// ---- found in review: typos, evaluation errors, the server's config, odd files ----------

/// A case file `tests/extra.yaml` in a copy of the example, holding `cases`.
fn with_cases(cases: &str) -> Scratch {
    let scratch = Scratch::new();
    scratch.write("tests/extra.yaml", &format!("cases:\n{cases}"));
    scratch
}

#[test]
fn test_fails_a_case_whose_principal_is_a_misspelt_uid() {
    let scratch = with_cases(
        "  - name: typo\n    principal: Platform::User::\"dvae\"\n    action: Platform::Action::\"read\"\n    resource: Platform::Document::\"acme-roadmap-q3\"\n    expect: deny\n",
    );
    let output = run(["test", scratch.path(), "--filter", "extra"]);
    assert_exit(&output, 1);
    let stdout = stdout_of(&output);
    assert!(
        stdout.contains("the principal Platform::User::\"dvae\" is not a known entity"),
        "{stdout}"
    );
    // The case gets the deny it expects (the example's guardrails deny a principal they do
    // not know, without erroring): only the unknown uid fails it.
    assert!(!stdout.contains("expected deny"), "{stdout}");
    assert_eq!(last_line(&stdout), "0 passed, 1 failed");
}

/// A permit and a forbid that read attributes without `has`, so that they error for a
/// principal the store does not hold.
const UNGUARDED: &str = "@id(\"unguarded-permit\")\npermit (principal is Platform::User, action, resource)\nwhen { principal.email like \"*@acme.example\" };\n\n@id(\"unguarded-forbid\")\nforbid (principal is Platform::User, action, resource)\nwhen { principal.contractor };\n";

#[test]
fn test_passes_an_unknown_principal_and_its_errors_only_when_the_case_says_so() {
    let scratch = with_cases(
        "  - name: an unknown user gets nothing\n    principal: Platform::User::\"nobody\"\n    action: Platform::Action::\"read\"\n    resource: Platform::Document::\"acme-roadmap-q3\"\n    expect: deny\n    determining: [suspended-users, tenant-isolation, unguarded-forbid]\n    allow_unknown_entities: true\n    errors: [unguarded-forbid, unguarded-permit]\n",
    );
    scratch.write("unguarded.cedar", UNGUARDED);
    let output = run(["test", scratch.path(), "--filter", "extra"]);
    assert_exit(&output, 0);
    assert_eq!(last_line(&stdout_of(&output)), "1 passed, 0 failed");

    scratch.edit(
        "tests/extra.yaml",
        "errors: [unguarded-forbid, unguarded-permit]",
        "errors: [unguarded-permit]",
    );
    let output = run(["test", scratch.path(), "--filter", "extra"]);
    assert_exit(&output, 1);
    let stdout = stdout_of(&output);
    assert!(
        stdout.contains(
            "expected evaluation errors in [unguarded-permit], got [unguarded-forbid, unguarded-permit]"
        ),
        "{stdout}"
    );
}

#[test]
fn authorize_notes_a_principal_that_is_not_a_known_entity() {
    let output = authorize([
        "--principal",
        r#"Platform::User::"dvae""#,
        "--action",
        READ,
        "--resource",
        ROADMAP,
    ]);
    assert_exit(&output, 0);
    let stdout = stdout_of(&output);
    assert!(stdout.starts_with("decision: deny\n"), "{stdout}");
    assert!(
        stdout.contains("note: the principal Platform::User::\"dvae\" is not a known entity"),
        "{stdout}"
    );
}

#[test]
fn authorize_takes_one_case_of_a_case_file_as_its_request() {
    let tmp = tempfile::tempdir().unwrap();
    let request = tmp.path().join("case.yaml");
    fs::write(
        &request,
        format!(
            "name: copied from a failing case\nprincipal: {DAVE}\naction: {READ}\nresource: {ROADMAP}\nexpect: allow\ndeterminng: []\n"
        ),
    )
    .unwrap();
    let output = authorize(["--request", path_arg(&request)]);
    // The typo `determinng` is not a case key: refused, named.
    assert_exit(&output, 2);
    assert!(stderr_of(&output).contains("unknown field `determinng`"));

    let text = fs::read_to_string(&request)
        .unwrap()
        .replace("determinng", "determining");
    fs::write(&request, text).unwrap();
    let output = authorize(["--request", path_arg(&request)]);
    assert_exit(&output, 0);
    assert!(stdout_of(&output).starts_with("decision: deny\n"));
}

#[test]
fn authorize_names_the_request_field_of_the_wrong_type() {
    let output = authorize([
        "--principal",
        BOB,
        "--action",
        READ,
        "--resource",
        ROADMAP,
        "--context",
        "[1]",
    ]);
    assert_exit(&output, 2);
    assert_contains(&stderr_of(&output), "context: invalid type: sequence");
}

#[test]
fn the_servers_config_file_applies_to_validate_and_test() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("cedar-pdp.toml");

    // A store limit below the example's 40 entities refuses it, as serve would.
    fs::write(&config, "[limits]\nmax_store_entities = 10\n").unwrap();
    let output = run(["validate", EXAMPLE_POLICIES, "--config", path_arg(&config)]);
    assert_exit(&output, 1);
    assert_contains(&stdout_of(&output), "max_store_entities");

    // Without request validation, `source_ip: "10.1.2.3"` stays a string, the network
    // check errors and is skipped: the cases that rely on it fail, as the server would.
    fs::write(&config, "validate_requests = false\n").unwrap();
    let output = run([
        "test",
        EXAMPLE_POLICIES,
        "--config",
        path_arg(&config),
        "--filter",
        "from outside the corporate network",
    ]);
    assert_exit(&output, 1);
    let stdout = stdout_of(&output);
    assert!(stdout.contains("sensitive-from-corp-network"), "{stdout}");
    assert_eq!(last_line(&stdout), "0 passed, 1 failed");

    // The policy directory can come from the config file too.
    fs::write(&config, format!("policies = {EXAMPLE_POLICIES:?}\n")).unwrap();
    let output = run(["validate", "--config", path_arg(&config)]);
    assert_exit(&output, 0);

    fs::write(&config, "no_such_key = 1\n").unwrap();
    let output = run(["validate", EXAMPLE_POLICIES, "--config", path_arg(&config)]);
    assert_exit(&output, 2);
    assert!(stderr_of(&output).contains("no_such_key"));
}

#[test]
fn validate_locates_a_json_error_at_a_line_start_without_crashing() {
    let scratch = Scratch::new();
    // A raw line break inside a string: serde_json reports column 0 of the next line.
    scratch.write("entities.json", "[{\"uid\": \"a\nb\"}]\n");
    let output = run(["validate", scratch.path()]);
    assert_exit(&output, 1);
    assert_contains(&stdout_of(&output), "--> entities.json:2:1");
    let output = run(["validate", scratch.path(), "--format", "json"]);
    assert_exit(&output, 1);
    let json: serde_json::Value = serde_json::from_str(&stdout_of(&output)).unwrap();
    let diagnostic = &json["diagnostics"][0];
    assert_eq!(diagnostic["file"], "entities.json");
    assert_eq!(
        (&diagnostic["line"], &diagnostic["column"]),
        (&2.into(), &1.into())
    );
}

#[test]
fn fmt_reports_a_policy_file_it_cannot_read() {
    let scratch = Scratch::new();
    fs::write(
        scratch.dir.join("latin1.cedar"),
        b"permit(principal, action, resource);\n// caf\xe9\n",
    )
    .unwrap();
    let output = run(["fmt", scratch.path(), "--check"]);
    assert_exit(&output, 1);
    assert_contains(&stderr_of(&output), "latin1.cedar");
}
