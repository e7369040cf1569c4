//! The first stage of a run: both sides looked at against the ledger, and the plan made of
//! them. A full run walks both trees directory by directory ([`crate::sync::walk`]); a
//! watch-triggered run of a push job looks only at the paths that changed ([`Scope`]). Either
//! is retried with backoff while the server's failures are transient.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::config::Job;
use crate::model::baseline::{hold_baseline, InitialFiles};
use crate::model::marker::hold_unmarked;
use crate::model::plan::{
    plan_with, spare as spare_unreadable, Adopt, LedgerView, PlanOptions, SyncPlan,
};
use crate::model::policy::Direction;
use crate::model::scope::Scope;
use crate::model::settle::hold_unsettled;
use crate::model::snapshot::{system_time_ns, EvidenceMap};
use crate::remote::session::Session;
use crate::remote::tls::TlsContext;
use crate::state::ledger::PathFailure;
use crate::state::link::LinkFacts;
use crate::state::SharedLedger;
use crate::sync::error::{plan_refused, RunError};
use crate::sync::retry::{with_retries, RunTally};
use crate::sync::scan::{
    gather_evidence, local_has_file, scan_local_scope, scan_remote_scope, Scan,
};
use crate::sync::walk::{age_rule, walk, ConnectionsAhead};

/// Both sides of a job as a run found them, and the plan made of them.
pub(crate) struct Surveyed {
    pub plan: SyncPlan,
    pub session: Session,
    /// More connections the listing opened, for the transfers.
    pub spare: Vec<Session>,
    pub failures: Vec<PathFailure>,
    /// Temporary files of transfers found on the destination.
    pub dest_temps: Vec<String>,
    /// The job's remote directory does not exist.
    pub root_missing: bool,
    /// Source files left alone as there before the job began (`initial_files: skip`).
    pub preexisting: u64,
}

/// After a 425 on a TLS 1.3 data connection, the run's next connections use TLS 1.2.
pub(crate) fn note_tls12_fallback(tls: &TlsContext, tally: &RunTally) {
    if tls.fall_back_to_tls12() {
        tally.fell_back_to_tls12();
        tracing::warn!(
            "the server refused a TLS 1.3 data connection (425): it needs the control connection's TLS session, and that session's single-use tickets can run out; this run now uses TLS 1.2 (set remote.tls.max_version: \"1.2\" to start there)"
        );
    }
}

/// Retries `attempt` per the job's policy; a 425 moves the run to TLS 1.2 first. The run races
/// the whole survey, backoffs included, against its stop signal (`sync/run.rs`).
async fn retried<T, F, Fut>(
    job: &Job,
    tls: &TlsContext,
    tally: &RunTally,
    attempt: F,
) -> Result<T, RunError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RunError>>,
{
    with_retries(
        &job.retries,
        &crate::sync::stop::StopSignal::default(),
        tally,
        |e: &RunError| {
            if e.code() == Some(425) {
                note_tls12_fallback(tls, tally);
            }
        },
        RunError::is_transient,
        attempt,
    )
    .await
}

/// A full run: both trees walked directory by directory against the ledger (see
/// [`crate::sync::walk`]). `write_ledger`: not a dry run.
pub(crate) async fn survey_all(
    job: &Job,
    ledger: &SharedLedger,
    tls: &TlsContext,
    tally: &RunTally,
    write_ledger: bool,
) -> Result<Surveyed, RunError> {
    let mut w = retried(job, tls, tally, || async {
        let mut ahead = ConnectionsAhead::start(job, ledger, tls)?;
        let connecting = Instant::now();
        let session = ahead.first_connection(job, tls).await?;
        tracing::info!(server = %session.server, mlsd = session.features.mlsd, rtt_ms = session.rtt().as_secs_f64() * 1000.0, connections = job.transfers.for_rtt(session.rtt()), "connected");
        let connect_time = connecting.elapsed();
        let link = LinkFacts {
            rtt: session.rtt(),
            login: connect_time,
        };
        ledger.lock().record_link(&job.name, link)?;
        walk(job, ledger, tls, session, connect_time, write_ledger, ahead).await
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
    let session = sessions.pop().ok_or(RunError::NoConnection)?;
    let dest_temps = w.found.dest_temps(job.direction);
    let mut plan = w.plan;
    // Before settling: a file there before the job began is not waited on either.
    let preexisting = hold_preexisting(job, ledger, &mut plan, write_ledger)?;
    plan.markers = std::mem::take(&mut w.found.markers);
    if job.direction == Direction::Pull {
        hold_unsettled_files(job, ledger, &mut plan, write_ledger)?;
    }
    Ok(Surveyed {
        plan,
        session,
        spare: sessions,
        failures: w.found.failures,
        dest_temps,
        root_missing: w.found.root_missing,
        preexisting,
    })
}

/// Leaves alone the source files that were there before the job's first run
/// (`initial_files: skip`, see [`crate::model::baseline`]); the first run takes the baseline
/// (not a dry run, which only shows what would be left alone). Returns how many were left.
fn hold_preexisting(
    job: &Job,
    ledger: &SharedLedger,
    plan: &mut SyncPlan,
    write_ledger: bool,
) -> Result<u64, RunError> {
    if job.initial_files != InitialFiles::Skip {
        return Ok(0);
    }
    let baseline = ledger.lock().baseline(&job.name)?;
    let first = baseline.is_none();
    let change = hold_baseline(plan, &baseline.unwrap_or_default(), first);
    if first {
        tracing::info!(
            files = change.held,
            "initial_files: skip: the source's files at the job's first run are left alone; only files that appear or change later are sent"
        );
    } else if change.held > 0 {
        tracing::debug!(
            files = change.held,
            "left alone: there before the job began"
        );
    }
    if write_ledger && (first || !change.drop.is_empty()) {
        ledger.lock().change_baseline(&job.name, &change)?;
    }
    Ok(change.held)
}

/// Leaves for later the remote files that may still be changing (`settle:`, see
/// [`crate::model::settle`]), and remembers the first sighting of each in the ledger (not in
/// a dry run, which only shows what would wait). With a ready marker (`ready_marker:`,
/// `batch_marker:`, see [`crate::model::marker`]) the marker decides instead: a file whose
/// marker was not listed is left for a later run.
fn hold_unsettled_files(
    job: &Job,
    ledger: &SharedLedger,
    plan: &mut SyncPlan,
    write_ledger: bool,
) -> Result<(), RunError> {
    let seen = ledger.lock().settle_sightings(&job.name)?;
    if let Some(rule) = &job.markers {
        let present: std::collections::BTreeSet<String> = plan.markers.iter().cloned().collect();
        hold_unmarked(plan, rule, &present);
        for w in &plan.waiting {
            tracing::info!(path = %w.path, marker = ?w.marker, "waiting for its ready marker");
        }
        if write_ledger && !seen.is_empty() {
            ledger
                .lock()
                .set_settle_sightings(&job.name, &Default::default())?;
        }
        return Ok(());
    }
    if job.settle.is_zero() && seen.is_empty() {
        return Ok(());
    }
    let now = system_time_ns(SystemTime::now());
    let keep = hold_unsettled(plan, &seen, now, job.settle);
    for w in &plan.waiting {
        tracing::info!(
            path = %w.path,
            size = w.size,
            remaining_ms = w.remaining_ns / 1_000_000,
            "waiting to settle"
        );
    }
    if write_ledger && keep != seen {
        ledger.lock().set_settle_sightings(&job.name, &keep)?;
    }
    Ok(())
}

/// An incremental run: only the paths in `scope`, on both sides and in the ledger, planned
/// together. `None` when the server lacks a directory the scope needs: a full run then.
pub(crate) async fn survey_scope(
    job: &Job,
    ledger: &SharedLedger,
    tls: &TlsContext,
    tally: &RunTally,
    scope: &Scope,
) -> Result<Option<Surveyed>, RunError> {
    // The baseline of `initial_files: skip` is taken from the whole source, never a scope.
    if job.initial_files == InitialFiles::Skip && ledger.lock().baseline(&job.name)?.is_none() {
        return Ok(None);
    }
    let (view, dest_files) = {
        let l = ledger.lock();
        let view = l.entries_in(&job.name, scope)?;
        // max_delete is relative to the whole destination: what the ledger knows is there.
        let count = l.entry_count(&job.name)?;
        (Arc::new(view), count)
    };
    let local_root = job.local.clone();
    let filter = job.filter.clone();
    let view_for_scan = Arc::clone(&view);
    let scope_for_scan = scope.clone();
    let local_scan = tokio::task::spawn_blocking(move || {
        scan_local_scope(&local_root, &scope_for_scan, &filter, &view_for_scan)
    });
    let remote_scan = connect_and_list_scope(job, tls, tally, &view, scope).await;
    let local = local_scan
        .await
        .map_err(|_| RunError::Task("local scan"))?
        .map_err(|e| {
            RunError::LocalRoot(format!(
                "cannot read local directory {}: {e}",
                job.local.display()
            ))
        })?;
    let (session, remote) = remote_scan?;
    let Some(remote) = remote else {
        tracing::info!("a changed path's directory is not on the server; looking at everything");
        session.quit().await;
        return Ok(None);
    };
    // Whether the whole source is empty (see `allow_empty_source`): the scope's part holds a
    // file, or else a look at the local tree that stops at the first file the job takes.
    let has_file = |s: &crate::model::snapshot::Snapshot| s.values().any(|e| !e.is_dir());
    let source_empty = match job.direction {
        Direction::Push if has_file(&local.snapshot) => false,
        Direction::Push => {
            let (root, filter) = (job.local.clone(), job.filter.clone());
            !tokio::task::spawn_blocking(move || local_has_file(&root, &filter))
                .await
                .map_err(|_| RunError::Task("local scan"))?
        }
        Direction::Pull if has_file(&remote.snapshot) => false,
        Direction::Pull => {
            tracing::info!("the changed paths hold no remote file; looking at everything");
            session.quit().await;
            return Ok(None);
        }
    };
    tracing::info!(
        local = local.snapshot.len(),
        hashed = local.hashed,
        remote = remote.snapshot.len(),
        incremental = scope.len(),
        "scanned"
    );
    let options = PlanOptions {
        direction: job.direction,
        mode: job.mode,
        max_delete: job.max_delete,
        dest_files: Some(dest_files),
        allow_empty_source: job.allow_empty_source,
        source_empty: Some(source_empty),
        ledger_files: Some(dest_files),
        adopt: job.adopt,
        ages: age_rule(job, session.features.mlsd),
        protect_dest: job.after.moves_sources(),
    };
    let (mut local, mut session) = (local, session);
    let evidence = if job.adopt == Adopt::Evidence {
        let gathered = gather_evidence(
            &mut session,
            &job.remote.path,
            &job.local,
            &view,
            &mut local,
            &remote.snapshot,
            false,
        )
        .await;
        match gathered {
            Ok(found) => found,
            Err(e) => {
                session.quit().await;
                return Err(e.into());
            }
        }
    } else {
        EvidenceMap::new()
    };
    let mut the_plan = plan_with(options, &view, &local.snapshot, &remote.snapshot, &evidence)
        .map_err(|source| plan_refused(job, source))?;
    spare_unreadable(&mut the_plan, &local.unreadable);
    let preexisting = hold_preexisting(job, ledger, &mut the_plan, true)?;
    let mut failures = local.failures;
    failures.extend(remote.failures);
    Ok(Some(Surveyed {
        plan: the_plan,
        session,
        spare: Vec::new(),
        failures,
        dest_temps: remote.temps,
        root_missing: remote.root_missing,
        preexisting,
    }))
}

/// Connects and lists the directories `scope` needs. The scan is `None` when the scope cannot
/// be listed on its own.
async fn connect_and_list_scope(
    job: &Job,
    tls: &TlsContext,
    tally: &RunTally,
    view: &LedgerView,
    scope: &Scope,
) -> Result<(Session, Option<Scan>), RunError> {
    retried(job, tls, tally, || async {
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
        Ok((session, scan))
    })
    .await
}
