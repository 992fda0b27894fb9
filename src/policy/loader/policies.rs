//! Parsing the `*.cedar` files: nesting checked before Cedar's parser recurses, each
//! policy given its id (its `@id`, else file and position) and its location.

use std::{str::FromStr, sync::Arc};

use cedar_policy::{PolicyId, PolicySet};

use super::cache;
use crate::policy::{
    Lines, Location, Problem,
    error::diagnostic_problem,
    index::{IndexEntry, POSITION_BITS},
};

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
                    // Cedar's lexer ends a comment at a carriage return as at a line
                    // feed (`//[^\n\r]*`); ending it anywhere else would put this
                    // scanner out of step with Cedar over what is code.
                    for (_, c) in chars.by_ref() {
                        match c {
                            '\n' => {
                                line += 1;
                                break;
                            }
                            '\r' => break,
                            _ => {}
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
    /// This parse's own key, never given to another: the high bits of its policies'
    /// slots in the index (see [`crate::policy::index::Slot`]).
    pub(super) key: u64,
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
    pub(super) index: Option<Arc<IndexEntry>>,
    /// Where in the file the text it was parsed from starts: Cedar's source spans in it
    /// count from there (0 unless a large file was parsed in pieces).
    pub(super) offset: usize,
}

/// A static policy or a template. Nearly every item is a static policy, kept inline; a
/// template (552 bytes) is boxed so that it does not make every item larger.
#[derive(Debug, Clone)]
pub(super) enum Item {
    /// Cedar's parsed policy alone: what `cedar_policy::Policy` adds is a copy of its
    /// text or syntax tree for printing it, about 320 bytes inline, which nothing here
    /// prints. [`Item::policy`] gives one to Cedar (no copy of the body).
    Policy(cedar_policy_core::ast::Policy),
    Template(Box<cedar_policy::Template>),
}

impl Item {
    /// The static policy, as Cedar's API takes it (its parsed body shared, not copied).
    pub(super) fn policy(&self) -> Option<cedar_policy::Policy> {
        match self {
            Item::Policy(p) => Some(cedar_policy::Policy::from(p.clone())),
            Item::Template(_) => None,
        }
    }

    /// Adds a copy to `set` (the policy's parsed body is shared, not copied), or says
    /// in Cedar's words why it cannot (its id is taken).
    pub(super) fn add_to(&self, set: &mut PolicySet) -> Result<(), String> {
        match self {
            Item::Policy(p) => set.add(cedar_policy::Policy::from(p.clone())),
            Item::Template(t) => set.add_template(t.as_ref().clone()),
        }
        .map_err(|e| e.to_string())
    }
}

/// `policy` under `id`, as the snapshot keeps it: Cedar's parsed body shared (scope,
/// conditions and their source locations, so evaluation and its errors are the same),
/// without the two things only its text form needs. An `@id` that is its only annotation
/// is dropped (the id carries it; Cedar keeps each policy's annotations in a map of its
/// own, about 0.9 KiB), and so is the copy of its source text Cedar keeps for printing
/// it (the file's text is kept whole). The benchmark `memory` measures what this saves.
fn kept(policy: &cedar_policy::Policy, id: &PolicyId) -> cedar_policy_core::ast::Policy {
    use cedar_policy_core::ast;
    /// One empty annotation map for every policy that had only an `@id`.
    static NO_ANNOTATIONS: std::sync::LazyLock<Arc<ast::Annotations>> =
        std::sync::LazyLock::new(|| Arc::new(ast::Annotations::new()));
    let parsed: &ast::Policy = policy.as_ref();
    let body = parsed.template();
    let only_id = body.annotations().all(|(key, _)| key.as_ref() == "id");
    let renamed = || AsRef::<ast::Policy>::as_ref(&policy.new_id(id.clone())).clone();
    if !parsed.is_static() || !only_id {
        return renamed();
    }
    let template = ast::Template::new_shared(
        id.clone().into(),
        body.loc().cloned(),
        NO_ANNOTATIONS.clone(),
        body.effect(),
        body.principal_constraint().clone(),
        body.action_constraint().clone(),
        body.resource_constraint().clone(),
        body.non_scope_constraints_arc().cloned(),
    );
    // Cannot fail: the body is the static policy's own, without slots.
    ast::Template::try_as_policy(Arc::new(template)).unwrap_or_else(|_| renamed())
}

/// Most policies and templates one file may hold: a policy's position in its file is the
/// low [`POSITION_BITS`] of its slot.
const MAX_FILE_POLICIES: usize = 1 << POSITION_BITS;

/// A key for a new parse: one counter for the whole process, so that no two parses
/// (of any directory) ever share one.
fn next_key() -> u64 {
    // From 1: key 0 is the one file of a set indexed by `PolicyIndex::new`.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
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
            key: next_key(),
            rel,
            text,
            problems,
            policies: Vec::new(),
        };
    }
    let starts = policy_starts(&text);
    let stem = rel.strip_suffix(".cedar").unwrap_or(&rel);
    let lines = Lines::new(&text);
    let located = |pos: usize| match starts.get(pos) {
        Some(&offset) => lines.locate(rel.clone(), offset),
        None => Location::file(rel.clone()),
    };
    // Ids, locations and index entries, piece by piece as each is parsed (on several
    // threads), so that Cedar's whole parse of a piece is let go before most others are
    // parsed: the load's peak stays near what is kept.
    let identified = parse_pieces(&rel, &text, &starts, &|piece: Piece| {
        identify(&piece, stem, &located)
    });
    let pieces = match identified {
        Ok(pieces) => pieces,
        Err(found) => {
            return ParsedFile {
                key: next_key(),
                rel,
                text,
                problems: found,
                policies: Vec::new(),
            };
        }
    };
    let mut policies = Vec::with_capacity(starts.len());
    for (piece_policies, piece_problems) in pieces {
        policies.extend(piece_policies);
        problems.extend(piece_problems);
    }
    if policies.len() > MAX_FILE_POLICIES {
        problems.push(Problem::new(
            Location::file(rel.clone()),
            format!("holds more than {MAX_FILE_POLICIES} policies; split it into several files"),
        ));
        policies.clear();
    }
    ParsedFile {
        key: next_key(),
        rel,
        text,
        problems,
        policies,
    }
}

/// The policies and templates of one piece in text order, each given its id (its `@id`,
/// else `stem.position`), its location and (a static policy) its index entry; and the
/// empty `@id`s among them.
fn identify(
    piece: &Piece,
    stem: &str,
    located: &(dyn Fn(usize) -> Location + Sync),
) -> (Vec<ParsedPolicy>, Vec<Problem>) {
    let at = |id: &PolicyId| piece.first + position(id);
    // A parsed set iterates in no particular order; ids and messages follow the text.
    let mut entries: Vec<(usize, Entry<'_>)> = piece
        .set
        .policies()
        .map(|p| (at(p.id()), Entry::Policy(p)))
        .chain(
            piece
                .set
                .templates()
                .map(|t| (at(t.id()), Entry::Template(t))),
        )
        .collect();
    entries.sort_by_key(|(pos, _)| *pos);
    let mut policies = Vec::with_capacity(entries.len());
    let mut problems = Vec::new();
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
            Entry::Policy(policy) => Item::Policy(kept(policy, &id)),
            Entry::Template(template) => Item::Template(Box::new(template.new_id(id.clone()))),
        };
        let index = item.policy().map(|p| Arc::new(IndexEntry::new(&p)));
        policies.push(ParsedPolicy {
            id,
            item,
            location,
            named,
            index,
            offset: piece.offset,
        });
    }
    (policies, problems)
}

/// Policies in a piece of a large file, parsed and validated on its own: Cedar's parser
/// and validator slow down with the size of what they are given (one file of 100,000
/// policies in pieces of 10,000 loaded 1.3x slower than in 1000 files; in pieces of
/// 500, as fast), and many pieces keep every thread busy.
pub(super) const PIECE_POLICIES: usize = 500;

/// Part of a policy file parsed on its own.
struct Piece {
    /// Position in the file of its first policy.
    first: usize,
    /// Byte offset in the file where its text starts.
    offset: usize,
    set: PolicySet,
}

/// A policy file's text parsed; one with many policies in pieces of whole policies
/// (split where [`policy_starts`] says a policy starts a line) on several threads, so that one
/// generated file of 100,000 policies loads as fast as the same policies in many files.
/// Should a piece not parse, or not hold the policies it should, the whole text is
/// parsed as one: syntax problems are then located and worded as for any file.
/// Each piece is handed to `each` as soon as it parsed, and what it makes is returned in
/// text order.
fn parse_pieces<R: Send>(
    rel: &str,
    text: &str,
    starts: &[usize],
    each: &(dyn Fn(Piece) -> R + Sync),
) -> Result<Vec<R>, Vec<Problem>> {
    let whole = || {
        parse_file(rel, text).map(|set| {
            vec![each(Piece {
                first: 0,
                offset: 0,
                set,
            })]
        })
    };
    let per = PIECE_POLICIES;
    // A carriage return that ends no line ends a `//` comment for Cedar and for the
    // scanner alike, but editors disagree on whether it ends a line: such a file is
    // parsed whole, so that no split can ever rest on it.
    let lone_cr = text
        .match_indices('\r')
        .any(|(at, _)| text.as_bytes().get(at + 1) != Some(&b'\n'));
    if starts.len() < 2 * per || lone_cr {
        return whole();
    }
    // Pieces start only at policies that begin a line (after nothing but spaces and
    // tabs), where generated files put them: no comment or string of an earlier line
    // can reach there unseen. The first piece also takes what precedes its first policy.
    let begins_line = |offset: usize| {
        let before = text[..offset].trim_end_matches([' ', '\t']);
        before.is_empty() || before.ends_with('\n')
    };
    let mut firsts = vec![0];
    let mut next = per;
    while next < starts.len() {
        let Some(first) = (next..starts.len()).find(|&i| begins_line(starts[i])) else {
            break;
        };
        firsts.push(first);
        next = first + per;
    }
    if firsts.len() < 2 {
        return whole();
    }
    let ranges: Vec<(usize, usize, usize, usize)> = firsts
        .iter()
        .enumerate()
        .map(|(i, &first)| {
            let from = if i == 0 { 0 } else { starts[first] };
            let end = firsts.get(i + 1).copied().unwrap_or(starts.len());
            let to = starts.get(end).copied().unwrap_or(text.len());
            (first, end - first, from, to)
        })
        .collect();
    // Once a piece fails, the whole text is parsed again: the others are not worth
    // parsing (nor keeping what they make until then).
    let failed = std::sync::atomic::AtomicBool::new(false);
    let parsed = cache::in_parallel(ranges, |(first, expected, from, to)| {
        if failed.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let piece = PolicySet::from_str(&text[from..to])
            .ok()
            .filter(|set| set.num_of_policies() + set.num_of_templates() == expected)
            .map(|set| {
                each(Piece {
                    first,
                    offset: from,
                    set,
                })
            });
        if piece.is_none() {
            failed.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        piece
    });
    match parsed.into_iter().collect::<Option<Vec<R>>>() {
        Some(pieces) => Ok(pieces),
        None => whole(),
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
