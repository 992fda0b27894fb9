//! The `[ext_authz]` table: how an Envoy `CheckRequest` becomes a Cedar request, as the
//! config file says it, in plain data.
//!
//! `api::ext_authz` checks and compiles it once, when the server starts (entity type
//! names parsed, route templates split into segments, placeholders resolved), reporting
//! every mistake against its config key, e.g.
//! `ext_authz.routes[1].resource_id: unknown placeholder {docid}`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The default for [`ExtAuthzSettings::jwt_metadata_namespace`]: where Envoy's `jwt_authn`
/// filter writes verified token payloads.
pub const JWT_AUTHN_NAMESPACE: &str = "envoy.filters.http.jwt_authn";

/// The `[ext_authz]` table as written. Every field has a default, so an empty table (or
/// none) serves `Check` with mTLS identities as `Service` principals, `Action::"<METHOD>"`
/// actions and `Resource::"<host><path>"` resources.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExtAuthzSettings {
    /// Where the principal comes from, tried in order; the first that yields one wins.
    /// None at all means the peer's mTLS identity as a `Service`.
    pub principal: Vec<PrincipalSettings>,
    /// Entity type of actions (default `Action`).
    pub action_type: Option<String>,
    /// HTTP method → action id, where a route does not say (default: the method itself).
    pub methods: BTreeMap<String, String>,
    /// Entity type of the resource where a route does not say (default `Resource`).
    pub resource_type: Option<String>,
    /// Resource id where a route does not say (default `{host}{path}`).
    pub resource_id: Option<String>,
    /// Route templates, tried in order: the first whose host and path match decides the
    /// resource (and the action, if it names one) and binds path parameters.
    pub routes: Vec<RouteSettings>,
    /// Request headers copied into `context.headers` (names, any case).
    pub headers: Vec<String>,
    /// Claims of the verified JWT copied into `context.claims`.
    pub claims: Vec<String>,
    /// Which parts the context holds (default: all of `method`, `path`, `host`,
    /// `source_ip`, `headers`, `params`, `claims`), so it can match a schema's context type.
    pub context: Option<Vec<ContextPart>>,
    /// Metadata namespace of the JWT filter (default `envoy.filters.http.jwt_authn`).
    pub jwt_metadata_namespace: Option<String>,
    /// Key under that namespace holding the payload: the filter's `payload_in_metadata`
    /// (default `jwt_payload`).
    pub jwt_payload_key: Option<String>,
    /// Headers added to the request sent upstream on allow, name → value template with
    /// `{policy_version}`, `{principal}`, `{principal_type}`, `{principal_id}`, `{action}`,
    /// `{resource}`. They replace any the client sent with the same name.
    pub upstream_headers: BTreeMap<String, String>,
}

/// One `[[ext_authz.principal]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalSettings {
    /// `mtls`, `header` or `jwt`.
    pub from: PrincipalFrom,
    /// Entity type of the principal, e.g. `App::User`.
    #[serde(rename = "type")]
    pub entity_type: String,
    /// For `header`: the request header holding the identity.
    pub header: Option<String>,
    /// For `jwt`: the claim holding the identity (default `sub`).
    pub claim: Option<String>,
    /// A template the identity must match, e.g. `spiffe://example.org/ns/{ns}/sa/{name}`;
    /// an identity that does not match is not taken from this source.
    #[serde(rename = "match")]
    pub pattern: Option<String>,
    /// The entity id, from `{identity}` and the placeholders of `match` (default
    /// `{identity}`).
    pub id: Option<String>,
}

/// Where a principal's identity is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalFrom {
    /// The peer's verified client certificate: `attributes.source.principal` (a SPIFFE
    /// id, or the subject when the certificate has no URI SAN).
    Mtls,
    /// A request header. Only safe when Envoy sets or strips it before ext_authz runs.
    Header,
    /// A claim of a token Envoy's `jwt_authn` filter has verified.
    Jwt,
}

/// One `[[ext_authz.routes]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    /// Path template: `/tenants/{tenant}/docs/{doc}`; `{name}` binds one segment,
    /// `{name...}` (last only) the rest of the path.
    pub path: String,
    /// Host the route is for: exact (`docs.example.com`) or `*.example.com`; any if unset.
    pub host: Option<String>,
    /// Entity type of the resource (default: the table's `resource_type`).
    pub resource_type: Option<String>,
    /// Resource id template from the path's placeholders, `{host}`, `{path}` and
    /// `{method}` (default: the table's `resource_id`).
    pub resource_id: Option<String>,
    /// Action id for every request on this route, whatever the method: a template over
    /// the path's placeholders, `{host}`, `{path}` and `{method}` (`"{path}"` makes a
    /// gRPC route's action its `/package.Service/Method`).
    pub action: Option<String>,
    /// HTTP method → action id on this route, before the table's `methods`.
    #[serde(default)]
    pub actions: BTreeMap<String, String>,
}

/// A part of the context the mapping builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContextPart {
    /// `context.method`: the HTTP method.
    Method,
    /// `context.path`: the path without the query.
    Path,
    /// `context.host`: the host, lower case, without a port.
    Host,
    /// `context.source_ip`: the downstream address as an `ip` value.
    SourceIp,
    /// `context.headers`: the allow-listed request headers.
    Headers,
    /// `context.params`: the matched route's path parameters.
    Params,
    /// `context.claims`: the allow-listed claims of the verified JWT.
    Claims,
}

impl ContextPart {
    /// Every part, in the order the context lists them.
    pub const ALL: [ContextPart; 7] = [
        Self::Method,
        Self::Path,
        Self::Host,
        Self::SourceIp,
        Self::Headers,
        Self::Params,
        Self::Claims,
    ];
}
