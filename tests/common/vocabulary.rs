//! Names, values and texts the property tests (tests/proptest_api.rs) and the fuzz
//! target (fuzz/fuzz_targets/api.rs) draw their requests from: the example set's types,
//! ids, actions and context keys, with odd and malformed ones mixed in. One list for both,
//! included by path (`#[path]`), so a name added for one reaches the other.
#![allow(dead_code)]

/// An action, the principal types it applies to, and stored resources it applies to.
pub type AppliesTo = (
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
);

pub const TYPES: &[&str] = &[
    "Platform::User",
    "Platform::Document",
    "Platform::Action",
    "Platform::Group",
    "Platform::Tenant",
    "Platform::Project",
    "Platform::Secret",
    "Platform::Service",
    "Platform::ApiKey",
    "User",
    "Action",
    "",
    "::",
    "Platform::",
    "::User",
    "Platform :: User",
    "Platform::User::\"bob\"",
    "__cedar::ipaddr",
    "Platform::in",
    "if",
    "Plätform::Üser",
];

pub const IDS: &[&str] = &[
    "alice",
    "bob",
    "carol",
    "dave",
    "mallory",
    "acme-roadmap-q3",
    "acme-board-minutes",
    "globex-salaries",
    "acme-roadmap",
    "acme",
    "acme-admins",
    "acme-auditors",
    "acme-db-password",
    "acme/billing",
    "acme-ci-deploy",
    "read",
    "list",
    "write",
    "delete",
    "readSecret",
    "ReadActions",
    "",
    "\"",
    "\\",
    "\0",
    "::",
    "bob\u{202e}",
    "𝕓𝕠𝕓",
    "globex",
    "share",
    "invoke",
    "rotateSecret",
    "SensitiveActions",
];

pub const KEYS: &[&str] = &[
    "mfa",
    "source_ip",
    "now",
    "risk_score",
    "path",
    "headers",
    "claims",
    "user-agent",
    "__entity",
    "__extn",
    "",
    "method",
    "host",
    "params",
    "email",
];

pub const EXTENSION_FNS: &[&str] = &["ip", "ipaddr", "decimal", "datetime", "duration", "IP", ""];

pub const EXTENSION_ARGS: &[&str] = &[
    "10.1.2.3",
    "10.0.0.0/8",
    "::1",
    "garbage",
    "",
    "1.2.3.4/99",
    "0.9",
    "1.23456",
    "922337203685477.5807",
    "2026-11-23T12:00:00Z",
    "2026-13-45",
    "1d2h",
    "-9223372036854775808ms",
];

pub const JSON_TEXTS: &[&str] = &[
    "",
    " ",
    "{}",
    "[]",
    "null",
    r#"{"mfa": true}"#,
    r#"{"mfa": 1}"#,
    r#"{"source_ip": {"__extn": {"fn": "ip", "arg": "garbage"}}}"#,
    r#"{"source_ip": "10.1.2.3"}"#,
    r#"{"risk_score": {"__extn": {"fn": "decimal", "arg": "0.9"}}}"#,
    r#"[{"uid": {"type": "Platform::User", "id": "zed"}, "attrs": {}, "parents": []}]"#,
    r#"[{"uid": {"type": "Platform::User", "id": "bob"}, "attrs": {"tenant": {"__entity": {"type": "Platform::Tenant", "id": "acme"}}, "email": "b", "suspended": false, "contractor": false}, "parents": [{"type": "Platform::Group", "id": "acme-admins"}]}]"#,
    r#"[{"uid": {"type": "Platform::Tenant", "id": "acme"}, "attrs": {"name": "A", "admins": {"__entity": {"type": "Platform::Group", "id": "acme-admins"}}}, "parents": [{"type": "Platform::Group", "id": "acme-admins"}]}]"#,
    r#"{"a": 1, "a": 2}"#,
    r#"{"mfa": true"#,
    "\u{feff}{}",
    "1e999",
    r#""\ud800""#,
    "{\"now\": {\"__extn\": {\"fn\": \"datetime\", \"arg\": \"2026-11-23T12:00:00Z\"}}}",
    "[{\"uid\": {\"__entity\": {\"type\": \"Platform::Tenant\", \"id\": \"acme\"}}, \"attrs\": {\"name\": \"A\", \"admins\": {\"__entity\": {\"type\": \"Platform::Group\", \"id\": \"acme-admins\"}}}, \"parents\": [{\"type\": \"Platform::Group\", \"id\": \"acme-admins\"}]}]",
];

/// Stored principals of the example set, and two that are not.
pub const PRINCIPAL_IDS: &[&str] = &[
    "alice",
    "bob",
    "carol",
    "dave",
    "erin",
    "grace",
    "mallory",
    "acme-ci-deploy",
    "acme-ci-readonly",
    "acme-old-key",
    "acme/billing",
    "acme/frontend",
    "acme/reports",
    "zed",
    "bob ",
];

/// The actions of the example schema with the principal and resource types they apply
/// to, and stored resources of those types.
pub const APPLIES_TO: &[AppliesTo] = &[
    (
        "read",
        &["User", "ApiKey", "Service"],
        &[
            ("Document", "acme-roadmap-q3"),
            ("Document", "globex-salaries"),
            ("Project", "acme-roadmap"),
        ],
    ),
    (
        "list",
        &["User", "ApiKey", "Service"],
        &[
            ("Project", "acme-roadmap"),
            ("Project", "globex-payroll"),
            ("Document", "acme-carol-notes"),
        ],
    ),
    (
        "write",
        &["User", "ApiKey"],
        &[
            ("Document", "acme-roadmap-q3"),
            ("Document", "acme-board-minutes"),
        ],
    ),
    (
        "share",
        &["User", "ApiKey"],
        &[
            ("Document", "acme-roadmap-q3"),
            ("Document", "globex-handbook"),
        ],
    ),
    (
        "delete",
        &["User", "ApiKey"],
        &[
            ("Document", "acme-carol-notes"),
            ("Project", "globex-payroll"),
        ],
    ),
    (
        "invoke",
        &["Service"],
        &[("Service", "acme/billing"), ("Service", "globex/billing")],
    ),
    (
        "readSecret",
        &["User", "Service"],
        &[
            ("Secret", "acme-db-password"),
            ("Secret", "globex-db-password"),
        ],
    ),
    ("rotateSecret", &["User"], &[("Secret", "acme-db-password")]),
];

pub const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "M-SEARCH", "get", "", "G ET",
];

pub const PATHS: &[&str] = &[
    "/projects/acme-roadmap/docs/acme-roadmap-q3",
    "/projects/acme-roadmap/docs/acme-roadmap-q3/share",
    "/projects/acme-roadmap",
    "/projects/acme-roadmap/docs/%61cme-roadmap-q3",
    "/projects/acme-roadmap/docs/acme-roadmap-q3?x=/../#f",
    "/secrets/acme-db-password",
    "/acme.billing.v1.Billing/Charge",
    "/",
    "",
    "projects/acme-roadmap",
    "*",
    "/a/../b",
    "/projects/acme-roadmap/docs/%2e%2E",
    "/projects/acme-roadmap/docs/.",
    "/a/%zz",
    "/a/%",
    "/a/%ff",
    "/a//b",
    "/a/%2e%2E/b",
    "/a/%2e",
    "//",
];

pub const IDENTITIES: &[&str] = &[
    "bob",
    "alice",
    "mallory",
    "zed",
    "",
    "spiffe://acme.example/ns/acme/sa/billing",
    "spiffe://acme.example/ns/acme/sa/frontend",
    "spiffe://evil.example/ns/acme/sa/billing",
    "spiffe://acme.example/ns/acme/sa/",
    "spiffe://acme.example/ns/globex/sa/frontend",
    "acme/billing",
];
