//! The policy directory: reading it into an immutable [`Snapshot`] and holding the one
//! that is served.
//!
//! [`load_dir`] reads every file a snapshot is built from (policies, schema,
//! `entities.json`), parses and validates them together, and either returns a whole
//! snapshot or every problem it found, each with file, line and column. A
//! [`PolicyStore`] keeps the serving snapshot behind one atomic pointer, so a reader
//! never sees half of a change, and the [`Watcher`] rebuilds it when the files change.
//! This module knows nothing about requests.

mod cow_map;
mod entity_json;
mod error;
pub mod hierarchy;
mod index;
mod loader;
mod members;
mod shape;
mod snapshot;
mod store;
mod usage;
mod watch;

pub use crate::config::PolicyValidation;
pub use entity_json::{BadUid, entity_uid, json_entity_uids, json_uid_and_parents};
pub use error::{Lines, LoadError, Location, Problem, ProblemKind, Span, describe};
pub use index::{Anchor, CACHED_SLICE_POLICIES, FastMap, FastSet, PolicyIndex, SearchSide, Slot};
pub use loader::{
    BuildCache, LoadOptions, Loaded, MAX_POLICY_NESTING, Sources, build, build_cached, load_dir,
    read_dir,
};
pub(crate) use loader::{parse_problems, relative, too_deep};
pub use members::{Members, search_order};
pub use shape::SchemaShape;
pub use snapshot::Snapshot;
pub use store::{PolicyStore, ReloadError, ReloadOutcome, Retired};
pub use usage::{OTHER_SERIES, PolicyUsage, PolicyUse};
pub(crate) use watch::log_failure;
pub use watch::{OnRebuild, Rebuilt, WatchError, WatchOptions, Watcher};

/// Stack size for threads that parse or evaluate policies (tokio's workers, the watcher):
/// Cedar recurses over expressions, and the limits keep inputs well inside this.
pub const STACK_BYTES: usize = 8 * 1024 * 1024;
