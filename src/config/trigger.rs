//! What starts a run: `schedule:` and `timezone:`, `watch:` with `debounce:`, `poll:`, and
//! `catch_up:`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::raw::RawWatch;
use super::{parse_duration, ConfigError, Ctx};
use crate::model::policy::Direction;

/// How long the agent waits for a watched folder to be quiet, at least and at most.
pub(crate) const DEBOUNCE_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(3600));

/// The poll watcher's interval when `watch: poll` has no `poll:`.
pub(crate) const DEFAULT_WATCH_POLL: Duration = Duration::from_secs(30);

/// A validated 5-field crontab expression (or `@hourly`, `@daily`, ...).
#[derive(Clone)]
pub struct Schedule {
    pub expr: String,
    pub cron: croner::Cron,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?})", self.expr)
    }
}

impl Schedule {
    pub fn parse(expr: &str) -> Result<Schedule, String> {
        let fields = expr.split_whitespace().count();
        if !expr.trim_start().starts_with('@') && fields != 5 {
            return Err(format!(
                "schedule `{expr}` has {fields} fields; a crontab expression has 5 (minute hour day month weekday)"
            ));
        }
        let cron = croner::Cron::new(expr)
            .parse()
            .map_err(|e| format!("schedule `{expr}` is not a valid cron expression: {e}"))?;
        Ok(Schedule {
            expr: expr.to_string(),
            cron,
        })
    }

    /// Validates `schedule:`, if the job has one.
    pub(super) fn from_raw(raw: Option<&str>, ctx: &Ctx) -> Result<Option<Schedule>, ConfigError> {
        raw.map(|expr| Schedule::parse(expr).map_err(|e| ctx.fail(&["schedule"], e)))
            .transpose()
    }
}

/// Validates `timezone:`, an IANA name, if the job has one.
pub(super) fn timezone(raw: Option<&str>, ctx: &Ctx) -> Result<Option<chrono_tz::Tz>, ConfigError> {
    raw.map(|name| {
        chrono_tz::Tz::from_str(name.trim()).map_err(|_| {
            ctx.fail(
                &["timezone"],
                format!("timezone `{name}` is not a known time zone (expected a name like Europe/Amsterdam)"),
            )
        })
    })
    .transpose()
}

/// `catch_up: true` needs a schedule to catch up on.
pub(super) fn check_catch_up(
    catch_up: bool,
    schedule: Option<&Schedule>,
    ctx: &Ctx,
) -> Result<(), ConfigError> {
    if catch_up && schedule.is_none() {
        return Err(ctx.fail(
            &["catch_up"],
            "catch_up: true catches up missed scheduled times, but the job has no schedule",
        ));
    }
    Ok(())
}

/// `watch:`, validated.
#[derive(Debug, Clone, Copy)]
pub(super) struct Watch {
    /// `watch: true` or `watch: poll`: the agent syncs soon after local changes.
    pub(super) on: bool,
    /// `watch: poll`: by polling the local tree rather than with inotify.
    pub(super) by_polling: bool,
}

impl Watch {
    /// Validates `watch:`, which only push jobs may use: it watches the local folder.
    pub(super) fn from_raw(
        raw: &RawWatch,
        direction: Direction,
        ctx: &Ctx,
    ) -> Result<Watch, ConfigError> {
        let (on, by_polling) = match raw {
            RawWatch::Flag(b) => (*b, false),
            RawWatch::Text(t) if t.trim() == "poll" => (true, true),
            RawWatch::Text(t) => {
                return Err(ctx.fail(
                    &["watch"],
                    format!("watch: `{t}` is neither true, false nor poll"),
                ))
            }
        };
        if on && direction == Direction::Pull {
            return Err(ctx.fail(
                &["watch"],
                "watch: true watches the local folder, which only makes sense for direction: push; pull jobs use poll",
            ));
        }
        Ok(Watch { on, by_polling })
    }
}

/// `debounce:` and `poll:`, parsed; [`Intervals::check`] checks their bounds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Intervals {
    pub(super) debounce: Duration,
    pub(super) poll: Option<Duration>,
}

impl Intervals {
    /// Parses `debounce:` (default 2s) and `poll:`.
    pub(super) fn from_raw(
        debounce: Option<&str>,
        poll: Option<&str>,
        ctx: &Ctx,
    ) -> Result<Intervals, ConfigError> {
        let debounce = match debounce {
            Some(d) => parse_duration("debounce", d).map_err(|e| ctx.fail(&["debounce"], e))?,
            None => Duration::from_secs(2),
        };
        let poll = poll
            .map(|d| parse_duration("poll", d).map_err(|e| ctx.fail(&["poll"], e)))
            .transpose()?;
        Ok(Intervals { debounce, poll })
    }

    /// `poll:` at least 1s, `debounce:` within [`DEBOUNCE_RANGE`].
    pub(super) fn check(&self, ctx: &Ctx) -> Result<(), ConfigError> {
        if self.poll.is_some_and(|d| d < Duration::from_secs(1)) {
            return Err(ctx.fail(&["poll"], "poll: the interval must be at least 1s"));
        }
        if !(DEBOUNCE_RANGE.0..=DEBOUNCE_RANGE.1).contains(&self.debounce) {
            return Err(ctx.fail(
                &["debounce"],
                format!(
                    "debounce: {} is outside 100ms..1h",
                    humantime::format_duration(self.debounce)
                ),
            ));
        }
        Ok(())
    }

    /// The poll watcher's interval with `watch: poll`: the job's `poll:`, or 30s.
    pub(super) fn watch_poll(&self, watch: Watch) -> Option<Duration> {
        watch
            .by_polling
            .then(|| self.poll.unwrap_or(DEFAULT_WATCH_POLL))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{parse, GOOD};

    #[test]
    fn bad_cron_and_timezone_point_at_the_value() {
        let e = parse(&format!("{GOOD}schedule: \"61 * * * *\"\n")).unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        assert!(e.to_string().starts_with("/etc/jobs/acme.yaml:6:"), "{e}");
        let e = parse(&format!("{GOOD}schedule: \"* * * *\"\n")).unwrap_err();
        assert!(e.reason.contains("5"), "{e}");
        let e = parse(&format!("{GOOD}timezone: Mars/Olympus\n")).unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        assert!(parse(&format!(
            "{GOOD}schedule: \"*/15 * * * 1-5\"\ntimezone: Europe/Amsterdam\n"
        ))
        .is_ok());
        assert!(parse(&format!("{GOOD}schedule: \"@daily\"\n")).is_ok());
    }

    #[test]
    fn watch_forms_debounce_and_catch_up() {
        let job = parse(&format!("{GOOD}watch: true\n")).unwrap();
        assert!(job.watch && job.watch_poll.is_none());
        let job = parse(&format!("{GOOD}watch: poll\npoll: 10s\n")).unwrap();
        assert_eq!(job.watch_poll, Some(Duration::from_secs(10)));
        let job = parse(&format!("{GOOD}watch: poll\n")).unwrap();
        assert_eq!(job.watch_poll, Some(DEFAULT_WATCH_POLL));
        let e = parse(&format!("{GOOD}watch: sometimes\n")).unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        let e = parse(&format!("{GOOD}direction: pull\nwatch: poll\n")).unwrap_err();
        assert!(e.reason.contains("push"), "{e}");
        assert!(parse(&format!("{GOOD}debounce: 0s\n")).is_err());
        assert!(parse(&format!("{GOOD}debounce: 2h\n")).is_err());
        let e = parse(&format!("{GOOD}catch_up: true\n")).unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        let job = parse(&format!("{GOOD}schedule: \"@daily\"\ncatch_up: true\n")).unwrap();
        assert!(job.catch_up);
        assert!(!parse(GOOD).unwrap().catch_up);
    }
}
