//! Checks an entity hierarchy's shape before Cedar sees it.
//!
//! Cedar computes the transitive closure of the parent relation when it builds an entity
//! store; its cost grows far faster than the chain length, a long enough chain overflows
//! a worker thread's stack, and a layered graph (every group of one layer a member of
//! every group of the next) makes it quadratic in the edges. So before Cedar sees a
//! hierarchy, three things are measured here, each with work bounded by its limit: the
//! longest parent chain ([`check`], an iterative walk that cannot overflow), the parent
//! edges, and the closure Cedar would work out ([`closure`]). Used for the policy
//! directory's `entities.json` and for each call's entities alike.

use std::{collections::HashMap, fmt::Display, hash::Hash};

/// Why a hierarchy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HierarchyError {
    /// Some entity has more than `limit` ancestors in a line.
    #[error("entity {entity} has a parent chain longer than the limit of {limit}")]
    TooDeep {
        /// The entity at the bottom of the chain.
        entity: String,
        /// The configured limit.
        limit: usize,
    },
    /// Following parents leads back to where it started.
    #[error("entity {entity} is its own ancestor (the parent relation has a cycle)")]
    Cycle {
        /// An entity on the cycle.
        entity: String,
    },
}

/// Checks that no chain of parents among `nodes` is longer than `limit` and that there is
/// no cycle. Parents that are not among `nodes` end a chain. Linear in nodes plus edges.
pub fn check<K>(nodes: &[(K, Vec<K>)], limit: usize) -> Result<(), HierarchyError>
where
    K: Hash + Eq + Display,
{
    let index: HashMap<&K, usize> = nodes.iter().enumerate().map(|(i, (k, _))| (k, i)).collect();
    // depth[i]: None = unvisited, Some(None) = on the current path, Some(Some(d)) = done.
    let mut depth: Vec<Option<Option<usize>>> = vec![None; nodes.len()];
    let mut stack: Vec<(usize, usize)> = Vec::new(); // (node, next parent to look at)
    for start in 0..nodes.len() {
        if depth[start].is_some() {
            continue;
        }
        depth[start] = Some(None);
        stack.push((start, 0));
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let parents = &nodes[node].1;
            if let Some(parent) = parents.get(*next) {
                *next += 1;
                let Some(&p) = index.get(parent) else {
                    continue;
                };
                match depth[p] {
                    None => {
                        depth[p] = Some(None);
                        stack.push((p, 0));
                    }
                    Some(None) => {
                        return Err(HierarchyError::Cycle {
                            entity: nodes[p].0.to_string(),
                        });
                    }
                    Some(Some(_)) => {}
                }
            } else {
                let d = parents
                    .iter()
                    .map(|parent| match index.get(parent) {
                        Some(&p) => depth[p].flatten().map_or(0, |d| d + 1),
                        None => 1,
                    })
                    .max()
                    .unwrap_or(0);
                if d > limit {
                    return Err(HierarchyError::TooDeep {
                        entity: nodes[node].0.to_string(),
                        limit,
                    });
                }
                depth[node] = Some(Some(d));
                stack.pop();
            }
        }
    }
    Ok(())
}

/// A hierarchy whose transitive closure would cost more than the limit to work out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClosureError {
    /// More parent edges than the limit.
    #[error("{edges} parent edges is more than the limit of {limit}")]
    Edges {
        /// The edges counted.
        edges: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Working out every entity's ancestors takes more steps than the limit.
    #[error(
        "working out the entities' ancestors takes more than {limit} steps (each ancestor \
         reached through each parent edge counts one)"
    )]
    Closure {
        /// The configured limit.
        limit: usize,
    },
}

/// Measures what working out the ancestors of every entity of `nodes` costs, refusing
/// past `max_edges` parent edges or `max_closure` steps; the steps taken when within both.
///
/// A step is an ancestor reached through a parent edge: for each entity, every parent
/// edge out of it and out of each of its ancestors among `nodes` counts one, and a parent
/// not among `nodes` (a stored entity) counts one plus `outside(parent)`, its own
/// ancestors (already worked out in the store). In a forest that is the number of (entity,
/// ancestor) pairs, the size of the closure; where ancestors are shared along several
/// paths (a layered graph) it counts the extra paths too, as Cedar's walk does. The
/// measuring stops as soon as a limit is passed, so it never costs more than the limits.
/// `nodes` must have no cycle ([`check`] first).
pub fn closure<K>(
    nodes: &[(K, Vec<K>)],
    outside: impl Fn(&K) -> usize,
    max_edges: usize,
    max_closure: usize,
) -> Result<usize, ClosureError>
where
    K: Hash + Eq,
{
    let edges: usize = nodes.iter().map(|(_, parents)| parents.len()).sum();
    if edges > max_edges {
        return Err(ClosureError::Edges {
            edges,
            limit: max_edges,
        });
    }
    let index: HashMap<&K, usize> = nodes.iter().enumerate().map(|(i, (k, _))| (k, i)).collect();
    // Stamped visits: `seen[i] == start + 1` when node i was reached from `start`.
    let mut seen = vec![0usize; nodes.len()];
    let mut stack: Vec<usize> = Vec::new();
    let mut steps = 0usize;
    for start in 0..nodes.len() {
        let stamp = start + 1;
        seen[start] = stamp;
        stack.push(start);
        while let Some(node) = stack.pop() {
            for parent in &nodes[node].1 {
                steps = match index.get(parent) {
                    Some(&p) => {
                        if seen[p] != stamp {
                            seen[p] = stamp;
                            stack.push(p);
                        }
                        steps.saturating_add(1)
                    }
                    None => steps.saturating_add(1).saturating_add(outside(parent)),
                };
                if steps > max_closure {
                    return Err(ClosureError::Closure { limit: max_closure });
                }
            }
        }
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<(String, Vec<String>)> {
        (0..n)
            .map(|i| (format!("e{i}"), vec![format!("e{}", i + 1)]))
            .collect()
    }

    #[test]
    fn a_chain_at_the_limit_passes_and_one_longer_fails() {
        // n nodes each pointing at the next, the last at an unknown parent: n edges.
        assert_eq!(check(&chain(5), 5), Ok(()));
        assert_eq!(
            check(&chain(6), 5),
            Err(HierarchyError::TooDeep {
                entity: "e0".into(),
                limit: 5
            })
        );
    }

    #[test]
    fn a_very_long_chain_is_refused_without_recursion() {
        assert!(matches!(
            check(&chain(200_000), 64),
            Err(HierarchyError::TooDeep { .. })
        ));
        assert_eq!(check(&chain(200_000), 1_000_000), Ok(()));
    }

    #[test]
    fn cycles_are_found() {
        let nodes = vec![
            ("a".to_string(), vec!["b".to_string()]),
            ("b".to_string(), vec!["c".to_string()]),
            ("c".to_string(), vec!["a".to_string()]),
        ];
        assert!(matches!(
            check(&nodes, 10),
            Err(HierarchyError::Cycle { .. })
        ));
    }

    /// `layers` layers of `width` nodes, each a member of every node of the next layer.
    fn layered(width: usize, layers: usize) -> Vec<(String, Vec<String>)> {
        let name = |layer: usize, i: usize| format!("g{layer}-{i}");
        (0..layers)
            .flat_map(|layer| {
                (0..width).map(move |i| {
                    let parents = if layer + 1 < layers {
                        (0..width).map(|j| name(layer + 1, j)).collect()
                    } else {
                        Vec::new()
                    };
                    (name(layer, i), parents)
                })
            })
            .collect()
    }

    #[test]
    fn a_forest_costs_its_closure_and_stored_ancestors_count_too() {
        // a -> b -> c, and c's parent is a stored entity with 3 ancestors of its own.
        let nodes = vec![
            ("a".to_string(), vec!["b".to_string()]),
            ("b".to_string(), vec!["c".to_string()]),
            ("c".to_string(), vec!["stored".to_string()]),
        ];
        let outside = |k: &String| if k == "stored" { 3 } else { 0 };
        // a: b, c, stored+3 = 6; b: c, stored+3 = 5; c: stored+3 = 4.
        assert_eq!(closure(&nodes, outside, 10, 100), Ok(15));
        assert_eq!(
            closure(&nodes, outside, 10, 14),
            Err(ClosureError::Closure { limit: 14 })
        );
        assert_eq!(
            closure(&nodes, outside, 2, 100),
            Err(ClosureError::Edges { edges: 3, limit: 2 })
        );
    }

    #[test]
    fn a_layered_graph_costs_its_paths_and_is_refused_early() {
        // Width 2, 3 layers: a bottom node reaches 2 + 2·2 = 6 steps, a middle one 2.
        assert_eq!(closure(&layered(2, 3), |_| 0, 100, 100), Ok(2 * 6 + 2 * 2));
        // 100 wide and 100 deep would be about 50 million steps; the limit stops it.
        let big = layered(100, 100);
        assert_eq!(
            closure(&big, |_| 0, usize::MAX, 1_000_000),
            Err(ClosureError::Closure { limit: 1_000_000 })
        );
    }

    #[test]
    fn diamonds_are_not_cycles() {
        let nodes = vec![
            ("a".to_string(), vec!["b".to_string(), "c".to_string()]),
            ("b".to_string(), vec!["d".to_string()]),
            ("c".to_string(), vec!["d".to_string()]),
            ("d".to_string(), vec![]),
        ];
        assert_eq!(check(&nodes, 2), Ok(()));
        assert!(check(&nodes, 1).is_err());
    }
}
