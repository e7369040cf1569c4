//! Whether a remote file a pull would take has stopped changing (`settle:` in a job file).
//!
//! Partners' uploaders rarely write under a temporary name, so a listing may show a file that
//! is still growing. A pull takes a remote file only once it was seen with the same size and
//! modification time by two observations at least `settle` apart: the first sighting of a
//! size and time is remembered in the ledger (so a restart does not reset it), and a later run
//! that lists the file unchanged after `settle` has passed takes it. A LIST time is only
//! minute-precise; it is compared all the same (a change of minute means the file changed), so
//! for LIST servers the size and the interval between the observations decide.
//!
//! Pure: the run hands in the sightings it loaded and the clock, and writes back what
//! [`hold_unsettled`] returns.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::model::plan::{Action, SyncPlan, Waiting};

/// `settle:` of a pull job whose file does not set it: a minute, because LIST times are only
/// minute-precise (a file written to within a minute may show the same time) and a partner's
/// uploader rarely writes under a temporary name. A run that holds files waits for them within
/// itself (`sync/settle_wait.rs`), so a job run once a night still takes a new file that night.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(60);

/// How many settle periods a run waits, at most, for files still settling before it leaves them
/// for the next run: a file's first sighting at a new size starts a period, and the run only
/// re-observes once the earliest file is due, so a file that stops growing is taken within two
/// periods of its last change; five leave room for an upload that goes on a little longer.
pub const IN_RUN_PERIODS: u32 = 5;

/// However long `settle` is, a run waits at most this long within itself (it holds the job's
/// lock meanwhile, and later triggers coalesce behind it); a longer wait is the next run's.
pub const MAX_IN_RUN_WAIT: Duration = Duration::from_secs(600);

/// How long a run may wait within itself for files to settle: [`IN_RUN_PERIODS`] periods,
/// at most [`MAX_IN_RUN_WAIT`].
pub fn in_run_budget(settle: Duration) -> Duration {
    settle.saturating_mul(IN_RUN_PERIODS).min(MAX_IN_RUN_WAIT)
}

/// The next pause of a run waiting for files to settle: until the earliest of the `due` times
/// (each file's first sighting plus `settle`, ns on the wall clock), if that is no later than
/// `deadline` (the end of the run's budget); `None`: nothing is due within it, the files are
/// left for the next run.
pub fn next_pause(due: impl IntoIterator<Item = i64>, now: i64, deadline: i64) -> Option<Duration> {
    let earliest = due.into_iter().min()?;
    if earliest > deadline {
        return None;
    }
    let ns = u64::try_from(earliest.saturating_sub(now)).unwrap_or(0);
    Some(Duration::from_nanos(ns))
}

/// The first sighting of a remote file at its current size and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sighting {
    pub size: u64,
    /// The listing's time (ns since the epoch), as precise as the listing gave it.
    pub mtime: i64,
    /// When this size and time were first seen (ns since the epoch, the run's clock).
    pub since: i64,
}

/// The sightings a job remembers, by path.
pub type Sightings = BTreeMap<String, Sighting>;

/// What to do with one remote file the plan would download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Stable (or settling is off): take it.
    Take,
    /// Not yet: remember `sighting`, and look again after `remaining_ns`.
    Wait {
        sighting: Sighting,
        remaining_ns: i64,
    },
}

/// The rule: a file of `size` and `mtime` listed at `now` is taken when `settle_ns` is zero, or
/// when `seen` (the remembered first sighting) has the same size and time and was at least
/// `settle_ns` before `now`. A new or changed file starts a sighting at `now`; so does a clock
/// that went back past the sighting (the interval can no longer be measured).
pub fn verdict(
    seen: Option<&Sighting>,
    size: u64,
    mtime: i64,
    now: i64,
    settle_ns: i64,
) -> Verdict {
    if settle_ns <= 0 {
        return Verdict::Take;
    }
    match seen {
        Some(s) if s.size == size && s.mtime == mtime && s.since <= now => {
            let waited = now.saturating_sub(s.since);
            if waited >= settle_ns {
                Verdict::Take
            } else {
                Verdict::Wait {
                    sighting: *s,
                    remaining_ns: settle_ns - waited,
                }
            }
        }
        _ => Verdict::Wait {
            sighting: Sighting {
                size,
                mtime,
                since: now,
            },
            remaining_ns: settle_ns,
        },
    }
}

/// Takes out of `plan` every download of a file that has not settled (see [`verdict`]) and
/// lists it in `plan.waiting`. Returns the sightings the job must remember from now on: those
/// of the files still waiting (a file taken, or gone, needs none; one that changes again
/// starts over).
pub fn hold_unsettled(
    plan: &mut SyncPlan,
    seen: &Sightings,
    now: i64,
    settle: Duration,
) -> Sightings {
    let settle_ns = i64::try_from(settle.as_nanos()).unwrap_or(i64::MAX);
    let mut keep = Sightings::new();
    let mut waiting = Vec::new();
    plan.actions.retain(|a| {
        let Action::Download { path, source } = a else {
            return true;
        };
        match verdict(seen.get(path), source.size, source.mtime, now, settle_ns) {
            Verdict::Take => true,
            Verdict::Wait {
                sighting,
                remaining_ns,
            } => {
                keep.insert(path.clone(), sighting);
                waiting.push(Waiting {
                    path: path.clone(),
                    size: source.size,
                    remaining_ns,
                    marker: None,
                });
                false
            }
        }
    });
    plan.waiting.extend(waiting);
    keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::snapshot::{Entry, Kind};
    use proptest::prelude::*;

    const S: i64 = 1_000_000_000;

    fn file(size: u64, mtime: i64) -> Entry {
        Entry {
            kind: Kind::File,
            size,
            mtime,
            hash: None,
            id: None,
        }
    }

    fn download(path: &str, size: u64, mtime: i64) -> Action {
        Action::Download {
            path: path.into(),
            source: file(size, mtime),
        }
    }

    #[test]
    fn a_new_file_waits_and_is_taken_once_seen_unchanged_settle_apart() {
        let settle = Duration::from_secs(30);
        let mut plan = SyncPlan {
            actions: vec![download("a.csv", 10, 60 * S)],
            ..SyncPlan::default()
        };
        let seen = hold_unsettled(&mut plan, &Sightings::new(), 100 * S, settle);
        assert!(plan.actions.is_empty());
        assert_eq!(plan.waiting.len(), 1);
        assert_eq!(plan.waiting[0].remaining_ns, 30 * S);
        // 20 s later: still waiting, the first sighting kept.
        let mut plan = SyncPlan {
            actions: vec![download("a.csv", 10, 60 * S)],
            ..SyncPlan::default()
        };
        let again = hold_unsettled(&mut plan, &seen, 120 * S, settle);
        assert_eq!(again, seen);
        assert_eq!(plan.waiting[0].remaining_ns, 10 * S);
        // 30 s after the first sighting: taken, and forgotten.
        let mut plan = SyncPlan {
            actions: vec![download("a.csv", 10, 60 * S)],
            ..SyncPlan::default()
        };
        let after = hold_unsettled(&mut plan, &seen, 130 * S, settle);
        assert_eq!(plan.actions.len(), 1);
        assert!(plan.waiting.is_empty() && after.is_empty());
    }

    #[test]
    fn a_file_that_grew_or_was_touched_starts_over() {
        let seen = Sightings::from([(
            "a".to_string(),
            Sighting {
                size: 10,
                mtime: 60 * S,
                since: 0,
            },
        )]);
        for (size, mtime) in [(11, 60 * S), (10, 120 * S), (9, 60 * S)] {
            assert_eq!(
                verdict(seen.get("a"), size, mtime, 1000 * S, 30 * S),
                Verdict::Wait {
                    sighting: Sighting {
                        size,
                        mtime,
                        since: 1000 * S
                    },
                    remaining_ns: 30 * S
                }
            );
        }
    }

    #[test]
    fn settle_zero_takes_everything_and_other_actions_pass() {
        let mut plan = SyncPlan {
            actions: vec![download("a", 1, 0), Action::MakeDir { path: "d".into() }],
            ..SyncPlan::default()
        };
        let kept = hold_unsettled(&mut plan, &Sightings::new(), 5, Duration::ZERO);
        assert_eq!(plan.actions.len(), 2);
        assert!(kept.is_empty() && plan.waiting.is_empty());
        let mut plan = SyncPlan {
            actions: vec![Action::MakeDir { path: "d".into() }],
            ..SyncPlan::default()
        };
        hold_unsettled(&mut plan, &Sightings::new(), 5, Duration::from_secs(1));
        assert_eq!(plan.actions.len(), 1);
    }

    #[test]
    fn a_clock_that_went_back_starts_the_interval_again() {
        let s = Sighting {
            size: 1,
            mtime: 0,
            since: 500 * S,
        };
        assert!(matches!(
            verdict(Some(&s), 1, 0, 100 * S, 30 * S),
            Verdict::Wait { sighting, .. } if sighting.since == 100 * S
        ));
    }

    #[test]
    fn a_run_waits_until_the_earliest_file_is_due_within_its_budget() {
        assert_eq!(
            in_run_budget(Duration::from_secs(60)),
            Duration::from_secs(300)
        );
        assert_eq!(in_run_budget(Duration::from_secs(3600)), MAX_IN_RUN_WAIT);
        assert_eq!(in_run_budget(Duration::ZERO), Duration::ZERO);
        assert_eq!(
            next_pause([30 * S, 10 * S], 4 * S, 100 * S),
            Some(Duration::from_secs(6))
        );
        // Due already: no pause.
        assert_eq!(next_pause([3 * S], 4 * S, 100 * S), Some(Duration::ZERO));
        // Nothing due within the budget, or nothing waiting: the next run's.
        assert_eq!(next_pause([101 * S], 4 * S, 100 * S), None);
        assert_eq!(next_pause([], 4 * S, 100 * S), None);
    }

    proptest! {
        /// A file is never taken unless the same size and time were seen at least `settle`
        /// earlier, whatever the sequence of observations; and one that stops changing is
        /// taken by the first observation `settle` after it stopped.
        #[test]
        fn taken_only_after_settle_unchanged(
            steps in prop::collection::vec((0u64..3, 0i64..3, 0i64..20), 1..30),
            settle in 1i64..15,
        ) {
            let mut seen = Sightings::new();
            let mut now = 0i64;
            let mut history: Vec<(i64, u64, i64)> = Vec::new();
            for (size, mtime, dt) in steps {
                now += dt;
                history.push((now, size, mtime));
                match verdict(seen.get("f"), size, mtime, now, settle) {
                    Verdict::Take => {
                        // Unchanged since some observation at least `settle` ago.
                        let since = history
                            .iter()
                            .rev()
                            .take_while(|(_, s, m)| (*s, *m) == (size, mtime))
                            .last()
                            .map(|(t, _, _)| *t);
                        prop_assert!(since.is_some_and(|t| now - t >= settle));
                        seen.remove("f");
                        history.clear();
                    }
                    Verdict::Wait { sighting, remaining_ns } => {
                        prop_assert!(remaining_ns > 0 && remaining_ns <= settle);
                        let first = history
                            .iter()
                            .rev()
                            .take_while(|(_, s, m)| (*s, *m) == (size, mtime))
                            .last()
                            .map(|(t, _, _)| *t);
                        prop_assert_eq!(Some(sighting.since), first);
                        prop_assert!(now - sighting.since < settle);
                        seen.insert("f".into(), sighting);
                    }
                }
            }
        }
    }
}
