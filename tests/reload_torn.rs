//! Torn-state tests: clients keep asking for 10 s while the policy directory is rewritten
//! every 50 ms between two versions whose decisions differ. No call may fail, and every
//! answer must be the one its reported `policy_version` gives: a version that is neither
//! of the two means a snapshot was built from a half-written file or from a mix of both.
//!
//! A file of its own, so these run apart from the latency-sensitive reload tests.

mod common;

use std::{
    collections::HashMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use cedar_pdp::proto::cedarpdp::v1 as pb;
use common::*;

const RUN_FOR: Duration = Duration::from_secs(10);
const CLIENTS: usize = 4;

/// A version of the directory: its files and what it decides for alice and bob.
struct Variant {
    files: Vec<(&'static str, String)>,
    alice: bool,
    bob: bool,
}

const ALICE_RULES: [&str; 2] = [
    "permit(principal == User::\"alice\", action, resource);\n",
    "forbid(principal == User::\"alice\", action, resource);\n",
];
const BOB_RULES: [&str; 2] = [
    "forbid(principal == User::\"bob\", action, resource);\n",
    "permit(principal == User::\"bob\", action, resource);\n",
];

impl Variant {
    /// Variant A (`b = false`: alice allowed, bob not) or B (the other way round), as
    /// two files or as one.
    fn new(b: bool, two_files: bool) -> Self {
        let (alice, bob) = (ALICE_RULES[usize::from(b)], BOB_RULES[usize::from(b)]);
        let files = if two_files {
            vec![("a.cedar", alice.to_owned()), ("b.cedar", bob.to_owned())]
        } else {
            vec![("ab.cedar", format!("{alice}{bob}"))]
        };
        Self {
            files,
            alice: !b,
            bob: b,
        }
    }

    fn files(&self) -> Vec<(&str, &str)> {
        self.files.iter().map(|(n, t)| (*n, t.as_str())).collect()
    }
}

fn read_by(user: &str) -> pb::IsAuthorizedRequest {
    request(uid("User", user), uid("Action", "read"), uid("Doc", "d"))
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    calls: usize,
    failed: Vec<String>,
    wrong: Vec<String>,
    versions_seen: Vec<String>,
}

/// Runs `CLIENTS` clients against `server` until `stop` is set, checking every answer
/// against `expected` (version → (alice, bob)).
async fn hammer(
    server: &TestServer,
    expected: Arc<HashMap<String, (bool, bool)>>,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut tasks = Vec::new();
    for n in 0..CLIENTS {
        let mut client = server.client().await;
        let expected = expected.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let check = |version: &str, user: &str, allow: bool, tally: &mut Tally| {
                if tally.versions_seen.last().map(String::as_str) != Some(version) {
                    tally.versions_seen.push(version.to_owned());
                }
                match expected.get(version) {
                    None => tally.wrong.push(format!("unknown version {version}")),
                    Some(&(alice, bob)) => {
                        let want = if user == "alice" { alice } else { bob };
                        if allow != want {
                            tally
                                .wrong
                                .push(format!("{user} allowed={allow} under {version}"));
                        }
                    }
                }
            };
            let mut i = n;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                tally.calls += 1;
                if i % 3 == 0 {
                    let batch = pb::BatchIsAuthorizedRequest {
                        items: ["alice", "bob"]
                            .iter()
                            .map(|user| {
                                let r = read_by(user);
                                pb::BatchItem {
                                    principal: r.principal,
                                    action: r.action,
                                    resource: r.resource,
                                    ..Default::default()
                                }
                            })
                            .collect(),
                        ..Default::default()
                    };
                    match client.batch_is_authorized(batch).await {
                        Ok(response) => {
                            let response = response.into_inner();
                            if response.results.len() != 2 {
                                tally.wrong.push(format!(
                                    "a batch of 2 got {} results",
                                    response.results.len()
                                ));
                            }
                            for (user, result) in ["alice", "bob"].iter().zip(&response.results) {
                                if result.policy_version != response.policy_version {
                                    tally.wrong.push("a batch mixed two versions".to_owned());
                                }
                                check(&response.policy_version, user, is_allow(result), &mut tally);
                            }
                        }
                        Err(status) => tally.failed.push(status.to_string()),
                    }
                } else {
                    let user = if i % 3 == 1 { "alice" } else { "bob" };
                    match client.is_authorized(read_by(user)).await {
                        Ok(response) => {
                            let response = response.into_inner();
                            check(
                                &response.policy_version,
                                user,
                                is_allow(&response),
                                &mut tally,
                            );
                        }
                        Err(status) => tally.failed.push(status.to_string()),
                    }
                }
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await.expect("a client task does not panic");
        total.calls += tally.calls;
        total.failed.extend(tally.failed);
        total.wrong.extend(tally.wrong);
        total.versions_seen.extend(tally.versions_seen);
    }
    total
}

/// How one run rewrites the directory.
struct Churn {
    /// A or B as two files (else as one).
    two_files: bool,
    /// Writes a variant into the directory; the `usize` counts rewrites.
    rewrite: fn(&Path, &Variant, usize),
    /// The pause between rewrites.
    every: Duration,
    /// Version changes the clients must see between them, to show the server followed.
    min_changes: usize,
}

/// Serves a directory that `churn` flips between A and B for 10 s while clients ask, and
/// checks what they saw.
async fn torn_state_run(dir: PathBuf, churn: Churn) {
    let Churn {
        two_files,
        rewrite,
        every,
        min_changes,
    } = churn;
    let variants = [
        Variant::new(false, two_files),
        Variant::new(true, two_files),
    ];
    let expected: HashMap<String, (bool, bool)> = variants
        .iter()
        .map(|v| (version_of(&v.files()), (v.alice, v.bob)))
        .collect();
    let server = TestServer::start(&dir).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                rewrite(&dir, &variants[round % 2], round);
                thread::sleep(every);
            }
            round
        })
    };
    let timer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RUN_FOR).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    let tally = hammer(&server, Arc::new(expected), stop).await;
    timer.await.unwrap();
    let rounds = writer.join().expect("the writer does not panic");
    // Once the writing stops, the last variant written is served: no change was lost.
    let last = version_of(&Variant::new(rounds % 2 == 1, two_files).files());
    let client = server.client().await;
    eventually(
        Duration::from_secs(2),
        "the last variant written to be served",
        || {
            let mut client = client.clone();
            let last = last.clone();
            async move {
                let info = client
                    .get_policy_set_info(pb::GetPolicySetInfoRequest {})
                    .await
                    .ok()?
                    .into_inner();
                (info.policy_version == last).then_some(())
            }
        },
    )
    .await;
    server.stop().await;

    assert!(
        tally.failed.is_empty(),
        "{} of {} calls failed, e.g. {:?}",
        tally.failed.len(),
        tally.calls,
        &tally.failed[..tally.failed.len().min(5)]
    );
    assert!(
        tally.wrong.is_empty(),
        "{} wrong answers in {} calls, e.g. {:?}",
        tally.wrong.len(),
        tally.calls,
        &tally.wrong[..tally.wrong.len().min(5)]
    );
    // The test proves nothing unless the server actually followed the churn.
    let changes = tally.versions_seen.len().saturating_sub(CLIENTS);
    eprintln!(
        "{} calls, {changes} version changes seen over {rounds} rewrites",
        tally.calls
    );
    assert!(
        changes >= min_changes,
        "the clients saw only {changes} version changes over {rounds} rewrites"
    );
    assert!(tally.calls > 1000, "only {} calls were made", tally.calls);
}

/// Each rewrite publishes the variant the way the kubelet updates a ConfigMap volume: two
/// files behind one `..data` swap, so a snapshot read across a swap would mix them.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_swaps_every_50ms_never_serve_a_mixed_set() {
    let dir = tempfile::tempdir().unwrap();
    configmap(dir.path(), "round_0", &Variant::new(false, true).files());
    fn rewrite(dir: &Path, variant: &Variant, round: usize) {
        configmap(dir, &format!("round_{round}"), &variant.files());
    }
    let churn = Churn {
        two_files: true,
        rewrite,
        every: Duration::from_millis(50),
        min_changes: CLIENTS * 4,
    };
    torn_state_run(dir.path().to_owned(), churn).await;
}

/// Writes the one file in place in two chunks: truncated, the first rule (valid Cedar
/// on its own), a pause, the second rule. Only the version shows a half.
fn in_place(dir: &Path, variant: &Variant, _round: usize) {
    let (name, text) = &variant.files[0];
    let (first, rest) = text.split_at(text.find('\n').unwrap() + 1);
    let mut file = fs::File::create(dir.join(name)).unwrap();
    file.write_all(first.as_bytes()).unwrap();
    file.flush().unwrap();
    thread::sleep(Duration::from_millis(2));
    file.write_all(rest.as_bytes()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_rewrites_every_50ms_never_serve_a_half_written_file() {
    let dir = policy_dir(&Variant::new(false, false).files());
    let churn = Churn {
        two_files: false,
        rewrite: in_place,
        every: Duration::from_millis(50),
        min_changes: CLIENTS * 4,
    };
    torn_state_run(dir.path().to_owned(), churn).await;
}

/// Rewrites without a quiet moment, so rebuilds are forced by the debounce's maximum
/// wait in the middle of writes: only the watcher's checks keep half files out. Whether
/// any rebuild gets through such churn is not the point here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_rewrites_without_pause_never_serve_a_half_written_file() {
    let dir = policy_dir(&Variant::new(false, false).files());
    let churn = Churn {
        two_files: false,
        rewrite: in_place,
        every: Duration::from_millis(1),
        min_changes: 0,
    };
    torn_state_run(dir.path().to_owned(), churn).await;
}
