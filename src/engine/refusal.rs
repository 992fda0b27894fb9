//! [`Refusal`]: a request that is not decided, and why. Every front end answers one with
//! a deny or an error status naming the field at fault, never with an allow.

use std::fmt;

pub use crate::telemetry::metrics::Reason;

/// A request refused before any policy decided it; `field` names the input at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    reason: Reason,
    field: String,
    message: String,
}

impl Refusal {
    /// A refusal for `reason`, naming `field`.
    pub fn new(reason: Reason, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason,
            field: field.into(),
            message: message.into(),
        }
    }

    /// The input is malformed or does not match the schema.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Reason::Invalid, field, message)
    }

    /// The input is past a configured limit.
    pub fn limit(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Reason::Limit, field, message)
    }

    /// Why it was refused.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// The request field at fault, e.g. `context.mfa` or `entities[2]` (never the value
    /// sent, which may be a secret).
    pub fn field(&self) -> &str {
        &self.field
    }

    /// What is wrong with it (may quote what was sent: not for logs).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same refusal, its field placed under `prefix` (e.g. `items[3]`).
    pub fn within(self, prefix: &str) -> Self {
        self.map_field(|field| format!("{prefix}.{field}"))
    }

    /// The same refusal with its field renamed by `rename` (e.g. a wire name to the name
    /// the caller wrote).
    pub fn map_field(self, rename: impl FnOnce(String) -> String) -> Self {
        Self {
            field: rename(self.field),
            ..self
        }
    }
}

impl fmt::Display for Refusal {
    /// `field: message`, or the message alone when no field is at fault.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for Refusal {}
