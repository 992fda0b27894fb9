//! The costliest requests the limits admit: a call that sends a layered group graph
//! (every group of one layer a member of every group of the next, the shape that makes
//! Cedar's closure quadratic in the edges), at widths and depths around the default
//! `max_request_parent_edges` and `max_request_ancestor_closure`, decided as the server
//! decides (the decide step over the example policy set, request entities added).
//!
//! For each shape it prints the edges and closure steps the limits see, whether the
//! defaults admit it, and the time to decide it — with the limits lifted for the shapes
//! they refuse, to show what they keep out.
//!
//! Run: `cargo bench --bench hostile` (optionally `-- <iterations>`, default 50).

mod support;

use std::{path::PathBuf, time::Instant};

use cedar_pdp::{
    config::{Config, Limits},
    decide::{Api, ContextInput, Decider, EntitiesInput, EntityInput, Query, Question, Telemetry},
    policy::{LoadOptions, PolicyStore, hierarchy},
    telemetry::Metrics,
};
use cedar_policy::{EntityUid, RestrictedExpression};
use support::*;

/// `count` new users, each in `per_user` stored groups (each with ancestors of its own).
fn in_stored_groups(count: usize, per_user: usize) -> Vec<EntityInput> {
    let groups = ["acme-engineering", "acme-roadmap-editors", "acme-auditors"];
    let mut users: Vec<EntityInput> = (0..count)
        .map(|i| {
            let parents = groups[..per_user]
                .iter()
                .map(|g| uid(&format!("Platform::Group::\"{g}\"")))
                .collect();
            acme_user(&format!("u{i}"), parents)
        })
        .collect();
    users.push(acme_user("intruder", Vec::new()));
    users
}

/// A new user in every group of the first of `layers` layers of `width` new groups.
fn layered(width: usize, layers: usize) -> Vec<EntityInput> {
    let group = |layer: usize, i: usize| uid(&format!("Platform::Group::\"l{layer}-{i}\""));
    let acme = || RestrictedExpression::new_entity_uid(uid(r#"Platform::Tenant::"acme""#));
    let mut entities: Vec<EntityInput> = (0..layers)
        .flat_map(|layer| {
            (0..width).map(move |i| EntityInput {
                uid: group(layer, i),
                attrs: vec![("tenant".to_owned(), acme())],
                parents: if layer + 1 < layers {
                    (0..width).map(|j| group(layer + 1, j)).collect()
                } else {
                    Vec::new()
                },
                tags: Vec::new(),
            })
        })
        .collect();
    entities.push(acme_user(
        "intruder",
        (0..width).map(|i| group(0, i)).collect(),
    ));
    entities
}

fn question() -> Question {
    Question::from(Query {
        principal: uid(r#"Platform::User::"intruder""#),
        action: uid(r#"Platform::Action::"read""#),
        resource: uid(r#"Platform::Document::"acme-roadmap-q3""#),
        context: ContextInput::Json(String::new()),
    })
}

/// The edges and closure steps the limits measure for `entities` over `stored`.
fn measured(entities: &[EntityInput], stored: &cedar_policy::Entities) -> (usize, usize) {
    let nodes: Vec<_> = entities
        .iter()
        .map(|e| (e.uid.clone(), e.parents.clone()))
        .collect();
    let edges = nodes.iter().map(|(_, p)| p.len()).sum();
    let outside = |u: &EntityUid| stored.ancestors(u).map_or(0, Iterator::count);
    let steps = hierarchy::closure(&nodes, outside, usize::MAX, usize::MAX).unwrap();
    (edges, steps)
}

fn main() {
    let iterations = iterations_arg(50);
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"));
    let (store, _) = PolicyStore::open(&dir, LoadOptions::default()).expect("the example set");
    let snapshot = store.current();
    let deciders = |limits: Limits| {
        let config = Config {
            limits,
            ..Config::default()
        };
        Decider::for_config(&config, Telemetry::metrics_only(Metrics::new()))
    };
    let defaults = Limits::default();
    let admitting = deciders(defaults.clone());
    let lifted = deciders(Limits {
        max_request_parent_edges: usize::MAX,
        max_request_ancestor_closure: usize::MAX,
        max_request_entities: usize::MAX,
        max_ancestor_depth: usize::MAX,
        ..Limits::default()
    });
    println!(
        "limits: max_request_entities {}, max_request_parent_edges {}, \
         max_request_ancestor_closure {}; {iterations} calls per shape",
        defaults.max_request_entities,
        defaults.max_request_parent_edges,
        defaults.max_request_ancestor_closure
    );
    println!(
        "{:<30} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "shape", "edges", "steps", "admitted", "p50 ms", "max ms"
    );
    let only = std::env::var("SHAPE").ok();
    let mut shapes: Vec<(String, Vec<EntityInput>)> = [
        (44, 2),
        (20, 3),
        (12, 5),
        (7, 10),
        (4, 20),
        (2, 60),
        (50, 2),
        (10, 10),
        (20, 10),
        (10, 60),
        (30, 30),
    ]
    .into_iter()
    .map(|(width, layers)| {
        (
            format!("layered {width} x {layers}"),
            layered(width, layers),
        )
    })
    .collect();
    for (users, groups) in [(499, 0), (499, 2), (499, 3), (999, 2)] {
        let name = format!("{users} users in {groups} stored groups");
        shapes.push((name, in_stored_groups(users, groups)));
    }
    for (name, entities) in shapes {
        if only
            .as_ref()
            .is_some_and(|only| !name.contains(only.as_str()))
        {
            continue;
        }
        let (edges, steps) = measured(&entities, snapshot.entities());
        let decide = |decider: &Decider| {
            let call = decider.start(Api::IsAuthorized, None, None);
            decider.decide(
                &call,
                &snapshot,
                EntitiesInput::Typed(entities.clone()),
                question(),
            )
        };
        let admitted = decide(&admitting).is_ok();
        let decider = if admitted { &admitting } else { &lifted };
        // A shape the defaults refuse is timed fewer times: it can take seconds.
        let runs = if admitted { iterations } else { 3 };
        let mut samples: Vec<_> = (0..runs)
            .map(|_| {
                let started = Instant::now();
                decide(decider).expect("decided with the limits lifted");
                started.elapsed()
            })
            .collect();
        samples.sort_unstable();
        println!(
            "{:<30} {:>8} {:>10} {:>10} {:>10.2} {:>10.2}",
            name,
            edges,
            steps,
            if admitted { "yes" } else { "refused" },
            at(&samples, 0.5).as_secs_f64() * 1e3,
            samples.last().unwrap().as_secs_f64() * 1e3,
        );
    }
}
