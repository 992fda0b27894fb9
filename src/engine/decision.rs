//! [`Decision`]: what the engine answers for a query it decided.
//!
//! An allow can only be built here, by [`Decision::evaluated`], from Cedar's own answer
//! on a policy set in which no forbid errored (the engine checks that first); everything
//! else a front end can make of a request (a refusal, a timeout, a failure) is a deny or
//! a refusal. Front ends read a decision; they cannot write one.

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
#[derive(Debug, Clone)]
pub struct Decision {
    effect: Effect,
    determining_policies: Vec<String>,
    errors: Vec<PolicyError>,
    /// Forbids that errored and so denied (`on_forbid_error = "deny"`), sorted.
    erroring_forbids: Vec<String>,
    /// How many policies Cedar evaluated (the slice of the set the request can match).
    policies_evaluated: usize,
    /// Answered from the decision cache: the same decision as made before, not
    /// evaluated again (see `engine::cache`).
    reused: bool,
}

/// Two decisions are the same when they say the same: how many policies it took to reach
/// one (with or without slicing), and whether it came from the cache, is not part of it.
impl PartialEq for Decision {
    fn eq(&self, other: &Self) -> bool {
        self.effect == other.effect
            && self.determining_policies == other.determining_policies
            && self.errors == other.errors
            && self.erroring_forbids == other.erroring_forbids
    }
}

impl Eq for Decision {}

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
            erroring_forbids: Vec::new(),
            policies_evaluated: 0,
            reused: false,
        }
    }

    /// Notes that `n` policies were evaluated to reach it.
    pub(super) fn after_evaluating(mut self, n: usize) -> Self {
        self.policies_evaluated = n;
        self
    }

    /// How many policies were evaluated to reach it.
    pub fn policies_evaluated(&self) -> usize {
        self.policies_evaluated
    }

    /// Whether it was answered from the decision cache rather than evaluated.
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// The same decision, noted as answered from the decision cache.
    pub(super) fn into_reused(mut self) -> Self {
        self.reused = true;
        self
    }

    /// A deny made by forbids whose evaluation errored (`erroring_forbids`, at least
    /// one), with the `satisfied` forbids if any: all of them determine it.
    pub(super) fn denied_by_error(
        satisfied: Vec<String>,
        mut erroring_forbids: Vec<String>,
        errors: Vec<PolicyError>,
    ) -> Self {
        erroring_forbids.sort_unstable();
        erroring_forbids.dedup();
        let mut determining = satisfied;
        determining.extend(erroring_forbids.iter().cloned());
        let mut decision = Self::evaluated(false, determining, errors);
        decision.determining_policies.dedup();
        decision.erroring_forbids = erroring_forbids;
        decision
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

    /// The forbids whose evaluation errored and so made this a deny (with
    /// `on_forbid_error = "deny"`); empty otherwise.
    pub fn erroring_forbids(&self) -> &[String] {
        &self.erroring_forbids
    }
}
