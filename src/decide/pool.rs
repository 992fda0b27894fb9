//! The decision pool: a fixed set of threads that decisions run on, off the async
//! runtime's workers.
//!
//! A decision is CPU work that no `await` can interrupt; run on a worker it would hold
//! that worker, and every call queued behind it, until done, and a call's deadline could
//! not cut it short. Here a call waits for one of the pool's permits (asynchronously, in
//! arrival order, its deadline running), hands its work to a pool thread, and awaits the
//! answer; when its deadline passes first, the caller is answered at once and the work
//! finishes on its thread, still holding its permit, so the pool never takes more work
//! than it has threads. The limits on what a request may hold keep any one piece of work
//! short (`benches/hostile.rs`).
//!
//! Work is light or heavy (a call that sends entities, a large batch: the costliest a
//! request can ask for). Heavy work may hold all threads but one, so light work (most
//! calls: a question about stored entities) always has a thread and never queues behind
//! a caller sending expensive requests. A panic in the work is caught and comes back as
//! an error, never as an answer. Threads get [`crate::policy::STACK_BYTES`] of stack, as
//! Cedar's recursion needs.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{Arc, Mutex, mpsc},
    thread,
};

use tokio::sync::{Semaphore, oneshot};

/// One piece of work for a pool thread.
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

/// A fixed set of threads with a permit each.
#[derive(Debug)]
pub struct Pool {
    jobs: mpsc::Sender<Job>,
    permits: Arc<Semaphore>,
    /// What heavy work must hold as well: one fewer than the threads (at least one).
    heavy: Arc<Semaphore>,
    threads: usize,
}

impl Pool {
    /// A pool of `threads` threads (at least one), named `decide-N`.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..threads {
            let queue = queue.clone();
            thread::Builder::new()
                .name(format!("decide-{n}"))
                .stack_size(crate::policy::STACK_BYTES)
                .spawn(move || {
                    loop {
                        // A std mutex: held only to take the next job, never across one.
                        let job = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            // Every sender is gone: the pool was dropped.
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(Self {
            jobs,
            permits: Arc::new(Semaphore::new(threads)),
            heavy: Arc::new(Semaphore::new((threads - 1).max(1))),
            threads,
        })
    }

    /// How many threads it has (and so how much work it takes at once).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `work` on a pool thread once a permit is free (for `heavy` work, once one of
    /// the heavy permits is free too), and its result; a panic in it is
    /// [`PoolError::Panicked`]. Dropping the future before it is ready gives up on the
    /// result (a passed deadline), not on the work once it has started.
    pub async fn run<T, F>(&self, heavy: bool, work: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let heavy = match heavy {
            true => Some(
                self.heavy
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| PoolError::Stopped)?,
            ),
            false => None,
        };
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PoolError::Stopped)?;
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move || {
            let result = catch_unwind(AssertUnwindSafe(work)).map_err(|_| PoolError::Panicked);
            // The permits go back only now that the thread is free again.
            drop((permit, heavy));
            let _ = answer.send(result);
        });
        self.jobs.send(job).map_err(|_| PoolError::Stopped)?;
        answered.await.map_err(|_| PoolError::Stopped)?
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

    /// At most `threads` pieces of work at once, at most `threads - 1` of them heavy.
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

    #[tokio::test]
    async fn light_work_is_not_queued_behind_heavy_work() {
        let pool = Arc::new(Pool::new(2).unwrap());
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = Arc::new(Mutex::new(held));
        // Heavy work holding its one heavy permit, more heavy work waiting behind it.
        let heavy: Vec<_> = (0..3)
            .map(|_| {
                let (pool, held) = (pool.clone(), held.clone());
                tokio::spawn(async move {
                    pool.run(true, move || {
                        let _ = held.lock().unwrap().recv();
                    })
                    .await
                })
            })
            .collect();
        while pool.heavy.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
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
    async fn a_caller_that_gives_up_does_not_free_the_thread_early() {
        let pool = Arc::new(Pool::new(1).unwrap());
        let (release, held) = std::sync::mpsc::channel::<()>();
        let slow = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.run(false, move || {
                    let _ = held.recv();
                })
                .await
            })
        };
        // Wait until the slow work holds the one permit, then give up on it.
        while pool.permits.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        slow.abort();
        let _ = slow.await;
        let next = tokio::time::timeout(Duration::from_millis(50), pool.run(false, || 1)).await;
        assert!(
            next.is_err(),
            "the thread is still busy: no second piece of work runs"
        );
        release.send(()).unwrap();
        assert_eq!(pool.run(false, || 2).await, Ok(2));
    }
}
