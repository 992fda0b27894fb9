//! The watcher thread's loop: waiting for events and signals, noting what they say
//! (changes, possible writers), debouncing a burst into one rebuild and holding it while
//! a file is being written.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use notify::{
    EventKind,
    event::{AccessKind, AccessMode, ModifyKind, RenameMode},
};

use super::{
    OnRebuild, Rebuilt, Signal, WatchOptions,
    files::Files,
    rebuild::SETTLED_AFTER,
    writers::{Hold, Writer},
};
use crate::policy::{LoadError, Location, PolicyStore, Problem, read_dir, relative};

/// The watcher thread's state.
pub(super) struct Run {
    pub(super) store: Arc<PolicyStore>,
    pub(super) on_rebuild: OnRebuild,
    pub(super) options: WatchOptions,
    pub(super) dir: PathBuf,
    pub(super) files: Option<Files>,
    pub(super) receiver: mpsc::Receiver<Signal>,
    /// Files the loader reads that someone else has opened or written to and not closed
    /// since: possible writers.
    pub(super) writing: HashMap<PathBuf, Writer>,
    /// Opens of files the loader reads, by anyone (this watcher's reads included).
    pub(super) opens: usize,
    /// Between the fences around this watcher's reads: opens then may be its own.
    pub(super) reading: bool,
    /// The files opened between those fences, by this watcher or someone else: when the
    /// count says someone else did, each is held as a possible writer.
    pub(super) opened_while_reading: Vec<(PathBuf, Writer)>,
    /// A SIGHUP arrived and is not answered yet (it may have come in while a rebuild was
    /// reading); the loop answers it with an immediate, forced rebuild.
    pub(super) reload_requested: bool,
}

/// What one attempt at a rebuild came to.
pub(super) enum Attempt {
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
pub(super) enum Wait {
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
pub(super) struct Pending {
    /// The burst's first change.
    pub(super) since: Instant,
    /// Its latest change.
    pub(super) last_change: Instant,
    /// Rebuild without waiting for quiet (SIGHUP).
    pub(super) immediate: bool,
    /// Rebuild even while files are open for writing (SIGHUP).
    pub(super) forced: bool,
    /// When files open for writing began holding the rebuild back, and whether that has
    /// been logged.
    pub(super) held: Option<(Instant, bool)>,
    /// While held: when to look again.
    pub(super) next_try: Option<Instant>,
    /// When the change first waited: kept when the burst starts over because the
    /// directory changed while it was read, so that holds add up to
    /// [`WatchOptions::max_hold`] however they come.
    pub(super) waiting_since: Instant,
    /// When the rebuild was last recorded as failed for not holding still.
    pub(super) reported: Option<Instant>,
}

impl Pending {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            since: now,
            last_change: now,
            immediate: false,
            forced: false,
            held: None,
            next_try: None,
            waiting_since: now,
            reported: None,
        }
    }
}

impl Run {
    pub(super) fn run(mut self) {
        let mut pending = match self.changed_before_watch() {
            None => return,
            Some(true) => Some(Pending::new(Instant::now())),
            Some(false) => None,
        };
        let mut next_rescan = self.options.rescan.map(|every| Instant::now() + every);
        loop {
            // A SIGHUP, whether it arrived here or while a rebuild was reading: rebuild now.
            if std::mem::take(&mut self.reload_requested) {
                let burst = pending.get_or_insert_with(|| Pending::new(Instant::now()));
                burst.immediate = true;
                burst.forced = true;
                burst.next_try = None;
            }
            let deadline = match (pending.as_ref().map(|p| self.due(p)), next_rescan) {
                (Some(due), Some(rescan)) => Some(due.min(rescan)),
                (due, rescan) => due.or(rescan),
            };
            match self.wait(deadline) {
                Wait::Stop => return,
                Wait::Change => {
                    let now = Instant::now();
                    pending.get_or_insert_with(|| Pending::new(now)).last_change = now;
                }
                Wait::ReloadNow => self.reload_requested = true,
                Wait::Timeout => {
                    let now = Instant::now();
                    if let (Some(rescan), Some(every)) = (next_rescan, self.options.rescan)
                        && now >= rescan
                    {
                        next_rescan = Some(now + every);
                        // A change already on its way needs no re-scan to be found.
                        if pending.is_none() {
                            match self.rescan() {
                                None => return,
                                Some(true) => pending = Some(Pending::new(Instant::now())),
                                Some(false) => {}
                            }
                        }
                        continue;
                    }
                    let Some(burst) = pending.as_mut() else {
                        continue;
                    };
                    let overdue = burst.waiting_since.elapsed() >= self.options.max_hold;
                    let attempt = self.attempt(burst.forced, overdue);
                    if overdue && matches!(attempt, Attempt::Held | Attempt::Changed) {
                        self.held_too_long(burst);
                    }
                    match attempt {
                        Attempt::Stop => return,
                        Attempt::Done => pending = None,
                        Attempt::Held => self.hold(burst),
                        Attempt::Changed => {
                            // Start over as a new burst, keeping only "ignore open files"
                            // and how long the change has waited, a little later at
                            // random: two servers reading one directory must not keep
                            // meeting.
                            let (forced, waiting_since, reported) =
                                (burst.forced, burst.waiting_since, burst.reported);
                            *burst = Pending::new(Instant::now());
                            (burst.forced, burst.waiting_since, burst.reported) =
                                (forced, waiting_since, reported);
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
    pub(super) fn changed_before_watch(&mut self) -> Option<bool> {
        self.reading = true;
        let read = read_dir(self.store.dir(), self.store.options().max_file_bytes);
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

    /// The periodic re-scan: whether the directory differs from the serving snapshot
    /// although no event said so (read and hashed as before the watch began; nothing
    /// parsed, nothing counted when it does not). `None` if the watcher is stopping.
    pub(super) fn rescan(&mut self) -> Option<bool> {
        let changed = self.changed_before_watch()?;
        if changed {
            let dir = self.store.dir().display();
            if self.files.is_some() {
                tracing::warn!(%dir, "the periodic re-scan found a change no file event reported; rebuilding");
            } else {
                tracing::info!(%dir, "the periodic re-scan found a change; rebuilding");
            }
        } else {
            tracing::trace!("periodic re-scan: the policy directory is unchanged");
        }
        Some(changed)
    }

    /// When the burst's rebuild is due: after quiet, and not before a file changed with
    /// the last event is old enough to be read (a read sooner would find it modified just
    /// now and start over), but no later than `max_wait` after its first change.
    pub(super) fn due(&self, burst: &Pending) -> Instant {
        if let Some(next_try) = burst.next_try {
            return next_try;
        }
        if burst.immediate {
            return burst.since;
        }
        let quiet = self.options.quiet.max(READABLE_AFTER_EVENT);
        (burst.last_change + quiet).min(burst.since + self.options.max_wait)
    }

    /// Waits for the next relevant signal until `deadline` (forever if `None`).
    pub(super) fn wait(&mut self, deadline: Option<Instant>) -> Wait {
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
    /// with no write stop counting after [`OPEN_HOLD`], and at once when `writes_only`
    /// (the change has waited [`WatchOptions::max_hold`]: opened over and over, by a
    /// reader most likely).
    pub(super) fn writers_open(&mut self, writes_only: bool) -> bool {
        let now = Instant::now();
        let hold = self.options.write_hold;
        let mut holding = false;
        self.writing
            .retain(|path, writer| match writer.holds(path, now, hold) {
                Hold::Yes if writes_only && !writer.wrote => true,
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
    pub(super) fn hold(&self, burst: &mut Pending) {
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

    /// The change has waited [`WatchOptions::max_hold`] and the directory still does not
    /// hold still: the rebuild is recorded as failed (at most once per `max_hold`), naming
    /// the files others keep open or writing, and the watcher keeps trying.
    pub(super) fn held_too_long(&mut self, burst: &mut Pending) {
        let now = Instant::now();
        let max_hold = self.options.max_hold;
        if burst
            .reported
            .is_some_and(|at| now.duration_since(at) < max_hold)
        {
            return;
        }
        burst.reported = Some(now);
        let waited = now.duration_since(burst.waiting_since).as_secs();
        let mut files: Vec<String> = self
            .writing
            .keys()
            .map(|path| relative(&self.dir, path))
            .collect();
        files.sort();
        if files.is_empty() {
            files.push(".".to_owned());
        }
        let message = format!(
            "did not hold still for {waited} s (opened or written over and over by another \
             process); not reloaded: the last good set keeps serving, and the reload is tried \
             again until it does"
        );
        let error = LoadError::Invalid(
            files
                .into_iter()
                .map(|file| {
                    Problem::new(Location::file(file), message.clone())
                        .of_kind(crate::policy::ProblemKind::Unsettled)
                })
                .collect(),
        );
        (self.on_rebuild)(
            Rebuilt::Failed(&error),
            now.duration_since(burst.waiting_since),
        );
        self.store.fail(&error);
        super::rebuild::log_failure(&error, &self.store);
    }

    /// Takes in one `notify` event; `true` if it is a change that calls for a rebuild.
    pub(super) fn note(&mut self, event: notify::Result<notify::Event>) -> bool {
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
                // The opens before it are answered: whoever wrote has closed.
                self.opened_while_reading
                    .retain(|(open, _)| !loaded.contains(&open));
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
    pub(super) fn forget(&mut self) {
        if let Some(files) = &mut self.files {
            files.forget();
        }
    }

    /// Whether a change at `path` can change the snapshot: anything inside the directory
    /// (hidden entries too: a ConfigMap's `..data` swap) except the top-level `tests/`,
    /// and the directory's own entry in its parent.
    pub(super) fn concerns(&self, path: &Path) -> bool {
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
}

/// How long after a change's event a read should start so that the file it changed is
/// no longer [`SETTLED_AFTER`] young: the event comes after the write, and a file's
/// modification time may lag the clock by a scheduler tick (4 ms at 250 Hz).
const READABLE_AFTER_EVENT: Duration = SETTLED_AFTER.saturating_add(Duration::from_millis(5));

/// A random pause of up to `bound`, so that retries of two processes drift apart.
pub(super) fn jitter(bound: Duration) -> Duration {
    use std::hash::{BuildHasher as _, RandomState};
    let random = RandomState::new().hash_one(Instant::now());
    bound.mul_f64((random % 1024) as f64 / 1024.0)
}

/// Whether the loader reads files with this name (so a write to it must finish first).
pub(super) fn is_loaded_name(path: &Path) -> bool {
    path.file_name().is_some_and(|name| {
        let name = name.to_string_lossy();
        name.ends_with(".cedar")
            || name.ends_with(".cedarschema")
            || name.ends_with(".cedarschema.json")
            || name == "entities.json"
    })
}
