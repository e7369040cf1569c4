//! `ferrysync status [JOB] [--json]`: last run, next run, counts and errors of each job, read
//! from the ledger (never from the job files, so it works while a run holds the server).

use super::{iso_time, shown, CmdResult, Failure, StateArg};
// The document is built in the library, shared with the listener's `/api/status`.
use ferrysync::agent::job_statuses;
pub use ferrysync::agent::{JobStatus, StatusDoc};
use ferrysync::state::Ledger;
use ferrysync::sync::human_bytes;

/// Show what each job did and will do next.
#[derive(Debug, clap::Args)]
pub struct StatusCmd {
    /// Only this job.
    job: Option<String>,
    /// One JSON document (fields documented in the README).
    #[arg(long)]
    json: bool,
    /// Every job's metrics in Prometheus text format (see "Metrics" in the README).
    #[arg(long, conflicts_with_all = ["job", "json"])]
    prometheus: bool,
    /// The metrics written to PATH atomically (a temporary file renamed over it), for
    /// node_exporter's textfile collector.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["job", "json", "prometheus"])]
    prometheus_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    state: StateArg,
}

impl StatusCmd {
    pub fn execute(self) -> CmdResult {
        if self.prometheus || self.prometheus_file.is_some() {
            return self.print_prometheus();
        }
        let Some(ledger) = Ledger::open_read_only(&self.state.path)? else {
            return self.without_ledger();
        };
        let out = job_statuses(&ledger, self.job.as_deref())?;
        if let Some(name) = self.job.as_ref().filter(|_| out.is_empty()) {
            return Err(Failure::config(format!(
                "job `{name}` has never run (no record in {})",
                self.state.path.display()
            )));
        }
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

    /// `--prometheus`, `--prometheus-file`: the ledger's metrics (only `ferrysync_build_info`
    /// while there is no ledger yet).
    fn print_prometheus(&self) -> CmdResult {
        let ledger = Ledger::open_read_only(&self.state.path)?;
        let text = ferrysync::agent::ledger_metrics_text(ledger.as_ref()).map_err(Failure::run)?;
        match &self.prometheus_file {
            Some(path) => {
                ferrysync::agent::write_prometheus_file(path, &text).map_err(Failure::run)
            }
            None => {
                print!("{text}");
                Ok(())
            }
        }
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
        let doc = StatusDoc::of(&self.state.path, jobs);
        println!("{}", doc.to_json().map_err(Failure::run)?);
        Ok(())
    }
}

/// The human form: one row per job, with progress, failures and errors below it.
fn print_table(out: &[JobStatus]) {
    for line in table(out) {
        println!("{line}");
    }
}

/// The lines of [`print_table`]. Names, paths and errors are shown escaped. Each column is
/// as wide as its widest value (or its heading).
fn table(out: &[JobStatus]) -> Vec<String> {
    const HEADINGS: [&str; 11] = [
        "JOB", "STATE", "DIR", "LAST RUN", "OUTCOME", "UP", "DOWN", "DEL", "FAILED", "FILES",
        "NEXT RUN",
    ];
    /// Columns aligned to the right: the counts.
    const NUMERIC: std::ops::Range<usize> = 5..10;
    let rows: Vec<[String; 11]> = out
        .iter()
        .map(|j| {
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
            let dir = if j.direction.is_empty() {
                "-".to_string()
            } else {
                j.direction.clone()
            };
            [
                shown(&j.name),
                j.state.to_string(),
                dir,
                when,
                outcome,
                up.to_string(),
                down.to_string(),
                del.to_string(),
                failed.to_string(),
                j.synced_files.to_string(),
                j.next_run.as_deref().unwrap_or("-").to_string(),
            ]
        })
        .collect();
    let mut widths = HEADINGS.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 11]| -> String {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            if i > 0 {
                text.push_str(if i == 10 { "  " } else { " " });
            }
            if i == 10 {
                text.push_str(cell);
            } else if NUMERIC.contains(&i) {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                text.push_str(&" ".repeat(pad));
            }
        }
        text
    };
    let mut lines = vec![line(HEADINGS)];
    for (j, row) in out.iter().zip(&rows) {
        lines.push(line(row.each_ref().map(String::as_str)));
        details(j, &mut lines);
    }
    lines
}

/// Failed paths shown under a job's row; the rest are counted ("and N more").
const FAILED_PATHS_SHOWN: usize = 5;

/// What follows a job's row: invalid job files, live progress, a failing streak, the last
/// run's errors.
fn details(j: &JobStatus, lines: &mut Vec<String>) {
    for e in &j.config_errors {
        let note = if j.state == "invalid" {
            "invalid job file, not running"
        } else {
            "invalid job file, its last valid version keeps running"
        };
        lines.push(format!("  {note}: {}", shown(e)));
    }
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
        for f in r.failures.iter().take(FAILED_PATHS_SHOWN) {
            lines.push(format!("  failed: {}: {}", shown(&f.path), shown(&f.error)));
        }
        let failed = usize::try_from(r.counts.files_failed)
            .unwrap_or(usize::MAX)
            .max(r.failures.len());
        if failed > FAILED_PATHS_SHOWN {
            lines.push(format!(
                "  and {} more failed paths (`ferrysync history {} --json` lists them)",
                failed - FAILED_PATHS_SHOWN,
                shown(&j.name)
            ));
        }
    }
}

impl StatusCmd {
    /// `status` for every job, as `demo` prints it at the end.
    pub fn for_demo(state: StateArg) -> StatusCmd {
        StatusCmd {
            job: None,
            json: false,
            prometheus: false,
            prometheus_file: None,
            state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrysync::agent::with_invalid_files;
    use ferrysync::state::{JobFileError, Outcome, RunCounts, RunRecord};
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
            config_errors: Vec::new(),
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

    #[test]
    fn columns_fit_their_values_and_many_failures_are_counted() {
        let long_name = "a-job-name-much-longer-than-twenty-characters";
        let mut long = JobStatus::invalid(long_name);
        long.state = "failing";
        long.direction = "pull".into();
        let mut run = hostile_job().last_run.unwrap();
        run.progress = None;
        run.error = None;
        run.counts.files_failed = 12;
        run.counts.files_up = 1234567;
        run.failures = serde_json::from_value(json!((0..12)
            .map(|i| json!({"path": format!("f{i}"), "error": "550 no"}))
            .collect::<Vec<_>>()))
        .unwrap();
        long.last_run = Some(run);
        let short = JobStatus::invalid("j");
        let lines = table(&[long, short]);
        let header = &lines[0];
        // Every row's NEXT RUN starts where the heading does: no value pushed a column over.
        let at = header.find("NEXT RUN").unwrap();
        for row in lines.iter().filter(|l| !l.starts_with("  ")) {
            assert!(row[..at].ends_with("  "), "{lines:#?}");
            assert!(!row[at..].starts_with(' '), "{lines:#?}");
        }
        assert!(
            header.starts_with(&format!("JOB{}STATE", " ".repeat(long_name.len() - 3 + 1))),
            "{header}"
        );
        let failed: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with("  failed: "))
            .collect();
        assert_eq!(failed.len(), FAILED_PATHS_SHOWN, "{lines:#?}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("  and 7 more failed paths")),
            "{lines:#?}"
        );
    }

    #[test]
    fn an_invalid_job_file_makes_its_job_invalid_unless_a_previous_version_runs() {
        let mut out = vec![JobStatus::invalid("kept"), JobStatus::invalid("old")];
        for j in &mut out {
            j.state = "idle";
            j.next_run = Some("2026-01-01T00:00:00Z".into());
        }
        let err = |job: &str, kept_previous| JobFileError {
            file: format!("/jobs/{job}.yaml"),
            job: job.into(),
            error: format!("/jobs/{job}.yaml:3:1: unknown field `colour`"),
            kept_previous,
        };
        with_invalid_files(
            &mut out,
            vec![err("kept", true), err("new", false), err("old", false)],
        );
        let states: Vec<(&str, &str)> = out.iter().map(|j| (j.name.as_str(), j.state)).collect();
        assert_eq!(
            states,
            [("kept", "idle"), ("new", "invalid"), ("old", "invalid")]
        );
        assert_eq!(out[0].last_error, None);
        assert!(out[0].next_run.is_some());
        assert_eq!(
            out[1].last_error.as_deref(),
            Some("/jobs/new.yaml:3:1: unknown field `colour`")
        );
        assert_eq!(out[2].next_run, None);
        let lines = table(&out);
        assert!(lines.iter().any(|l| l == "  invalid job file, its last valid version keeps running: /jobs/kept.yaml:3:1: unknown field `colour`"), "{lines:#?}");
        assert!(
            lines.iter().any(|l| l
                == "  invalid job file, not running: /jobs/new.yaml:3:1: unknown field `colour`"),
            "{lines:#?}"
        );
        let json = serde_json::to_value(&out[1]).unwrap();
        assert_eq!(json["state"], "invalid");
        assert_eq!(
            json["config_errors"][0],
            "/jobs/new.yaml:3:1: unknown field `colour`"
        );
    }
}
