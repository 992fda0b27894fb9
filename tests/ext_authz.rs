//! `envoy.service.auth.v3.Authorization/Check` driven over loopback with a client built
//! from Envoy's own protos, against the example policies and the mapping in
//! `docs/envoy.md`.

mod common;

use std::collections::HashMap;

use cedar_pdp::{
    Config,
    proto::envoy::{
        config::core::v3::Metadata,
        service::auth::v3::{
            AttributeContext, CheckRequest, CheckResponse,
            attribute_context::{HttpRequest, Peer, Request},
            authorization_client::AuthorizationClient,
            check_response::HttpResponse,
        },
    },
};
use common::*;
use prost_types::{Struct, Value, value::Kind};

fn docs_config() -> Config {
    Config {
        policies: example_policies(),
        ext_authz: docs_ext_authz(),
        ..Config::default()
    }
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

/// JWT payload metadata as Envoy's jwt_authn filter writes it.
fn jwt(claims: &[(&str, Value)]) -> Metadata {
    let payload = Struct {
        fields: claims
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    };
    let namespace = Struct {
        fields: [(
            "jwt_payload".to_owned(),
            Value {
                kind: Some(Kind::StructValue(payload)),
            },
        )]
        .into(),
    };
    Metadata {
        filter_metadata: [("envoy.filters.http.jwt_authn".to_owned(), namespace)].into(),
        ..Default::default()
    }
}

fn check(method: &str, path: &str, metadata: Option<Metadata>, peer: Option<Peer>) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source: peer,
            request: Some(Request {
                time: None,
                http: Some(HttpRequest {
                    id: "req-ext-1".to_owned(),
                    method: method.to_owned(),
                    path: path.to_owned(),
                    host: "docs.acme.example".to_owned(),
                    headers: HashMap::from([("user-agent".to_owned(), "curl/8".to_owned())]),
                    ..Default::default()
                }),
            }),
            metadata_context: metadata,
            ..Default::default()
        }),
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
