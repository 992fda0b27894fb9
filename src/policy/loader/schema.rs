//! The schema, in Cedar or JSON form (validating the policies against it is the build
//! cache's, file by file).

use cedar_policy::{Schema, SchemaFragment};
use miette::Diagnostic;

use super::read::{Kind, Source};
use crate::policy::{Location, Problem, SchemaShape, error::diagnostic_problem};

/// The schema and its JSON shape. `Ok(None)`: no schema; `Err(())`: a schema that failed
/// to parse (already reported).
pub(super) fn parse_schema(
    sources: &[Source],
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) -> Result<Option<(Schema, Option<SchemaShape>)>, ()> {
    let mut schemas = sources
        .iter()
        .filter(|s| matches!(s.kind, Kind::CedarSchema | Kind::JsonSchema));
    let Some(source) = schemas.next() else {
        return Ok(None);
    };
    if let Some(second) = schemas.next() {
        problems.push(Problem::new(
            Location::file(second.rel.clone()),
            format!(
                "a policy directory holds at most one schema; {} is one already",
                source.rel
            ),
        ));
        return Err(());
    }
    let located = |e: &dyn Diagnostic| diagnostic_problem(e, &source.rel, &source.text);
    let fragment = match source.kind {
        Kind::CedarSchema => SchemaFragment::from_cedarschema_str(&source.text)
            .map(|(fragment, found)| {
                warnings.extend(found.map(|w| located(&w)));
                fragment
            })
            .map_err(|e| located(&e)),
        _ => SchemaFragment::from_json_str(&source.text).map_err(|e| located(&e)),
    };
    let fragment = fragment.map_err(|problem| problems.push(problem))?;
    // The JSON form, for explaining requests that do not fit; taken from the one parse.
    let shape = fragment
        .clone()
        .to_json_value()
        .ok()
        .and_then(SchemaShape::new);
    let schema =
        Schema::from_schema_fragments([fragment]).map_err(|e| problems.push(located(&e)))?;
    Ok(Some((schema, shape)))
}
