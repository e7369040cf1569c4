//! `ferrysync sync JOB [--dry-run]`: run one job once, now.

use super::{runtime, shown, CmdResult, Failure, JobsArg, StateArg, SECRETS};
use ferrysync::model::Action;
use ferrysync::state::{Ledger, Outcome, SharedLedger};
use ferrysync::sync::{human_bytes, run_job, RunOptions};

/// Run one job once, now.
#[derive(Debug, clap::Args)]
pub struct SyncCmd {
    /// The job's name (its file name without .yaml).
    job: String,
    /// Print the plan and change nothing (the ledger included).
    #[arg(long)]
    dry_run: bool,
    /// No progress line, only the summary.
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    jobs: JobsArg,
    #[command(flatten)]
    state: StateArg,
}

impl SyncCmd {
    pub fn execute(self) -> CmdResult {
        let job = ferrysync::config::find_job(&self.jobs.dir, &self.job)?;
        SECRETS.add_job(&job);
        let ledger = SharedLedger::new(Ledger::open(&self.state.path)?);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let opts = RunOptions {
            trigger: "manual".into(),
            dry_run: self.dry_run,
            progress: if self.quiet {
                None
            } else {
                super::progress::on_terminal()
            },
            stop: Some(stop_rx),
            scope: None,
        };
        let report = runtime()?.block_on(async {
            // Ctrl-C or SIGTERM: stop at the next checkpoint; the next run resumes.
            tokio::spawn(async move {
                let term = async {
                    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    {
                        Ok(mut s) => {
                            s.recv().await;
                        }
                        Err(_) => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term => {}
                }
                eprintln!("ferrysync: stopping at the next checkpoint (the next run resumes)");
                let _ = stop_tx.send(true);
            });
            run_job(&job, &ledger, &opts).await
        });
        if let Some(plan) = &report.plan {
            for a in &plan.actions {
                let line = match a {
                    Action::MakeDir { path } => format!("mkdir    {}", shown(path)),
                    Action::Upload { path, source } => {
                        format!("upload   {} ({})", shown(path), human_bytes(source.size))
                    }
                    Action::Download { path, source } => {
                        format!("download {} ({})", shown(path), human_bytes(source.size))
                    }
                    Action::DeleteFile { path } => format!("delete   {}", shown(path)),
                    Action::DeleteDir { path } => format!("rmdir    {}", shown(path)),
                    Action::Record { path, .. } => {
                        format!("record   {} (unchanged content)", shown(path))
                    }
                    Action::Forget { path } => {
                        format!("forget   {} (gone from both sides)", shown(path))
                    }
                };
                println!("{line}");
            }
            for c in &plan.conflicts {
                println!("conflict {}: {}", shown(&c.path), shown(&c.reason));
            }
            println!(
                "dry run: {} transfers ({}), {} deletions; nothing was changed",
                plan.transfers(),
                human_bytes(plan.transfer_bytes()),
                plan.deletes()
            );
        }
        if report.plan.is_none() || report.outcome != Outcome::Ok {
            println!("{}", SECRETS.redact(&report.summary()));
        }
        match report.outcome {
            Outcome::Ok => Ok(()),
            // The summary just printed says what failed (the run's error, each failed path,
            // or that it was interrupted): each error is printed once.
            _ => Err(Failure::run_already_shown()),
        }
    }
}
