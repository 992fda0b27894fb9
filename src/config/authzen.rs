//! The `[authzen]` table: the AuthZEN 1.0 HTTP/JSON front end's listener, how its types
//! and actions map to Cedar names, and the bounds on its searches.

use std::net::SocketAddr;

use clap::Args;
use serde::Deserialize;

/// The `[authzen]` table of [`super::Settings`]; every key optional.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthzenSettings {
    /// Address the AuthZEN 1.0 HTTP/JSON API listens on (off unless set).
    #[arg(
        id = "authzen_listen",
        long = "authzen-listen",
        env = "CEDAR_PDP_AUTHZEN_LISTEN",
        value_name = "ADDR"
    )]
    pub listen: Option<SocketAddr>,
    /// Cedar namespace AuthZEN types and action names are taken in (`user` becomes
    /// `NS::user`, action `read` becomes `NS::Action::"read"`).
    #[arg(
        id = "authzen_namespace",
        long = "authzen-namespace",
        env = "CEDAR_PDP_AUTHZEN_NAMESPACE",
        value_name = "NS"
    )]
    pub namespace: Option<String>,
    /// The base URL advertised as `policy_decision_point` in the metadata (default: the
    /// scheme and `Host` of the metadata request itself).
    #[arg(
        id = "authzen_policy_decision_point",
        long = "authzen-policy-decision-point",
        env = "CEDAR_PDP_AUTHZEN_POLICY_DECISION_POINT",
        value_name = "URL"
    )]
    pub policy_decision_point: Option<String>,
    /// Results in a search page when the request gives no `page.limit`.
    #[arg(
        id = "authzen_default_page_limit",
        long = "authzen-default-page-limit",
        env = "CEDAR_PDP_AUTHZEN_DEFAULT_PAGE_LIMIT",
        value_name = "N"
    )]
    pub default_page_limit: Option<usize>,
    /// Most results in one search page, whatever `page.limit` asks.
    #[arg(
        id = "authzen_max_page_limit",
        long = "authzen-max-page-limit",
        env = "CEDAR_PDP_AUTHZEN_MAX_PAGE_LIMIT",
        value_name = "N"
    )]
    pub max_page_limit: Option<usize>,
    /// Most candidates one search request evaluates: past it the page ends early, with a
    /// `next_token` that goes on from there.
    #[arg(
        id = "authzen_max_search_evaluations",
        long = "authzen-max-search-evaluations",
        env = "CEDAR_PDP_AUTHZEN_MAX_SEARCH_EVALUATIONS",
        value_name = "N"
    )]
    pub max_search_evaluations: Option<usize>,
}

/// The resolved `[authzen]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzenConfig {
    /// Where the AuthZEN API listens; `None`: it is off.
    pub listen: Option<SocketAddr>,
    /// Cedar namespace of AuthZEN types and actions (`None`: the empty namespace).
    pub namespace: Option<String>,
    /// The advertised base URL; `None`: taken from each metadata request.
    pub policy_decision_point: Option<String>,
    /// Results in a page when the request names no limit.
    pub default_page_limit: usize,
    /// Most results in a page.
    pub max_page_limit: usize,
    /// Most candidates one search request evaluates.
    pub max_search_evaluations: usize,
}

impl Default for AuthzenConfig {
    fn default() -> Self {
        Self {
            listen: None,
            namespace: None,
            policy_decision_point: None,
            default_page_limit: 50,
            max_page_limit: 1_000,
            max_search_evaluations: 10_000,
        }
    }
}

impl AuthzenConfig {
    /// Folds `upper` over `lower` over the defaults.
    pub fn from_layers(lower: AuthzenSettings, upper: AuthzenSettings) -> Self {
        let d = Self::default();
        Self {
            listen: upper.listen.or(lower.listen),
            namespace: upper.namespace.or(lower.namespace),
            policy_decision_point: upper.policy_decision_point.or(lower.policy_decision_point),
            default_page_limit: upper
                .default_page_limit
                .or(lower.default_page_limit)
                .unwrap_or(d.default_page_limit),
            max_page_limit: upper
                .max_page_limit
                .or(lower.max_page_limit)
                .unwrap_or(d.max_page_limit),
            max_search_evaluations: upper
                .max_search_evaluations
                .or(lower.max_search_evaluations)
                .unwrap_or(d.max_search_evaluations),
        }
    }

    /// The first setting that would quietly do the wrong thing, as `(key, message)`.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        let at_least_one = [
            ("authzen.default_page_limit", self.default_page_limit),
            ("authzen.max_page_limit", self.max_page_limit),
            (
                "authzen.max_search_evaluations",
                self.max_search_evaluations,
            ),
        ];
        if let Some((key, _)) = at_least_one.iter().find(|(_, n)| *n == 0) {
            return Some((
                key,
                "must be at least 1 (0 would answer every search empty)".into(),
            ));
        }
        if self.default_page_limit > self.max_page_limit {
            return Some((
                "authzen.default_page_limit",
                format!(
                    "{} is more than authzen.max_page_limit ({})",
                    self.default_page_limit, self.max_page_limit
                ),
            ));
        }
        if let Some(ns) = &self.namespace {
            let valid = !ns.is_empty()
                && ns.split("::").all(|part| {
                    let mut chars = part.chars();
                    chars
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
                })
                // Reserved words (`if`, `true`, `__cedar`…) look like identifiers.
                && <cedar_policy::EntityTypeName as std::str::FromStr>::from_str(&format!(
                    "{ns}::Action"
                ))
                .is_ok();
            if !valid {
                return Some((
                    "authzen.namespace",
                    format!("{ns:?} is not a Cedar namespace (identifiers joined by ::)"),
                ));
            }
        }
        if let Some(url) = &self.policy_decision_point {
            let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
            if !scheme_ok || url.contains(['?', '#']) || url.ends_with('/') {
                return Some((
                    "authzen.policy_decision_point",
                    format!(
                        "{url:?} is not a base URL (http(s)://host[:port][/path], no query, \
                         fragment or trailing slash)"
                    ),
                ));
            }
        }
        None
    }
}
