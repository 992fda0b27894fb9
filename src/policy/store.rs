//! [`PolicyStore`]: the serving snapshot behind one atomic pointer, and the outcome of the
//! last reload.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use arc_swap::ArcSwap;

use super::{
    BuildCache, LoadError, LoadOptions, Loaded, Problem, Snapshot, Sources, build_cached, read_dir,
};

/// Holds the snapshot being served; readers take an `Arc` to it with one atomic load, a
/// reload replaces it with one atomic store, so no reader ever sees a mix of two.
#[derive(Debug)]
pub struct PolicyStore {
    dir: PathBuf,
    options: LoadOptions,
    current: ArcSwap<Snapshot>,
    /// Last failed reload and when; a std mutex because it is touched only by reloads
    /// and info calls, never across an await.
    last_error: Mutex<Option<ReloadError>>,
    /// What the last build parsed and validated, for the next to reuse.
    cache: Mutex<BuildCache>,
}

/// A reload that failed: the reason (file, line, message) and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadError {
    /// Every problem, one per line.
    pub message: String,
    /// When the reload failed.
    pub at: SystemTime,
}

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The content changed; the new version is serving.
    Swapped {
        /// The version replaced.
        old_version: String,
        /// The version now serving.
        new_version: String,
    },
    /// The content is the same as the serving snapshot's; nothing was swapped.
    Unchanged,
}

impl PolicyStore {
    /// Loads `dir` for the first time; an invalid directory is an error, not an empty store.
    pub fn open(
        dir: impl AsRef<Path>,
        options: LoadOptions,
    ) -> Result<(Self, Vec<Problem>), LoadError> {
        let dir = dir.as_ref().to_owned();
        let mut cache = BuildCache::new();
        let read = read_dir(&dir, options.max_file_bytes)?;
        let Loaded { snapshot, warnings } = build_cached(&read, &options, &mut cache)?;
        snapshot.prepare();
        let store = Self {
            dir,
            options,
            current: ArcSwap::from_pointee(snapshot),
            last_error: Mutex::new(None),
            cache: Mutex::new(cache),
        };
        release_freed_memory();
        Ok((store, warnings))
    }

    /// Loads `dir` for the first time like [`PolicyStore::open`], except that an invalid
    /// directory gives a store that has loaded nothing yet: an empty snapshot whose
    /// version is empty ([`PolicyStore::loaded`] is false), with the problems as its last
    /// error, until a rebuild finds the directory valid. For a set whose absence is safe
    /// (the shadow set); an unreadable directory is still an error.
    pub fn open_or_wait(
        dir: impl AsRef<Path>,
        options: LoadOptions,
    ) -> Result<(Self, Result<Vec<Problem>, LoadError>), LoadError> {
        let dir = dir.as_ref().to_owned();
        let mut cache = BuildCache::new();
        let built = read_dir(&dir, options.max_file_bytes)
            .and_then(|read| build_cached(&read, &options, &mut cache));
        match built {
            Ok(Loaded { snapshot, warnings }) => {
                snapshot.prepare();
                let store = Self {
                    dir,
                    options,
                    current: ArcSwap::from_pointee(snapshot),
                    last_error: Mutex::new(None),
                    cache: Mutex::new(cache),
                };
                Ok((store, Ok(warnings)))
            }
            Err(err @ LoadError::Directory { .. }) => Err(err),
            Err(err) => {
                let Loaded { snapshot, .. } =
                    super::build(&super::loader::Sources::none(), &options)?;
                let store = Self {
                    dir,
                    options,
                    current: ArcSwap::from_pointee(snapshot),
                    last_error: Mutex::new(None),
                    cache: Mutex::new(cache),
                };
                store.fail(&err);
                Ok((store, Err(err)))
            }
        }
    }

    /// Whether its directory has loaded at least once (false only for a store from
    /// [`PolicyStore::open_or_wait`] still waiting for a valid directory).
    pub fn loaded(&self) -> bool {
        !self.current.load().version().is_empty()
    }

    /// The snapshot serving now. Hold it for the whole of one call.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The policy directory this store serves.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last reload failure, if the most recent reload failed.
    pub fn last_error(&self) -> Option<ReloadError> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The options every rebuild of this store loads with.
    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    /// Reads and validates the directory into a new snapshot without serving it; see
    /// [`install`](Self::install) and [`fail`](Self::fail) for what to do with the result.
    pub fn build(&self) -> Result<Loaded, LoadError> {
        self.build_from(&read_dir(&self.dir, self.options.max_file_bytes)?)
    }

    /// Parses and validates what was read from the directory into a new snapshot, like
    /// [`build`](Self::build): only the files whose text changed since the last build are
    /// parsed and validated again (all of them when the schema changed).
    pub fn build_from(&self, read: &Sources) -> Result<Loaded, LoadError> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        build_cached(read, &self.options, &mut cache)
    }

    /// Serves `snapshot` from the next call on, unless its content equals the serving
    /// snapshot's (then the serving one, and its `loaded_at`, stay). Clears the last error.
    pub fn install(&self, snapshot: Snapshot) -> ReloadOutcome {
        let outcome = self.swap_in(snapshot).0;
        self.current().prepare();
        outcome
    }

    /// [`install`](Self::install), handing back what it replaced: dropping the returned
    /// [`Retired`] frees it (a 100,000-policy snapshot takes tens of milliseconds), so a
    /// caller can first say that the new one serves.
    pub fn swap_in(&self, snapshot: Snapshot) -> (ReloadOutcome, Retired) {
        let mut last_error = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        *last_error = None;
        let old = self.current.load();
        if old.version() == snapshot.version() {
            return (ReloadOutcome::Unchanged, Retired(Some(Arc::new(snapshot))));
        }
        let outcome = ReloadOutcome::Swapped {
            old_version: old.version().to_owned(),
            new_version: snapshot.version().to_owned(),
        };
        drop(old);
        let old = self.current.swap(Arc::new(snapshot));
        (outcome, Retired(Some(old)))
    }

    /// Records a rebuild that found the serving content unchanged: clears the last error.
    pub fn unchanged(&self) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Remembers a failed rebuild (shown by `GetPolicySetInfo`) and keeps serving the
    /// last good snapshot.
    pub fn fail(&self, error: &LoadError) -> ReloadError {
        let failure = ReloadError {
            message: error.to_string(),
            at: SystemTime::now(),
        };
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(failure.clone());
        release_freed_memory();
        failure
    }

    /// Rebuilds from disk once, with no debounce and no check that the directory held
    /// still while it was read: [`build`](Self::build), then [`install`](Self::install)
    /// or [`fail`](Self::fail). The watcher adds those checks.
    pub fn reload(&self) -> Result<(ReloadOutcome, Vec<Problem>), LoadError> {
        match self.build() {
            Ok(Loaded { snapshot, warnings }) => Ok((self.install(snapshot), warnings)),
            Err(err) => {
                self.fail(&err);
                Err(err)
            }
        }
    }
}

/// A snapshot no longer served (or one not taken): dropped, it is freed (unless calls
/// still hold it) and so are the load's intermediates, and the memory handed back.
#[derive(Debug)]
#[must_use = "dropping it frees the replaced snapshot"]
pub struct Retired(Option<Arc<Snapshot>>);

impl Drop for Retired {
    fn drop(&mut self) {
        drop(self.0.take());
        release_freed_memory();
    }
}

/// Hands the memory a load freed (parsing and validation intermediates, a replaced
/// snapshot) back to the operating system. The binary runs on mimalloc, which keeps freed
/// pages resident for reuse and purges them only as it is called again, so a server idle
/// after loading stays at its loading size: 338 MiB against 252 MiB with this, for
/// 40,000 policies (`cargo bench --bench memory`). Under another global allocator
/// mimalloc's heaps are empty and this does nothing. Costs a walk of the calling thread's
/// heap; called only after a load.
fn release_freed_memory() {
    // SAFETY: `mi_collect` has no preconditions: it may be called from any thread at any
    // time, whatever the global allocator is.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
