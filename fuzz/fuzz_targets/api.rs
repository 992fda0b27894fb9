//! Fuzzes the request conversion and validation path of both gRPC APIs, called directly
//! (no network) on the services of servers started as `serve` starts them
//! (`server::Server::bind`), over the example policy set (which has a schema, so requests
//! are validated).
//!
//! The first byte picks a mode; the rest is either decoded as a protobuf message (what a
//! client can put on the wire) or drives a generator of structured, adversarial requests
//! (names from the example set, odd names, deep values, long parent chains, big batches,
//! bad JSON and extension literals), so that inputs reach the engine and not only the
//! decoder.
//! Modes (first byte mod 8): 0 `IsAuthorizedRequest`, 1 `BatchIsAuthorizedRequest`,
//! 2 and 3 `CheckRequest` (the mapping of `docs/envoy.md`, the default mapping), all
//! decoded; 4, 5, 6 and 7 the same four generated.
//!
//! What must hold for every input (a violation aborts, and libFuzzer saves the input):
//! - `cedarpdp.v1.Authorizer`: a decision (ALLOW or DENY) or a status INVALID_ARGUMENT or
//!   RESOURCE_EXHAUSTED with a message; a batch answers every item, and one past
//!   `max_batch_items` is RESOURCE_EXHAUSTED; a principal that is neither stored nor sent
//!   with the call is never allowed (no example policy permits an unknown principal).
//! - `envoy.service.auth.v3.Authorization/Check`: always a `CheckResponse` with OK,
//!   PERMISSION_DENIED or UNAUTHENTICATED and the matching HTTP response; OK never for a
//!   check Envoy would not send (no HTTP attributes, a bad method or path), and never for
//!   a principal that is not stored.
//! - Every so often, the known-good request (bob reads acme-roadmap-q3) is still allowed.
#![no_main]

#[path = "../../tests/common/vocabulary.rs"]
mod vocabulary;
#[path = "../../tests/common/malformed.rs"]
mod malformed;

use std::{
    collections::{BTreeMap, HashMap},
    str::FromStr,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicU64, Ordering},
    },
};

use cedar_pdp::{
    api::{AuthorizerService, ExtAuthzService},
    config::{AuditSink, Config, ExtAuthzSettings, Settings},
    policy::PolicyStore,
    server::Server,
    proto::{
        cedarpdp::v1::{self as pb, authorizer_server::Authorizer},
        envoy::{
            config::core::v3::{Address, HeaderMap, HeaderValue, Metadata, SocketAddress, address},
            service::auth::v3::{
                AttributeContext, CheckRequest, CheckResponse,
                attribute_context::{HttpRequest, Peer, Request as CheckedRequest},
                authorization_server::Authorization,
                check_response::HttpResponse,
            },
        },
    },
};
use cedar_policy::{EntityId, EntityTypeName, EntityUid};
use libfuzzer_sys::{
    arbitrary::{Result as Generated, Unstructured},
    fuzz_target,
};
use prost::Message as _;
use prost_types::{ListValue, Struct, Value as Json, value::Kind as JsonKind};
use tonic::{Code, Request};
use malformed::malformed;
use vocabulary::*;

/// The services under test and what the oracle needs to know about the policy set.
struct Pdp {
    runtime: tokio::runtime::Runtime,
    store: Arc<PolicyStore>,
    authorizer: AuthorizerService,
    /// With the mapping of `docs/envoy.md`, then with the default mapping.
    ext_authz: [ExtAuthzService; 2],
    max_batch_items: usize,
    /// The servers the services belong to, kept for as long as they are called.
    #[allow(dead_code)]
    servers: [Server; 2],
}

static PDP: LazyLock<Pdp> = LazyLock::new(|| {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    // Servers as `serve` starts them, on ports the OS picks, never run: their services
    // are called directly.
    let server = |ext_authz: ExtAuthzSettings| {
        let mut config = Config {
            policies: format!("{root}/policies").into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: "127.0.0.1:0".parse().unwrap(),
            watch: false,
            ext_authz,
            ..Config::default()
        };
        config.audit.sink = AuditSink::Off;
        runtime
            .block_on(Server::bind(config))
            .expect("the server starts")
    };
    let docs = server(docs_mapping(root));
    let default = server(ExtAuthzSettings::default());
    Pdp {
        store: docs.store().clone(),
        authorizer: docs.grpc().authorizer().clone(),
        ext_authz: [
            docs.grpc().ext_authz().clone(),
            default.grpc().ext_authz().clone(),
        ],
        max_batch_items: Config::default().limits.max_batch_items,
        servers: [docs, default],
        runtime,
    }
});

/// The `[ext_authz]` table of the example configuration in `docs/envoy.md`.
fn docs_mapping(root: &str) -> ExtAuthzSettings {
    let docs = std::fs::read_to_string(format!("{root}/docs/envoy.md")).expect("docs read");
    let start = docs
        .find("```toml\n[ext_authz]")
        .expect("the docs' mapping")
        + 8;
    let end = start + docs[start..].find("\n```").expect("a closed block");
    let settings: Settings = toml::from_str(&docs[start..=end]).expect("the docs' TOML parses");
    *settings.ext_authz.expect("an [ext_authz] table")
}

static CALLS: AtomicU64 = AtomicU64::new(0);

/// True about once in `n`, and false once the input is used up (when `Unstructured`
/// answers every choice with its first option), so that short inputs stay plausible.
fn rarely(u: &mut Unstructured<'_>, n: u8) -> Generated<bool> {
    Ok(u.int_in_range(1..=n)? == n)
}

fuzz_target!(|data: &[u8]| {
    let pdp = &*PDP;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 8 {
        0 => {
            if let Ok(request) = pb::IsAuthorizedRequest::decode(rest) {
                pdp.is_authorized(request);
            }
        }
        1 => {
            if let Ok(request) = pb::BatchIsAuthorizedRequest::decode(rest) {
                pdp.batch(request);
            }
        }
        2 | 3 => {
            if let Ok(check) = CheckRequest::decode(rest) {
                pdp.check(usize::from(mode % 8 == 3), check);
            }
        }
        4 => {
            if let Ok(request) = is_authorized_request(&mut Unstructured::new(rest)) {
                pdp.is_authorized(request);
            }
        }
        5 => {
            if let Ok(request) = batch_request(&mut Unstructured::new(rest)) {
                pdp.batch(request);
            }
        }
        _ => {
            if let Ok(check) = check_request(&mut Unstructured::new(rest)) {
                pdp.check(usize::from(mode % 8 == 7), check);
            }
        }
    }
    if CALLS.fetch_add(1, Ordering::Relaxed).is_multiple_of(64) {
        pdp.still_serving();
    }
});

impl Pdp {
    fn is_authorized(&self, request: pb::IsAuthorizedRequest) {
        let without_entities =
            request.entities.is_empty() && request.entities_json.trim().is_empty();
        let principal = request.principal.clone();
        let answer = self.runtime.block_on(Authorizer::is_authorized(
            &self.authorizer,
            Request::new(request),
        ));
        match answer {
            Ok(response) => {
                let response = response.into_inner();
                decided(&response);
                if response.decision == pb::Decision::Allow as i32 && without_entities {
                    assert!(
                        self.stored(principal.as_ref()),
                        "allowed a principal that is not stored: {principal:?} {response:?}"
                    );
                }
            }
            Err(status) => refused(&status),
        }
    }

    fn batch(&self, request: pb::BatchIsAuthorizedRequest) {
        let without_entities =
            request.entities.is_empty() && request.entities_json.trim().is_empty();
        let principals: Vec<_> = request.items.iter().map(|i| i.principal.clone()).collect();
        let answer = self.runtime.block_on(Authorizer::batch_is_authorized(
            &self.authorizer,
            Request::new(request),
        ));
        match answer {
            Ok(response) => {
                let response = response.into_inner();
                assert!(
                    principals.len() <= self.max_batch_items,
                    "a batch of {} items was answered",
                    principals.len()
                );
                assert_eq!(
                    response.results.len(),
                    principals.len(),
                    "one result per item"
                );
                for (result, principal) in response.results.iter().zip(&principals) {
                    decided(result);
                    if result.decision == pb::Decision::Allow as i32 && without_entities {
                        assert!(
                            self.stored(principal.as_ref()),
                            "allowed a principal that is not stored: {principal:?} {result:?}"
                        );
                    }
                }
            }
            Err(status) => {
                refused(&status);
                if principals.len() > self.max_batch_items {
                    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                }
            }
        }
    }

    fn check(&self, mapping: usize, check: CheckRequest) {
        let malformed = malformed(&check);
        let answer = self.runtime.block_on(Authorization::check(
            &self.ext_authz[mapping],
            Request::new(check),
        ));
        let response = match answer {
            Ok(response) => response.into_inner(),
            Err(status) => panic!("Check answered a gRPC error: {status:?}"),
        };
        let code = response.status.as_ref().expect("a status").code;
        match (Code::from(code), &response.http_response) {
            (Code::Ok, Some(HttpResponse::OkResponse(_))) => {
                assert!(!malformed, "a malformed check was allowed: {response:?}");
                let principal = metadata(&response, "principal");
                let stored = self
                    .store
                    .current()
                    .entities()
                    .iter()
                    .any(|e| e.uid().to_string() == principal);
                assert!(
                    stored,
                    "allowed a principal that is not stored: {response:?}"
                );
                assert_eq!(metadata(&response, "decision"), "allow");
            }
            (
                Code::PermissionDenied | Code::Unauthenticated,
                Some(HttpResponse::DeniedResponse(_)),
            ) => {}
            _ => panic!("not an answer Envoy can act on: {response:?}"),
        }
    }

    /// The known-good request is still allowed.
    fn still_serving(&self) {
        let uid = |ty: &str, id: &str| {
            Some(pb::EntityUid {
                r#type: ty.to_owned(),
                id: id.to_owned(),
            })
        };
        let request = pb::IsAuthorizedRequest {
            principal: uid("Platform::User", "bob"),
            action: uid("Platform::Action", "read"),
            resource: uid("Platform::Document", "acme-roadmap-q3"),
            ..Default::default()
        };
        let answer = self
            .runtime
            .block_on(Authorizer::is_authorized(
                &self.authorizer,
                Request::new(request),
            ))
            .expect("the known-good request is answered")
            .into_inner();
        assert_eq!(answer.decision, pb::Decision::Allow as i32, "{answer:?}");
    }

    /// Whether `principal` names an entity of the store (parsed as the server parses it).
    fn stored(&self, principal: Option<&pb::EntityUid>) -> bool {
        let Some(principal) = principal else {
            return false;
        };
        let Ok(ty) = EntityTypeName::from_str(&principal.r#type) else {
            return false;
        };
        let uid = EntityUid::from_type_name_and_id(ty, EntityId::new(&principal.id));
        self.store.current().entities().get(&uid).is_some()
    }
}

fn decided(response: &pb::IsAuthorizedResponse) {
    assert!(
        response.decision == pb::Decision::Allow as i32
            || response.decision == pb::Decision::Deny as i32,
        "neither allow nor deny: {response:?}"
    );
}

fn refused(status: &tonic::Status) {
    assert!(
        matches!(
            status.code(),
            Code::InvalidArgument | Code::ResourceExhausted
        ),
        "unexpected status: {status:?}"
    );
    assert!(!status.message().is_empty(), "a status without a message");
}

fn metadata(response: &CheckResponse, key: &str) -> String {
    match response
        .dynamic_metadata
        .as_ref()
        .and_then(|m| m.fields.get(key))
        .and_then(|v| v.kind.as_ref())
    {
        Some(JsonKind::StringValue(s)) => s.clone(),
        other => panic!("metadata {key} is {other:?}"),
    }
}

// ---- Structured generators ----------------------------------------------------------

/// Some text: a name from the example set, an odd one, a long one, or anything.
fn text(u: &mut Unstructured<'_>, atoms: &[&str]) -> Generated<String> {
    Ok(match u.int_in_range(0..=10u8)? {
        0..=5 => (*u.choose(atoms)?).to_owned(),
        // Around the string limit (max_string_bytes, 64 KiB).
        10 => "a".repeat(u.int_in_range(65_530..=65_540)?),
        6 => u.arbitrary()?,
        7 => {
            let unit = u.choose(&["a", "é", "::", "\"", "[", "{", "%2e", "𝕏", "\u{0}"])?;
            unit.repeat(u.int_in_range(1..=2000)?)
        }
        8 => format!("{}{}", u.choose(atoms)?, u.choose(atoms)?),
        _ => format!("{}{}", u.choose(atoms)?, u.arbitrary::<String>()?),
    })
}

fn uid(u: &mut Unstructured<'_>) -> Generated<pb::EntityUid> {
    Ok(pb::EntityUid {
        r#type: text(u, TYPES)?,
        id: text(u, IDS)?,
    })
}

fn maybe_uid(u: &mut Unstructured<'_>) -> Generated<Option<pb::EntityUid>> {
    Ok(if rarely(u, 16)? { None } else { Some(uid(u)?) })
}

fn value(u: &mut Unstructured<'_>, budget: usize) -> Generated<pb::Value> {
    use pb::value::Kind;
    let kind = match u.int_in_range(0..=9u8)? {
        1 => None,
        0 => Some(Kind::Boolean(u.arbitrary()?)),
        2 => Some(Kind::Long(u.arbitrary()?)),
        3 => Some(Kind::String(text(u, IDS)?)),
        4 => Some(Kind::Entity(uid(u)?)),
        5 => Some(Kind::Extension(pb::Extension {
            r#fn: text(u, EXTENSION_FNS)?,
            arg: text(u, EXTENSION_ARGS)?,
        })),
        6 if budget > 0 => {
            let n = u.int_in_range(0..=4)?;
            let values = (0..n)
                .map(|_| value(u, budget - 1))
                .collect::<Generated<_>>()?;
            Some(Kind::Set(pb::ValueList { values }))
        }
        7 if budget > 0 => Some(Kind::Record(pb::Record {
            fields: fields(u, budget - 1)?,
        })),
        8 => {
            // Nested to around the depth limit (32).
            let depth = u.int_in_range(28..=40)?;
            let mut v = value(u, 0)?;
            for level in 0..depth {
                v = if (level + depth) % 2 == 0 {
                    pb::Value {
                        kind: Some(Kind::Set(pb::ValueList { values: vec![v] })),
                    }
                } else {
                    pb::Value {
                        kind: Some(Kind::Record(pb::Record {
                            fields: HashMap::from([("k".to_owned(), v)]),
                        })),
                    }
                };
            }
            return Ok(v);
        }
        _ => Some(Kind::Boolean(true)),
    };
    Ok(pb::Value { kind })
}

fn fields(u: &mut Unstructured<'_>, budget: usize) -> Generated<HashMap<String, pb::Value>> {
    let n = u.int_in_range(0..=4)?;
    (0..n)
        .map(|_| Ok((text(u, KEYS)?, value(u, budget)?)))
        .collect()
}

fn entity(u: &mut Unstructured<'_>) -> Generated<pb::Entity> {
    let n = u.int_in_range(0..=3)?;
    Ok(pb::Entity {
        uid: maybe_uid(u)?,
        attrs: fields(u, 3)?,
        parents: (0..n).map(|_| uid(u)).collect::<Generated<_>>()?,
        tags: if rarely(u, 8)? {
            fields(u, 2)?
        } else {
            HashMap::new()
        },
    })
}

/// A group of the example's schema (it needs a tenant): `Platform::Group::"g<i>"`.
fn group(i: usize, parents: Vec<pb::EntityUid>) -> pb::Entity {
    let uid = |ty: &str, id: String| pb::EntityUid {
        r#type: ty.to_owned(),
        id,
    };
    pb::Entity {
        uid: Some(uid("Platform::Group", format!("g{i}"))),
        attrs: HashMap::from([(
            "tenant".to_owned(),
            pb::Value {
                kind: Some(pb::value::Kind::Entity(uid(
                    "Platform::Tenant",
                    "acme".to_owned(),
                ))),
            },
        )]),
        parents,
        ..Default::default()
    }
}

/// Entities sent with a call: mostly none; a few odd ones, a parent chain around the
/// ancestor depth limit (64), a cycle, around the count limit (1000), or JSON.
fn entities(u: &mut Unstructured<'_>) -> Generated<(Vec<pb::Entity>, String)> {
    let parent = |i: usize| group(i, Vec::new()).uid.expect("a uid");
    Ok(match u.int_in_range(0..=15u8)? {
        0..=8 => (Vec::new(), String::new()),
        9 | 10 => {
            let n = u.int_in_range(1..=4)?;
            (
                (0..n).map(|_| entity(u)).collect::<Generated<_>>()?,
                String::new(),
            )
        }
        11 => {
            let n = u.int_in_range(60..=70)?;
            let cyclic = rarely(u, 4)?;
            let chain = (0..n)
                .map(|i| {
                    let parents = if i + 1 < n {
                        vec![parent(i + 1)]
                    } else if cyclic {
                        vec![parent(0)]
                    } else {
                        Vec::new()
                    };
                    group(i, parents)
                })
                .collect();
            (chain, String::new())
        }
        12 => {
            let n = u.int_in_range(995..=1005)?;
            (
                (0..n).map(|i| group(i, Vec::new())).collect(),
                String::new(),
            )
        }
        13 | 14 => (Vec::new(), json(u)?),
        _ => (vec![entity(u)?], json(u)?),
    })
}

fn json(u: &mut Unstructured<'_>) -> Generated<String> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 | 1 => (*u.choose(JSON_TEXTS)?).to_owned(),
        2 => {
            let depth = u.int_in_range(1..=200)?;
            let (open, close) = *u.choose(&[("[", "]"), ("{\"a\":", "}"), ("[", "")])?;
            format!("{}1{}", open.repeat(depth), close.repeat(depth))
        }
        _ => text(u, JSON_TEXTS)?,
    })
}

fn context(u: &mut Unstructured<'_>) -> Generated<(HashMap<String, pb::Value>, String)> {
    Ok(match u.int_in_range(0..=5u8)? {
        0 => (HashMap::new(), String::new()),
        1..=3 => (fields(u, 3)?, String::new()),
        4 => (HashMap::new(), json(u)?),
        _ => (fields(u, 1)?, json(u)?),
    })
}

/// A question the schema accepts (action, principal and resource types that fit, a
/// context of declared attributes) about mostly stored entities, with one part sometimes
/// replaced by anything.
fn question(
    u: &mut Unstructured<'_>,
) -> Generated<(
    Option<pb::EntityUid>,
    Option<pb::EntityUid>,
    Option<pb::EntityUid>,
)> {
    let (action, principals, resources) = *u.choose(APPLIES_TO)?;
    let (resource_type, resource_id) = *u.choose(resources)?;
    let platform = |ty: &str, id: &str| pb::EntityUid {
        r#type: format!("Platform::{ty}"),
        id: id.to_owned(),
    };
    let mut parts = [
        Some(platform(u.choose(principals)?, u.choose(PRINCIPAL_IDS)?)),
        Some(platform("Action", action)),
        Some(platform(resource_type, resource_id)),
    ];
    if rarely(u, 4)? {
        let i = u.choose_index(3)?;
        parts[i] = maybe_uid(u)?;
    }
    let [principal, action, resource] = parts;
    Ok((principal, action, resource))
}

/// A context of the example's declared attributes, or anything.
fn plausible_context(u: &mut Unstructured<'_>) -> Generated<(HashMap<String, pb::Value>, String)> {
    use pb::value::Kind;
    if rarely(u, 3)? {
        return context(u);
    }
    let mut fields = HashMap::new();
    let extension = |f: &str, arg: String| pb::Value {
        kind: Some(Kind::Extension(pb::Extension {
            r#fn: f.to_owned(),
            arg,
        })),
    };
    if u.arbitrary()? {
        fields.insert(
            "mfa".to_owned(),
            pb::Value {
                kind: Some(Kind::Boolean(u.arbitrary()?)),
            },
        );
    }
    if u.arbitrary()? {
        fields.insert(
            "source_ip".to_owned(),
            extension(
                "ip",
                text(u, &["10.1.2.3", "192.0.2.1", "::1", "10.0.0.0/8"])?,
            ),
        );
    }
    if u.arbitrary()? {
        fields.insert(
            "now".to_owned(),
            extension(
                "datetime",
                text(
                    u,
                    &["2026-11-23T12:00:00Z", "2020-01-01", "1970-01-01T00:00:00Z"],
                )?,
            ),
        );
    }
    if rarely(u, 4)? {
        fields.insert(
            "risk_score".to_owned(),
            extension("decimal", text(u, &["0.1", "0.8", "0.8001", "1.0"])?),
        );
    }
    Ok((fields, String::new()))
}

fn is_authorized_request(u: &mut Unstructured<'_>) -> Generated<pb::IsAuthorizedRequest> {
    let (principal, action, resource) = if !rarely(u, 4)? {
        question(u)?
    } else {
        (maybe_uid(u)?, maybe_uid(u)?, maybe_uid(u)?)
    };
    let (context, context_json) = plausible_context(u)?;
    let (entities, entities_json) = entities(u)?;
    Ok(pb::IsAuthorizedRequest {
        principal,
        action,
        resource,
        context,
        entities,
        context_json,
        entities_json,
    })
}

fn batch_item(u: &mut Unstructured<'_>) -> Generated<pb::BatchItem> {
    let (principal, action, resource) = if !rarely(u, 4)? {
        question(u)?
    } else {
        (maybe_uid(u)?, maybe_uid(u)?, maybe_uid(u)?)
    };
    let (context, context_json) = plausible_context(u)?;
    Ok(pb::BatchItem {
        principal,
        action,
        resource,
        context,
        context_json,
    })
}

fn batch_request(u: &mut Unstructured<'_>) -> Generated<pb::BatchIsAuthorizedRequest> {
    let (entities, entities_json) = entities(u)?;
    let mut items = (0..u.int_in_range(0..=6)?)
        .map(|_| batch_item(u))
        .collect::<Generated<Vec<_>>>()?;
    if rarely(u, 8)? && !items.is_empty() {
        // Around the batch limit (1000).
        let n = u.int_in_range(990..=1010)?;
        items = items.iter().cycle().take(n).cloned().collect();
    }
    Ok(pb::BatchIsAuthorizedRequest {
        entities,
        entities_json,
        items,
    })
}

fn json_value(u: &mut Unstructured<'_>, budget: usize) -> Generated<Json> {
    let kind = match u.int_in_range(0..=8u8)? {
        0 => None,
        1 => Some(JsonKind::NullValue(0)),
        2 => Some(JsonKind::BoolValue(u.arbitrary()?)),
        3 => Some(JsonKind::NumberValue(*u.choose(&[
            0.0,
            1.0,
            -1.0,
            0.5,
            1e300,
            f64::NAN,
            f64::INFINITY,
            9.007_199_254_740_993e15,
        ])?)),
        4 => Some(JsonKind::StringValue(text(u, IDENTITIES)?)),
        5 if budget > 0 => Some(JsonKind::ListValue(ListValue {
            values: (0..u.int_in_range(0..=3)?)
                .map(|_| json_value(u, budget - 1))
                .collect::<Generated<_>>()?,
        })),
        6 if budget > 0 => Some(JsonKind::StructValue(Struct {
            fields: (0..u.int_in_range(0..=3)?)
                .map(|_| Ok((text(u, KEYS)?, json_value(u, budget - 1)?)))
                .collect::<Generated<_>>()?,
        })),
        7 => {
            // Nested to around the depth limit (32).
            let mut v = Json {
                kind: Some(JsonKind::StringValue("x".to_owned())),
            };
            for _ in 0..u.int_in_range(28..=40)? {
                v = Json {
                    kind: Some(JsonKind::ListValue(ListValue { values: vec![v] })),
                };
            }
            return Ok(v);
        }
        _ => Some(JsonKind::StringValue("a@acme.example".to_owned())),
    };
    Ok(Json { kind })
}

fn check_request(u: &mut Unstructured<'_>) -> Generated<CheckRequest> {
    let mut headers = HashMap::new();
    for _ in 0..u.int_in_range(0..=3)? {
        let name = *u.choose(&[
            "user-agent",
            "content-type",
            "x-request-id",
            "X-Request-Id",
            "",
        ])?;
        let value = text(
            u,
            &[
                "curl/8",
                "application/grpc",
                "application/grpc+proto",
                "\r\n",
                "req-1",
            ],
        )?;
        headers.insert(name.to_owned(), value);
    }
    let header_map = if rarely(u, 6)? {
        Some(HeaderMap {
            headers: (0..u.int_in_range(0..=3)?)
                .map(|_| {
                    Ok(HeaderValue {
                        key: (*u.choose(&["content-type", "user-agent", "x-request-id"])?)
                            .to_owned(),
                        value: text(u, &["application/grpc", "curl/8"])?,
                        raw_value: u.arbitrary()?,
                    })
                })
                .collect::<Generated<_>>()?,
        })
    } else {
        None
    };
    let http = HttpRequest {
        id: text(u, &["req-ext-1", ""])?,
        method: text(u, METHODS)?,
        path: text(u, PATHS)?,
        host: text(
            u,
            &[
                "docs.acme.example",
                "DOCS.acme.example:8443",
                "[::1]:80",
                "[::1",
                ":",
                "",
            ],
        )?,
        headers,
        header_map,
        ..Default::default()
    };
    let mut claims = Struct {
        fields: (0..u.int_in_range(0..=3)?)
            .map(|_| {
                let name = *u.choose(&["sub", "email", "scope", "other"])?;
                Ok((name.to_owned(), json_value(u, 3)?))
            })
            .collect::<Generated<_>>()?,
    };
    let plausible = !rarely(u, 3)?;
    if plausible {
        // A verified subject, as jwt_authn writes it.
        claims.fields.insert(
            "sub".to_owned(),
            Json {
                kind: Some(JsonKind::StringValue(text(u, IDENTITIES)?)),
            },
        );
    }
    let (namespace, key) = if plausible {
        ("envoy.filters.http.jwt_authn", "jwt_payload")
    } else {
        (
            *u.choose(&["envoy.filters.http.jwt_authn", "other"])?,
            *u.choose(&["jwt_payload", "payload"])?,
        )
    };
    let metadata = match u.int_in_range(0..=7u8)? {
        6 => None,
        7 => Some(Metadata::default()),
        _ => Some(Metadata {
            filter_metadata: HashMap::from([(
                namespace.to_owned(),
                Struct {
                    fields: BTreeMap::from([(
                        key.to_owned(),
                        if rarely(u, 16)? {
                            json_value(u, 2)?
                        } else {
                            Json {
                                kind: Some(JsonKind::StructValue(claims)),
                            }
                        },
                    )]),
                },
            )]),
            ..Default::default()
        }),
    };
    let source = if rarely(u, 2)? {
        Some(Peer {
            principal: text(u, IDENTITIES)?,
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: text(u, &["10.1.2.3", "192.0.2.1", "::1", "garbage", ""])?,
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })
    } else {
        None
    };
    let attributes = match u.int_in_range(0..=15u8)? {
        13 => None,
        14 => Some(AttributeContext::default()),
        15 => Some(AttributeContext {
            request: Some(CheckedRequest::default()),
            source,
            metadata_context: metadata,
            ..Default::default()
        }),
        _ => Some(AttributeContext {
            request: Some(CheckedRequest {
                http: Some(http),
                ..Default::default()
            }),
            source,
            metadata_context: metadata,
            ..Default::default()
        }),
    };
    Ok(CheckRequest { attributes })
}
