//! Who may be writing a policy file, and whether that holds a rebuild back: a file
//! written to and not closed holds until the write hold runs out; an open with no write
//! yet holds for [`OPEN_HOLD`], or as long as a write would when it emptied the file.

use std::{
    path::Path,
    time::{Duration, Instant, SystemTime},
};

/// A file that may be being written.
#[derive(Debug, Clone, Copy)]
pub(super) struct Writer {
    /// When it was opened, or last written to.
    pub(super) since: Instant,
    /// The wall-clock time of `since`, to compare with the file's modification time.
    pub(super) at: SystemTime,
    /// Whether it has been written to (else it was only opened, perhaps only to be read).
    pub(super) wrote: bool,
}

impl Writer {
    pub(super) fn opened(since: Instant) -> Self {
        Self {
            since,
            at: SystemTime::now(),
            wrote: false,
        }
    }

    pub(super) fn wrote(since: Instant) -> Self {
        Self {
            since,
            at: SystemTime::now(),
            wrote: true,
        }
    }

    /// Whether this possible writer of `path` still holds rebuilds back at `now`.
    pub(super) fn holds(&self, path: &Path, now: Instant, write_hold: Duration) -> Hold {
        let age = now.saturating_duration_since(self.since);
        if !self.wrote && age < OPEN_HOLD {
            return Hold::Yes;
        }
        let writing = self.wrote || emptied_by_open(path, self);
        match (writing, age < write_hold) {
            (true, true) => Hold::Yes,
            (true, false) => Hold::Abandoned,
            // Most likely a reader (its close sends no event); kept until the write hold
            // in case its truncation shows only now.
            (false, true) => Hold::No,
            (false, false) => Hold::Forget,
        }
    }
}

/// Whether a possible writer holds rebuilds back.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Hold {
    Yes,
    /// Not now; watched a while longer.
    No,
    /// No longer, and no longer watched.
    Forget,
    /// It did, but has been open without a write for longer than the write hold.
    Abandoned,
}

/// How long an open by someone else holds rebuilds back when no write follows: a
/// truncating open shows the file empty a moment before its event, and a mere reader
/// never sends another event, so the hold has to end by itself. An open that emptied
/// the file holds for longer: see [`emptied_by_open`].
pub(super) const OPEN_HOLD: Duration = Duration::from_millis(100);

/// Whether an unwritten open of `path` (by `writer`) should still hold rebuilds back after
/// [`OPEN_HOLD`]: the file is empty and was emptied around the open or since. That is a
/// truncating open (`O_TRUNC`, as editors and `>` use) whose writer has not written yet:
/// since Linux 6.5 the open's event comes before the truncation, and the truncation's
/// own event only after the kernel's truncate returns, which a loaded machine can delay
/// well past `OPEN_HOLD`; an empty file is valid Cedar, so it would be served. A mere
/// reader of an empty file leaves its modification time alone, so it does not hold.
pub(super) fn emptied_by_open(path: &Path, writer: &Writer) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let emptied_at = meta.modified().ok();
    meta.len() == 0 && emptied_at.is_some_and(|m| m + TRUNCATE_SLACK >= writer.at)
}

/// How much earlier than the open's event reached the watcher the truncation's
/// modification time may be: the event arrives some time after the open (the watcher's
/// thread may wait for a CPU), and file times come from a clock that lags by up to a
/// scheduler tick. It is also the window in which a mere reader right after someone
/// emptied the file is mistaken for a writer (and holds rebuilds until the write hold
/// runs out or the file is written and closed): rare, slow, and never wrong.
pub(super) const TRUNCATE_SLACK: Duration = Duration::from_millis(250);

#[cfg(test)]
mod tests {
    use super::*;

    const WRITE_HOLD: Duration = Duration::from_secs(10);

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
        file
    }

    #[test]
    fn an_open_without_a_write_holds_briefly_unless_it_emptied_the_file() {
        let now = Instant::now();
        let later = now + OPEN_HOLD * 2;
        let open = Writer::opened(now);
        let full = file("permit(principal, action, resource);\n");
        let empty = file("");
        // Within OPEN_HOLD any open holds.
        assert_eq!(open.holds(full.path(), now, WRITE_HOLD), Hold::Yes);
        // After it, a reader of a file with content does not (it is watched until the
        // write hold, in case its truncation shows late, then forgotten)...
        assert_eq!(open.holds(full.path(), later, WRITE_HOLD), Hold::No);
        assert_eq!(
            open.holds(full.path(), now + WRITE_HOLD, WRITE_HOLD),
            Hold::Forget
        );
        // ...but an open that emptied the file (a truncating writer whose truncation is
        // still to be reported) holds until the write hold.
        assert_eq!(open.holds(empty.path(), later, WRITE_HOLD), Hold::Yes);
        assert_eq!(
            open.holds(empty.path(), now + WRITE_HOLD, WRITE_HOLD),
            Hold::Abandoned
        );
        // A file emptied long before the open was only read.
        let old = SystemTime::now() - Duration::from_secs(3600);
        empty.as_file().set_modified(old).unwrap();
        assert_eq!(open.holds(empty.path(), later, WRITE_HOLD), Hold::No);
        // A file that is gone holds nothing (its removal is a change of its own).
        let gone = empty.path().to_owned();
        drop(empty);
        assert_eq!(open.holds(&gone, later, WRITE_HOLD), Hold::No);
    }

    #[test]
    fn a_write_holds_until_the_write_hold() {
        let now = Instant::now();
        let full = file("permit(principal, action, resource);\n");
        let wrote = Writer::wrote(now);
        assert_eq!(
            wrote.holds(full.path(), now + OPEN_HOLD * 2, WRITE_HOLD),
            Hold::Yes
        );
        assert_eq!(
            wrote.holds(full.path(), now + WRITE_HOLD, WRITE_HOLD),
            Hold::Abandoned
        );
    }
}
