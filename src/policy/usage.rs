//! [`PolicyUsage`]: how many decisions each policy of a snapshot has determined since the
//! snapshot was loaded, for `cedar_pdp_policy_decisions_total` and for finding policies
//! that never decide anything (least-privilege reviews).
//!
//! Counts live with the snapshot, one pair of atomics per static policy, so they start at
//! zero with every reload and a removed policy's count goes with the snapshot that held
//! it. Counting a decision is a hash lookup and an atomic add per determining policy;
//! grouping into a bounded number of metric series happens only when `/metrics` is
//! scraped ([`PolicyUsage::series`]).

use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicU64, Ordering},
};

use cedar_policy::{Effect as CedarEffect, PolicySet};

use super::{FastMap, Location, loader::Catalog};

/// The label of the series that counts every policy past the cap.
pub const OTHER_SERIES: &str = "other";

/// One policy as the usage list reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyUse {
    /// Its id.
    pub id: String,
    /// `permit` or `forbid`.
    pub effect: &'static str,
    /// Whether its id comes from an `@id` annotation (else it is made from its file).
    pub named: bool,
    /// Where it is written, when known.
    pub location: Option<Location>,
    /// Allow decisions it determined.
    pub allow: u64,
    /// Deny decisions it determined.
    pub deny: u64,
}

impl PolicyUse {
    /// Whether it has determined no decision.
    pub fn unused(&self) -> bool {
        self.allow == 0 && self.deny == 0
    }
}

/// Decisions per determining policy of one snapshot.
#[derive(Debug)]
pub struct PolicyUsage {
    /// How a policy's id leads to its counts.
    slots: Slots,
    /// Per policy (by its number): [deny, allow].
    counts: Box<[[AtomicU64; 2]]>,
    /// Each static policy's id, effect, whether it is named, and number, sorted by id:
    /// for listing, worked out on the first list (a reload does not wait for it).
    sorted: OnceLock<Vec<Listed>>,
}

/// One policy as listed: id, effect, named by `@id`, number.
type Listed = (Box<str>, CedarEffect, bool, u32);

/// Where a policy's number comes from.
#[derive(Debug)]
enum Slots {
    /// A snapshot's catalog (its numbers: directory and text order).
    Catalog(Arc<Catalog>),
    /// A map of ids, for sets not read from a directory.
    Ids(FastMap<Box<str>, u32>),
}

impl PolicyUsage {
    /// Zero counts for every static policy of `set` (templates decide nothing until
    /// linked, and links are policies), for a set not read from a policy directory: a
    /// snapshot's policies no longer carry an `@id` that was their only annotation (the
    /// snapshot's own counts come from its catalog, which knows).
    pub fn new(set: &PolicySet) -> Self {
        let policies: Vec<(String, bool, bool)> = set
            .policies()
            .map(|p| {
                let named = super::loader::id_annotation(p.annotations()).is_some();
                (p.id().to_string(), p.effect() == CedarEffect::Permit, named)
            })
            .collect();
        Self::from_policies(policies.iter().map(|(id, p, n)| (id.as_str(), *p, *n)))
    }

    /// Zero counts for the static policies given as (id, permits, named by `@id`).
    pub fn from_policies<'a>(policies: impl Iterator<Item = (&'a str, bool, bool)>) -> Self {
        let mut sorted: Vec<Listed> = policies
            .enumerate()
            .map(|(i, (id, permit, named))| {
                let effect = if permit {
                    CedarEffect::Permit
                } else {
                    CedarEffect::Forbid
                };
                (
                    Box::from(id),
                    effect,
                    named,
                    u32::try_from(i).unwrap_or(u32::MAX),
                )
            })
            .collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let slots = sorted
            .iter()
            .map(|(id, _, _, n)| (id.clone(), *n))
            .collect();
        Self {
            slots: Slots::Ids(slots),
            counts: sorted.iter().map(|_| Default::default()).collect(),
            sorted: OnceLock::from(sorted),
        }
    }

    /// Zero counts for every policy of `catalog`: nothing is sorted or copied until the
    /// counts are first listed, so a reload of a large set does not wait for it.
    pub(crate) fn for_catalog(catalog: Arc<Catalog>) -> Self {
        Self {
            counts: (0..catalog.items()).map(|_| Default::default()).collect(),
            slots: Slots::Catalog(catalog),
            sorted: OnceLock::new(),
        }
    }

    /// The policies sorted by id, with their numbers.
    fn sorted(&self) -> &[Listed] {
        self.sorted.get_or_init(|| match &self.slots {
            Slots::Catalog(catalog) => {
                let mut sorted: Vec<Listed> = catalog
                    .static_policies()
                    .map(|(id, effect, named, n)| (Box::from(id.as_ref()), effect, named, n))
                    .collect();
                sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                sorted
            }
            // Sorted when made.
            Slots::Ids(_) => Vec::new(),
        })
    }

    /// The number of policy `id`.
    fn number(&self, id: &str) -> Option<u32> {
        match &self.slots {
            Slots::Catalog(catalog) => catalog.number(id),
            Slots::Ids(ids) => ids.get(id).copied(),
        }
    }

    /// Counts one decision (`allowed` or not) for each of its determining policies.
    pub fn count<'a>(&self, allowed: bool, determining: impl IntoIterator<Item = &'a String>) {
        for id in determining {
            if let Some(slot) = self.number(id)
                && let Some(pair) = self.counts.get(slot as usize)
            {
                pair[usize::from(allowed)].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Every policy with its counts, sorted by id; `locate` says where each is written.
    pub fn list<'s>(
        &'s self,
        locate: impl Fn(&str) -> Option<&'s Location> + 's,
    ) -> impl Iterator<Item = PolicyUse> + 's {
        self.list_after("", false, locate)
    }

    /// [`PolicyUsage::list`] from the first policy whose id sorts after `after` (all of
    /// them for `""`), only the unused ones when `unused_only`: a page of a long list,
    /// found without walking the ones before, filtered before anything is copied.
    pub fn list_after<'s>(
        &'s self,
        after: &str,
        unused_only: bool,
        locate: impl Fn(&str) -> Option<&'s Location> + 's,
    ) -> impl Iterator<Item = PolicyUse> + 's {
        let sorted = self.sorted();
        let start = if after.is_empty() {
            0
        } else {
            sorted.partition_point(|(id, _, _, _)| &**id <= after)
        };
        sorted[start..]
            .iter()
            .filter_map(|listed| Some((listed, self.counts.get(listed.3 as usize)?)))
            .filter(move |(_, [deny, allow])| {
                !unused_only
                    || (deny.load(Ordering::Relaxed) == 0 && allow.load(Ordering::Relaxed) == 0)
            })
            .map(move |((id, effect, named, _), [deny, allow])| PolicyUse {
                id: id.to_string(),
                effect: match effect {
                    CedarEffect::Permit => "permit",
                    CedarEffect::Forbid => "forbid",
                },
                named: *named,
                location: locate(id).cloned(),
                allow: allow.load(Ordering::Relaxed),
                deny: deny.load(Ordering::Relaxed),
            })
    }

    /// Number of policies counted.
    pub fn len(&self) -> usize {
        match &self.slots {
            Slots::Catalog(catalog) => catalog.statics(),
            Slots::Ids(ids) => ids.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The counts grouped into at most `max_series` metric series (plus [`OTHER_SERIES`]),
    /// as `(policy_id label, deny, allow)` in a stable order: a policy named by `@id` is a
    /// series of its own; policies without one are grouped by file (`<file>.*`, which
    /// their made-up ids start with); the series past the cap (in id order) add up into
    /// `other`. The same policies give the same series on every scrape.
    pub fn series(
        &self,
        max_series: usize,
        file_of: impl Fn(&str) -> Option<String>,
    ) -> Vec<(String, u64, u64)> {
        let mut series: Vec<(String, u64, u64)> = Vec::new();
        let mut index: FastMap<String, usize> = FastMap::default();
        let mut other = (0u64, 0u64);
        let mut overflow = false;
        let sorted = self.sorted();
        let counted = sorted
            .iter()
            .filter_map(|listed| Some((listed, self.counts.get(listed.3 as usize)?)));
        for ((id, _, named, _), [deny, allow]) in counted {
            let (deny, allow) = (deny.load(Ordering::Relaxed), allow.load(Ordering::Relaxed));
            let label = if *named {
                id.to_string()
            } else {
                match file_of(id) {
                    Some(file) => format!("{}.*", file.trim_end_matches(".cedar")),
                    None => id.to_string(),
                }
            };
            if let Some(&at) = index.get(&label) {
                series[at].1 += deny;
                series[at].2 += allow;
            } else if series.len() < max_series {
                index.insert(label.clone(), series.len());
                series.push((label, deny, allow));
            } else {
                overflow = true;
                other.0 += deny;
                other.1 += allow;
            }
        }
        if overflow {
            // A policy named `other` already has the series: the overflow adds to it, so
            // the exposition never holds one series twice.
            match index.get(OTHER_SERIES) {
                Some(&at) => {
                    series[at].1 += other.0;
                    series[at].2 += other.1;
                }
                None => series.push((OTHER_SERIES.to_owned(), other.0, other.1)),
            }
        }
        series
    }
}

#[cfg(test)]
mod tests {
    use cedar_policy::{Policy, PolicyId};

    use super::*;

    /// A set of `(id, text)` policies, each under its id as the loader gives them.
    fn set(policies: &[(&str, &str)]) -> PolicySet {
        let mut set = PolicySet::new();
        for (id, text) in policies {
            let policy = Policy::parse(Some(PolicyId::new(*id)), *text).expect("test policy");
            set.add(policy).expect("unique ids");
        }
        set
    }

    const ALL: &str = "permit(principal, action, resource);";

    #[test]
    fn counts_each_determining_policy_by_decision_and_ignores_unknown_ids() {
        let usage = PolicyUsage::new(&set(&[
            ("a", r#"@id("a") permit(principal, action, resource);"#),
            ("b", r#"@id("b") forbid(principal, action, resource);"#),
        ]));
        let (a, b, gone) = ("a".to_owned(), "b".to_owned(), "gone".to_owned());
        usage.count(true, [&a]);
        usage.count(true, [&a]);
        usage.count(false, [&b, &gone]);
        let listed: Vec<_> = usage.list(|_| None).collect();
        assert_eq!(
            listed
                .iter()
                .map(|p| (p.id.as_str(), p.effect, p.named, p.allow, p.deny))
                .collect::<Vec<_>>(),
            [("a", "permit", true, 2, 0), ("b", "forbid", true, 0, 1)]
        );
        assert!(!listed[0].unused());
        let after_a: Vec<String> = usage
            .list_after("a", false, |_| None)
            .map(|p| p.id)
            .collect();
        assert_eq!(after_a, ["b"]);
        assert_eq!(usage.list_after("b", false, |_| None).count(), 0);
        usage.count(true, [&b]);
        let unused = PolicyUsage::new(&set(&[
            ("a", r#"@id("a") permit(principal, action, resource);"#),
            ("z", r#"@id("z") permit(principal, action, resource);"#),
        ]));
        unused.count(true, [&a]);
        let ids: Vec<String> = unused
            .list_after("", true, |_| None)
            .map(|p| p.id)
            .collect();
        assert_eq!(ids, ["z"]);
    }

    #[test]
    fn series_group_unnamed_policies_by_file_and_cap_the_rest_into_other() {
        let named = |id: &str| format!("@id(\"{id}\") {ALL}");
        let (a, b, c) = (named("a"), named("b"), named("c"));
        let usage = PolicyUsage::new(&set(&[
            ("a", &a),
            ("b", &b),
            ("c", &c),
            ("t/x.0", ALL),
            ("t/x.1", ALL),
        ]));
        usage.count(true, [&"t/x.0".to_owned(), &"t/x.1".to_owned()]);
        usage.count(true, [&"c".to_owned()]);
        let file_of = |id: &str| id.starts_with("t/").then(|| "t/x.cedar".to_owned());
        let all = usage.series(10, file_of);
        assert_eq!(
            all,
            [
                ("a".to_owned(), 0, 0),
                ("b".to_owned(), 0, 0),
                ("c".to_owned(), 0, 1),
                ("t/x.*".to_owned(), 0, 2),
            ]
        );
        let capped = usage.series(2, file_of);
        assert_eq!(
            capped,
            [
                ("a".to_owned(), 0, 0),
                ("b".to_owned(), 0, 0),
                ("other".to_owned(), 0, 3),
            ]
        );
    }

    #[test]
    fn a_policy_named_other_shares_the_overflow_series_never_a_second_one() {
        let (a, other, z) = (
            r#"@id("a") permit(principal, action, resource);"#,
            r#"@id("other") permit(principal, action, resource);"#,
            r#"@id("z") permit(principal, action, resource);"#,
        );
        let usage = PolicyUsage::new(&set(&[("a", a), ("other", other), ("z", z)]));
        usage.count(true, [&"other".to_owned(), &"z".to_owned()]);
        let series = usage.series(2, |_| None);
        assert_eq!(series, [("a".to_owned(), 0, 0), ("other".to_owned(), 0, 2)]);
    }
}
