//! Problems shown to a person or a CI system: as text with the source line and a caret
//! under the spot (the way rustc and Cedar's own CLI show them), or as JSON objects that a
//! CI step turns into annotations on the pull request.

use std::fmt::Write as _;

use serde::Serialize;

use crate::policy::{LoadError, Problem, Sources};

/// How bad a problem is: errors refuse the directory, warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The directory cannot be served.
    Error,
    /// Worth a look; the directory still loads.
    Warning,
}

impl Severity {
    fn word(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One problem in machine-readable form (`--format json`); lines and columns are 1-based.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JsonDiagnostic {
    /// `error` or `warning`.
    pub severity: Severity,
    /// File relative to the policy directory.
    pub file: String,
    /// Where it starts, when known.
    pub line: Option<usize>,
    /// Column of the start, when known.
    pub column: Option<usize>,
    /// Where it ends, when Cedar gave a span.
    pub end_line: Option<usize>,
    /// Column just past the end, when Cedar gave a span.
    pub end_column: Option<usize>,
    /// What is wrong.
    pub message: String,
    /// What Cedar says at the spot, if anything.
    pub label: Option<String>,
}

/// `problem` as JSON; `text` is its file's content, for the end of its span.
pub fn to_json(severity: Severity, problem: &Problem, text: Option<&str>) -> JsonDiagnostic {
    let end = problem
        .span
        .as_ref()
        .zip(text)
        .map(|(span, text)| line_and_column(text, span.offset + span.len));
    JsonDiagnostic {
        severity,
        file: problem.location.file.clone(),
        line: problem.location.line,
        column: problem.location.column,
        end_line: end.map(|(line, _)| line),
        end_column: end.map(|(_, column)| column),
        message: problem.message.clone(),
        label: problem.span.as_ref().and_then(|s| s.label.clone()),
    }
}

/// `problem` as text: a headline, the location, and the source line with the spot marked
/// when the file's `text` is at hand and the problem has a line.
pub fn render(severity: Severity, problem: &Problem, text: Option<&str>) -> String {
    let line = problem.location.line;
    let gutter = line.map_or(1, |line| line.to_string().len());
    let pad = " ".repeat(gutter);
    let mut out = format!(
        "{}: {}\n{pad}--> {}\n",
        severity.word(),
        problem.message,
        problem.location
    );
    let (Some(text), Some(line)) = (text, line) else {
        return out;
    };
    let Some(source_line) = text.lines().nth(line.saturating_sub(1)) else {
        return out;
    };
    let column = problem.location.column.unwrap_or(1).max(1);
    // Tabs become one space so the caret lines up whatever the terminal's tab width.
    let shown: String = source_line
        .chars()
        .map(|c| if c == '\t' { ' ' } else { c })
        .collect();
    let line_chars = shown.chars().count();
    let width = match (problem.span.as_deref(), problem.location.column) {
        (Some(span), Some(_)) => {
            let (end_line, end_column) = line_and_column(text, span.offset + span.len);
            if end_line == line {
                end_column.saturating_sub(column)
            } else {
                (line_chars + 1).saturating_sub(column)
            }
        }
        _ => 1,
    }
    .max(1);
    let _ = writeln!(out, "{pad} |");
    let _ = writeln!(out, "{line} | {}", shown.trim_end());
    let mut marker = format!("{pad} | {}{}", " ".repeat(column - 1), "^".repeat(width));
    if let Some(label) = problem.span.as_ref().and_then(|s| s.label.as_deref()) {
        let _ = write!(marker, " {label}");
    }
    let _ = writeln!(out, "{marker}");
    out
}

/// The 1-based line and column (in characters) of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let location = crate::policy::Location::at_offset("", text, offset);
    (location.line.unwrap_or(1), location.column.unwrap_or(1))
}

/// Every problem of a failed load, rendered, errors first; the sources give the snippets.
pub fn render_load_error(sources: Option<&Sources>, error: &LoadError) -> String {
    match error {
        LoadError::Directory { .. } => format!("error: {error}\n"),
        LoadError::Invalid(problems) => problems
            .iter()
            .map(|p| {
                let text = sources.and_then(|s| s.text(&p.location.file));
                render(Severity::Error, p, text)
            })
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Location, ProblemKind, Span};

    fn problem(text: &str, offset: usize, len: usize, label: Option<&str>) -> Problem {
        Problem {
            location: Location::at_offset("p.cedar", text, offset),
            message: "bad".to_owned(),
            span: Some(Box::new(Span {
                offset,
                len,
                label: label.map(str::to_owned),
            })),
            kind: ProblemKind::Other,
        }
    }

    #[test]
    fn the_caret_sits_under_the_span_counting_characters_not_bytes() {
        let text = "permit(principal, action, resource)\nwhen { \"é\"\t== oops };\n";
        let offset = text.find("oops").unwrap();
        let rendered = render(
            Severity::Error,
            &problem(text, offset, 4, Some("here")),
            Some(text),
        );
        let lines: Vec<&str> = rendered.lines().collect();
        assert_eq!(lines[0], "error: bad");
        assert_eq!(lines[1], " --> p.cedar:2:15");
        assert_eq!(lines[3], "2 | when { \"é\" == oops };");
        let caret = lines[4].find('^').unwrap();
        assert_eq!(
            lines[3].chars().position(|c| c == 'o'),
            Some(lines[4][..caret].chars().count())
        );
        assert!(lines[4].ends_with("^^^^ here"), "{rendered}");
    }

    #[test]
    fn a_span_over_several_lines_is_underlined_to_the_end_of_its_first() {
        let text = "when {\n  a &&\n  b\n};\n";
        let offset = text.find("a &&").unwrap();
        let rendered = render(
            Severity::Warning,
            &problem(text, offset, 9, None),
            Some(text),
        );
        assert!(rendered.starts_with("warning: bad\n"), "{rendered}");
        assert!(rendered.contains("2 |   a &&\n  |   ^^^^\n"), "{rendered}");
    }

    #[test]
    fn without_the_text_only_the_headline_and_location_are_shown() {
        let text = "x\n";
        let rendered = render(Severity::Error, &problem(text, 0, 1, None), None);
        assert_eq!(rendered, "error: bad\n --> p.cedar:1:1\n");
    }

    #[test]
    fn json_gives_the_end_of_the_span() {
        let text = "ab\ncd oops\n";
        let offset = text.find("oops").unwrap();
        let json = to_json(Severity::Error, &problem(text, offset, 4, None), Some(text));
        assert_eq!((json.line, json.column), (Some(2), Some(4)));
        assert_eq!((json.end_line, json.end_column), (Some(2), Some(8)));
    }
}
