//! `ferrysync run`: the agent, until SIGTERM or Ctrl-C.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use super::{runtime, CmdResult, Failure, JobsArg, StateArg};
use crate::ledger::Ledger;

/// Run the agent: schedules and polls until SIGTERM.
#[derive(Debug, clap::Args)]
pub struct RunCmd {
    #[command(flatten)]
    jobs: JobsArg,
    #[command(flatten)]
    state: StateArg,
}

impl RunCmd {
    pub fn execute(self) -> CmdResult {
        let jobs = crate::config::load_jobs(&self.jobs.dir)?;
        let ledger = Arc::new(Mutex::new(Ledger::open(&self.state.path)?));
        tracing::info!(jobs = jobs.len(), state = %self.state.path.display(), "ferrysync agent starting");
        runtime()?.block_on(async move {
            let (tx, rx) = tokio::sync::watch::channel(false);
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .map_err(|e| Failure::run(format!("cannot watch SIGTERM: {e}")))?;
            let agent = tokio::spawn(crate::agent::run_agent(jobs, ledger, rx));
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("stopping: waiting for running jobs to finish");
            let _ = tx.send(true);
            let _ = agent.await;
            tracing::info!("stopped");
            Ok(ExitCode::SUCCESS)
        })
    }
}
