//! cedar-pdp: a policy decision point that answers allow or deny by evaluating Cedar
//! policies kept as files on disk, served over gRPC.
//!
//! # Layout
//! Data flows top to bottom; each module only depends on the ones below it.
//! - [`api`]: tonic services (`cedarpdp.v1.Authorizer`, health, reflection) and the server
//!   loop; maps wire types to engine types and engine errors to gRPC status.
//! - [`authoring`]: `validate`, `test`, `authorize` and `fmt` for policy authors, on the
//!   same loader and engine the server uses.
//! - [`engine`]: snapshot + request → decision. Synchronous, knows nothing about gRPC.
//! - [`policy`]: reads a policy directory into an immutable [`policy::Snapshot`] and holds
//!   the serving one in a [`policy::PolicyStore`].
//! - [`config`]: the one [`config::Config`], layered file < environment < flags.
//! - [`telemetry`]: tracing setup, metrics and the audit log.
//! - [`proto`]: code generated from `proto/` by `build.rs`.

pub mod api;
pub mod authoring;
pub mod config;
pub mod engine;
pub mod policy;
pub mod proto;
pub mod telemetry;
pub mod tls;

pub use config::Config;
