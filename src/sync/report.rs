//! What a run did, as the agent's log and the command line tell it: the counts, the failed
//! paths, and one summary line.

use std::time::Duration;

use crate::model::plan::SyncPlan;
use crate::state::ledger::{Outcome, PathFailure, RunCounts};
use crate::sync::error::RunError;

/// What a run did.
#[derive(Debug)]
pub struct RunReport {
    pub job: String,
    pub outcome: Outcome,
    pub counts: RunCounts,
    pub failures: Vec<PathFailure>,
    /// Why the run as a whole failed, if it did.
    pub error: Option<RunError>,
    /// The plan (kept for `--dry-run`).
    pub plan: Option<SyncPlan>,
    pub elapsed: Duration,
    /// The run's row in the history (none for a dry run).
    pub run_id: Option<i64>,
    /// The run stopped on request before its end.
    pub interrupted: bool,
}

impl RunReport {
    /// One line for people and scripts alike.
    pub fn summary(&self) -> String {
        let c = &self.counts;
        let mut s = format!(
            "{}: {} ({} uploaded, {}; {} downloaded, {}; {} deleted; {} failed) in {:.1}s",
            self.job,
            match self.outcome {
                Outcome::Ok => "ok",
                Outcome::Partial => "finished with failures",
                Outcome::Failed => "FAILED",
                Outcome::Running => "running",
                Outcome::Interrupted => "interrupted (the next run resumes)",
            },
            c.files_up,
            human_bytes(c.bytes_up),
            c.files_down,
            human_bytes(c.bytes_down),
            c.files_deleted,
            c.files_failed,
            self.elapsed.as_secs_f64()
        );
        if let Some(e) = &self.error {
            s.push_str(&format!("\n  error: {e}"));
        }
        for f in self.failures.iter().take(20) {
            s.push_str(&format!("\n  failed: {}: {}", f.path, f.error));
        }
        if self.failures.len() > 20 {
            s.push_str(&format!(
                "\n  ... and {} more failed paths (see `ferrysync history`)",
                self.failures.len() - 20
            ));
        }
        s
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
