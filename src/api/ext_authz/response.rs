//! `CheckResponse`s: what Envoy gets back for a decision or a refusal. Always an answer,
//! never a gRPC error: allow is OK (with the configured upstream headers); a deny is
//! PERMISSION_DENIED with a 403; a refusal is a deny too, with the status its [`Reason`]
//! calls for (no identifiable principal: UNAUTHENTICATED, 401; overloaded: 503). Bodies say
//! no more than that; the response's dynamic metadata says what was decided and why (the
//! field at fault, never the value), for Envoy's access log.

use bytes::{BufMut as _, Bytes, BytesMut};
use cedar_policy::EntityUid;
use http_body_util::StreamBody;
use hyper::body::Frame;
use prost::Message as _;
use prost_types::{ListValue, Struct, Value, value::Kind};
use tonic::codegen::http::{self, HeaderMap};

use crate::{
    decide::{Decision, Reason, Refusal},
    proto::{
        envoy::{
            config::core::v3::{HeaderValue, HeaderValueOption, header_value_option},
            service::auth::v3::{
                CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response::HttpResponse,
            },
            r#type::v3::{HttpStatus, StatusCode},
        },
        google::rpc,
    },
};

/// What a decided check was about, for headers and metadata.
pub(super) struct Names<'a> {
    pub(super) principal: &'a EntityUid,
    pub(super) action: &'a str,
    pub(super) resource: &'a str,
    pub(super) version: &'a str,
}

/// The answer for a decision: allowed with `headers` for the upstream request, or denied.
pub(super) fn decided(
    decision: &Decision,
    names: &Names<'_>,
    headers: Vec<HeaderValueOption>,
) -> CheckResponse {
    let metadata = record(vec![
        ("decision", text(decision.effect().label())),
        ("policy_version", text(names.version)),
        ("principal", text(shown(&names.principal.to_string()))),
        ("action", text(shown(names.action))),
        ("resource", text(shown(names.resource))),
        (
            "determining_policies",
            Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: decision
                        .determining_policies()
                        .iter()
                        .map(|p| text(p.as_str()))
                        .collect(),
                })),
            },
        ),
    ]);
    if !decision.allowed() {
        return denied(Reason::Invalid, metadata, false);
    }
    CheckResponse {
        status: Some(rpc_status(tonic::Code::Ok)),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers,
            ..Default::default()
        })),
        dynamic_metadata: Some(metadata),
    }
}

/// The answer for a refused check, with metadata saying why: its reason, the field at
/// fault (for invalid input and limits), and the policy version serving (when known).
pub(super) fn refused(refusal: &Refusal, version: Option<&str>) -> CheckResponse {
    let mut fields = vec![("decision", text("deny"))];
    if let Some(version) = version {
        fields.push(("policy_version", text(version)));
    }
    fields.push(("reason", text(refusal.reason().word())));
    if matches!(refusal.reason(), Reason::Invalid | Reason::Limit) {
        fields.push(("field", text(refusal.field())));
    }
    denied(refusal.reason(), record(fields), true)
}

/// The header that carries a check's decision id back through Envoy, to the client (on an
/// allow, added to the upstream's response; on a deny, on the denied response).
pub const DECISION_ID_HEADER: &str = "x-decision-id";

/// `response` with the id of the decision it answers: the `x-decision-id` header to the
/// client, and `decision_id` in the dynamic metadata (for Envoy's access log).
pub(super) fn stamped(mut response: CheckResponse, decision_id: &str) -> CheckResponse {
    response
        .dynamic_metadata
        .get_or_insert_with(Struct::default)
        .fields
        .insert("decision_id".to_owned(), text(decision_id));
    let stamp = header(DECISION_ID_HEADER, decision_id.to_owned());
    match &mut response.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            ok.response_headers_to_add.push(stamp);
            // A client's own `x-decision-id` must not reach the upstream as if it were one.
            ok.headers_to_remove.push(DECISION_ID_HEADER.to_owned());
        }
        Some(HttpResponse::DeniedResponse(denied) | HttpResponse::ErrorResponse(denied)) => {
            denied.headers.push(stamp);
        }
        None => {}
    }
    response
}

/// A header for the upstream request (or the denied response), replacing any of the same
/// name.
pub(super) fn header(key: &str, value: String) -> HeaderValueOption {
    #[allow(deprecated)] // `append` is what Envoy before 1.23 reads.
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value,
            raw_value: Vec::new(),
        }),
        append: Some(false),
        append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        keep_empty_value: false,
    }
}

/// A denied response; the body says only what kind of deny it is. A deny a policy made
/// (`refusal` false) is always 403.
fn denied(reason: Reason, metadata: Struct, refusal: bool) -> CheckResponse {
    let (code, http, body) = match reason {
        Reason::Unauthenticated if refusal => (
            tonic::Code::Unauthenticated,
            StatusCode::Unauthorized,
            "authentication required\n",
        ),
        Reason::Overloaded if refusal => (
            tonic::Code::ResourceExhausted,
            StatusCode::ServiceUnavailable,
            "authorization service overloaded; retry\n",
        ),
        Reason::Timeout if refusal => (
            tonic::Code::DeadlineExceeded,
            StatusCode::GatewayTimeout,
            "authorization timed out; retry\n",
        ),
        Reason::Internal if refusal => (
            tonic::Code::Internal,
            StatusCode::InternalServerError,
            "authorization failed\n",
        ),
        _ => (
            tonic::Code::PermissionDenied,
            StatusCode::Forbidden,
            "access denied\n",
        ),
    };
    CheckResponse {
        status: Some(rpc_status(code)),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http as i32 }),
            headers: vec![header(
                "content-type",
                "text/plain; charset=utf-8".to_owned(),
            )],
            body: body.to_owned(),
        })),
        dynamic_metadata: Some(metadata),
    }
}

/// Longest text of the request quoted in metadata, in bytes: an access log line needs no
/// more, and the answer stays small whatever the check held.
const SHOWN_BYTES: usize = 256;

/// `text`, cut to [`SHOWN_BYTES`] at a character boundary (with `…` when cut).
fn shown(text: &str) -> String {
    if text.len() <= SHOWN_BYTES {
        return text.to_owned();
    }
    let mut cut = SHOWN_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

fn rpc_status(code: tonic::Code) -> rpc::Status {
    rpc::Status {
        code: code as i32,
        message: String::new(),
        details: Vec::new(),
    }
}

fn text(s: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

fn record(fields: Vec<(&str, Value)>) -> Struct {
    Struct {
        fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    }
}

/// `response` as a whole gRPC answer on the wire (one message, then `grpc-status: 0`), for
/// the transport to send without the service: to a check whose deadline passed before it
/// was answered.
pub(crate) fn as_grpc_http(response: &CheckResponse) -> http::Response<tonic::body::Body> {
    let message = response.encode_to_vec();
    let length = u32::try_from(message.len()).expect("a CheckResponse is small");
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0); // not compressed
    framed.put_u32(length);
    framed.extend_from_slice(&message);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames: [Result<Frame<Bytes>, std::convert::Infallible>; 2] = [
        Ok(Frame::data(framed.freeze())),
        Ok(Frame::trailers(trailers)),
    ];
    let body = StreamBody::new(tokio_stream::iter(frames));
    http::Response::builder()
        .status(http::StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(tonic::body::Body::new(body))
        .expect("a response built from valid parts")
}

/// The answer to a check whose message is larger than `max_message_bytes`: a deny.
pub(crate) fn too_large(max_message_bytes: usize) -> CheckResponse {
    let refusal = Refusal::limit(
        "request",
        format!("larger than the limit of {max_message_bytes} bytes (max_message_bytes)"),
    );
    refused(&refusal, None)
}

/// The answer to a check not answered within `deadline`: a 504 deny.
pub(crate) fn timed_out(deadline: std::time::Duration) -> CheckResponse {
    let refusal = Refusal::new(
        Reason::Timeout,
        "",
        format!("not answered within its deadline of {deadline:?}"),
    );
    refused(&refusal, None)
}
