//! One run of one job: survey both sides against the ledger (a full walk, one directory at a
//! time, or only the paths a watch saw change), plan, then execute on a pool of connections:
//! directories, transfers (temporary name, verification, rename), deletes; each path recorded
//! in the ledger only once its transfer is committed.
//!
//! May import: `model`, `config`, `state`, `remote`.

pub(crate) mod after_transfer;
pub(crate) mod bandwidth;
pub(crate) mod context;
pub(crate) mod destination;
pub(crate) mod error;
pub(crate) mod markers;
pub(crate) mod notify;
pub(crate) mod options;
pub(crate) mod report;
pub(crate) mod retry;
pub(crate) mod run;
pub(crate) mod scan;
pub(crate) mod settle_wait;
pub(crate) mod stop;
pub(crate) mod survey;
pub(crate) mod transfer;
pub(crate) mod walk;
pub(crate) mod workers;

pub use error::RunError;
pub use notify::{
    signature, Notifier, EVENT_HEADER, RETRY_DELAYS, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
pub use options::{ProgressObserver, RunOptions, TransferProgress};
pub use report::{escape_controls, human_bytes, RunReport};
pub use run::run_job;
pub use stop::interrupt_runs_in_progress;
