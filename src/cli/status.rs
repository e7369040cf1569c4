//! `ferrysync status [JOB] [--json]`: last run, next run, counts and errors of each job, read
//! from the ledger (never from the job files, so it works while a run holds the server).

use serde::Serialize;

use super::{iso_time, shown, CmdResult, Failure, StateArg};
use ferrysync::state::{JobRecord, Ledger, LedgerError, Outcome, RunRecord};
use ferrysync::sync::human_bytes;

/// Show what each job did and will do next.
#[derive(Debug, clap::Args)]
pub struct StatusCmd {
    /// Only this job.
    job: Option<String>,
    /// One JSON document (fields documented in the README).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    state: StateArg,
}

/// One job in `status --json`.
#[derive(Debug, Serialize)]
pub struct JobStatus {
    pub name: String,
    /// `running` (a run has started and not ended), `failing` (the latest run ended `failed`
    /// or `partial`) or `idle`.
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
}

#[derive(Debug, Serialize)]
struct StatusJson {
    state: String,
    jobs: Vec<JobStatus>,
}

/// The next time a cron schedule fires after now, in its time zone (the agent's DST rule).
pub fn next_run(schedule: Option<&str>, timezone: Option<&str>) -> Option<String> {
    let schedule = ferrysync::config::Schedule::parse(schedule?).ok()?;
    let tz = timezone.and_then(|t| t.parse::<chrono_tz::Tz>().ok());
    let next = ferrysync::agent::next_fire(&schedule, tz, chrono::Utc::now())?;
    Some(iso_time(next.timestamp()))
}

impl StatusCmd {
    pub fn execute(self) -> CmdResult {
        let Some(ledger) = Ledger::open_read_only(&self.state.path)? else {
            return self.without_ledger();
        };
        let mut jobs = ledger.jobs()?;
        if let Some(name) = &self.job {
            jobs.retain(|j| &j.name == name);
            if jobs.is_empty() {
                return Err(Failure::config(format!(
                    "job `{name}` has never run (no record in {})",
                    self.state.path.display()
                )));
            }
        }
        let out = jobs
            .into_iter()
            .map(|j| JobStatus::of(&ledger, j))
            .collect::<Result<Vec<_>, _>>()?;
        if self.json {
            return self.print_json(out);
        }
        if out.is_empty() {
            println!("no job has run yet (ledger {})", self.state.path.display());
            return Ok(());
        }
        print_table(&out);
        Ok(())
    }

    /// No ledger yet: nothing has run.
    fn without_ledger(&self) -> CmdResult {
        if let Some(name) = &self.job {
            return Err(Failure::config(format!(
                "job `{name}` has never run (no ledger at {})",
                self.state.path.display()
            )));
        }
        if self.json {
            return self.print_json(Vec::new());
        }
        println!(
            "no job has run yet (no ledger at {})",
            self.state.path.display()
        );
        Ok(())
    }

    fn print_json(&self, jobs: Vec<JobStatus>) -> CmdResult {
        let doc = StatusJson {
            state: self.state.path.display().to_string(),
            jobs,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(Failure::run)?
        );
        Ok(())
    }
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
        })
    }
}

/// The human form: one row per job, with progress, failures and errors below it.
fn print_table(out: &[JobStatus]) {
    for line in table(out) {
        println!("{line}");
    }
}

/// The lines of [`print_table`]. Names, paths and errors are shown escaped.
fn table(out: &[JobStatus]) -> Vec<String> {
    let mut lines = vec![format!(
        "{:<20} {:<8} {:<5} {:<21} {:<8} {:>6} {:>6} {:>6} {:>6} {:>8}  NEXT RUN",
        "JOB", "STATE", "DIR", "LAST RUN", "OUTCOME", "UP", "DOWN", "DEL", "FAILED", "FILES"
    )];
    for j in out {
        let (when, outcome, up, down, del, failed) = match &j.last_run {
            Some(r) => (
                iso_time(r.started_at),
                r.outcome.to_string(),
                r.counts.files_up,
                r.counts.files_down,
                r.counts.files_deleted,
                r.counts.files_failed,
            ),
            None => ("never".into(), "-".into(), 0, 0, 0, 0),
        };
        lines.push(format!(
            "{:<20} {:<8} {:<5} {:<21} {:<8} {:>6} {:>6} {:>6} {:>6} {:>8}  {}",
            shown(&j.name),
            j.state,
            j.direction,
            when,
            outcome,
            up,
            down,
            del,
            failed,
            j.synced_files,
            j.next_run.as_deref().unwrap_or("-")
        ));
        details(j, &mut lines);
    }
    lines
}

/// What follows a job's row: live progress, a failing streak, the last run's errors.
fn details(j: &JobStatus, lines: &mut Vec<String>) {
    if let Some(p) = j.last_run.as_ref().and_then(|r| r.progress.as_ref()) {
        lines.push(format!(
            "  progress: {}/{} files, {} of {}",
            p.files_done,
            p.files_total,
            human_bytes(p.bytes_done),
            human_bytes(p.bytes_total)
        ));
        for f in &p.current {
            lines.push(format!("  transferring: {}", shown(f)));
        }
    }
    if j.consecutive_failures > 1 {
        lines.push(format!(
            "  {} runs in a row have failed",
            j.consecutive_failures
        ));
    }
    if let Some(r) = &j.last_run {
        if let Some(e) = &r.error {
            lines.push(format!("  error: {}", shown(e)));
        }
        for f in r.failures.iter().take(5) {
            lines.push(format!("  failed: {}: {}", shown(&f.path), shown(&f.error)));
        }
    }
}

impl StatusCmd {
    /// `status` for every job, as `demo` prints it at the end.
    pub fn for_demo(state: StateArg) -> StatusCmd {
        StatusCmd {
            job: None,
            json: false,
            state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrysync::state::RunCounts;
    use serde_json::json;

    const HOSTILE: &str = "in/\u{1b}]0;pwned\u{7}\u{1b}[2Jx.csv\r\nnightly  idle     push  never";

    fn hostile_job() -> JobStatus {
        JobStatus {
            name: "nightly".into(),
            state: "running",
            consecutive_failures: 2,
            last_error: Some(format!("{HOSTILE}: 550 denied")),
            direction: "push".into(),
            local: "/srv/out".into(),
            remote: "/in".into(),
            schedule: None,
            timezone: None,
            next_run: None,
            last_success: None,
            synced_files: 3,
            last_run: Some(RunRecord {
                id: 7,
                job: "nightly".into(),
                trigger: "watch".into(),
                started_at: 0,
                ended_at: None,
                outcome: Outcome::Running,
                counts: RunCounts::default(),
                error: Some(format!("550 \u{9b}2J{HOSTILE}")),
                // The ledger's types, built the way the ledger reads them back.
                failures: serde_json::from_value(
                    json!([{"path": HOSTILE, "error": "451 bad\nnext"}]),
                )
                .unwrap(),
                progress: Some(
                    serde_json::from_value(json!({
                        "files_done": 1, "files_total": 2, "bytes_done": 1, "bytes_total": 2,
                        "current": [HOSTILE],
                    }))
                    .unwrap(),
                ),
            }),
        }
    }

    #[test]
    fn the_table_shows_hostile_names_escaped_and_json_keeps_them_exact() {
        let lines = table(&[hostile_job()]);
        // Header, row, progress, transferring, streak, error, failed: one line each.
        assert_eq!(lines.len(), 7, "{lines:#?}");
        for l in &lines {
            assert!(!l.chars().any(char::is_control), "{l:?}");
        }
        assert_eq!(
            lines[3],
            "  transferring: in/\\e]0;pwned\\x07\\e[2Jx.csv\\r\\nnightly  idle     push  never"
        );
        assert!(
            lines[5].starts_with("  error: 550 \\u{9b}2Jin/\\e]0;"),
            "{}",
            lines[5]
        );
        assert!(lines[6].ends_with(": 451 bad\\nnext"), "{}", lines[6]);
        let json = serde_json::to_value(hostile_job()).unwrap();
        assert_eq!(json["last_run"]["failures"][0]["path"], HOSTILE);
        assert_eq!(json["last_run"]["progress"]["current"][0], HOSTILE);
    }
}
