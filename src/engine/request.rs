//! Building a Cedar `Request` from a [`Query`], validated against the schema when asked,
//! with errors that name the field at fault.

use cedar_policy::{Context, ContextJsonError, EntityUid, Request, RequestValidationError, Schema};

use super::{ContextInput, EngineOptions, Query, Refusal, json};
use crate::policy::{Snapshot, describe};

/// The contexts validated so far for the requests of one call, with the action each was
/// validated for: the items of a batch often share one context, and validating it against
/// the schema is most of the cost of building a request. A few are kept (the latest),
/// compared by their canonical bytes (equal bytes are an equal context).
#[derive(Debug, Default)]
pub struct CheckedContexts {
    kept: Vec<(EntityUid, Box<[u8]>)>,
}

/// Contexts [`CheckedContexts`] keeps: a call whose items carry many different contexts
/// validates each, as it would without.
const CHECKED_CONTEXTS: usize = 4;

impl CheckedContexts {
    fn holds(&self, action: &EntityUid, bytes: &[u8]) -> bool {
        self.kept.iter().any(|(a, b)| a == action && **b == *bytes)
    }

    fn keep(&mut self, action: &EntityUid, bytes: &[u8]) {
        if self.kept.len() == CHECKED_CONTEXTS {
            self.kept.remove(0);
        }
        self.kept.push((action.clone(), bytes.into()));
    }
}

pub(super) fn build(
    snapshot: &Snapshot,
    query: Query,
    options: &EngineOptions,
    checked: Option<&mut CheckedContexts>,
) -> Result<Request, Refusal> {
    let schema = snapshot.schema().filter(|_| options.validate_requests);
    let Query {
        principal,
        action,
        resource,
        context,
    } = query;
    let (context, field, bytes) = match context {
        ContextInput::Value(context) => (context, "context", None),
        ContextInput::Canonical(typed) => (typed.build()?, "context", Some(typed)),
        ContextInput::Json(json) => (
            context_from_json(&json, &action, schema, options)?,
            "context_json",
            None,
        ),
    };
    let (Some(schema), Some(typed), Some(checked)) = (schema, bytes, checked) else {
        return Request::new(principal, action, resource, context, schema)
            .map_err(|e| explain(e, snapshot, field));
    };
    if checked.holds(&action, typed.bytes()) {
        // Cedar's validation is of the principal and resource (their types against the
        // action's, their ids against enumerated types) and then of the context, for the
        // action: only the first is left to do.
        use cedar_policy_core::ast::RequestSchema as _;
        schema
            .as_ref()
            .validate_scope_variables(
                Some(principal.as_ref()),
                Some(action.as_ref()),
                Some(resource.as_ref()),
            )
            .map_err(|e| explain(e.into(), snapshot, field))?;
        return Request::new(principal, action, resource, context, None)
            .map_err(|e| explain(e, snapshot, field));
    }
    let keep = action.clone();
    let request = Request::new(principal, action, resource, context, Some(schema))
        .map_err(|e| explain(e, snapshot, field))?;
    checked.keep(&keep, typed.bytes());
    Ok(request)
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

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use cedar_policy::{Context, RestrictedExpression};

    use super::*;
    use crate::{
        engine::{CanonicalContext, Engine, rng::Rng},
        policy::{LoadOptions, load_dir},
    };

    const SCHEMA: &str = r#"
        entity User; entity Bot; entity Doc;
        entity Color enum ["red", "blue"];
        action view appliesTo { principal: [User], resource: [Doc, Color], context: { level: Long } };
        action edit appliesTo {
            principal: [User, Bot], resource: [Doc], context: { level: Long, reason: String }
        };
    "#;

    /// A context with canonical bytes that tell it apart (here, its position in the list).
    fn context(at: usize) -> ContextInput {
        let long = RestrictedExpression::new_long;
        let string = |s: &str| RestrictedExpression::new_string(s.to_owned());
        let pairs: Vec<(&str, RestrictedExpression)> = match at {
            0 => vec![("level", long(1))],
            1 => vec![("level", long(2)), ("reason", string("audit"))],
            2 => vec![("level", string("high"))],
            3 => vec![],
            _ => vec![("level", long(1)), ("extra", long(0))],
        };
        let pairs = pairs.into_iter().map(|(k, v)| (k.to_owned(), v));
        let built = Context::from_pairs(pairs).unwrap();
        ContextInput::Canonical(CanonicalContext::built(vec![at as u8].into(), built))
    }

    /// Building the requests of one call with the contexts validated once, in any order of
    /// principals, actions, resources and contexts (valid or not for the action, enumerated
    /// ids in and out of the enumeration), gives what building each alone does: the same
    /// request, or the same refusal.
    #[test]
    fn a_context_validated_once_per_call_builds_what_validating_each_does() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("schema.cedarschema"), SCHEMA).unwrap();
        std::fs::write(
            dir.path().join("p.cedar"),
            "permit(principal, action, resource);",
        )
        .unwrap();
        let snapshot = load_dir(dir.path(), &LoadOptions::default())
            .unwrap()
            .snapshot;
        let engine = Engine::default();
        let uid = |s: &str| EntityUid::from_str(s).unwrap();
        let mut rng = Rng::new(7);
        let (mut built, mut refused, mut reused) = (0, 0, 0);
        for _ in 0..300 {
            let mut checked = CheckedContexts::default();
            for _ in 0..1 + rng.below(12) {
                let query = Query {
                    principal: uid(rng.choose(&[
                        r#"User::"a""#,
                        r#"User::"a""#,
                        r#"User::"c""#,
                        r#"Bot::"b""#,
                        r#"Doc::"x""#,
                    ])),
                    action: uid(rng.choose(&[r#"Action::"view""#, r#"Action::"edit""#])),
                    resource: uid(rng.choose(&[
                        r#"Doc::"d""#,
                        r#"Doc::"d""#,
                        r#"Doc::"e""#,
                        r#"Color::"red""#,
                        r#"Color::"green""#,
                    ])),
                    context: context(rng.choose(&[0, 0, 0, 1, 1, 1, 2, 3, 4])),
                };
                let held = checked.holds(
                    &query.action,
                    match &query.context {
                        ContextInput::Canonical(c) => c.bytes(),
                        _ => unreachable!(),
                    },
                );
                let alone = engine.request(&snapshot, query.clone());
                let among = engine.request_among(&snapshot, query, &mut checked);
                assert_eq!(among, alone);
                match among {
                    Ok(_) => built += 1,
                    Err(_) => refused += 1,
                }
                reused += usize::from(held);
            }
        }
        assert!(
            built > 100 && refused > 100,
            "{built} built, {refused} refused"
        );
        assert!(reused > 100, "{reused} built with a context checked before");
    }
}
