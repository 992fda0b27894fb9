//! A guard run on JSON fields before they are parsed: bracket nesting past the limit is
//! refused, so no parser recurses deeper than configured.

/// The deepest `[`/`{` nesting in `text`, brackets inside strings not counted. Stops
/// counting past `limit` and returns `limit + 1`.
pub(crate) fn nesting_depth(text: &str, limit: usize) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for byte in text.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > deepest {
                    deepest = depth;
                    if deepest > limit {
                        return deepest;
                    }
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::nesting_depth;

    #[test]
    fn counts_brackets_but_not_inside_strings() {
        assert_eq!(nesting_depth("{}", 10), 1);
        assert_eq!(nesting_depth(r#"{"a": [1, {"b": "[[[{"}]}"#, 10), 3);
        assert_eq!(nesting_depth(r#"{"a": "\"[[["}"#, 10), 1);
        assert_eq!(nesting_depth("3", 10), 0);
    }

    #[test]
    fn stops_past_the_limit() {
        let deep = "[".repeat(100_000);
        assert_eq!(nesting_depth(&deep, 32), 33);
    }
}
