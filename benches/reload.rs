//! Reloading a large policy directory, and what it does to requests being served.
//!
//! Builds a directory of 10,000 policies (100 files, with a schema, strictly validated),
//! times a rebuild of it (read, then parse and validate), and times IsAuthorized over
//! loopback gRPC with no rebuild running and while such rebuilds run back to back on
//! another thread — first serving the small example set, then serving the 10,000 policies
//! themselves. Rebuilds never take a lock a request waits on; what they can take is CPU.
//!
//! Run: `cargo bench --bench reload` (optionally `-- <requests>`, default 20000).

mod support;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use cedar_pdp::policy::{LoadOptions, PolicyStore, build, read_dir};
use support::*;

/// Runs `reload` back to back on a thread until the returned guard is dropped.
struct Rebuilding {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Rebuilding {
    fn start(store: Arc<PolicyStore>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, done) = (stop.clone(), done.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    store.reload().expect("the large directory reloads");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        Self {
            stop,
            done,
            thread: Some(thread),
        }
    }

    /// Stops and returns how many rebuilds ran.
    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.done.load(Ordering::Relaxed)
    }
}

fn main() {
    let requests = iterations_arg(20_000);
    let large = tempfile::tempdir().unwrap();
    large_dir(large.path());
    let options = LoadOptions::default();

    // Rebuild time, split into its I/O and CPU halves.
    let mut reads = Vec::new();
    let mut rebuilds = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let sources = read_dir(large.path(), options.max_file_bytes).unwrap();
        reads.push(start.elapsed());
        build(&sources, &options).expect("the large directory is valid");
        rebuilds.push(start.elapsed());
    }
    reads.sort_unstable();
    rebuilds.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "rebuild of {POLICIES} policies in {FILES} files (strict validation), 5 runs: \
         median {:.0} ms (min {:.0} ms), of which reading the files {:.1} ms",
        ms(rebuilds[2]),
        ms(rebuilds[0]),
        ms(reads[2])
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let open = |dir: &Path| Arc::new(PolicyStore::open(dir, options.clone()).unwrap().0);

    // Serving the example set while a separate 10,000-policy store rebuilds.
    let example = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"));
    let (addr, _) = serve(&runtime, config(&example));
    let mut small = client(&runtime, addr);
    let bob_reads = request(
        ("Platform::User", "bob"),
        ("Platform::Action", "read"),
        ("Platform::Document", "acme-roadmap-q3"),
    );
    let mut results = Vec::new();
    results.push((
        "example set, no rebuild",
        grpc_samples(&runtime, &mut small, &bob_reads, true, requests),
    ));
    let rebuilding = Rebuilding::start(open(large.path()));
    let samples = grpc_samples(&runtime, &mut small, &bob_reads, true, requests);
    let during_small = rebuilding.finish();
    results.push(("example set, 10k rebuilds back to back", samples));

    // Serving the 10,000 policies while the same store rebuilds them.
    let (addr, served) = serve(
        &runtime,
        cedar_pdp::Config {
            watch: false,
            ..config(large.path())
        },
    );
    let mut big = client(&runtime, addr);
    let mut u4_reads = request(("User", "u4"), ("Action", "read"), ("Doc", "d"));
    u4_reads.context.insert(
        "level".to_owned(),
        cedar_pdp::proto::cedarpdp::v1::Value {
            kind: Some(cedar_pdp::proto::cedarpdp::v1::value::Kind::Long(5)),
        },
    );
    // Slicing makes a call against the 10,000 policies as cheap as one against the
    // example set, so both get as many calls.
    let big_requests = requests;
    results.push((
        "10k set, no rebuild",
        grpc_samples(&runtime, &mut big, &u4_reads, false, big_requests),
    ));
    let rebuilding = Rebuilding::start(served);
    let samples = grpc_samples(&runtime, &mut big, &u4_reads, false, big_requests);
    let during_big = rebuilding.finish();
    results.push(("10k set, its own rebuilds back to back", samples));

    println!(
        "IsAuthorized over loopback gRPC, one call at a time: {requests} calls per example-set case \
         ({during_small} rebuilds ran), {big_requests} per 10k-set case ({during_big} rebuilds ran)"
    );
    print_table(&results);
}
