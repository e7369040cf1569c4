//! The end of a pull run: the files it held because they may still be changing (`settle:`)
//! are waited for within the run, and the ready markers of the files it took are dealt with
//! (`marker_after_pull:`, in [`crate::sync::markers`]).
//!
//! The wait: the run sleeps (racing the stop signal) until the earliest waiting file's
//! settle time has passed, lists again the directories of the files still waiting, judges each
//! by the same rule as the survey ([`crate::model::settle::hold_unsettled`], the ledger's
//! sightings updated as the survey updates them), downloads those now settled, and repeats
//! while files wait, for at most [`crate::model::settle::in_run_budget`]. A file still changing
//! after that is left for the next run, reported waiting, never failed.
//!
//! Why a re-list and not SIZE + MDTM per file: the verdict compares a file's size and time
//! with its first sighting, and that sighting is the walk's listing. A listing of the same
//! directory, read by the same code (the same LIST time offset and the same rounding against
//! the ledger's record), gives the same time for an unchanged file; MDTM gives the exact
//! second where LIST gave the minute, so every file would look changed at its first
//! re-check. A re-list also costs one listing per directory however many files wait there,
//! against two commands per file, and needs neither SIZE nor MDTM from the server.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, SystemTime};

use crate::config::Job;
use crate::model::paths::split_parent;
use crate::model::plan::{Action, SyncPlan, Waiting};
use crate::model::policy::Direction;
use crate::model::settle::{hold_unsettled, in_run_budget, next_pause};
use crate::model::snapshot::{system_time_ns, Snapshot};
use crate::remote::session::Session;
use crate::state::SharedLedger;
use crate::sync::context::RunContext;
use crate::sync::error::RunError;
use crate::sync::report::RunReport;
use crate::sync::scan::{ListTimes, RemoteListing, Scan};
use crate::sync::stop::StopSignal;
use crate::sync::workers::transfer_all;

/// A pause ends this long after the earliest file is due, so that the wall clock has surely
/// passed it when the verdict reads it.
const DUE_MARGIN: Duration = Duration::from_millis(20);

/// After a pull's first transfers: waits for the files still settling and takes those that
/// settle within the budget, then deletes the ready markers whose files were taken. Returns a
/// live connection for what follows, if one is left. A push or a dry run passes through.
pub(crate) async fn finish_pull(
    run: &RunContext<'_>,
    session: Option<Session>,
    plan: &SyncPlan,
    report: &mut RunReport,
) -> Option<Session> {
    let (job, opts, tls) = (run.job, run.opts, run.tls);
    if job.direction != Direction::Pull || opts.dry_run {
        return session;
    }
    let settling: Vec<Waiting> = plan
        .waiting
        .iter()
        .filter(|w| w.marker.is_none())
        .cloned()
        .collect();
    report.waiting_for_markers = (plan.waiting.len() - settling.len()) as u64;
    let session = wait_for_settling(run, session, settling, report).await;
    if report.interrupted || opts.stop_requested() {
        return session;
    }
    crate::sync::markers::after_pull(job, tls, session, &plan.markers, report).await
}

/// The wait loop (see the module's doc).
async fn wait_for_settling(
    run: &RunContext<'_>,
    mut session: Option<Session>,
    mut waiting: Vec<Waiting>,
    report: &mut RunReport,
) -> Option<Session> {
    let RunContext {
        job,
        ledger,
        opts,
        tls,
        ..
    } = *run;
    if waiting.is_empty() || job.settle.is_zero() {
        return session;
    }
    let stop = StopSignal::new(opts.stop.clone());
    let settle_ns = i64::try_from(job.settle.as_nanos()).unwrap_or(i64::MAX);
    let budget = i64::try_from(in_run_budget(job.settle).as_nanos()).unwrap_or(i64::MAX);
    let deadline = wall_now().saturating_add(budget);
    while !waiting.is_empty() {
        let seen = match ledger.lock().settle_sightings(&job.name) {
            Ok(seen) => seen,
            Err(e) => {
                tracing::warn!("cannot read the settle sightings; the files waiting are left for the next run: {e}");
                break;
            }
        };
        // A file without a sighting (none could be written) is due a period from now.
        let now = wall_now();
        let due = waiting.iter().map(|w| {
            seen.get(&w.path)
                .map_or(now, |s| s.since)
                .saturating_add(settle_ns)
        });
        let Some(pause) = next_pause(due, now, deadline) else {
            tracing::info!(
                files = waiting.len(),
                "files still changing after this run's wait; left for the next run"
            );
            break;
        };
        tracing::info!(
            files = waiting.len(),
            wait_ms = pause.as_millis() as u64,
            "waiting within the run for files to settle"
        );
        if stop
            .race(tokio::time::sleep(pause + DUE_MARGIN))
            .await
            .is_none()
        {
            report.interrupted = true;
            return session;
        }
        let mut s = match session.take() {
            Some(s) => s,
            None => match stop.race(Session::connect(&job.remote, tls)).await {
                None => {
                    report.interrupted = true;
                    return None;
                }
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    tracing::warn!("cannot connect to look at the files waiting to settle again; left for the next run: {e}");
                    break;
                }
            },
        };
        let paths: Vec<&str> = waiting.iter().map(|w| w.path.as_str()).collect();
        let observed = match stop.race(observe(job, ledger, &mut s, &paths)).await {
            None => {
                report.interrupted = true;
                return None;
            }
            Some(Ok(observed)) => observed,
            Some(Err(e)) => {
                tracing::warn!(
                    "cannot list the files waiting to settle again; left for the next run: {e}"
                );
                break;
            }
        };
        let (taken, still) = judge(job, ledger, &waiting, &observed);
        let no_longer = (waiting.len() - still.len()) as u64;
        report.counts.files_waiting = report.counts.files_waiting.saturating_sub(no_longer);
        waiting = still;
        session = if taken.is_empty() {
            Some(s)
        } else {
            transfer_all(run, (s, Vec::new()), taken, report).await
        };
        if opts.stop_requested() {
            report.interrupted = true;
            return session;
        }
    }
    session
}

/// The verdict on the files that waited, now `observed`: the downloads of those settled, and
/// those still waiting (a file gone from the server waits no more). The ledger's sightings are
/// replaced by those of the files still waiting, as the survey does.
fn judge(
    job: &Job,
    ledger: &SharedLedger,
    waiting: &[Waiting],
    observed: &Snapshot,
) -> (VecDeque<Action>, Vec<Waiting>) {
    let mut plan = SyncPlan {
        actions: waiting
            .iter()
            .filter_map(|w| {
                let source = observed.get(&w.path).filter(|e| !e.is_dir())?;
                Some(Action::Download {
                    path: w.path.clone(),
                    source: source.clone(),
                })
            })
            .collect(),
        ..SyncPlan::default()
    };
    let mut l = ledger.lock();
    let seen = l.settle_sightings(&job.name).unwrap_or_default();
    let keep = hold_unsettled(&mut plan, &seen, wall_now(), job.settle);
    if keep != seen {
        if let Err(e) = l.set_settle_sightings(&job.name, &keep) {
            tracing::warn!("cannot remember the settle sightings: {e}");
        }
    }
    for w in &plan.waiting {
        tracing::info!(path = %w.path, size = w.size, "still changing");
    }
    (plan.actions.into_iter().collect(), plan.waiting)
}

/// The remote files at `paths` as a listing of their directories shows them now, read as the
/// walk reads a listing (see the module's doc). A directory gone from the server holds none.
async fn observe(
    job: &Job,
    ledger: &SharedLedger,
    session: &mut Session,
    paths: &[&str],
) -> Result<Snapshot, RunError> {
    let mut by_dir: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for p in paths {
        let (dir, name) = split_parent(p);
        by_dir.entry(dir).or_default().insert(name);
    }
    let root = job.remote.path.as_str();
    let mut scan = Scan::default();
    let mut times = ListTimes::new(job.remote.list_time_offset);
    for (dir, names) in by_dir {
        let rows = ledger.lock().children(&job.name, dir)?;
        let listing = match RemoteListing::fetch(session, root, dir, !dir.is_empty()).await {
            Ok(listing) => listing,
            Err(e) if e.code() == Some(550) => continue,
            Err(e) => return Err(e.into()),
        };
        listing
            .add_to(
                session,
                root,
                &job.filter,
                |name| names.contains(name),
                &rows,
                &mut scan,
                &mut times,
            )
            .await?;
    }
    times.finish(&mut scan);
    Ok(scan.snapshot)
}

fn wall_now() -> i64 {
    system_time_ns(SystemTime::now())
}
