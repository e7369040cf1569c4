//! The pure core: what a run decides, from values alone. The plan turns the ledger's rows and
//! both sides' snapshots into actions; snapshots, scopes and relative paths are the values it
//! works on. Nothing here does I/O or knows about FTP, SQLite or the clock, so every decision
//! is tested without a server (property tests in `plan`).
//!
//! May import: nothing of the crate's other layers.

pub(crate) mod after;
pub(crate) mod age;
pub(crate) mod bandwidth;
pub(crate) mod baseline;
pub(crate) mod marker;
pub(crate) mod notify;
pub(crate) mod parallel;
pub(crate) mod paths;
pub(crate) mod plan;
pub(crate) mod policy;
pub(crate) mod scope;
pub(crate) mod settle;
pub(crate) mod snapshot;

pub use notify::{Event, EventSet, Health, Payload};
pub use plan::{Action, SyncPlan};
pub use policy::{Direction, MaxDelete, SyncMode};
pub use snapshot::Entry;
