//! Building a Cedar `Request` from a [`Query`], validated against the schema when asked,
//! with errors that name the field at fault.

use cedar_policy::{Context, ContextJsonError, EntityUid, Request, RequestValidationError, Schema};

use super::{ContextInput, EngineOptions, Query, RequestError, json::nesting_depth};
use crate::policy::{Snapshot, describe};

pub(super) fn build(
    snapshot: &Snapshot,
    query: Query,
    options: &EngineOptions,
) -> Result<Request, RequestError> {
    let schema = snapshot.schema().filter(|_| options.validate_requests);
    let Query {
        principal,
        action,
        resource,
        context,
    } = query;
    let (context, field) = match context {
        ContextInput::Value(context) => (context, "context"),
        ContextInput::Json(json) => (
            context_from_json(&json, &action, schema, options)?,
            "context_json",
        ),
    };
    Request::new(principal, action, resource, context, schema)
        .map_err(|e| explain(e, schema, field))
}

fn context_from_json(
    json: &str,
    action: &EntityUid,
    schema: Option<&Schema>,
    options: &EngineOptions,
) -> Result<Context, RequestError> {
    const FIELD: &str = "context_json";
    if json.trim().is_empty() {
        return Ok(Context::empty());
    }
    if nesting_depth(json, options.max_value_depth) > options.max_value_depth {
        return Err(RequestError::limit(
            FIELD,
            format!(
                "values are nested deeper than the limit of {} (max_value_depth)",
                options.max_value_depth
            ),
        ));
    }
    Context::from_json_str(json, schema.map(|s| (s, action))).map_err(|e| match e {
        ContextJsonError::MissingAction(_) => RequestError::invalid("action", describe(&e)),
        _ => RequestError::invalid(FIELD, describe(&e)),
    })
}

/// Names the field a request validation error is about. Cedar's "context is not valid"
/// does not say which attribute is wrong, so the context is parsed once more through the
/// schema-directed JSON parser, whose errors do; this runs only on the error path.
fn explain(
    error: RequestValidationError,
    schema: Option<&Schema>,
    context_field: &str,
) -> RequestError {
    let field =
        match &error {
            RequestValidationError::UndeclaredAction(_)
            | RequestValidationError::ExternalAction(_) => "action",
            RequestValidationError::UndeclaredPrincipalType(_)
            | RequestValidationError::InvalidPrincipalType(_) => "principal",
            RequestValidationError::UndeclaredResourceType(_)
            | RequestValidationError::InvalidResourceType(_) => "resource",
            RequestValidationError::InvalidContext(invalid) => {
                let detail = schema.zip(invalid.context().to_json_value().ok()).and_then(
                    |(schema, json)| {
                        Context::from_json_value(json, Some((schema, invalid.action()))).err()
                    },
                );
                let message = match detail {
                    Some(detail) => format!(
                        "does not match the schema for {}: {}",
                        invalid.action(),
                        describe(&detail)
                    ),
                    None => describe(&error),
                };
                return RequestError::invalid(context_field, message);
            }
            RequestValidationError::TypeOfContext(_) => context_field,
            _ => "request",
        };
    RequestError::invalid(field, describe(&error))
}
