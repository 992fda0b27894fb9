//! The [`Watcher`]: follows the policy directory and rebuilds the served snapshot when it
//! changes, on a thread of its own so that no rebuild ever runs on the request path.
//!
//! Changes arrive as `notify` events (inotify on Linux) for the directory, recursively,
//! and for the directory's own entry in its parent (a `--policies` path that is a symlink
//! swapped by git-sync). A burst of events becomes one rebuild: the rebuild starts once
//! the directory has been quiet for [`WatchOptions::quiet`], or at the latest
//! [`WatchOptions::max_wait`] after the burst's first event, so a directory rewritten
//! without pause is still followed.
//!
//! A rebuild is only served if the directory held still while it was read. Reading (the
//! I/O half of a load, [`read_dir`]) is kept apart from parsing (the CPU half, [`build`])
//! so that this window is short; then:
//! - no file the loader reads may be open for writing (written to and not yet closed)
//!   when reading starts, so a file written in two chunks is never read half-way; an
//!   open with no write yet counts for 100 ms ([`OPEN_HOLD`]), and for as long as a
//!   write would if the file is empty and was emptied around the open (a truncating open
//!   whose truncation is not reported yet: an empty file is valid Cedar);
//! - no change may have happened while the files were read, which the watcher knows for
//!   certain by *fencing*: it creates a uniquely named file in a private, watched folder
//!   of its own (in the temp directory), and since the kernel queues the events of one
//!   watcher in order, once that creation's event comes back every change made before it
//!   has been seen;
//! - reading the files a second time must give the same content hash;
//! - the newest file must have been modified at least 25 ms ([`SETTLED_AFTER`]) before
//!   the reading began: a truncating open that blocks can show a file empty before any
//!   event says so;
//! - opens by others seen while reading hold their files as possible writers whatever
//!   the attempt comes to, unless written and closed meanwhile: a read thrown away for
//!   another reason must not forget a truncation whose event is still to come.
//!
//! A read that fails those checks is thrown away and tried again after the next quiet
//! period; changes made while parsing simply start the next rebuild. A rebuild that fails
//! to load keeps the last good snapshot serving and is recorded in the store (for
//! `GetPolicySetInfo`), the log (file, line and reason) and told to the [`OnRebuild`] hook
//! (the server counts it in its metrics). Events are not trusted alone: every
//! [`WatchOptions::rescan`] the directory is read and hashed again, and a version that
//! differs from the serving one starts a rebuild (logged as a change no event reported).
//! Nothing makes
//! the watcher give up: errors from `notify` are logged and answered with a rebuild, and a
//! directory that disappears is watched again when it comes back.

mod files;
mod rebuild;
mod run;
mod writers;

pub(crate) use rebuild::log_failure;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, mpsc},
    thread,
    time::Duration,
};

use self::{
    files::{Files, watched_path},
    run::Run,
};
use super::{LoadError, PolicyStore, Snapshot};

/// Timing of the watcher; the defaults suit people editing files and Kubernetes alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchOptions {
    /// Follow the directory with file-system events; `false` rebuilds only on
    /// [`Watcher::reload_now`] (SIGHUP), e.g. on a network file system without them.
    pub watch_files: bool,
    /// How long the directory must be quiet before a rebuild starts (at least 30 ms all
    /// the same: a file changed more recently would not be read).
    pub quiet: Duration,
    /// The longest a burst of changes can put a rebuild off.
    pub max_wait: Duration,
    /// The pause between reading the directory and reading it again to check nothing
    /// changed (a write's data can be visible a little before its event), and without a
    /// fence (no writable temp directory for it) how long events may take to arrive.
    pub settle: Duration,
    /// A file written to and not closed holds rebuilds back; after this long without a
    /// further write it is taken as abandoned and no longer does.
    pub write_hold: Duration,
    /// The longest files opened by others may hold a change back in all: after it, a
    /// mere open (a reader) no longer holds the rebuild, and while the directory still
    /// does not hold still, the rebuild is recorded as failed (counted, alerted on, in
    /// `last_reload_error`) once per period, the last good set serving meanwhile.
    pub max_hold: Duration,
    /// How often the directory is read again (content hashes, nothing parsed unless it
    /// changed) whatever events say, so that a change whose events were lost (an
    /// inotify queue overflow, a volume that sends none) is still served within one
    /// interval; `None`: never.
    pub rescan: Option<Duration>,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            rescan: Some(Duration::from_secs(30)),
            watch_files: true,
            quiet: Duration::from_millis(20),
            max_wait: Duration::from_millis(250),
            settle: Duration::from_millis(10),
            write_hold: Duration::from_secs(10),
            max_hold: Duration::from_secs(10),
        }
    }
}

/// The watcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// `notify` refused to watch the directory (e.g. the inotify watch limit is reached).
    #[error("cannot watch {path}: {source}")]
    Watch {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: notify::Error,
    },
    /// The watcher thread could not be started.
    #[error("cannot start the policy watcher thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// What one rebuild came to, told to whoever keeps count of rebuilds (the server's
/// metrics) before anyone can see its result, so that whoever sees a new snapshot or
/// error also sees it counted.
#[derive(Debug, Clone, Copy)]
pub enum Rebuilt<'a> {
    /// The directory holds what is serving already; nothing is swapped.
    Unchanged,
    /// This snapshot is about to serve.
    Swapping(&'a Snapshot),
    /// The directory did not load; the last good snapshot keeps serving.
    Failed(&'a LoadError),
}

/// Told of every rebuild, with how long it took from the start of its read (for a change
/// that never held still: how long it waited), on the watcher's thread; it must not block.
pub type OnRebuild = Box<dyn Fn(Rebuilt<'_>, Duration) + Send>;

/// What wakes the watcher thread.
enum Signal {
    /// A file-system event, or an error `notify` met.
    Fs(notify::Result<notify::Event>),
    /// Rebuild now, without waiting for quiet or for files open for writing (SIGHUP).
    ReloadNow,
    /// The watcher is being dropped.
    Stop,
}

/// Keeps the store's snapshot following the policy directory until dropped.
#[derive(Debug)]
pub struct Watcher {
    signals: mpsc::Sender<Signal>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Watcher {
    /// Starts watching `store`'s directory, telling `on_rebuild` of every rebuild.
    pub fn start(
        store: Arc<PolicyStore>,
        options: WatchOptions,
        on_rebuild: OnRebuild,
    ) -> Result<Self, WatchError> {
        let (signals, receiver) = mpsc::channel();
        let dir = watched_path(store.dir());
        let files = if options.watch_files {
            let events = signals.clone();
            let watcher = notify::recommended_watcher(move |event| {
                // The receiver is gone only once the watcher thread has ended.
                let _ = events.send(Signal::Fs(event));
            })
            .map_err(|source| WatchError::Watch {
                path: dir.clone(),
                source,
            })?;
            let mut files = Files {
                watcher,
                dir: dir.clone(),
                watched: None,
                parent_watched: false,
                fence: None,
                fence_logged: false,
            };
            files.rewatch().map_err(|source| WatchError::Watch {
                path: dir.clone(),
                source,
            })?;
            Some(files)
        } else {
            None
        };
        let run = Run {
            store,
            on_rebuild,
            options,
            dir,
            files,
            receiver,
            writing: HashMap::new(),
            opens: 0,
            reading: false,
            opened_while_reading: Vec::new(),
            reload_requested: false,
        };
        let thread = thread::Builder::new()
            .name("policy-watch".to_owned())
            .stack_size(super::STACK_BYTES)
            .spawn(move || run.run())?;
        Ok(Self {
            signals,
            thread: Some(thread),
        })
    }

    /// Rebuilds as soon as possible, even while a file is open for writing (SIGHUP).
    pub fn reload_now(&self) {
        let _ = self.signals.send(Signal::ReloadNow);
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.signals.send(Signal::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
