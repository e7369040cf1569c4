//! The agent behind `ferrysync run`: triggers each job on its cron schedule (in the job's time
//! zone) and its poll interval, one run per job at a time, until SIGTERM or Ctrl-C.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::config::{Job, Schedule};
use crate::job_run::{run_job, RunOptions, SharedLedger};

/// The next time `schedule` fires strictly after `after`, in `tz` (the machine's zone if none).
pub fn next_fire(
    schedule: &Schedule,
    tz: Option<chrono_tz::Tz>,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    match tz {
        Some(tz) => schedule
            .cron
            .find_next_occurrence(&after.with_timezone(&tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        None => schedule
            .cron
            .find_next_occurrence(&after.with_timezone(&chrono::Local), false)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
    }
}

/// When a job should run next and why.
fn next_trigger(
    job: &Job,
    now: DateTime<Utc>,
    last_poll: DateTime<Utc>,
) -> Option<(DateTime<Utc>, &'static str)> {
    let cron = job
        .schedule
        .as_ref()
        .and_then(|s| next_fire(s, job.timezone, now))
        .map(|t| (t, "schedule"));
    let poll = job
        .poll
        .and_then(|p| chrono::Duration::from_std(p).ok())
        .map(|p| (last_poll + p, "poll"));
    match (cron, poll) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Runs every job's triggers until `stop` turns true; returns once in-flight runs have ended.
pub async fn run_agent(jobs: Vec<Job>, ledger: SharedLedger, stop: watch::Receiver<bool>) {
    let mut tasks = Vec::new();
    for job in jobs {
        if job.watch {
            tracing::warn!(job = %job.name, "watch: true is not supported by this version yet; the job runs on its schedule and poll interval only");
        }
        if job.schedule.is_none() && job.poll.is_none() {
            tracing::info!(job = %job.name, "no schedule or poll: runs only through `ferrysync sync`");
            continue;
        }
        let (ledger, mut stop) = (ledger.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut last_poll = Utc::now();
            loop {
                let now = Utc::now();
                let Some((when, trigger)) = next_trigger(&job, now, last_poll) else {
                    tracing::warn!(job = %job.name, "the schedule never fires again");
                    return;
                };
                tracing::info!(job = %job.name, next = %when.to_rfc3339(), trigger, "waiting");
                let wait = (when - now).to_std().unwrap_or(Duration::ZERO);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return,
                }
                if *stop.borrow() {
                    return;
                }
                if trigger == "poll" {
                    last_poll = when;
                }
                let opts = RunOptions {
                    trigger: trigger.to_string(),
                    dry_run: false,
                    progress: false,
                };
                let report = run_job(&job, &ledger, &opts).await;
                tracing::info!(job = %job.name, "{}", report.summary());
                if trigger == "poll" {
                    last_poll = Utc::now();
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn weekdays_follow_crontab_numbering() {
        // 2026-11-28 is a Saturday: `1-5` (Monday to Friday) next fires on Monday the 30th.
        let s = Schedule::parse("0 9 * * 1-5").unwrap();
        let after = Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap();
        let next = next_fire(&s, Some(chrono_tz::UTC), after).unwrap();
        assert_eq!(next, Utc.with_ymd_and_hms(2026, 11, 30, 9, 0, 0).unwrap());
    }

    #[test]
    fn schedules_run_in_the_job_time_zone() {
        let s = Schedule::parse("30 2 * * *").unwrap();
        let tz: chrono_tz::Tz = "Europe/Amsterdam".parse().unwrap();
        let after = Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap();
        // 02:30 in Amsterdam in winter (UTC+1) is 01:30 UTC.
        assert_eq!(
            next_fire(&s, Some(tz), after).unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 29, 1, 30, 0).unwrap()
        );
    }
}
