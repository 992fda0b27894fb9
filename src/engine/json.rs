//! A guard run on JSON fields before they are parsed: bracket nesting past the limit and
//! strings longer than the limit are refused, so no parser recurses deeper, and no string
//! is held, longer than configured.

use super::{EngineOptions, Refusal};

/// What [`measure`] found in a JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    /// The deepest `[`/`{` nesting, brackets inside strings not counted.
    pub(crate) depth: usize,
    /// The longest string literal, in bytes as written (escapes count as written).
    pub(crate) longest_string: usize,
}

/// Measures `text` in one pass. Stops once nesting passes `depth_limit`, with `depth`
/// at `depth_limit + 1`.
pub(crate) fn measure(text: &str, depth_limit: usize) -> Shape {
    let mut shape = Shape {
        depth: 0,
        longest_string: 0,
    };
    let mut depth = 0usize;
    let (mut string_start, mut escaped) = (None, false);
    for (i, byte) in text.bytes().enumerate() {
        if let Some(start) = string_start {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => {
                    shape.longest_string = shape.longest_string.max(i - start);
                    string_start = None;
                }
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => string_start = Some(i + 1),
            b'[' | b'{' => {
                depth += 1;
                if depth > shape.depth {
                    shape.depth = depth;
                    if depth > depth_limit {
                        return shape;
                    }
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if let Some(start) = string_start {
        // Unterminated: the parser will refuse it, but not before holding it.
        shape.longest_string = shape.longest_string.max(text.len() - start);
    }
    shape
}

/// Refuses the JSON request field `field` if its values nest deeper than
/// `max_value_depth` (plus `wrapping` levels of the field's own structure) or it holds a
/// string longer than `max_string_bytes`.
pub(crate) fn guard(
    field: &str,
    json: &str,
    wrapping: usize,
    options: &EngineOptions,
) -> Result<(), Refusal> {
    let limit = options.max_value_depth + wrapping;
    let shape = measure(json, limit);
    if shape.depth > limit {
        return Err(Refusal::limit(
            field,
            format!(
                "values are nested deeper than the limit of {} (max_value_depth)",
                options.max_value_depth
            ),
        ));
    }
    if shape.longest_string > options.max_string_bytes {
        return Err(Refusal::limit(
            field,
            format!(
                "a string of {} bytes is longer than the limit of {} (max_string_bytes)",
                shape.longest_string, options.max_string_bytes
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Shape, measure};

    fn depth(text: &str, limit: usize) -> usize {
        measure(text, limit).depth
    }

    #[test]
    fn counts_brackets_but_not_inside_strings() {
        assert_eq!(depth("{}", 10), 1);
        assert_eq!(depth(r#"{"a": [1, {"b": "[[[{"}]}"#, 10), 3);
        assert_eq!(depth(r#"{"a": "\"[[["}"#, 10), 1);
        assert_eq!(depth("3", 10), 0);
    }

    #[test]
    fn stops_past_the_limit() {
        let deep = "[".repeat(100_000);
        assert_eq!(depth(&deep, 32), 33);
    }

    #[test]
    fn measures_the_longest_string_as_written() {
        let shape = measure(r#"{"ab": "xyz", "k": "a\"b"}"#, 10);
        assert_eq!(
            shape,
            Shape {
                depth: 1,
                longest_string: 4
            }
        );
        assert_eq!(measure(r#"["", "\\"]"#, 10).longest_string, 2);
        assert_eq!(measure(r#"["abc"#, 10).longest_string, 3);
        assert_eq!(measure("[1, 2]", 10).longest_string, 0);
    }
}
