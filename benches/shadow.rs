//! What shadow evaluation costs live decisions: the same `IsAuthorized` load against four
//! servers (the release binary, each a process of its own) on the example policies: no
//! shadow set; a shadow set as costly as the live one, sampled at 100% and at 10%; and a
//! shadow set about ten times slower than the live one (measured here, in process, and
//! printed), sampled at 100%. The cases run in turns of one second (see
//! `support::load::interleave`); decisions per second and p99 are compared with the first.
//! Each shadow server's own counts of shadow decisions made and dropped are printed too:
//! shadow work runs at the lowest CPU priority, so under a load that fills the CPU it is
//! dropped (and counted) rather than slowing the live answers.
//!
//! Run: `cargo bench --bench shadow` (optionally `-- <seconds per case>`, default 5).

mod support;

use std::{
    io::{Read, Write},
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use cedar_pdp::{
    engine::{ContextInput, Engine, EngineOptions, EntitiesInput, Query},
    policy::{LoadOptions, PolicyStore},
};
use support::{load::*, *};

/// Forbids added to the example policies to make the slow shadow set: each is in scope
/// for every user's request and tests the user's email against a pattern.
const SLOW_FORBIDS: usize = 150;

/// The example policies plus [`SLOW_FORBIDS`] forbids that never match (bob's email has
/// no `#`), so that the slow set decides as the live one does, only later.
fn slow_dir(to: &Path) {
    copy_dir(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/policies")),
        to,
    );
    let mut text = String::new();
    for i in 0..SLOW_FORBIDS {
        text.push_str(&format!(
            "@id(\"slow-{i}\")\nforbid(principal is Platform::User, action, resource)\n  when {{ principal.email like \"*#*{i}*#*\" }};\n"
        ));
    }
    std::fs::write(to.join("slow.cedar"), text).unwrap();
}

/// Time per decision of bob's read on the policies of `dir`, in process.
fn decision_time(dir: &Path) -> Duration {
    let (store, _) = PolicyStore::open(dir, LoadOptions::default()).expect("the policies load");
    let snapshot = store.current();
    let engine = Engine::new(EngineOptions::default());
    let query = || Query {
        principal: r#"Platform::User::"bob""#.parse().unwrap(),
        action: r#"Platform::Action::"read""#.parse().unwrap(),
        resource: r#"Platform::Document::"acme-roadmap-q3""#.parse().unwrap(),
        context: ContextInput::Json(String::new()),
    };
    let n = 2_000;
    let started = Instant::now();
    for _ in 0..n {
        let decision = engine
            .decide(&snapshot, EntitiesInput::None, query())
            .unwrap();
        assert!(decision.allowed());
    }
    started.elapsed() / n
}

/// The value of the series `series` on the metrics endpoint at `addr` (0 when absent).
fn scrape(addr: SocketAddr, series: &str) -> f64 {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|line| line.starts_with(series))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn main() {
    let seconds = iterations_arg(5) as u64;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let example = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"));
    let slow = tempfile::tempdir().unwrap();
    slow_dir(slow.path());
    let (live_time, slow_time) = (decision_time(example), decision_time(slow.path()));
    let shadow = |dir: &Path, rate: &str| {
        vec![
            format!("--shadow-policies={}", dir.display()),
            format!("--shadow-sample-rate={rate}"),
        ]
    };
    let cases = [
        ("shadow off", vec![]),
        ("shadow on, 100%", shadow(example, "1")),
        ("shadow on, 10%", shadow(example, "0.1")),
        ("shadow 10x slower, 100%", shadow(slow.path(), "1")),
    ];
    let servers: Vec<(Served, SocketAddr, Vec<tonic::transport::Channel>)> = cases
        .iter()
        .map(|(_, extra)| {
            let (addr, metrics) = (free_port(), free_port());
            let served = Served::start(addr, metrics, extra);
            (served, metrics, connect(&runtime, addr))
        })
        .collect();
    let bob_reads = request(
        ("Platform::User", "bob"),
        ("Platform::Action", "read"),
        ("Platform::Document", "acme-roadmap-q3"),
    );
    let channels: Vec<&[tonic::transport::Channel]> =
        servers.iter().map(|(_, _, c)| c.as_slice()).collect();
    let outcomes = interleave_is_authorized(&runtime, &channels, &bob_reads, seconds);
    // Let the shadow threads finish what they queued before counting.
    std::thread::sleep(Duration::from_secs(1));

    println!(
        "shadow sets, in process: the example policies {:.1} µs a decision, the slow set {:.1} µs ({:.1}x)",
        live_time.as_secs_f64() * 1e6,
        slow_time.as_secs_f64() * 1e6,
        slow_time.as_secs_f64() / live_time.as_secs_f64()
    );
    println!(
        "{:<26} {:>12} {:>9} {:>9} {:>8} {:>8} {:>12} {:>10}",
        "case", "decisions/s", "p50 µs", "p99 µs", "x rate", "x p99", "shadowed", "dropped"
    );
    let base = &outcomes[0];
    let base_rate = base.decisions as f64 / base.elapsed.as_secs_f64();
    let base_p99 = at(&base.latencies, 0.99).as_secs_f64();
    for ((name, _), (outcome, (_, metrics, _))) in cases.iter().zip(outcomes.iter().zip(&servers)) {
        let rate = outcome.decisions as f64 / outcome.elapsed.as_secs_f64();
        let p99 = at(&outcome.latencies, 0.99).as_secs_f64();
        let shadowed = scrape(*metrics, "cedar_pdp_shadow_decisions_total{");
        let dropped = scrape(*metrics, "cedar_pdp_shadow_dropped_total");
        println!(
            "{:<26} {:>12.0} {:>9.1} {:>9.1} {:>8.2} {:>8.2} {:>12.0} {:>10.0}",
            name,
            rate,
            at(&outcome.latencies, 0.5).as_secs_f64() * 1e6,
            p99 * 1e6,
            rate / base_rate,
            p99 / base_p99,
            shadowed,
            dropped,
        );
    }
    drop(servers);
}
