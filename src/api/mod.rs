//! The network surface: the front ends and the transport under them. This is the only
//! module that knows tonic, hyper or rustls.
//!
//! - Front ends, each a wire adapter around `decide`: [`AuthorizerService`]
//!   (`cedarpdp.v1`, [`authorizer`] with [`convert`]) and [`ExtAuthzService`] (Envoy's
//!   `envoy.service.auth.v3.Authorization`, [`ext_authz`]); a refusal becomes a status in
//!   one place ([`status`]), and request ids travel as metadata ([`request_id`]).
//! - The gRPC port that serves them with health and reflection ([`grpc`]): connections
//!   accepted plaintext or TLS under a cap ([`incoming`], [`tls`]), served by hyper
//!   ([`connections`]), each call admitted against the concurrency limit and its deadline
//!   ([`admission`]), callers checked against allow-lists ([`callers`]).
//! - The Prometheus `/metrics`, `/healthz` and `/readyz` endpoint on a port of its own
//!   ([`metrics_endpoint`]).

mod admission;
mod authorizer;
pub mod authzen;
mod callers;
mod connections;
mod convert;
pub mod ext_authz;
pub mod grpc;
pub mod incoming;
pub mod metrics_endpoint;
pub mod request_id;
mod status;
pub mod tls;

pub use admission::CallSlots;
pub use authorizer::AuthorizerService;
pub use authzen::AuthzenPort;
pub use callers::CallerPolicy;
pub use ext_authz::ExtAuthzService;
pub use grpc::{GrpcError, GrpcPort};
pub use metrics_endpoint::serve_metrics;
