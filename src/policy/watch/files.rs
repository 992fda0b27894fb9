//! The `notify` side of the watcher: what is watched (the directory, recursively; its
//! entry in its parent; a private fence folder), and watching again when the directory
//! is replaced.

use std::path::{Path, PathBuf};

use notify::{RecursiveMode, Watcher as _};

/// The `notify` side: what is watched, and re-watching when the directory is replaced.
pub(super) struct Files {
    pub(super) watcher: notify::RecommendedWatcher,
    /// The policy directory, absolute but with symlinks kept (so a swap is seen).
    pub(super) dir: PathBuf,
    /// Identity (device, inode) of the directory the recursive watch is on; `None` when
    /// it must be (re)made at the next rebuild.
    pub(super) watched: Option<(u64, u64)>,
    /// Whether the directory's parent is watched (for swaps of the directory's entry).
    pub(super) parent_watched: bool,
    /// `None` without a fence; the watcher then waits [`WatchOptions::settle`] instead,
    /// and tries to make one again at the next rebuild.
    pub(super) fence: Option<Fence>,
    /// Whether a missing fence has been logged (once is enough).
    pub(super) fence_logged: bool,
}

/// A private folder, watched with the policy directory; creating a file in it marks a
/// point in the stream of events.
pub(super) struct Fence {
    /// Removed with everything in it when the fence is dropped.
    pub(super) folder: tempfile::TempDir,
    /// Markers made so far; marker `n` is the file `n` in the folder. Unique names make
    /// the marker unmistakable even when a second watch (on the temp directory, say)
    /// reports the same creation again.
    pub(super) issued: u64,
}

impl Fence {
    /// Makes a folder with a fresh random name in the temp directory and watches it.
    pub(super) fn create(watcher: &mut notify::RecommendedWatcher) -> notify::Result<Self> {
        let temp = std::path::absolute(std::env::temp_dir()).map_err(notify::Error::io)?;
        let folder = tempfile::Builder::new()
            .prefix("cedar-pdp-fence-")
            .tempdir_in(temp)
            .map_err(notify::Error::io)?;
        watcher.watch(folder.path(), RecursiveMode::NonRecursive)?;
        Ok(Self { folder, issued: 0 })
    }

    pub(super) fn path(&self) -> &Path {
        self.folder.path()
    }
}

impl Files {
    /// Puts the recursive watch on whatever directory the path names now, unless that is
    /// the one already watched; also (re)makes the parent watch and the fence if missing.
    /// Only failing to watch the directory itself is an error.
    pub(super) fn rewatch(&mut self) -> notify::Result<()> {
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
    pub(super) fn forget(&mut self) {
        self.watched = None;
        self.parent_watched = false;
    }
}

/// The path to watch for `dir`: absolute, keeping a final symlink (its swap is the
/// change), but resolved when it ends in `..` (whose "parent" would be wrong).
pub(super) fn watched_path(dir: &Path) -> PathBuf {
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    if absolute.file_name().is_none() {
        std::fs::canonicalize(&absolute).unwrap_or(absolute)
    } else {
        absolute
    }
}

#[cfg(unix)]
pub(super) fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
pub(super) fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|_| (0, 0))
}
