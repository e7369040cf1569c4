//! The walk of a full run: both trees and the ledger read one directory at a time, each
//! directory planned as soon as both of its sides are known ([`TreePlan`]), so that a run holds
//! a few directories instead of whole trees. At a million files the three whole-tree maps of
//! the earlier design (ledger rows, local scan, remote listing) were 555 MiB of a run's memory.
//!
//! Directories are visited breadth first, each visit on a connection of its own: the remote
//! listing on that connection while the local directory is read on a blocking thread. A wide
//! tree is listed on several connections at once when that would pay for their logins; the
//! connections then carry the transfers, already logged in.
//!
//! Ledger-only actions (a record refreshed, a row of a path gone from both sides dropped) are
//! written as the walk goes, in batches, except in a dry run: they change no file, and nothing
//! else waits for them.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::config::{Job, ListTimeOffset, PathFilter};
use crate::model::parallel;
use crate::model::plan::{
    Action, Adopt, DirVisit, LedgerView, PlanError, PlanOptions, SyncPlan, TreePlan,
};
use crate::model::policy::Direction;
use crate::model::snapshot::EvidenceMap;
use crate::remote::session::Session;
use crate::remote::tls::TlsContext;
use crate::remote::FtpsError;
use crate::state::ledger::PathFailure;
use crate::state::SharedLedger;
use crate::sync::error::{plan_refused, RunError};
use crate::sync::scan::{gather_evidence, scan_local_dir, ListTimes, RemoteListing, Scan};

/// Both trees as a full run found them, and what to do about them.
pub struct Walked {
    /// Everything but the ledger-only actions already written (all of them in a dry run).
    pub plan: SyncPlan,
    /// The connection the walk started on, and any more it opened, all logged in.
    pub sessions: Vec<Session>,
    pub found: Found,
}

/// What a walk found on both sides, besides what it planned.
#[derive(Default)]
pub struct Found {
    pub local_entries: u64,
    pub remote_entries: u64,
    /// Local files hashed by the scan (the rest reused the ledger's hash or left it to the
    /// transfer).
    pub hashed: u64,
    pub failures: Vec<PathFailure>,
    /// Temporary files of transfers found on each side.
    pub local_temps: Vec<String>,
    pub remote_temps: Vec<String>,
    /// The job's remote directory does not exist.
    pub root_missing: bool,
    /// The ready markers listed (pull jobs with `ready_marker:` or `batch_marker:`).
    pub markers: Vec<String>,
}

impl Found {
    /// The temporary files found on the side a job writes to.
    pub fn dest_temps(&mut self, direction: Direction) -> Vec<String> {
        match direction {
            Direction::Push => std::mem::take(&mut self.remote_temps),
            Direction::Pull => std::mem::take(&mut self.local_temps),
        }
    }
}

/// Writes of ledger-only actions are batched this many to a transaction.
const LEDGER_BATCH: usize = 1024;

/// Whether listing `waiting` directories, at `per_dir` each on one connection, is worth opening
/// more connections that cost `connect_time` each (opened side by side). On loopback a listing
/// takes a few ms and a login tens of ms, so a 20-directory tree is listed faster alone
/// (measured: 0.14 s alone, 0.25 s with three more connections); over a WAN link a listing is
/// several round trips and the same tree gains.
fn worth_more_connections(waiting: usize, per_dir: Duration, connect_time: Duration) -> bool {
    waiting >= 2
        && per_dir.saturating_mul(u32::try_from(waiting).unwrap_or(u32::MAX)) > connect_time * 4
}

/// A connection logging in.
pub(crate) type Connecting<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Session, FtpsError>> + Send + 'a>>;

fn connecting<'a>(job: &'a Job, tls: &'a TlsContext) -> Connecting<'a> {
    Box::pin(Session::connect(&job.remote, tls))
}

/// The listing's extra connections started before the walk, beside the first one (see
/// [`ConnectionsAhead::start`]): those still logging in, and those done.
#[derive(Default)]
pub(crate) struct ConnectionsAhead<'a> {
    pub(crate) opening: FuturesUnordered<Connecting<'a>>,
    pub(crate) opened: Vec<Result<Session, FtpsError>>,
}

impl<'a> ConnectionsAhead<'a> {
    /// A re-run of a tree the ledger knows to be wide, over a link the last run measured as
    /// slow (see `state/link.rs`): the extra connections log in beside the first (see
    /// [`ConnectionsAhead::first_connection`]), rather than once the first has asked FEAT and
    /// measured the link again. Over a 50 ms link a login is 7 round trips or more, 0.35 s of
    /// a re-run that lists 20 directories in about 1.3 s. Nothing on a LAN, on a first run, or
    /// for a narrow tree.
    pub(crate) fn start(
        job: &'a Job,
        ledger: &SharedLedger,
        tls: &'a TlsContext,
    ) -> Result<ConnectionsAhead<'a>, RunError> {
        let (link, known_dirs) = {
            let l = ledger.lock();
            (l.last_link(&job.name)?, l.directory_count(&job.name)?)
        };
        let mut ahead = ConnectionsAhead::default();
        let Some(link) = link else {
            return Ok(ahead);
        };
        let connections = job.transfers.for_rtt(link.rtt);
        if connections > 1
            && worth_more_connections(
                known_dirs,
                link.rtt.saturating_mul(LISTING_ROUND_TRIPS),
                link.login,
            )
        {
            let wanted = parallel::for_listing(known_dirs - 1, connections) - 1;
            tracing::debug!(
                known_dirs,
                rtt_ms = link.rtt.as_millis() as u64,
                "listing on {wanted} more connections, opened beside the first"
            );
            ahead
                .opening
                .extend((0..wanted).map(|_| connecting(job, tls)));
        }
        Ok(ahead)
    }

    /// Opens the run's first connection; the connections ahead start once its login is on its
    /// way, and log in while it asks FEAT and lists the root. Not all at once: a server checks
    /// a password with deliberately slow hashing (yescrypt, bcrypt), and sixteen passwords
    /// arriving together on a small server made the first connection, the one the walk waits
    /// for, wait for all of them (vsftpd with PAM on 2 cores: 200 ms more). Started later,
    /// the others' passwords arrive some four round trips after the first's. Nor once the
    /// first has logged in: then they were still logging in when the root was listed, and
    /// the walk waited for them. A wrong password fails the first before the others have
    /// sent theirs: they are dropped with it.
    pub(crate) async fn first_connection(
        &mut self,
        job: &Job,
        tls: &TlsContext,
    ) -> Result<Session, FtpsError> {
        let (tell, mut secured) = tokio::sync::oneshot::channel();
        let first = Session::connect_telling(&job.remote, tls, Some(tell));
        tokio::pin!(first);
        // The futures of `opening` do nothing until polled.
        let mut started = false;
        loop {
            tokio::select! {
                done = &mut first => return done,
                _ = &mut secured, if !started => started = true,
                Some(opened) = self.opening.next(), if started && !self.opening.is_empty() => {
                    self.opened.push(opened);
                }
            }
        }
    }
}

/// The round trips one listing takes once logged in: CWD with EPSV, the listing command while
/// the data connection's TCP handshake goes on, its TLS handshake, the listing and its 226.
const LISTING_ROUND_TRIPS: u32 = 4;

/// One directory as a visit found it.
struct Visited {
    visit: DirVisit,
    rows: LedgerView,
    local: Scan,
    remote: Scan,
    /// What was found out about files both sides hold and the ledger does not know.
    evidence: EvidenceMap,
    times: ListTimes,
    /// The remote root answered 550 (only for the root's visit).
    root_missing: bool,
    /// How long the listing took.
    took: Duration,
    /// Its subdirectories are queued already (it waited for the server's LIST offset).
    visits_queued: bool,
}

/// What every visit of one walk shares.
struct WalkContext<'a> {
    job_name: &'a str,
    ledger: SharedLedger,
    remote_root: &'a str,
    local_root: PathBuf,
    filter: Arc<PathFilter>,
    adopt: Adopt,
    /// The ledger holds files of this job: its remote root was there last time.
    root_known: bool,
}

impl WalkContext<'_> {
    /// Visits one directory: its ledger rows and its local side read on a blocking thread
    /// while its remote side is listed on `session`.
    async fn visit(
        &self,
        mut session: Session,
        visit: DirVisit,
        offset: Option<i64>,
    ) -> (Session, Result<Visited, RunError>) {
        let local = {
            let (job, ledger) = (self.job_name.to_string(), self.ledger.clone());
            let (root, filter, dir) = (self.local_root.clone(), self.filter.clone(), visit.clone());
            tokio::task::spawn_blocking(move || {
                let rows = ledger.lock().children(&job, &dir.path)?;
                let scan = if dir.local {
                    scan_local_dir(&root, &dir.path, &filter, &rows)
                } else {
                    Scan::default()
                };
                Ok::<_, RunError>((rows, scan))
            })
        };
        let started = Instant::now();
        let listed = if visit.remote {
            let there = !visit.path.is_empty() || self.root_known;
            RemoteListing::fetch(&mut session, self.remote_root, &visit.path, there)
                .await
                .map(Some)
        } else {
            Ok(None)
        };
        let took = started.elapsed();
        let (rows, mut local) = match local.await {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => return (session, Err(e)),
            Err(_) => return (session, Err(RunError::Task("local scan"))),
        };
        let mut remote = Scan::default();
        let mut times = ListTimes::default();
        times.learn(offset);
        let mut root_missing = false;
        let mut listing_exact = false;
        match listed {
            Ok(None) => {}
            Ok(Some(listing)) => {
                listing_exact = listing.is_mlsd();
                let added = listing
                    .add_to(
                        &mut session,
                        self.remote_root,
                        &self.filter,
                        |_| true,
                        &rows,
                        &mut remote,
                        &mut times,
                    )
                    .await;
                if let Err(e) = added {
                    return (session, Err(e.into()));
                }
            }
            Err(e) if visit.path.is_empty() && e.code() == Some(550) => root_missing = true,
            Err(e) => return (session, Err(e.into())),
        }
        let mut evidence = EvidenceMap::new();
        if self.adopt == Adopt::Evidence && visit.local && visit.remote {
            let gathered = gather_evidence(
                &mut session,
                self.remote_root,
                &self.local_root,
                &rows,
                &mut local,
                &remote.snapshot,
                listing_exact,
            )
            .await;
            match gathered {
                Ok(found) => evidence = found,
                Err(e) => return (session, Err(e.into())),
            }
        }
        let visited = Visited {
            visit,
            rows,
            local,
            remote,
            evidence,
            times,
            root_missing,
            took,
            visits_queued: false,
        };
        (session, Ok(visited))
    }
}

/// What the walk has gathered so far, besides the plan.
#[derive(Default)]
struct Gathered {
    found: Found,
    /// Ledger-only actions not written yet (kept to the end in a dry run).
    ledger_only: Vec<Action>,
}

/// Walks both trees of `job`, starting on the logged-in `first` connection (which took
/// `connect_time` to open). `write_ledger`: write ledger-only actions as they come (not in a
/// dry run).
#[allow(clippy::too_many_arguments)]
pub async fn walk<'a>(
    job: &'a Job,
    ledger: &SharedLedger,
    tls: &'a TlsContext,
    first: Session,
    connect_time: Duration,
    write_ledger: bool,
    ahead: ConnectionsAhead<'a>,
) -> Result<Walked, RunError> {
    let ledger_files = ledger.lock().entry_count(&job.name)?;
    let ctx = WalkContext {
        job_name: &job.name,
        ledger: ledger.clone(),
        remote_root: &job.remote.path,
        local_root: job.local.clone(),
        filter: Arc::new(job.filter.clone()),
        adopt: job.adopt,
        root_known: ledger_files > 0,
    };
    let mut planning = Planning {
        tree: TreePlan::new(PlanOptions {
            direction: job.direction,
            mode: job.mode,
            max_delete: job.max_delete,
            dest_files: None,
            allow_empty_source: job.allow_empty_source,
            source_empty: None,
            ledger_files: Some(ledger_files),
            adopt: job.adopt,
            ages: age_rule(job, first.features.mlsd),
            protect_dest: job.after.moves_sources(),
        }),
        got: Gathered::default(),
        offset: match job.remote.list_time_offset {
            ListTimeOffset::Fixed(secs) => Some(secs),
            ListTimeOffset::Auto => None,
        },
        queue: VecDeque::from([DirVisit::root(job.local.is_dir(), true)]),
        deferred: Vec::new(),
    };
    // `transfers: auto` scales with the round trip measured at login (see
    // `crate::model::parallel`).
    let connections = job.transfers.for_rtt(first.rtt());
    let rtt = first.rtt();
    let mut idle = vec![first];
    let mut sessions = 1;
    let mut in_flight = FuturesUnordered::new();
    // Connections being opened for the listing: the walk goes on on those it has meanwhile.
    let ConnectionsAhead {
        mut opening,
        opened,
    } = ahead;
    let mut more_wanted = connections > 1 && opening.is_empty() && opened.is_empty();
    sessions += opening.len();
    for s in opened {
        match s {
            Ok(s) => {
                idle.push(s);
                sessions += 1;
            }
            Err(e) => tracing::debug!("no extra connection for the listing: {e}"),
        }
    }
    // What one listing takes, from those done on a single connection.
    let mut listed_alone = (Duration::ZERO, 0u32);
    // A tree the ledger knows to be wide, over a link where a listing costs round trips: the
    // extra connections log in while the root is listed, not after.
    let known_dirs = ledger.lock().directory_count(&job.name)?;
    if more_wanted
        && worth_more_connections(
            known_dirs,
            rtt.saturating_mul(LISTING_ROUND_TRIPS),
            connect_time,
        )
    {
        more_wanted = false;
        let wanted = parallel::for_listing(known_dirs - 1, connections) - 1;
        tracing::debug!(
            known_dirs,
            "listing on {wanted} more connections from the start"
        );
        sessions += wanted;
        opening.extend((0..wanted).map(|_| connecting(job, tls)));
    }

    loop {
        let waiting = planning.queue.len();
        if more_wanted && sessions == 1 && listed_alone.1 > 0 && waiting >= 2 {
            let per_dir = listed_alone.0 / listed_alone.1;
            if worth_more_connections(waiting, per_dir, connect_time) {
                more_wanted = false;
                let wanted = parallel::for_listing(waiting, connections) - 1;
                tracing::debug!(
                    waiting,
                    per_dir_ms = per_dir.as_millis() as u64,
                    connect_ms = connect_time.as_millis() as u64,
                    "listing on {wanted} more connections"
                );
                sessions += wanted;
                opening.extend((0..wanted).map(|_| connecting(job, tls)));
            }
        }
        while !planning.queue.is_empty() && !idle.is_empty() {
            let (Some(visit), Some(session)) = (planning.queue.pop_front(), idle.pop()) else {
                break;
            };
            in_flight.push(ctx.visit(session, visit, planning.offset));
        }
        let next = if in_flight.is_empty() || opening.is_empty() {
            in_flight.next().await
        } else {
            tokio::select! {
                visited = in_flight.next() => visited,
                Some(opened) = opening.next() => {
                    match opened {
                        Ok(session) => idle.push(session),
                        // Too many connections, say: list on the ones there are.
                        Err(e) => {
                            tracing::debug!("no extra connection for the listing: {e}");
                            sessions -= 1;
                        }
                    }
                    continue;
                }
            }
        };
        let Some((session, visited)) = next else {
            if !planning.release_deferred()? {
                break;
            }
            flush_ledger(job, ledger, &mut planning.got, write_ledger, 0)?;
            continue;
        };
        idle.push(session);
        let visited = visited?;
        if sessions == 1 && visited.visit.remote {
            listed_alone = (listed_alone.0 + visited.took, listed_alone.1 + 1);
        }
        if planning.take(visited)? {
            flush_ledger(job, ledger, &mut planning.got, write_ledger, LEDGER_BATCH)?;
        }
    }
    // Connections still logging in carry the transfers.
    while let Some(opened) = opening.next().await {
        match opened {
            Ok(session) => idle.push(session),
            Err(e) => tracing::debug!("no extra connection for the listing: {e}"),
        }
    }
    let Planning { tree, mut got, .. } = planning;

    // Rows of directories the walk never entered: gone from both sides, or excluded.
    let unvisited = unvisited_rows(job, ledger, &tree)?;
    got.ledger_only
        .extend(unvisited.into_iter().map(|path| Action::Forget { path }));
    flush_ledger(job, ledger, &mut got, write_ledger, 0)?;

    let mut plan = match tree.finish(job.filter.has_includes()) {
        Ok(plan) => plan,
        // A pull whose remote directory is missing lists no file: the run fails with
        // `RemoteRootMissing` before it acts, which says more than that the source is empty.
        Err(PlanError::EmptySource { .. })
            if got.found.root_missing && job.direction == Direction::Pull =>
        {
            SyncPlan::default()
        }
        Err(source) => return Err(plan_refused(job, source)),
    };
    plan.actions.append(&mut got.ledger_only);
    Ok(Walked {
        plan,
        sessions: idle,
        found: got.found,
    })
}

/// The ledger's rows in directories the walk never entered.
fn unvisited_rows(
    job: &Job,
    ledger: &SharedLedger,
    tree: &TreePlan,
) -> Result<Vec<String>, RunError> {
    let l = ledger.lock();
    let mut rows = Vec::new();
    for parent in l.parents(&job.name)? {
        if !tree.visited(&parent) {
            rows.extend(l.paths_in(&job.name, &parent)?);
        }
    }
    Ok(rows)
}

/// The plan of a walk as it grows, and the directories still to visit.
struct Planning {
    tree: TreePlan,
    got: Gathered,
    /// The offset of the server's LIST times, once known.
    offset: Option<i64>,
    queue: VecDeque<DirVisit>,
    /// Directories whose LIST times wait for the server's offset (only LIST servers, and only
    /// while no listed file was recent enough to learn it from).
    deferred: Vec<Visited>,
}

impl Planning {
    /// A directory's listing arrived: planned at once, or deferred until the server's LIST
    /// offset is known (its subdirectories are visited meanwhile). `true`: it was planned.
    fn take(&mut self, mut visited: Visited) -> Result<bool, RunError> {
        if self.offset.is_none() {
            self.offset = visited.times.offset();
            if self.offset.is_some() {
                self.plan_deferred()?;
            }
        }
        let unreadable = visited.local.unreadable.contains(&visited.visit.path);
        if self.offset.is_none() && visited.times.has_pending() && !unreadable {
            // What lies below is visited meanwhile: a later directory may tell the offset.
            self.queue.extend(self.tree.dir_visits(
                &visited.visit,
                &visited.local.snapshot,
                &visited.remote.snapshot,
            ));
            visited.visits_queued = true;
            self.deferred.push(visited);
            return Ok(false);
        }
        self.plan(visited)?;
        Ok(true)
    }

    /// Nothing is listing any more: no listed file told the server's offset, so the deferred
    /// directories' LIST times are read as UTC. `false`: there were none, the walk is over.
    fn release_deferred(&mut self) -> Result<bool, RunError> {
        if self.deferred.is_empty() {
            return Ok(false);
        }
        self.offset = Some(self.offset.unwrap_or(0));
        self.plan_deferred()?;
        Ok(true)
    }

    fn plan_deferred(&mut self) -> Result<(), RunError> {
        for d in std::mem::take(&mut self.deferred) {
            self.plan(d)?;
        }
        Ok(())
    }

    fn plan(&mut self, visited: Visited) -> Result<(), RunError> {
        plan_dir(
            visited,
            self.offset,
            &mut self.tree,
            &mut self.queue,
            &mut self.got,
        )
    }
}

/// Hands one visited directory to the plan, and its subdirectories to the queue.
fn plan_dir(
    mut d: Visited,
    offset: Option<i64>,
    tree: &mut TreePlan,
    queue: &mut VecDeque<DirVisit>,
    got: &mut Gathered,
) -> Result<(), RunError> {
    d.times.learn(offset);
    d.times.finish(&mut d.remote);
    if d.root_missing {
        got.found.root_missing = true;
        d.visit.remote = false;
    }
    got.found.local_entries += d.local.snapshot.len() as u64;
    got.found.remote_entries += d.remote.snapshot.len() as u64;
    got.found.hashed += d.local.hashed;
    got.found.local_temps.append(&mut d.local.temps);
    got.found.remote_temps.append(&mut d.remote.temps);
    got.found.markers.append(&mut d.remote.markers);
    got.found.failures.append(&mut d.local.failures);
    got.found.failures.append(&mut d.remote.failures);
    if d.local.unreadable.contains(&d.visit.path) {
        if d.visit.path.is_empty() {
            let reason = got
                .found
                .failures
                .pop()
                .map(|f| f.error)
                .unwrap_or_else(|| "cannot read the local directory".into());
            return Err(RunError::LocalRoot(reason));
        }
        // Nothing below it is known: it is left as it is, on both sides.
        tree.spare(&d.visit.path);
        return Ok(());
    }
    for path in &d.local.unreadable {
        tree.spare(path);
    }
    let out = tree.add_dir(
        &d.visit,
        &d.rows,
        &d.local.snapshot,
        &d.remote.snapshot,
        &d.evidence,
    );
    if !d.visits_queued {
        queue.extend(out.visits);
    }
    got.ledger_only.extend(out.ledger_only);
    Ok(())
}

/// Writes the ledger-only actions gathered, once there are at least `at_least` (not in a dry
/// run, where they stay for the plan).
fn flush_ledger(
    job: &Job,
    ledger: &SharedLedger,
    got: &mut Gathered,
    write: bool,
    at_least: usize,
) -> Result<(), RunError> {
    if !write || got.ledger_only.is_empty() || got.ledger_only.len() < at_least {
        return Ok(());
    }
    let actions = std::mem::take(&mut got.ledger_only);
    ledger
        .lock()
        .batch(|l| {
            for a in &actions {
                match a {
                    Action::Record { path, entry } => l.record(&job.name, path, entry)?,
                    Action::Forget { path } => l.forget(&job.name, path)?,
                    _ => {}
                }
            }
            Ok(())
        })
        .map_err(RunError::from)
}

/// The job's `min_age:` / `max_age:` as of now (see [`crate::model::age`]). A pull's remote
/// times are exact only from MLSD; a LIST time is taken as up to a minute early.
pub(crate) fn age_rule(job: &Job, mlsd: bool) -> crate::model::age::AgeRule {
    let uncertainty = match job.direction {
        Direction::Pull if !mlsd => std::time::Duration::from_secs(60),
        _ => std::time::Duration::ZERO,
    };
    crate::model::age::AgeRule::new(
        job.ages,
        uncertainty,
        crate::model::snapshot::system_time_ns(std::time::SystemTime::now()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_connections_only_when_listing_alone_takes_longer() {
        let ms = Duration::from_millis;
        // Loopback: 20 directories at 3 ms against a 20 ms login: alone.
        assert!(!worth_more_connections(20, ms(3), ms(20)));
        // 1,000 directories: more connections.
        assert!(worth_more_connections(1000, ms(3), ms(20)));
        // A WAN link (30 ms round trips): 20 directories at 120 ms against a 240 ms login.
        assert!(worth_more_connections(20, ms(120), ms(240)));
        assert!(!worth_more_connections(1, ms(1000), ms(1)));
    }
}
