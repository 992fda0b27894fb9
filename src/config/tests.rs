use super::*;

#[test]
fn defaults_apply_when_no_layer_sets_a_value() {
    let config = Config::from_layers(Settings::default(), Settings::default()).unwrap();
    assert_eq!(config, Config::default());
    assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
    assert_eq!(config.policies, PathBuf::from("policies"));
}

#[test]
fn flags_win_over_file_and_file_over_defaults() {
    let file: Settings = toml::from_str(
        r#"
        listen = "127.0.0.1:7000"
        policies = "/etc/pdp"
        policy_validation = "warn"
        [limits]
        max_batch_items = 10
        request_timeout_ms = 250
        "#,
    )
    .unwrap();
    let flags = Settings {
        listen: Some("127.0.0.1:8000".parse().unwrap()),
        limits: LimitSettings {
            max_value_depth: Some(3),
            ..Default::default()
        },
        ..Default::default()
    };
    let config = Config::from_layers(file, flags).unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:8000");
    assert_eq!(config.policies, PathBuf::from("/etc/pdp"));
    assert_eq!(config.policy_validation, PolicyValidation::Warn);
    assert_eq!(config.limits.max_batch_items, 10);
    assert_eq!(config.limits.max_value_depth, 3);
    assert_eq!(config.limits.request_timeout, Duration::from_millis(250));
    assert_eq!(
        config.limits.max_request_entities,
        Limits::default().max_request_entities
    );
}

#[test]
fn unknown_keys_in_the_file_are_an_error_with_a_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pdp.toml");
    fs::write(&path, "listen = \"127.0.0.1:1\"\nlisten_addr = \"x\"\n").unwrap();
    let err = Config::resolve(Some(&path), Settings::default()).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("pdp.toml"), "{message}");
    assert!(message.contains("listen_addr"), "{message}");
    assert!(message.contains("line 2"), "{message}");
}

#[test]
fn audit_settings_that_cannot_work_are_refused() {
    let mut settings = Settings::default();
    settings.audit.allow_sample_rate = Some(f64::NAN);
    let err = Config::resolve(None, settings).unwrap_err();
    assert!(
        err.to_string().starts_with("audit.allow_sample_rate:"),
        "{err}"
    );

    let mut settings = Settings::default();
    settings.audit.queue_capacity = Some(0);
    let err = Config::resolve(None, settings).unwrap_err();
    assert!(
        err.to_string().starts_with("audit.queue_capacity:"),
        "{err}"
    );
}

#[test]
fn limits_of_zero_that_would_refuse_every_call_are_refused() {
    let zero = |set: fn(&mut LimitSettings)| {
        let mut settings = Settings::default();
        set(&mut settings.limits);
        Config::resolve(None, settings).unwrap_err().to_string()
    };
    type Set = fn(&mut LimitSettings);
    let cases: [(&str, Set); 5] = [
        ("limits.max_connections:", |l| l.max_connections = Some(0)),
        ("limits.max_concurrent_streams:", |l| {
            l.max_concurrent_streams = Some(0);
        }),
        ("limits.max_concurrent_calls:", |l| {
            l.max_concurrent_calls = Some(0)
        }),
        ("limits.max_string_bytes:", |l| l.max_string_bytes = Some(0)),
        ("limits.request_timeout_ms:", |l| {
            l.request_timeout_ms = Some(0)
        }),
    ];
    for (key, set) in cases {
        let message = zero(set);
        assert!(message.starts_with(key), "{key}: {message}");
    }
    let mut settings = Settings::default();
    settings.limits.max_concurrent_calls = Some(1);
    let config = Config::resolve(None, settings).unwrap();
    assert_eq!(config.limits.max_concurrent_calls, 1);
}

#[test]
fn a_caller_identity_is_a_uri_or_a_dns_name_and_matches_only_its_kind() {
    use super::{IdentityKind, same_caller};
    for uri in ["spiffe://acme.example/ns/a/sa/b", "urn:x", "https://h/p"] {
        assert_eq!(IdentityKind::of(uri), Some(IdentityKind::Uri), "{uri}");
    }
    for dns in ["gateway", "gateway.acme.internal", "a-1.b2.example"] {
        assert_eq!(IdentityKind::of(dns), Some(IdentityKind::Dns), "{dns}");
    }
    for neither in [
        "",
        "spiffe:",
        "1x://y",
        "a b",
        "-a.example",
        "a..b",
        "*.example",
        "a\n",
    ] {
        assert_eq!(IdentityKind::of(neither), None, "{neither:?}");
    }
    assert!(same_caller("spiffe://td/sa/x", "spiffe://td/sa/x"));
    assert!(!same_caller("spiffe://td/sa/x", "spiffe://td/sa/X"));
    assert!(same_caller("gw.acme.internal", "GW.acme.internal"));
    assert!(!same_caller("gw.acme.internal", "dns:gw.acme.internal"));
    assert!(!same_caller("spiffe:", "spiffe:"));
}

#[test]
fn an_authzen_namespace_or_a_tracing_setting_that_cannot_work_is_refused_naming_its_key() {
    let refused = |text: &str| {
        let settings: Settings = toml::from_str(text).unwrap();
        match Config::resolve(None, settings) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{text}: {other:?}"),
        }
    };
    // Reserved words look like identifiers but are no namespace.
    for ns in ["if", "true", "__cedar", "App::in", "1App", "App::"] {
        assert_eq!(
            refused(&format!("[authzen]\nnamespace = \"{ns}\"")),
            "authzen.namespace",
            "{ns}"
        );
    }
    assert_eq!(
        refused("[tracing]\nsample_ratio = 1.5"),
        "tracing.sample_ratio"
    );
    assert_eq!(
        refused("[tracing]\nqueue_capacity = 0"),
        "tracing.queue_capacity"
    );
    assert_eq!(
        refused("[tracing]\notlp_endpoint = \"collector:4317\""),
        "tracing.otlp_endpoint"
    );
    let file: Settings =
        toml::from_str("[authzen]\nnamespace = \"Acme::App\"\n[tracing]\nsample_ratio = 0.01")
            .unwrap();
    let config = Config::resolve(None, file).unwrap();
    assert_eq!(config.authzen.namespace.as_deref(), Some("Acme::App"));
    assert!((config.tracing.sample_ratio - 0.01).abs() < f64::EPSILON);
}

#[test]
fn the_decision_cache_is_on_by_default_may_be_off_and_is_bounded() {
    let resolve = |text: &str| Config::resolve(None, toml::from_str(text).unwrap());
    assert_eq!(resolve("").unwrap().limits.decision_cache_entries, 4_096);
    let off = resolve("[limits]\ndecision_cache_entries = 0").unwrap();
    assert_eq!(off.limits.decision_cache_entries, 0);
    match resolve("[limits]\ndecision_cache_entries = 100001") {
        Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "limits.decision_cache_entries"),
        other => panic!("{other:?}"),
    }
}
