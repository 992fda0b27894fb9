use super::*;

#[test]
fn escapes_of_unreserved_characters_are_decoded_and_others_kept() {
    assert_eq!(normalize("/%61dmin/a%2fb/%7e"), "/admin/a%2Fb/~");
    assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
    assert_eq!(percent_decode("%+1"), None);
    assert_eq!(percent_decode("%ff"), None, "not UTF-8");
    assert_eq!(percent_decode("%4"), None, "cut short");
}

#[test]
fn the_host_is_the_authority_without_port_or_user_info() {
    assert_eq!(host_of("docs.example.com"), "docs.example.com");
    assert_eq!(host_of("Docs.Example.com:443"), "Docs.Example.com");
    assert_eq!(host_of("[::1]:8080"), "[::1]");
    assert_eq!(host_of("user@docs.example.com:1"), "docs.example.com");
    assert_eq!(host_of("not a host"), "not a host");
}

use crate::{
    config::ext_authz::ExtAuthzSettings,
    decide::Reason,
    proto::envoy::config::core::v3::{
        Address, HeaderMap, HeaderValue, Metadata, Pipe, SocketAddress, socket_address,
    },
    proto::envoy::service::auth::v3::attribute_context::{Peer, Request},
};
use prost_types::{ListValue, Value};

const DEPTH: usize = 32;

// --- building checks ------------------------------------------------------------------

fn mapping(text: &str) -> ExtAuthz {
    let settings = toml::from_str::<ExtAuthzSettings>(text)
        .unwrap_or_else(|e| panic!("{text}\ndoes not parse: {e}"));
    ExtAuthz::compile(&settings).unwrap_or_else(|e| panic!("{text}\ndoes not compile: {e}"))
}

/// A check of `method path` on `docs.example.com`, from no peer.
fn check(method: &str, path: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                time: None,
                http: Some(HttpRequest {
                    id: "req-1".to_owned(),
                    method: method.to_owned(),
                    path: path.to_owned(),
                    host: "docs.example.com".to_owned(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

fn http(check: &mut CheckRequest) -> &mut HttpRequest {
    check
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap()
}

fn attributes(check: &mut CheckRequest) -> &mut AttributeContext {
    check.attributes.as_mut().unwrap()
}

fn header(mut check: CheckRequest, name: &str, value: &str) -> CheckRequest {
    http(&mut check)
        .headers
        .insert(name.to_owned(), value.to_owned());
    check
}

fn host(mut check: CheckRequest, host: &str) -> CheckRequest {
    http(&mut check).host = host.to_owned();
    check
}

fn socket(ip: &str) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(41_000)),
            ..Default::default()
        })),
    }
}

fn pipe() -> Address {
    Address {
        address: Some(address::Address::Pipe(Pipe {
            path: "/run/envoy.sock".to_owned(),
            mode: 0,
        })),
    }
}

/// The downstream peer: its mTLS identity (empty for none) and address.
fn peer(mut check: CheckRequest, principal: &str, address: Option<Address>) -> CheckRequest {
    attributes(&mut check).source = Some(Peer {
        principal: principal.to_owned(),
        address,
        ..Default::default()
    });
    check
}

fn value(kind: Kind) -> Value {
    Value { kind: Some(kind) }
}

fn string_value(s: &str) -> Value {
    value(Kind::StringValue(s.to_owned()))
}

fn number(n: f64) -> Value {
    value(Kind::NumberValue(n))
}

fn null() -> Value {
    value(Kind::NullValue(0))
}

fn list(values: Vec<Value>) -> Value {
    value(Kind::ListValue(ListValue { values }))
}

fn object(fields: &[(&str, Value)]) -> Value {
    value(Kind::StructValue(object_struct(fields)))
}

fn object_struct(fields: &[(&str, Value)]) -> Struct {
    Struct {
        fields: fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    }
}

/// A verified JWT payload under `namespace` / `key`.
fn jwt_at(
    mut check: CheckRequest,
    namespace: &str,
    key: &str,
    claims: &[(&str, Value)],
) -> CheckRequest {
    let holder = object_struct(&[(key, object(claims))]);
    attributes(&mut check)
        .metadata_context
        .get_or_insert_with(Metadata::default)
        .filter_metadata
        .insert(namespace.to_owned(), holder);
    check
}

fn jwt(check: CheckRequest, claims: &[(&str, Value)]) -> CheckRequest {
    jwt_at(check, "envoy.filters.http.jwt_authn", "jwt_payload", claims)
}

fn grpc(check: CheckRequest) -> CheckRequest {
    header(check, "content-type", "application/grpc")
}

// --- reading results ------------------------------------------------------------------

fn mapped(mapping: &ExtAuthz, check: &CheckRequest) -> Mapped {
    map(mapping, check, DEPTH).unwrap_or_else(|e| panic!("refused: {e:?}\n{check:?}"))
}

fn refused_with(mapping: &ExtAuthz, check: &CheckRequest, depth: usize) -> Refusal {
    match map(mapping, check, depth) {
        Err(error) if error.reason() == Reason::Unauthenticated => {
            panic!("unauthenticated, not refused: {check:?}")
        }
        Err(error) => error,
        Ok(mapped) => panic!("mapped: {mapped:?}"),
    }
}

/// The field of the `Invalid` error the check is refused with.
fn invalid_field(mapping: &ExtAuthz, check: &CheckRequest) -> String {
    match refused_with(mapping, check, DEPTH) {
        refusal if refusal.reason() == Reason::Invalid => refusal.field().to_owned(),
        other => panic!("not invalid: {other:?}"),
    }
}

fn unauthenticated(mapping: &ExtAuthz, check: &CheckRequest) -> bool {
    matches!(map(mapping, check, DEPTH), Err(e) if e.reason() == Reason::Unauthenticated)
}

fn principal_of(mapping: &ExtAuthz, check: &CheckRequest) -> String {
    mapped(mapping, check).query.principal.to_string()
}

fn action_of(mapping: &ExtAuthz, check: &CheckRequest) -> String {
    mapped(mapping, check).query.action.to_string()
}

fn resource_of(mapping: &ExtAuthz, check: &CheckRequest) -> String {
    mapped(mapping, check).query.resource.to_string()
}

fn context_part(mapped: &Mapped, name: &str) -> Option<Attr> {
    mapped
        .context
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.clone())
}

fn context_names(mapped: &Mapped) -> Vec<&'static str> {
    mapped.context.iter().map(|(k, _)| *k).collect()
}

fn s(text: &str) -> Attr {
    Attr::String(text.to_owned())
}

fn rec(fields: &[(&str, Attr)]) -> Attr {
    Attr::Record(
        fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    )
}

/// A user as a JWT source, then a service as mTLS with a SPIFFE match.
const USERS_AND_SERVICES: &str = r#"
[[principal]]
from = "jwt"
type = "App::User"

[[principal]]
from = "mtls"
match = "spiffe://acme.example/ns/{namespace}/sa/{name}"
id = "{namespace}/{name}"
type = "App::Service"
"#;

// --- principal ------------------------------------------------------------------------

#[test]
fn by_default_the_mtls_identity_is_a_service_as_it_is() {
    let m = ExtAuthz::default();
    let c = peer(check("GET", "/a"), "spiffe://td/ns/a/sa/web", None);
    assert_eq!(
        principal_of(&m, &c),
        r#"Service::"spiffe://td/ns/a/sa/web""#
    );
    // No peer, or a peer without an identity: nobody.
    assert!(unauthenticated(&m, &check("GET", "/a")));
    assert!(unauthenticated(
        &m,
        &peer(check("GET", "/a"), "", Some(socket("10.0.0.1")))
    ));
}

#[test]
fn an_mtls_identity_that_does_not_match_falls_through_to_the_next_source() {
    let m = mapping(
        r#"
        [[principal]]
        from = "mtls"
        match = "spiffe://acme.example/ns/{namespace}/sa/{name}"
        id = "{namespace}/{name}"
        type = "Svc"
        [[principal]]
        from = "header"
        header = "X-User"
        type = "User"
        "#,
    );
    let ours = peer(
        check("GET", "/a"),
        "spiffe://acme.example/ns/prod/sa/web",
        None,
    );
    assert_eq!(principal_of(&m, &ours), r#"Svc::"prod/web""#);
    // Matched first, so the header is not read.
    assert_eq!(
        principal_of(&m, &header(ours, "x-user", "bob")),
        r#"Svc::"prod/web""#
    );

    let foreign = peer(
        check("GET", "/a"),
        "spiffe://evil.example/ns/prod/sa/web",
        None,
    );
    assert_eq!(
        principal_of(&m, &header(foreign.clone(), "x-user", "bob")),
        r#"User::"bob""#
    );
    assert!(unauthenticated(&m, &foreign));
    let too_long = peer(
        check("GET", "/a"),
        "spiffe://acme.example/ns/prod/sa/web/x",
        None,
    );
    assert!(unauthenticated(&m, &too_long));
    let empty_segment = peer(check("GET", "/a"), "spiffe://acme.example/ns//sa/web", None);
    assert!(unauthenticated(&m, &empty_segment));
}

#[test]
fn a_header_principal_is_read_from_the_map_or_the_raw_header_list() {
    let m =
        mapping("[[principal]]\nfrom = \"header\"\nheader = \"X-Auth-User\"\ntype = \"User\"\n");
    assert_eq!(
        principal_of(&m, &header(check("GET", "/a"), "x-auth-user", "alice")),
        r#"User::"alice""#
    );
    // Another header does not count.
    assert!(unauthenticated(
        &m,
        &header(check("GET", "/a"), "x-user", "alice")
    ));
    // An empty value is no identity.
    assert!(unauthenticated(
        &m,
        &header(check("GET", "/a"), "x-auth-user", "")
    ));

    // With `encode_raw_headers`, Envoy leaves `headers` empty and sends `header_map`
    // with raw values; names are matched in any case.
    let mut raw = check("GET", "/a");
    http(&mut raw).header_map = Some(HeaderMap {
        headers: vec![
            HeaderValue {
                key: "user-agent".to_owned(),
                value: String::new(),
                raw_value: b"curl".to_vec(),
            },
            HeaderValue {
                key: "X-Auth-User".to_owned(),
                value: String::new(),
                raw_value: b"carol".to_vec(),
            },
        ],
    });
    assert_eq!(principal_of(&m, &raw), r#"User::"carol""#);

    let mut plain = check("GET", "/a");
    http(&mut plain).header_map = Some(HeaderMap {
        headers: vec![HeaderValue {
            key: "x-auth-user".to_owned(),
            value: "dave".to_owned(),
            raw_value: Vec::new(),
        }],
    });
    assert_eq!(principal_of(&m, &plain), r#"User::"dave""#);

    // Repeated headers are joined with ','.
    let mut twice = check("GET", "/a");
    http(&mut twice).header_map = Some(HeaderMap {
        headers: ["a", "b"]
            .iter()
            .map(|v| HeaderValue {
                key: "x-auth-user".to_owned(),
                value: String::new(),
                raw_value: v.as_bytes().to_vec(),
            })
            .collect(),
    });
    assert_eq!(principal_of(&m, &twice), r#"User::"a,b""#);
}

#[test]
fn a_jwt_principal_is_a_string_claim_of_the_verified_payload() {
    let m = mapping(USERS_AND_SERVICES);
    let bob = jwt(check("GET", "/a"), &[("sub", string_value("bob"))]);
    assert_eq!(principal_of(&m, &bob), r#"App::User::"bob""#);

    // A sub that is not a string yields nothing.
    for sub in [
        number(7.0),
        value(Kind::BoolValue(true)),
        list(vec![string_value("bob")]),
        null(),
    ] {
        let c = jwt(check("GET", "/a"), &[("sub", sub.clone())]);
        assert!(unauthenticated(&m, &c), "{sub:?}");
    }
    // No sub at all, or a payload somewhere else.
    assert!(unauthenticated(
        &m,
        &jwt(check("GET", "/a"), &[("email", string_value("bob@x"))])
    ));
    assert!(unauthenticated(
        &m,
        &jwt_at(
            check("GET", "/a"),
            "other.filter",
            "jwt_payload",
            &[("sub", string_value("bob"))]
        )
    ));
    assert!(unauthenticated(
        &m,
        &jwt_at(
            check("GET", "/a"),
            "envoy.filters.http.jwt_authn",
            "payload",
            &[("sub", string_value("bob"))]
        )
    ));

    // Another claim, namespace and payload key, as configured.
    let custom = mapping(
        r#"
        jwt_metadata_namespace = "my.jwt"
        jwt_payload_key = "verified"
        [[principal]]
        from = "jwt"
        claim = "email"
        type = "User"
        "#,
    );
    let c = jwt_at(
        check("GET", "/a"),
        "my.jwt",
        "verified",
        &[
            ("sub", string_value("bob")),
            ("email", string_value("bob@acme.example")),
        ],
    );
    assert_eq!(principal_of(&custom, &c), r#"User::"bob@acme.example""#);
    assert!(unauthenticated(
        &custom,
        &jwt(
            check("GET", "/a"),
            &[("email", string_value("bob@acme.example"))]
        )
    ));
}

#[test]
fn sources_are_tried_in_the_order_configured() {
    let both = jwt(
        peer(
            check("GET", "/a"),
            "spiffe://acme.example/ns/x/sa/web",
            None,
        ),
        &[("sub", string_value("bob"))],
    );
    let jwt_first = mapping(USERS_AND_SERVICES);
    assert_eq!(principal_of(&jwt_first, &both), r#"App::User::"bob""#);

    let mtls_first = mapping(
        r#"
        [[principal]]
        from = "mtls"
        match = "spiffe://acme.example/ns/{namespace}/sa/{name}"
        id = "{namespace}/{name}"
        type = "App::Service"
        [[principal]]
        from = "jwt"
        type = "App::User"
        "#,
    );
    assert_eq!(principal_of(&mtls_first, &both), r#"App::Service::"x/web""#);

    // Only the later source present: it is taken.
    let service_only = peer(
        check("GET", "/a"),
        "spiffe://acme.example/ns/x/sa/web",
        None,
    );
    assert_eq!(
        principal_of(&jwt_first, &service_only),
        r#"App::Service::"x/web""#
    );
}

// --- action ---------------------------------------------------------------------------

const ACTIONS: &str = r#"
action_type = "App::Action"
methods = { GET = "read", POST = "write" }

[[principal]]
from = "header"
header = "x-user"
type = "User"

[[routes]]
path = "/docs/{doc}/share"
action = "share"
resource_type = "App::Doc"
resource_id = "{doc}"

[[routes]]
path = "/secrets/{secret}"
actions = { GET = "readSecret", PUT = "rotateSecret" }
resource_type = "App::Secret"
resource_id = "{secret}"

[[routes]]
path = "/pkg.Billing/{rpc}"
action = "invoke"
resource_type = "App::Service"
resource_id = "billing"

[[routes]]
path = "/pkg.Store/{rpc}"
actions = { POST = "store" }
resource_type = "App::Service"
resource_id = "store"
"#;

fn as_user(c: CheckRequest) -> CheckRequest {
    header(c, "x-user", "u")
}

#[test]
fn the_action_is_the_routes_then_the_routes_method_then_the_tables_then_the_method() {
    let m = mapping(ACTIONS);
    let act = |method: &str, path: &str| action_of(&m, &as_user(check(method, path)));
    // The route's fixed action, whatever the method.
    assert_eq!(act("POST", "/docs/d1/share"), r#"App::Action::"share""#);
    assert_eq!(act("GET", "/docs/d1/share"), r#"App::Action::"share""#);
    // The route's own method table, before the table's.
    assert_eq!(act("GET", "/secrets/s1"), r#"App::Action::"readSecret""#);
    assert_eq!(act("PUT", "/secrets/s1"), r#"App::Action::"rotateSecret""#);
    // A method the route does not name: the table's.
    assert_eq!(act("POST", "/secrets/s1"), r#"App::Action::"write""#);
    // Neither names it: the method itself.
    assert_eq!(act("PATCH", "/secrets/s1"), r#"App::Action::"PATCH""#);
    assert_eq!(act("DELETE", "/nowhere"), r#"App::Action::"DELETE""#);
    assert_eq!(act("GET", "/nowhere"), r#"App::Action::"read""#);

    // With no table at all, the method.
    assert_eq!(
        action_of(
            &ExtAuthz::default(),
            &peer(check("OPTIONS", "/"), "id", None)
        ),
        r#"Action::"OPTIONS""#
    );
}

#[test]
fn no_header_chooses_the_action_and_a_grpc_route_names_its_own() {
    let m = mapping(ACTIONS);
    let act = |c: CheckRequest| action_of(&m, &as_user(c));
    // `content-type: application/grpc` once skipped the method maps and made the action
    // the path: a client stepped around a `forbid` on an action by setting a header.
    for content_type in [
        "application/grpc",
        "application/grpc+proto",
        "application/json",
    ] {
        let with = |method: &str, path: &str| {
            act(header(check(method, path), "content-type", content_type))
        };
        assert_eq!(
            with("POST", "/secrets/s1"),
            r#"App::Action::"write""#,
            "{content_type}"
        );
        assert_eq!(with("PUT", "/secrets/s1"), r#"App::Action::"rotateSecret""#);
        assert_eq!(with("POST", "/pkg.Store/Put"), r#"App::Action::"store""#);
        assert_eq!(with("POST", "/pkg.Other/Call"), r#"App::Action::"write""#);
        assert_eq!(
            with("POST", "/pkg.Billing/Charge"),
            r#"App::Action::"invoke""#
        );
    }
    assert_eq!(
        act(check("POST", "/pkg.Store/Put")),
        r#"App::Action::"store""#
    );

    // A gRPC route's action from its path, by the route's template.
    let grpc_routes = mapping(
        r#"
        action_type = "App::Action"
        [[principal]]
        from = "header"
        header = "x-user"
        type = "User"
        [[routes]]
        path = "/pkg.Billing/{rpc}"
        action = "billing.{rpc}"
        [[routes]]
        path = "/{service}/{rpc}"
        action = "{path}"
        "#,
    );
    let act = |c: CheckRequest| action_of(&grpc_routes, &as_user(c));
    assert_eq!(
        act(grpc(check("POST", "/pkg.Billing/Charge"))),
        r#"App::Action::"billing.Charge""#
    );
    assert_eq!(
        act(grpc(check("POST", "/pkg.Other/Call?x=1"))),
        r#"App::Action::"/pkg.Other/Call""#,
        "the path has no query"
    );
    // The same with or without the header.
    assert_eq!(
        act(check("POST", "/pkg.Other/Call")),
        r#"App::Action::"/pkg.Other/Call""#
    );
}

// --- resource -------------------------------------------------------------------------

const RESOURCES: &str = r#"
[[principal]]
from = "header"
header = "x-user"
type = "User"

[[routes]]
host = "admin.example.com"
path = "/projects/{project}"
resource_type = "AdminProject"
resource_id = "{project}"

[[routes]]
host = "*.example.com"
path = "/projects/{project}"
resource_type = "Project"
resource_id = "{host}:{project}"

[[routes]]
path = "/projects/{project}"
resource_type = "AnyProject"
resource_id = "{project}"

[[routes]]
path = "/files/{owner}/{file...}"
resource_type = "File"
resource_id = "{method} {owner}:{file}"
"#;

#[test]
fn the_first_route_whose_host_and_path_match_names_the_resource() {
    let m = mapping(RESOURCES);
    let on = |h: &str, path: &str| resource_of(&m, &as_user(host(check("GET", path), h)));
    assert_eq!(
        on("admin.example.com", "/projects/p1"),
        r#"AdminProject::"p1""#
    );
    assert_eq!(
        on("ADMIN.Example.com:8443", "/projects/p1"),
        r#"AdminProject::"p1""#,
        "host compared lower case, without the port"
    );
    assert_eq!(
        on("docs.example.com", "/projects/p1"),
        r#"Project::"docs.example.com:p1""#
    );
    assert_eq!(
        on("example.com", "/projects/p1"),
        r#"AnyProject::"p1""#,
        "*.example.com is not example.com"
    );
    assert_eq!(
        on("other.test", "/projects/p1?view=all"),
        r#"AnyProject::"p1""#
    );
    assert_eq!(
        on("other.test", "/files/bob/a/b.txt"),
        r#"File::"GET bob:a/b.txt""#
    );
    // No route: the default resource, host lower case without its port, no query.
    assert_eq!(
        on("Docs.Example.COM:8080", "/projects/p1/extra?q=1#frag"),
        r#"Resource::"docs.example.com/projects/p1/extra""#
    );
    assert_eq!(on("[::1]:8080", "/x"), r#"Resource::"[::1]/x""#);
}

#[test]
fn route_parameters_are_percent_decoded_and_the_path_normalized() {
    let m = mapping(RESOURCES);
    let c = as_user(host(check("GET", "/projects/my%20proj"), "other.test"));
    let out = mapped(&m, &c);
    assert_eq!(out.query.resource.to_string(), r#"AnyProject::"my proj""#);
    assert_eq!(
        context_part(&out, "params"),
        Some(rec(&[("project", s("my proj"))]))
    );
    // The context path keeps escapes of reserved characters (upper-cased).
    assert_eq!(context_part(&out, "path"), Some(s("/projects/my%20proj")));

    let c = as_user(host(
        check("GET", "/files/b%6Fb/dir/na%20me.txt"),
        "other.test",
    ));
    let out = mapped(&m, &c);
    assert_eq!(
        out.query.resource.to_string(),
        r#"File::"GET bob:dir/na me.txt""#
    );
    assert_eq!(
        context_part(&out, "params"),
        Some(rec(&[("owner", s("bob")), ("file", s("dir/na me.txt"))]))
    );
    assert_eq!(
        context_part(&out, "path"),
        Some(s("/files/bob/dir/na%20me.txt"))
    );
}

#[test]
fn an_escaped_path_is_normalized_before_policies_see_it() {
    let m = mapping(
        r#"
        [[principal]]
        from = "header"
        header = "x-user"
        type = "User"
        [[routes]]
        path = "/admin"
        resource_type = "Admin"
        resource_id = "panel"
        "#,
    );
    let out = mapped(&m, &as_user(check("GET", "/%61dmin")));
    assert_eq!(context_part(&out, "path"), Some(s("/admin")));
    assert_eq!(out.query.resource.to_string(), r#"Admin::"panel""#);
    let out = mapped(&m, &as_user(check("GET", "/%41DMIN%2fx")));
    assert_eq!(context_part(&out, "path"), Some(s("/ADMIN%2Fx")));
}

// --- context --------------------------------------------------------------------------

#[test]
fn the_default_context_is_method_path_host_and_source_ip() {
    let m = ExtAuthz::default();
    let c = peer(
        host(check("GET", "/a/b?q=1"), "Docs.Example.com:443"),
        "spiffe://td/sa/web",
        Some(socket("10.0.0.7")),
    );
    let out = mapped(&m, &c);
    assert_eq!(
        out.context,
        [
            ("method", s("GET")),
            ("path", s("/a/b")),
            ("host", s("docs.example.com")),
            ("source_ip", Attr::Ip("10.0.0.7".to_owned())),
        ]
    );
    assert!(matches!(out.query.context, ContextInput::Canonical(..)));
    assert_eq!(
        out.query.resource.to_string(),
        r#"Resource::"docs.example.com/a/b""#
    );
    assert_eq!(out.query.action.to_string(), r#"Action::"GET""#);
}

#[test]
fn source_ip_is_there_only_for_an_ip_socket_address() {
    let m = ExtAuthz::default();
    let from = |address: Option<Address>| {
        let out = mapped(&m, &peer(check("GET", "/"), "svc", address));
        context_part(&out, "source_ip")
    };
    assert_eq!(
        from(Some(socket("10.0.0.7"))),
        Some(Attr::Ip("10.0.0.7".to_owned()))
    );
    assert_eq!(
        from(Some(socket("2001:db8::1"))),
        Some(Attr::Ip("2001:db8::1".to_owned()))
    );
    assert_eq!(from(Some(pipe())), None);
    assert_eq!(from(Some(socket("localhost"))), None);
    assert_eq!(from(Some(Address { address: None })), None);
    assert_eq!(from(None), None);
    let out = mapped(&m, &peer(check("GET", "/"), "svc", Some(pipe())));
    assert_eq!(context_names(&out), ["method", "path", "host"]);
}

#[test]
fn only_allow_listed_headers_present_reach_the_context() {
    let m = mapping(
        r#"
        headers = ["User-Agent", "x-missing"]
        [[principal]]
        from = "header"
        header = "x-user"
        type = "User"
        "#,
    );
    let c = header(
        header(as_user(check("GET", "/")), "user-agent", "curl/8"),
        "authorization",
        "Bearer secret",
    );
    let out = mapped(&m, &c);
    assert_eq!(
        out.context,
        [
            ("method", s("GET")),
            ("path", s("/")),
            ("host", s("docs.example.com")),
            ("headers", rec(&[("user-agent", s("curl/8"))])),
        ]
    );
    // Configured but none sent: an empty record.
    let out = mapped(&m, &as_user(check("GET", "/")));
    assert_eq!(context_part(&out, "headers"), Some(rec(&[])));

    // Not configured: no headers part at all.
    let out = mapped(
        &ExtAuthz::default(),
        &header(peer(check("GET", "/"), "svc", None), "user-agent", "x"),
    );
    assert_eq!(context_part(&out, "headers"), None);
}

#[test]
fn claims_are_typed_and_nulls_dropped() {
    let m = mapping(
        r#"
        claims = ["admin", "age", "groups", "profile", "gone", "absent", "email", "delta"]
        [[principal]]
        from = "jwt"
        type = "User"
        "#,
    );
    let c = jwt(
        check("GET", "/"),
        &[
            ("sub", string_value("bob")),
            ("admin", value(Kind::BoolValue(true))),
            ("age", number(42.0)),
            ("delta", number(-3.0)),
            (
                "groups",
                list(vec![string_value("a"), null(), string_value("b")]),
            ),
            (
                "profile",
                object(&[
                    ("name", string_value("Bob")),
                    ("n", number(1.0)),
                    ("x", null()),
                ]),
            ),
            ("gone", null()),
            ("email", string_value("bob@acme.example")),
            ("secret", string_value("not allow-listed")),
        ],
    );
    let out = mapped(&m, &c);
    assert_eq!(
        context_part(&out, "claims"),
        Some(rec(&[
            ("admin", Attr::Bool(true)),
            ("age", Attr::Long(42)),
            ("groups", Attr::Set(vec![s("a"), s("b")])),
            ("profile", rec(&[("n", Attr::Long(1)), ("name", s("Bob"))])),
            ("email", s("bob@acme.example")),
            ("delta", Attr::Long(-3)),
        ]))
    );
    assert_eq!(context_names(&out), ["method", "path", "host", "claims"]);

    // A payload with none of them: an empty record; no payload: no claims part.
    let out = mapped(&m, &jwt(check("GET", "/"), &[("sub", string_value("bob"))]));
    assert_eq!(context_part(&out, "claims"), Some(rec(&[])));
    let header_user = mapping(
        "claims = [\"email\"]\n[[principal]]\nfrom = \"header\"\nheader = \"x-user\"\ntype = \"User\"\n",
    );
    let out = mapped(&header_user, &as_user(check("GET", "/")));
    assert_eq!(context_part(&out, "claims"), None);

    // The JSON the audit log gets for them.
    assert_eq!(
        rec(&[
            ("groups", Attr::Set(vec![s("a")])),
            ("ip", Attr::Ip("10.0.0.1".to_owned()))
        ])
        .json(),
        serde_json::json!({"groups": ["a"], "ip": {"__extn": {"fn": "ip", "arg": "10.0.0.1"}}})
    );
}

#[test]
fn a_claim_that_is_not_a_whole_number_is_invalid_by_name() {
    let m =
        mapping("claims = [\"ratio\", \"ids\"]\n[[principal]]\nfrom = \"jwt\"\ntype = \"User\"\n");
    let with = |claims: &[(&str, Value)]| {
        let mut all = vec![("sub", string_value("bob"))];
        all.extend_from_slice(claims);
        jwt(check("GET", "/"), &all)
    };
    assert_eq!(
        invalid_field(&m, &with(&[("ratio", number(1.5))])),
        "claims.ratio"
    );
    assert_eq!(
        invalid_field(&m, &with(&[("ratio", number(1e300))])),
        "claims.ratio"
    );
    assert_eq!(
        invalid_field(&m, &with(&[("ids", list(vec![number(1.0), number(2.5)]))])),
        "claims.ids[1]"
    );
    // Whole numbers are fine, up to 2^53.
    let out = mapped(&m, &with(&[("ratio", number(9_007_199_254_740_992.0))]));
    assert_eq!(
        context_part(&out, "claims"),
        Some(rec(&[("ratio", Attr::Long(9_007_199_254_740_992))]))
    );
}

#[test]
fn claims_nested_past_the_limit_are_refused_as_a_limit() {
    let m = mapping("claims = [\"deep\"]\n[[principal]]\nfrom = \"jwt\"\ntype = \"User\"\n");
    let c = jwt(
        check("GET", "/"),
        &[
            ("sub", string_value("bob")),
            (
                "deep",
                object(&[("a", object(&[("b", string_value("x"))]))]),
            ),
        ],
    );
    let refusal = refused_with(&m, &c, 2);
    assert_eq!(refusal.reason(), Reason::Limit, "{refusal:?}");
    assert_eq!(refusal.field(), "claims.deep.a.b");
    assert!(refusal.message().contains("limit of 2"), "{refusal}");
    let out = map(&m, &c, 3).expect("three levels fit a limit of three");
    assert_eq!(
        context_part(&out, "claims"),
        Some(rec(&[("deep", rec(&[("a", rec(&[("b", s("x"))]))]))]))
    );
    // Lists count as a level too.
    let c = jwt(
        check("GET", "/"),
        &[
            ("sub", string_value("bob")),
            ("deep", list(vec![list(vec![string_value("x")])])),
        ],
    );
    let refusal = refused_with(&m, &c, 2);
    assert_eq!(refusal.reason(), Reason::Limit, "{refusal:?}");
    assert_eq!(refusal.field(), "claims.deep[0][0]");
}

#[test]
fn the_context_holds_only_the_parts_configured() {
    let text = |parts: &str| {
        format!(
            "context = {parts}\nheaders = [\"user-agent\"]\nclaims = [\"email\"]\n[[principal]]\nfrom = \"jwt\"\ntype = \"User\"\n[[routes]]\npath = \"/p/{{id}}\"\nresource_id = \"{{id}}\"\n"
        )
    };
    let c = peer(
        header(
            jwt(
                check("GET", "/p/7"),
                &[("sub", string_value("bob")), ("email", string_value("b@x"))],
            ),
            "user-agent",
            "curl/8",
        ),
        "",
        Some(socket("10.0.0.7")),
    );
    let all = mapped(
        &mapping(&text(
            "[\"method\", \"path\", \"host\", \"source_ip\", \"headers\", \"params\", \"claims\"]",
        )),
        &c,
    );
    assert_eq!(
        all.context,
        [
            ("method", s("GET")),
            ("path", s("/p/7")),
            ("host", s("docs.example.com")),
            ("source_ip", Attr::Ip("10.0.0.7".to_owned())),
            ("headers", rec(&[("user-agent", s("curl/8"))])),
            ("params", rec(&[("id", s("7"))])),
            ("claims", rec(&[("email", s("b@x"))])),
        ]
    );
    let some = mapped(&mapping(&text("[\"params\", \"method\"]")), &c);
    assert_eq!(
        some.context,
        [("method", s("GET")), ("params", rec(&[("id", s("7"))]))]
    );
    let none = mapped(&mapping(&text("[]")), &c);
    assert!(none.context.is_empty(), "{:?}", none.context);
    assert_eq!(none.query.resource.to_string(), r#"Resource::"7""#);
}

// --- malformed checks -----------------------------------------------------------------

#[test]
fn checks_without_http_attributes_are_refused() {
    let m = ExtAuthz::default();
    assert_eq!(invalid_field(&m, &CheckRequest::default()), "attributes");
    let no_request = CheckRequest {
        attributes: Some(AttributeContext::default()),
    };
    assert_eq!(invalid_field(&m, &no_request), "attributes.request.http");
    let no_http = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request::default()),
            ..Default::default()
        }),
    };
    assert_eq!(invalid_field(&m, &no_http), "attributes.request.http");
}

#[test]
fn a_missing_or_lower_case_method_is_refused() {
    let m = ExtAuthz::default();
    for method in ["", "get", "Get", "GET ", "G_T", "GET\n"] {
        let c = peer(check(method, "/a"), "svc", None);
        assert_eq!(
            invalid_field(&m, &c),
            "attributes.request.http.method",
            "{method:?}"
        );
    }
    // Extension methods are methods.
    let c = peer(check("M-SEARCH", "/a"), "svc", None);
    assert_eq!(action_of(&m, &c), r#"Action::"M-SEARCH""#);
}

#[test]
fn bad_paths_are_refused_naming_the_path() {
    let m = ExtAuthz::default();
    for path in [
        "",
        "a/b",
        "*",
        "?x=1",
        "http://docs.example.com/a",
        "/a/../b",
        "/..",
        "/a/./b",
        "/.",
        "/a/%2e%2e/b",
        "/a/%2E%2e",
        "/a/.%2E/b",
        "/a/%2e/b",
        "/a/%zz",
        "/a/%2",
        "/a/%",
        "/a/%ff",
        "/a/..?x=1",
    ] {
        let c = peer(check("GET", path), "svc", None);
        assert_eq!(
            invalid_field(&m, &c),
            "attributes.request.http.path",
            "{path:?}"
        );
    }
    // Dots inside a segment are not dot segments; the query is not the path.
    for (path, expected) in [
        ("/a/..b", "/a/..b"),
        ("/a/b..", "/a/b.."),
        ("/a/.well-known", "/a/.well-known"),
        ("/a?next=/../x", "/a"),
    ] {
        let out = mapped(&m, &peer(check("GET", path), "svc", None));
        assert_eq!(context_part(&out, "path"), Some(s(expected)), "{path:?}");
    }
}

#[test]
fn the_principal_is_not_looked_for_in_a_malformed_check() {
    // A bad path is refused (403) even with no principal, not asked to authenticate (401).
    let m = ExtAuthz::default();
    let c = check("GET", "/a/../b");
    assert_eq!(invalid_field(&m, &c), "attributes.request.http.path");
}

#[test]
fn canonical_context_bytes_tell_apart_what_differs() {
    use super::Attr::{self, *};
    use crate::decide::{CanonicalBytes, Encoder};
    let bytes = |fields: &[(&str, Attr)]| {
        let mut out = CanonicalBytes::new(Encoder::ExtAuthz);
        Attr::fields_canonical(fields.iter().map(|(k, v)| (*k, v)), fields.len(), &mut out)
            .and_then(|()| out.finish())
    };
    type Fields<'a> = Vec<(&'a str, Attr)>;
    let pairs: [(Fields, Fields); 5] = [
        (vec![("a", String("1".into()))], vec![("a", Long(1))]),
        (
            vec![("a", String("10.0.0.1".into()))],
            vec![("a", Ip("10.0.0.1".into()))],
        ),
        (
            vec![("ab", String("c".into()))],
            vec![("a", String("bc".into()))],
        ),
        (
            vec![("h", Record(vec![("x".into(), String("1".into()))]))],
            vec![("h", Record(vec![("x".into(), String("2".into()))]))],
        ),
        (vec![("a", Set(vec![Bool(true)]))], vec![("a", Bool(true))]),
    ];
    for (a, b) in &pairs {
        assert_ne!(bytes(a), bytes(b), "{a:?} and {b:?}");
        assert_eq!(bytes(a), bytes(&a.clone()));
    }
    let long = std::string::String::from_utf8(vec![b'x'; 2048]).unwrap();
    assert_eq!(
        bytes(&[("a", String(long))]),
        None,
        "past the bound: not kept"
    );
}
