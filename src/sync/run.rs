//! One run of one job: scan both sides, plan, execute on a small pool of connections, and
//! record each committed path and the run itself in the ledger.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::Instrument;

use crate::config::Job;
use crate::model::paths::{local_path, remote_path};
use crate::model::plan::{
    plan, spare as spare_unreadable, Action, LedgerView, PlanOptions, SyncPlan,
};
use crate::model::policy::Direction;
use crate::model::scope::Scope;
use crate::model::snapshot::Entry;
use crate::remote::session::Session;
use crate::remote::tls::TlsContext;
use crate::state::ledger::{JobRecord, Outcome, PathFailure, RunProgress};
use crate::state::SharedLedger;
use crate::sync::report::RunReport;
use crate::sync::scan::{scan_local_scope, scan_remote_scope, Scan};
use crate::sync::transfer::{self, ByteCounter, TransferContext, Transferred};
use crate::sync::walk::{walk, WalkError};

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// What started the run: `manual`, `schedule`, `watch`, `poll`, `demo`.
    pub trigger: String,
    pub dry_run: bool,
    /// Told how the transfers are going, about four times a second and once at their end
    /// (the command line draws its progress line from it).
    pub progress: Option<ProgressObserver>,
    /// Turns true when the run must stop (SIGTERM, Ctrl-C): no new file is started, and files
    /// in flight stop at their next checkpoint, to be resumed by the next run.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// Only these changed paths need looking at (a watch-triggered run of a push job); `None`:
    /// a full run, both trees compared from top to bottom.
    pub scope: Option<Scope>,
}

/// How far a run's transfers are: what a [`ProgressObserver`] is shown.
#[derive(Debug, Clone, Copy)]
pub struct TransferProgress<'a> {
    pub job: &'a str,
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// The last call: every transfer has ended.
    pub finished: bool,
}

/// A callback for [`TransferProgress`]; it runs on the run's coordinating task, so it must be
/// quick.
#[derive(Clone)]
pub struct ProgressObserver(pub Arc<dyn Fn(&TransferProgress<'_>) + Send + Sync>);

impl std::fmt::Debug for ProgressObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressObserver")
    }
}

impl RunOptions {
    pub fn stop_requested(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| *s.borrow())
    }
}

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
    };
    // One run of a job at a time, across processes; held until the report is returned. A run
    // left `running` in the ledger can only be a dead process's once the lock is ours.
    let state_path = ledger.lock().path().to_path_buf();
    let _job_lock = match crate::state::lock::JobLock::acquire(&state_path, &job.name) {
        Ok(l) => l,
        Err(e) => {
            report.error = Some(e.to_string());
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
                report.error = Some(e.to_string());
                report.elapsed = started.elapsed();
                return report;
            }
        }
    };

    report.run_id = run_id;
    let result = execute_run(job, ledger, opts, &mut report).await;
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
            report.error.as_deref(),
            &report.failures,
        ) {
            tracing::error!(job = %job.name, "cannot record the run: {e}");
        }
    }
    report
}

/// The body of a run; an `Err` fails the run as a whole.
async fn execute_run(
    job: &Job,
    ledger: &SharedLedger,
    opts: &RunOptions,
    report: &mut RunReport,
) -> Result<(), String> {
    let tls =
        Arc::new(TlsContext::new(&job.remote.tls).map_err(|e| format!("job {}: {e}", job.name))?);

    if !job.local.is_dir() {
        if job.direction == Direction::Push {
            return Err(format!(
                "local directory {} does not exist",
                job.local.display()
            ));
        } else if !opts.dry_run {
            std::fs::create_dir_all(&job.local).map_err(|e| {
                format!("cannot create local directory {}: {e}", job.local.display())
            })?;
        }
    }

    // A watch-triggered run of a push job looks only at what changed; if that cannot be
    // done (a changed path's directory is missing on the server), it becomes a full run.
    let scope = opts
        .scope
        .as_ref()
        .filter(|_| job.direction == Direction::Push);
    let surveyed = match scope {
        Some(scope) => survey_scope(job, ledger, &tls, scope).await?,
        None => None,
    };
    let scope = surveyed.as_ref().and(scope);
    let Surveyed {
        plan: mut the_plan,
        mut session,
        spare,
        failures,
        dest_temps,
        root_missing,
    } = match surveyed {
        Some(s) => s,
        None => survey_all(job, ledger, &tls, !opts.dry_run).await?,
    };
    if root_missing && job.direction == Direction::Pull {
        return Err(format!(
            "remote directory {} does not exist on {}",
            job.remote.path, session.server
        ));
    }
    report.failures.extend(failures);
    for c in &the_plan.conflicts {
        report.failures.push(PathFailure {
            path: c.path.clone(),
            error: c.reason.clone(),
        });
    }
    if opts.dry_run {
        report.plan = Some(the_plan);
        quit_all(spare).await;
        session.quit().await;
        return Ok(());
    }

    if root_missing {
        make_remote_root(&mut session, &job.remote.path).await?;
    }
    let work = the_plan.take_transfers();
    clean_up_temps(job, ledger, &mut session, &work, &dest_temps, scope).await;

    // 1. Directories, parents first.
    for a in &the_plan.actions {
        if let Action::MakeDir { path } = a {
            let made = match job.direction {
                Direction::Push => session
                    .mkdir(&remote_path(&job.remote.path, path))
                    .await
                    .map_err(|e| e.to_string()),
                Direction::Pull => std::fs::create_dir_all(local_path(&job.local, path))
                    .map_err(|e| format!("cannot create local directory: {e}")),
            };
            if let Err(error) = made {
                report.failures.push(PathFailure {
                    path: path.clone(),
                    error,
                });
            }
        }
    }

    // 2. Transfers on a pool of connections.
    if opts.stop_requested() {
        report.interrupted = true;
        quit_all(spare).await;
        session.quit().await;
        return Ok(());
    }
    let session = transfer_all(job, ledger, opts, &tls, (session, spare), work, report).await;
    if opts.stop_requested() {
        // Deletes and ledger-only updates wait for a run that sees the whole transfer set.
        report.interrupted = true;
        if let Some(s) = session {
            s.quit().await;
        }
        return Ok(());
    }

    // 3. Deletes, files then directories deepest first; 4. ledger-only updates.
    let mut session = session;
    for a in &the_plan.actions {
        match a {
            Action::DeleteFile { path } => {
                let deleted = match (job.direction, session.as_mut()) {
                    (Direction::Push, Some(s)) => s
                        .delete_file(&remote_path(&job.remote.path, path))
                        .await
                        .map_err(|e| e.to_string()),
                    (Direction::Push, None) => Err("no connection to the server".to_string()),
                    (Direction::Pull, _) => std::fs::remove_file(local_path(&job.local, path))
                        .map_err(|e| format!("cannot delete local file: {e}")),
                };
                match deleted {
                    Ok(()) => {
                        report.counts.files_deleted += 1;
                        if let Err(e) = ledger.lock().forget(&job.name, path) {
                            report.failures.push(PathFailure {
                                path: path.clone(),
                                error: e.to_string(),
                            });
                        }
                    }
                    Err(error) => report.failures.push(PathFailure {
                        path: path.clone(),
                        error,
                    }),
                }
            }
            Action::DeleteDir { path } => {
                let deleted = match (job.direction, session.as_mut()) {
                    (Direction::Push, Some(s)) => s
                        .remove_dir(&remote_path(&job.remote.path, path))
                        .await
                        .map_err(|e| e.to_string()),
                    (Direction::Push, None) => Err("no connection to the server".to_string()),
                    (Direction::Pull, _) => std::fs::remove_dir(local_path(&job.local, path))
                        .map_err(|e| format!("cannot delete local directory: {e}")),
                };
                if let Err(e) = deleted {
                    // Usually a directory that still holds excluded files: worth a note, not a failure.
                    tracing::warn!(path = %path, "directory kept: {e}");
                }
            }
            Action::Record { path, entry } => {
                if let Err(e) = ledger.lock().record(&job.name, path, entry) {
                    report.failures.push(PathFailure {
                        path: path.clone(),
                        error: e.to_string(),
                    });
                }
            }
            Action::Forget { path } => {
                if let Err(e) = ledger.lock().forget(&job.name, path) {
                    report.failures.push(PathFailure {
                        path: path.clone(),
                        error: e.to_string(),
                    });
                }
            }
            _ => {}
        }
    }
    if let Some(s) = session {
        s.quit().await;
    }
    Ok(())
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
    let journaled: std::collections::HashSet<&str> =
        journal.iter().map(|j| j.path.as_str()).collect();
    let transferring: std::collections::HashSet<String> = transfers
        .iter()
        .map(Action::path)
        .filter(|p| journaled.contains(p))
        .map(str::to_string)
        .collect();
    let mut keep = std::collections::HashSet::new();
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
    for temp in dest_temps.iter().filter(|t| !keep.contains(*t)) {
        let removed = match job.direction {
            Direction::Push => session
                .delete_file(&remote_path(&job.remote.path, temp))
                .await
                .map_err(|e| e.to_string()),
            Direction::Pull => {
                std::fs::remove_file(local_path(&job.local, temp)).map_err(|e| e.to_string())
            }
        };
        match removed {
            Ok(()) => tracing::info!(path = %temp, "removed a leftover temporary file"),
            Err(e) => tracing::warn!(path = %temp, "cannot remove a leftover temporary file: {e}"),
        }
    }
}

/// After a 425 on a TLS 1.3 data connection, the run's next connections use TLS 1.2.
fn note_tls12_fallback(tls: &TlsContext) {
    if tls.fall_back_to_tls12() {
        tracing::warn!(
            "the server refused a TLS 1.3 data connection (425): it needs the control connection's TLS session, and that session's single-use tickets can run out; this run now uses TLS 1.2 (set remote.tls.max_version: \"1.2\" to start there)"
        );
    }
}

/// Both sides of a job as a run found them, and the plan made of them.
struct Surveyed {
    plan: SyncPlan,
    session: Session,
    /// More connections the listing opened, for the transfers.
    spare: Vec<Session>,
    failures: Vec<PathFailure>,
    /// Temporary files of transfers found on the destination.
    dest_temps: Vec<String>,
    /// The job's remote directory does not exist.
    root_missing: bool,
}

/// A full run: both trees walked directory by directory against the ledger (see
/// [`crate::sync::walk`]), retrying transient failures with backoff. `write_ledger`: not a dry run.
async fn survey_all(
    job: &Job,
    ledger: &SharedLedger,
    tls: &TlsContext,
    write_ledger: bool,
) -> Result<Surveyed, String> {
    let w = with_retries(job, tls, || async {
        let connecting = Instant::now();
        let session = Session::connect(&job.remote, tls).await?;
        tracing::info!(server = %session.server, mlsd = session.features.mlsd, "connected");
        let connect_time = connecting.elapsed();
        match walk(job, ledger, tls, session, connect_time, write_ledger).await {
            Ok(w) => Ok(Ok(w)),
            Err(WalkError::Run(e)) => Ok(Err(e)),
            Err(WalkError::Remote(e)) => Err(e),
        }
    })
    .await?;
    tracing::info!(
        local = w.found.local_entries,
        hashed = w.found.hashed,
        remote = w.found.remote_entries,
        connections = w.sessions.len(),
        "scanned"
    );
    let mut sessions = w.sessions;
    let Some(session) = sessions.pop() else {
        return Err("the walk kept no connection".into());
    };
    Ok(Surveyed {
        plan: w.plan,
        session,
        spare: sessions,
        failures: w.found.failures,
        dest_temps: match job.direction {
            Direction::Push => w.found.remote_temps,
            Direction::Pull => w.found.local_temps,
        },
        root_missing: w.found.root_missing,
    })
}

/// Runs `attempt` until it succeeds or fails for good: a server error (`Err`) that is
/// transient is tried again after the job's backoff, up to `retries.attempts` times in all; a
/// 425 also moves the run to TLS 1.2. `Ok(Err(reason))` fails at once.
async fn with_retries<T, F, Fut>(job: &Job, tls: &TlsContext, mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Result<T, String>, crate::remote::error::FtpsError>>,
{
    let mut n = 0;
    loop {
        let failed = match attempt().await {
            Ok(done) => return done,
            Err(e) => e,
        };
        if failed.code() == Some(425) {
            note_tls12_fallback(tls);
        }
        if !failed.is_transient() || n + 1 >= job.retries.attempts {
            return Err(failed.to_string());
        }
        let wait = job.retries.delay(n);
        tracing::warn!(
            attempt = n,
            "retrying in {:.1}s: {failed}",
            wait.as_secs_f64()
        );
        tokio::time::sleep(wait).await;
        n += 1;
    }
}

/// An incremental run: only the paths in `scope`, on both sides and in the ledger, planned
/// together. `None` when the server lacks a directory the scope needs: a full run then.
async fn survey_scope(
    job: &Job,
    ledger: &SharedLedger,
    tls: &TlsContext,
    scope: &Scope,
) -> Result<Option<Surveyed>, String> {
    let (view, dest_files) = {
        let l = ledger.lock();
        let view = l.entries_in(&job.name, scope).map_err(|e| e.to_string())?;
        // max_delete is relative to the whole destination: what the ledger knows is there.
        let count = l.entry_count(&job.name).map_err(|e| e.to_string())?;
        (Arc::new(view), count)
    };
    let local_root = job.local.clone();
    let filter = job.filter.clone();
    let view_for_scan = Arc::clone(&view);
    let scope_for_scan = scope.clone();
    let local_scan = tokio::task::spawn_blocking(move || {
        scan_local_scope(&local_root, &scope_for_scan, &filter, &view_for_scan)
    });
    let remote_scan = connect_and_list_scope(job, tls, &view, scope).await;
    let local = local_scan
        .await
        .map_err(|e| format!("local scan: {e}"))?
        .map_err(|e| format!("cannot read local directory {}: {e}", job.local.display()))?;
    let (session, remote) = remote_scan?;
    let Some(remote) = remote else {
        tracing::info!("a changed path's directory is not on the server; looking at everything");
        session.quit().await;
        return Ok(None);
    };
    tracing::info!(
        local = local.snapshot.len(),
        hashed = local.hashed,
        remote = remote.snapshot.len(),
        incremental = scope.len(),
        "scanned"
    );
    let mut the_plan = plan(
        PlanOptions {
            direction: job.direction,
            mode: job.mode,
            max_delete: job.max_delete,
            dest_files: Some(dest_files),
        },
        &view,
        &local.snapshot,
        &remote.snapshot,
    )
    .map_err(|e| format!("job {}: {e}", job.name))?;
    spare_unreadable(&mut the_plan, &local.unreadable);
    let mut failures = local.failures;
    failures.extend(remote.failures);
    Ok(Some(Surveyed {
        plan: the_plan,
        session,
        spare: Vec::new(),
        failures,
        dest_temps: remote.temps,
        root_missing: remote.root_missing,
    }))
}

/// Connects and lists the directories `scope` needs, retrying transient failures with
/// backoff. The scan is `None` when the scope cannot be listed on its own.
async fn connect_and_list_scope(
    job: &Job,
    tls: &TlsContext,
    view: &LedgerView,
    scope: &Scope,
) -> Result<(Session, Option<Scan>), String> {
    with_retries(job, tls, || async {
        let mut session = Session::connect(&job.remote, tls).await?;
        tracing::info!(server = %session.server, mlsd = session.features.mlsd, "connected");
        let scan = scan_remote_scope(
            &mut session,
            &job.remote.path,
            scope,
            &job.filter,
            view,
            job.remote.list_time_offset,
        )
        .await?;
        Ok(Ok((session, scan)))
    })
    .await
}

async fn quit_all(sessions: Vec<Session>) {
    for s in sessions {
        s.quit().await;
    }
}

async fn make_remote_root(session: &mut Session, root: &str) -> Result<(), String> {
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
        .map_err(|e| format!("cannot create remote directory {root}: {e}"))
}

/// What a worker tells the coordinator about one file.
enum WorkerNews {
    Started(String),
    /// What the transfer left for the ledger, or why it failed (`None`: stopped on request,
    /// not a failure).
    Done(String, Result<Transferred, Option<String>>),
}

/// Runs the transfers on up to `job.transfers` connections; returns a live connection for
/// the deletes that follow, if one is left.
async fn transfer_all(
    job: &Job,
    ledger: &SharedLedger,
    opts: &RunOptions,
    tls: &Arc<TlsContext>,
    // The connection that listed, and any more the listing opened.
    (first, mut spare): (Session, Vec<Session>),
    work: VecDeque<Action>,
    report: &mut RunReport,
) -> Option<Session> {
    if work.is_empty() {
        quit_all(spare).await;
        return Some(first);
    }
    let total_files = work.len() as u64;
    let total_bytes: u64 = work
        .iter()
        .map(|a| match a {
            Action::Upload { source, .. } | Action::Download { source, .. } => source.size,
            _ => 0,
        })
        .sum();
    let workers = job.transfers.min(work.len()).max(1);
    let queue = Arc::new(Mutex::new(work));
    let counter = ByteCounter::default();
    let (tx, mut rx) = mpsc::unbounded_channel::<WorkerNews>();
    let job = Arc::new(job.clone());

    let mut handles = Vec::new();
    let mut first = Some(first);
    let live = Arc::new(std::sync::atomic::AtomicUsize::new(workers));
    for i in 0..workers {
        // The listing's connections are warm: logged in, TLS session established.
        let session = if i == 0 { first.take() } else { spare.pop() };
        let pool = WorkerPool {
            job: job.clone(),
            ledger: ledger.clone(),
            tls: tls.clone(),
            queue: queue.clone(),
            tx: tx.clone(),
            counter: counter.clone(),
            stop: opts.stop.clone(),
            live: live.clone(),
        };
        handles.push(tokio::spawn(transfer_worker(pool, session)));
    }
    drop(tx);
    quit_all(std::mem::take(&mut spare)).await;

    // Finished transfers wait here for their ledger commit (see COMMIT_BATCH).
    let mut committing: Vec<(String, Transferred)> = Vec::new();
    let show = |finished: bool, files_done: u64, bytes_done: u64| {
        if let Some(observer) = &opts.progress {
            (observer.0)(&TransferProgress {
                job: &job.name,
                files_done,
                files_total: total_files,
                bytes_done,
                bytes_total: total_bytes,
                finished,
            });
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut done_files = 0u64;
    let mut ticks = 0u64;
    let mut in_flight = std::collections::BTreeSet::new();
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let (path, result) = match msg {
                    None => break,
                    Some(WorkerNews::Started(path)) => {
                        in_flight.insert(path);
                        continue;
                    }
                    Some(WorkerNews::Done(path, result)) => (path, result),
                };
                in_flight.remove(&path);
                done_files += 1;
                match result {
                    Ok(done) => {
                        committing.push((path, done));
                        if committing.len() >= COMMIT_BATCH {
                            commit_batch(&job, ledger, &mut committing, report);
                        }
                    }
                    Err(Some(error)) => {
                        tracing::warn!(path = %path, "{error}");
                        report.failures.push(PathFailure { path, error });
                    }
                    Err(None) => tracing::info!(path = %path, "stopped at a checkpoint"),
                }
            }
            _ = tick.tick() => {
                commit_batch(&job, ledger, &mut committing, report);
                ticks += 1;
                if let (Some(id), 1) = (report.run_id, ticks % 4) {
                    let progress = RunProgress {
                        files_done: done_files,
                        files_total: total_files,
                        bytes_done: counter.get(),
                        bytes_total: total_bytes,
                        current: in_flight.iter().cloned().collect(),
                    };
                    if let Err(e) = ledger.lock().set_progress(id, &progress) {
                        tracing::debug!("cannot publish progress: {e}");
                    }
                }
                show(false, done_files, counter.get());
            }
        }
    }
    commit_batch(&job, ledger, &mut committing, report);
    show(true, done_files, counter.get());
    let mut survivor = None;
    for h in handles {
        if let Ok(Some(s)) = h.await {
            if survivor.is_none() {
                survivor = Some(s);
            } else {
                s.quit().await;
            }
        }
    }
    // Whatever no worker could take (every connection lost) fails with a reason; after a stop
    // request it is simply left for the next run.
    if opts.stop_requested() {
        return survivor;
    }
    for a in lock_queue(&queue).drain(..) {
        report.failures.push(PathFailure {
            path: a.path().to_string(),
            error: "not transferred: no connection to the server could be kept".into(),
        });
    }
    survivor
}

/// Finished transfers are committed to the ledger this many at a time (and at least every
/// 250 ms, and at the end of the transfers), in one transaction. One transaction per file was
/// one SQLite commit per small file on the coordinating task, while the workers waited for it.
/// A crash before a batch is committed leaves those files in place under their final names but
/// unrecorded: the next run sends them again, which loses nothing.
const COMMIT_BATCH: usize = 64;

/// Commits the finished transfers in `done` to the ledger and counts them; empties `done`.
fn commit_batch(
    job: &Job,
    ledger: &SharedLedger,
    done: &mut Vec<(String, Transferred)>,
    report: &mut RunReport,
) {
    if done.is_empty() {
        return;
    }
    let batch = std::mem::take(done);
    let mut l = ledger.lock();
    let all = l.commit_transfers(
        &job.name,
        batch.iter().map(|(path, t)| (path.as_str(), &t.entry)),
    );
    for (path, t) in batch {
        // Where the batch failed as a whole, each path is tried on its own, so that a failure
        // names the path it belongs to.
        let committed = match &all {
            Ok(()) => Ok(()),
            Err(_) => l.commit_transfer(&job.name, &path, &t.entry),
        };
        match committed {
            Ok(()) => match job.direction {
                Direction::Push => {
                    report.counts.files_up += 1;
                    report.counts.bytes_up += t.bytes_moved;
                }
                Direction::Pull => {
                    report.counts.files_down += 1;
                    report.counts.bytes_down += t.bytes_moved;
                }
            },
            Err(e) => report.failures.push(PathFailure {
                path,
                error: e.to_string(),
            }),
        }
    }
}

/// The queue's action for sending `path` in `direction`.
fn transfer_of(direction: Direction, path: String, source: Entry) -> Action {
    match direction {
        Direction::Push => Action::Upload { path, source },
        Direction::Pull => Action::Download { path, source },
    }
}

fn lock_queue<T>(q: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    q.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes files from the queue until it is empty. A transient failure (dropped connection,
/// timeout, 4xx) is retried with backoff on a fresh connection, resuming from the bytes already
/// transferred; a permanent one fails that path and the worker goes on with the next.
/// What every transfer worker of a run shares.
struct WorkerPool {
    job: Arc<Job>,
    ledger: SharedLedger,
    tls: Arc<TlsContext>,
    /// Upload or Download actions, taken from the plan without a copy.
    queue: Arc<Mutex<VecDeque<Action>>>,
    tx: mpsc::UnboundedSender<WorkerNews>,
    counter: ByteCounter,
    stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// Workers still running: a server that refuses one more connection (421) lowers the
    /// parallelism, unless this is the last worker.
    live: Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.live.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn transfer_worker(pool: WorkerPool, mut session: Option<Session>) -> Option<Session> {
    let WorkerPool {
        job,
        ledger,
        tls,
        queue,
        tx,
        counter,
        stop,
        live,
    } = &pool;
    let (job, tls) = (job.as_ref(), tls.as_ref());
    let ctx = TransferContext {
        job,
        ledger,
        counter,
        stop: stop.as_ref(),
    };
    loop {
        if ctx.stop.is_some_and(|s| *s.borrow()) {
            return session;
        }
        let next = lock_queue(queue).pop_front();
        let Some(action) = next else {
            return session;
        };
        let (Action::Upload { path, source } | Action::Download { path, source }) = action else {
            continue;
        };
        let _ = tx.send(WorkerNews::Started(path.clone()));
        let mut attempt = 0;
        let result = loop {
            if session.is_none() {
                match Session::connect(&job.remote, tls).await {
                    Ok(s) => session = Some(s),
                    Err(e)
                        if e.code() == Some(421)
                            && live.load(std::sync::atomic::Ordering::SeqCst) > 1 =>
                    {
                        // "Too many connections": go on with the connections already open.
                        tracing::warn!(
                            "the server refused one more connection, going on with fewer: {e}"
                        );
                        lock_queue(queue).push_front(transfer_of(job.direction, path, source));
                        return None;
                    }
                    Err(e) if e.is_transient() && attempt + 1 < job.retries.attempts => {
                        tracing::warn!(path = %path, attempt, "reconnecting: {e}");
                        tokio::time::sleep(job.retries.delay(attempt)).await;
                        attempt += 1;
                        continue;
                    }
                    Err(e) => {
                        // This worker cannot get a connection: give the file back to the queue
                        // for the others, unless none of them is left to take it.
                        tracing::warn!("connection refused: {e}");
                        lock_queue(queue).push_front(transfer_of(job.direction, path, source));
                        return None;
                    }
                }
            }
            if session
                .as_ref()
                .is_some_and(Session::data_resumption_exhausted)
            {
                // Its next data connection could not resume the TLS 1.3 session: reconnect,
                // with TLS 1.2, before the server refuses a transfer.
                if tls.switch_to_tls12() {
                    tracing::info!("the TLS 1.3 session's resumption tickets are used up (uploads bring no new ones); this run's new connections use TLS 1.2, whose session can be resumed again and again");
                }
                if let Some(old) = session.take() {
                    old.quit().await;
                }
                continue;
            }
            let Some(s) = session.as_mut() else { continue };
            let span = tracing::info_span!("transfer", path = %path, attempt);
            let outcome = match job.direction {
                Direction::Push => {
                    transfer::upload(s, &ctx, &path, &source)
                        .instrument(span)
                        .await
                }
                Direction::Pull => {
                    transfer::download(s, &ctx, &path, &source)
                        .instrument(span)
                        .await
                }
            };
            match outcome {
                Ok(done) => break Ok(done),
                Err(e) => {
                    if matches!(e, transfer::TransferError::Ftps(ref f) if f.code() == Some(425)) {
                        note_tls12_fallback(tls);
                    }
                    if e.breaks_connection() {
                        session = None;
                    }
                    if e.is_transient() && attempt + 1 < job.retries.attempts {
                        let wait = job.retries.delay(attempt);
                        tracing::warn!(path = %path, attempt, "retrying in {:.1}s: {e}", wait.as_secs_f64());
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                        continue;
                    }
                    if matches!(e, transfer::TransferError::Interrupted(_)) {
                        break Err(None);
                    }
                    break Err(Some(e.to_string()));
                }
            }
        };
        if tx.send(WorkerNews::Done(path, result)).is_err() {
            return session;
        }
    }
}
