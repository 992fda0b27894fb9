//! `fmt`: every policy file the loader reads, in Cedar's own format
//! (`cedar-policy-formatter`, 80 columns, two-space indent). The formatter checks that the
//! formatted text parses to the same policies before it gives it back, and a file is
//! replaced by a rename, so a server watching the directory never reads half of it.

use std::{fs, io::Write as _, path::Path};

use cedar_policy_formatter::{Config, policies_str_to_pretty};

use crate::policy::{
    LoadError, LoadOptions, Location, MAX_POLICY_NESTING, Problem, Sources, read_dir,
};

/// What `fmt` found for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileStatus {
    /// Already formatted.
    Formatted,
    /// Not formatted: rewritten, or (with `--check`) only reported.
    Changed,
    /// Cannot be formatted (it does not parse, or cannot be read); the problem says
    /// where.
    Failed(Problem),
    /// Formatted, but the result could not be written back (an I/O error).
    Unwritable(Problem),
}

/// Formats each policy file under `dir` (or, when `check`, only says which would change),
/// returning every file's status in directory order.
pub fn format_dir(dir: &Path, check: bool) -> Result<Vec<(String, FileStatus)>, LoadError> {
    let sources: Sources = read_dir(dir, LoadOptions::default().max_file_bytes)?;
    let mut statuses: Vec<(String, FileStatus)> = sources
        .problems()
        .iter()
        .filter(|p| p.location.file.ends_with(".cedar"))
        .map(|p| (p.location.file.clone(), FileStatus::Failed(p.clone())))
        .collect();
    for (rel, text) in sources.policy_files() {
        let status = match format_text(rel, text) {
            Err(problem) => FileStatus::Failed(problem),
            Ok(formatted) if formatted == text => FileStatus::Formatted,
            Ok(formatted) => match check {
                true => FileStatus::Changed,
                false => match replace(&dir.join(rel), &formatted) {
                    Ok(()) => FileStatus::Changed,
                    Err(e) => FileStatus::Unwritable(Problem::new(
                        Location::file(rel),
                        format!("cannot write the formatted file: {e}"),
                    )),
                },
            },
        };
        statuses.push((rel.to_owned(), status));
    }
    statuses.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(statuses)
}

/// `text`, the content of `rel`, formatted; a file that does not parse is a problem
/// located the way the loader locates it.
pub fn format_text(rel: &str, text: &str) -> Result<String, Problem> {
    if let Some(line) = crate::policy::too_deep(text) {
        let location = Location {
            file: rel.to_owned(),
            line: Some(line),
            column: None,
        };
        return Err(Problem::new(
            location,
            format!("brackets nest deeper than {MAX_POLICY_NESTING}; not formatted"),
        ));
    }
    let config = Config {
        line_width: 80,
        indent_width: 2,
    };
    policies_str_to_pretty(text, &config).map_err(|report| {
        // The loader's parse gives the same error with its file, line and column.
        match crate::policy::parse_problems(rel, text).into_iter().next() {
            Some(problem) => problem,
            None => Problem::new(
                Location::file(rel),
                format!(
                    "cannot format: {}",
                    crate::policy::describe(report.as_ref())
                ),
            ),
        }
    })
}

/// Replaces the file at `path` (following links, as a git checkout may hold them) with
/// `text` by writing a hidden sibling and renaming it over, keeping its permissions.
fn replace(path: &Path, text: &str) -> std::io::Result<()> {
    let target = fs::canonicalize(path)?;
    let folder = target.parent().unwrap_or(Path::new("."));
    let permissions = fs::metadata(&target)?.permissions();
    let mut temp = tempfile::Builder::new()
        .prefix(".cedar-pdp-fmt-")
        .tempfile_in(folder)?;
    temp.write_all(text.as_bytes())?;
    temp.as_file().sync_all()?;
    fs::set_permissions(temp.path(), permissions)?;
    temp.persist(&target).map_err(|e| e.error)?;
    Ok(())
}
