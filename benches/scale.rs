//! Reload at scale, everything in one run, for 10,000 and 100,000 policies under a
//! schema (strict validation):
//!
//! 1. **Load.** A full build of the policies in 1000 files and in one file, and a
//!    rebuild after one of the 1000 files changed (the build cache reuses every other
//!    file's parse and validation), and reading the files before it. Medians of 3 runs,
//!    in this process.
//! 2. **Memory.** The release server on the 1000-file directory: resident memory once
//!    loaded (per policy: above a server holding one policy), and at the largest size the
//!    peak while one file is replaced and reloaded (`VmHWM`, reset just before the write
//!    and read 3 s after the reload, once Cedar's whole policy set is built too),
//!    and the time from a file's rename into place to the server's log line saying the
//!    new version serves (median of 5).
//! 3. **Decisions during a reload storm.** IsAuthorized over loopback gRPC, one call at
//!    a time, against that server: with no reload, then while one file is rewritten
//!    every 100 ms (each write a reload of the whole set).
//!
//! Run: `cargo bench --bench scale` (optionally `-- <policies>` for one size). Linux
//! only (memory is read from /proc).

mod support;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use cedar_pdp::{
    policy::{BuildCache, LoadOptions, build_cached, read_dir},
    proto::cedarpdp::v1::{self as pb, authorizer_client::AuthorizerClient},
};
use support::{at, grpc_samples, load::free_port};

/// Files the policies are spread over.
const FILES: usize = 1000;
/// The file a reload rewrites.
const CHANGED: usize = 500;
/// Runs each load time is the median of.
const RUNS: usize = 3;
/// Rewrites the write-to-served time is the median of.
const SERVED_RUNS: usize = 5;
/// IsAuthorized calls per case of the storm.
const CALLS: usize = 20_000;
/// How often the storm rewrites its file.
const STORM_EVERY: Duration = Duration::from_millis(100);

const SCHEMA: &str = "entity User;\nentity Doc = { owner: User };\n\
action read, write appliesTo { principal: [User], resource: [Doc], context: { level: Long } };\n";

/// Policies `from..to`: `p{k}` lets user `u{k}` read any document it does not own at a
/// level above a threshold `salt` shifts (so a rewrite changes every condition).
fn policies(from: usize, to: usize, salt: usize) -> String {
    let mut text = String::new();
    for k in from..to {
        text.push_str(&format!(
            "@id(\"p{k}\")\npermit(principal == User::\"u{k}\", action == Action::\"read\", resource)\n  \
             when {{ context.level > {} && resource.owner != principal }};\n",
            (k + salt) % 7
        ));
    }
    text
}

/// The name of file `f` of the many-files layout.
fn file_name(f: usize) -> String {
    format!("team{f:04}.cedar")
}

/// Writes `n` policies in [`FILES`] files (`one`: in one file) beside the schema.
fn write_dir(root: &Path, n: usize, one: bool) {
    std::fs::write(root.join("schema.cedarschema"), SCHEMA).expect("write the schema");
    if one {
        std::fs::write(root.join("all.cedar"), policies(0, n, 0)).expect("write policies");
        return;
    }
    let per = n.div_ceil(FILES);
    for f in 0..FILES {
        let text = policies(f * per, ((f + 1) * per).min(n), 0);
        std::fs::write(root.join(file_name(f)), text).expect("write policies");
    }
}

/// Replaces file [`CHANGED`] of an `n`-policy directory with a new version of its
/// policies, as an editor or a ConfigMap update would: written beside, renamed over.
fn rewrite(root: &Path, n: usize, salt: usize) {
    let per = n.div_ceil(FILES);
    let staged = root.join(".staged.tmp");
    std::fs::write(
        &staged,
        policies(CHANGED * per, ((CHANGED + 1) * per).min(n), salt),
    )
    .expect("stage the rewrite");
    std::fs::rename(&staged, root.join(file_name(CHANGED))).expect("rename it into place");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Load times, in seconds.
struct Load {
    many: f64,
    one: f64,
    rebuild: f64,
    /// Reading the 1000 files (and hashing them).
    read: f64,
}

/// Times full builds of `n` policies in both layouts, and one-file rebuilds.
fn load(n: usize) -> Load {
    let options = LoadOptions::default();
    // (read, build) seconds.
    let timed = |root: &Path, cache: &mut BuildCache| {
        let started = Instant::now();
        let read = read_dir(root, options.max_file_bytes).expect("read");
        // Hashed when first asked for: part of reading, as before it was lazy.
        read.version();
        let reading = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let loaded = build_cached(&read, &options, cache).expect("the directory is valid");
        let took = started.elapsed().as_secs_f64();
        assert_eq!(loaded.snapshot.policy_count(), n);
        (reading, took)
    };
    let full = |root: &Path, cache: &mut BuildCache| timed(root, cache).1;
    let many_dir = tempfile::tempdir().expect("temp dir");
    write_dir(many_dir.path(), n, false);
    let one_dir = tempfile::tempdir().expect("temp dir");
    write_dir(one_dir.path(), n, true);
    let (mut many, mut one, mut rebuild, mut read) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..RUNS {
        let mut cache = BuildCache::new();
        many.push(full(many_dir.path(), &mut cache));
        rewrite(many_dir.path(), n, run + 1);
        let (reading, took) = timed(many_dir.path(), &mut cache);
        read.push(reading);
        rebuild.push(took);
        one.push(full(one_dir.path(), &mut BuildCache::new()));
    }
    Load {
        many: median(many),
        one: median(one),
        rebuild: median(rebuild),
        read: median(read),
    }
}

/// The release server on one directory, its log read on a thread of its own.
struct Server {
    child: Child,
    addr: std::net::SocketAddr,
    log: mpsc::Receiver<String>,
}

impl Server {
    /// Starts the server on `dir` and waits until it says it is listening.
    fn start(dir: &Path) -> Self {
        let addr = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_cedar-pdp"))
            .arg("serve")
            .arg("--policies")
            .arg(dir)
            .arg(format!("--listen={addr}"))
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(["--log-format", "json", "--audit-sink", "off"])
            .env_remove("RUST_LOG")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the server starts");
        let stdout = child.stdout.take().expect("piped");
        let (send, log) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let server = Self { child, addr, log };
        assert!(
            server.wait_for("\"listening\"", Duration::from_secs(120)),
            "the server on {} never said it was listening",
            dir.display()
        );
        server
    }

    /// Whether a log line holding `needle` comes within `timeout`.
    fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }

    /// Reload lines logged since the last call.
    fn reloads(&self) -> usize {
        self.log
            .try_iter()
            .filter(|l| l.contains("policies reloaded"))
            .count()
    }

    /// `(VmRSS, VmHWM)` in MiB.
    fn memory(&self) -> (f64, f64) {
        support::memory(self.child.id())
    }

    /// Resets `VmHWM` to the resident set now, so that the next peak read is of what
    /// follows.
    fn reset_peak(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5")
            .expect("reset the peak resident set");
    }

    /// Resident memory once the load's leftovers are handed back, in MiB.
    fn steady(&self) -> f64 {
        thread::sleep(Duration::from_secs(1));
        self.memory().0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// IsAuthorized for user `u4` reading a document someone else owns: `p4` allows it.
fn u4_reads() -> pb::IsAuthorizedRequest {
    let uid = |ty: &str, id: &str| pb::EntityUid {
        r#type: ty.into(),
        id: id.into(),
    };
    pb::IsAuthorizedRequest {
        principal: Some(uid("User", "u4")),
        action: Some(uid("Action", "read")),
        resource: Some(uid("Doc", "d")),
        context_json: r#"{"level": 9}"#.into(),
        entities_json: r#"[{"uid": {"type": "Doc", "id": "d"},
            "attrs": {"owner": {"__entity": {"type": "User", "id": "someone"}}}, "parents": []}]"#
            .into(),
        ..Default::default()
    }
}

fn main() {
    let sizes: Vec<usize> = match std::env::args().skip(1).find_map(|a| a.parse().ok()) {
        Some(n) => vec![n],
        None => vec![10_000, 100_000],
    };
    let largest = *sizes.iter().max().expect("a size");

    println!(
        "== load: full build, and rebuild after one of {FILES} files changed (median of {RUNS})"
    );
    println!(
        "{:>9} {:>16} {:>14} {:>18} {:>10} {:>18}",
        "policies",
        "1000 files ms",
        "one file ms",
        "one-file reload ms",
        "x faster",
        "reading files ms"
    );
    for &n in &sizes {
        let Load {
            many,
            one,
            rebuild,
            read,
        } = load(n);
        println!(
            "{n:>9} {:>16.0} {:>14.0} {:>18.1} {:>10.1} {:>18.1}",
            many * 1e3,
            one * 1e3,
            rebuild * 1e3,
            many / rebuild,
            read * 1e3
        );
    }

    println!("\n== memory of the release server ({FILES} files)");
    let base_dir = tempfile::tempdir().expect("temp dir");
    write_dir(base_dir.path(), 1, false);
    let base = Server::start(base_dir.path()).steady();
    println!("one policy: {base:.1} MiB resident");
    println!(
        "{:>9} {:>12} {:>18} {:>20} {:>12} {:>18}",
        "policies",
        "steady MiB",
        "per policy bytes",
        "peak in reload MiB",
        "peak/steady",
        "write to served ms"
    );
    let mut storm_server = None;
    for &n in &sizes {
        let dir = tempfile::tempdir().expect("temp dir");
        write_dir(dir.path(), n, false);
        let server = Server::start(dir.path());
        let steady = server.steady();
        let per_policy = (steady - base) * 1024.0 * 1024.0 / n as f64;
        server.reset_peak();
        rewrite(dir.path(), n, 1);
        assert!(
            server.wait_for("policies reloaded", Duration::from_secs(120)),
            "{n} policies: the server never said it reloaded"
        );
        // The new version serves before Cedar's whole policy set is built for it (see
        // `Snapshot::policies`): the peak is read once that is done too.
        thread::sleep(Duration::from_secs(3));
        let (_, peak) = server.memory();
        // From the rename to the log line the new version's install writes; the watcher
        // waits for the directory to be quiet (20 ms) and reads it twice in that time.
        let served: Vec<f64> = (0..SERVED_RUNS)
            .map(|run| {
                thread::sleep(Duration::from_millis(300));
                let _ = server.reloads();
                let written = Instant::now();
                rewrite(dir.path(), n, run + 2);
                assert!(
                    server.wait_for("policies reloaded", Duration::from_secs(120)),
                    "{n} policies: the server never said it reloaded"
                );
                written.elapsed().as_secs_f64()
            })
            .collect();
        println!(
            "{n:>9} {steady:>12.1} {per_policy:>18.0} {peak:>20.1} {:>12.2} {:>18.0}",
            peak / steady,
            median(served) * 1e3
        );
        if n == largest {
            storm_server = Some((server, dir));
        }
    }

    let (server, dir) = storm_server.expect("the largest size ran");
    println!(
        "\n== IsAuthorized during a reload storm ({largest} policies; one call at a time, \
         {CALLS} calls a case; one file rewritten every {} ms)",
        STORM_EVERY.as_millis()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut client = runtime.block_on(async {
        AuthorizerClient::connect(format!("http://{}", server.addr))
            .await
            .expect("connects")
    });
    let request = u4_reads();
    let quiet = grpc_samples(&runtime, &mut client, &request, true, CALLS);
    let _ = server.reloads();
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, writes, root) = (stop.clone(), writes.clone(), dir.path().to_owned());
        thread::spawn(move || {
            let mut salt = 2;
            while !stop.load(Ordering::Relaxed) {
                rewrite(&root, largest, salt);
                salt += 1;
                writes.fetch_add(1, Ordering::Relaxed);
                thread::sleep(STORM_EVERY);
            }
        })
    };
    let storm = grpc_samples(&runtime, &mut client, &request, true, CALLS);
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("the writer");
    thread::sleep(Duration::from_secs(2));
    let reloads = server.reloads();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{:<28} {:>9} {:>9} {:>9}",
        "case", "p50 us", "p99 us", "max us"
    );
    for (case, samples) in [("no reload", &quiet), ("reload storm", &storm)] {
        println!(
            "{case:<28} {:>9.0} {:>9.0} {:>9.0}",
            us(at(samples, 0.5)),
            us(at(samples, 0.99)),
            us(at(samples, 1.0))
        );
    }
    println!(
        "storm: {} writes, {reloads} reloads; p99 {:.2}x, p50 {:.2}x of no reload",
        writes.load(Ordering::Relaxed),
        us(at(&storm, 0.99)) / us(at(&quiet, 0.99)),
        us(at(&storm, 0.5)) / us(at(&quiet, 0.5)),
    );
}
