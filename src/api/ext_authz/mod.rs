//! Envoy's external authorization API, `envoy.service.auth.v3.Authorization/Check`, on
//! the same port as `cedarpdp.v1`: gateways and sidecars (Envoy, Istio, Emissary, Gloo,
//! Contour) ask it for every HTTP request, with no code in the services behind them.
//!
//! [`mapping`] turns each check into a Cedar question; the engine decides it exactly as
//! `IsAuthorized` would. The answer is always a `CheckResponse`, never a gRPC error for
//! bad input, because Envoy set to `failure_mode_allow: true` lets a request through on
//! an error: allow is OK (with the configured upstream headers), deny is
//! PERMISSION_DENIED with a 403, no identifiable principal is UNAUTHENTICATED with a 401,
//! and a check that cannot be mapped is a deny. Bodies say no more than that; what was
//! decided and why goes to the audit log, the metrics (`api="ext_authz"`), and the
//! response's dynamic metadata, which Envoy can write to its access log.

mod mapping;

use std::sync::Arc;

use cedar_policy::EntityUid;
use prost_types::{ListValue, Struct, Value, value::Kind};
use tonic::{Request, Response, Status};

use self::mapping::{Mapped, Refusal};
use super::{
    admission::Overloaded,
    authorizer::response,
    callers::CallerPolicy,
    observe::{Call, Question, rejection},
    request_id::RequestId,
};
use crate::{
    config::ext_authz::ExtAuthz,
    engine::{Engine, EntitiesInput, RequestError},
    policy::{PolicyStore, Snapshot},
    proto::{
        cedarpdp::v1 as pb,
        envoy::{
            config::core::v3::{HeaderValue, HeaderValueOption, header_value_option},
            service::auth::v3::{
                CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
                authorization_server::Authorization, check_response::HttpResponse,
            },
            r#type::v3::{HttpStatus, StatusCode},
        },
        google::rpc,
    },
    telemetry::{
        AuditLog, Metrics,
        metrics::{Api, Rejection},
    },
};

/// Serves `Check` from a [`PolicyStore`] with an [`Engine`], mapping by [`ExtAuthz`].
#[derive(Debug, Clone)]
pub struct ExtAuthzService {
    store: Arc<PolicyStore>,
    engine: Arc<Engine>,
    mapping: Arc<ExtAuthz>,
    max_value_depth: usize,
    metrics: Metrics,
    audit: Arc<AuditLog>,
    callers: CallerPolicy,
}

impl ExtAuthzService {
    /// A service deciding with `engine` against whatever `store` serves at each call.
    pub fn new(
        store: Arc<PolicyStore>,
        engine: Arc<Engine>,
        mapping: ExtAuthz,
        max_value_depth: usize,
        telemetry: super::Telemetry,
        callers: CallerPolicy,
    ) -> Self {
        Self {
            store,
            engine,
            mapping: Arc::new(mapping),
            max_value_depth,
            metrics: telemetry.metrics,
            audit: telemetry.audit,
            callers,
        }
    }

    /// Decides one check; every outcome is a response.
    fn check(&self, call: &Call<'_>, check: &CheckRequest) -> CheckResponse {
        let snapshot = self.store.current();
        let mapped = match mapping::map(&self.mapping, check, self.max_value_depth) {
            Ok(mapped) => mapped,
            Err(Refusal::Unauthenticated) => {
                call.denied_undecided(
                    Rejection::Unauthenticated,
                    "unauthenticated".to_owned(),
                    None,
                    snapshot.version(),
                );
                return undecided(Denial::Unauthenticated, None, &snapshot);
            }
            Err(Refusal::Refused(error)) => return self.refuse(call, error, None, &snapshot),
        };
        let Mapped { query, context } = mapped;
        let (principal, action, resource) = (
            query.principal.clone(),
            query.action.to_string(),
            query.resource.to_string(),
        );
        let question = call.auditing().then(|| {
            Question::mapped(
                principal.to_string(),
                action.clone(),
                resource.clone(),
                context.iter().map(|(k, v)| ((*k).to_owned(), v.json())),
                self.audit.context_keys(),
            )
        });
        let decided = self.engine.decide(&snapshot, EntitiesInput::None, query);
        let answer = match decided {
            Ok(decision) => response(decision, &snapshot),
            Err(error) => return self.refuse(call, error, question, &snapshot),
        };
        let allowed = answer.decision == pb::Decision::Allow as i32;
        let names = Names {
            principal: &principal,
            action: &action,
            resource: &resource,
            version: snapshot.version(),
        };
        let headers = if allowed {
            match self.upstream_headers(&names) {
                Ok(headers) => Some(headers),
                Err(error) => return self.refuse(call, error, question, &snapshot),
            }
        } else {
            None
        };
        let metadata = decided_metadata(&answer, &names);
        call.answered([(&answer, question)], false);
        match headers {
            Some(headers) => CheckResponse {
                status: Some(rpc_status(tonic::Code::Ok)),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers,
                    ..Default::default()
                })),
                dynamic_metadata: Some(metadata),
            },
            None => denied(Denial::Forbidden, metadata),
        }
    }

    /// A deny for a check that cannot be decided: counted, audited, logged at debug.
    fn refuse(
        &self,
        call: &Call<'_>,
        error: RequestError,
        question: Option<Question>,
        snapshot: &Snapshot,
    ) -> CheckResponse {
        let reason = rejection(&error);
        call.denied_undecided(
            reason,
            format!("{}: {}", reason_word(reason), error.field()),
            question,
            snapshot.version(),
        );
        undecided(Denial::Forbidden, Some(&error), snapshot)
    }

    /// The configured upstream headers, filled in; a value that would not be a valid
    /// header value (a control character from an entity id) refuses the check.
    fn upstream_headers(&self, names: &Names<'_>) -> Result<Vec<HeaderValueOption>, RequestError> {
        let principal_type = names.principal.type_name().to_string();
        let principal_id = names.principal.id().unescaped().to_owned();
        let principal = names.principal.to_string();
        self.mapping
            .upstream_headers
            .iter()
            .map(|(name, template)| {
                let value = template.render(|placeholder| match placeholder {
                    "policy_version" => Some(names.version),
                    "principal" => Some(principal.as_str()),
                    "principal_type" => Some(principal_type.as_str()),
                    "principal_id" => Some(principal_id.as_str()),
                    "action" => Some(names.action),
                    "resource" => Some(names.resource),
                    _ => None,
                });
                if value.chars().any(|c| c.is_control() && c != '\t') {
                    return Err(RequestError::invalid(
                        format!("upstream_headers.{name}"),
                        "the value would hold a control character",
                    ));
                }
                #[allow(deprecated)] // `append` is what Envoy before 1.23 reads.
                Ok(HeaderValueOption {
                    header: Some(HeaderValue {
                        key: name.clone(),
                        value,
                        raw_value: Vec::new(),
                    }),
                    append: Some(false),
                    append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd
                        as i32,
                    keep_empty_value: false,
                })
            })
            .collect()
    }
}

/// What a decided check was about, for headers and metadata.
struct Names<'a> {
    principal: &'a EntityUid,
    action: &'a str,
    resource: &'a str,
    version: &'a str,
}

/// The two ways a check is denied.
#[derive(Debug, Clone, Copy)]
enum Denial {
    /// PERMISSION_DENIED, HTTP 403.
    Forbidden,
    /// UNAUTHENTICATED, HTTP 401.
    Unauthenticated,
    /// RESOURCE_EXHAUSTED, HTTP 503: shed past `max_concurrent_calls`, not decided.
    Overloaded,
}

fn reason_word(reason: Rejection) -> &'static str {
    match reason {
        Rejection::Invalid => "invalid",
        Rejection::Limit => "limit",
        Rejection::Unauthenticated => "unauthenticated",
        Rejection::CallerNotAllowed => "caller_not_allowed",
        Rejection::Overloaded => "overloaded",
    }
}

fn rpc_status(code: tonic::Code) -> rpc::Status {
    rpc::Status {
        code: code as i32,
        message: String::new(),
        details: Vec::new(),
    }
}

/// The response for a denial; the body says only what kind it is.
fn denied(denial: Denial, metadata: Struct) -> CheckResponse {
    let (code, http, body) = match denial {
        Denial::Forbidden => (
            tonic::Code::PermissionDenied,
            StatusCode::Forbidden,
            "access denied\n",
        ),
        Denial::Unauthenticated => (
            tonic::Code::Unauthenticated,
            StatusCode::Unauthorized,
            "authentication required\n",
        ),
        Denial::Overloaded => (
            tonic::Code::ResourceExhausted,
            StatusCode::ServiceUnavailable,
            "authorization service overloaded; retry\n",
        ),
    };
    #[allow(deprecated)] // `append` is what Envoy before 1.23 reads.
    let content_type = HeaderValueOption {
        header: Some(HeaderValue {
            key: "content-type".to_owned(),
            value: "text/plain; charset=utf-8".to_owned(),
            raw_value: Vec::new(),
        }),
        append: Some(false),
        append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        keep_empty_value: false,
    };
    CheckResponse {
        status: Some(rpc_status(code)),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http as i32 }),
            headers: vec![content_type],
            body: body.to_owned(),
        })),
        dynamic_metadata: Some(metadata),
    }
}

/// A denial no policy made, with metadata saying why (the field, never the value).
fn undecided(denial: Denial, error: Option<&RequestError>, snapshot: &Snapshot) -> CheckResponse {
    let mut fields = vec![
        ("decision", text("deny")),
        ("policy_version", text(snapshot.version())),
    ];
    match (denial, error) {
        (Denial::Unauthenticated, _) => fields.push(("reason", text("unauthenticated"))),
        (Denial::Forbidden, Some(error)) => {
            fields.push(("reason", text(reason_word(rejection(error)))));
            fields.push(("field", text(error.field())));
        }
        (Denial::Overloaded, _) => fields.push(("reason", text("overloaded"))),
        (Denial::Forbidden, None) => {}
    }
    denied(denial, record(fields))
}

/// Metadata for a decided check: the decision, its policies and what was asked.
fn decided_metadata(answer: &pb::IsAuthorizedResponse, names: &Names<'_>) -> Struct {
    let allowed = answer.decision == pb::Decision::Allow as i32;
    record(vec![
        ("decision", text(if allowed { "allow" } else { "deny" })),
        ("policy_version", text(names.version)),
        ("principal", text(&names.principal.to_string())),
        ("action", text(names.action)),
        ("resource", text(names.resource)),
        (
            "determining_policies",
            Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: answer
                        .determining_policies
                        .iter()
                        .map(|p| text(p))
                        .collect(),
                })),
            },
        ),
    ])
}

fn text(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

fn record(fields: Vec<(&str, Value)>) -> Struct {
    Struct {
        fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        // The HTTP request's `x-request-id` (which Envoy sets) ties the audit record to
        // Envoy's access log; then the call's own; then `http.id`, Envoy's stream id,
        // unique only within one Envoy.
        let http = request
            .get_ref()
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let id = http
            .and_then(|http| mapping::header(http, "x-request-id"))
            .and_then(|id| RequestId::parse(&id))
            .or_else(|| RequestId::from_metadata(request.metadata()))
            .or_else(|| http.and_then(|http| RequestId::parse(&http.id)))
            .unwrap_or_default();
        if request.extensions().get::<Overloaded>().is_some() {
            // Shed on arrival (counted and logged there). A deny rather than a gRPC
            // error, so an Envoy set to fail open cannot turn overload into allow.
            let snapshot = self.store.current();
            return Ok(Response::new(undecided(
                Denial::Overloaded,
                None,
                &snapshot,
            )));
        }
        let mut call = Call::start(Api::ExtAuthz, id, &request, &self.metrics, &self.audit);
        let span = tracing::info_span!("call", api = "ext_authz", request_id = %call.id);
        let _in_span = span.enter();
        if call.admit(&self.callers, &request).is_err() {
            // A 403 answer rather than a gRPC error: an Envoy set to fail open must not
            // turn this refusal into an allow.
            let fields = vec![
                ("decision", text("deny")),
                ("reason", text("caller_not_allowed")),
            ];
            return Ok(Response::new(denied(Denial::Forbidden, record(fields))));
        }
        Ok(Response::new(ExtAuthzService::check(
            self,
            &call,
            request.get_ref(),
        )))
    }
}
