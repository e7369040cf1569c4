//! What ferrysync remembers between runs and processes: the SQLite ledger (synced rows, run
//! history, the journal of transfers in flight) and the lock that keeps one run of a job at a
//! time; and the audit record of every file a run changed (`audit.rs`).
//!
//! May import: `model`, `config`.

pub(crate) mod audit;
pub(crate) mod clock;
pub(crate) mod ledger;
pub(crate) mod link;
pub(crate) mod lock;
pub(crate) mod totals;

pub use clock::{iso_time, now_unix};
pub use ledger::RunProgress;
pub use totals::JobTotals;

use std::sync::{Arc, Mutex, MutexGuard};

pub use audit::{
    key_path as audit_key_path, AuditRecord, ChainBreak, ChainReport, HeadCheck, AUDIT_KEY_ENV,
};
pub use ledger::{
    AuditFilter, CertificateExpiry, JobFileError, JobRecord, Ledger, LedgerError, Outcome,
    RunCounts, RunRecord,
};

/// The ledger, shared by a run's tasks and by the agent's runners; writes happen on one task
/// at a time.
#[derive(Clone)]
pub struct SharedLedger(Arc<Mutex<Ledger>>);

impl SharedLedger {
    pub fn new(ledger: Ledger) -> SharedLedger {
        SharedLedger(Arc::new(Mutex::new(ledger)))
    }

    /// The ledger, for one short piece of work. A panic while another holder had it cannot
    /// leave SQLite inconsistent (each write is a transaction), so a poisoned lock is taken over.
    pub fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
