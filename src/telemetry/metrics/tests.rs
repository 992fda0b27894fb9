use super::*;

/// A policy set as a swap reports it.
fn summary(version: &str, policies: usize, entities: usize) -> PolicySetSummary<'_> {
    PolicySetSummary {
        version,
        policies,
        entities,
        loaded_at: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    }
}

/// The value of the series whose line starts with `series ` in `text`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a number"))
}

#[test]
fn every_reload_series_exists_with_help_text_before_anything_happens() {
    let text = Metrics::new().render();
    for name in [
        POLICY_RELOADS,
        POLICY_LAST_RELOAD_SUCCESS,
        POLICY_LAST_RELOAD_SUCCESSFUL,
        POLICIES_LOADED,
        ENTITIES_LOADED,
    ] {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP for {name}:\n{text}"
        );
    }
    assert_eq!(
        value(&text, &format!("{POLICY_RELOADS}{{result=\"success\"}}")),
        Some(0.0)
    );
    assert_eq!(
        value(&text, &format!("{POLICY_RELOADS}{{result=\"failure\"}}")),
        Some(0.0)
    );
}

#[test]
fn reloads_count_by_result_and_the_last_result_is_a_gauge() {
    let metrics = Metrics::new();
    metrics.reloaded(ReloadResult::Failure);
    metrics.reloaded(ReloadResult::Failure);
    let text = metrics.render();
    assert_eq!(
        value(&text, &format!("{POLICY_RELOADS}{{result=\"failure\"}}")),
        Some(2.0)
    );
    assert_eq!(value(&text, POLICY_LAST_RELOAD_SUCCESSFUL), Some(0.0));

    metrics.reloaded(ReloadResult::Success);
    let text = metrics.render();
    assert_eq!(
        value(&text, &format!("{POLICY_RELOADS}{{result=\"success\"}}")),
        Some(1.0)
    );
    assert_eq!(value(&text, POLICY_LAST_RELOAD_SUCCESSFUL), Some(1.0));
    assert!(value(&text, POLICY_LAST_RELOAD_SUCCESS).unwrap() > 1.7e9);
}

#[test]
fn policy_info_marks_only_the_serving_version() {
    let metrics = Metrics::new();
    let first = summary("v1", 19, 12);
    metrics.started(&first);
    let text = metrics.render();
    let serving = format!("{POLICY_INFO}{{version=\"v1\"}}");
    assert_eq!(value(&text, &serving), Some(1.0));
    assert_eq!(value(&text, POLICIES_LOADED), Some(19.0));
    assert_eq!(value(&text, ENTITIES_LOADED), Some(12.0));
    assert_eq!(
        value(&text, POLICY_LAST_RELOAD_SUCCESS),
        Some(unix_seconds(first.loaded_at))
    );

    metrics.serving(&summary("v2", 1, 0));
    let text = metrics.render();
    assert_eq!(value(&text, &serving), None, "the replaced version is gone");
    assert_eq!(
        text.matches(&format!("# TYPE {POLICY_INFO} gauge")).count(),
        1
    );
    let now = format!("{POLICY_INFO}{{version=\"v2\"}}");
    assert_eq!(value(&text, &now), Some(1.0));
    assert_eq!(value(&text, POLICIES_LOADED), Some(1.0));
}
