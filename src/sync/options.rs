//! What the caller of a run decides: why it runs, whether it changes anything, when to stop,
//! what to look at, and who is told how the transfers go.

use std::sync::Arc;

use crate::model::scope::Scope;

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// What started the run: `manual`, `schedule`, `watch`, `poll`, `demo`.
    pub trigger: String,
    pub dry_run: bool,
    /// Told how the transfers are going, about four times a second and once at their end
    /// (the command line draws its progress line from it).
    pub progress: Option<ProgressObserver>,
    /// Turns true when the run must stop (SIGTERM, Ctrl-C): no new file is started, and files
    /// in flight stop at their next checkpoint, to be resumed by the next run.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// Only these changed paths need looking at (a watch-triggered run of a push job); `None`:
    /// a full run, both trees compared from top to bottom.
    pub scope: Option<Scope>,
}

/// How far a run's transfers are: what a [`ProgressObserver`] is shown.
#[derive(Debug, Clone, Copy)]
pub struct TransferProgress<'a> {
    pub job: &'a str,
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// A file being transferred now (the first by name of those in flight), if any.
    pub current: Option<&'a str>,
    /// How many files are being transferred now.
    pub in_flight: usize,
    /// The last call: every transfer has ended.
    pub finished: bool,
}

/// A callback for [`TransferProgress`]; it runs on the run's coordinating task, so it must be
/// quick.
#[derive(Clone)]
pub struct ProgressObserver(pub Arc<dyn Fn(&TransferProgress<'_>) + Send + Sync>);

impl std::fmt::Debug for ProgressObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressObserver")
    }
}

impl RunOptions {
    pub fn stop_requested(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| *s.borrow())
    }
}
