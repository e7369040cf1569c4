//! What the ledger says of each job as a whole, for monitoring (`status --prometheus`, the
//! agent's `/metrics`): counts summed over every run the history holds, the latest run and
//! success, the failing streak, and a running run's progress.
//!
//! Counters must never go down. They are sums over `runs`, and the only rows ever removed
//! from it are idle polls (`Ledger::fold_idle_poll`): an `ok` run that moved, failed, adopted,
//! retried and fell back nothing, so it takes nothing out of a sum, and it is counted in
//! `jobs.polls` instead, which [`JobTotals::runs_ok`] adds back. Whatever prunes the history
//! one day must first carry the pruned rows' counts over in the same way.

use rusqlite::params;

use crate::state::ledger::{Ledger, LedgerError, RunProgress};

/// One job's totals (see the module's docs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobTotals {
    pub job: String,
    /// `push` or `pull`: the job's direction as last run.
    pub direction: String,
    pub files_up: u64,
    pub bytes_up: u64,
    pub files_down: u64,
    pub bytes_down: u64,
    pub files_deleted: u64,
    pub files_failed: u64,
    pub files_adopted: u64,
    pub retries: u64,
    pub tls_fallbacks: u64,
    /// Runs by how they ended; `runs_ok` includes the idle polls folded out of the history.
    pub runs_ok: u64,
    pub runs_partial: u64,
    pub runs_failed: u64,
    pub runs_interrupted: u64,
    /// Unix seconds: the latest end of an `ok` run, or start of a folded idle poll (also a
    /// success), whichever is later.
    pub last_success: Option<i64>,
    /// Unix seconds: when the latest finished run ended (its start, for a run a dead process
    /// left, which has no end), or the latest folded idle poll began, whichever is later.
    pub last_run: Option<i64>,
    /// Seconds the latest finished run in the history took (idle polls keep no duration).
    pub last_run_duration: Option<i64>,
    /// Runs that ended `failed` or `partial` since the latest success (`interrupted` runs are
    /// neither), as `status` counts them, idle polls included as successes.
    pub consecutive_failures: u64,
    /// The newest run has started and not ended.
    pub running: bool,
    /// Its progress, once it has published some.
    pub progress: Option<RunProgress>,
}

impl Ledger {
    /// The totals of every job the ledger knows, by name.
    pub fn job_totals(&self) -> Result<Vec<JobTotals>, LedgerError> {
        let mut out = self.query_rows(
            "SELECT j.name, j.direction, j.polls, j.last_poll_at,
                    coalesce(sum(r.files_up), 0), coalesce(sum(r.bytes_up), 0),
                    coalesce(sum(r.files_down), 0), coalesce(sum(r.bytes_down), 0),
                    coalesce(sum(r.files_deleted), 0), coalesce(sum(r.files_failed), 0),
                    coalesce(sum(r.files_adopted), 0), coalesce(sum(r.retries), 0),
                    coalesce(sum(r.tls_fallbacks), 0),
                    count(CASE r.outcome WHEN 'ok' THEN 1 END),
                    count(CASE r.outcome WHEN 'partial' THEN 1 END),
                    count(CASE r.outcome WHEN 'failed' THEN 1 END),
                    count(CASE r.outcome WHEN 'interrupted' THEN 1 END),
                    max(CASE r.outcome WHEN 'ok' THEN r.ended_at END)
             FROM jobs j LEFT JOIN runs r ON r.job = j.name
             GROUP BY j.name ORDER BY j.name",
            [],
            |r| {
                let n = |i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
                let last_poll: Option<i64> = r.get(3)?;
                let last_ok: Option<i64> = r.get(17)?;
                Ok(JobTotals {
                    job: r.get(0)?,
                    direction: r.get(1)?,
                    files_up: n(4)?,
                    bytes_up: n(5)?,
                    files_down: n(6)?,
                    bytes_down: n(7)?,
                    files_deleted: n(8)?,
                    files_failed: n(9)?,
                    files_adopted: n(10)?,
                    retries: n(11)?,
                    tls_fallbacks: n(12)?,
                    runs_ok: n(13)? + n(2)?,
                    runs_partial: n(14)?,
                    runs_failed: n(15)?,
                    runs_interrupted: n(16)?,
                    last_success: last_ok.max(last_poll),
                    last_run: last_poll,
                    ..JobTotals::default()
                })
            },
        )?;
        for t in &mut out {
            self.add_latest_runs(t)?;
        }
        Ok(out)
    }

    /// The latest finished run, the failing streak and a running run's progress of `t`.
    fn add_latest_runs(&self, t: &mut JobTotals) -> Result<(), LedgerError> {
        let last_poll = t.last_run;
        let latest: Vec<(i64, Option<i64>)> = self.query_rows(
            "SELECT started_at, ended_at FROM runs
             WHERE job = ?1 AND outcome != 'running' ORDER BY id DESC LIMIT 1",
            params![t.job],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if let Some((started, ended)) = latest.first() {
            t.last_run = t.last_run.max(Some(ended.unwrap_or(*started)));
            t.last_run_duration = ended.map(|e| (e - started).max(0));
        }
        // A failure before the latest idle poll is over: that poll succeeded.
        let streak: Vec<i64> = self.query_rows(
            "SELECT count(*) FROM runs
             WHERE job = ?1 AND outcome IN ('failed', 'partial')
               AND id > coalesce((SELECT max(id) FROM runs WHERE job = ?1 AND outcome = 'ok'), 0)
               AND coalesce(ended_at, started_at) > coalesce(?2, -1)",
            params![t.job, last_poll],
            |r| r.get(0),
        )?;
        t.consecutive_failures = streak.first().map_or(0, |n| (*n).max(0) as u64);
        let newest: Vec<(String, Option<String>)> = self.query_rows(
            "SELECT outcome, progress FROM runs WHERE job = ?1 ORDER BY id DESC LIMIT 1",
            params![t.job],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if let Some((outcome, progress)) = newest.into_iter().next() {
            t.running = outcome == "running";
            if t.running {
                t.progress = progress.and_then(|p| serde_json::from_str(&p).ok());
            }
        }
        Ok(())
    }
}
