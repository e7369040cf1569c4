//! Stopping a run on request (SIGTERM, Ctrl-C, the agent's shutdown), promptly: the stop signal
//! as every wait of a run races it ([`StopSignal`]), the grace a transfer in flight gets to
//! reach its checkpoint ([`STOP_GRACE`]), and the runs this process has in progress, so that a
//! run cut off (its future dropped, or the process forced to exit by a second signal) is
//! recorded `interrupted` in the ledger instead of being left `running`.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use crate::state::ledger::{Outcome, RunCounts};
use crate::state::SharedLedger;

/// After a stop request, how long a transfer in flight may take to reach its next checkpoint
/// (written at least every 2 s while bytes flow) before it is cut off where it is. Either way
/// nothing is renamed into place half-done, and the next run resumes from the journal.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(2);

/// The stop signal of a run; `None` inside: the run is never asked to stop.
#[derive(Debug, Clone, Default)]
pub(crate) struct StopSignal(Option<watch::Receiver<bool>>);

impl StopSignal {
    pub(crate) fn new(stop: Option<watch::Receiver<bool>>) -> StopSignal {
        StopSignal(stop)
    }

    pub(crate) fn requested(&self) -> bool {
        self.0.as_ref().is_some_and(|s| *s.borrow())
    }

    /// Resolves once a stop is requested; never, if none can be (no signal, or its sender is
    /// gone without asking).
    pub(crate) async fn wait(&self) {
        let Some(rx) = &self.0 else {
            return std::future::pending().await;
        };
        let mut rx = rx.clone();
        if rx.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves `grace` after a stop is requested.
    pub(crate) async fn wait_then(&self, grace: Duration) {
        self.wait().await;
        tokio::time::sleep(grace).await;
    }

    /// Runs `work` until it ends or a stop is requested, whichever comes first; `None`: the
    /// stop came first and `work` was dropped where it was waiting.
    pub(crate) async fn race<F: Future>(&self, work: F) -> Option<F::Output> {
        if self.requested() {
            return None;
        }
        tokio::select! {
            biased;
            _ = self.wait() => None,
            done = work => Some(done),
        }
    }
}

/// The runs this process has begun in the ledger and not yet finished.
static IN_PROGRESS: Mutex<Vec<(SharedLedger, i64)>> = Mutex::new(Vec::new());

/// What the ledger says of a run that was cut off.
const CUT_OFF: &str =
    "stopped on request before the run ended; the next run resumes what was in flight";

/// A run's row in the history while the run is in progress. Dropped without [`OpenRun::done`]
/// (the run's future dropped: the agent's stop timeout, the end of the process), it records the
/// run `interrupted`.
pub(crate) struct OpenRun {
    ledger: SharedLedger,
    id: i64,
    finished: bool,
}

impl OpenRun {
    pub(crate) fn new(ledger: &SharedLedger, id: i64) -> OpenRun {
        lock_in_progress().push((ledger.clone(), id));
        OpenRun {
            ledger: ledger.clone(),
            id,
            finished: false,
        }
    }

    /// The run is finished (its row written by the caller).
    pub(crate) fn done(mut self) {
        self.finished = true;
    }
}

impl Drop for OpenRun {
    fn drop(&mut self) {
        forget(self.id);
        if !self.finished {
            mark_interrupted(&self.ledger, self.id);
        }
    }
}

fn lock_in_progress() -> std::sync::MutexGuard<'static, Vec<(SharedLedger, i64)>> {
    IN_PROGRESS.lock().unwrap_or_else(|p| p.into_inner())
}

fn forget(id: i64) {
    lock_in_progress().retain(|(_, i)| *i != id);
}

fn mark_interrupted(ledger: &SharedLedger, id: i64) {
    let counts = RunCounts::default();
    if let Err(e) = ledger
        .lock()
        .finish_run(id, Outcome::Interrupted, &counts, Some(CUT_OFF), &[])
    {
        tracing::error!("cannot record the interrupted run {id}: {e}");
    }
}

/// Records every run this process has in progress as `interrupted`: called just before the
/// process exits without waiting for them (a second SIGTERM or Ctrl-C, the agent's stop
/// timeout). Returns how many there were.
pub fn interrupt_runs_in_progress() -> usize {
    let open = std::mem::take(&mut *lock_in_progress());
    for (ledger, id) in &open {
        mark_interrupted(ledger, *id);
    }
    open.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_race_ends_when_the_stop_comes_and_never_without_one() {
        let (tx, rx) = watch::channel(false);
        let stop = StopSignal::new(Some(rx));
        let slow = tokio::time::sleep(Duration::from_secs(3600));
        let raced = tokio::spawn({
            let stop = stop.clone();
            async move { stop.race(slow).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send(true).unwrap();
        assert_eq!(raced.await.unwrap(), None);
        assert!(stop.requested());
        // Asked before it starts: the work is not begun.
        assert_eq!(stop.race(async { 1 }).await, None);
        // No signal: the work decides.
        assert_eq!(StopSignal::default().race(async { 2 }).await, Some(2));
        // A sender gone without asking never stops anything.
        let (tx, rx) = watch::channel(false);
        drop(tx);
        assert_eq!(StopSignal::new(Some(rx)).race(async { 3 }).await, Some(3));
    }

    #[test]
    fn a_run_dropped_unfinished_is_recorded_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let ledger =
            SharedLedger::new(crate::state::Ledger::open(&dir.path().join("l.db")).unwrap());
        let begin = || ledger.lock().begin_run("j", "manual").unwrap();
        let outcome = |id: i64| {
            let runs = ledger.lock().runs("j", 10).unwrap();
            runs.into_iter().find(|r| r.id == id).unwrap().outcome
        };
        // Finished: the caller's outcome stands.
        let a = begin();
        OpenRun::new(&ledger, a).done();
        assert_eq!(outcome(a), Outcome::Running);
        // Dropped unfinished (a run's future dropped).
        let b = begin();
        drop(OpenRun::new(&ledger, b));
        assert_eq!(outcome(b), Outcome::Interrupted);
        // (`interrupt_runs_in_progress`, for a forced exit, would touch the runs of every test
        // in this process: the integration tests' second signal covers it.)
    }
}
