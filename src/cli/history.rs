//! `ferrysync history JOB [--limit N] [--json]`: past runs of a job, newest first.

use super::{iso_time, shown, CmdResult, Failure, StateArg};
use ferrysync::state::{Ledger, RunRecord};
use ferrysync::sync::human_bytes;

/// Show past runs of a job.
#[derive(Debug, clap::Args)]
pub struct HistoryCmd {
    job: String,
    /// How many runs to show.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// One JSON document: an array of runs (fields documented in the README).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    state: StateArg,
}

impl HistoryCmd {
    pub fn execute(self) -> CmdResult {
        let runs = match Ledger::open_read_only(&self.state.path)? {
            Some(ledger) => ledger.runs(&self.job, self.limit)?,
            None => Vec::new(),
        };
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&runs).map_err(Failure::run)?
            );
            return Ok(());
        }
        if runs.is_empty() {
            println!(
                "job `{}` has no runs in {}",
                self.job,
                self.state.path.display()
            );
            return Ok(());
        }
        for line in lines(&runs) {
            println!("{line}");
        }
        Ok(())
    }
}

/// The text form: a header, one row per run, and its error below it (shown escaped).
fn lines(runs: &[RunRecord]) -> Vec<String> {
    let mut out = vec![format!(
        "{:>6} {:<21} {:<9} {:<8} {:>14} {:>14} {:>6} {:>6}",
        "RUN", "STARTED", "TRIGGER", "OUTCOME", "UP", "DOWN", "DEL", "FAILED"
    )];
    for r in runs {
        out.push(format!(
            "{:>6} {:<21} {:<9} {:<8} {:>14} {:>14} {:>6} {:>6}",
            r.id,
            iso_time(r.started_at),
            shown(&r.trigger),
            r.outcome.to_string(),
            format!("{} ({})", r.counts.files_up, human_bytes(r.counts.bytes_up)),
            format!(
                "{} ({})",
                r.counts.files_down,
                human_bytes(r.counts.bytes_down)
            ),
            r.counts.files_deleted,
            r.counts.files_failed
        ));
        if let Some(e) = &r.error {
            out.push(format!("       error: {}", shown(e)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrysync::state::{Outcome, RunCounts};

    #[test]
    fn a_hostile_error_stays_on_its_own_line() {
        let run = RunRecord {
            id: 3,
            job: "j".into(),
            trigger: "manual".into(),
            started_at: 0,
            ended_at: Some(1),
            outcome: Outcome::Failed,
            counts: RunCounts::default(),
            error: Some("x\u{1b}[2J: 550\r\n     4 1970-01-01T00:00:00Z manual    ok".into()),
            failures: Vec::new(),
            progress: None,
        };
        let out = lines(std::slice::from_ref(&run));
        assert_eq!(out.len(), 3, "{out:#?}");
        assert_eq!(
            out[2],
            "       error: x\\e[2J: 550\\r\\n     4 1970-01-01T00:00:00Z manual    ok"
        );
        let json = serde_json::to_value(&run).unwrap();
        assert_eq!(json["error"], run.error.clone().unwrap());
    }
}
