//! Warnings a flood can set off (a refused client calling in a loop, a full connection
//! cap, a process out of file descriptors) are written once a second at most; the rest
//! are dropped or logged at debug level by the caller.

use std::sync::atomic::{AtomicU64, Ordering};

/// Says yes at most once per wall-clock second, across threads.
#[derive(Debug)]
pub struct OncePerSecond(AtomicU64);

impl Default for OncePerSecond {
    fn default() -> Self {
        Self::new()
    }
}

impl OncePerSecond {
    /// A throttle that has not said yes yet.
    pub const fn new() -> Self {
        Self(AtomicU64::new(u64::MAX))
    }

    /// Whether a warning may be written now.
    pub fn ready(&self) -> bool {
        let second = std::time::UNIX_EPOCH
            .elapsed()
            .map_or(0, |since| since.as_secs());
        let last = self.0.load(Ordering::Relaxed);
        last != second
            && self
                .0
                .compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::OncePerSecond;

    #[test]
    fn says_yes_once_then_no_within_the_second() {
        let throttle = OncePerSecond::new();
        let yes = (0..1_000).filter(|_| throttle.ready()).count();
        // The loop may straddle a second boundary, never two.
        assert!((1..=2).contains(&yes), "{yes}");
    }
}
