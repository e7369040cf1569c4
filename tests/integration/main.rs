//! The integration tests, one test binary (`cargo test --test integration`): the `ferrysync`
//! binary against real FTPS servers on 127.0.0.1. Every scenario runs against the in-process
//! loopback server, and against vsftpd (explicit and implicit), ProFTPD (explicit and implicit)
//! and Pure-FTPd when tests/servers/*.sh have started them (tests/run.sh does, and sets
//! FERRYSYNC_REQUIRE_SERVERS=1 so none can be skipped there). No test mocks the FTP protocol.
//!
//! `harness` is the fluent harness (servers, sandboxes, the fault proxy); `scenarios` holds the
//! scenarios run once per server; the other modules are named for what they test.

#[macro_use]
mod harness;

mod adopt;
mod agent;
mod ages;
mod archive;
mod audit;
mod bandwidth;
mod cli;
mod fault_proxy_selftest;
mod hostile_server;
mod initial;
mod listings;
mod markers;
mod metrics;
mod nat;
mod notify;
mod parallel;
mod polish;
mod probe;
mod restricted_servers;
mod resume;
mod round_trips;
mod safety;
mod scenarios;
mod settle;
mod status_page;
mod stops;
mod tls;
