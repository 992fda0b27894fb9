//! One rebuild: read the directory, make sure it held still while it was read (no
//! writer, a fence, a second read with the same content, nothing modified just now), build
//! a snapshot and serve it, or keep the last good one and say why.

use std::{
    sync::mpsc,
    time::{Duration, Instant, SystemTime},
};

use notify::EventKind;

use super::{
    Rebuilt, Signal,
    run::{Attempt, Run, Wait, jitter},
    writers::OPEN_HOLD,
};
use crate::policy::{LoadError, Loaded, ReloadOutcome, Sources, read_dir, relative};

impl Run {
    /// Reads the directory, checks it held still, builds a snapshot and serves it.
    /// `overdue`: the change has waited [`WatchOptions::max_hold`], so mere opens by
    /// others no longer hold it back.
    pub(super) fn attempt(&mut self, forced: bool, overdue: bool) -> Attempt {
        if let Some(files) = &mut self.files
            && let Err(err) = files.rewatch()
        {
            tracing::warn!(dir = %self.dir.display(), error = %err, "cannot watch the policy directory; will try again on the next change");
        }
        // Take in every change made so far, so "open for writing" is up to date.
        if self.fence().is_none() {
            return Attempt::Stop;
        }
        if !forced && self.writers_open(overdue) {
            return Attempt::Held;
        }
        let started = Instant::now();
        // Before this watcher's first open: a writer whose open the kernel merged into
        // one of ours (see below) modifies the file after this, however late it runs.
        let reading_from = SystemTime::now();
        let opens_before = self.opens;
        self.opened_while_reading.clear();
        self.reading = true;
        let read = read_dir(self.store.dir(), self.store.options().max_file_bytes);
        let fresh = read
            .as_ref()
            .is_ok_and(|read| modified_just_now(read.newest_modification(), reading_from));
        // A write can make its data visible before its event is queued (a truncating
        // open that blocks, say), so read a second time a little later and compare;
        // unless this read is thrown away anyway for holding a file modified just now.
        let (settled, again) = if fresh {
            (Some(false), None)
        } else {
            let settle_until = Instant::now() + self.options.settle;
            // Hashed while the directory is given time to show a change (events that
            // come meanwhile wait in the queue): the wait, not the read, pays for it.
            if let Ok(read) = &read {
                read.version();
            }
            let settled = self.changed_until(settle_until);
            let again = (settled == Some(false))
                .then(|| read_dir(self.store.dir(), self.store.options().max_file_bytes));
            (settled, again)
        };
        // Fence even when already changed, so this watcher's own opens are all taken in
        // while they are known to be its own.
        let fenced = self.fence();
        self.reading = false;
        // Every open of a policy file while reading that was not one of ours may have
        // been a writer's, whose truncation the reads saw before its event: it must
        // outlive this attempt whatever it comes to, or the next attempt reads the file
        // emptied by a truncation whose event is still to come, with nothing to say so.
        let ours = [Some(&read), again.as_ref()]
            .into_iter()
            .flatten()
            .map(|r| r.as_ref().map_or(0, |r| r.opened()))
            .sum::<usize>();
        let others_opened = self.opens - opens_before > ours;
        match (settled, fenced) {
            (None, _) | (_, None) => return Attempt::Stop,
            (Some(true), _) | (_, Some(true)) => return self.changed_holding(others_opened),
            (Some(false), Some(false)) if fresh => return self.changed_holding(others_opened),
            (Some(false), Some(false)) => {}
        }
        let Some(again) = again else {
            return self.changed_holding(others_opened);
        };
        // Past `max_hold` (or on SIGHUP), opens by others no longer make a read count as
        // changed, or a reader in a tight loop would put the reload off for good; the one
        // thing such an open could hide then, a truncation whose event is still to come,
        // shows as an empty file, so a file opened meanwhile that reads empty still does.
        let emptied = |read: &Result<Sources, LoadError>| {
            read.as_ref().is_ok_and(|read| {
                self.opened_while_reading.iter().any(|(path, _)| {
                    read.text(&relative(&self.dir, path))
                        .is_some_and(str::is_empty)
                })
            })
        };
        if others_opened && (!(overdue || forced) || emptied(&read) || emptied(&again)) {
            return self.changed_holding(true);
        }
        let read = match (read, again) {
            (Ok(read), Ok(again)) if again.same_content(&read) => Ok(read),
            (Ok(_), _) => return self.changed_holding(others_opened),
            (Err(err), _) => Err(err),
        };
        // A span for traces (debug level: nothing unless they are exported).
        let span = tracing::debug_span!(
            "reload",
            outcome = tracing::field::Empty,
            policy_version = tracing::field::Empty,
            policies = tracing::field::Empty,
        );
        let _reloading = span.enter();
        // Told first: whoever sees the new snapshot or error also sees it counted.
        let built = match read {
            Ok(read) if read.complete() && read.version() == self.store.current().version() => {
                // Same content (a touch, an editor's swap file): nothing to parse.
                (self.on_rebuild)(Rebuilt::Unchanged, started.elapsed());
                span.record("outcome", "unchanged");
                self.store.unchanged();
                tracing::debug!("policy directory read again; content unchanged");
                return Attempt::Done;
            }
            Ok(read) => self.store.build_from(&read),
            Err(err) => Err(err),
        };
        match built {
            Ok(Loaded { snapshot, warnings }) => {
                for warning in &warnings {
                    tracing::warn!(location = %warning.location, "{}", warning.message);
                }
                let policy_count = snapshot.policy_count();
                let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
                span.record("outcome", "served");
                span.record("policy_version", snapshot.version());
                span.record("policies", policy_count);
                (self.on_rebuild)(Rebuilt::Swapping(&snapshot), started.elapsed());
                let (outcome, retired) = self.store.swap_in(snapshot);
                if let ReloadOutcome::Swapped {
                    old_version,
                    new_version,
                } = outcome
                {
                    tracing::info!(
                        dir = %self.store.dir().display(),
                        old_version,
                        new_version,
                        policy_count,
                        elapsed_ms,
                        "policies reloaded"
                    );
                }
                // Freed only once the new version is said to serve.
                drop(retired);
                // Cedar's whole policy set, which few calls need, is built now that the
                // new version serves rather than before (see `Snapshot::prepare`).
                self.store.current().prepare();
            }
            Err(err) => {
                span.record("outcome", "failed");
                (self.on_rebuild)(Rebuilt::Failed(&err), started.elapsed());
                self.store.fail(&err);
                log_failure(&err, &self.store);
            }
        }
        Attempt::Done
    }

    pub(super) fn changed(&self) -> Attempt {
        tracing::debug!("the policy directory changed while it was read; trying again");
        Attempt::Changed
    }

    /// [`Self::changed`], first holding each file opened while reading and not written
    /// and closed since as a possible writer when `others_opened`: which open was not
    /// ours is unknown. A little longer at random (two servers reading one directory see
    /// each other's opens, and must not keep meeting).
    pub(super) fn changed_holding(&mut self, others_opened: bool) -> Attempt {
        let opened = std::mem::take(&mut self.opened_while_reading);
        if others_opened {
            let delay = jitter(OPEN_HOLD);
            for (path, mut opened) in opened {
                opened.since += delay;
                let writer = self.writing.entry(path).or_insert(opened);
                if !writer.wrote {
                    *writer = opened;
                }
            }
        }
        self.changed()
    }

    /// Takes in every event queued before now: `Some(true)` if one was a change, `None`
    /// if the watcher is stopping. With a fence this is exact (see the module docs);
    /// without, it waits [`WatchOptions::settle`]. A SIGHUP meanwhile is answered by the
    /// rebuild under way.
    pub(super) fn fence(&mut self) -> Option<bool> {
        let mut changed = false;
        // A marker's own event can be lost with others when the kernel's queue overflows;
        // then a new marker is made, and waited for instead.
        'marker: loop {
            let Some(fence) = self.files.as_mut().and_then(|f| f.fence.as_mut()) else {
                let settled = self.changed_until(Instant::now() + self.options.settle)?;
                return Some(changed || settled);
            };
            fence.issued += 1;
            let marker = fence.path().join(fence.issued.to_string());
            if let Err(err) = std::fs::File::create(&marker) {
                return self.fence_lost(&err.to_string());
            }
            // Its removal is an event too, but not one anybody waits for.
            let _ = std::fs::remove_file(&marker);
            let deadline = Instant::now() + FENCE_TIMEOUT;
            loop {
                let signal = self
                    .receiver
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()));
                match signal {
                    Ok(Signal::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                    Ok(Signal::ReloadNow) => self.reload_requested = true,
                    Ok(Signal::Fs(Ok(event)))
                        if matches!(event.kind, EventKind::Create(_))
                            && event.paths.contains(&marker) =>
                    {
                        return Some(changed);
                    }
                    Ok(Signal::Fs(event)) => {
                        let rescan = event.as_ref().is_ok_and(notify::Event::need_rescan);
                        changed |= self.note(event);
                        if rescan {
                            continue 'marker;
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        return self.fence_lost("its event did not come back in time");
                    }
                }
            }
        }
    }

    /// The fence failed: drop it (the next rebuild makes a new one), wait a settle period
    /// instead, and count this read as changed, since it was not checked.
    pub(super) fn fence_lost(&mut self, why: &str) -> Option<bool> {
        if let Some(files) = &mut self.files
            && let Some(fence) = files.fence.take()
        {
            tracing::warn!(fence = %fence.path().display(), why, "policy read fence failed; making a new one");
        }
        self.changed_until(Instant::now() + self.options.settle)
            .map(|_| true)
    }

    /// Takes in signals until `deadline`: `Some(true)` if a change arrived, `None` if the
    /// watcher is stopping.
    pub(super) fn changed_until(&mut self, deadline: Instant) -> Option<bool> {
        let mut changed = false;
        loop {
            match self.wait(Some(deadline)) {
                Wait::Stop => return None,
                Wait::Change => changed = true,
                Wait::ReloadNow => self.reload_requested = true,
                Wait::Timeout => return Some(changed),
            }
        }
    }
}

/// How old the newest policy file must be before it is read into a snapshot. A truncating
/// `open` that blocks (on the file system's journal, say) shows the file empty before its
/// event is queued, and its open event can merge with this watcher's own; a modification
/// this recent may be such a write still under way.
pub(super) const SETTLED_AFTER: Duration = Duration::from_millis(25);

/// Whether `modified` is later than [`SETTLED_AFTER`] before `reading_from`, when the
/// reading began: measured from then, not from when the file was read, so that a reader
/// that waited for a CPU (a loaded machine) does not take a write made while it waited
/// for an old one. A time in the future (a clock step, a `touch -d`) does not count, or
/// it would hold reloads back until then.
pub(super) fn modified_just_now(modified: Option<SystemTime>, reading_from: SystemTime) -> bool {
    let Some(modified) = modified else {
        return false;
    };
    match SystemTime::now().duration_since(modified) {
        Ok(_) => {
            reading_from
                .duration_since(modified)
                .is_ok_and(|age| age < SETTLED_AFTER)
                || modified > reading_from
        }
        Err(ahead) => ahead.duration() < Duration::from_millis(5),
    }
}

/// How long a fence's event may take to come back before the fence is given up.
pub(super) const FENCE_TIMEOUT: Duration = Duration::from_secs(2);

/// Logs every problem of a failed rebuild with its file and line.
pub(crate) fn log_failure(err: &LoadError, store: &crate::policy::PolicyStore) {
    let (dir, serving) = (store.dir().display(), store.current());
    let serving = serving.version();
    match err {
        LoadError::Invalid(problems) => {
            for problem in problems {
                tracing::error!(
                    %dir,
                    location = %problem.location,
                    serving_version = serving,
                    "policy reload refused: {}",
                    problem.message
                );
            }
        }
        LoadError::Directory { .. } => {
            tracing::error!(%dir, serving_version = serving, "policy reload failed: {err}");
        }
    }
}
