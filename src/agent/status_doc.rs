//! The `status --json` document: each job's state, last and next run, failing streak, last
//! error and live progress, read from the ledger (never from the job files, so it works while
//! a run holds the server). Built here, once, for `ferrysync status --json` and for the
//! listener's `/api/status` and status page, so the two can never differ.

use std::path::Path;

use serde::Serialize;

use crate::config::Schedule;
use crate::state::{iso_time, JobFileError, JobRecord, Ledger, LedgerError, Outcome, RunRecord};

/// One job in `status --json`.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub name: String,
    /// `running` (a run has started and not ended), `failing` (the latest run ended `failed`
    /// or `partial`), `idle`, or `invalid` (the agent found the job file invalid and runs no
    /// version of the job; `config_errors` says why).
    pub state: &'static str,
    /// Runs in a row, newest first, that ended `failed` or `partial`.
    pub consecutive_failures: u64,
    /// The error of the latest run that had one (the run's own, or its first failed path).
    pub last_error: Option<String>,
    pub direction: String,
    pub local: String,
    pub remote: String,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    /// ISO 8601 UTC, from the schedule; null without one.
    pub next_run: Option<String>,
    /// ISO 8601 UTC of the latest run that ended `ok`.
    pub last_success: Option<String>,
    /// Paths the ledger holds as synced.
    pub synced_files: u64,
    pub last_run: Option<RunRecord>,
    /// The errors (`file:line:col: reason`) of this job's files that the agent could not load
    /// at its latest load or SIGHUP reload; empty when the job file is valid. With state
    /// `invalid` no version of the job runs; otherwise the agent still runs the job's last
    /// valid version.
    pub config_errors: Vec<String>,
}

/// The whole `status --json` document.
#[derive(Debug, Clone, Serialize)]
pub struct StatusDoc {
    /// The ledger's path, as given (`--state`).
    pub state: String,
    pub jobs: Vec<JobStatus>,
}

impl StatusDoc {
    /// The document of the ledger at `state` (no jobs if there is no ledger yet), every job.
    pub fn read(state: &Path) -> Result<StatusDoc, LedgerError> {
        let jobs = match Ledger::open_read_only(state)? {
            Some(ledger) => job_statuses(&ledger, None)?,
            None => Vec::new(),
        };
        Ok(StatusDoc::of(state, jobs))
    }

    /// The document of `jobs`, read from the ledger at `state`.
    pub fn of(state: &Path, jobs: Vec<JobStatus>) -> StatusDoc {
        StatusDoc {
            state: state.display().to_string(),
            jobs,
        }
    }

    /// The document as `status --json` prints it (pretty, without the final newline).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }
}

/// The status of every job the ledger knows (or only `only`), invalid job files joined to
/// their jobs, sorted by name. Empty if `only` is given and the ledger has no trace of it.
pub fn job_statuses(ledger: &Ledger, only: Option<&str>) -> Result<Vec<JobStatus>, LedgerError> {
    let mut jobs = ledger.jobs()?;
    let mut invalid = ledger.job_file_errors()?;
    if let Some(name) = only {
        jobs.retain(|j| j.name == name);
        invalid.retain(|e| e.job == name);
    }
    let mut out = jobs
        .into_iter()
        .map(|j| JobStatus::of(ledger, j))
        .collect::<Result<Vec<_>, _>>()?;
    with_invalid_files(&mut out, invalid);
    Ok(out)
}

/// The next time a cron schedule fires after now, in its time zone (the agent's DST rule).
pub fn next_run(schedule: Option<&str>, timezone: Option<&str>) -> Option<String> {
    let schedule = Schedule::parse(schedule?).ok()?;
    let tz = timezone.and_then(|t| t.parse::<chrono_tz::Tz>().ok());
    let next = super::next_fire(&schedule, tz, chrono::Utc::now())?;
    Some(iso_time(next.timestamp()))
}

impl JobStatus {
    /// The status of the job recorded as `j`, from its recent runs.
    fn of(ledger: &Ledger, j: JobRecord) -> Result<JobStatus, LedgerError> {
        let last_run = ledger.runs(&j.name, 1)?.into_iter().next();
        let recent = ledger.runs(&j.name, 50)?;
        // Interrupted runs (a stop on request) are neither successes nor failures.
        let finished = recent
            .iter()
            .filter(|r| !matches!(r.outcome, Outcome::Running | Outcome::Interrupted));
        let consecutive_failures = finished
            .clone()
            .take_while(|r| matches!(r.outcome, Outcome::Failed | Outcome::Partial))
            .count() as u64;
        let last_error = finished.clone().find_map(|r| {
            r.error.clone().or_else(|| {
                r.failures
                    .first()
                    .map(|f| format!("{}: {}", f.path, f.error))
            })
        });
        let state = match (recent.first().map(|r| r.outcome), consecutive_failures) {
            (Some(Outcome::Running), _) => "running",
            (_, n) if n > 0 => "failing",
            _ => "idle",
        };
        Ok(JobStatus {
            state,
            consecutive_failures,
            last_error,
            next_run: next_run(j.schedule.as_deref(), j.timezone.as_deref()),
            last_success: ledger.last_success(&j.name)?.map(iso_time),
            synced_files: ledger.entry_count(&j.name)?,
            name: j.name,
            direction: j.direction,
            local: j.local,
            remote: j.remote,
            schedule: j.schedule,
            timezone: j.timezone,
            last_run,
            config_errors: Vec::new(),
        })
    }

    /// A job the ledger knows only from its invalid file (it never ran).
    pub fn invalid(name: &str) -> JobStatus {
        JobStatus {
            name: name.to_string(),
            state: "invalid",
            consecutive_failures: 0,
            last_error: None,
            direction: String::new(),
            local: String::new(),
            remote: String::new(),
            schedule: None,
            timezone: None,
            next_run: None,
            last_success: None,
            synced_files: 0,
            last_run: None,
            config_errors: Vec::new(),
        }
    }
}

/// Joins the invalid job files the agent recorded to their jobs: a job no version of which
/// runs is `invalid` (its `last_error` is the file's error, its `next_run` null); a job whose
/// last valid version still runs keeps its state and shows the errors beside it.
pub fn with_invalid_files(out: &mut Vec<JobStatus>, invalid: Vec<JobFileError>) {
    for e in invalid {
        let at = match out.iter().position(|j| j.name == e.job) {
            Some(at) => at,
            None => {
                out.push(JobStatus::invalid(&e.job));
                out.len() - 1
            }
        };
        let j = &mut out[at];
        if !e.kept_previous {
            j.state = "invalid";
            j.next_run = None;
        }
        if j.state == "invalid" && j.config_errors.is_empty() {
            j.last_error = Some(e.error.clone());
        }
        j.config_errors.push(e.error);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
}
