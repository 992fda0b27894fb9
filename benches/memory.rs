//! Resident memory of the real server holding large policy sets: the release binary is
//! started on a generated multi-tenant directory (the sets of `benches/slicing.rs`) and,
//! once it says it is listening, its resident set (VmRSS) is read from /proc; then one
//! policy is added, and once the server says it reloaded, its resident set again and its
//! peak (VmHWM). Linux only.
//!
//! Beside each, for comparison, the heap Cedar's own parse of the same policy text holds
//! (`PolicySet::from_str`, counted by this benchmark's allocator): what a server keeping
//! Cedar's policy set as parsed would hold for the policies alone.
//!
//! Then where the heap goes, counted the same way in this process: what the loader holds
//! for the directory (`load_dir`: the snapshot with the parse it keeps for the next
//! reload), the scope index alone (`PolicyIndex::new` over Cedar's parse), and Cedar's
//! policy set of every policy, which a snapshot builds only when a call needs it.
//!
//! Run: `cargo bench --bench memory` (optionally `-- <policies>`, default 40000 and
//! 100000).

mod support;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use support::*;

fn main() {
    let sizes: Vec<usize> = match std::env::args().skip(1).find_map(|a| a.parse().ok()) {
        Some(n) => vec![n],
        None => vec![40_000, 100_000],
    };
    println!(
        "{:<12} {:>12} {:>16} {:>12} {:>18}",
        "policies", "VmRSS MiB", "after reload MiB", "VmHWM MiB", "Cedar's parse MiB"
    );
    let mut heaps = Vec::new();
    for n in sizes {
        let dir = tempfile::tempdir().unwrap();
        tenant_dir(dir.path(), n);
        let mut child = Command::new(env!("CARGO_BIN_EXE_cedar-pdp"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .arg("--policies")
            .arg(dir.path())
            .args(["--log-format", "json", "--audit-sink", "off"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the server starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        assert!(
            lines.any(|line| line.contains("\"listening\"")),
            "{n} policies: the server never said it was listening"
        );
        let (rss, _) = memory(child.id());
        // One more policy, renamed into place: the watcher builds a new snapshot (reusing
        // the unchanged file's parse) beside the serving one and swaps it in.
        let extra = dir.path().join(".extra.tmp");
        std::fs::write(
            &extra,
            "permit(principal == User::\"extra\", action, resource);\n",
        )
        .unwrap();
        std::fs::rename(&extra, dir.path().join("extra.cedar")).unwrap();
        assert!(
            lines.any(|line| line.contains("policies reloaded")),
            "{n} policies: the server never said it reloaded"
        );
        // The replaced snapshot is freed (and the memory handed back) just after the
        // line is logged.
        std::thread::sleep(std::time::Duration::from_secs(1));
        let (reloaded, peak) = memory(child.id());
        let text = std::fs::read_to_string(dir.path().join("policies.cedar")).unwrap();
        let (set, floor) = held_by(|| text.parse::<cedar_policy::PolicySet>().ok());
        assert!(set.is_some(), "the policies parse");
        println!("{n:<12} {rss:>12.1} {reloaded:>16.1} {peak:>12.1} {floor:>18.1}");
        let _ = child.kill();
        let _ = child.wait();
        let set = set.unwrap();
        let (_index, index) = held_by(|| cedar_pdp::policy::PolicyIndex::new(&set));
        drop(set);
        let options = cedar_pdp::policy::LoadOptions::default();
        let (loaded, loader) = held_by(|| cedar_pdp::policy::load_dir(dir.path(), &options));
        let snapshot = loaded.expect("the directory loads").snapshot;
        let (_, whole) = held_by(|| snapshot.policies().policies().count());
        heaps.push((n, loader, index, whole));
    }
    println!(
        "\n{:<12} {:>16} {:>16} {:>20}",
        "policies", "loader heap MiB", "index heap MiB", "whole set heap MiB"
    );
    for (n, loader, index, whole) in heaps {
        println!("{n:<12} {loader:>16.1} {index:>16.1} {whole:>20.1}");
    }
}
