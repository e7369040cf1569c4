//! What the stages of one run share (the survey, the transfers, the settle wait), handed down
//! as one value by `run.rs`.

use std::sync::Arc;

use crate::config::Job;
use crate::remote::tls::TlsContext;
use crate::state::SharedLedger;
use crate::sync::options::RunOptions;
use crate::sync::retry::RunTally;

/// What the stages of one run share: the job, the ledger, the caller's options, the run's TLS
/// context (session cache, TLS 1.2 fall-back) and its tally of retries.
#[derive(Clone, Copy)]
pub(crate) struct RunContext<'a> {
    pub job: &'a Job,
    pub ledger: &'a SharedLedger,
    pub opts: &'a RunOptions,
    pub tls: &'a Arc<TlsContext>,
    pub tally: &'a RunTally,
}
