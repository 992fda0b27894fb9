//! The I/O half of a load: walking the directory and reading every file a snapshot is
//! built from, with the content hash that becomes its version.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::OnceLock,
    time::SystemTime,
};

use sha2::{Digest, Sha256};

use crate::policy::{LoadError, Location, Problem, ProblemKind};

/// What a file in the directory is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Policies,
    CedarSchema,
    JsonSchema,
    Entities,
}

/// One file read from the directory.
#[derive(PartialEq, Eq)]
pub(super) struct Source {
    /// Relative path with `/` separators.
    pub(super) rel: String,
    pub(super) kind: Kind,
    pub(super) text: String,
}

/// Everything a snapshot is built from, read from the directory but not yet parsed: the
/// I/O half of [`load_dir`], so that a reload can check the directory held still while
/// it was read before spending time on parsing.
pub struct Sources {
    pub(super) sources: Vec<Source>,
    /// Files that could not be read.
    pub(super) problems: Vec<Problem>,
    /// The hash of `sources`, worked out when first asked for (a watcher's second read
    /// is compared by content and never needs it).
    pub(super) version: OnceLock<String>,
    /// Files opened, whether or not they could then be read.
    pub(super) opened: usize,
    /// The latest modification time among the files read.
    pub(super) newest: Option<SystemTime>,
}

impl Sources {
    /// No files at all: what a store serves, as an empty snapshot with an empty version,
    /// until its directory first loads (a shadow set; see [`super::super::PolicyStore::open_or_wait`]).
    pub(crate) fn none() -> Self {
        Self {
            sources: Vec::new(),
            problems: Vec::new(),
            version: OnceLock::from(String::new()),
            opened: 0,
            newest: None,
        }
    }

    /// The version a snapshot built from these sources has (hashed on the first call).
    pub fn version(&self) -> &str {
        self.version.get_or_init(|| content_hash(&self.sources))
    }

    /// Whether `other` read the same files with the same content (what equal versions
    /// say, without hashing either).
    pub fn same_content(&self, other: &Sources) -> bool {
        self.sources == other.sources
    }

    /// Whether every file could be read (else [`build`] reports which could not).
    pub fn complete(&self) -> bool {
        self.problems.is_empty()
    }

    /// The latest modification time among the files read, if any could be read.
    pub fn newest_modification(&self) -> Option<SystemTime> {
        self.newest
    }

    /// How many files were opened to read them (an unreadable one included).
    pub fn opened(&self) -> usize {
        self.opened
    }

    /// The files that could not be read (or are misplaced), each as a problem.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// The text read from `rel` (relative, `/`-separated), for showing a problem's spot.
    pub fn text(&self, rel: &str) -> Option<&str> {
        self.sources
            .iter()
            .find(|s| s.rel == rel)
            .map(|s| s.text.as_str())
    }

    /// The policy files read (relative path and text), in directory order.
    pub fn policy_files(&self) -> impl Iterator<Item = (&str, &str)> {
        self.sources
            .iter()
            .filter(|s| s.kind == Kind::Policies)
            .map(|s| (s.rel.as_str(), s.text.as_str()))
    }
}

/// Reads every file a snapshot is built from, none larger than `max_file_bytes`; only a
/// missing or unusable directory is an error here, unreadable files (too large, or
/// linked from outside the directory) are problems reported by [`build`].
pub fn read_dir(dir: &Path, max_file_bytes: u64) -> Result<Sources, LoadError> {
    let meta = fs::metadata(dir).map_err(|source| LoadError::Directory {
        path: dir.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(LoadError::Directory {
            path: dir.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let mut problems = Vec::new();
    let mut opened = 0;
    let mut newest = None;
    let sources = read_sources(dir, max_file_bytes, &mut problems, &mut opened, &mut newest);
    Ok(Sources {
        sources,
        problems,
        version: OnceLock::new(),
        opened,
        newest,
    })
}

/// Walks the directory and reads every file that belongs to a snapshot, in a stable
/// order. Links are followed within the directory only (a Kubernetes ConfigMap volume
/// links each file through `..data`): a link leading outside it is a problem, and what it
/// points at is never read, so no other file's contents can reach an error message.
pub(super) fn read_sources(
    dir: &Path,
    max_file_bytes: u64,
    problems: &mut Vec<Problem>,
    opened: &mut usize,
    newest: &mut Option<SystemTime>,
) -> Vec<Source> {
    let root = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let mut walker = walkdir::WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|entry| entry.depth() == 0 || !skipped(entry));
    let mut sources = Vec::new();
    while let Some(entry) = walker.next() {
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                let rel = err.path().map_or_else(String::new, |p| relative(dir, p));
                problems.push(Problem::new(
                    Location::file(rel),
                    format!("cannot read: {err}"),
                ));
                continue;
            }
        };
        if entry.depth() > 0 && entry.path_is_symlink() {
            let inside = fs::canonicalize(entry.path()).map(|target| target.starts_with(&root));
            if !matches!(inside, Ok(true)) {
                if entry.file_type().is_dir() {
                    walker.skip_current_dir();
                }
                let message = match inside {
                    Err(err) => format!("cannot read: {err}"),
                    Ok(_) => OUTSIDE.to_owned(),
                };
                problems.push(Problem::new(
                    Location::file(relative(dir, entry.path())),
                    message,
                ));
                continue;
            }
        }
        if !entry.file_type().is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy();
        let top = entry.depth() == 1;
        let kind = if name.ends_with(".cedar") {
            Kind::Policies
        } else if name.ends_with(".cedarschema") {
            Kind::CedarSchema
        } else if name.ends_with(".cedarschema.json") {
            Kind::JsonSchema
        } else if top && name == "entities.json" {
            Kind::Entities
        } else {
            continue;
        };
        let rel = relative(dir, entry.path());
        if !top && kind != Kind::Policies {
            problems.push(Problem::new(
                Location::file(rel),
                "a schema is read only at the top of the policy directory; move it there",
            ));
            continue;
        }
        let read = open(entry.path()).and_then(|file| {
            *opened += 1;
            let meta = file.metadata()?;
            // What was opened, not what the walk saw: the path may have been swapped for
            // a link, a folder of links or a FIFO since.
            if !meta.is_file() {
                return Ok(Read::NotAFile);
            }
            if opened_path(&file).is_some_and(|path| !path.starts_with(&root)) {
                return Ok(Read::Outside);
            }
            if let Ok(modified) = meta.modified() {
                *newest = (*newest).max(Some(modified));
            }
            Ok(match read_at_most(file, meta.len(), max_file_bytes)? {
                Some(text) => Read::Text(text),
                None => Read::TooLarge,
            })
        });
        let problem = |message: String| Problem::new(Location::file(rel.clone()), message);
        match read {
            Ok(Read::Text(text)) => sources.push(Source { rel, kind, text }),
            Ok(Read::TooLarge) => problems.push(
                problem(format!(
                    "is larger than the limit of {max_file_bytes} bytes \
                     (limits.max_policy_file_bytes); not read"
                ))
                .of_kind(ProblemKind::TooLarge),
            ),
            Ok(Read::NotAFile) => problems.push(problem(
                "is not a regular file (it changed while the directory was read); not read"
                    .to_owned(),
            )),
            Ok(Read::Outside) => problems.push(problem(OUTSIDE.to_owned())),
            Err(err) => problems.push(problem(format!("cannot read: {err}"))),
        }
    }
    sources
}

/// What reading one file came to.
enum Read {
    Text(String),
    TooLarge,
    NotAFile,
    Outside,
}

/// The problem of a link leading out of the policy directory.
const OUTSIDE: &str =
    "is a link to outside the policy directory; only links within it are followed";

/// Opens `path` for reading without waiting: a FIFO put in a file's place must not block
/// the load (or the watcher) until someone writes to it.
fn open(path: &Path) -> std::io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.custom_flags(libc::O_NONBLOCK);
    }
    options.open(path)
}

/// Where the open `file` really is, every link resolved, where the system says (Linux's
/// `/proc/self/fd`); `None` elsewhere, where the walk's own check of links stands alone.
fn opened_path(file: &fs::File) -> Option<PathBuf> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd as _;
        fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        None
    }
}

/// The text of `file` (`len` bytes by its metadata), or `None` when it is, or grows while
/// read to be, larger than `max` bytes.
fn read_at_most(file: fs::File, len: u64, max: u64) -> std::io::Result<Option<String>> {
    use std::io::Read as _;
    if len > max {
        return Ok(None);
    }
    let mut text = String::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(max.saturating_add(1)).read_to_string(&mut text)?;
    Ok((text.len() as u64 <= max).then_some(text))
}

/// Hidden entries (`.git`, a ConfigMap's `..data`) and the top-level `tests/` folder are
/// not part of a snapshot. A ConfigMap's visible links through `..data` are.
pub(super) fn skipped(entry: &walkdir::DirEntry) -> bool {
    let name = entry.file_name().to_string_lossy();
    name.starts_with('.') || (entry.depth() == 1 && name == "tests" && entry.file_type().is_dir())
}

/// `path` relative to the policy directory `dir`, `/`-separated, as problems name files.
pub(crate) fn relative(dir: &Path, path: &Path) -> String {
    let rel: PathBuf = path.strip_prefix(dir).unwrap_or(path).to_owned();
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// SHA-256 over each file's relative path and content, length-prefixed so that no two
/// different directories hash alike. The first 16 hex digits are the version.
pub(super) fn content_hash(sources: &[Source]) -> String {
    let mut hasher = Sha256::new();
    for source in sources {
        for part in [source.rel.as_bytes(), source.text.as_bytes()] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
    }
    hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}
