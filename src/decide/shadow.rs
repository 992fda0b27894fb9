//! Shadow evaluation: a sampled share of calls is decided a second time, against the
//! candidate policy set of `[shadow] policies`, to show what a change would do to live
//! traffic before it is served.
//!
//! The shadow decision never touches the live answer: the call copies its questions into
//! a [`Pending`] job before deciding, adds each live answer after, and hands the job to a
//! bounded queue without waiting ([`Shadow::submit`]); a full queue drops the job and
//! counts it (`cedar_pdp_shadow_dropped_total`). One thread of its own, at the lowest CPU
//! priority, decides the jobs with an engine of its own (same options as the live one)
//! on the shadow store's current snapshot, counts each pair of answers
//! (`cedar_pdp_shadow_decisions_total{api,live,shadow}`) and writes every disagreement to
//! the audit log as a `"kind":"shadow"` record holding both answers.

use std::{
    hash::{BuildHasher as _, RandomState},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc::{self, Receiver, SyncSender, TryRecvError},
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

/// Bytes of call messages the queued shadow jobs may copy at most (the calls' encoded
/// sizes; a job counts at least [`MIN_JOB_BYTES`]): past it a job is dropped, whatever
/// `queue_capacity` says, so that calls carrying large entity lists cannot make the queue
/// hold gigabytes.
pub const MAX_QUEUED_BYTES: usize = 16 * 1024 * 1024;

/// Disagreement records the shadow thread writes to the audit log in one second at most;
/// past it they are counted (`cedar_pdp_shadow_records_skipped_total`), so that a flood of
/// disagreements cannot fill the audit queue live decisions' records need.
pub const MAX_RECORDS_PER_SECOND: u32 = 100;

/// What a job is charged at least (its questions and answers, whatever its message).
const MIN_JOB_BYTES: usize = 1024;

/// How often the shadow thread looks for jobs while they keep coming.
const POLL: Duration = Duration::from_millis(1);

/// How long the shadow thread polls after its last job before it blocks until the next.
const IDLE_BEFORE_BLOCKING: Duration = Duration::from_secs(1);

use serde_json::{Map, Value as Json};

use super::{
    Call, ContextInput, Decision, EntitiesInput, Question, Refusal, RequestEntities, Telemetry,
};
use crate::{
    config::ShadowConfig,
    engine::{Engine, EngineOptions, Query},
    policy::{PolicyStore, Snapshot},
    telemetry::{
        audit::{ShadowAnswer, ShadowRecord},
        metrics::{Api, Outcome},
    },
};

/// The shadow policy set and the thread that decides against it.
#[derive(Debug)]
pub struct Shadow {
    queue: SyncSender<Job>,
    /// Jobs queued now, and at most.
    queued_jobs: Arc<AtomicUsize>,
    capacity: usize,
    /// Bytes charged to the jobs queued now (see [`MAX_QUEUED_BYTES`]).
    queued_bytes: Arc<AtomicUsize>,
    store: Arc<PolicyStore>,
    telemetry: Telemetry,
    /// Share of calls decided by the shadow set too, as configured.
    rate: f64,
    /// Calls drawn while `hasher(draw) < below`; `u64::MAX` keeps every call.
    below: u64,
    hasher: RandomState,
    draws: AtomicU64,
}

impl Shadow {
    /// Starts the shadow thread deciding against `store` with an engine of `options`,
    /// sampling and queueing as `config` says, reporting to `telemetry`.
    pub fn start(
        store: Arc<PolicyStore>,
        options: EngineOptions,
        config: &ShadowConfig,
        telemetry: Telemetry,
    ) -> std::io::Result<Self> {
        let (shadow, worker, jobs) = Self::parts(store, options, config, telemetry);
        thread::Builder::new()
            .name("shadow".into())
            .stack_size(crate::policy::STACK_BYTES)
            .spawn(move || worker.run(&jobs))?;
        Ok(shadow)
    }

    /// The shadow set, the worker that would decide its jobs, and the jobs' receiving end,
    /// not yet running.
    fn parts(
        store: Arc<PolicyStore>,
        options: EngineOptions,
        config: &ShadowConfig,
        telemetry: Telemetry,
    ) -> (Self, Worker, Receiver<Job>) {
        let (queue, jobs) = mpsc::sync_channel(config.queue_capacity.max(1));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let queued_jobs = Arc::new(AtomicUsize::new(0));
        let worker = Worker {
            engine: Engine::new(options),
            store: store.clone(),
            telemetry: telemetry.clone(),
            queued_bytes: queued_bytes.clone(),
            queued_jobs: queued_jobs.clone(),
            records: OncePerSecondBudget::new(MAX_RECORDS_PER_SECOND),
        };
        let shadow = Self {
            queue,
            queued_jobs,
            capacity: config.queue_capacity.max(1),
            queued_bytes,
            store,
            telemetry,
            rate: config.sample_rate,
            below: sample_threshold(config.sample_rate),
            hasher: RandomState::new(),
            draws: AtomicU64::new(0),
        };
        (shadow, worker, jobs)
    }

    /// The shadow store (its snapshot, version and last reload error).
    pub fn store(&self) -> &Arc<PolicyStore> {
        &self.store
    }

    /// Share of calls decided by the shadow set too.
    pub fn sample_rate(&self) -> f64 {
        self.rate
    }

    /// A job for `call` when the sample draws it: the call's entities copied, to be
    /// filled with its questions ([`Pending::ask`]) and live answers.
    pub(super) fn draw(
        &self,
        call: &Call,
        entities: &EntitiesInput,
        mode: RequestEntities,
    ) -> Option<Pending> {
        if !self.store.loaded() {
            // The shadow directory has not loaded yet: nothing to compare with.
            return None;
        }
        let drawn = self.below == u64::MAX || {
            let draw = self.draws.fetch_add(1, Ordering::Relaxed);
            self.hasher.hash_one(draw) < self.below
        };
        if !drawn {
            return None;
        }
        // No room now: nothing is copied, and the call's decisions count as dropped.
        let full = self.queued_jobs.load(Ordering::Relaxed) >= self.capacity
            || self.queued_bytes.load(Ordering::Relaxed) + call.size > MAX_QUEUED_BYTES;
        let entity_bytes = match entities {
            EntitiesInput::Json(json) => json.len(),
            EntitiesInput::None | EntitiesInput::Typed(_) => 0,
        };
        Some(Pending {
            dropped: full.then_some(0),
            job: Job {
                api: call.api,
                request_id: call.id.as_str().to_owned(),
                decision_id: call.decision_id.clone(),
                caller: call.caller.clone(),
                bytes: call.size.max(MIN_JOB_BYTES) + entity_bytes,
                entities: if full {
                    EntitiesInput::None
                } else {
                    entities.clone()
                },
                mode,
                items: Vec::new(),
            },
        })
    }

    /// Queues `pending` for the shadow thread without waiting; a full queue drops it, and
    /// each of its decisions is counted as dropped.
    pub(super) fn submit(&self, pending: Pending) {
        if let Some(dropped) = pending.dropped {
            for _ in 0..dropped {
                self.telemetry.metrics.shadow_dropped();
            }
            return;
        }
        let mut job = pending.job;
        job.items.retain(|item| item.live.is_some());
        if job.items.is_empty() {
            return;
        }
        let (items, bytes) = (job.items.len(), job.bytes);
        let charged = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.queued_jobs.fetch_add(1, Ordering::Relaxed);
        if charged > MAX_QUEUED_BYTES || self.queue.try_send(job).is_err() {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.queued_jobs.fetch_sub(1, Ordering::Relaxed);
            for _ in 0..items {
                self.telemetry.metrics.shadow_dropped();
            }
        }
    }
}

/// Says yes `limit` times per wall-clock second at most (used by one thread).
#[derive(Debug)]
struct OncePerSecondBudget {
    limit: u32,
    second: u64,
    used: u32,
}

impl OncePerSecondBudget {
    fn new(limit: u32) -> Self {
        Self {
            limit,
            second: u64::MAX,
            used: 0,
        }
    }

    /// Whether one more may go this second.
    fn take(&mut self) -> bool {
        let now = std::time::UNIX_EPOCH
            .elapsed()
            .map_or(0, |since| since.as_secs());
        self.take_at(now)
    }

    /// Whether one more may go in second `now`.
    fn take_at(&mut self, now: u64) -> bool {
        if now != self.second {
            (self.second, self.used) = (now, 0);
        }
        if self.used < self.limit {
            self.used += 1;
            true
        } else {
            false
        }
    }
}

/// The `hash < below` bound that keeps a share `rate` of draws.
fn sample_threshold(rate: f64) -> u64 {
    if rate >= 1.0 {
        u64::MAX
    } else if rate <= 0.0 {
        0
    } else {
        // The share of the u64 range below which a uniform draw falls with chance `rate`.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let below = (rate * u64::MAX as f64) as u64;
        below
    }
}

/// One call's questions, copied for the shadow set, with the live answers added as they
/// come.
#[derive(Debug)]
pub(super) struct Pending {
    job: Job,
    /// `Some(questions asked)` when the queue had no room as the call was drawn: its
    /// questions are counted, not copied, and all count as dropped.
    dropped: Option<usize>,
}

impl Pending {
    /// Adds `question` (item `item` of a call with many), charging the job what its
    /// context copies.
    pub(super) fn ask(&mut self, item: Option<usize>, question: &Question) {
        if let Some(dropped) = &mut self.dropped {
            *dropped += 1;
            return;
        }
        self.job.bytes += match &question.query.context {
            ContextInput::Json(json) => json.len(),
            ContextInput::Value(_) => 0,
            ContextInput::Canonical(typed) => typed.bytes().len(),
        };
        self.job.items.push(Item {
            item,
            query: question.query.clone(),
            context: question.recorded_context.clone(),
            live: None,
        });
    }

    /// Adds what the live set answered on `snapshot` to the question last asked.
    pub(super) fn answered(&mut self, answer: Result<&Decision, &Refusal>, snapshot: &Snapshot) {
        if let Some(last) = self.job.items.last_mut() {
            last.live = Some(answer_of(answer, snapshot));
        }
    }

    /// Adds what the live set answered on `snapshot` to the question asked `at`-th.
    pub(super) fn answered_at(
        &mut self,
        at: usize,
        answer: Result<&Decision, &Refusal>,
        snapshot: &Snapshot,
    ) {
        if let Some(item) = self.job.items.get_mut(at) {
            item.live = Some(answer_of(answer, snapshot));
        }
    }
}

#[derive(Debug)]
struct Job {
    api: Api,
    request_id: String,
    decision_id: String,
    caller: Option<String>,
    /// What it is charged against [`MAX_QUEUED_BYTES`] while queued.
    bytes: usize,
    entities: EntitiesInput,
    mode: RequestEntities,
    items: Vec<Item>,
}

#[derive(Debug)]
struct Item {
    item: Option<usize>,
    query: Query,
    /// Allow-listed context values, for the audit record.
    context: Map<String, Json>,
    live: Option<(Outcome, ShadowAnswer)>,
}

/// `answer` as the shadow metrics label it and the shadow record writes it.
fn answer_of(answer: Result<&Decision, &Refusal>, snapshot: &Snapshot) -> (Outcome, ShadowAnswer) {
    let version = snapshot.version().to_owned();
    match answer {
        Ok(decision) => (
            if decision.allowed() {
                Outcome::Allow
            } else {
                Outcome::Deny
            },
            ShadowAnswer {
                decision: decision.effect().label(),
                determining_policies: decision.determining_policies().to_vec(),
                errors: super::record::audit_errors(decision),
                refused: None,
                policy_version: version,
            },
        ),
        Err(refusal) => (
            Outcome::Error,
            ShadowAnswer {
                decision: Outcome::Error.label(),
                determining_policies: Vec::new(),
                errors: Vec::new(),
                refused: Some(super::record::refused(refusal)),
                policy_version: version,
            },
        ),
    }
}

/// The shadow thread's state.
struct Worker {
    engine: Engine,
    store: Arc<PolicyStore>,
    telemetry: Telemetry,
    queued_bytes: Arc<AtomicUsize>,
    queued_jobs: Arc<AtomicUsize>,
    /// Disagreement records written this second (see [`MAX_RECORDS_PER_SECOND`]).
    records: OncePerSecondBudget,
}

impl Worker {
    /// Decides jobs until every sender is gone (the decider was dropped). While jobs
    /// keep coming, the thread looks for them every millisecond rather than sleeping in
    /// `recv`: a sender then never has to wake it, so queueing a job costs a call no
    /// system call. After a second with no job it sleeps in `recv` until the next.
    fn run(mut self, jobs: &Receiver<Job>) {
        lowest_priority();
        let mut idle_since = Instant::now();
        loop {
            let job = match jobs.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) if idle_since.elapsed() < IDLE_BEFORE_BLOCKING => {
                    thread::sleep(POLL);
                    continue;
                }
                Err(TryRecvError::Empty) => match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                },
            };
            self.queued_bytes.fetch_sub(job.bytes, Ordering::Relaxed);
            self.queued_jobs.fetch_sub(1, Ordering::Relaxed);
            let snapshot = self.store.current();
            // A panic in Cedar costs one job's shadow answers, never the thread.
            let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.decide(&snapshot, job);
            }));
            if decided.is_err() {
                tracing::error!("a shadow decision failed unexpectedly; its job was skipped");
            }
            idle_since = Instant::now();
        }
    }

    /// Decides every item of `job` on `snapshot` (one entity store for all, as the live
    /// call had), counts each pair of answers and audits each disagreement.
    fn decide(&mut self, snapshot: &Snapshot, job: Job) {
        let engine = &self.engine;
        let Job {
            api,
            request_id,
            decision_id,
            caller,
            bytes: _,
            entities,
            mode,
            items,
        } = job;
        let entities = engine.entities_as(snapshot, entities, mode);
        let uids: Vec<String> = match &entities {
            Ok(entities) => entities.uids().iter().map(ToString::to_string).collect(),
            Err(_) => Vec::new(),
        };
        // Each item's request, or why it cannot be asked; the built ones share a store.
        let mut built = Vec::with_capacity(items.len());
        let positions: Vec<Result<usize, Refusal>> = items
            .iter()
            .map(|item| {
                let request = engine.request(snapshot, item.query.clone())?;
                built.push(request);
                Ok(built.len() - 1)
            })
            .collect();
        let store = entities.and_then(|entities| engine.store(snapshot, entities, &built));
        for (item, position) in items.into_iter().zip(positions) {
            let answer = match (&store, position) {
                (Ok(store), Ok(at)) => Ok(engine.decide_request(snapshot, store, &built[at])),
                (Err(refusal), _) => Err(refusal.clone()),
                (_, Err(refusal)) => Err(refusal),
            };
            let (shadow_outcome, shadow) = answer_of(answer.as_ref(), snapshot);
            let Some((live_outcome, live)) = item.live else {
                continue;
            };
            self.telemetry
                .metrics
                .shadow_decided(api, live_outcome, shadow_outcome);
            let agree = live_outcome == shadow_outcome;
            if agree || !self.telemetry.audit.enabled() {
                continue;
            }
            if !self.records.take() {
                // Counted, not written: disagreements must not crowd the audit queue
                // that live decisions' records share.
                self.telemetry.metrics.shadow_record_skipped();
                continue;
            }
            self.telemetry.audit.submit(ShadowRecord {
                time: SystemTime::now(),
                kind: "shadow",
                request_id: request_id.clone(),
                decision_id: match item.item {
                    Some(i) => format!("{decision_id}.{i}"),
                    None => decision_id.clone(),
                },
                api,
                caller: caller.clone(),
                item: item.item,
                principal: item.query.principal.to_string(),
                action: item.query.action.to_string(),
                resource: item.query.resource.to_string(),
                context: item.context,
                request_entities: uids.clone(),
                live,
                shadow,
            });
        }
    }
}

/// Lowers the calling thread's CPU priority as far as it goes (Linux: nice 19 for this
/// thread only), so that shadow work takes only CPU time the live decisions leave.
fn lowest_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions; setpriority on our own thread id changes
        // only this thread's nice value, and failing leaves it as it was.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid);
            #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)]
            let tid = tid as libc::id_t;
            if libc::setpriority(libc::PRIO_PROCESS, tid, 19) != 0 {
                tracing::debug!("could not lower the shadow thread's priority");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        decide::{Decider, Question},
        policy::LoadOptions,
        telemetry::Metrics,
    };

    #[test]
    fn the_sample_threshold_keeps_all_none_or_a_share() {
        assert_eq!(sample_threshold(1.0), u64::MAX);
        assert_eq!(sample_threshold(0.0), 0);
        let half = sample_threshold(0.5);
        assert!(half > u64::MAX / 2 - u64::MAX / 100 && half < u64::MAX / 2 + u64::MAX / 100);
    }

    #[test]
    fn the_record_budget_allows_its_limit_each_second() {
        let mut budget = OncePerSecondBudget::new(3);
        assert_eq!(
            (0..5).map(|_| budget.take_at(7)).collect::<Vec<_>>(),
            [true, true, true, false, false]
        );
        assert!(budget.take_at(8), "a new second starts again");
    }

    fn dropped(metrics: &Metrics) -> f64 {
        let text = metrics.render();
        text.lines()
            .find_map(|l| l.strip_prefix("cedar_pdp_shadow_dropped_total "))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// Jobs held by a shadow thread that is not running: the queue's two bounds, jobs and
    /// bytes, each drop (and count) what is past them; a job taken off frees its bytes.
    #[test]
    fn jobs_past_the_queue_or_the_byte_budget_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.cedar"),
            "permit(principal, action, resource);",
        )
        .unwrap();
        let (store, _) = PolicyStore::open(dir.path(), LoadOptions::default()).unwrap();
        let store = Arc::new(store);
        let metrics = Metrics::new();
        let telemetry = Telemetry::metrics_only(metrics.clone());
        let config = ShadowConfig {
            policies: Some(dir.path().to_owned()),
            sample_rate: 1.0,
            queue_capacity: 3,
        };
        let (shadow, _worker, jobs) = Shadow::parts(
            store.clone(),
            EngineOptions::default(),
            &config,
            telemetry.clone(),
        );
        let decider = Decider::new(Engine::new(EngineOptions::default()), 10, telemetry);
        let snapshot = store.current();
        let question = Question::from(Query {
            principal: r#"User::"a""#.parse().unwrap(),
            action: r#"Action::"read""#.parse().unwrap(),
            resource: r#"Doc::"d""#.parse().unwrap(),
            context: crate::engine::ContextInput::Json(String::new()),
        });
        let submit = |bytes: usize| {
            let mut call = decider.start(Api::IsAuthorized, None, None);
            call.weighs(bytes);
            let mut pending = shadow
                .draw(&call, &EntitiesInput::None, RequestEntities::Add)
                .expect("a sample rate of 1 draws every call");
            pending.ask(None, &question);
            let decision = decider
                .engine()
                .decide(&snapshot, EntitiesInput::None, question.query.clone())
                .unwrap();
            pending.answered(Ok(&decision), &snapshot);
            shadow.submit(pending);
        };
        // Two large jobs fit the byte budget; a third does not, though the queue has room.
        submit(MAX_QUEUED_BYTES / 2 - 2 * MIN_JOB_BYTES);
        submit(MAX_QUEUED_BYTES / 2 - 2 * MIN_JOB_BYTES);
        submit(MAX_QUEUED_BYTES / 2);
        assert_eq!(dropped(&metrics), 1.0);
        // One small job fills the queue of three; the next is past it.
        submit(0);
        submit(0);
        assert_eq!(dropped(&metrics), 2.0);
        // A job taken off frees its bytes (the worker does this as it starts each job).
        let job = jobs.try_recv().unwrap();
        shadow.queued_bytes.fetch_sub(job.bytes, Ordering::Relaxed);
        shadow.queued_jobs.fetch_sub(1, Ordering::Relaxed);
        submit(MAX_QUEUED_BYTES / 2 - 2 * MIN_JOB_BYTES);
        assert_eq!(dropped(&metrics), 2.0);
        // A job is charged what it copies: an AuthZEN evaluations call's defaults are
        // copied into every item, so each item's context counts, not the body alone.
        while let Ok(job) = jobs.try_recv() {
            shadow.queued_bytes.fetch_sub(job.bytes, Ordering::Relaxed);
            shadow.queued_jobs.fetch_sub(1, Ordering::Relaxed);
        }
        let before = shadow.queued_bytes.load(Ordering::Relaxed);
        assert_eq!(before, 0);
        let call = decider.start(Api::Authzen, None, None);
        let mut pending = shadow
            .draw(&call, &EntitiesInput::None, RequestEntities::Add)
            .unwrap();
        let mut wide = question.clone();
        wide.query.context =
            crate::engine::ContextInput::Json(format!("{{\"k\":\"{}\"}}", "x".repeat(5000)));
        for i in 0..3 {
            pending.ask(Some(i), &wide);
            pending.answered(
                Ok(&decider
                    .engine()
                    .decide(&snapshot, EntitiesInput::None, question.query.clone())
                    .unwrap()),
                &snapshot,
            );
        }
        shadow.submit(pending);
        assert_eq!(
            shadow.queued_bytes.load(Ordering::Relaxed),
            before + MIN_JOB_BYTES + 3 * 5008,
            "the body's size is unknown here (0): the minimum, plus each item's context"
        );
        // A question never answered live is not queued at all.
        let call = decider.start(Api::IsAuthorized, None, None);
        let mut pending = shadow
            .draw(&call, &EntitiesInput::None, RequestEntities::Add)
            .unwrap();
        pending.ask(None, &question);
        let before = shadow.queued_bytes.load(Ordering::Relaxed);
        shadow.submit(pending);
        assert_eq!(shadow.queued_bytes.load(Ordering::Relaxed), before);
    }
}
