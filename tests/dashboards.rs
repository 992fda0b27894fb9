//! The Grafana dashboard and the Prometheus alert rules under `helm/cedar-pdp/` only query
//! metrics the real server exports, so a renamed metric cannot leave a panel or an alert
//! silently empty.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use serde_json::Value as Json;

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/helm/cedar-pdp/dashboards/cedar-pdp.json"
);
const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/helm/cedar-pdp/alerts/cedar-pdp-rules.yaml"
);

const ALERTS: [&str; 7] = [
    "CedarPdpPolicyReloadFailing",
    "CedarPdpPolicyFilesNotServed",
    "CedarPdpNoSuccessfulReload",
    "CedarPdpDenyRateSpike",
    "CedarPdpErrorRate",
    "CedarPdpHighLatencyP99",
    "CedarPdpAuditRecordsDropped",
];

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

fn dashboard() -> Json {
    serde_json::from_str(&read(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD} is not valid JSON: {e}"))
}

/// Whether `b` can be part of a PromQL metric name.
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

/// Every `cedar_pdp_[a-z0-9_]+` token in `text`: the prefix starts a name (it is not the
/// tail of a longer one) and is followed by at least one more character.
fn metric_names(text: &str) -> BTreeSet<String> {
    const PREFIX: &str = "cedar_pdp_";
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut from = 0;
    while let Some(at) = text[from..].find(PREFIX) {
        let start = from + at;
        let mut end = start + PREFIX.len();
        while end < bytes.len() && matches!(bytes[end], b'a'..=b'z' | b'0'..=b'9' | b'_') {
            end += 1;
        }
        let starts_a_name = start == 0 || !is_name_byte(bytes[start - 1]);
        if starts_a_name && end > start + PREFIX.len() {
            names.insert(text[start..end].to_owned());
        }
        from = end;
    }
    names
}

/// The PromQL strings of a dashboard: each panel target's `expr`, and each template
/// variable's `query` and `definition`, wherever they are nested.
fn dashboard_queries(json: &Json, out: &mut Vec<String>) {
    match json {
        Json::Object(fields) => {
            for (key, value) in fields {
                match (key.as_str(), value) {
                    ("expr" | "query" | "definition", Json::String(text)) => {
                        out.push(text.clone());
                    }
                    _ => dashboard_queries(value, out),
                }
            }
        }
        Json::Array(items) => items.iter().for_each(|item| dashboard_queries(item, out)),
        _ => {}
    }
}

/// The `expr:` values of a rules file, read as text: the rest of the `expr:` line and
/// every following line indented deeper than the key (a `|` or `>` block, or a plain
/// scalar continued on the next lines).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let indent = |line: &str| line.len() - line.trim_start().len();
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        let key = line.trim_start().trim_start_matches("- ");
        let Some(rest) = key.strip_prefix("expr:") else {
            continue;
        };
        let mut expr = rest.trim().to_owned();
        while i < lines.len() && (lines[i].trim().is_empty() || indent(lines[i]) > indent(line)) {
            expr.push('\n');
            expr.push_str(lines[i].trim());
            i += 1;
        }
        exprs.push(expr);
    }
    exprs
}

/// `# TYPE <name> <kind>` lines of a Prometheus text exposition: name → kind.
fn exported_families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("# TYPE ")?.split_whitespace();
            Some((words.next()?.to_owned(), words.next()?.to_owned()))
        })
        .collect()
}

/// Why `name` does not query an exported series, or `None` when it does. A histogram's
/// series are its family name with `_bucket`, `_sum` or `_count`; the bare family name
/// of a histogram has no series of its own.
fn problem(name: &str, families: &BTreeMap<String, String>) -> Option<String> {
    match families.get(name).map(String::as_str) {
        Some("histogram") => Some(format!(
            "{name} (a histogram: query {name}_bucket, _sum or _count)"
        )),
        Some(_) => None,
        None => {
            let of_histogram = ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .and_then(|family| families.get(family))
                    .is_some_and(|kind| kind == "histogram")
            });
            (!of_histogram).then(|| format!("{name} (not exported)"))
        }
    }
}

#[test]
fn the_scanner_finds_whole_metric_names() {
    let names = metric_names(
        "sum(rate(cedar_pdp_a_total{x=\"y\"}[5m])) / xcedar_pdp_b + job:cedar_pdp_c \
         cedar_pdp_ cedar_pdp_d_bucket",
    );
    let expected: BTreeSet<String> = ["cedar_pdp_a_total", "cedar_pdp_d_bucket"]
        .map(String::from)
        .into();
    assert_eq!(names, expected);
}

#[test]
fn the_rules_reader_finds_inline_and_block_exprs() {
    let yaml = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n        \
                for: 5m\n      - alert: B\n        expr: |\n          sum(x)\n\n          > 1\n        \
                labels: {}\n";
    assert_eq!(rule_exprs(yaml), ["up == 0", "|\nsum(x)\n\n> 1"]);
}

#[tokio::test]
async fn dashboard_and_alerts_query_only_exported_metrics() {
    // Every optional family on: a shadow set exports its own.
    let server = TestServer::start_with(cedar_pdp::Config {
        policies: example_policies(),
        shadow: cedar_pdp::config::ShadowConfig {
            policies: Some(example_policies()),
            ..Default::default()
        },
        ..cedar_pdp::Config::default()
    })
    .await;
    let exposition = server.metrics_text().await;
    server.stop().await;
    let families = exported_families(&exposition);
    assert!(
        families.keys().any(|name| name.starts_with("cedar_pdp_")),
        "no cedar_pdp_ family in /metrics:\n{exposition}"
    );

    let mut queries = Vec::new();
    dashboard_queries(&dashboard(), &mut queries);
    let exprs = rule_exprs(&read(RULES));
    assert!(
        exprs.len() >= ALERTS.len(),
        "expected an expr per alert in {RULES}, found {}: {exprs:#?}",
        exprs.len()
    );

    let mut problems = Vec::new();
    for (file, texts) in [(DASHBOARD, &queries), (RULES, &exprs)] {
        let names: BTreeSet<String> = texts.iter().flat_map(|t| metric_names(t)).collect();
        assert!(
            names.len() >= 5,
            "{file} queries only {names:?}; is the scanner finding its expressions?"
        );
        problems.extend(
            names
                .iter()
                .filter_map(|name| problem(name, &families))
                .map(|p| format!("{file}: {p}")),
        );
    }
    assert!(
        problems.is_empty(),
        "metric names the server does not export:\n  {}\n\nexported families: {:?}",
        problems.join("\n  "),
        families.keys().collect::<Vec<_>>()
    );
}

/// Every non-row panel, including those inside collapsed rows.
fn panels(dashboard: &Json) -> Vec<&Json> {
    let mut found = Vec::new();
    for panel in dashboard["panels"].as_array().expect("a panels array") {
        if panel["type"] == "row" {
            found.extend(panel["panels"].as_array().into_iter().flatten());
        } else {
            found.push(panel);
        }
    }
    found
}

#[test]
fn dashboard_has_its_panels_and_variables() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "cedar-pdp");
    assert_eq!(dashboard["title"], "cedar-pdp");
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("a templating list")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for name in ["datasource", "job"] {
        assert!(
            variables.contains(&name),
            "no ${name} variable: {variables:?}"
        );
    }

    let panels = panels(&dashboard);
    let ids: BTreeSet<i64> = panels.iter().filter_map(|p| p["id"].as_i64()).collect();
    let titles: BTreeSet<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids must be distinct");
    assert_eq!(titles.len(), panels.len(), "panel titles must be distinct");
    assert!(
        panels.len() >= 8,
        "only {} panels: {titles:?}",
        panels.len()
    );
    for panel in &panels {
        let title = &panel["title"];
        let description = panel["description"].as_str().unwrap_or_default();
        assert!(
            !description.trim().is_empty(),
            "panel {title} has no description"
        );
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {title} must use the $datasource variable"
        );
        let targets = panel["targets"].as_array().map_or(&[][..], Vec::as_slice);
        assert!(
            targets
                .iter()
                .filter_map(|t| t["expr"].as_str())
                .any(|expr| !metric_names(expr).is_empty()),
            "panel {title} queries no cedar_pdp_ metric"
        );
    }
}

#[test]
fn rules_define_every_alert() {
    let rules = read(RULES);
    let defined: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    for alert in ALERTS {
        assert!(
            defined.contains(&alert),
            "{RULES} does not define {alert}; it defines {defined:?}"
        );
    }
}
