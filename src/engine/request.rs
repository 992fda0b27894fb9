//! Building a Cedar `Request` from a [`Query`], validated against the schema when asked,
//! with errors that name the field at fault.

use cedar_policy::{Context, ContextJsonError, EntityUid, Request, RequestValidationError, Schema};

use super::{ContextInput, EngineOptions, Query, Refusal, json};
use crate::policy::{Snapshot, describe};

pub(super) fn build(
    snapshot: &Snapshot,
    query: Query,
    options: &EngineOptions,
) -> Result<Request, Refusal> {
    let schema = snapshot.schema().filter(|_| options.validate_requests);
    let Query {
        principal,
        action,
        resource,
        context,
    } = query;
    let (context, field) = match context {
        ContextInput::Value(context) => (context, "context"),
        ContextInput::Canonical(typed) => (typed.build()?, "context"),
        ContextInput::Json(json) => (
            context_from_json(&json, &action, schema, options)?,
            "context_json",
        ),
    };
    Request::new(principal, action, resource, context, schema)
        .map_err(|e| explain(e, snapshot, field))
}

pub(super) fn context_from_json(
    json: &str,
    action: &EntityUid,
    schema: Option<&Schema>,
    options: &EngineOptions,
) -> Result<Context, Refusal> {
    const FIELD: &str = "context_json";
    if json.trim().is_empty() {
        return Ok(Context::empty());
    }
    json::guard(FIELD, json, 0, options)?;
    Context::from_json_str(json, schema.map(|s| (s, action))).map_err(|e| match e {
        ContextJsonError::MissingAction(_) => Refusal::invalid("action", describe(&e)),
        _ => Refusal::invalid(FIELD, describe(&e)),
    })
}

/// Names the field a request validation error is about. Cedar's "context is not valid"
/// does not say which attribute is wrong; the schema's shapes do (error path only).
fn explain(error: RequestValidationError, snapshot: &Snapshot, context_field: &str) -> Refusal {
    let field = match &error {
        RequestValidationError::UndeclaredAction(_) | RequestValidationError::ExternalAction(_) => {
            "action"
        }
        RequestValidationError::UndeclaredPrincipalType(_)
        | RequestValidationError::InvalidPrincipalType(_) => "principal",
        RequestValidationError::UndeclaredResourceType(_)
        | RequestValidationError::InvalidResourceType(_) => "resource",
        RequestValidationError::InvalidContext(invalid) => {
            let found = snapshot
                .schema_shape()
                .zip(invalid.context().to_json_value().ok())
                .and_then(|(shape, json)| {
                    shape.explain_context(invalid.action(), &json, context_field)
                });
            return match found {
                Some((path, problem)) => {
                    Refusal::invalid(path, format!("{problem} (context of {})", invalid.action()))
                }
                None => Refusal::invalid(context_field, describe(&error)),
            };
        }
        RequestValidationError::TypeOfContext(_) => context_field,
        _ => "request",
    };
    Refusal::invalid(field, describe(&error))
}
