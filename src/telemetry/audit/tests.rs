use std::sync::{Arc, Condvar, Mutex};

use super::*;

fn record(allowed: bool) -> Record {
    let mut context = serde_json::Map::new();
    context.insert("mfa".to_owned(), serde_json::Value::Bool(true));
    Record {
        time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000),
        kind: "decision",
        request_id: "req-1".to_owned(),
        decision_id: "d-1".to_owned(),
        api: Api::IsAuthorized,
        caller: None,
        peer: Some("127.0.0.1:5000".to_owned()),
        item: None,
        principal: r#"User::"alice""#.to_owned(),
        action: r#"Action::"read""#.to_owned(),
        resource: r#"Doc::"d""#.to_owned(),
        allowed,
        determining_policies: vec!["p1".to_owned()],
        errors: vec![AuditError {
            policy_id: "p2".to_owned(),
            message: "boom".to_owned(),
        }],
        policy_version: "0123456789abcdef".to_owned(),
        latency: Duration::from_micros(42),
        refused: None,
        context,
        request_entities: vec![r#"User::"alice""#.to_owned()],
    }
}

fn dropped(metrics: &Metrics) -> f64 {
    metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix("cedar_pdp_audit_records_dropped_total "))
        .expect("the dropped counter is exported")
        .parse()
        .unwrap()
}

#[test]
fn a_record_is_one_json_line_with_every_field() {
    let sink = Collect::default();
    let log = AuditLog::with_writer(
        &AuditOptions::default(),
        Box::new(sink.clone()),
        Metrics::new(),
    )
    .unwrap();
    log.submit(record(false));
    drop(log); // flushes
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    let json: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(json["time"], "2026-11-18T11:06:40.000000Z");
    assert_eq!(json["kind"], "decision");
    assert_eq!(json["request_id"], "req-1");
    assert_eq!(json["api"], "is_authorized");
    assert_eq!(json["peer"], "127.0.0.1:5000");
    assert!(json.get("caller").is_none());
    assert!(json.get("item").is_none());
    assert_eq!(json["principal"], r#"User::"alice""#);
    assert_eq!(json["action"], r#"Action::"read""#);
    assert_eq!(json["resource"], r#"Doc::"d""#);
    assert_eq!(json["allowed"], "deny");
    assert_eq!(json["determining_policies"], serde_json::json!(["p1"]));
    assert_eq!(json["errors"][0]["policy_id"], "p2");
    assert_eq!(json["policy_version"], "0123456789abcdef");
    assert_eq!(json["latency"], 42);
    assert_eq!(json["context"]["mfa"], true);
    assert_eq!(json["request_entities"][0], r#"User::"alice""#);
}

#[test]
fn allows_are_drawn_at_the_sample_rate_by_the_server() {
    let at = |rate: f64| {
        let options = AuditOptions {
            allow_sample_rate: rate,
            ..AuditOptions::default()
        };
        AuditLog::with_writer(&options, Box::new(io::sink()), Metrics::new()).unwrap()
    };
    let none = at(0.0);
    assert!(none.enabled(), "denies are still recorded");
    assert!(!(0..1000).any(|_| none.sample_allows()));
    let all = at(1.0);
    assert!((0..1000).all(|_| all.sample_allows()));
    let half = at(0.5);
    let kept = (0..10_000).filter(|_| half.sample_allows()).count();
    assert!(
        (4_000..6_000).contains(&kept),
        "{kept} of 10000 allows kept at 0.5"
    );
    let off = AuditLog::off(Metrics::new());
    assert!(!off.enabled() && !off.sample_allows());
}

/// A sink that refuses every write: the records are counted as dropped.
#[test]
fn records_the_sink_refuses_are_counted_as_dropped() {
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::StorageFull, "no space left"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let metrics = Metrics::new();
    let log =
        AuditLog::with_writer(&AuditOptions::default(), Box::new(Full), metrics.clone()).unwrap();
    for _ in 0..20 {
        log.submit(record(false));
    }
    drop(log); // the writer drains and ends
    assert_eq!(dropped(&metrics), 20.0);
}

/// The writer is stuck (a full pipe, a hung disk): submitting must still return at once,
/// dropping and counting what does not fit.
#[test]
fn a_flood_against_a_stuck_writer_drops_and_counts_instead_of_blocking() {
    /// Blocks every write until the gate opens, saying when it is stuck.
    struct Stuck(Arc<(Mutex<bool>, Condvar)>, mpsc::Sender<()>);
    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.1.send(());
            let (open, opened) = &*self.0;
            let _open = opened
                .wait_while(open.lock().unwrap(), |open| !*open)
                .unwrap();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let (stuck_tx, stuck) = mpsc::channel();
    let metrics = Metrics::new();
    let options = AuditOptions {
        queue_capacity: 4,
        ..AuditOptions::default()
    };
    let log = AuditLog::with_writer(
        &options,
        Box::new(Stuck(gate.clone(), stuck_tx)),
        metrics.clone(),
    )
    .unwrap();
    // The writer takes the first record, writes it, and is stuck there.
    log.submit(record(false));
    let writer_stuck = stuck.recv_timeout(Duration::from_secs(20));
    let (done, finished) = mpsc::channel();
    let flood = thread::spawn(move || {
        for _ in 0..1000 {
            log.submit(record(false));
        }
        done.send(()).unwrap();
        log
    });
    let returned = finished.recv_timeout(Duration::from_secs(20));
    let lost = dropped(&metrics);
    // Open the gate before any assertion: a failing test must not hang on the writer.
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    writer_stuck.expect("the writer reaches the sink");
    returned.expect("1000 submits return although the writer is stuck");
    // The queue holds 4; every other record of the flood is dropped and counted.
    assert!(
        lost >= 1000.0 - 4.0,
        "only {lost} records were counted as dropped"
    );
    drop(flood.join().unwrap()); // the writer drains what was queued and ends
}
