//! The decision pool: a fixed set of threads that decisions run on, off the async
//! runtime's workers.
//!
//! A decision is CPU work that no `await` can interrupt; run on a worker it would hold
//! that worker, and every call queued behind it, until done, and a call's deadline could
//! not cut it short. Here a call queues its work for a pool thread (in arrival order, its
//! deadline running) and awaits the answer; when its deadline passes first, the caller is answered at once: work not
//! started by then is skipped, and work under way finishes on its thread, so the pool
//! never does more at once than it has threads, and its queue never holds more than the
//! calls in flight (`max_concurrent_calls`). The limits on what a request may hold keep
//! any one piece of work short (`benches/hostile.rs`).
//!
//! Work is light or heavy (a call that sends entities, a large batch or a large message:
//! the costliest a request can ask for). With two threads or more, one takes light work
//! only, so light work (most calls: a question about stored entities) always has a
//! thread and never queues behind a caller sending expensive requests. A panic in the work is caught and comes back as
//! an error, never as an answer. Threads get [`crate::policy::STACK_BYTES`] of stack, as
//! Cedar's recursion needs.

use std::{
    collections::VecDeque,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{Arc, Condvar, Mutex},
    thread,
};

use tokio::sync::oneshot;

/// One piece of work for a pool thread, told whether its caller still waits.
type Job = Box<dyn FnOnce() + Send>;

/// Why work sent to the pool came back without its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The work panicked (the panic is logged where it happened).
    #[error("the decision failed unexpectedly")]
    Panicked,
    /// The pool is gone (the server is stopping).
    #[error("the server is stopping")]
    Stopped,
}

/// The work waiting for a thread, in two lanes.
#[derive(Default)]
struct Queues {
    /// Light work, with its arrival number.
    light: VecDeque<(u64, Job)>,
    /// Heavy work, with its arrival number.
    heavy: VecDeque<(u64, Job)>,
    /// The next arrival number.
    next: u64,
    /// Whether the light-only thread waits for work and has not been woken for any.
    light_only_waiting: bool,
    /// The pool is dropped: threads finish what is queued and end.
    closed: bool,
}

impl Queues {
    /// The oldest piece of work a thread may take: any, or light only.
    fn take(&mut self, light_only: bool) -> Option<Job> {
        let light = self.light.front().map(|(n, _)| *n);
        let heavy = self.heavy.front().map(|(n, _)| *n).filter(|_| !light_only);
        match (light, heavy) {
            (Some(l), Some(h)) if h < l => self.heavy.pop_front(),
            (Some(_), _) => self.light.pop_front(),
            (None, Some(_)) => self.heavy.pop_front(),
            (None, None) => None,
        }
        .map(|(_, job)| job)
    }
}

/// What the threads and the callers share.
#[derive(Default)]
struct Shared {
    queues: Mutex<Queues>,
    /// Where threads that take any work wait.
    any: Condvar,
    /// Where the light-only thread waits.
    light: Condvar,
}

/// A fixed set of threads, one of them (when there are two or more) for light work only.
pub struct Pool {
    shared: Arc<Shared>,
    threads: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool of `threads` threads (at least one), named `decide-N`.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared::default());
        for n in 0..threads {
            let shared = shared.clone();
            // With two threads or more, the first takes light work only.
            let light_only = threads > 1 && n == 0;
            thread::Builder::new()
                .name(format!("decide-{n}"))
                .stack_size(crate::policy::STACK_BYTES)
                .spawn(move || work_on(&shared, light_only))?;
        }
        Ok(Self { shared, threads })
    }

    /// How many threads it has (and so how much work it does at once).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `work` on a pool thread (for `heavy` work, one of those that take it), in
    /// arrival order, and its result; a panic in it is [`PoolError::Panicked`]. Dropping
    /// the future before it is ready gives up on the result (a passed deadline): work not
    /// started yet is then skipped, work under way finishes on its thread.
    pub async fn run<T, F>(&self, heavy: bool, work: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move || {
            if answer.is_closed() {
                // Its caller has stopped waiting: the thread goes to work that counts.
                return;
            }
            let result = catch_unwind(AssertUnwindSafe(work)).map_err(|_| PoolError::Panicked);
            let _ = answer.send(result);
        });
        {
            let mut queues = self.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
            if queues.closed {
                return Err(PoolError::Stopped);
            }
            let n = queues.next;
            queues.next += 1;
            if heavy {
                queues.heavy.push_back((n, job));
                self.shared.any.notify_one();
            } else {
                queues.light.push_back((n, job));
                // The light-only thread first, if it waits (and, woken, no longer counts
                // as waiting: the next piece of work wakes another thread).
                if std::mem::take(&mut queues.light_only_waiting) {
                    self.shared.light.notify_one();
                } else {
                    self.shared.any.notify_one();
                }
            }
        }
        answered.await.map_err(|_| PoolError::Stopped)?
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let mut queues = self.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.closed = true;
        self.shared.any.notify_all();
        self.shared.light.notify_all();
    }
}

/// A pool thread: takes the oldest work it may do, runs it, and again, until the pool is
/// dropped and nothing is left.
fn work_on(shared: &Shared, light_only: bool) {
    let wait_on = if light_only {
        &shared.light
    } else {
        &shared.any
    };
    loop {
        let job = {
            // A std mutex: held to take the next piece of work, never while running one.
            let mut queues = shared.queues.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(job) = queues.take(light_only) {
                    break job;
                }
                if queues.closed {
                    return;
                }
                queues.light_only_waiting |= light_only;
                queues = wait_on.wait(queues).unwrap_or_else(|p| p.into_inner());
            }
        };
        job();
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use super::*;

    #[tokio::test]
    async fn work_runs_off_the_caller_and_a_panic_is_an_error() {
        let pool = Pool::new(2).unwrap();
        let caller = thread::current().id();
        let ran_on = pool.run(false, || thread::current().id()).await.unwrap();
        assert_ne!(ran_on, caller);
        assert_eq!(pool.run(true, || 6 * 7).await, Ok(42));
        let panicked = pool
            .run(false, || -> u32 { panic!("a bug in a decision") })
            .await;
        assert_eq!(panicked, Err(PoolError::Panicked));
        assert_eq!(
            pool.run(false, || 1).await,
            Ok(1),
            "the pool survives a panic"
        );
    }

    /// How many pieces of work ran at once at most, of 8 sent together.
    async fn most_at_once(threads: usize, heavy: bool) -> usize {
        let pool = Arc::new(Pool::new(threads).unwrap());
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    pool.run(heavy, move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        thread::sleep(Duration::from_millis(20));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                })
            })
            .collect();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        most.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn no_more_work_runs_at_once_than_there_are_threads() {
        assert_eq!(most_at_once(3, false).await, 3);
        assert_eq!(most_at_once(3, true).await, 2);
        assert_eq!(most_at_once(1, true).await, 1);
    }

    /// Work that tells when it has started and runs until released.
    fn held(
        started: &std::sync::mpsc::Sender<()>,
        release: &Arc<Mutex<std::sync::mpsc::Receiver<()>>>,
    ) -> impl FnOnce() + Send + 'static {
        let (started, release) = (started.clone(), release.clone());
        move || {
            let _ = started.send(());
            let _ = release.lock().unwrap().recv();
        }
    }

    /// Waits, without blocking the runtime, until `started` says a piece of work started.
    async fn until_started(started: &std::sync::mpsc::Receiver<()>) {
        while started.try_recv().is_err() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn light_work_is_not_queued_behind_heavy_work() {
        let pool = Arc::new(Pool::new(2).unwrap());
        let (started, has_started) = std::sync::mpsc::channel::<()>();
        let (release, held_back) = std::sync::mpsc::channel::<()>();
        let held_back = Arc::new(Mutex::new(held_back));
        // Heavy work on the one thread that takes it, more heavy work queued behind it.
        let heavy: Vec<_> = (0..3)
            .map(|_| {
                let (pool, work) = (pool.clone(), held(&started, &held_back));
                tokio::spawn(async move { pool.run(true, work).await })
            })
            .collect();
        until_started(&has_started).await;
        let light = tokio::time::timeout(Duration::from_secs(10), pool.run(false, || 7)).await;
        assert_eq!(
            light.ok(),
            Some(Ok(7)),
            "light work ran beside the heavy work"
        );
        for _ in 0..3 {
            release.send(()).unwrap();
        }
        for call in heavy {
            call.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn work_whose_caller_gave_up_is_skipped_and_work_under_way_finishes() {
        let pool = Arc::new(Pool::new(1).unwrap());
        let (started, has_started) = std::sync::mpsc::channel::<()>();
        let (release, held_back) = std::sync::mpsc::channel::<()>();
        let held_back = Arc::new(Mutex::new(held_back));
        let slow = {
            let (pool, work) = (pool.clone(), held(&started, &held_back));
            tokio::spawn(async move { pool.run(false, work).await })
        };
        until_started(&has_started).await;
        // Queued behind it, then given up on before it starts.
        let ran = Arc::new(AtomicUsize::new(0));
        let queued = {
            let (pool, ran) = (pool.clone(), ran.clone());
            tokio::spawn(async move {
                pool.run(false, move || ran.fetch_add(1, Ordering::SeqCst))
                    .await
            })
        };
        tokio::task::yield_now().await;
        // The one started is given up on too: it goes on, holding its thread.
        slow.abort();
        let _ = slow.await;
        queued.abort();
        let _ = queued.await;
        let next = tokio::time::timeout(Duration::from_millis(50), pool.run(false, || 1)).await;
        assert!(
            next.is_err(),
            "the thread is still busy: no second piece of work runs"
        );
        release.send(()).unwrap();
        assert_eq!(pool.run(false, || 2).await, Ok(2));
        assert_eq!(
            ran.load(Ordering::SeqCst),
            0,
            "the abandoned work was skipped"
        );
    }
}
