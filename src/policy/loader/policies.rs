//! Parsing the `*.cedar` files: nesting checked before Cedar's parser recurses, each
//! policy given its id (its `@id`, else file and position) and its location.

use std::str::FromStr;

use cedar_policy::{PolicyId, PolicySet};

use crate::policy::{Lines, Location, Problem, error::diagnostic_problem, index::IndexEntry};

/// Deepest nesting of `(`, `[` and `{` a policy file may have. Cedar parses and evaluates
/// expressions recursively: a debug build overflows a 2 MiB thread stack somewhere
/// between 32 and 40 levels, a release build past 100. Real policies stay far below.
pub const MAX_POLICY_NESTING: usize = 32;

/// The characters of Cedar or JSON text that are code: outside string literals and `//`
/// comments, each with its byte offset and 1-based line. A string literal shows as its
/// opening quote alone. One scanner serves the nesting check, finding where each policy
/// starts, and finding each entity in `entities.json`.
pub(super) fn code_chars(text: &str) -> impl Iterator<Item = (usize, char, usize)> + '_ {
    let mut chars = text.char_indices().peekable();
    let mut line = 1usize;
    std::iter::from_fn(move || {
        loop {
            let (at, c) = chars.next()?;
            match c {
                '"' => {
                    let opened = line;
                    while let Some((_, c)) = chars.next() {
                        match c {
                            '\\' => {
                                if let Some((_, '\n')) = chars.next() {
                                    line += 1;
                                }
                            }
                            '"' => break,
                            '\n' => line += 1,
                            _ => {}
                        }
                    }
                    return Some((at, c, opened));
                }
                '/' if chars.peek().map(|&(_, c)| c) == Some('/') => {
                    for (_, c) in chars.by_ref() {
                        if c == '\n' {
                            line += 1;
                            break;
                        }
                    }
                }
                '\n' => {
                    line += 1;
                    return Some((at, c, line - 1));
                }
                _ => return Some((at, c, line)),
            }
        }
    })
}

/// The 1-based line where brackets first nest deeper than [`MAX_POLICY_NESTING`], if
/// they do.
pub(crate) fn too_deep(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (_, c, line) in code_chars(text) {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_POLICY_NESTING {
                    return Some(line);
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// Byte offsets where the policies of a text that parsed start (their first annotation
/// or keyword), in order: the first code after the start and after each `;`.
pub(super) fn policy_starts(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut want = true;
    for (at, c, _) in code_chars(text) {
        if c == ';' {
            want = true;
        } else if want && !c.is_whitespace() {
            starts.push(at);
            want = false;
        }
    }
    starts
}

/// Byte offsets where the elements of a top-level JSON array start.
pub(super) fn array_element_starts(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let (mut depth, mut want) = (0usize, false);
    for (at, c, _) in code_chars(text) {
        if depth == 1 && want && !c.is_whitespace() && c != ']' {
            starts.push(at);
            want = false;
        }
        match c {
            '[' | '{' => {
                depth += 1;
                want = depth == 1;
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            ',' if depth == 1 => want = true,
            _ => {}
        }
    }
    starts
}

/// One policy file parsed: what a rebuild reuses while the file's text stays the same.
#[derive(Debug)]
pub(super) struct ParsedFile {
    /// Relative path with `/` separators.
    pub(super) rel: String,
    /// The text it was parsed from.
    pub(super) text: String,
    /// Syntax problems (then `policies` is empty), and empty `@id`s.
    pub(super) problems: Vec<Problem>,
    /// Its policies and templates in text order, each already carrying its id.
    pub(super) policies: Vec<ParsedPolicy>,
}

/// One policy or template of a file, with its id and where it starts.
#[derive(Debug)]
pub(super) struct ParsedPolicy {
    pub(super) id: PolicyId,
    pub(super) item: Item,
    pub(super) location: Location,
    /// Whether its id comes from an `@id` annotation.
    pub(super) named: bool,
    /// A static policy's scope and literals, for the snapshot's index.
    pub(super) index: Option<IndexEntry>,
}

/// A static policy or a template.
#[derive(Debug, Clone)]
pub(super) enum Item {
    Policy(cedar_policy::Policy),
    Template(cedar_policy::Template),
}

/// Parses one policy file: its policies with their ids (its `@id`, else `stem.position`)
/// and locations, or what is wrong with it. Ids used twice are found when the files are
/// put together.
pub(super) fn parse_one(rel: String, text: String) -> ParsedFile {
    let mut problems = Vec::new();
    if let Some(line) = too_deep(&text) {
        let location = Location {
            file: rel.clone(),
            line: Some(line),
            column: None,
        };
        problems.push(Problem::new(
            location,
            format!(
                "brackets nest deeper than {MAX_POLICY_NESTING}; \
                 split the expression (deep nesting can exhaust the parser's stack)"
            ),
        ));
        return ParsedFile {
            rel,
            text,
            problems,
            policies: Vec::new(),
        };
    }
    let parsed = match parse_file(&rel, &text) {
        Ok(parsed) => parsed,
        Err(found) => {
            return ParsedFile {
                rel,
                text,
                problems: found,
                policies: Vec::new(),
            };
        }
    };
    let stem = rel.strip_suffix(".cedar").unwrap_or(&rel);
    let starts = policy_starts(&text);
    let lines = Lines::new(&text);
    let located = |pos: usize| match starts.get(pos) {
        Some(&offset) => lines.locate(rel.clone(), offset),
        None => Location::file(rel.clone()),
    };
    // The parsed set iterates in no particular order; ids and messages follow the text.
    let mut entries: Vec<(usize, Entry<'_>)> = parsed
        .policies()
        .map(|p| (position(p.id()), Entry::Policy(p)))
        .chain(
            parsed
                .templates()
                .map(|t| (position(t.id()), Entry::Template(t))),
        )
        .collect();
    entries.sort_by_key(|(pos, _)| *pos);
    let mut policies = Vec::with_capacity(entries.len());
    for (pos, entry) in entries {
        let location = located(pos);
        let (id, named) = match entry.annotation() {
            Some("") => {
                problems.push(Problem::new(location, "the @id annotation is empty"));
                continue;
            }
            Some(id) => (PolicyId::new(id), true),
            None => (PolicyId::new(format!("{stem}.{pos}")), false),
        };
        let item = match entry {
            Entry::Policy(policy) => Item::Policy(policy.new_id(id.clone())),
            Entry::Template(template) => Item::Template(template.new_id(id.clone())),
        };
        let index = match &item {
            Item::Policy(policy) => Some(IndexEntry::new(policy)),
            Item::Template(_) => None,
        };
        policies.push(ParsedPolicy {
            id,
            item,
            location,
            named,
            index,
        });
    }
    ParsedFile {
        rel,
        text,
        problems,
        policies,
    }
}

/// One policy file's text parsed, or every syntax problem in it, located.
pub(super) fn parse_file(rel: &str, text: &str) -> Result<PolicySet, Vec<Problem>> {
    PolicySet::from_str(text).map_err(|errors| {
        errors
            .iter()
            .map(|error| diagnostic_problem(error, rel, text))
            .collect()
    })
}

/// The syntax problems of one policy file's text, located as the loader locates them.
pub(crate) fn parse_problems(rel: &str, text: &str) -> Vec<Problem> {
    parse_file(rel, text).err().unwrap_or_default()
}

/// A static policy or a template, as parsed from one file.
pub(super) enum Entry<'a> {
    Policy(&'a cedar_policy::Policy),
    Template(&'a cedar_policy::Template),
}

impl Entry<'_> {
    fn annotation(&self) -> Option<&str> {
        match self {
            Entry::Policy(p) => id_annotation(p.annotations()),
            Entry::Template(t) => id_annotation(t.annotations()),
        }
    }
}

/// The value of the `@id` annotation among `annotations`. Cedar's `annotation("id")`
/// parses its key with the policy grammar on every call (over 10 µs); this compares.
pub(crate) fn id_annotation<'a>(
    mut annotations: impl Iterator<Item = (&'a str, &'a str)>,
) -> Option<&'a str> {
    annotations.find_map(|(key, value)| (key == "id").then_some(value))
}

/// Cedar names the policies of a parsed text `policy0`, `policy1`, … in text order.
pub(super) fn position(parsed_id: &PolicyId) -> usize {
    let id: &str = parsed_id.as_ref();
    id.strip_prefix("policy")
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX)
}
