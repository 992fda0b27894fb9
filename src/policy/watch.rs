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
//! - the newest file must be at least 25 ms old ([`SETTLED_AFTER`]): a truncating open
//!   that blocks can show a file empty before any event says so.
//!
//! A read that fails those checks is thrown away and tried again after the next quiet
//! period; changes made while parsing simply start the next rebuild. A rebuild that fails
//! to load keeps the last good snapshot serving and is recorded in the store (for
//! `GetPolicySetInfo`), the log (file, line and reason) and told to the [`OnRebuild`] hook
//! (the server counts it in its metrics). Nothing makes
//! the watcher give up: errors from `notify` are logged and answered with a rebuild, and a
//! directory that disappears is watched again when it comes back.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    thread,
    time::{Duration, Instant, SystemTime},
};

use notify::{
    EventKind, RecursiveMode, Watcher as _,
    event::{AccessKind, AccessMode, ModifyKind, RenameMode},
};

use super::{LoadError, Loaded, PolicyStore, ReloadOutcome, Snapshot, build, read_dir};

/// Timing of the watcher; the defaults suit people editing files and Kubernetes alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchOptions {
    /// Follow the directory with file-system events; `false` rebuilds only on
    /// [`Watcher::reload_now`] (SIGHUP), e.g. on a network file system without them.
    pub watch_files: bool,
    /// How long the directory must be quiet before a rebuild starts.
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
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            watch_files: true,
            quiet: Duration::from_millis(20),
            max_wait: Duration::from_millis(250),
            settle: Duration::from_millis(10),
            write_hold: Duration::from_secs(10),
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

/// Told of every rebuild, on the watcher's thread; it must not block.
pub type OnRebuild = Box<dyn Fn(Rebuilt<'_>) + Send>;

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

/// The `notify` side: what is watched, and re-watching when the directory is replaced.
struct Files {
    watcher: notify::RecommendedWatcher,
    /// The policy directory, absolute but with symlinks kept (so a swap is seen).
    dir: PathBuf,
    /// Identity (device, inode) of the directory the recursive watch is on; `None` when
    /// it must be (re)made at the next rebuild.
    watched: Option<(u64, u64)>,
    /// Whether the directory's parent is watched (for swaps of the directory's entry).
    parent_watched: bool,
    /// `None` without a fence; the watcher then waits [`WatchOptions::settle`] instead,
    /// and tries to make one again at the next rebuild.
    fence: Option<Fence>,
    /// Whether a missing fence has been logged (once is enough).
    fence_logged: bool,
}

/// A private folder, watched with the policy directory; creating a file in it marks a
/// point in the stream of events.
struct Fence {
    /// Removed with everything in it when the fence is dropped.
    folder: tempfile::TempDir,
    /// Markers made so far; marker `n` is the file `n` in the folder. Unique names make
    /// the marker unmistakable even when a second watch (on the temp directory, say)
    /// reports the same creation again.
    issued: u64,
}

impl Fence {
    /// Makes a folder with a fresh random name in the temp directory and watches it.
    fn create(watcher: &mut notify::RecommendedWatcher) -> notify::Result<Self> {
        let temp = std::path::absolute(std::env::temp_dir()).map_err(notify::Error::io)?;
        let folder = tempfile::Builder::new()
            .prefix("cedar-pdp-fence-")
            .tempdir_in(temp)
            .map_err(notify::Error::io)?;
        watcher.watch(folder.path(), RecursiveMode::NonRecursive)?;
        Ok(Self { folder, issued: 0 })
    }

    fn path(&self) -> &Path {
        self.folder.path()
    }
}

impl Files {
    /// Puts the recursive watch on whatever directory the path names now, unless that is
    /// the one already watched; also (re)makes the parent watch and the fence if missing.
    /// Only failing to watch the directory itself is an error.
    fn rewatch(&mut self) -> notify::Result<()> {
        if !self.parent_watched
            && let Some(parent) = self.dir.parent()
        {
            match self.watcher.watch(parent, RecursiveMode::NonRecursive) {
                Ok(()) => self.parent_watched = true,
                Err(err) => tracing::debug!(
                    parent = %parent.display(),
                    error = %err,
                    "cannot watch the policy directory's parent; a swap of the directory itself is seen at the next change inside it"
                ),
            }
        }
        if self.fence.is_none() {
            match Fence::create(&mut self.watcher) {
                Ok(fence) => self.fence = Some(fence),
                Err(err) if !self.fence_logged => {
                    self.fence_logged = true;
                    tracing::info!(
                        error = %err,
                        "no private folder to fence policy reads with; a reload waits a settle period instead"
                    );
                }
                Err(_) => {}
            }
        }
        let now = identity(&self.dir);
        if now.is_some() && now == self.watched {
            return Ok(());
        }
        // notify keys watches by path: drop what is left of the old one, whatever it was.
        let _ = self.watcher.unwatch(&self.dir);
        self.watched = None;
        if now.is_some() {
            self.watcher.watch(&self.dir, RecursiveMode::Recursive)?;
            self.watched = now;
        }
        Ok(())
    }

    /// Makes the next rebuild watch everything again (events were lost, or the
    /// directory's entry changed).
    fn forget(&mut self) {
        self.watched = None;
        self.parent_watched = false;
    }
}

/// The path to watch for `dir`: absolute, keeping a final symlink (its swap is the
/// change), but resolved when it ends in `..` (whose "parent" would be wrong).
fn watched_path(dir: &Path) -> PathBuf {
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    if absolute.file_name().is_none() {
        std::fs::canonicalize(&absolute).unwrap_or(absolute)
    } else {
        absolute
    }
}

#[cfg(unix)]
fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|_| (0, 0))
}

/// The watcher thread's state.
struct Run {
    store: Arc<PolicyStore>,
    on_rebuild: OnRebuild,
    options: WatchOptions,
    dir: PathBuf,
    files: Option<Files>,
    receiver: mpsc::Receiver<Signal>,
    /// Files the loader reads that someone else has opened or written to and not closed
    /// since: possible writers.
    writing: HashMap<PathBuf, Writer>,
    /// Opens of files the loader reads, by anyone (this watcher's reads included).
    opens: usize,
    /// Between the fences around this watcher's reads: opens then may be its own.
    reading: bool,
    /// The files opened between those fences, by this watcher or someone else: when the
    /// count says someone else did, each is held as a possible writer.
    opened_while_reading: Vec<(PathBuf, Writer)>,
    /// A SIGHUP arrived and is not answered yet (it may have come in while a rebuild was
    /// reading); the loop answers it with an immediate, forced rebuild.
    reload_requested: bool,
}

/// A file that may be being written.
#[derive(Debug, Clone, Copy)]
struct Writer {
    /// When it was opened, or last written to.
    since: Instant,
    /// The wall-clock time of `since`, to compare with the file's modification time.
    at: SystemTime,
    /// Whether it has been written to (else it was only opened, perhaps only to be read).
    wrote: bool,
}

impl Writer {
    fn opened(since: Instant) -> Self {
        Self {
            since,
            at: SystemTime::now(),
            wrote: false,
        }
    }

    fn wrote(since: Instant) -> Self {
        Self {
            since,
            at: SystemTime::now(),
            wrote: true,
        }
    }

    /// Whether this possible writer of `path` still holds rebuilds back at `now`.
    fn holds(&self, path: &Path, now: Instant, write_hold: Duration) -> Hold {
        let age = now.saturating_duration_since(self.since);
        if !self.wrote && age < OPEN_HOLD {
            return Hold::Yes;
        }
        let writing = self.wrote || emptied_by_open(path, self);
        match (writing, age < write_hold) {
            (true, true) => Hold::Yes,
            (true, false) => Hold::Abandoned,
            // Most likely a reader (its close sends no event); kept until the write hold
            // in case its truncation shows only now.
            (false, true) => Hold::No,
            (false, false) => Hold::Forget,
        }
    }
}

/// Whether a possible writer holds rebuilds back.
#[derive(Debug, PartialEq, Eq)]
enum Hold {
    Yes,
    /// Not now; watched a while longer.
    No,
    /// No longer, and no longer watched.
    Forget,
    /// It did, but has been open without a write for longer than the write hold.
    Abandoned,
}

/// How long an open by someone else holds rebuilds back when no write follows: a
/// truncating open shows the file empty a moment before its event, and a mere reader
/// never sends another event, so the hold has to end by itself. An open that emptied
/// the file holds for longer: see [`emptied_by_open`].
const OPEN_HOLD: Duration = Duration::from_millis(100);

/// Whether an unwritten open of `path` (by `writer`) should still hold rebuilds back after
/// [`OPEN_HOLD`]: the file is empty and was emptied around the open or since. That is a
/// truncating open (`O_TRUNC`, as editors and `>` use) whose writer has not written yet:
/// since Linux 6.5 the open's event comes before the truncation, and the truncation's
/// own event only after the kernel's truncate returns, which a loaded machine can delay
/// well past `OPEN_HOLD`; an empty file is valid Cedar, so it would be served. A mere
/// reader of an empty file leaves its modification time alone, so it does not hold.
fn emptied_by_open(path: &Path, writer: &Writer) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let emptied_at = meta.modified().ok();
    meta.len() == 0 && emptied_at.is_some_and(|m| m + TRUNCATE_SLACK >= writer.at)
}

/// How much earlier than the open's event reached the watcher the truncation's
/// modification time may be: the event arrives some time after the open (the watcher's
/// thread may wait for a CPU), and file times come from a clock that lags by up to a
/// scheduler tick. It is also the window in which a mere reader right after someone
/// emptied the file is mistaken for a writer (and holds rebuilds until the write hold
/// runs out or the file is written and closed): rare, slow, and never wrong.
const TRUNCATE_SLACK: Duration = Duration::from_millis(250);

/// What one attempt at a rebuild came to.
enum Attempt {
    /// Served, found unchanged, or recorded as failed.
    Done,
    /// A file is open for writing: look again shortly.
    Held,
    /// The directory changed while it was read: try again after the next quiet period.
    Changed,
    /// The watcher is stopping.
    Stop,
}

/// What waiting for a signal came to.
enum Wait {
    /// A change to the directory.
    Change,
    /// Rebuild now (SIGHUP).
    ReloadNow,
    /// Nothing relevant arrived before the deadline.
    Timeout,
    /// The watcher is stopping.
    Stop,
}

/// A burst of changes waiting for its rebuild.
struct Pending {
    /// The burst's first change.
    since: Instant,
    /// Its latest change.
    last_change: Instant,
    /// Rebuild without waiting for quiet (SIGHUP).
    immediate: bool,
    /// Rebuild even while files are open for writing (SIGHUP).
    forced: bool,
    /// When files open for writing began holding the rebuild back, and whether that has
    /// been logged.
    held: Option<(Instant, bool)>,
    /// While held: when to look again.
    next_try: Option<Instant>,
}

impl Pending {
    fn new(now: Instant) -> Self {
        Self {
            since: now,
            last_change: now,
            immediate: false,
            forced: false,
            held: None,
            next_try: None,
        }
    }
}

impl Run {
    fn run(mut self) {
        let mut pending = match self.changed_before_watch() {
            None => return,
            Some(true) => Some(Pending::new(Instant::now())),
            Some(false) => None,
        };
        loop {
            // A SIGHUP, whether it arrived here or while a rebuild was reading: rebuild now.
            if std::mem::take(&mut self.reload_requested) {
                let burst = pending.get_or_insert_with(|| Pending::new(Instant::now()));
                burst.immediate = true;
                burst.forced = true;
                burst.next_try = None;
            }
            let deadline = pending.as_ref().map(|p| self.due(p));
            match self.wait(deadline) {
                Wait::Stop => return,
                Wait::Change => {
                    let now = Instant::now();
                    pending.get_or_insert_with(|| Pending::new(now)).last_change = now;
                }
                Wait::ReloadNow => self.reload_requested = true,
                Wait::Timeout => {
                    let Some(burst) = pending.as_mut() else {
                        continue;
                    };
                    match self.attempt(burst.forced) {
                        Attempt::Stop => return,
                        Attempt::Done => pending = None,
                        Attempt::Held => self.hold(burst),
                        Attempt::Changed => {
                            // Start over as a new burst, keeping only "ignore open files",
                            // a little later at random: two servers reading one directory
                            // must not keep meeting.
                            let forced = burst.forced;
                            *burst = Pending::new(Instant::now());
                            burst.forced = forced;
                            burst.last_change += jitter(self.options.quiet);
                        }
                    }
                }
            }
        }
    }

    /// Whether the directory differs from the snapshot loaded before the watch began
    /// (changes made in between left no events): compared by version, nothing parsed and
    /// nothing counted. `None` if the watcher is stopping.
    fn changed_before_watch(&mut self) -> Option<bool> {
        self.reading = true;
        let read = read_dir(self.store.dir());
        let fenced = self.fence();
        self.reading = false;
        // A change seen meanwhile counts as well: the read may have missed it.
        let changed_meanwhile = fenced?;
        let serving = self.store.current();
        Some(
            changed_meanwhile
                || read.map_or(true, |read| {
                    !read.complete() || read.version() != serving.version()
                }),
        )
    }

    /// When the burst's rebuild is due: after quiet, but no later than `max_wait` after
    /// its first change.
    fn due(&self, burst: &Pending) -> Instant {
        if let Some(next_try) = burst.next_try {
            return next_try;
        }
        if burst.immediate {
            return burst.since;
        }
        (burst.last_change + self.options.quiet).min(burst.since + self.options.max_wait)
    }

    /// Waits for the next relevant signal until `deadline` (forever if `None`).
    fn wait(&mut self, deadline: Option<Instant>) -> Wait {
        loop {
            let signal = match deadline {
                None => self
                    .receiver
                    .recv()
                    .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                Some(deadline) => self
                    .receiver
                    .recv_timeout(deadline.saturating_duration_since(Instant::now())),
            };
            match signal {
                Ok(Signal::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Wait::Stop;
                }
                Ok(Signal::ReloadNow) => return Wait::ReloadNow,
                Ok(Signal::Fs(event)) => {
                    if self.note(event) {
                        return Wait::Change;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => return Wait::Timeout,
            }
        }
    }

    /// Whether a file the loader reads may be open for writing. Writes left open longer
    /// than [`WatchOptions::write_hold`] are taken as abandoned and stop counting; opens
    /// with no write stop counting after [`OPEN_HOLD`].
    fn writers_open(&mut self) -> bool {
        let now = Instant::now();
        let hold = self.options.write_hold;
        let mut holding = false;
        self.writing
            .retain(|path, writer| match writer.holds(path, now, hold) {
                Hold::Yes => {
                    holding = true;
                    true
                }
                Hold::No => true,
                Hold::Forget => false,
                Hold::Abandoned => {
                    tracing::warn!(
                        file = %path.display(),
                        hold_seconds = hold.as_secs_f64(),
                        "a policy file was opened for writing and left open; reloading without waiting for it"
                    );
                    false
                }
            });
        holding
    }

    /// Puts the burst's rebuild off a little while files are open for writing (their
    /// close is a change and brings it forward); a hold of over a second is logged once.
    fn hold(&self, burst: &mut Pending) {
        let now = Instant::now();
        let (since, logged) = burst.held.get_or_insert((now, false));
        if !*logged && now.duration_since(*since) >= Duration::from_secs(1) {
            *logged = true;
            let files: Vec<_> = self
                .writing
                .iter()
                .filter(|(path, writer)| {
                    writer.holds(path, now, self.options.write_hold) == Hold::Yes
                })
                .map(|(path, _)| path.display().to_string())
                .collect();
            tracing::info!(?files, "reload waits for files still open for writing");
        }
        let pause = Duration::from_millis(20).min(self.options.quiet);
        burst.next_try = Some(now + pause.max(Duration::from_millis(1)) + jitter(pause));
    }

    /// Takes in one `notify` event; `true` if it is a change that calls for a rebuild.
    fn note(&mut self, event: notify::Result<notify::Event>) -> bool {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                tracing::warn!(error = %err, "the policy directory watch reported an error; rebuilding");
                self.forget();
                return true;
            }
        };
        if event.need_rescan() {
            // Events were lost: nothing is known about open files or new folders.
            self.writing.clear();
            self.forget();
            return true;
        }
        let paths: Vec<&PathBuf> = event.paths.iter().filter(|p| self.concerns(p)).collect();
        if paths.is_empty() && !event.paths.is_empty() {
            return false;
        }
        if paths.iter().any(|p| **p == self.dir) && !matches!(event.kind, EventKind::Access(_)) {
            // The directory's own entry changed (moved, removed, replaced): watch anew.
            self.forget();
        }
        // Writes and closes matter only for files the loader reads; a log file or an
        // editor's swap file next to the policies must not hold reloads back.
        let loaded: Vec<&PathBuf> = paths
            .iter()
            .copied()
            .filter(|p| is_loaded_name(p))
            .collect();
        match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                for path in &loaded {
                    self.writing.remove(*path);
                }
                !loaded.is_empty()
            }
            EventKind::Access(AccessKind::Open(_)) => {
                let now = Instant::now();
                for path in loaded.into_iter().filter(|p| !p.is_dir()) {
                    self.opens += 1;
                    if self.reading {
                        self.opened_while_reading
                            .push((path.clone(), Writer::opened(now)));
                    } else {
                        // Not this watcher's: a reader, or a writer about to truncate. An
                        // earlier open's entry with no write is replaced: its holds count
                        // from this open.
                        let writer = self
                            .writing
                            .entry(path.clone())
                            .or_insert(Writer::opened(now));
                        if !writer.wrote {
                            *writer = Writer::opened(now);
                        }
                    }
                }
                false
            }
            // Other reads change nothing.
            EventKind::Access(_) => false,
            EventKind::Modify(ModifyKind::Data(_)) => {
                let now = Instant::now();
                for path in &loaded {
                    self.writing.insert((*path).clone(), Writer::wrote(now));
                }
                !loaded.is_empty()
            }
            EventKind::Modify(ModifyKind::Metadata(_)) => !loaded.is_empty(),
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                for path in paths {
                    self.writing.retain(|open, _| !open.starts_with(path));
                }
                true
            }
            // Creations, renames and anything unknown: entries came or went.
            _ => true,
        }
    }

    /// See [`Files::forget`].
    fn forget(&mut self) {
        if let Some(files) = &mut self.files {
            files.forget();
        }
    }

    /// Whether a change at `path` can change the snapshot: anything inside the directory
    /// (hidden entries too: a ConfigMap's `..data` swap) except the top-level `tests/`,
    /// and the directory's own entry in its parent.
    fn concerns(&self, path: &Path) -> bool {
        let fence = self.files.as_ref().and_then(|f| f.fence.as_ref());
        if fence.is_some_and(|fence| path.starts_with(fence.path())) {
            return false;
        }
        match path.strip_prefix(&self.dir) {
            Ok(rel) => rel
                .components()
                .next()
                .is_none_or(|first| first.as_os_str() != "tests"),
            Err(_) => false,
        }
    }

    /// Reads the directory, checks it held still, builds a snapshot and serves it.
    fn attempt(&mut self, forced: bool) -> Attempt {
        if let Some(files) = &mut self.files
            && let Err(err) = files.rewatch()
        {
            tracing::warn!(dir = %self.dir.display(), error = %err, "cannot watch the policy directory; will try again on the next change");
        }
        // Take in every change made so far, so "open for writing" is up to date.
        if self.fence().is_none() {
            return Attempt::Stop;
        }
        if !forced && self.writers_open() {
            return Attempt::Held;
        }
        let started = Instant::now();
        let opens_before = self.opens;
        self.opened_while_reading.clear();
        self.reading = true;
        let read = read_dir(self.store.dir());
        let fresh = read
            .as_ref()
            .is_ok_and(|read| modified_just_now(read.newest_modification()));
        // A write can make its data visible before its event is queued (a truncating
        // open that blocks, say), so read a second time a little later and compare.
        let settled = self.changed_until(Instant::now() + self.options.settle);
        let again = (settled == Some(false)).then(|| read_dir(self.store.dir()));
        // Fence even when already changed, so this watcher's own opens are all taken in
        // while they are known to be its own.
        let fenced = self.fence();
        self.reading = false;
        match (settled, fenced) {
            (None, _) | (_, None) => return Attempt::Stop,
            (Some(true), _) | (_, Some(true)) => return self.changed(),
            (Some(false), Some(false)) if fresh => return self.changed(),
            (Some(false), Some(false)) => {}
        }
        let Some(again) = again else {
            return self.changed();
        };
        // Every open of a policy file while reading that was not one of ours may have
        // been a writer's, whose truncation the reads saw before its event.
        let ours = [&read, &again]
            .iter()
            .map(|r| r.as_ref().map_or(0, |r| r.opened()))
            .sum::<usize>();
        if self.opens - opens_before > ours {
            // Which open was not ours is unknown: hold each file opened meanwhile, a
            // little longer at random (two servers reading one directory see each
            // other's opens, and must not keep meeting).
            let delay = jitter(OPEN_HOLD);
            for (path, mut opened) in std::mem::take(&mut self.opened_while_reading) {
                opened.since += delay;
                let writer = self.writing.entry(path).or_insert(opened);
                if !writer.wrote {
                    *writer = opened;
                }
            }
            return self.changed();
        }
        let read = match (read, again) {
            (Ok(read), Ok(again)) if again.version() == read.version() => Ok(read),
            (Ok(_), _) => return self.changed(),
            (Err(err), _) => Err(err),
        };
        // Told first: whoever sees the new snapshot or error also sees it counted.
        let built = match read {
            Ok(read) if read.complete() && read.version() == self.store.current().version() => {
                // Same content (a touch, an editor's swap file): nothing to parse.
                (self.on_rebuild)(Rebuilt::Unchanged);
                self.store.unchanged();
                tracing::debug!("policy directory read again; content unchanged");
                return Attempt::Done;
            }
            Ok(read) => build(&read, self.store.options()),
            Err(err) => Err(err),
        };
        match built {
            Ok(Loaded { snapshot, warnings }) => {
                for warning in &warnings {
                    tracing::warn!(location = %warning.location, "{}", warning.message);
                }
                let policy_count = snapshot.policy_count();
                let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
                (self.on_rebuild)(Rebuilt::Swapping(&snapshot));
                if let ReloadOutcome::Swapped {
                    old_version,
                    new_version,
                } = self.store.install(snapshot)
                {
                    tracing::info!(
                        old_version,
                        new_version,
                        policy_count,
                        elapsed_ms,
                        "policies reloaded"
                    );
                }
            }
            Err(err) => {
                (self.on_rebuild)(Rebuilt::Failed(&err));
                self.store.fail(&err);
                log_failure(&err, self.store.current().version());
            }
        }
        Attempt::Done
    }

    fn changed(&self) -> Attempt {
        tracing::debug!("the policy directory changed while it was read; trying again");
        Attempt::Changed
    }

    /// Takes in every event queued before now: `Some(true)` if one was a change, `None`
    /// if the watcher is stopping. With a fence this is exact (see the module docs);
    /// without, it waits [`WatchOptions::settle`]. A SIGHUP meanwhile is answered by the
    /// rebuild under way.
    fn fence(&mut self) -> Option<bool> {
        let mut changed = false;
        // A marker's own event can be lost with others when the kernel's queue overflows;
        // then a new marker is made, and waited for instead.
        'marker: loop {
            let Some(fence) = self.files.as_mut().and_then(|f| f.fence.as_mut()) else {
                let settled = self.changed_until(Instant::now() + self.options.settle)?;
                return Some(changed || settled);
            };
            fence.issued += 1;
            let marker = fence.path().join(fence.issued.to_string());
            if let Err(err) = std::fs::File::create(&marker) {
                return self.fence_lost(&err.to_string());
            }
            // Its removal is an event too, but not one anybody waits for.
            let _ = std::fs::remove_file(&marker);
            let deadline = Instant::now() + FENCE_TIMEOUT;
            loop {
                let signal = self
                    .receiver
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()));
                match signal {
                    Ok(Signal::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                    Ok(Signal::ReloadNow) => self.reload_requested = true,
                    Ok(Signal::Fs(Ok(event)))
                        if matches!(event.kind, EventKind::Create(_))
                            && event.paths.contains(&marker) =>
                    {
                        return Some(changed);
                    }
                    Ok(Signal::Fs(event)) => {
                        let rescan = event.as_ref().is_ok_and(notify::Event::need_rescan);
                        changed |= self.note(event);
                        if rescan {
                            continue 'marker;
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        return self.fence_lost("its event did not come back in time");
                    }
                }
            }
        }
    }

    /// The fence failed: drop it (the next rebuild makes a new one), wait a settle period
    /// instead, and count this read as changed, since it was not checked.
    fn fence_lost(&mut self, why: &str) -> Option<bool> {
        if let Some(files) = &mut self.files
            && let Some(fence) = files.fence.take()
        {
            tracing::warn!(fence = %fence.path().display(), why, "policy read fence failed; making a new one");
        }
        self.changed_until(Instant::now() + self.options.settle)
            .map(|_| true)
    }

    /// Takes in signals until `deadline`: `Some(true)` if a change arrived, `None` if the
    /// watcher is stopping.
    fn changed_until(&mut self, deadline: Instant) -> Option<bool> {
        let mut changed = false;
        loop {
            match self.wait(Some(deadline)) {
                Wait::Stop => return None,
                Wait::Change => changed = true,
                Wait::ReloadNow => self.reload_requested = true,
                Wait::Timeout => return Some(changed),
            }
        }
    }
}

/// How old the newest policy file must be before it is read into a snapshot. A truncating
/// `open` that blocks (on the file system's journal, say) shows the file empty before its
/// event is queued, and its open event can merge with this watcher's own; a modification
/// this recent may be such a write still under way.
const SETTLED_AFTER: Duration = Duration::from_millis(25);

/// Whether `modified` is within [`SETTLED_AFTER`] of now. A time in the future (a clock
/// step, a `touch -d`) does not count, or it would hold reloads back until then.
fn modified_just_now(modified: Option<std::time::SystemTime>) -> bool {
    let Some(modified) = modified else {
        return false;
    };
    match std::time::SystemTime::now().duration_since(modified) {
        Ok(age) => age < SETTLED_AFTER,
        Err(ahead) => ahead.duration() < Duration::from_millis(5),
    }
}

/// A random pause of up to `bound`, so that retries of two processes drift apart.
fn jitter(bound: Duration) -> Duration {
    use std::hash::{BuildHasher as _, RandomState};
    let random = RandomState::new().hash_one(Instant::now());
    bound.mul_f64((random % 1024) as f64 / 1024.0)
}

/// How long a fence's event may take to come back before the fence is given up.
const FENCE_TIMEOUT: Duration = Duration::from_secs(2);

/// Logs every problem of a failed rebuild with its file and line.
fn log_failure(err: &LoadError, serving: &str) {
    match err {
        LoadError::Invalid(problems) => {
            for problem in problems {
                tracing::error!(
                    location = %problem.location,
                    serving_version = serving,
                    "policy reload refused: {}",
                    problem.message
                );
            }
        }
        LoadError::Directory { .. } => {
            tracing::error!(serving_version = serving, "policy reload failed: {err}");
        }
    }
}

/// Whether the loader reads files with this name (so a write to it must finish first).
fn is_loaded_name(path: &Path) -> bool {
    path.file_name().is_some_and(|name| {
        let name = name.to_string_lossy();
        name.ends_with(".cedar")
            || name.ends_with(".cedarschema")
            || name.ends_with(".cedarschema.json")
            || name == "entities.json"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRITE_HOLD: Duration = Duration::from_secs(10);

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
        file
    }

    #[test]
    fn an_open_without_a_write_holds_briefly_unless_it_emptied_the_file() {
        let now = Instant::now();
        let later = now + OPEN_HOLD * 2;
        let open = Writer::opened(now);
        let full = file("permit(principal, action, resource);\n");
        let empty = file("");
        // Within OPEN_HOLD any open holds.
        assert_eq!(open.holds(full.path(), now, WRITE_HOLD), Hold::Yes);
        // After it, a reader of a file with content does not (it is watched until the
        // write hold, in case its truncation shows late, then forgotten)...
        assert_eq!(open.holds(full.path(), later, WRITE_HOLD), Hold::No);
        assert_eq!(
            open.holds(full.path(), now + WRITE_HOLD, WRITE_HOLD),
            Hold::Forget
        );
        // ...but an open that emptied the file (a truncating writer whose truncation is
        // still to be reported) holds until the write hold.
        assert_eq!(open.holds(empty.path(), later, WRITE_HOLD), Hold::Yes);
        assert_eq!(
            open.holds(empty.path(), now + WRITE_HOLD, WRITE_HOLD),
            Hold::Abandoned
        );
        // A file emptied long before the open was only read.
        let old = SystemTime::now() - Duration::from_secs(3600);
        empty.as_file().set_modified(old).unwrap();
        assert_eq!(open.holds(empty.path(), later, WRITE_HOLD), Hold::No);
        // A file that is gone holds nothing (its removal is a change of its own).
        let gone = empty.path().to_owned();
        drop(empty);
        assert_eq!(open.holds(&gone, later, WRITE_HOLD), Hold::No);
    }

    #[test]
    fn a_write_holds_until_the_write_hold() {
        let now = Instant::now();
        let full = file("permit(principal, action, resource);\n");
        let wrote = Writer::wrote(now);
        assert_eq!(
            wrote.holds(full.path(), now + OPEN_HOLD * 2, WRITE_HOLD),
            Hold::Yes
        );
        assert_eq!(
            wrote.holds(full.path(), now + WRITE_HOLD, WRITE_HOLD),
            Hold::Abandoned
        );
    }
}
