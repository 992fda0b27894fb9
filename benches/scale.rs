//! Reload at scale: a policy directory of N policies in 1000 files under a schema
//! (strict validation), built from scratch and then rebuilt after one file changed.
//! The rebuild reuses every unchanged file's parse and validation (`BuildCache`), so
//! its cost follows the change, plus assembling the new policy set.
//!
//! Run: `cargo bench --bench scale` (optionally `-- <policies> <runs>`, defaults
//! 100000 and 3): the median of a full build and of a one-file rebuild, and their ratio.

use std::{path::Path, time::Instant};

use cedar_pdp::policy::{BuildCache, LoadOptions, build_cached, read_dir};

const FILES: usize = 1000;

const SCHEMA: &str = "entity User;\nentity Doc = { owner: User };\n\
action read, write appliesTo { principal: [User], resource: [Doc], context: { level: Long } };\n";

/// The text of file `f` holding `per` policies; `salt` changes every condition.
fn file_text(f: usize, per: usize, salt: usize) -> String {
    let mut text = String::new();
    for i in 0..per {
        let k = f * per + i;
        text.push_str(&format!(
            "@id(\"p{k}\")\npermit(principal == User::\"u{k}\", action == Action::\"read\", resource)\n  \
             when {{ context.level > {} && resource.owner != principal }};\n",
            (k + salt) % 7
        ));
    }
    text
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let policies: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3).max(1);
    let per = policies.div_ceil(FILES);
    let dir = tempfile::tempdir().expect("temp dir");
    let root: &Path = dir.path();
    std::fs::write(root.join("schema.cedarschema"), SCHEMA).expect("write schema");
    for f in 0..FILES {
        std::fs::write(root.join(format!("team{f:04}.cedar")), file_text(f, per, 0))
            .expect("write policies");
    }
    let options = LoadOptions::default();
    let (mut full, mut one) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let mut cache = BuildCache::new();
        let read = read_dir(root, options.max_file_bytes).expect("read");
        let started = Instant::now();
        let loaded = build_cached(&read, &options, &mut cache).expect("full build");
        full.push(started.elapsed().as_secs_f64());
        assert_eq!(loaded.snapshot.policy_count(), per * FILES);
        drop(loaded);

        std::fs::write(root.join("team0500.cedar"), file_text(500, per, run + 1))
            .expect("change one file");
        let read = read_dir(root, options.max_file_bytes).expect("read");
        let started = Instant::now();
        let loaded = build_cached(&read, &options, &mut cache).expect("one-file rebuild");
        one.push(started.elapsed().as_secs_f64());
        assert_eq!(loaded.snapshot.policy_count(), per * FILES);
    }
    let (full, one) = (median(full), median(one));
    println!(
        "{} policies in {FILES} files, {runs} runs (median): full build {:.0} ms, \
         one-file rebuild {:.0} ms, {:.1}x faster",
        per * FILES,
        full * 1e3,
        one * 1e3,
        full / one
    );
}
