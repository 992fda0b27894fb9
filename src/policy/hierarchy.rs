//! Checks an entity hierarchy's shape before Cedar sees it.
//!
//! Cedar computes the transitive closure of the parent relation when it builds an entity
//! store; its cost grows far faster than the chain length and a long enough chain
//! overflows a worker thread's stack. So the longest parent chain is measured here, with
//! an iterative walk that cannot overflow, and refused past a limit. Used for the policy
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
