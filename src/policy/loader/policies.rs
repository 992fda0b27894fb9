//! Parsing the `*.cedar` files: nesting checked before Cedar's parser recurses, each
//! policy given its id (its `@id`, else file and position) and its location.

use std::{collections::HashMap, str::FromStr};

use cedar_policy::{PolicyId, PolicySet};

use super::read::{Kind, Source};
use crate::policy::{Lines, Location, Problem, error::diagnostic_problem};

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

/// The policy set and, per policy id, where it came from.
pub(super) struct Policies {
    pub(super) set: PolicySet,
    pub(super) origin: HashMap<PolicyId, Origin>,
}

/// The file a policy came from (index into the sources) and where in it it starts.
pub(super) struct Origin {
    pub(super) source: usize,
    pub(super) location: Location,
}

pub(super) fn parse_policies(sources: &[Source], problems: &mut Vec<Problem>) -> Policies {
    let mut set = PolicySet::new();
    let mut origin: HashMap<PolicyId, Origin> = HashMap::new();
    for (index, source) in sources.iter().enumerate() {
        if source.kind != Kind::Policies {
            continue;
        }
        if let Some(line) = too_deep(&source.text) {
            let location = Location {
                file: source.rel.clone(),
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
            continue;
        }
        let parsed = match parse_file(&source.rel, &source.text) {
            Ok(parsed) => parsed,
            Err(found) => {
                problems.extend(found);
                continue;
            }
        };
        let stem = source.rel.strip_suffix(".cedar").unwrap_or(&source.rel);
        let starts = policy_starts(&source.text);
        let lines = Lines::new(&source.text);
        let located = |pos: usize| match starts.get(pos) {
            Some(&offset) => lines.locate(source.rel.clone(), offset),
            None => Location::file(source.rel.clone()),
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
        for (pos, entry) in entries {
            let location = located(pos);
            let id = match entry.annotation() {
                Some("") => {
                    problems.push(Problem::new(location, "the @id annotation is empty"));
                    continue;
                }
                Some(id) => PolicyId::new(id),
                None => PolicyId::new(format!("{stem}.{pos}")),
            };
            if let Some(first) = origin.get(&id) {
                let message = format!(
                    "policy id `{id}` is used twice; it is also the id of the policy at {}",
                    first.location
                );
                problems.push(Problem::new(location, message));
                continue;
            }
            origin.insert(
                id.clone(),
                Origin {
                    source: index,
                    location,
                },
            );
            let added = match entry {
                Entry::Policy(policy) => set.add(policy.new_id(id)),
                Entry::Template(template) => set.add_template(template.new_id(id)),
            };
            added.expect("ids are unique by construction");
        }
    }
    Policies { set, origin }
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
            Entry::Policy(p) => p.annotation("id"),
            Entry::Template(t) => t.annotation("id"),
        }
    }
}

/// Cedar names the policies of a parsed text `policy0`, `policy1`, … in text order.
pub(super) fn position(parsed_id: &PolicyId) -> usize {
    let id: &str = parsed_id.as_ref();
    id.strip_prefix("policy")
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX)
}
