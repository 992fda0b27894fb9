//! Load from many calls in flight over a few connections, for a fixed time per case,
//! the cases run in turns of one second each ([`interleave`]) so that a busy moment of a
//! shared machine falls on every case alike.

use std::{
    future::Future,
    net::{SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use cedar_pdp::proto::cedarpdp::v1 as pb;
use tonic::transport::Channel;

/// A port free now (a server binds it a moment later).
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The release server binary on the example policies, gRPC at `addr` and metrics at
/// `metrics`, with `extra` arguments; killed when dropped. A process of its own, so that
/// what is process-wide (a trace exporter, threads) is each case's own.
pub struct Served(Child);

impl Served {
    /// Starts it and waits until its gRPC port answers.
    pub fn start(addr: SocketAddr, metrics: SocketAddr, extra: &[String]) -> Self {
        let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
        let child = Command::new(env!("CARGO_BIN_EXE_cedar-pdp"))
            .args(["serve", "--policies", policies, "--audit-sink", "off"])
            .args(["--log-level", "warn"])
            .arg(format!("--listen={addr}"))
            .arg(format!("--metrics-listen={metrics}"))
            .args(extra)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("OTEL_TRACES_SAMPLER")
            .stdout(Stdio::null())
            .spawn()
            .expect("the server binary starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "the server at {addr} did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self(child)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connections the load is spread over, and calls in flight on each.
pub const CONNECTIONS: usize = 4;
pub const IN_FLIGHT_PER_CONNECTION: usize = 16;

/// One case's outcome: calls answered, decisions made, calls shed, and sorted latencies
/// of the answered calls.
pub struct Outcome {
    pub calls: usize,
    pub decisions: usize,
    pub shed: usize,
    pub latencies: Vec<Duration>,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn empty() -> Self {
        Self {
            calls: 0,
            decisions: 0,
            shed: 0,
            latencies: Vec::new(),
            elapsed: Duration::ZERO,
        }
    }

    /// Adds another round of the same case.
    pub fn add(&mut self, round: Outcome) {
        self.calls += round.calls;
        self.decisions += round.decisions;
        self.shed += round.shed;
        self.latencies.extend(round.latencies);
        self.latencies.sort_unstable();
        self.elapsed += round.elapsed;
    }
}

/// Runs each case for one second in turn, `seconds` times over, and adds up each case's
/// rounds: the shared machine's slow and fast moments then fall on every case alike, so
/// the ratios between cases hold still from run to run far better than with each case
/// run once for the whole time.
pub fn interleave(seconds: u64, cases: &[&dyn Fn(u64) -> Outcome]) -> Vec<Outcome> {
    let mut totals: Vec<Outcome> = cases.iter().map(|_| Outcome::empty()).collect();
    for _ in 0..seconds {
        for (case, total) in cases.iter().zip(&mut totals) {
            total.add(case(1));
        }
    }
    totals
}

/// Runs `call` from `in_flight` tasks per channel until `seconds` pass; `call` returns
/// the decisions it made, or `None` for a call shed with RESOURCE_EXHAUSTED (and panics
/// on a wrong answer).
pub fn run<F, Fut>(
    runtime: &tokio::runtime::Runtime,
    channels: &[Channel],
    in_flight: usize,
    seconds: u64,
    call: F,
) -> Outcome
where
    F: Fn(Channel) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<usize>> + Send,
{
    let call = Arc::new(call);
    let stop = Arc::new(AtomicBool::new(false));
    runtime.block_on(async {
        let started = Instant::now();
        let tasks: Vec<_> = channels
            .iter()
            .flat_map(|channel| std::iter::repeat_n(channel.clone(), in_flight))
            .map(|channel| {
                let (call, stop) = (call.clone(), stop.clone());
                tokio::spawn(async move {
                    let (mut latencies, mut decisions, mut shed) = (Vec::new(), 0, 0);
                    while !stop.load(Ordering::Relaxed) {
                        let start = Instant::now();
                        match call(channel.clone()).await {
                            Some(n) => {
                                decisions += n;
                                latencies.push(start.elapsed());
                            }
                            None => shed += 1,
                        }
                    }
                    (latencies, decisions, shed)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let mut outcome = Outcome {
            calls: 0,
            decisions: 0,
            shed: 0,
            latencies: Vec::new(),
            elapsed: Duration::ZERO,
        };
        for task in tasks {
            let (latencies, decisions, shed) = task.await.expect("no wrong answer");
            outcome.calls += latencies.len();
            outcome.decisions += decisions;
            outcome.shed += shed;
            outcome.latencies.extend(latencies);
        }
        outcome.elapsed = started.elapsed();
        outcome.latencies.sort_unstable();
        outcome
    })
}

/// Calls `call` at `rate` calls a second for `seconds`, spread over `channels`, whatever
/// the pace of the answers (an open loop: a slow answer does not hold back the calls due
/// after it, so a server falling behind shows in the latencies). Calls are sent in the
/// millisecond they are due (the timer's grain), each one's latency counted from then.
pub fn run_paced<F, Fut>(
    runtime: &tokio::runtime::Runtime,
    channels: &[Channel],
    rate: f64,
    seconds: u64,
    call: F,
) -> Outcome
where
    F: Fn(Channel) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<usize>> + Send + 'static,
{
    let call = Arc::new(call);
    runtime.block_on(async {
        let started = Instant::now();
        // Truncation is meant: whole calls.
        let total = (rate * seconds as f64) as usize;
        let mut tasks = Vec::with_capacity(total);
        let mut ticker = tokio::time::interval(Duration::from_millis(1));
        let mut sent = 0;
        while sent < total {
            ticker.tick().await;
            let due_now = ((started.elapsed().as_secs_f64() * rate) as usize).min(total);
            while sent < due_now {
                let (channel, call) = (channels[sent % channels.len()].clone(), call.clone());
                tasks.push(tokio::spawn(async move {
                    let start = Instant::now();
                    let answer = call(channel).await;
                    (answer, start.elapsed())
                }));
                sent += 1;
            }
        }
        let mut outcome = Outcome::empty();
        for task in tasks {
            match task.await.expect("no wrong answer") {
                (Some(n), took) => {
                    outcome.calls += 1;
                    outcome.decisions += n;
                    outcome.latencies.push(took);
                }
                (None, _) => outcome.shed += 1,
            }
        }
        outcome.elapsed = started.elapsed();
        outcome.latencies.sort_unstable();
        outcome
    })
}

/// [`CONNECTIONS`] connections to `addr`.
pub fn connect(runtime: &tokio::runtime::Runtime, addr: std::net::SocketAddr) -> Vec<Channel> {
    (0..CONNECTIONS)
        .map(|_| {
            runtime.block_on(async {
                Channel::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect()
                    .await
                    .expect("connects to the benchmark server")
            })
        })
        .collect()
}

/// One `IsAuthorized` call of `request`: `Some(1)` for its allow, `None` if shed.
pub async fn is_authorized(channel: Channel, request: pb::IsAuthorizedRequest) -> Option<usize> {
    match pb::authorizer_client::AuthorizerClient::new(channel)
        .is_authorized(request)
        .await
    {
        Ok(answer) => {
            assert_eq!(answer.into_inner().decision, pb::Decision::Allow as i32);
            Some(1)
        }
        Err(status) if status.code() == tonic::Code::ResourceExhausted => None,
        Err(status) => panic!("IsAuthorized failed: {status:?}"),
    }
}

/// The same `IsAuthorized` load of `request` on each server of `cases` (its channels), the
/// cases in turns of one second for `seconds` each ([`interleave`]): their outcomes, in
/// order.
pub fn interleave_is_authorized(
    runtime: &tokio::runtime::Runtime,
    cases: &[&[Channel]],
    request: &pb::IsAuthorizedRequest,
    seconds: u64,
) -> Vec<Outcome> {
    let load = |channels: &[Channel], seconds| {
        let request = request.clone();
        run(
            runtime,
            channels,
            IN_FLIGHT_PER_CONNECTION,
            seconds,
            move |channel| is_authorized(channel, request.clone()),
        )
    };
    let runs: Vec<Box<dyn Fn(u64) -> Outcome + '_>> = cases
        .iter()
        .map(|channels| {
            let load = &load;
            Box::new(move |seconds| load(channels, seconds)) as Box<dyn Fn(u64) -> Outcome>
        })
        .collect();
    let refs: Vec<&dyn Fn(u64) -> Outcome> = runs.iter().map(AsRef::as_ref).collect();
    interleave(seconds, &refs)
}
