//! The policy directory: reading it into an immutable [`Snapshot`] and holding the one
//! that is served.
//!
//! [`load_dir`] reads every file a snapshot is built from (policies, schema,
//! `entities.json`), parses and validates them together, and either returns a whole
//! snapshot or every problem it found, each with file, line and column. A
//! [`PolicyStore`] keeps the serving snapshot behind one atomic pointer, so a reader
//! never sees half of a change, and the [`Watcher`] rebuilds it when the files change.
//! This module knows nothing about requests.

mod error;
pub mod hierarchy;
mod loader;
mod shape;
pub mod slice;
mod snapshot;
mod store;
mod watch;

pub use error::{LoadError, Location, Problem, Span};
pub use loader::{LoadOptions, Loaded, MAX_POLICY_NESTING, Sources, build, load_dir, read_dir};
pub(crate) use loader::{describe, entity_uid, json_uid_and_parents, parse_problems, too_deep};
pub use shape::SchemaShape;
pub use snapshot::Snapshot;
pub use store::{PolicyStore, ReloadError, ReloadOutcome};
pub use watch::{WatchError, WatchOptions, Watcher};

/// Stack size for threads that parse or evaluate policies (tokio's workers, the watcher):
/// Cedar recurses over expressions, and the limits keep inputs well inside this.
pub const STACK_BYTES: usize = 8 * 1024 * 1024;

/// What to do with policies that fail validation against the schema at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PolicyValidation {
    /// Run Cedar's validator in strict mode and refuse a set that fails it.
    #[default]
    Strict,
    /// Load the set anyway and log each problem as a warning.
    Warn,
    /// Do not validate policies against the schema.
    Off,
}
