//! [`PolicyStore`]: the serving snapshot behind one atomic pointer, and the outcome of the
//! last reload.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use arc_swap::ArcSwap;

use super::{LoadError, LoadOptions, Loaded, Problem, Snapshot, load_dir};

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
        let Loaded { snapshot, warnings } = load_dir(&dir, &options)?;
        let store = Self {
            dir,
            options,
            current: ArcSwap::from_pointee(snapshot),
            last_error: Mutex::new(None),
        };
        Ok((store, warnings))
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

    /// Rebuilds from disk. A failure keeps the serving snapshot and is remembered until
    /// the next successful reload; unchanged content keeps the snapshot (and its
    /// `loaded_at`) as is.
    pub fn reload(&self) -> Result<(ReloadOutcome, Vec<Problem>), LoadError> {
        let result = load_dir(&self.dir, &self.options);
        let mut last_error = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(Loaded { snapshot, warnings }) => {
                *last_error = None;
                let old = self.current.load();
                if old.version() == snapshot.version() {
                    return Ok((ReloadOutcome::Unchanged, warnings));
                }
                let outcome = ReloadOutcome::Swapped {
                    old_version: old.version().to_owned(),
                    new_version: snapshot.version().to_owned(),
                };
                self.current.store(Arc::new(snapshot));
                Ok((outcome, warnings))
            }
            Err(err) => {
                *last_error = Some(ReloadError {
                    message: err.to_string(),
                    at: SystemTime::now(),
                });
                Err(err)
            }
        }
    }
}
