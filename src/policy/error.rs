//! Errors of loading a policy directory: a [`LoadError`] carries every [`Problem`] found,
//! each pointing at a file, and where known a line and column; and [`describe`], which
//! turns any of Cedar's diagnostics into one readable line (the engine and the API use
//! it for request errors too).

use std::{fmt, path::PathBuf};

use miette::Diagnostic;

/// Where a problem is: a file relative to the policy directory, and a 1-based position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// File path relative to the policy directory, with `/` separators.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
}

impl Location {
    /// A whole file, no position.
    pub fn file(file: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            line: None,
            column: None,
        }
    }

    /// The position of byte `offset` in `text`, the content of `file` (for one position;
    /// many in one text take a [`Lines`]).
    pub fn at_offset(file: impl Into<String>, text: &str, offset: usize) -> Self {
        Lines::new(text).locate(file, offset)
    }
}

/// Where the lines of a text start, found once: locating many positions in one text (every
/// policy of a 100,000-policy file) costs a binary search each, not a scan from the start.
#[derive(Debug)]
pub struct Lines<'t> {
    text: &'t str,
    /// Byte offsets of the first byte of each line.
    starts: Vec<usize>,
}

impl<'t> Lines<'t> {
    /// The line starts of `text`.
    pub fn new(text: &'t str) -> Self {
        let starts = std::iter::once(0)
            .chain(
                text.bytes()
                    .enumerate()
                    .filter(|(_, b)| *b == b'\n')
                    .map(|(i, _)| i + 1),
            )
            .collect();
        Self { text, starts }
    }

    /// The 1-based line and column (in characters) of byte `offset`, in `file`.
    pub fn locate(&self, file: impl Into<String>, offset: usize) -> Location {
        let offset = floor_char_boundary(self.text, offset);
        // The last line starting at or before `offset` (line 1 starts at 0).
        let line = self.starts.partition_point(|&start| start <= offset);
        let line_start = self.starts[line - 1];
        let column = self.text[line_start..offset].chars().count() + 1;
        Location {
            file: file.into(),
            line: Some(line),
            column: Some(column),
        }
    }
}

fn floor_char_boundary(text: &str, offset: usize) -> usize {
    let mut i = offset.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        Ok(())
    }
}

/// The stretch of a file a problem points at, for showing it under the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// Byte offset of its start in the file.
    pub offset: usize,
    /// Length in bytes (0: a point).
    pub len: usize,
    /// What to say at the spot, when Cedar says something there.
    pub label: Option<String>,
}

/// What kind of thing is wrong: the `reason` a failed reload is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum ProblemKind {
    /// A file or folder could not be read (or sits where it is not read).
    Io,
    /// A file is larger than `max_policy_file_bytes`.
    TooLarge,
    /// A policy file does not parse (or repeats or empties an `@id`).
    Parse,
    /// The schema does not parse or is not valid.
    Schema,
    /// A policy fails validation against the schema.
    Validate,
    /// `entities.json` is not valid (its JSON, the schema, or a limit).
    Entities,
    /// The directory did not hold still long enough to be read.
    Unsettled,
    /// Anything else.
    #[default]
    Other,
}

impl ProblemKind {
    /// Every kind, in label order.
    pub const ALL: [ProblemKind; 8] = [
        ProblemKind::Io,
        ProblemKind::TooLarge,
        ProblemKind::Parse,
        ProblemKind::Schema,
        ProblemKind::Validate,
        ProblemKind::Entities,
        ProblemKind::Unsettled,
        ProblemKind::Other,
    ];

    /// The `reason` label of `cedar_pdp_policy_reload_failures_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Io => "io",
            Self::TooLarge => "too_large",
            Self::Parse => "parse",
            Self::Schema => "schema",
            Self::Validate => "validate",
            Self::Entities => "entities",
            Self::Unsettled => "unsettled",
            Self::Other => "other",
        }
    }
}

/// One thing wrong with a policy directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where it is.
    pub location: Location,
    /// What is wrong, as a sentence.
    pub message: String,
    /// The exact stretch of the file, when known (for a source snippet); boxed, as most
    /// problems have none and a `Problem` travels in `Result`s.
    pub span: Option<Box<Span>>,
    /// What kind of problem it is.
    pub kind: ProblemKind,
}

impl Problem {
    /// A problem at `location` with no span; what the message quotes of the file is cut
    /// short (see [`excerpt`]).
    pub fn new(location: Location, message: impl Into<String>) -> Self {
        Self {
            location,
            message: excerpt(&message.into()),
            span: None,
            kind: ProblemKind::Other,
        }
    }

    /// The same problem, of kind `kind`.
    pub fn of_kind(mut self, kind: ProblemKind) -> Self {
        self.kind = kind;
        self
    }
}

/// Longest quotation of a file kept in a problem's message, in characters.
const QUOTE_CHARS: usize = 40;
/// `text` onto `out`, its first characters and `…` when longer than [`QUOTE_CHARS`].
fn push_short(out: &mut String, text: &str) {
    if text.chars().count() > QUOTE_CHARS {
        out.extend(text.chars().take(QUOTE_CHARS));
        out.push('…');
    } else {
        out.push_str(text);
    }
}

/// Longest problem message, in characters.
const MESSAGE_CHARS: usize = 600;

/// `message` with each quotation (between backticks or double quotes) and each word longer
/// than [`QUOTE_CHARS`] cut short, and the whole at most [`MESSAGE_CHARS`]: a problem
/// names its position, and quotes no more of a file than it takes to find the spot, since
/// its message is logged and served (`last_reload_error`) beyond the people who can read
/// the directory.
pub fn excerpt(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MESSAGE_CHARS + 8));
    let mut rest = message;
    while let Some(open) = rest.find(['`', '"']) {
        let quote = rest.as_bytes()[open];
        out.push_str(&rest[..=open]);
        rest = &rest[open + 1..];
        // The closing quote is the first one not escaped by a backslash; with none, the
        // rest of the message is the quotation.
        let mut escaped = false;
        let close = rest.bytes().position(|b| {
            let closes = b == quote && !escaped;
            escaped = b == b'\\' && !escaped;
            closes
        });
        let Some(close) = close else {
            push_short(&mut out, rest);
            rest = "";
            break;
        };
        push_short(&mut out, &rest[..close]);
        out.push(char::from(quote));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    // Unquoted runs too (`invalid variable: xxxx…`); a quotation already cut is one word
    // with its quotes and ellipsis, which do not count.
    let bare = |word: &str| {
        word.trim_matches(|c: char| "`\"'…,.;:()".contains(c))
            .chars()
            .count()
    };
    if out.split_whitespace().any(|word| bare(word) > QUOTE_CHARS) {
        let mut words = String::with_capacity(out.len());
        for (i, word) in out.split(' ').enumerate() {
            if i > 0 {
                words.push(' ');
            }
            if bare(word) > QUOTE_CHARS {
                push_short(&mut words, word);
            } else {
                words.push_str(word);
            }
        }
        out = words;
    }
    if out.chars().count() > MESSAGE_CHARS {
        out = out.chars().take(MESSAGE_CHARS).collect();
        out.push('…');
    }
    out
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// A policy directory that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The directory itself cannot be read (missing, not a directory, no permission).
    #[error("{}: cannot read policy directory: {source}", path.display())]
    Directory {
        /// The policy directory as given.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Files were read but are wrong; every problem found is listed.
    #[error("{}", ProblemList(.0))]
    Invalid(Vec<Problem>),
}

impl LoadError {
    /// The kinds of its problems, each once, in order (an unreadable directory: `Io`).
    pub fn kinds(&self) -> Vec<ProblemKind> {
        let mut kinds = match self {
            Self::Directory { .. } => vec![ProblemKind::Io],
            Self::Invalid(problems) => problems.iter().map(|p| p.kind).collect(),
        };
        kinds.sort_unstable();
        kinds.dedup();
        kinds
    }
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// A Cedar diagnostic as a problem located at its first label in `text`.
pub(crate) fn diagnostic_problem(diagnostic: &dyn Diagnostic, file: &str, text: &str) -> Problem {
    diagnostic_problem_at(diagnostic, file, text, 0)
}

/// [`diagnostic_problem`] for a diagnostic about a part of `text` parsed on its own,
/// starting at byte `offset` (its spans count from there).
pub(crate) fn diagnostic_problem_at(
    diagnostic: &dyn Diagnostic,
    file: &str,
    text: &str,
    offset: usize,
) -> Problem {
    let label = diagnostic.labels().and_then(|mut labels| labels.next());
    Problem {
        location: match &label {
            Some(label) => Location::at_offset(file, text, offset + label.offset()),
            None => Location::file(file),
        },
        kind: ProblemKind::Other,
        message: excerpt(&describe(diagnostic)),
        span: label.map(|label| {
            Box::new(Span {
                offset: offset + label.offset(),
                len: label.len(),
                label: label.label().map(str::to_owned),
            })
        }),
    }
}

/// A diagnostic's message, then each underlying cause not already said, then its help.
pub fn describe(diagnostic: &dyn Diagnostic) -> String {
    let mut message = diagnostic.to_string();
    let mut source = diagnostic.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            message = format!("{message}: {cause_text}");
        }
        source = cause.source();
    }
    if let Some(help) = diagnostic.help() {
        message = format!("{message} (help: {help})");
    }
    message
}

#[cfg(test)]
mod tests {
    use super::excerpt;

    #[test]
    fn an_excerpt_cuts_quotations_and_words_to_forty_characters() {
        let forty = "a".repeat(40);
        let long = "b".repeat(41);
        assert_eq!(
            excerpt(&format!("unexpected token `{forty}`")),
            format!("unexpected token `{forty}`")
        );
        assert_eq!(
            excerpt(&format!("unexpected token `{long}` here")),
            format!("unexpected token `{}…` here", &long[..40])
        );
        assert_eq!(
            excerpt(&format!("invalid variable: {long}")),
            format!("invalid variable: {}…", &long[..40])
        );
        // Short words within a long quotation are cut with it.
        let words = "alpha bravo charlie delta echo foxtrot golf hotel india";
        assert_eq!(
            excerpt(&format!("entity \"{words}\" is bad")),
            format!("entity \"{}…\" is bad", &words[..40])
        );
    }

    #[test]
    fn an_escaped_or_unclosed_quote_does_not_end_the_excerpt() {
        let words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet";
        // `\"` inside a quotation does not close it.
        let shown = excerpt(&format!(r#"entity User::"q\" {words}" does not fit"#));
        assert!(!shown.contains("juliet"), "{shown}");
        assert!(shown.ends_with("\" does not fit"), "{shown}");
        // A quotation that never closes runs to the end, and is cut.
        let shown = excerpt(&format!("unexpected `{words}"));
        assert!(!shown.contains("juliet"), "{shown}");
        assert!(shown.chars().count() < 60, "{shown}");
    }
}

#[cfg(test)]
mod lines_tests {
    use super::*;

    #[test]
    fn lines_locate_as_a_scan_from_the_start_would() {
        let text = "permit(principal, action, resource);\n\n  forbid(é, ü);\r\nlast";
        let lines = Lines::new(text);
        for offset in 0..=text.len() + 3 {
            let before = &text[..floor_char_boundary(text, offset)];
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = before[line_start..].chars().count() + 1;
            let found = lines.locate("p.cedar", offset);
            assert_eq!(
                (found.line, found.column),
                (Some(line), Some(column)),
                "{offset}"
            );
        }
    }
}

#[cfg(test)]
mod kind_tests {
    use super::ProblemKind;
    use crate::telemetry::metrics::RELOAD_FAILURE_REASONS;

    #[test]
    fn every_problem_kind_is_a_reason_the_metrics_export() {
        let labels: Vec<&str> = ProblemKind::ALL.iter().map(|k| k.label()).collect();
        assert_eq!(labels, RELOAD_FAILURE_REASONS);
    }
}
