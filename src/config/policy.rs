//! How a run treats the server: `retries:`, `upload:` and `max_delete:` (with
//! `allow_empty_source:`, read with the job's other top-level keys).

use std::time::Duration;

use super::raw::{RawMaxDelete, RawRetries, RawUpload};
use super::{parse_duration, ConfigError, Ctx};
use crate::model::policy::MaxDelete;

/// How often a transfer or listing is retried after a transient failure (a dropped
/// connection, a timeout, a 4xx reply), and how long the backoff may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `n + 1` (n from 0): 1 s doubling up to `max_delay`, with
    /// ±25% jitter so parallel connections do not retry in lockstep.
    pub fn delay(&self, n: u32) -> Duration {
        let base = Duration::from_secs(1).saturating_mul(1u32 << n.min(16));
        base.min(self.max_delay)
            .mul_f64(0.75 + fastrand::f64() * 0.5)
    }

    /// Validates `retries:`; what it leaves out keeps its default.
    pub(super) fn from_raw(raw: Option<RawRetries>, ctx: &Ctx) -> Result<Self, ConfigError> {
        let retries = match raw {
            None => RetryPolicy::default(),
            Some(RawRetries::Attempts(attempts)) => RetryPolicy {
                attempts,
                ..RetryPolicy::default()
            },
            Some(RawRetries::Full(r)) => RetryPolicy {
                attempts: r.attempts.unwrap_or(RetryPolicy::default().attempts),
                max_delay: match &r.max_delay {
                    Some(d) => parse_duration("retries.max_delay", d)
                        .map_err(|e| ctx.fail(&["retries", "max_delay"], e))?,
                    None => RetryPolicy::default().max_delay,
                },
            },
        };
        if !(1..=100).contains(&retries.attempts) {
            return Err(ctx.fail(
                &["retries"],
                format!("retries: {} attempts is outside 1..100", retries.attempts),
            ));
        }
        Ok(retries)
    }
}

/// How uploads reach their final name, and what is checked before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadOptions {
    /// Upload to a temporary name and rename (default). `false` for servers that refuse
    /// RNFR/RNTO: consumers may then see a partial file, and an interrupted upload starts over.
    pub temp_name: bool,
    /// Check the server's SIZE (and hash, on resume) before the rename (default). `false`
    /// (`verify: none`) for write-only drop folders that refuse SIZE and reading back.
    pub verify: bool,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            temp_name: true,
            verify: true,
        }
    }
}

impl UploadOptions {
    /// Validates `upload:`; turning a safeguard off is allowed, with a warning.
    pub(super) fn from_raw(raw: Option<RawUpload>, ctx: &mut Ctx) -> Result<Self, ConfigError> {
        let upload = match raw {
            None => UploadOptions::default(),
            Some(u) => {
                let verify = match u.verify.as_deref() {
                    None | Some("size") => true,
                    Some("none") => false,
                    Some(other) => {
                        return Err(ctx.fail(
                            &["upload", "verify"],
                            format!("upload.verify: `{other}` is not `size` or `none`"),
                        ))
                    }
                };
                UploadOptions {
                    temp_name: u.temp_name.unwrap_or(true),
                    verify,
                }
            }
        };
        if !upload.temp_name {
            ctx.warn("upload.temp_name: false: files are written under their final name, so a consumer can see a partial file, and an interrupted upload starts over");
        }
        if !upload.verify {
            ctx.warn("upload.verify: none: the size the server stored is not checked before a file counts as sent");
        }
        Ok(upload)
    }
}

/// How long the audit record keeps a job's rows when the job file does not say (`400d`: a
/// year and a bit, so last year's same week is still there).
pub const DEFAULT_AUDIT_RETENTION: Duration = Duration::from_secs(400 * 86_400);

/// Validates `audit_retention:` (`400d`, `90days`, `2y`): at least a day, so a typo such as
/// `30s` cannot empty the record.
pub(super) fn audit_retention(raw: Option<&str>, ctx: &Ctx) -> Result<Duration, ConfigError> {
    let Some(text) = raw else {
        return Ok(DEFAULT_AUDIT_RETENTION);
    };
    let d =
        parse_duration("audit_retention", text).map_err(|e| ctx.fail(&["audit_retention"], e))?;
    if d < Duration::from_secs(86_400) {
        return Err(ctx.fail(
            &["audit_retention"],
            format!("audit_retention: `{text}` is less than a day (`1d`)"),
        ));
    }
    Ok(d)
}

/// Validates `settle:` (`30s`, `2m`, `0` for off): pull jobs only, at most a day (a file that
/// must stay unchanged longer is one a partner marks as ready instead). Default
/// [`crate::model::settle::DEFAULT_SETTLE`] for pulls, zero (unused) for pushes.
pub(super) fn settle(
    raw: Option<&str>,
    direction: crate::model::policy::Direction,
    ctx: &Ctx,
) -> Result<Duration, ConfigError> {
    let pull = direction == crate::model::policy::Direction::Pull;
    let Some(text) = raw else {
        return Ok(if pull {
            crate::model::settle::DEFAULT_SETTLE
        } else {
            Duration::ZERO
        });
    };
    if !pull {
        return Err(ctx.fail(
            &["settle"],
            "settle: is for pull jobs (it waits for a remote file to stop changing)",
        ));
    }
    let d = if text.trim() == "0" {
        Duration::ZERO
    } else {
        parse_duration("settle", text).map_err(|e| ctx.fail(&["settle"], e))?
    };
    if d > Duration::from_secs(86_400) {
        return Err(ctx.fail(
            &["settle"],
            format!("settle: `{text}` is more than a day (`1d`)"),
        ));
    }
    Ok(d)
}

/// Validates `ready_marker:`, `batch_marker:` and `marker_after_pull:` (pull jobs only): a
/// template with `{name}` once, a file name, `delete | keep`. With a marker, the marker decides
/// instead of `settle:`, so a `settle:` the file also sets is warned about.
pub(super) fn markers(
    ready: Option<&str>,
    batch: Option<&str>,
    after: Option<crate::model::marker::MarkerAfterPull>,
    direction: crate::model::policy::Direction,
    settle_set: bool,
    ctx: &mut Ctx,
) -> Result<Option<crate::model::marker::MarkerRule>, ConfigError> {
    use crate::model::marker::{check_batch_name, MarkerRule, NameTemplate};
    let pull = direction == crate::model::policy::Direction::Pull;
    for (key, set) in [
        ("ready_marker", ready.is_some()),
        ("batch_marker", batch.is_some()),
        ("marker_after_pull", after.is_some()),
    ] {
        if set && !pull {
            return Err(ctx.fail(
                &[key],
                format!("{key}: is for pull jobs (a partner's marker says when a remote file is complete)"),
            ));
        }
    }
    let per_file = ready
        .map(|t| {
            NameTemplate::parse(t)
                .map_err(|e| ctx.fail(&["ready_marker"], format!("ready_marker: {e}")))
        })
        .transpose()?;
    if let Some(b) = batch {
        check_batch_name(b)
            .map_err(|e| ctx.fail(&["batch_marker"], format!("batch_marker: {e}")))?;
    }
    if per_file.is_none() && batch.is_none() {
        if after.is_some() {
            return Err(ctx.fail(
                &["marker_after_pull"],
                "marker_after_pull: needs ready_marker: or batch_marker:",
            ));
        }
        return Ok(None);
    }
    if settle_set {
        ctx.warn("settle: is not used: with ready_marker: or batch_marker: the marker decides when a file is taken");
    }
    Ok(Some(MarkerRule {
        per_file,
        batch: batch.map(str::to_string),
        after_pull: after.unwrap_or_default(),
    }))
}

/// Validates `min_age:` and `max_age:` (`10m`, `2h`, `30d`): durations, and a `min_age` above
/// `max_age` would take no file at all, so it is refused.
pub(super) fn age_limits(
    min_age: Option<&str>,
    max_age: Option<&str>,
    ctx: &Ctx,
) -> Result<crate::model::age::AgeLimits, ConfigError> {
    let parse = |key: &str, raw: Option<&str>| {
        raw.map(|text| parse_duration(key, text).map_err(|e| ctx.fail(&[key], e)))
            .transpose()
    };
    let limits = crate::model::age::AgeLimits {
        min_age: parse("min_age", min_age)?,
        max_age: parse("max_age", max_age)?,
    };
    if let (Some(min), Some(max)) = (limits.min_age, limits.max_age) {
        if min > max {
            return Err(ctx.fail(
                &["min_age"],
                "min_age: is more than max_age:, so no file would ever be taken",
            ));
        }
    }
    Ok(limits)
}

/// Validates `max_delete:`: a count or a percentage of the files the job knows.
pub(super) fn max_delete(
    raw: Option<RawMaxDelete>,
    ctx: &Ctx,
) -> Result<Option<MaxDelete>, ConfigError> {
    match raw {
        None => Ok(None),
        Some(RawMaxDelete::Count(n)) => Ok(Some(MaxDelete::Count(n))),
        Some(RawMaxDelete::Text(t)) => parse_max_delete(&t)
            .map(Some)
            .map_err(|e| ctx.fail(&["max_delete"], e)),
    }
}

fn parse_max_delete(s: &str) -> Result<MaxDelete, String> {
    let s = s.trim();
    if let Some(p) = s.strip_suffix('%') {
        let p: f64 = p
            .trim()
            .parse()
            .map_err(|_| format!("max_delete: `{s}` is not a percentage like `25%`"))?;
        if !(0.0..=100.0).contains(&p) {
            return Err(format!("max_delete: {p}% is outside 0%..100%"));
        }
        Ok(MaxDelete::Percent(p))
    } else {
        s.parse()
            .map(MaxDelete::Count)
            .map_err(|_| format!("max_delete: `{s}` is neither a count nor a percentage"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{parse, GOOD};

    #[test]
    fn audit_retention_defaults_to_400_days_and_refuses_less_than_a_day() {
        assert_eq!(
            parse(GOOD).unwrap().audit_retention,
            DEFAULT_AUDIT_RETENTION
        );
        let job = parse(&format!("{GOOD}audit_retention: 90d\n")).unwrap();
        assert_eq!(job.audit_retention, Duration::from_secs(90 * 86_400));
        let e = parse(&format!("{GOOD}audit_retention: 30s\n")).unwrap_err();
        assert!(e.to_string().contains("less than a day"), "{e}");
        assert_eq!(e.line, 6, "{e}");
        let e = parse(&format!("{GOOD}audit_retention: soon\n")).unwrap_err();
        assert!(e.to_string().contains("audit_retention"), "{e}");
    }

    #[test]
    fn retries_forms_and_backoff() {
        assert_eq!(parse(GOOD).unwrap().retries, RetryPolicy::default());
        let job = parse(&format!("{GOOD}retries: 2\n")).unwrap();
        assert_eq!(job.retries.attempts, 2);
        let job = parse(&format!("{GOOD}retries:\n  attempts: 8\n  max_delay: 5s\n")).unwrap();
        assert_eq!(
            job.retries,
            RetryPolicy {
                attempts: 8,
                max_delay: Duration::from_secs(5)
            }
        );
        assert!(job.retries.delay(10) <= Duration::from_millis(6250));
        assert!(job.retries.delay(0) >= Duration::from_millis(750));
        assert!(parse(&format!("{GOOD}retries: 0\n")).is_err());
        assert!(parse(&format!("{GOOD}retries:\n  tries: 3\n")).is_err());
    }

    #[test]
    fn max_delete_forms() {
        let job = parse(&format!("{GOOD}max_delete: 25%\n")).unwrap();
        assert_eq!(job.max_delete, Some(MaxDelete::Percent(25.0)));
        assert_eq!(job.max_delete.unwrap().limit(12), 3);
        let job = parse(&format!("{GOOD}max_delete: 10\n")).unwrap();
        assert_eq!(job.max_delete, Some(MaxDelete::Count(10)));
        assert!(parse(&format!("{GOOD}max_delete: lots\n")).is_err());
        assert!(parse(&format!("{GOOD}max_delete: 150%\n")).is_err());
        // 100% allows any number; no other spelling turns the limit off.
        let job = parse(&format!("{GOOD}max_delete: 100%\n")).unwrap();
        assert_eq!(job.max_delete.unwrap().limit(12), u64::MAX);
        assert!(parse(&format!("{GOOD}max_delete: unlimited\n")).is_err());
        // None: the plan applies the default (half of the destination, at least 10).
        assert_eq!(parse(GOOD).unwrap().max_delete, None);
        assert_eq!(crate::model::policy::default_max_delete(4), 10);
        assert_eq!(crate::model::policy::default_max_delete(1001), 500);
    }

    #[test]
    fn an_empty_source_is_refused_unless_the_job_allows_it() {
        assert!(!parse(GOOD).unwrap().allow_empty_source);
        let job = parse(&format!("{GOOD}allow_empty_source: true\n")).unwrap();
        assert!(job.allow_empty_source);
        assert!(parse(&format!("{GOOD}allow_empty_source: yes please\n")).is_err());
        // Unknown keys stay errors: a misspelt opt-in does not silently stay off.
        let e = parse(&format!("{GOOD}allow_empty_sources: true\n")).unwrap_err();
        assert!(e.to_string().contains("allow_empty_sources"), "{e}");
    }
}
