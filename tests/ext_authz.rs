//! `envoy.service.auth.v3.Authorization/Check` driven over loopback with a client built
//! from Envoy's own protos, against the example policies and the mapping in
//! `docs/envoy.md`.

mod common;

use std::collections::HashMap;

use cedar_pdp::{
    Config,
    config::{ExtAuthzSettings, Limits},
    proto::{
        cedarpdp::v1 as pb,
        envoy::{
            config::core::v3::{
                Address, Metadata, SocketAddress, address, header_value_option::HeaderAppendAction,
                socket_address,
            },
            service::auth::v3::{
                AttributeContext, CheckRequest, CheckResponse,
                attribute_context::{HttpRequest, Peer, Request},
                authorization_client::AuthorizationClient,
                check_response::HttpResponse,
            },
        },
    },
    telemetry::{AuditOptions, AuditSink},
};
use common::*;
use prost_types::{ListValue, Value, value::Kind};
use tonic::transport::Channel;

fn docs_config() -> Config {
    Config {
        policies: example_policies(),
        ext_authz: docs_ext_authz(),
        ..Config::default()
    }
}

fn code(response: &CheckResponse) -> i32 {
    response.status.as_ref().map_or(-1, |s| s.code)
}

#[tokio::test]
async fn a_user_reading_a_document_of_their_tenant_is_allowed_and_others_are_not() {
    let server = TestServer::start_with(docs_config()).await;
    let mut client = AuthorizationClient::new(server.channel().await);
    let path = "/projects/acme-roadmap/docs/acme-roadmap-q3";
    let bob = client
        .check(check(
            "GET",
            path,
            Some(jwt(&[("sub", string_value("bob"))])),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&bob), 0, "{bob:?}");
    let Some(HttpResponse::OkResponse(ok)) = &bob.http_response else {
        panic!("{bob:?}")
    };
    let headers: HashMap<_, _> = ok
        .headers
        .iter()
        .map(|h| {
            let h = h.header.as_ref().unwrap();
            (h.key.clone(), h.value.clone())
        })
        .collect();
    assert_eq!(headers["x-cedar-principal"], r#"Platform::User::"bob""#);
    assert_eq!(
        headers["x-cedar-policy-version"],
        server.store.current().version()
    );

    let dave = client
        .check(check(
            "GET",
            path,
            Some(jwt(&[("sub", string_value("dave"))])),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        code(&dave),
        tonic::Code::PermissionDenied as i32,
        "{dave:?}"
    );
    let Some(HttpResponse::DeniedResponse(denied)) = &dave.http_response else {
        panic!("{dave:?}")
    };
    assert_eq!(denied.status.as_ref().unwrap().code, 403);

    let nobody = client
        .check(check("GET", path, None, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        code(&nobody),
        tonic::Code::Unauthenticated as i32,
        "{nobody:?}"
    );
    let Some(HttpResponse::DeniedResponse(denied)) = &nobody.http_response else {
        panic!("{nobody:?}")
    };
    assert_eq!(denied.status.as_ref().unwrap().code, 401);
    server.stop().await;
}

// --- helpers for the tests below ------------------------------------------------------

const HOST: &str = "docs.acme.example";
const USER_AGENT: &str = "cedar-pdp-tests/1";
const SOURCE_IP: &str = "10.0.0.7";

fn socket(ip: &str) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(40_123)),
            ..Default::default()
        })),
    }
}

/// The downstream peer as Envoy reports it: its certificate's identity (empty for none)
/// and its address.
fn peer(identity: &str) -> Peer {
    Peer {
        principal: identity.to_owned(),
        address: Some(socket(SOURCE_IP)),
        ..Default::default()
    }
}

/// The SPIFFE id of the service `namespace/name` in the docs' trust domain.
fn spiffe(service: &str) -> String {
    let (namespace, name) = service
        .split_once('/')
        .expect("services are named namespace/name");
    format!("spiffe://acme.example/ns/{namespace}/sa/{name}")
}

/// The `http.id` of every check built here: Envoy's stream id, a decimal number.
const STREAM_ID: &str = "4839205117730615112";

/// A check as Envoy's HTTP filter sends it: `id` as the request's `x-request-id`, a
/// stream id of Envoy's own in `http.id`, `user-agent` and `extra` headers.
fn envoy_check(
    id: &str,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    source: Option<Peer>,
    metadata: Option<Metadata>,
) -> CheckRequest {
    let mut headers = HashMap::from([
        ("user-agent".to_owned(), USER_AGENT.to_owned()),
        ("x-request-id".to_owned(), id.to_owned()),
    ]);
    for (name, value) in extra {
        headers.insert((*name).to_owned(), (*value).to_owned());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source,
            request: Some(Request {
                time: None,
                http: Some(HttpRequest {
                    id: STREAM_ID.to_owned(),
                    method: method.to_owned(),
                    path: path.to_owned(),
                    host: HOST.to_owned(),
                    headers,
                    protocol: "HTTP/1.1".to_owned(),
                    ..Default::default()
                }),
            }),
            metadata_context: metadata,
            ..Default::default()
        }),
    }
}

fn user_jwt(name: &str) -> Metadata {
    jwt(&[
        ("sub", string_value(name)),
        ("email", string_value(&format!("{name}@acme.example"))),
    ])
}

/// A GET of the roadmap with `token` as the verified JWT, if any.
fn reads_roadmap(id: &str, token: Option<Metadata>) -> CheckRequest {
    envoy_check(
        id,
        "GET",
        "/projects/acme-roadmap/docs/acme-roadmap-q3",
        &[],
        Some(peer("")),
        token,
    )
}

/// bob reading the roadmap: allowed by the example policies.
fn bob_reads(id: &str) -> CheckRequest {
    reads_roadmap(id, Some(user_jwt("bob")))
}

/// dave (another tenant) reading the roadmap: denied by tenant isolation.
fn dave_reads(id: &str) -> CheckRequest {
    reads_roadmap(id, Some(user_jwt("dave")))
}

/// Nobody: no token, no certificate.
fn anonymous(id: &str) -> CheckRequest {
    reads_roadmap(id, None)
}

/// bob calling the billing service over gRPC: `invoke` applies to services only, so the
/// schema refuses the request.
fn bob_invokes(id: &str) -> CheckRequest {
    envoy_check(
        id,
        "POST",
        "/acme.billing.v1.Billing/Charge",
        &[("content-type", "application/grpc")],
        Some(peer("")),
        Some(user_jwt("bob")),
    )
}

/// The peer `identity` (a client certificate's SPIFFE id) calling the billing service.
fn invokes_billing(id: &str, identity: &str) -> CheckRequest {
    envoy_check(
        id,
        "POST",
        "/acme.billing.v1.Billing/Charge",
        &[("content-type", "application/grpc")],
        Some(peer(identity)),
        None,
    )
}

#[tokio::test]
async fn service_accounts_of_one_name_in_two_namespaces_are_two_principals() {
    // The docs once mapped `spiffe://…/ns/{namespace}/sa/{name}` to `{name}`: a
    // `frontend` service account in any namespace called billing as acme's frontend.
    let server = TestServer::start_with(docs_config()).await;
    let mut client = ext_client(&server).await;

    let acme = send(
        &mut client,
        invokes_billing("ns-1", "spiffe://acme.example/ns/acme/sa/frontend"),
    )
    .await;
    assert_allowed(&acme, "acme's frontend");
    assert_eq!(
        meta(&acme, "principal").as_deref(),
        Some(r#"Platform::Service::"acme/frontend""#)
    );

    let globex = send(
        &mut client,
        invokes_billing("ns-2", "spiffe://acme.example/ns/globex/sa/frontend"),
    )
    .await;
    assert_forbidden(&globex, "globex's frontend");
    assert_eq!(
        meta(&globex, "principal").as_deref(),
        Some(r#"Platform::Service::"globex/frontend""#)
    );

    // Another trust domain's `acme` namespace is nobody here.
    for foreign in [
        "spiffe://evil.example/ns/acme/sa/frontend",
        "spiffe://acme.example/ns/acme/sa/frontend/x",
        "spiffe://acme.example/ns/acme/sa/",
    ] {
        let response = send(&mut client, invokes_billing("ns-3", foreign)).await;
        assert_unauthenticated(&response, foreign);
    }
    server.stop().await;
}

async fn ext_client(server: &TestServer) -> AuthorizationClient<Channel> {
    AuthorizationClient::new(server.channel().await)
}

async fn send(client: &mut AuthorizationClient<Channel>, check: CheckRequest) -> CheckResponse {
    client
        .check(check)
        .await
        .expect("Check answers with a CheckResponse, never a gRPC error")
        .into_inner()
}

fn metadata_field<'a>(response: &'a CheckResponse, key: &str) -> Option<&'a Kind> {
    response
        .dynamic_metadata
        .as_ref()?
        .fields
        .get(key)?
        .kind
        .as_ref()
}

/// A string of the response's dynamic metadata.
fn meta(response: &CheckResponse, key: &str) -> Option<String> {
    match metadata_field(response, key)? {
        Kind::StringValue(s) => Some(s.clone()),
        other => panic!("metadata {key} is not a string: {other:?}"),
    }
}

/// The determining policies in the response's dynamic metadata.
fn meta_policies(response: &CheckResponse) -> Option<Vec<String>> {
    match metadata_field(response, "determining_policies")? {
        Kind::ListValue(ListValue { values }) => Some(
            values
                .iter()
                .map(|v| match &v.kind {
                    Some(Kind::StringValue(s)) => s.clone(),
                    other => panic!("a policy id that is not a string: {other:?}"),
                })
                .collect(),
        ),
        other => panic!("determining_policies is not a list: {other:?}"),
    }
}

/// The HTTP status Envoy answers the client with: 200 when the request goes upstream.
fn http_status(response: &CheckResponse) -> i32 {
    match &response.http_response {
        Some(HttpResponse::OkResponse(_)) => 200,
        Some(HttpResponse::DeniedResponse(denied)) => denied.status.as_ref().map_or(-1, |s| s.code),
        Some(HttpResponse::ErrorResponse(_)) | None => -1,
    }
}

fn denied_body(response: &CheckResponse) -> &str {
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => &denied.body,
        other => panic!("not denied: {other:?}"),
    }
}

/// The headers an allow adds upstream, name → value.
fn upstream_headers(response: &CheckResponse) -> HashMap<String, String> {
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
        panic!("not allowed: {response:?}")
    };
    ok.headers
        .iter()
        .map(|h| {
            let header = h.header.as_ref().expect("a header");
            (header.key.clone(), header.value.clone())
        })
        .collect()
}

fn assert_allowed(response: &CheckResponse, what: &str) {
    assert_eq!(
        code(response),
        tonic::Code::Ok as i32,
        "{what}: {response:?}"
    );
    assert_eq!(http_status(response), 200, "{what}: {response:?}");
    assert_eq!(
        meta(response, "decision").as_deref(),
        Some("allow"),
        "{what}"
    );
}

fn assert_forbidden(response: &CheckResponse, what: &str) {
    assert_eq!(
        code(response),
        tonic::Code::PermissionDenied as i32,
        "{what}: {response:?}"
    );
    assert_eq!(http_status(response), 403, "{what}: {response:?}");
    assert_eq!(denied_body(response), "access denied\n", "{what}");
    assert_eq!(
        meta(response, "decision").as_deref(),
        Some("deny"),
        "{what}"
    );
}

/// A 403 no policy made: the check could not be mapped or validated; `field` is at fault.
fn assert_refused(response: &CheckResponse, reason: &str, what: &str) -> String {
    assert_forbidden(response, what);
    assert_eq!(
        meta(response, "reason").as_deref(),
        Some(reason),
        "{what}: {response:?}"
    );
    assert_eq!(
        meta_policies(response),
        None,
        "{what}: no decision, no policies"
    );
    meta(response, "field").unwrap_or_else(|| panic!("{what}: no field in {response:?}"))
}

fn assert_unauthenticated(response: &CheckResponse, what: &str) {
    assert_eq!(
        code(response),
        tonic::Code::Unauthenticated as i32,
        "{what}: {response:?}"
    );
    assert_eq!(http_status(response), 401, "{what}: {response:?}");
    assert_eq!(denied_body(response), "authentication required\n", "{what}");
    assert_eq!(
        meta(response, "decision").as_deref(),
        Some("deny"),
        "{what}"
    );
    assert_eq!(
        meta(response, "reason").as_deref(),
        Some("unauthenticated"),
        "{what}"
    );
    assert_eq!(meta(response, "principal"), None, "{what}");
}

/// An `[ext_authz]` table body written in TOML.
fn ext_authz_settings(text: &str) -> ExtAuthzSettings {
    toml::from_str(text).unwrap_or_else(|e| panic!("{text}\ndoes not parse: {e}"))
}

// --- the differential test ------------------------------------------------------------

/// Who sends a request of the grid: a user with a verified token, or a service with a
/// certificate of the acme.example trust domain.
#[derive(Debug, Clone, Copy)]
enum Who {
    User(&'static str),
    Service(&'static str),
}

impl Who {
    fn uid(self) -> pb::EntityUid {
        match self {
            Self::User(name) => p("User", name),
            Self::Service(name) => p("Service", name),
        }
    }

    fn text(self) -> String {
        let uid = self.uid();
        format!("{}::\"{}\"", uid.r#type, uid.id)
    }
}

/// A path of the grid: as sent, and as the mapping normalizes it (escapes of unreserved
/// characters decoded).
struct GridPath {
    sent: &'static str,
    path: &'static str,
    grpc: bool,
}

const fn http_path(path: &'static str) -> GridPath {
    GridPath {
        sent: path,
        path,
        grpc: false,
    }
}

/// What the docs' mapping should make of a request, worked out by hand from the table
/// in docs/envoy.md.
#[derive(Debug)]
struct Expected {
    action: String,
    resource_type: &'static str,
    resource_id: String,
    params: Vec<(&'static str, String)>,
}

fn expected(method: &str, path: &str) -> Expected {
    let by_method = |m: &str| match m {
        "GET" | "HEAD" => "read".to_owned(),
        "POST" | "PUT" | "PATCH" => "write".to_owned(),
        "DELETE" => "delete".to_owned(),
        other => other.to_owned(),
    };
    // From the method and path alone: a `content-type` the client sets chooses nothing.
    let default_action = by_method(method);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let e =
        |action: String, ty: &'static str, id: &str, params: &[(&'static str, &str)]| Expected {
            action,
            resource_type: ty,
            resource_id: id.to_owned(),
            params: params.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        };
    match segments.as_slice() {
        ["projects", project, "docs", doc, "share"] => e(
            "share".to_owned(),
            "Platform::Document",
            doc,
            &[("project", project), ("doc", doc)],
        ),
        ["projects", project, "docs", doc] => e(
            default_action,
            "Platform::Document",
            doc,
            &[("project", project), ("doc", doc)],
        ),
        ["projects", project] => e(
            default_action,
            "Platform::Project",
            project,
            &[("project", project)],
        ),
        ["secrets", secret] => {
            let action = match method {
                "GET" => "readSecret".to_owned(),
                "PUT" => "rotateSecret".to_owned(),
                other => by_method(other),
            };
            e(action, "Platform::Secret", secret, &[("secret", secret)])
        }
        ["acme.billing.v1.Billing", rpc] => e(
            "invoke".to_owned(),
            "Platform::Service",
            "acme/billing",
            &[("rpc", rpc)],
        ),
        _ => e(default_action, "Resource", &format!("{HOST}{path}"), &[]),
    }
}

fn grid_check(id: &str, who: Who, method: &str, path: &GridPath) -> CheckRequest {
    let (source, metadata) = match who {
        Who::User(name) => (peer(""), Some(user_jwt(name))),
        Who::Service(name) => (peer(&spiffe(name)), None),
    };
    let grpc = [("content-type", "application/grpc")];
    let extra: &[(&str, &str)] = if path.grpc { &grpc } else { &[] };
    envoy_check(id, method, path.sent, extra, Some(source), metadata)
}

/// The context the docs' mapping builds, as typed values for `IsAuthorized`.
fn expected_context(
    who: Who,
    method: &str,
    path: &GridPath,
    expected: &Expected,
) -> HashMap<String, pb::Value> {
    let mut fields = vec![
        ("method", string(method)),
        ("path", string(path.path)),
        ("host", string(HOST)),
        ("source_ip", ext("ip", SOURCE_IP)),
        ("headers", record(&[("user-agent", string(USER_AGENT))])),
    ];
    if !expected.params.is_empty() {
        let params: Vec<(&str, pb::Value)> = expected
            .params
            .iter()
            .map(|(k, v)| (*k, string(v)))
            .collect();
        fields.push(("params", record(&params)));
    }
    if let Who::User(name) = who {
        fields.push((
            "claims",
            record(&[("email", string(&format!("{name}@acme.example")))]),
        ));
    }
    context(&fields)
}

#[tokio::test]
async fn check_decides_every_request_of_a_grid_exactly_as_is_authorized_does() {
    let server = TestServer::start_with(docs_config()).await;
    let mut ext_authz = ext_client(&server).await;
    let mut authorizer = server.client().await;

    let people = ["bob", "carol", "dave", "alice", "grace", "mallory"].map(Who::User);
    let services = [
        "acme/frontend",
        "acme/billing",
        "acme/reports",
        "globex/frontend",
    ]
    .map(Who::Service);
    let methods = ["GET", "POST", "PUT", "DELETE"];
    let paths = [
        http_path("/projects/acme-roadmap/docs/acme-roadmap-q3"),
        http_path("/projects/acme-roadmap/docs/acme-roadmap-q3/share"),
        http_path("/projects/acme-roadmap/docs/acme-board-minutes"),
        http_path("/projects/acme-roadmap/docs/acme-carol-notes"),
        http_path("/projects/acme-roadmap/docs/acme-carol-notes/share"),
        http_path("/projects/globex-payroll/docs/globex-handbook"),
        http_path("/projects/globex-payroll/docs/globex-salaries/share"),
        http_path("/projects/acme-roadmap"),
        http_path("/projects/globex-payroll"),
        http_path("/secrets/acme-db-password"),
        http_path("/secrets/globex-db-password"),
        // A client's `content-type: application/grpc` on an HTTP route changes nothing.
        GridPath {
            sent: "/secrets/acme-db-password",
            path: "/secrets/acme-db-password",
            grpc: true,
        },
        // Escapes of unreserved characters are decoded before matching and in the context.
        GridPath {
            sent: "/projects/acme%2Droadmap/docs/acme-roadmap%2dq3",
            path: "/projects/acme-roadmap/docs/acme-roadmap-q3",
            grpc: false,
        },
        // No route: the default resource, which the schema does not know.
        http_path("/healthz"),
        GridPath {
            sent: "/acme.billing.v1.Billing/Charge",
            path: "/acme.billing.v1.Billing/Charge",
            grpc: true,
        },
        // gRPC with no route: the action by the method, like any request.
        GridPath {
            sent: "/acme.reports.v1.Reports/Run",
            path: "/acme.reports.v1.Reports/Run",
            grpc: true,
        },
    ];

    let (mut allows, mut denies, mut invalid) = (0, 0, 0);
    let mut decided: HashMap<String, (bool, Vec<String>)> = HashMap::new();
    let mut n = 0;
    for who in people.iter().chain(&services).copied() {
        for method in methods {
            for path in &paths {
                n += 1;
                let what = format!("{} {method} {}", who.text(), path.sent);
                let response = send(
                    &mut ext_authz,
                    grid_check(&format!("grid-{n}"), who, method, path),
                )
                .await;
                let expect = expected(method, path.path);
                let mut question = request(
                    who.uid(),
                    action(&expect.action),
                    uid(expect.resource_type, &expect.resource_id),
                );
                question.context = expected_context(who, method, path, &expect);
                match authorizer.is_authorized(question).await {
                    Ok(answer) => {
                        let answer = answer.into_inner();
                        // The check was mapped to the question asked here...
                        assert_eq!(meta(&response, "principal"), Some(who.text()), "{what}");
                        assert_eq!(
                            meta(&response, "action"),
                            Some(format!("Platform::Action::\"{}\"", expect.action)),
                            "{what}"
                        );
                        assert_eq!(
                            meta(&response, "resource"),
                            Some(format!(
                                "{}::\"{}\"",
                                expect.resource_type, expect.resource_id
                            )),
                            "{what}"
                        );
                        // ... and decided the same way, for the same reasons.
                        assert_eq!(
                            meta_policies(&response).as_ref(),
                            Some(&answer.determining_policies),
                            "{what}"
                        );
                        assert_eq!(
                            meta(&response, "policy_version"),
                            Some(answer.policy_version.clone()),
                            "{what}"
                        );
                        if is_allow(&answer) {
                            assert_allowed(&response, &what);
                            allows += 1;
                        } else {
                            assert_forbidden(&response, &what);
                            denies += 1;
                        }
                        decided.insert(what, (is_allow(&answer), answer.determining_policies));
                    }
                    Err(status) => {
                        assert_eq!(
                            status.code(),
                            tonic::Code::InvalidArgument,
                            "{what}: {status:?}"
                        );
                        assert_refused(&response, "invalid", &what);
                        invalid += 1;
                    }
                }
            }
        }
    }
    eprintln!("grid: {n} requests, {allows} allowed, {denies} denied, {invalid} invalid");
    assert_eq!(n, 10 * 4 * paths.len());
    assert_eq!(allows + denies + invalid, n);
    assert!(allows >= 10, "too few allows to mean anything: {allows}");
    assert!(denies >= 10, "too few denies to mean anything: {denies}");
    assert!(invalid >= 10, "too few invalid requests: {invalid}");

    // A few cells worked out by hand from the policies, so that a mapping and an
    // authorizer wrong in the same way cannot agree on everything.
    let cell = |who: Who, method: &str, path: &str| {
        decided
            .get(&format!("{} {method} {path}", who.text()))
            .unwrap_or_else(|| panic!("{} {method} {path} was not decided", who.text()))
            .clone()
    };
    let roadmap = "/projects/acme-roadmap/docs/acme-roadmap-q3";
    let strings = |ids: &[&str]| ids.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        cell(Who::User("bob"), "GET", roadmap),
        (true, strings(&["document-owner", "project-readers"]))
    );
    assert_eq!(
        cell(
            Who::User("bob"),
            "GET",
            "/projects/acme%2Droadmap/docs/acme-roadmap%2dq3"
        ),
        (true, strings(&["document-owner", "project-readers"]))
    );
    assert_eq!(
        cell(Who::User("dave"), "GET", roadmap),
        (false, strings(&["tenant-isolation"]))
    );
    assert_eq!(
        cell(Who::User("mallory"), "GET", roadmap),
        (false, strings(&["suspended-users"]))
    );
    assert_eq!(
        cell(
            Who::User("carol"),
            "POST",
            "/projects/acme-roadmap/docs/acme-carol-notes/share"
        ),
        (false, strings(&["tenants/acme.0"]))
    );
    assert_eq!(
        cell(Who::User("alice"), "DELETE", roadmap),
        (false, strings(&["sensitive-needs-mfa"]))
    );
    assert_eq!(
        cell(
            Who::User("alice"),
            "GET",
            "/projects/acme-roadmap/docs/acme-board-minutes"
        ),
        (false, strings(&["restricted-needs-mfa"]))
    );
    assert_eq!(
        cell(
            Who::Service("acme/frontend"),
            "POST",
            "/acme.billing.v1.Billing/Charge"
        ),
        (true, strings(&["service-invoke"]))
    );
    assert_eq!(
        cell(
            Who::Service("acme/reports"),
            "POST",
            "/acme.billing.v1.Billing/Charge"
        ),
        (false, strings(&[])),
        "acme/reports is not among the billing service's callers"
    );
    server.stop().await;
}

// --- a mapping of one's own -----------------------------------------------------------

/// A gateway that puts the authenticated user in a header, with routes of its own.
const HEADER_MAPPING: &str = r#"
action_type = "Platform::Action"
methods = { GET = "read", POST = "write" }
context = ["method", "path", "host", "params"]

[[principal]]
from = "header"
header = "X-Forwarded-User"
type = "Platform::User"

[[routes]]
host = "docs.acme.example"
path = "/d/{doc}"
resource_type = "Platform::Document"
resource_id = "{doc}"

[[routes]]
host = "*.acme.example"
path = "/p/{project}/list"
action = "list"
resource_type = "Platform::Project"
resource_id = "{project}"
"#;

fn header_mapping_config() -> Config {
    Config {
        policies: example_policies(),
        ext_authz: ext_authz_settings(HEADER_MAPPING),
        ..Config::default()
    }
}

fn gateway_check(method: &str, host: &str, path: &str, user: Option<&str>) -> CheckRequest {
    let mut check = envoy_check("gw-1", method, path, &[], Some(peer("")), None);
    let http = check
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .unwrap();
    http.host = host.to_owned();
    if let Some(user) = user {
        http.headers
            .insert("x-forwarded-user".to_owned(), user.to_owned());
    }
    check
}

#[tokio::test]
async fn a_header_principal_and_route_templates_of_a_custom_mapping() {
    let server = TestServer::start_with(header_mapping_config()).await;
    let mut client = ext_client(&server).await;

    let bob = send(
        &mut client,
        gateway_check("GET", HOST, "/d/acme-roadmap-q3", Some("bob")),
    )
    .await;
    assert_allowed(&bob, "bob reads");
    assert_eq!(
        meta(&bob, "principal").as_deref(),
        Some(r#"Platform::User::"bob""#)
    );
    assert_eq!(
        meta(&bob, "action").as_deref(),
        Some(r#"Platform::Action::"read""#)
    );
    assert_eq!(
        meta(&bob, "resource").as_deref(),
        Some(r#"Platform::Document::"acme-roadmap-q3""#)
    );
    assert_eq!(
        meta_policies(&bob),
        Some(vec![
            "document-owner".to_owned(),
            "project-readers".to_owned()
        ])
    );
    assert!(upstream_headers(&bob).is_empty(), "none configured");

    // The host is matched in any case and without its port.
    let loud = send(
        &mut client,
        gateway_check(
            "GET",
            "DOCS.Acme.Example:8443",
            "/d/acme-roadmap-q3",
            Some("bob"),
        ),
    )
    .await;
    assert_allowed(&loud, "bob reads through another spelling of the host");

    // carol may read but not write it: a default deny, no policy to name.
    let carol = send(
        &mut client,
        gateway_check("POST", HOST, "/d/acme-roadmap-q3", Some("carol")),
    )
    .await;
    assert_forbidden(&carol, "carol writes");
    assert_eq!(
        meta(&carol, "action").as_deref(),
        Some(r#"Platform::Action::"write""#)
    );
    assert_eq!(meta_policies(&carol), Some(vec![]));

    // No header: 401, not 403.
    let nobody = send(
        &mut client,
        gateway_check("GET", HOST, "/d/acme-roadmap-q3", None),
    )
    .await;
    assert_unauthenticated(&nobody, "no user header");
    // The header of a user the store does not know is still an identity: 403.
    let stranger = send(
        &mut client,
        gateway_check("GET", HOST, "/d/acme-roadmap-q3", Some("zed")),
    )
    .await;
    assert_forbidden(&stranger, "an unknown user");
    assert_eq!(
        meta(&stranger, "principal").as_deref(),
        Some(r#"Platform::User::"zed""#)
    );

    // A subdomain route with a fixed action.
    let list = send(
        &mut client,
        gateway_check(
            "GET",
            "api.acme.example",
            "/p/acme-roadmap/list",
            Some("bob"),
        ),
    )
    .await;
    assert_allowed(&list, "bob lists the projects");
    assert_eq!(
        meta(&list, "action").as_deref(),
        Some(r#"Platform::Action::"list""#)
    );
    assert_eq!(
        meta(&list, "resource").as_deref(),
        Some(r#"Platform::Project::"acme-roadmap""#)
    );
    assert_eq!(
        meta_policies(&list),
        Some(vec!["members-list-projects".to_owned()])
    );

    // Hosts no route is for: the default resource, which the schema does not know.
    for (host, path) in [
        ("acme.example", "/p/acme-roadmap/list"),
        ("docs.other.example", "/d/acme-roadmap-q3"),
    ] {
        let response = send(&mut client, gateway_check("GET", host, path, Some("bob"))).await;
        assert_refused(&response, "invalid", &format!("{host}{path}"));
    }
    server.stop().await;
}

// --- malformed checks -----------------------------------------------------------------

/// Every policy id of the example set; none may show in a response body.
const POLICY_IDS: [&str; 20] = [
    "api-key-read",
    "api-key-write",
    "api-key-read-only",
    "api-key-expired",
    "sensitive-needs-mfa",
    "sensitive-from-corp-network",
    "restricted-needs-mfa",
    "service-invoke",
    "service-read-secret",
    "tenant-isolation",
    "suspended-users",
    "high-risk-deny",
    "members-list-projects",
    "project-readers",
    "project-editors-write",
    "document-owner",
    "tenant-admins",
    "tenants/acme.0",
    "tenants/acme.1",
    "tenants/acme",
];

#[tokio::test]
async fn malformed_checks_get_a_403_response_never_a_grpc_error() {
    let server = TestServer::start_with(docs_config()).await;
    let mut client = ext_client(&server).await;
    let with_http = |method: &str, path: &str| {
        envoy_check(
            "bad-1",
            method,
            path,
            &[],
            Some(peer("")),
            Some(user_jwt("bob")),
        )
    };
    let cases = [
        ("an empty check", CheckRequest::default(), "attributes"),
        (
            "no request",
            CheckRequest {
                attributes: Some(AttributeContext::default()),
            },
            "attributes.request.http",
        ),
        (
            "no http (the network filter)",
            CheckRequest {
                attributes: Some(AttributeContext {
                    source: Some(peer(&spiffe("acme/frontend"))),
                    request: Some(Request::default()),
                    ..Default::default()
                }),
            },
            "attributes.request.http",
        ),
        (
            "a dot-dot segment",
            with_http(
                "GET",
                "/projects/acme-roadmap/docs/../../secrets/acme-db-password",
            ),
            "attributes.request.http.path",
        ),
        (
            "an escaped dot-dot segment",
            with_http("GET", "/projects/acme-roadmap/docs/%2e%2E/x"),
            "attributes.request.http.path",
        ),
        (
            "a bad escape",
            with_http("GET", "/projects/%zz"),
            "attributes.request.http.path",
        ),
        (
            "a relative path",
            with_http("GET", "projects/acme-roadmap"),
            "attributes.request.http.path",
        ),
        (
            "a lower-case method",
            with_http("get", "/projects/acme-roadmap/docs/acme-roadmap-q3"),
            "attributes.request.http.method",
        ),
        (
            "no method",
            with_http("", "/projects/acme-roadmap/docs/acme-roadmap-q3"),
            "attributes.request.http.method",
        ),
    ];
    for (what, check, field) in cases {
        let response = send(&mut client, check).await;
        assert_eq!(assert_refused(&response, "invalid", what), field, "{what}");
        assert_eq!(meta(&response, "principal"), None, "{what}");
        assert_eq!(
            meta(&response, "policy_version"),
            Some(server.store.current().version().to_owned()),
            "{what}"
        );
    }

    // A policy's deny: its reasons are in the metadata, never in the body.
    let dave = send(&mut client, dave_reads("deny-1")).await;
    assert_forbidden(&dave, "dave reads");
    assert_eq!(
        meta_policies(&dave),
        Some(vec!["tenant-isolation".to_owned()])
    );
    let Some(HttpResponse::DeniedResponse(denied)) = &dave.http_response else {
        panic!("{dave:?}")
    };
    for id in POLICY_IDS {
        assert!(!denied.body.contains(id), "{id} in {:?}", denied.body);
    }
    assert!(denied.headers.iter().all(|h| {
        let h = h.header.as_ref().unwrap();
        POLICY_IDS.iter().all(|id| !h.value.contains(id))
    }));
    let content_type = denied
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "content-type")
        .expect("a content type");
    assert_eq!(content_type.value, "text/plain; charset=utf-8");
    server.stop().await;
}

// --- metrics --------------------------------------------------------------------------

fn ext_series(text: &str, name: &str, labels: &str) -> f64 {
    metric(text, &format!("{name}{{api=\"ext_authz\",{labels}}}"))
        .unwrap_or_else(|| panic!("no {name}{{api=\"ext_authz\",{labels}}} in:\n{text}"))
}

#[tokio::test]
async fn metrics_count_each_check_by_outcome() {
    let mut config = docs_config();
    config.limits = Limits {
        max_value_depth: 2,
        ..Limits::default()
    };
    let server = TestServer::start_with(config).await;
    let mut client = ext_client(&server).await;
    for i in 0..3 {
        assert_allowed(
            &send(&mut client, bob_reads(&format!("m-a{i}"))).await,
            "allow",
        );
    }
    for i in 0..2 {
        assert_forbidden(
            &send(&mut client, dave_reads(&format!("m-d{i}"))).await,
            "deny",
        );
    }
    for i in 0..4 {
        assert_unauthenticated(
            &send(&mut client, anonymous(&format!("m-u{i}"))).await,
            "anon",
        );
    }
    // Invalid: unmappable, and mapped but refused by the schema.
    let invalid = [
        CheckRequest::default(),
        envoy_check(
            "m-i1",
            "GET",
            "/a/../b",
            &[],
            Some(peer("")),
            Some(user_jwt("bob")),
        ),
        bob_invokes("m-i2"),
    ];
    for check in invalid {
        assert_refused(&send(&mut client, check).await, "invalid", "invalid");
    }
    // Past a limit: a claim nested three deep with max_value_depth = 2.
    let deep = jwt(&[
        ("sub", string_value("bob")),
        (
            "scope",
            Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: vec![Value {
                        kind: Some(Kind::ListValue(ListValue {
                            values: vec![string_value("x")],
                        })),
                    }],
                })),
            },
        ),
    ]);
    let limited = send(
        &mut client,
        envoy_check(
            "m-l1",
            "GET",
            "/projects/acme-roadmap/docs/acme-roadmap-q3",
            &[],
            Some(peer("")),
            Some(deep),
        ),
    )
    .await;
    assert_eq!(
        assert_refused(&limited, "limit", "deep claim"),
        "claims.scope[0][0]"
    );

    let text = server.metrics_text().await;
    let decisions = "cedar_pdp_decisions_total";
    assert_eq!(ext_series(&text, decisions, r#"decision="allow""#), 3.0);
    assert_eq!(ext_series(&text, decisions, r#"decision="deny""#), 2.0);
    let rejected = "cedar_pdp_requests_rejected_total";
    assert_eq!(
        ext_series(&text, rejected, r#"reason="unauthenticated""#),
        4.0
    );
    assert_eq!(
        ext_series(&text, rejected, r#"reason="invalid_argument""#),
        3.0
    );
    assert_eq!(
        ext_series(&text, rejected, r#"reason="limit_exceeded""#),
        1.0
    );
    // Every check was timed, each one well under a second.
    let count = metric(
        &text,
        r#"cedar_pdp_decision_duration_seconds_count{api="ext_authz"}"#,
    );
    assert_eq!(count, Some(13.0), "{text}");
    let under = metric(
        &text,
        r#"cedar_pdp_decision_duration_seconds_bucket{api="ext_authz",le="1"}"#,
    );
    assert_eq!(under, Some(13.0), "{text}");
    // Nothing was counted against the other APIs.
    assert_eq!(
        metric(
            &text,
            r#"cedar_pdp_decisions_total{api="is_authorized",decision="allow"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"cedar_pdp_requests_rejected_total{api="is_authorized",reason="invalid_argument"}"#
        ),
        Some(0.0)
    );
    server.stop().await;
}

// --- audit ----------------------------------------------------------------------------

fn by_request_id<'a>(records: &'a [serde_json::Value], id: &str) -> &'a serde_json::Value {
    let found: Vec<_> = records.iter().filter(|r| r["request_id"] == id).collect();
    assert_eq!(found.len(), 1, "records of {id}: {records:#?}");
    found[0]
}

#[tokio::test]
async fn each_check_is_audited_under_envoys_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut config = docs_config();
    config.audit = AuditOptions {
        sink: AuditSink::File(path.clone()),
        allow_sample_rate: 1.0,
        context_keys: vec!["path".to_owned(), "no-such-key".to_owned()],
        ..AuditOptions::default()
    };
    let server = TestServer::start_with(config).await;
    let mut client = ext_client(&server).await;
    let version = server.store.current().version().to_owned();

    // An escaped path: the context (and so the audit record) holds it normalized.
    let escaped = envoy_check(
        "audit-allow",
        "GET",
        "/projects/acme-roadmap/docs/acme%2Droadmap%2dq3?tab=1",
        &[],
        Some(peer("")),
        Some(user_jwt("bob")),
    );
    let allowed = send(&mut client, escaped).await;
    assert_allowed(&allowed, "bob");
    assert_forbidden(&send(&mut client, dave_reads("audit-deny")).await, "dave");
    assert_unauthenticated(&send(&mut client, anonymous("audit-anon")).await, "nobody");
    let dotdot = envoy_check(
        "audit-path",
        "GET",
        "/projects/../secrets/acme-db-password",
        &[],
        Some(peer("")),
        Some(user_jwt("bob")),
    );
    assert_refused(&send(&mut client, dotdot).await, "invalid", "dot-dot");
    let schema_field = assert_refused(
        &send(&mut client, bob_invokes("audit-schema")).await,
        "invalid",
        "bob invokes",
    );
    // The request's id is not a usable one: the call's x-request-id is taken instead.
    let mut odd = tonic::Request::new(bob_reads("not an id; drop table"));
    odd.metadata_mut()
        .insert("x-request-id", "audit-meta".parse().unwrap());
    let odd = client.check(odd).await.unwrap().into_inner();
    assert_allowed(&odd, "bob again");
    // Neither has one: Envoy's stream id is the last resort.
    let mut stream_only = bob_reads("unused");
    let http = stream_only
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap();
    http.http.as_mut().unwrap().headers.remove("x-request-id");
    assert_allowed(&send(&mut client, stream_only).await, "bob by stream id");

    let records = audit_lines(&path, 7).await;
    assert_eq!(records.len(), 7, "{records:#?}");
    for record in &records {
        assert_eq!(record["api"], "ext_authz", "{record}");
        assert_eq!(record["kind"], "decision", "{record}");
        assert_eq!(record["policy_version"], version.as_str(), "{record}");
        assert!(
            record["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{record}"
        );
    }

    let allow = by_request_id(&records, "audit-allow");
    assert_eq!(allow["allowed"], "allow");
    assert_eq!(allow["principal"], r#"Platform::User::"bob""#);
    assert_eq!(allow["action"], r#"Platform::Action::"read""#);
    assert_eq!(
        allow["resource"],
        r#"Platform::Document::"acme-roadmap-q3""#
    );
    assert_eq!(
        allow["determining_policies"],
        serde_json::json!(meta_policies(&allowed).unwrap())
    );
    assert_eq!(
        allow["context"],
        serde_json::json!({"path": "/projects/acme-roadmap/docs/acme-roadmap-q3"})
    );
    assert!(allow.get("refused").is_none(), "{allow}");

    let deny = by_request_id(&records, "audit-deny");
    assert_eq!(deny["allowed"], "deny");
    assert_eq!(deny["principal"], r#"Platform::User::"dave""#);
    assert_eq!(
        deny["determining_policies"],
        serde_json::json!(["tenant-isolation"])
    );
    assert!(deny.get("refused").is_none(), "{deny}");

    let anon = by_request_id(&records, "audit-anon");
    assert_eq!(anon["allowed"], "deny");
    assert_eq!(anon["refused"], "unauthenticated");
    assert_eq!(anon["principal"], "");
    assert_eq!(anon["determining_policies"], serde_json::json!([]));

    let bad_path = by_request_id(&records, "audit-path");
    assert_eq!(bad_path["allowed"], "deny");
    assert_eq!(bad_path["refused"], "invalid: attributes.request.http.path");
    assert_eq!(bad_path["principal"], "");
    assert!(bad_path.get("context").is_none(), "{bad_path}");

    let schema = by_request_id(&records, "audit-schema");
    assert_eq!(schema["allowed"], "deny");
    assert_eq!(schema["refused"], format!("invalid: {schema_field}"));
    assert_eq!(schema["principal"], r#"Platform::User::"bob""#);
    assert_eq!(schema["action"], r#"Platform::Action::"invoke""#);
    assert_eq!(schema["resource"], r#"Platform::Service::"acme/billing""#);
    assert_eq!(
        schema["context"],
        serde_json::json!({"path": "/acme.billing.v1.Billing/Charge"})
    );

    let meta_id = by_request_id(&records, "audit-meta");
    assert_eq!(meta_id["allowed"], "allow");
    let stream_id = by_request_id(&records, STREAM_ID);
    assert_eq!(stream_id["allowed"], "allow");

    // Nothing off the allow-list was written.
    let text = std::fs::read_to_string(&path).unwrap();
    for secret in [
        USER_AGENT,
        SOURCE_IP,
        "bob@acme.example",
        "\"method\"",
        "\"host\"",
        "\"params\"",
        "\"claims\"",
        "drop table",
    ] {
        assert!(!text.contains(secret), "{secret} written:\n{text}");
    }
    server.stop().await;
}

// --- health ---------------------------------------------------------------------------

#[tokio::test]
async fn health_reports_the_authorization_service_serving() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let server = TestServer::start_with(docs_config()).await;
    let mut health = HealthClient::new(server.channel().await);
    let status = health
        .check(HealthCheckRequest {
            service: "envoy.service.auth.v3.Authorization".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    server.stop().await;
}

// --- upstream headers -----------------------------------------------------------------

const ALLOW_ALL: &str = "permit (principal, action, resource);\n";

const UPSTREAM: &str = r#"
upstream_headers = { "x-user" = "{principal_id}", "x-principal" = "{principal}", "x-type" = "{principal_type}", "x-action" = "{action}", "x-resource" = "{resource}", "x-version" = "v={policy_version}" }

[[principal]]
from = "jwt"
type = "User"
"#;

#[tokio::test]
async fn upstream_headers_are_filled_in_and_a_control_character_denies() {
    let dir = policy_dir(&[("all.cedar", ALLOW_ALL)]);
    let server = TestServer::start_with(Config {
        policies: dir.path().to_owned(),
        ext_authz: ext_authz_settings(UPSTREAM),
        ..Config::default()
    })
    .await;
    let mut client = ext_client(&server).await;
    let version = server.store.current().version().to_owned();
    let as_sub = |sub: &str| {
        envoy_check(
            "up-1",
            "GET",
            "/p?x=1",
            &[],
            Some(peer("")),
            Some(jwt(&[("sub", string_value(sub))])),
        )
    };

    let eve = send(&mut client, as_sub("eve")).await;
    assert_allowed(&eve, "eve");
    assert_eq!(
        upstream_headers(&eve),
        HashMap::from(
            [
                ("x-user", "eve".to_owned()),
                ("x-principal", r#"User::"eve""#.to_owned()),
                ("x-type", "User".to_owned()),
                ("x-action", r#"Action::"GET""#.to_owned()),
                (
                    "x-resource",
                    r#"Resource::"docs.acme.example/p""#.to_owned()
                ),
                ("x-version", format!("v={version}")),
            ]
            .map(|(k, v)| (k.to_owned(), v))
        )
    );
    let Some(HttpResponse::OkResponse(ok)) = &eve.http_response else {
        unreachable!()
    };
    for option in &ok.headers {
        assert_eq!(
            option.append_action,
            HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            "{option:?}"
        );
        #[allow(deprecated)]
        let append = option.append;
        assert_eq!(append, Some(false), "{option:?}");
    }

    // A tab is allowed in a header value.
    let tab = send(&mut client, as_sub("eve\tx")).await;
    assert_allowed(&tab, "a tab");
    assert_eq!(upstream_headers(&tab)["x-user"], "eve\tx");

    // Control characters would split or corrupt the upstream request: denied, not allowed.
    for sub in ["eve\nx-admin: true", "eve\r\n", "eve\u{7f}", "eve\u{0}"] {
        let response = send(&mut client, as_sub(sub)).await;
        let field = assert_refused(&response, "invalid", &format!("{sub:?}"));
        assert_eq!(field, "upstream_headers.x-user", "{sub:?}");
        assert!(
            !matches!(response.http_response, Some(HttpResponse::OkResponse(_))),
            "{sub:?}"
        );
    }

    let text = server.metrics_text().await;
    assert_eq!(
        ext_series(&text, "cedar_pdp_decisions_total", r#"decision="allow""#),
        2.0
    );
    assert_eq!(
        ext_series(
            &text,
            "cedar_pdp_requests_rejected_total",
            r#"reason="invalid_argument""#
        ),
        4.0
    );
    server.stop().await;
}

#[tokio::test]
async fn a_check_answered_from_the_cache_follows_a_reload_that_changes_it() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&example_policies(), dir.path());
    let server = TestServer::start_with(Config {
        policies: dir.path().to_owned(),
        ..docs_config()
    })
    .await;
    let mut client = ext_client(&server).await;
    for _ in 0..5 {
        assert_allowed(&send(&mut client, bob_reads("c-1")).await, "bob reads");
    }
    let reused = |text: &str| {
        metric(text, "cedar_pdp_decisions_reused_total{api=\"ext_authz\"}")
            .expect("the reuse counter is exported")
    };
    assert_eq!(
        reused(&server.metrics_text().await),
        4.0,
        "all but the first reused"
    );

    std::fs::write(
        dir.path().join("zz-no-bob.cedar"),
        "@id(\"no-bob\")\nforbid(principal == Platform::User::\"bob\", action, resource);\n",
    )
    .unwrap();
    eventually(
        std::time::Duration::from_secs(10),
        "the forbid to be served",
        || {
            let mut client = client.clone();
            async move {
                let response = send(&mut client, bob_reads("c-1")).await;
                (code(&response) != 0).then_some(())
            }
        },
    )
    .await;
    for _ in 0..3 {
        let response = send(&mut client, bob_reads("c-1")).await;
        assert_forbidden(&response, "bob reads after the forbid");
    }
    server.stop().await;
}
