//! ferrysync: unattended, scheduled directory sync over FTPS.
//!
//! The pipeline runs one way: [`config`] -> trigger ([`agent`]) -> [`scan`] -> [`plan`] ->
//! execute ([`transfer`], over [`ftps`]) -> [`ledger`] -> status ([`cli`]). [`job_run`] wires
//! the stages of one run together; in a full run [`walk`] drives scan and plan one directory
//! at a time, so that no whole tree is held in memory.

pub mod agent;
pub mod cli;
pub mod config;
pub mod data_channel;
pub mod ftps;
pub mod job_run;
pub mod ledger;
pub mod listing;
pub mod lock;
pub mod loopback;
pub mod plan;
pub mod scan;
pub mod scope;
pub mod snapshot;
pub mod tls;
pub mod transfer;
pub mod walk;
pub mod watch;
