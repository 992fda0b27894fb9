//! What the policy-author tools cost as a policy set grows: `validate` (read, parse and
//! strictly validate a directory) and `test` (decide one case, as the server would), on
//! the 19-policy example set and on 10,000 generated policies.
//!
//! Run: `cargo bench --bench authoring` (optionally `-- <cases>`, default 1000).

mod support;

use std::{fmt::Write as _, path::PathBuf, time::Duration};

use cedar_pdp::{
    Config,
    authoring::{self, commands::Setup, suite},
    policy::LoadOptions,
};
use support::{POLICIES, iterations_arg, large_dir, measure, print_table};

/// `count` cases over the large directory: user `u{n}` does what policy `p{n}` is about,
/// on a document someone else owns; a permit allows it, a forbid (every tenth) denies it.
fn large_cases(count: usize) -> String {
    let mut text = String::from("cases:\n");
    let step = (POLICIES / count).max(1);
    for n in (0..POLICIES).step_by(step).take(count) {
        let action = if n % 2 == 0 { "read" } else { "write" };
        let expect = if n % 10 == 9 { "deny" } else { "allow" };
        let _ = write!(
            text,
            "  - name: u{n} {action}\n    principal: User::\"u{n}\"\n    action: Action::\"{action}\"\n    \
             resource: Doc::\"d\"\n    context: {{ level: 9 }}\n    entities:\n      \
             - {{uid: {{type: Doc, id: d}}, attrs: {{owner: {{__entity: {{type: User, id: other}}}}}}, parents: []}}\n      \
             - {{uid: {{type: User, id: u{n}}}, attrs: {{}}, parents: []}}\n    \
             expect: {expect}\n    determining: [p{n}]\n"
        );
    }
    text
}

/// Every case's decision time over `rounds` runs of the directory's tests.
fn case_times(dir: &std::path::Path, rounds: usize) -> Vec<Duration> {
    let setup = Setup::new(&Config {
        policies: dir.to_owned(),
        ..Config::default()
    });
    let validation = authoring::validate(dir, &setup.load).unwrap();
    let snapshot = validation.snapshot.expect("the directory loads");
    let suites = suite::discover(dir).expect("the cases read");
    let mut samples = Vec::new();
    for _ in 0..rounds {
        let report = suite::run(&snapshot, &setup.decider, &suites, None);
        assert_eq!(report.failed(), 0, "{}", report.text(false));
        samples.extend(
            report
                .suites
                .iter()
                .flat_map(|s| s.cases.iter().map(|c| c.elapsed)),
        );
    }
    samples.sort_unstable();
    samples
}

fn main() {
    let cases = iterations_arg(1000);
    let example = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"));
    let large = tempfile::tempdir().unwrap();
    large_dir(large.path());
    std::fs::create_dir(large.path().join("tests")).unwrap();
    std::fs::write(large.path().join("tests/cases.yaml"), large_cases(cases)).unwrap();

    let validate = |dir: PathBuf| {
        move || {
            let validation = authoring::validate(&dir, &LoadOptions::default()).unwrap();
            assert!(validation.ok());
        }
    };
    println!("validate (read, parse, strict validation), 10 runs each:");
    print_table(&[
        (
            "example set (19 policies)",
            measure(10, validate(example.clone())),
        ),
        (
            "10,000 policies in 100 files",
            measure(10, validate(large.path().to_owned())),
        ),
    ]);

    let example_cases = suite::discover(&example).unwrap();
    let per_round: usize = example_cases.iter().map(|s| s.cases.len()).sum();
    println!("\ntest, time to decide one case (request built from YAML, entities merged):");
    print_table(&[
        (
            "example set (19 policies)",
            case_times(&example, cases.div_ceil(per_round)),
        ),
        ("10,000 policies", case_times(large.path(), 1)),
    ]);
}
