//! Loading one big policy file against the same policies split into 100 files: each
//! policy's line and column come from a line index built once per file, so one file must
//! not cost more than its size says (it once scanned the file from its start per policy).
//!
//! Run: `cargo bench --bench bigfile` (optionally `-- <runs>`, default 3): the median load
//! time of each case, and one file against 100 files.

mod support;

use std::{path::Path, time::Instant};

use cedar_pdp::policy::{LoadOptions, load_dir};
use support::iterations_arg;

/// The text of policies `from..to`.
fn policies(from: usize, to: usize) -> String {
    (from..to)
        .map(|i| {
            format!(
                "@id(\"p{i}\")\npermit(principal == User::\"u{i}\", action == Action::\"read\", \
                 resource in Folder::\"f{}\")\nwhen {{ context has mfa && context.mfa }};\n\n",
                i % 100
            )
        })
        .collect()
}

/// The median of `runs` loads of `dir`, in seconds.
fn load_seconds(dir: &Path, runs: usize, expect: usize) -> f64 {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            let loaded = load_dir(dir, &LoadOptions::default()).expect("the directory loads");
            let took = start.elapsed().as_secs_f64();
            assert_eq!(loaded.snapshot.policy_count(), expect);
            took
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let runs = iterations_arg(3);
    println!(
        "{:>9} {:>12} {:>14} {:>12}",
        "policies", "one file s", "100 files s", "x one/100"
    );
    for n in [10_000, 40_000] {
        let one = tempfile::tempdir().unwrap();
        std::fs::write(one.path().join("all.cedar"), policies(0, n)).unwrap();
        let many = tempfile::tempdir().unwrap();
        let per = n / 100;
        for k in 0..100 {
            std::fs::write(
                many.path().join(format!("f{k:03}.cedar")),
                policies(k * per, (k + 1) * per),
            )
            .unwrap();
        }
        let (one_s, many_s) = (
            load_seconds(one.path(), runs, n),
            load_seconds(many.path(), runs, n),
        );
        println!(
            "{n:>9} {one_s:>12.2} {many_s:>14.2} {:>12.2}",
            one_s / many_s
        );
    }
}
