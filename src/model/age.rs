//! Which source files a job takes by their age (`min_age:` / `max_age:` in a job file).
//!
//! A file younger than `min_age` or older than `max_age` (by its modification time) is left
//! alone this run: not transferred, and, since it is still on the source, never a reason to
//! delete its destination copy in mirror mode (like a path the filter excludes). A remote time
//! from `LIST` is only minute-precise: the true time may lie up to `uncertainty` after the
//! listed one, so the rule decides conservatively (`min_age` takes a file only if it is surely
//! old enough; `max_age` skips it only if it is surely too old).
//!
//! Pure: the run hands in the clock and how precise the source's times are.

use std::time::Duration;

/// The age limits of a job; both `None` when the job sets neither.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgeLimits {
    pub min_age: Option<Duration>,
    pub max_age: Option<Duration>,
}

impl AgeLimits {
    pub fn is_off(&self) -> bool {
        self.min_age.is_none() && self.max_age.is_none()
    }
}

fn ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The rule: whether a file modified at `mtime` (ns since the epoch; the true time lies in
/// `mtime ..= mtime + uncertainty`) is taken at `now`. Its age is at least
/// `now - mtime - uncertainty` and at most `now - mtime`. A file exactly `min_age` old is taken;
/// one exactly `max_age` old is taken too.
pub fn takes(limits: AgeLimits, mtime: i64, uncertainty: Duration, now: i64) -> bool {
    let youngest = now.saturating_sub(mtime).saturating_sub(ns(uncertainty));
    if let Some(min) = limits.min_age {
        if youngest < ns(min) {
            return false;
        }
    }
    if let Some(max) = limits.max_age {
        if youngest > ns(max) {
            return false;
        }
    }
    true
}

/// The age limits with what [`takes`] needs besides a file's time: how uncertain the source's
/// times are and the run's clock. The default takes every file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgeRule {
    limits: AgeLimits,
    uncertainty: Duration,
    now: i64,
}

impl AgeRule {
    pub fn new(limits: AgeLimits, uncertainty: Duration, now: i64) -> AgeRule {
        AgeRule {
            limits,
            uncertainty,
            now,
        }
    }

    /// Whether the plan takes a source file modified at `mtime`.
    pub fn takes(&self, mtime: i64) -> bool {
        self.limits.is_off() || takes(self.limits, mtime, self.uncertainty, self.now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;
    const HOUR: Duration = Duration::from_secs(3600);
    const NOW: i64 = 1_000_000 * S;

    fn limits(min: Option<Duration>, max: Option<Duration>) -> AgeLimits {
        AgeLimits {
            min_age: min,
            max_age: max,
        }
    }

    #[test]
    fn min_age_skips_young_files_and_takes_old_ones_and_the_boundary() {
        let l = limits(Some(HOUR), None);
        assert!(!takes(l, NOW - 10 * S, Duration::ZERO, NOW), "young");
        assert!(takes(l, NOW - 7200 * S, Duration::ZERO, NOW), "old");
        assert!(
            takes(l, NOW - 3600 * S, Duration::ZERO, NOW),
            "exactly min_age"
        );
        assert!(
            !takes(l, NOW - 3600 * S + 1, Duration::ZERO, NOW),
            "just short"
        );
        assert!(
            !takes(l, NOW + 60 * S, Duration::ZERO, NOW),
            "from the future"
        );
    }

    #[test]
    fn max_age_skips_old_files_and_takes_young_ones_and_the_boundary() {
        let l = limits(None, Some(HOUR));
        assert!(takes(l, NOW - 10 * S, Duration::ZERO, NOW), "young");
        assert!(!takes(l, NOW - 7200 * S, Duration::ZERO, NOW), "old");
        assert!(
            takes(l, NOW - 3600 * S, Duration::ZERO, NOW),
            "exactly max_age"
        );
        assert!(
            !takes(l, NOW - 3600 * S - 1, Duration::ZERO, NOW),
            "just over"
        );
    }

    #[test]
    fn an_inexact_time_is_decided_conservatively() {
        let minute = Duration::from_secs(60);
        // Listed 61 minutes ago, true time up to a minute later: maybe only 60 minutes old.
        let listed = NOW - 3660 * S;
        assert!(takes(limits(Some(HOUR), None), listed, minute, NOW));
        let listed = NOW - 3630 * S;
        assert!(
            !takes(limits(Some(HOUR), None), listed, minute, NOW),
            "min_age takes only a file surely old enough"
        );
        assert!(
            takes(limits(None, Some(HOUR)), listed, minute, NOW),
            "max_age skips only a file surely too old"
        );
        let listed = NOW - 3661 * S;
        assert!(!takes(limits(None, Some(HOUR)), listed, minute, NOW));
    }
}
