//! One run of one job, from its lock to its record in the history: survey both sides and plan
//! ([`crate::sync::survey`]), then execute on the destination in a fixed order (directories,
//! transfers on a pool of connections, deletes, ledger-only updates), each path recorded in the
//! ledger only once its change is committed.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::config::Job;
use crate::model::plan::Action;
use crate::model::policy::Direction;
use crate::model::scope::Scope;
use crate::remote::session::Session;
use crate::remote::tls::TlsContext;
use crate::state::ledger::{JobRecord, Outcome, PathFailure};
use crate::state::SharedLedger;
use crate::sync::context::RunContext;
use crate::sync::destination::Destination;
use crate::sync::error::RunError;
use crate::sync::options::RunOptions;
use crate::sync::report::RunReport;
use crate::sync::retry::RunTally;
use crate::sync::stop::{OpenRun, StopSignal};
use crate::sync::survey::{survey_all, survey_scope, Surveyed};
use crate::sync::workers::{quit_all, transfer_all};

/// Runs `job` once.
pub async fn run_job(job: &Job, ledger: &SharedLedger, opts: &RunOptions) -> RunReport {
    let span = tracing::info_span!("run", job = %job.name, trigger = %opts.trigger);
    run_job_in_span(job, ledger, opts).instrument(span).await
}

async fn run_job_in_span(job: &Job, ledger: &SharedLedger, opts: &RunOptions) -> RunReport {
    let started = Instant::now();
    for w in &job.warnings {
        tracing::warn!(job = %job.name, "{w}");
    }
    let mut report = RunReport {
        job: job.name.clone(),
        outcome: Outcome::Failed,
        counts: Default::default(),
        failures: Vec::new(),
        error: None,
        plan: None,
        elapsed: Duration::ZERO,
        run_id: None,
        interrupted: false,
        changing: Vec::new(),
        preexisting: 0,
        waiting_for_markers: 0,
    };
    // One run of a job at a time, across processes; held until the report is returned. A run
    // left `running` in the ledger can only be a dead process's once the lock is ours. The
    // lock also holds the local folder, whatever the ledger (see `state/lock.rs`), so a pull's
    // folder is made first; a failure to make it is reported by `prepare_local_root`.
    let state_path = ledger.lock().path().to_path_buf();
    if job.direction == Direction::Pull && !opts.dry_run {
        let _ = std::fs::create_dir_all(&job.local);
    }
    let _job_lock = match crate::state::lock::JobLock::acquire(&state_path, &job.name, &job.local) {
        Ok(l) => l,
        Err(e) => {
            report.error = Some(e.into());
            report.elapsed = started.elapsed();
            return report;
        }
    };
    let run_id = if opts.dry_run {
        None
    } else {
        let l = ledger.lock();
        let begun = l
            .upsert_job(&JobRecord::of(job))
            .and_then(|_| l.close_abandoned_runs(&job.name))
            .and_then(|_| l.begin_run(&job.name, &opts.trigger));
        match begun {
            Ok(id) => Some(id),
            Err(e) => {
                report.error = Some(e.into());
                report.elapsed = started.elapsed();
                return report;
            }
        }
    };

    report.run_id = run_id;
    // Dropped unfinished (the agent's stop timeout, the end of the process), the run is
    // recorded `interrupted`, never left `running`.
    let open_run = run_id.map(|id| OpenRun::new(ledger, id));
    let tally = RunTally::default();
    let result = execute_run(job, ledger, opts, &tally, &mut report).await;
    report.counts.retries = tally.retries();
    report.counts.tls_fallbacks = tally.tls_fallbacks();
    if let Err(e) = result {
        report.error = Some(e);
        report.outcome = Outcome::Failed;
    } else if report.interrupted {
        report.outcome = Outcome::Interrupted;
    } else if report.failures.is_empty() {
        report.outcome = Outcome::Ok;
    } else {
        report.outcome = Outcome::Partial;
    }
    report.counts.files_failed = report.failures.len() as u64;
    report.elapsed = started.elapsed();
    if let Some(id) = run_id {
        let l = ledger.lock();
        if let Err(e) = l.finish_run(
            id,
            report.outcome,
            &report.counts,
            report.error.as_ref().map(ToString::to_string).as_deref(),
            &report.failures,
        ) {
            tracing::error!(job = %job.name, "cannot record the run: {e}");
        }
        // Retention of the audit record (its anchor keeps what remains verifiable).
        let before = crate::state::now_unix()
            .saturating_sub(i64::try_from(job.audit_retention.as_secs()).unwrap_or(i64::MAX));
        match l.prune_audit(&job.name, before) {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(job = %job.name, rows = n, "pruned audit rows older than the job's audit_retention")
            }
            Err(e) => tracing::warn!(job = %job.name, "cannot prune the audit record: {e}"),
        }
    }
    if let Some(open) = open_run {
        open.done();
    }
    report
}

/// The body of a run; an `Err` fails the run as a whole.
async fn execute_run(
    job: &Job,
    ledger: &SharedLedger,
    opts: &RunOptions,
    tally: &RunTally,
    report: &mut RunReport,
) -> Result<(), RunError> {
    let tls = Arc::new(
        TlsContext::new(&job.remote.tls).map_err(|reason| RunError::Tls {
            job: job.name.clone(),
            reason,
        })?,
    );
    prepare_local_root(job, opts.dry_run)?;
    // Every wait before the transfers (connect, TLS, greeting, login, listings, their retries
    // and backoff) races the stop signal: nothing has been changed yet, so the work is simply
    // dropped where it waits.
    let stop = StopSignal::new(opts.stop.clone());
    let Some(surveyed) = stop.race(survey(job, ledger, &tls, tally, opts)).await else {
        report.interrupted = true;
        return Ok(());
    };
    if !opts.dry_run {
        crate::sync::notify::record_certificates(job, ledger, &tls);
    }
    let (surveyed, scope) = surveyed?;
    let Surveyed {
        plan: mut the_plan,
        mut session,
        spare,
        failures,
        dest_temps,
        root_missing,
        preexisting,
    } = surveyed;
    report.preexisting = preexisting;
    if root_missing && job.direction == Direction::Pull {
        return Err(RunError::RemoteRootMissing {
            path: job.remote.path.clone(),
            server: session.server.clone(),
        });
    }
    report.failures.extend(failures);
    report.counts.files_adopted = the_plan.adopted;
    report.counts.files_waiting = the_plan.waiting.len() as u64;
    report
        .failures
        .extend(the_plan.conflicts.iter().map(|c| PathFailure {
            path: c.path.clone(),
            error: c.reason.clone(),
        }));
    if opts.dry_run {
        report.plan = Some(the_plan);
        quit_all(spare).await;
        session.quit().await;
        return Ok(());
    }

    let work = the_plan.take_transfers();
    let prepared = stop
        .race(async {
            if root_missing {
                make_remote_root(&mut session, &job.remote.path).await?;
            }
            clean_up_temps(
                job,
                ledger,
                &mut session,
                &work,
                &dest_temps,
                scope.as_ref(),
            )
            .await;
            // 1. Directories, parents first.
            make_dirs(job, &mut session, &the_plan.actions, report).await;
            Ok::<(), RunError>(())
        })
        .await;
    // 2. Transfers on a pool of connections.
    match prepared {
        Some(r) => r?,
        None => {
            // Stopped mid-command: the connections are dropped, not closed politely.
            report.interrupted = true;
            return Ok(());
        }
    }
    let run = RunContext {
        job,
        ledger,
        opts,
        tls: &tls,
        tally,
    };
    let mut session = transfer_all(&run, (session, spare), work, report).await;
    // A pull waits here for the files still settling, and deletes the markers of those taken.
    session = crate::sync::settle_wait::finish_pull(&run, session, &the_plan, report).await;
    if opts.stop_requested() {
        // Deletes and ledger-only updates wait for a run that sees the whole transfer set.
        report.interrupted = true;
    } else {
        // 3. Deletes, files then directories deepest first; 4. ledger-only updates.
        let mut dest = Destination::of(job, session.as_mut());
        delete_and_record(job, ledger, &mut dest, &the_plan.actions, report).await;
        // 5. Sources delivered (this run or one a crash cut short) deleted or archived.
        crate::sync::after_transfer::complete(job, ledger, session.as_mut(), report).await;
    }
    if let Some(s) = session {
        if stop.requested() {
            drop(s);
        } else {
            s.quit().await;
        }
    }
    Ok(())
}

/// A push needs its local folder; a pull creates it (not in a dry run, which changes nothing).
fn prepare_local_root(job: &Job, dry_run: bool) -> Result<(), RunError> {
    if job.local.is_dir() {
        return Ok(());
    }
    match job.direction {
        Direction::Push => Err(RunError::LocalRoot(format!(
            "local directory {} does not exist",
            job.local.display()
        ))),
        Direction::Pull if dry_run => Ok(()),
        Direction::Pull => std::fs::create_dir_all(&job.local).map_err(|e| {
            RunError::LocalRoot(format!(
                "cannot create local directory {}: {e}",
                job.local.display()
            ))
        }),
    }
}

/// Both sides and the plan: only what changed, for a watch-triggered run of a push job (the
/// scope it used is returned), or everything when that cannot be done (a changed path's
/// directory is missing on the server) or no scope was given.
async fn survey(
    job: &Job,
    ledger: &SharedLedger,
    tls: &TlsContext,
    tally: &RunTally,
    opts: &RunOptions,
) -> Result<(Surveyed, Option<Scope>), RunError> {
    let scope = opts
        .scope
        .as_ref()
        .filter(|_| job.direction == Direction::Push);
    if let Some(scope) = scope {
        if let Some(surveyed) = survey_scope(job, ledger, tls, tally, scope).await? {
            return Ok((surveyed, Some(scope.clone())));
        }
    }
    Ok((
        survey_all(job, ledger, tls, tally, !opts.dry_run).await?,
        None,
    ))
}

/// Makes the plan's new directories on the destination; a failure fails that path.
async fn make_dirs(job: &Job, session: &mut Session, actions: &[Action], report: &mut RunReport) {
    let mut dest = Destination::of(job, Some(session));
    for a in actions {
        if let Action::MakeDir { path } = a {
            if let Err(e) = dest.make_dir(path).await {
                report.failures.push(PathFailure {
                    path: path.clone(),
                    error: e.to_string(),
                });
            }
        }
    }
}

/// After the transfers: deletes on the destination (files, then directories deepest first)
/// and the ledger-only actions, each path recorded or forgotten as it is done.
async fn delete_and_record(
    job: &Job,
    ledger: &SharedLedger,
    dest: &mut Destination<'_>,
    actions: &[Action],
    report: &mut RunReport,
) {
    let mut fail = |path: &str, error: String| {
        report.failures.push(PathFailure {
            path: path.to_string(),
            error,
        })
    };
    let mut deleted = 0;
    for a in actions {
        match a {
            Action::DeleteFile { path } => match dest.delete_file(path).await {
                Ok(reply) => {
                    deleted += 1;
                    match ledger
                        .lock()
                        .commit_delete(&job.name, path, reply.as_deref())
                    {
                        Ok(()) => {
                            tracing::info!(job = %job.name, path = %path, action = "deleted", "deleted")
                        }
                        Err(e) => fail(path, e.to_string()),
                    }
                }
                Err(e) => {
                    let error = e.to_string();
                    if let Err(e) = ledger.lock().audit_failure(&job.name, path, &error) {
                        tracing::warn!(path = %path, "cannot record the failure in the audit record: {e}");
                    }
                    fail(path, error)
                }
            },
            Action::DeleteDir { path } => {
                if let Err(e) = dest.remove_dir(path).await {
                    // Usually a directory that still holds excluded files: worth a note, not a
                    // failure.
                    tracing::warn!(path = %path, "directory kept: {e}");
                }
            }
            Action::Record { path, entry } => {
                if let Err(e) = ledger.lock().record(&job.name, path, entry) {
                    fail(path, e.to_string());
                }
            }
            Action::Forget { path } => {
                if let Err(e) = ledger.lock().forget(&job.name, path) {
                    fail(path, e.to_string());
                }
            }
            _ => {}
        }
    }
    report.counts.files_deleted += deleted;
}

/// Drops journal entries of transfers this run will not resume (their source is gone or no
/// longer needs sending) and deletes temporary files on the destination that no journal entry
/// accounts for, such as those of a run that was killed before its journal write.
async fn clean_up_temps(
    job: &Job,
    ledger: &SharedLedger,
    session: &mut Session,
    transfers: &VecDeque<Action>,
    dest_temps: &[String],
    scope: Option<&Scope>,
) {
    let journal = match ledger.lock().journal(&job.name) {
        Ok(j) => j,
        Err(e) => {
            tracing::warn!("cannot read the transfer journal: {e}");
            return;
        }
    };
    // The journal is short, the transfers may be a million: look each transfer up in it.
    let journaled: HashSet<&str> = journal.iter().map(|j| j.path.as_str()).collect();
    let transferring: HashSet<String> = transfers
        .iter()
        .map(Action::path)
        .filter(|p| journaled.contains(p))
        .map(str::to_string)
        .collect();
    let mut keep = HashSet::new();
    // An incremental run saw only its scope: transfers journaled elsewhere wait for a run
    // that looks there.
    for j in journal
        .into_iter()
        .filter(|j| scope.is_none_or(|s| s.contains(&j.path)))
    {
        if transferring.contains(j.path.as_str()) {
            keep.insert(j.temp_name);
        } else if let Err(e) = ledger.lock().journal_end(&job.name, &j.path) {
            tracing::warn!("cannot update the transfer journal: {e}");
        }
    }
    let mut dest = Destination::of(job, Some(session));
    for temp in dest_temps.iter().filter(|t| !keep.contains(*t)) {
        match dest.delete_file(temp).await {
            Ok(_) => tracing::info!(path = %temp, "removed a leftover temporary file"),
            Err(e) => tracing::warn!(path = %temp, "cannot remove a leftover temporary file: {e}"),
        }
    }
}

/// Creates the job's remote directory and its missing parents (a push to a new folder).
async fn make_remote_root(session: &mut Session, root: &str) -> Result<(), RunError> {
    let mut prefix = String::new();
    for part in root.split('/').filter(|p| !p.is_empty()) {
        prefix.push('/');
        prefix.push_str(part);
        // An existing directory answers 550 here; the listing below is what counts.
        let _ = session.mkdir(&prefix).await;
    }
    session
        .list_dir(root)
        .await
        .map(|_| ())
        .map_err(|source| RunError::RemoteRoot {
            path: root.to_string(),
            source,
        })
}
