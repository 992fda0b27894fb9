//! [`Decision`]: what the engine answers for a query it decided.
//!
//! An allow can only be built here, by [`Decision::evaluated`], from Cedar's own answer
//! on a policy set; everything else a front end can make of a request (a refusal, a
//! timeout, a failure) is a deny or a refusal. Front ends read a decision; they cannot
//! write one.

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Some permit is satisfied and no forbid is.
    Allow,
    /// Anything else.
    Deny,
}

impl Effect {
    /// `allow` or `deny`, as metrics, logs and audit records write it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

/// An error inside one policy during evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The policy that errored.
    pub policy_id: String,
    /// What went wrong.
    pub message: String,
}

/// The answer to one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    effect: Effect,
    determining_policies: Vec<String>,
    errors: Vec<PolicyError>,
}

impl Decision {
    /// The decision Cedar made on a policy set: `allowed` and its reasons and errors,
    /// each sorted (by policy id).
    pub(super) fn evaluated(
        allowed: bool,
        mut determining_policies: Vec<String>,
        mut errors: Vec<PolicyError>,
    ) -> Self {
        determining_policies.sort_unstable();
        errors.sort_unstable_by(|a, b| a.policy_id.cmp(&b.policy_id));
        Self {
            effect: if allowed { Effect::Allow } else { Effect::Deny },
            determining_policies,
            errors,
        }
    }

    /// Allow or deny.
    pub fn effect(&self) -> Effect {
        self.effect
    }

    /// Whether it allows.
    pub fn allowed(&self) -> bool {
        self.effect == Effect::Allow
    }

    /// The satisfied forbids (deny) or permits (allow), sorted; empty for a default deny.
    pub fn determining_policies(&self) -> &[String] {
        &self.determining_policies
    }

    /// Policies whose evaluation errored, sorted by policy id.
    pub fn errors(&self) -> &[PolicyError] {
        &self.errors
    }
}
