//! The compiled `[ext_authz]` mapping ([`ExtAuthz`]): what `Check` applies to each
//! request, built once from the config file's [`ExtAuthzSettings`] when the server starts.
//! Route templates are split into segments, entity type names parsed and placeholders
//! resolved, and every mistake is reported against its config key, e.g.
//! `ext_authz.routes[1].resource_id: unknown placeholder {docid}`.

use std::{collections::BTreeMap, str::FromStr};

use cedar_policy::EntityTypeName;

use crate::{
    config::{
        ConfigError,
        ext_authz::{
            ContextPart, ExtAuthzSettings, JWT_AUTHN_NAMESPACE, PrincipalFrom, PrincipalSettings,
        },
    },
    policy::Snapshot,
};

/// The compiled mapping: what `Check` applies to each request.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtAuthz {
    /// Principal sources, in order.
    pub principals: Vec<PrincipalRule>,
    /// Entity type of actions.
    pub action_type: EntityTypeName,
    /// Upper-case method → action id.
    pub methods: BTreeMap<String, String>,
    /// Routes, in order.
    pub routes: Vec<Route>,
    /// The resource where no route matches.
    pub resource: ResourceRule,
    /// Lower-case header names copied into the context.
    pub headers: Vec<String>,
    /// Claims copied into the context.
    pub claims: Vec<String>,
    /// Parts the context holds.
    pub context: Vec<ContextPart>,
    /// Metadata namespace of the JWT filter.
    pub jwt_namespace: String,
    /// Key of the payload under it.
    pub jwt_payload_key: String,
    /// Lower-case header name → value template, added upstream on allow.
    pub upstream_headers: Vec<(String, Text)>,
}

/// Where one principal may come from, and how its identity becomes an entity.
#[derive(Debug, Clone, PartialEq)]
pub struct PrincipalRule {
    /// The source.
    pub source: Source,
    /// The entity type.
    pub entity_type: EntityTypeName,
    /// The template the identity must match, if any.
    pub pattern: Option<Template>,
    /// The entity id template.
    pub id: Text,
}

/// A compiled [`PrincipalFrom`] with its parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The peer's mTLS identity.
    Mtls,
    /// A lower-case header name.
    Header(String),
    /// A JWT claim.
    Jwt(String),
}

/// A compiled route.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The host it is for, if any.
    pub host: Option<HostPattern>,
    /// The path template.
    pub path: Template,
    /// The resource it names.
    pub resource: ResourceRule,
    /// The action id for every request on the route, a template over the route's
    /// placeholders and [`REQUEST_PLACEHOLDERS`].
    pub action: Option<Text>,
    /// Upper-case method → action id.
    pub actions: BTreeMap<String, String>,
}

/// How a resource entity is made.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceRule {
    /// Its type.
    pub entity_type: EntityTypeName,
    /// Its id template.
    pub id: Text,
}

/// A host to match: exact, or any subdomain of a suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// This host only (lower case).
    Exact(String),
    /// Any host ending in this suffix (lower case, with its leading dot).
    Suffix(String),
}

impl HostPattern {
    /// Whether `host` (lower case, no port) is one this pattern names.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(exact) => host == exact,
            Self::Suffix(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        }
    }
}

/// A `/`-separated template whose whole segments may be placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
    /// The name of a trailing `{name...}`, binding the rest.
    rest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Placeholder(String),
}

impl Template {
    /// Parses a template; placeholders must be whole segments with distinct names.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut segments = Vec::new();
        let mut rest = None;
        let mut names: Vec<&str> = Vec::new();
        let parts: Vec<&str> = text.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) else {
                if part.contains(['{', '}']) {
                    return Err(format!(
                        "{part:?}: a placeholder must be a whole segment, like {{name}}"
                    ));
                }
                segments.push(Segment::Literal((*part).to_owned()));
                continue;
            };
            let (name, is_rest) = match inner.strip_suffix("...") {
                Some(name) => (name, true),
                None => (inner, false),
            };
            if !is_identifier(name) {
                return Err(format!(
                    "{{{inner}}}: a placeholder name is letters, digits and _"
                ));
            }
            if names.contains(&name) {
                return Err(format!("{{{name}}} appears twice"));
            }
            names.push(name);
            if is_rest {
                if i + 1 != parts.len() {
                    return Err(format!("{{{inner}}} can only be the last segment"));
                }
                rest = Some(name.to_owned());
            } else {
                segments.push(Segment::Placeholder(name.to_owned()));
            }
        }
        Ok(Self { segments, rest })
    }

    /// The placeholder names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Placeholder(name) => Some(name.as_str()),
                Segment::Literal(_) => None,
            })
            .chain(self.rest.as_deref())
    }

    /// Matches `segments` (already split, and decoded where the caller wants that):
    /// literals exactly, a placeholder any non-empty segment, a rest placeholder one or
    /// more segments joined with `/`. Returns the bound values in [`Template::names`] order.
    pub fn matches(&self, segments: &[&str]) -> Option<Vec<String>> {
        let fixed = self.segments.len();
        let fits = match self.rest {
            Some(_) => segments.len() > fixed,
            None => segments.len() == fixed,
        };
        if !fits {
            return None;
        }
        let mut bound = Vec::new();
        for (template, segment) in self.segments.iter().zip(segments) {
            match template {
                Segment::Literal(literal) if literal == segment => {}
                Segment::Placeholder(_) if !segment.is_empty() => bound.push((*segment).to_owned()),
                _ => return None,
            }
        }
        if self.rest.is_some() {
            let rest = segments[fixed..].join("/");
            if rest.is_empty() {
                return None;
            }
            bound.push(rest);
        }
        Some(bound)
    }
}

impl FromStr for Template {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::parse(text)
    }
}

/// Text with `{name}` placeholders filled in at each call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    parts: Vec<TextPart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TextPart {
    Literal(String),
    Placeholder(String),
}

impl Text {
    /// Parses `text`, refusing placeholders not among `known`. `{{` and `}}` are literal
    /// braces.
    pub fn parse(text: &str, known: &[&str]) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(format!("{{{name} is never closed (write {{{{ for a brace)"));
                    }
                    if !known.contains(&name.as_str()) {
                        return Err(format!(
                            "unknown placeholder {{{name}}} (known here: {})",
                            known
                                .iter()
                                .map(|k| format!("{{{k}}}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                    if !literal.is_empty() {
                        parts.push(TextPart::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(TextPart::Placeholder(name));
                }
                '}' => return Err("a lone '}' (write '}}' for a brace)".to_owned()),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(TextPart::Literal(literal));
        }
        Ok(Self { parts })
    }

    /// Whether the text has no placeholder.
    pub fn is_literal(&self) -> bool {
        self.parts
            .iter()
            .all(|part| matches!(part, TextPart::Literal(_)))
    }

    /// Whether `{name}` appears in the text.
    pub fn uses(&self, name: &str) -> bool {
        self.parts
            .iter()
            .any(|part| matches!(part, TextPart::Placeholder(n) if n == name))
    }

    /// Whether every two placeholders have a `/` between them, so that values holding no
    /// `/` (template segments) can be told apart again: `{a}/{b}`, not `{a}{b}` or `{a}.{b}`.
    fn placeholders_apart(&self) -> bool {
        let mut after_placeholder = false;
        for part in &self.parts {
            match part {
                TextPart::Placeholder(_) if after_placeholder => return false,
                TextPart::Placeholder(_) => after_placeholder = true,
                TextPart::Literal(text) if text.contains('/') => after_placeholder = false,
                TextPart::Literal(_) => {}
            }
        }
        true
    }

    /// The text with each placeholder replaced by `value(name)` (empty when it has none).
    pub fn render<'a>(&self, value: impl Fn(&str) -> Option<&'a str>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                TextPart::Literal(text) => out.push_str(text),
                TextPart::Placeholder(name) => out.push_str(value(name).unwrap_or_default()),
            }
        }
        out
    }
}

fn is_identifier(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Placeholders every route's `resource_id` may use besides its own path parameters.
pub const REQUEST_PLACEHOLDERS: [&str; 3] = ["host", "path", "method"];

/// Placeholders of an upstream header value.
pub const HEADER_PLACEHOLDERS: [&str; 6] = [
    "policy_version",
    "principal",
    "principal_type",
    "principal_id",
    "action",
    "resource",
];

impl ExtAuthz {
    /// Checks the `[ext_authz]` table and compiles it; the error names the key at fault.
    pub fn compile(settings: &ExtAuthzSettings) -> Result<Self, ConfigError> {
        let entity_type = |key: String, text: &str| {
            EntityTypeName::from_str(text)
                .map_err(|e| invalid(key, format!("{text:?} is not an entity type name: {e}")))
        };
        let mut principals = Vec::new();
        let defaults = [PrincipalSettings {
            from: PrincipalFrom::Mtls,
            entity_type: "Service".to_owned(),
            header: None,
            claim: None,
            pattern: None,
            id: None,
        }];
        let sources = if settings.principal.is_empty() {
            &defaults[..]
        } else {
            &settings.principal[..]
        };
        for (i, p) in sources.iter().enumerate() {
            let key = |field: &str| format!("ext_authz.principal[{i}].{field}");
            let source = match p.from {
                PrincipalFrom::Mtls => {
                    refuse_field(&key("header"), p.header.as_ref(), "mtls")?;
                    refuse_field(&key("claim"), p.claim.as_ref(), "mtls")?;
                    Source::Mtls
                }
                PrincipalFrom::Header => {
                    refuse_field(&key("claim"), p.claim.as_ref(), "header")?;
                    let header = p.header.as_deref().ok_or_else(|| {
                        invalid(key("header"), "from = \"header\" needs the header's name")
                    })?;
                    Source::Header(header_name(key("header"), header)?)
                }
                PrincipalFrom::Jwt => {
                    refuse_field(&key("header"), p.header.as_ref(), "jwt")?;
                    Source::Jwt(p.claim.clone().unwrap_or_else(|| "sub".to_owned()))
                }
            };
            let pattern = p
                .pattern
                .as_deref()
                .map(|text| Template::parse(text).map_err(|e| invalid(key("match"), e)))
                .transpose()?;
            if pattern
                .as_ref()
                .is_some_and(|pattern| pattern.names().any(|name| name == "identity"))
            {
                return Err(invalid(
                    key("match"),
                    "{identity} is the whole identity; name this placeholder otherwise",
                ));
            }
            let mut known = vec!["identity"];
            if let Some(pattern) = &pattern {
                known.extend(pattern.names());
            }
            let id = Text::parse(p.id.as_deref().unwrap_or("{identity}"), &known)
                .map_err(|e| invalid(key("id"), e))?;
            if let Some(pattern) = &pattern {
                whole_identity(key("id"), &id, pattern)?;
            }
            principals.push(PrincipalRule {
                source,
                entity_type: entity_type(key("type"), &p.entity_type)?,
                pattern,
                id,
            });
        }
        // Each rule keeps its own identities apart (`whole_identity`); two rules of one
        // type could still give one id to an identity of each (`{namespace}/{name}` under
        // two trust domains, or a header saying `prod/admin`), unless both ids are the
        // whole identity.
        for (later, rule) in principals.iter().enumerate() {
            if let Some(earlier) = principals[..later].iter().position(|other| {
                other.entity_type == rule.entity_type
                    && !(other.id.uses("identity") && rule.id.uses("identity"))
            }) {
                return Err(invalid(
                    format!("ext_authz.principal[{later}].type"),
                    format!(
                        "is ext_authz.principal[{earlier}]'s type too: two sources could \
                         then name two identities one principal; give them different types, \
                         or use {{identity}} in both ids"
                    ),
                ));
            }
        }
        let action_type = entity_type(
            "ext_authz.action_type".to_owned(),
            settings.action_type.as_deref().unwrap_or("Action"),
        )?;
        let methods = method_actions("ext_authz.methods", &settings.methods)?;
        let default_type = settings.resource_type.as_deref().unwrap_or("Resource");
        let default_id = settings.resource_id.as_deref().unwrap_or("{host}{path}");
        let resource = ResourceRule {
            entity_type: entity_type("ext_authz.resource_type".to_owned(), default_type)?,
            id: Text::parse(default_id, &REQUEST_PLACEHOLDERS)
                .map_err(|e| invalid("ext_authz.resource_id".to_owned(), e))?,
        };
        let mut routes = Vec::new();
        for (i, r) in settings.routes.iter().enumerate() {
            let key = |field: &str| format!("ext_authz.routes[{i}].{field}");
            if !r.path.starts_with('/') {
                return Err(invalid(
                    key("path"),
                    format!("{:?} does not start with '/'", r.path),
                ));
            }
            let path = Template::parse(&r.path).map_err(|e| invalid(key("path"), e))?;
            let mut known: Vec<&str> = REQUEST_PLACEHOLDERS.to_vec();
            for name in path.names() {
                if known.contains(&name) {
                    return Err(invalid(
                        key("path"),
                        format!("{{{name}}} is a reserved placeholder; pick another name"),
                    ));
                }
                known.push(name);
            }
            let host = r
                .host
                .as_deref()
                .map(|h| host_pattern(key("host"), h))
                .transpose()?;
            let resource = ResourceRule {
                entity_type: entity_type(
                    key("resource_type"),
                    r.resource_type.as_deref().unwrap_or(default_type),
                )?,
                id: Text::parse(r.resource_id.as_deref().unwrap_or(default_id), &known)
                    .map_err(|e| invalid(key("resource_id"), e))?,
            };
            let action = r
                .action
                .as_deref()
                .map(|text| Text::parse(text, &known).map_err(|e| invalid(key("action"), e)))
                .transpose()?;
            routes.push(Route {
                host,
                resource,
                path,
                action,
                actions: method_actions(&key("actions"), &r.actions)?,
            });
        }
        let headers: Vec<String> = settings
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| header_name(format!("ext_authz.headers[{i}]"), h))
            .collect::<Result<_, _>>()?;
        if let Some((first, again)) = repeat(&headers) {
            return Err(invalid(
                format!("ext_authz.headers[{again}]"),
                format!(
                    "{:?} repeats ext_authz.headers[{first}] (header names are case-insensitive)",
                    settings.headers[again]
                ),
            ));
        }
        if let Some((first, again)) = repeat(&settings.claims) {
            return Err(invalid(
                format!("ext_authz.claims[{again}]"),
                format!(
                    "{:?} repeats ext_authz.claims[{first}]",
                    settings.claims[again]
                ),
            ));
        }
        let mut upstream_headers: Vec<(String, Text)> = Vec::new();
        for (name, value) in &settings.upstream_headers {
            let key = format!("ext_authz.upstream_headers.{name}");
            let given = name;
            let name = header_name(key.clone(), name)?;
            if name.starts_with(':') || name == "host" {
                return Err(invalid(key, "pseudo-headers and host cannot be set"));
            }
            if let Some(other) = settings
                .upstream_headers
                .keys()
                .find(|other| *other != given && other.eq_ignore_ascii_case(&name))
            {
                return Err(invalid(
                    key,
                    format!(
                        "repeats ext_authz.upstream_headers.{other} (header names are case-insensitive)"
                    ),
                ));
            }
            upstream_headers.push((
                name,
                Text::parse(value, &HEADER_PLACEHOLDERS).map_err(|e| invalid(key, e))?,
            ));
        }
        let mut context = settings
            .context
            .clone()
            .unwrap_or_else(|| ContextPart::ALL.to_vec());
        context.sort_unstable();
        context.dedup();
        Ok(ExtAuthz {
            principals,
            action_type,
            methods,
            routes,
            resource,
            headers,
            claims: settings.claims.clone(),
            context,
            jwt_namespace: settings
                .jwt_metadata_namespace
                .clone()
                .unwrap_or_else(|| JWT_AUTHN_NAMESPACE.to_owned()),
            jwt_payload_key: settings
                .jwt_payload_key
                .clone()
                .unwrap_or_else(|| "jwt_payload".to_owned()),
            upstream_headers,
        })
    }
}

impl ExtAuthz {
    /// The actions of this mapping's action type shaped like a gRPC method
    /// (`/package.Service/Method`) that `snapshot`'s policies or schema name and no route
    /// can produce (at most ten): an upgrade from when Check took a gRPC call's action
    /// from its path, unasked.
    pub fn unmapped_grpc_actions(&self, snapshot: &Snapshot) -> Vec<String> {
        let grpc_shaped = |id: &str| {
            id.strip_prefix('/')
                .and_then(|rest| rest.split_once('/'))
                .is_some_and(|(service, method)| {
                    service.contains('.') && !method.is_empty() && !method.contains('/')
                })
        };
        let produced = |id: &str| {
            self.routes.iter().any(|route| {
                route
                    .action
                    .as_ref()
                    .is_some_and(|action| !action.is_literal() || action.render(|_| None) == id)
            })
        };
        // From the index: Cedar's whole policy set of a large directory is built only
        // when a call needs it, and a startup check must not build it.
        let named = snapshot.index().named_entities().cloned().chain(
            snapshot
                .schema()
                .into_iter()
                .flat_map(|schema| schema.actions().cloned()),
        );
        let mut unmapped: Vec<String> = named
            .filter(|uid| uid.type_name() == &self.action_type)
            .map(|uid| uid.id().unescaped().to_owned())
            .filter(|id| grpc_shaped(id) && !produced(id))
            .collect();
        unmapped.sort();
        unmapped.dedup();
        unmapped.truncate(10);
        unmapped
    }
}

impl Default for ExtAuthz {
    fn default() -> Self {
        Self::compile(&ExtAuthzSettings::default()).expect("the default ext_authz settings compile")
    }
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Refuses a principal id that could give two identities one entity: one leaving out a
/// placeholder the match binds (`{name}` alone names every namespace's service account of
/// that name), or running two together (`{namespace}{name}`).
fn whole_identity(key: String, id: &Text, pattern: &Template) -> Result<(), ConfigError> {
    if id.uses("identity") {
        return Ok(());
    }
    if let Some(left_out) = pattern.names().find(|name| !id.uses(name)) {
        return Err(invalid(
            key,
            format!(
                "leaves out {{{left_out}}}, which the match binds: identities that differ only \
                 there would be one principal (use every placeholder, or {{identity}})"
            ),
        ));
    }
    if !id.placeholders_apart() {
        return Err(invalid(
            key,
            "runs placeholders together: put a '/' between them (\"{namespace}/{name}\"), so \
             that different identities cannot make the same id",
        ));
    }
    Ok(())
}

fn refuse_field(key: &str, value: Option<&String>, from: &str) -> Result<(), ConfigError> {
    match value {
        Some(_) => Err(invalid(key, format!("has no meaning with from = {from:?}"))),
        None => Ok(()),
    }
}

/// A header name as Envoy reports it: lower case, an HTTP token.
fn header_name(key: String, name: &str) -> Result<String, ConfigError> {
    let lower = name.to_ascii_lowercase();
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    let body = lower.strip_prefix(':').unwrap_or(&lower);
    if body.is_empty() || !body.chars().all(token) {
        return Err(invalid(key, format!("{name:?} is not a header name")));
    }
    Ok(lower)
}

/// The first name in `names` that repeats an earlier one: (earlier index, later index).
fn repeat(names: &[String]) -> Option<(usize, usize)> {
    names.iter().enumerate().find_map(|(again, name)| {
        names[..again]
            .iter()
            .position(|earlier| earlier == name)
            .map(|first| (first, again))
    })
}

/// A method → action table, methods upper-cased; `get` and `GET` both given is refused
/// (one of them would be dropped without a word).
fn method_actions(
    key: &str,
    table: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut methods = BTreeMap::new();
    for (method, action) in table {
        if method.is_empty() || !method.chars().all(|c| c.is_ascii_alphabetic()) {
            return Err(invalid(format!("{key}.{method}"), "not an HTTP method"));
        }
        if let Some(other) = table
            .keys()
            .find(|other| *other != method && other.eq_ignore_ascii_case(method))
        {
            return Err(invalid(
                format!("{key}.{method}"),
                format!("repeats {key}.{other} (methods are case-insensitive)"),
            ));
        }
        methods.insert(method.to_ascii_uppercase(), action.clone());
    }
    Ok(methods)
}

fn host_pattern(key: String, host: &str) -> Result<HostPattern, ConfigError> {
    let lower = host.to_ascii_lowercase();
    let (suffix, name) = match lower.strip_prefix("*.") {
        Some(name) => (true, name),
        None => (false, lower.as_str()),
    };
    let label = |l: &str| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !name.split('.').all(label) {
        return Err(invalid(
            key,
            format!("{host:?} is not a host name (or *.suffix)"),
        ));
    }
    Ok(if suffix {
        HostPattern::Suffix(format!(".{name}"))
    } else {
        HostPattern::Exact(lower)
    })
}

#[cfg(test)]
mod tests;
