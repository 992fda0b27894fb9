//! An Envoy `CheckRequest` to a [`Question`], by the compiled [`ExtAuthz`] mapping:
//! the principal from the first source that yields one, the action from the route, the
//! method or the gRPC path, the resource from the first route whose host and path match,
//! and a context of the request's method, path, host, source address, allow-listed
//! headers and claims, and the route's path parameters.
//!
//! Anything Envoy would not send (no HTTP attributes, a path that is not absolute, bad
//! percent-encoding, `.` or `..` segments) is refused as invalid, and a check no principal
//! source yields an identity for as unauthenticated; the service answers both with a deny.

use std::{borrow::Cow, net::IpAddr, str::FromStr};

use cedar_policy::{Context, EntityId, EntityTypeName, EntityUid, RestrictedExpression};
use http::uri::Authority;
use percent_encoding::percent_decode_str;
use prost_types::{Struct, value::Kind};
use serde_json::{Map, Value as Json};

use super::rules::{ExtAuthz, PrincipalRule, Source};
use crate::{
    config::ext_authz::ContextPart,
    decide::{
        CanonicalBytes, CanonicalContext, ContextInput, Encoder, Query, Question, Reason, Refusal,
    },
    proto::{
        codec::UNDECODABLE,
        envoy::{
            config::core::v3::address,
            service::auth::v3::{AttributeContext, CheckRequest, attribute_context::HttpRequest},
        },
    },
};

/// A check mapped to a Cedar question.
#[derive(Debug)]
pub(super) struct Mapped {
    /// The question for the engine.
    pub(super) query: Query,
    /// The context as built, for the audit log's allow-listed keys.
    pub(super) context: Vec<(&'static str, Attr)>,
}

impl Mapped {
    /// The question, with the values of `recorded_keys` kept for the audit log.
    pub(super) fn into_question(self, recorded_keys: &[String]) -> Question {
        let recorded_context = self
            .context
            .iter()
            .filter(|(key, _)| recorded_keys.iter().any(|k| k == key))
            .map(|(key, value)| ((*key).to_owned(), value.json()))
            .collect();
        Question {
            query: self.query,
            recorded_context,
        }
    }
}

/// A context value as the mapping builds it; becomes a Cedar value, or JSON for the
/// audit log.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Attr {
    String(String),
    Bool(bool),
    Long(i64),
    Ip(String),
    Set(Vec<Attr>),
    Record(Vec<(String, Attr)>),
}

impl Attr {
    /// The value as a Cedar expression; a record with a key twice (which the compiled
    /// mapping never builds) is an error, not a panic.
    fn expr(&self) -> Result<RestrictedExpression, String> {
        Ok(match self {
            Self::String(s) => RestrictedExpression::new_string(s.clone()),
            Self::Bool(b) => RestrictedExpression::new_bool(*b),
            Self::Long(n) => RestrictedExpression::new_long(*n),
            Self::Ip(ip) => RestrictedExpression::new_ip(ip.clone()),
            Self::Set(items) => RestrictedExpression::new_set(
                items
                    .iter()
                    .map(Attr::expr)
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Self::Record(fields) => RestrictedExpression::new_record(
                fields
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), v.expr()?)))
                    .collect::<Result<Vec<_>, String>>()?,
            )
            .map_err(|e| e.to_string())?,
        })
    }

    /// Writes the value's canonical bytes (see `engine::cache`); `None` past the bound.
    fn canonical(&self, out: &mut CanonicalBytes) -> Option<()> {
        if out.full() {
            return None;
        }
        match self {
            Self::String(s) => {
                out.tag(1);
                out.text(s);
            }
            Self::Bool(b) => {
                out.tag(2);
                out.boolean(*b);
            }
            Self::Long(n) => {
                out.tag(3);
                out.long(*n);
            }
            Self::Ip(ip) => {
                out.tag(4);
                out.text(ip);
            }
            Self::Set(items) => {
                out.tag(5);
                out.count(items.len());
                for item in items {
                    item.canonical(out)?;
                }
            }
            Self::Record(fields) => {
                out.tag(6);
                Self::fields_canonical(
                    fields.iter().map(|(k, v)| (k.as_str(), v)),
                    fields.len(),
                    out,
                )?;
            }
        }
        Some(())
    }

    /// Writes `n` named values' canonical bytes, in their order (fixed by the mapping's
    /// configuration: the same names in the same order for every check).
    fn fields_canonical<'a>(
        fields: impl Iterator<Item = (&'a str, &'a Attr)>,
        n: usize,
        out: &mut CanonicalBytes,
    ) -> Option<()> {
        out.count(n);
        for (name, value) in fields {
            out.text(name);
            value.canonical(out)?;
        }
        Some(())
    }

    /// Cedar's JSON form of the value (an `ip` as `__extn`).
    fn json(&self) -> Json {
        match self {
            Self::String(s) => Json::String(s.clone()),
            Self::Bool(b) => Json::Bool(*b),
            Self::Long(n) => Json::from(*n),
            Self::Ip(ip) => serde_json::json!({ "__extn": { "fn": "ip", "arg": ip } }),
            Self::Set(items) => Json::Array(items.iter().map(Attr::json).collect()),
            Self::Record(fields) => Json::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.json()))
                    .collect::<Map<_, _>>(),
            ),
        }
    }
}

/// The field names errors use, as Envoy's proto names them.
const HTTP: &str = "attributes.request.http";

/// Maps `check` to a query, refusing nesting deeper than `max_depth` in copied claims.
pub(super) fn map(
    mapping: &ExtAuthz,
    check: &CheckRequest,
    max_depth: usize,
) -> Result<Mapped, Refusal> {
    let attributes = check.attributes.as_ref().ok_or_else(|| {
        Refusal::invalid(
            "attributes",
            "missing: not a check from Envoy's HTTP ext_authz filter",
        )
    })?;
    if let Some(reason) = attributes.context_extensions.get(UNDECODABLE) {
        return Err(Refusal::invalid(
            "request",
            format!("does not decode: {reason}"),
        ));
    }
    let http = attributes
        .request
        .as_ref()
        .and_then(|r| r.http.as_ref())
        .ok_or_else(|| {
            Refusal::invalid(
                HTTP,
                "missing: only HTTP checks are served (not the network ext_authz filter)",
            )
        })?;
    let request = HttpView::new(http)?;
    let principal = principal(mapping, attributes, &request)?;

    let route = mapping.routes.iter().find_map(|route| {
        if let Some(host) = &route.host
            && !host.matches(&request.host)
        {
            return None;
        }
        let values = route.path.matches(&request.segments_decoded())?;
        let params: Vec<(String, String)> =
            route.path.names().map(str::to_owned).zip(values).collect();
        Some((route, params))
    });
    let (resource_rule, params) = match &route {
        Some((route, params)) => (&route.resource, Some(params.as_slice())),
        None => (&mapping.resource, None),
    };
    let placeholder = |name: &str| match name {
        "host" => Some(request.host.as_str()),
        "path" => Some(&*request.path),
        "method" => Some(request.method),
        _ => params
            .and_then(|params| params.iter().find(|(k, _)| k == name))
            .map(|(_, v)| v.as_str()),
    };
    let resource = uid(
        &resource_rule.entity_type,
        resource_rule.id.render(placeholder),
    );

    // The action from the method and the path only, by the configured tables: never from
    // a header the client chose (a `content-type: application/grpc` once made it the path,
    // and an action a `forbid` names could be stepped around that way).
    let action_id = route
        .as_ref()
        .and_then(|(route, _)| match &route.action {
            Some(action) => Some(action.render(placeholder)),
            None => route.actions.get(request.method).cloned(),
        })
        .or_else(|| mapping.methods.get(request.method).cloned())
        .unwrap_or_else(|| request.method.to_owned());
    let action = uid(&mapping.action_type, action_id);

    let mut context: Vec<(&'static str, Attr)> = Vec::new();
    for part in &mapping.context {
        match part {
            ContextPart::Method => {
                context.push(("method", Attr::String(request.method.to_owned())));
            }
            ContextPart::Path => context.push(("path", Attr::String(request.path.to_string()))),
            ContextPart::Host => context.push(("host", Attr::String(request.host.clone()))),
            ContextPart::SourceIp => {
                if let Some(ip) = source_ip(attributes) {
                    context.push(("source_ip", Attr::Ip(ip.to_string())));
                }
            }
            ContextPart::Headers if !mapping.headers.is_empty() => {
                let fields = mapping
                    .headers
                    .iter()
                    .filter_map(|name| {
                        request
                            .header(name)
                            .map(|v| (name.clone(), Attr::String(v.into_owned())))
                    })
                    .collect();
                context.push(("headers", Attr::Record(fields)));
            }
            ContextPart::Params => {
                if let Some(params) = params {
                    let fields = params
                        .iter()
                        .map(|(k, v)| (k.clone(), Attr::String(v.clone())))
                        .collect();
                    context.push(("params", Attr::Record(fields)));
                }
            }
            ContextPart::Claims if !mapping.claims.is_empty() => {
                if let Some(payload) = jwt_payload(mapping, attributes) {
                    let mut fields = Vec::new();
                    for name in &mapping.claims {
                        let Some(value) = payload.fields.get(name) else {
                            continue;
                        };
                        let field = format!("claims.{name}");
                        if let Some(attr) = claim(value, &field, 1, max_depth)? {
                            fields.push((name.clone(), attr));
                        }
                    }
                    context.push(("claims", Attr::Record(fields)));
                }
            }
            ContextPart::Headers | ContextPart::Claims => {}
        }
    }
    // The context's canonical bytes let its decision be reused (`engine::cache`); with
    // them, the Cedar context (whose extension values cost the most of a check's mapping)
    // is built only if the decision is not found.
    let mut bytes = CanonicalBytes::new(Encoder::ExtAuthz);
    let canonical = Attr::fields_canonical(
        context.iter().map(|(k, v)| (*k, v)),
        context.len(),
        &mut bytes,
    )
    .and_then(|()| bytes.finish());
    let context_input = match canonical {
        Some(bytes) => {
            let attrs = context.clone();
            ContextInput::Canonical(CanonicalContext::deferred(bytes, move || {
                cedar_context(&attrs)
            }))
        }
        None => ContextInput::Value(cedar_context(&context)?),
    };
    Ok(Mapped {
        query: Query {
            principal,
            action,
            resource,
            context: context_input,
        },
        context,
    })
}

/// The Cedar context of the mapped values.
fn cedar_context(context: &[(&'static str, Attr)]) -> Result<Context, Refusal> {
    let pairs = context
        .iter()
        .map(|(k, v)| Ok(((*k).to_owned(), v.expr()?)))
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| Refusal::invalid("context", e))?;
    Context::from_pairs(pairs).map_err(|e| Refusal::invalid("context", e.to_string()))
}

fn uid(entity_type: &EntityTypeName, id: String) -> EntityUid {
    EntityUid::from_type_name_and_id(entity_type.clone(), EntityId::new(id))
}

/// The principal from the first source that yields an identity matching its pattern.
fn principal(
    mapping: &ExtAuthz,
    attributes: &AttributeContext,
    request: &HttpView<'_>,
) -> Result<EntityUid, Refusal> {
    for rule in &mapping.principals {
        let identity: Option<Cow<'_, str>> =
            match &rule.source {
                Source::Mtls => attributes
                    .source
                    .as_ref()
                    .map(|peer| Cow::Borrowed(peer.principal.as_str())),
                Source::Header(name) => request.header(name),
                Source::Jwt(claim) => jwt_payload(mapping, attributes).and_then(|payload| {
                    match payload.fields.get(claim).and_then(|v| v.kind.as_ref()) {
                        Some(Kind::StringValue(s)) => Some(Cow::Borrowed(s.as_str())),
                        _ => None,
                    }
                }),
            };
        let Some(identity) = identity.filter(|i| !i.is_empty()) else {
            continue;
        };
        if let Some(id) = principal_id(rule, &identity) {
            return Ok(uid(&rule.entity_type, id));
        }
    }
    Err(Refusal::new(
        Reason::Unauthenticated,
        "",
        "no principal source yielded an identity",
    ))
}

/// The entity id for `identity` under `rule`, or `None` when it does not match.
fn principal_id(rule: &PrincipalRule, identity: &str) -> Option<String> {
    let bound: Vec<(&str, String)> = match &rule.pattern {
        None => Vec::new(),
        Some(pattern) => {
            let segments: Vec<&str> = identity.split('/').collect();
            let values = pattern.matches(&segments)?;
            pattern.names().zip(values).collect()
        }
    };
    Some(rule.id.render(|name| {
        if name == "identity" {
            Some(identity)
        } else {
            bound
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.as_str())
        }
    }))
}

/// The verified JWT payload `jwt_authn` left in the metadata, if any.
fn jwt_payload<'a>(mapping: &ExtAuthz, attributes: &'a AttributeContext) -> Option<&'a Struct> {
    let namespace = attributes
        .metadata_context
        .as_ref()?
        .filter_metadata
        .get(&mapping.jwt_namespace)?;
    match namespace
        .fields
        .get(&mapping.jwt_payload_key)?
        .kind
        .as_ref()?
    {
        Kind::StructValue(payload) => Some(payload),
        _ => None,
    }
}

/// A claim as a Cedar value: `null` is left out, numbers must be whole, nesting is limited.
fn claim(
    value: &prost_types::Value,
    field: &str,
    depth: usize,
    max_depth: usize,
) -> Result<Option<Attr>, Refusal> {
    if depth > max_depth {
        return Err(Refusal::limit(
            field,
            format!("nested deeper than the limit of {max_depth} (max_value_depth)"),
        ));
    }
    Ok(match value.kind.as_ref() {
        None | Some(Kind::NullValue(_)) => None,
        Some(Kind::BoolValue(b)) => Some(Attr::Bool(*b)),
        Some(Kind::StringValue(s)) => Some(Attr::String(s.clone())),
        Some(Kind::NumberValue(n)) => {
            // Whole numbers within i64 only: Cedar has no floats.
            if n.fract() != 0.0
                || !(-9.007_199_254_740_992e15..=9.007_199_254_740_992e15).contains(n)
            {
                return Err(Refusal::invalid(
                    field,
                    format!("{n} is not a whole number Cedar can hold as a Long"),
                ));
            }
            Some(Attr::Long(*n as i64))
        }
        Some(Kind::ListValue(list)) => {
            let mut items = Vec::with_capacity(list.values.len());
            for (i, item) in list.values.iter().enumerate() {
                if let Some(attr) = claim(item, &format!("{field}[{i}]"), depth + 1, max_depth)? {
                    items.push(attr);
                }
            }
            Some(Attr::Set(items))
        }
        Some(Kind::StructValue(record)) => {
            let mut fields = Vec::with_capacity(record.fields.len());
            for (key, item) in &record.fields {
                if let Some(attr) = claim(item, &format!("{field}.{key}"), depth + 1, max_depth)? {
                    fields.push((key.clone(), attr));
                }
            }
            Some(Attr::Record(fields))
        }
    })
}

/// The downstream address, when it is an IP socket address.
fn source_ip(attributes: &AttributeContext) -> Option<IpAddr> {
    let address = attributes
        .source
        .as_ref()?
        .address
        .as_ref()?
        .address
        .as_ref()?;
    match address {
        address::Address::SocketAddress(socket) => IpAddr::from_str(&socket.address).ok(),
        _ => None,
    }
}

/// The HTTP attributes of a check, checked and normalized once.
struct HttpView<'a> {
    http: &'a HttpRequest,
    method: &'a str,
    /// The path without query or fragment, percent-encoded unreserved characters decoded
    /// (RFC 3986 normalization), other escapes kept.
    path: Cow<'a, str>,
    /// Each segment of the path fully percent-decoded.
    decoded: Vec<String>,
    /// Lower case, without a port.
    host: String,
}

impl<'a> HttpView<'a> {
    fn new(http: &'a HttpRequest) -> Result<Self, Refusal> {
        let method = http.method.as_str();
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-') {
            return Err(Refusal::invalid(
                format!("{HTTP}.method"),
                "missing or not an HTTP method",
            ));
        }
        let raw = http.path.split(['?', '#']).next().unwrap_or_default();
        if !raw.starts_with('/') {
            return Err(Refusal::invalid(
                format!("{HTTP}.path"),
                "not an absolute path (origin-form request target)",
            ));
        }
        let path_field = || format!("{HTTP}.path");
        let mut decoded = Vec::new();
        for segment in raw.split('/').skip(1) {
            let segment = percent_decode(segment)
                .ok_or_else(|| Refusal::invalid(path_field(), "bad percent-encoding"))?;
            if segment == "." || segment == ".." {
                return Err(Refusal::invalid(
                    path_field(),
                    "has a '.' or '..' segment; normalize paths in Envoy (normalize_path)",
                ));
            }
            decoded.push(segment);
        }
        let path = normalize(raw);
        let host = host_of(&http.host).to_ascii_lowercase();
        Ok(Self {
            http,
            method,
            path,
            decoded,
            host,
        })
    }

    /// The path's segments after the leading `/`, decoded, as the route templates see them.
    fn segments_decoded(&self) -> Vec<&str> {
        // Templates start with '/', so their first segment is the empty one before it.
        std::iter::once("")
            .chain(self.decoded.iter().map(String::as_str))
            .collect()
    }

    /// A request header by lower-case name.
    fn header(&self, name: &str) -> Option<Cow<'a, str>> {
        header(self.http, name)
    }
}

/// A request header by lower-case name, from the map or (with `encode_raw_headers`) the
/// header list, repeated values joined by `,`.
pub(super) fn header<'a>(http: &'a HttpRequest, name: &str) -> Option<Cow<'a, str>> {
    if let Some(value) = http.headers.get(name) {
        return Some(Cow::Borrowed(value.as_str()));
    }
    let list = http.header_map.as_ref()?;
    let mut values = list
        .headers
        .iter()
        .filter(|h| h.key.eq_ignore_ascii_case(name))
        .map(|h| {
            if h.raw_value.is_empty() {
                h.value.clone()
            } else {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            }
        })
        .peekable();
    values.peek()?;
    Some(Cow::Owned(values.collect::<Vec<_>>().join(",")))
}

/// The host of an HTTP authority (`host[:port]`, `[v6]:port`, with any user info left
/// out), as `http` parses it; an authority `http` refuses is taken whole (it then matches
/// no route host and names a resource no policy expects).
fn host_of(authority: &str) -> String {
    match Authority::from_str(authority) {
        Ok(parsed) => parsed.host().to_owned(),
        Err(_) => authority.to_owned(),
    }
}

/// Whether every `%` in `text` starts an escape of two hex digits (`percent-encoding`
/// passes a malformed one through as it is; a path Envoy sends never has one).
fn escapes_well_formed(text: &str) -> bool {
    text.match_indices('%').all(|(i, _)| {
        text.as_bytes()
            .get(i + 1..i + 3)
            .is_some_and(|digits| digits.iter().all(u8::is_ascii_hexdigit))
    })
}

/// Percent-decodes `text`; `None` for a bad escape or a result that is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    if !escapes_well_formed(text) {
        return None;
    }
    percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(Cow::into_owned)
}

/// The byte the escape at the start of `escape` (`%` and two hex digits) stands for.
fn escaped_byte(escape: &str) -> Option<u8> {
    let digits = escape.get(1..3)?;
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u8::from_str_radix(digits, 16).ok()
}

/// `raw` with escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) decoded, so that
/// `/%61dmin` and `/admin` are one path to a policy. Escapes are well-formed by now.
fn normalize(raw: &str) -> Cow<'_, str> {
    if !raw.contains('%') {
        return Cow::Borrowed(raw);
    }
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = escaped_byte(&raw[i..])
            && (b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        {
            out.push(char::from(b));
            i += 3;
            continue;
        }
        // Copy one whole character (the path is a str; escapes are ASCII).
        let ch = raw[i..].chars().next().expect("i is on a char boundary");
        if ch == '%' {
            out.push_str(&raw[i..i + 3].to_ascii_uppercase());
            i += 3;
        } else {
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests;
