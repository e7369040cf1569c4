//! `ferrysync sync JOB [--dry-run]`: run one job once, now; and [`StopSignals`], how `sync` and
//! `run` take SIGINT and SIGTERM.

use tokio::signal::unix::{signal, Signal, SignalKind};

use super::{runtime, shown, CmdResult, Failure, JobsArg, StateArg, SECRETS};
use ferrysync::agent::NOTIFY_GRACE;
use ferrysync::model::Action;
use ferrysync::state::{Ledger, Outcome, SharedLedger};
use ferrysync::sync::{human_bytes, run_job, Notifier, RunOptions};

/// Run one job once, now.
///
/// Ctrl-C or SIGTERM stops the run within about 2 s (connecting, listing and retries at once;
/// files in flight at their next checkpoint), records it `interrupted` and exits 1; the next
/// run resumes. A second Ctrl-C or SIGTERM exits at once, with 130 (SIGINT) or 143 (SIGTERM).
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
        let rt = runtime()?;
        let report = rt.block_on(async {
            // Ctrl-C or SIGTERM: every wait of the run ends at once, files in flight stop at
            // their next checkpoint (or are cut off after 2 s); the run is recorded
            // `interrupted` and the next run resumes. A second signal exits at once.
            let mut signals = StopSignals::listen()?;
            tokio::spawn(async move {
                let (name, _) = signals.next().await;
                eprintln!("ferrysync: {name}: stopping (the next run resumes; a second Ctrl-C or SIGTERM exits at once)");
                let _ = stop_tx.send(true);
                signals.exit_on_next().await;
            });
            let report = run_job(&job, &ledger, &opts).await;
            // Cron users need alerts too: the run's notifications go out before the exit,
            // waited for a few seconds at most (a webhook that is down is logged, not waited
            // out); they never change the exit status.
            let notifier = Notifier::new();
            notifier.after_run(&job, &ledger, &report, &opts.trigger);
            notifier.wait(NOTIFY_GRACE).await;
            Ok::<_, Failure>(report)
        })?;
        // A blocking task the stop left behind (hashing a large file, say) must not hold the
        // exit.
        rt.shutdown_timeout(std::time::Duration::from_millis(500));
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
            for w in &plan.waiting {
                match &w.marker {
                    Some(marker) => println!(
                        "waiting  {} ({}): waiting for its ready marker {}",
                        shown(&w.path),
                        human_bytes(w.size),
                        shown(marker)
                    ),
                    None => println!(
                        "waiting  {} ({}): waiting to settle, unchanged for {:.0}s more",
                        shown(&w.path),
                        human_bytes(w.size),
                        (w.remaining_ns as f64 / 1e9).ceil()
                    ),
                }
            }
            println!(
                "dry run: {} transfers ({}), {} deletions{}; nothing was changed",
                plan.transfers(),
                human_bytes(plan.transfer_bytes()),
                plan.deletes(),
                match report.preexisting {
                    0 => String::new(),
                    n => format!("; {n} there before the job began, left alone"),
                }
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

/// SIGINT and SIGTERM, as `sync` and `run` take them: the first asks for a stop, a second one
/// exits at once.
pub(super) struct StopSignals {
    int: Signal,
    term: Signal,
}

impl StopSignals {
    /// Listens from now on (inside the runtime).
    pub(super) fn listen() -> Result<StopSignals, Failure> {
        let listen = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| Failure::run(format!("cannot watch {name}: {e}")))
        };
        Ok(StopSignals {
            int: listen(SignalKind::interrupt(), "SIGINT")?,
            term: listen(SignalKind::terminate(), "SIGTERM")?,
        })
    }

    /// The next SIGINT or SIGTERM: its name and the exit status a forced exit on it has
    /// (128 + the signal's number, as shells report a process the signal ended).
    pub(super) async fn next(&mut self) -> (&'static str, u8) {
        tokio::select! {
            _ = self.int.recv() => ("SIGINT", 130),
            _ = self.term.recv() => ("SIGTERM", 143),
        }
    }

    /// After a stop was asked for: on the next SIGINT or SIGTERM, records the runs still in
    /// progress `interrupted` and exits at once (130 or 143), without waiting for them. What
    /// they had in flight is resumed by the next run, as after a crash.
    pub(super) async fn exit_on_next(mut self) {
        let (name, status) = self.next().await;
        let cut = ferrysync::sync::interrupt_runs_in_progress();
        eprintln!("ferrysync: second {name}: exiting now ({cut} runs recorded as interrupted)");
        std::process::exit(i32::from(status));
    }
}
