//! cedar-pdp: a policy decision point that answers allow or deny by evaluating Cedar
//! policies kept as files on disk, served over gRPC.
//!
//! # Layout
//! A request flows top to bottom and its answer back up; a module imports only the ones
//! below it (`config` and `telemetry` sit beside the rest and import no module above them,
//! `config` none at all).
//! - [`server`]: the library's `run`: store, watcher, telemetry, listeners, SIGHUP and
//!   the shutdown order; what `serve`, the tests, the benchmarks and the fuzz target start.
//! - [`api`]: the front ends (`cedarpdp.v1`, Envoy's ext_authz), each a wire adapter
//!   around [`decide`], and the transport under them (the gRPC port, TLS, admission, the
//!   metrics endpoint).
//! - [`authoring`]: `validate`, `test`, `authorize` and `fmt` for policy authors, deciding
//!   through the same [`decide`] step as the server.
//! - [`decide`]: the one protocol-neutral step: a call's questions → the engine → a
//!   decision or a refusal, with metrics, audit records and logs written from it.
//! - [`engine`]: snapshot + query → decision; request conversion and validation, policy
//!   and entity slicing and the slice cache. Synchronous, knows nothing of the wire.
//! - [`policy`]: reads a policy directory into an immutable [`policy::Snapshot`] (with its
//!   scope index), holds the serving one in a [`policy::PolicyStore`] and rebuilds it
//!   when the files change ([`policy::Watcher`]).
//! - [`telemetry`]: metric names and the registry, the audit log, log setup.
//! - [`config`]: the one [`config::Config`], layered file < environment < flags; plain
//!   values only.
//! - [`proto`]: code generated from `proto/` by `build.rs`, and the codec it uses.

pub mod api;
pub mod authoring;
pub mod config;
pub mod decide;
pub mod engine;
pub mod policy;
pub mod proto;
pub mod server;
pub mod telemetry;

pub use config::Config;
