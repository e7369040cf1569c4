//! The decision: given what the ledger remembers and what both sides hold now, what must happen.
//!
//! [`plan_with`] is pure (no I/O, no clock), so every rule here is tested without a server. The
//! ledger remembers, per file, the local size/mtime/BLAKE3 and the remote size/mtime as they
//! were when the file was last synced; a side is "unchanged" when it still matches that record.

use std::collections::{BTreeMap, VecDeque};

use crate::model::policy::{default_max_delete, Direction, MaxDelete, SyncMode};
use crate::model::snapshot::{Entry, Evidence, EvidenceMap, Kind, Snapshot};

/// What the ledger remembers of one synced file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncedEntry {
    /// Local size, mtime (ns) and content hash.
    pub size: u64,
    pub mtime: i64,
    pub hash: blake3::Hash,
    /// The remote file as its listing showed it. `remote_mtime` is `None` right after an
    /// upload, until the next listing reports the time the server gave the file.
    pub remote_size: u64,
    pub remote_mtime: Option<i64>,
}

/// The ledger's view of one job: path -> last synced state.
pub type LedgerView = BTreeMap<String, SyncedEntry>;

/// `adopt:` in a job file: what a run does with a file that both sides hold and the ledger has
/// no row for (a lost or moved state file, a folder or server tree copied by lftp or rclone,
/// a transfer whose ledger write was lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Adopt {
    /// Decide by evidence (see [`adoption`]): the same file on both sides is recorded as
    /// synced without a transfer; a file shown to differ, or one nothing shows to be the same,
    /// is a conflict, never overwritten.
    #[default]
    Evidence,
    /// Send it again, overwriting the destination's copy whatever it holds (what every run did
    /// before adoption).
    Recopy,
}

/// A remote file not taken this run because it may still be changing
/// (`settle:`, see [`crate::model::settle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub path: String,
    pub size: u64,
    /// How much longer it must stay unchanged (ns), as of this run.
    pub remaining_ns: i64,
    /// The ready marker it waits for instead (`ready_marker:` or `batch_marker:`, see
    /// [`crate::model::marker`]), as a path; `None`: it waits to settle.
    pub marker: Option<String>,
}

/// What the evidence says of a file both sides hold and the ledger does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adoption {
    /// The two copies are the same; the text says how this is known.
    Same(String),
    /// The two copies differ; the text says how this is known.
    Differs(String),
    /// Nothing shows whether they are the same (the text says what was missing).
    Unknown(String),
}

/// The rule of adoption, for a `local` and a `remote` file at a path the ledger has no row
/// for, given the `evidence` the run gathered, strongest first:
///
/// 1. Different sizes: they differ.
/// 2. A server digest (HASH, XSHA256, XSHA1, XMD5) against the local digest of the same
///    algorithm: equal, the same; not equal, they differ.
/// 3. The remote bytes read in full and hashed with BLAKE3, against the local BLAKE3: the same
///    or different.
/// 4. The same size and the same modification time to the second, the remote time exact
///    (MLSD or MDTM, never LIST's minute): the same, as rsync, rclone and lftp judge a copy.
///    A different time proves nothing (a copy that did not keep times): unknown.
///
/// A file the evidence calls the same needs its local BLAKE3 for the ledger's row: without it
/// the answer is unknown.
pub fn adoption(local: &Entry, remote: &Entry, evidence: Option<&Evidence>) -> Adoption {
    if local.size != remote.size {
        return Adoption::Differs(format!(
            "the local file has {} bytes, the remote file {}",
            local.size, remote.size
        ));
    }
    let no_evidence = |missing: &[String]| {
        let mut why = "no evidence that the two copies are the same".to_string();
        if !missing.is_empty() {
            why.push_str(&format!(" ({})", missing.join("; ")));
        }
        Adoption::Unknown(why)
    };
    let Some(ev) = evidence else {
        return no_evidence(&[]);
    };
    if local.hash.is_none() {
        return no_evidence(&ev.missing);
    }
    if let Some(d) = &ev.digest {
        return if d.local == d.remote {
            Adoption::Same(format!("the server's {} matches", d.algorithm))
        } else {
            Adoption::Differs(format!(
                "the server's {} differs from the local file's",
                d.algorithm
            ))
        };
    }
    if let Some((read, hash)) = ev.remote_content {
        return if read == local.size && local.hash == Some(hash) {
            Adoption::Same("the remote bytes, read and hashed, match".into())
        } else {
            Adoption::Differs("the remote bytes, read and hashed, differ".into())
        };
    }
    if let Some(t) = ev.remote_exact_mtime {
        if t.div_euclid(NS_PER_SEC) == local.mtime.div_euclid(NS_PER_SEC) {
            return Adoption::Same("same size and modification time to the second".into());
        }
    }
    no_evidence(&ev.missing)
}

const NS_PER_SEC: i64 = 1_000_000_000;

/// What the local scan must do about a file's BLAKE3 (see [`local_hash`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalHash {
    /// The ledger's record has the same size and mtime: its hash stands.
    Reuse(blake3::Hash),
    /// Read and hash the file now: the plan compares its content with the record, or the file
    /// may still be changing.
    Compute,
    /// Leave it unknown: the plan sends the file whatever its content, and the transfer hashes
    /// the bytes as it streams them (one read of the file instead of two).
    Skip,
}

/// How long after its last modification a file may still be being written as far as its mtime
/// can tell: the kernel stamps mtimes from a clock that ticks every few milliseconds, FAT and
/// some network filesystems to the 2 seconds. A file modified this recently is hashed by the
/// scan, so that an upload compares content, not only size and mtime.
pub const UNSETTLED_NS: i64 = 3_000_000_000;

/// Whether the scan must hash a local file of `size` and `mtime`, given the ledger's record of
/// its path and the scan's clock (`now`, ns). The plan reads a local hash only when the record
/// has the file's size: a new mtime with the same size may be a touch (recorded, not sent). A
/// file without a record, or with another size, is sent (push) or fetched over (pull) whatever
/// its content, so hashing it in the scan would be a second read of every new file.
pub fn local_hash(record: Option<&SyncedEntry>, size: u64, mtime: i64, now: i64) -> LocalHash {
    match record {
        Some(e) if e.size == size && e.mtime == mtime => LocalHash::Reuse(e.hash),
        Some(e) if e.size == size => LocalHash::Compute,
        _ if now.saturating_sub(mtime) < UNSETTLED_NS => LocalHash::Compute,
        _ => LocalHash::Skip,
    }
}

/// One step of a run. Destination-side actions refer to the remote side for push jobs and to
/// the local side for pull jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create a directory on the destination.
    MakeDir { path: String },
    /// Send a local file to the server.
    Upload { path: String, source: Entry },
    /// Fetch a remote file.
    Download { path: String, source: Entry },
    /// Delete a file on the destination (mirror mode only).
    DeleteFile { path: String },
    /// Delete a directory on the destination, after everything inside it (mirror mode only).
    DeleteDir { path: String },
    /// Update the ledger only: the bytes are already identical on both sides.
    Record { path: String, entry: SyncedEntry },
    /// Drop a ledger row whose path is gone from both sides.
    Forget { path: String },
}

impl Action {
    /// The action that sends `path` the job's way: an upload for a push, a download for a pull.
    pub fn transfer(direction: Direction, path: String, source: Entry) -> Action {
        match direction {
            Direction::Push => Action::Upload { path, source },
            Direction::Pull => Action::Download { path, source },
        }
    }

    pub fn path(&self) -> &str {
        match self {
            Action::MakeDir { path }
            | Action::Upload { path, .. }
            | Action::Download { path, .. }
            | Action::DeleteFile { path }
            | Action::DeleteDir { path }
            | Action::Record { path, .. }
            | Action::Forget { path } => path,
        }
    }

    pub fn is_transfer(&self) -> bool {
        matches!(self, Action::Upload { .. } | Action::Download { .. })
    }

    /// Whether the action changes either side (as opposed to the ledger only).
    pub fn changes_files(&self) -> bool {
        !matches!(self, Action::Record { .. } | Action::Forget { .. })
    }
}

/// A path that cannot be synced as things stand, such as a file on one side where the other
/// has a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub path: String,
    pub reason: String,
}

/// The outcome of planning: actions in the order they must run, and conflicts to report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncPlan {
    pub actions: Vec<Action>,
    pub conflicts: Vec<Conflict>,
    /// How many of the Record actions adopt a file the ledger did not know (see [`adoption`]).
    pub adopted: u64,
    /// Remote files a pull left for a later run because they may still be changing (see
    /// [`crate::model::settle`]).
    pub waiting: Vec<Waiting>,
    /// The ready markers a pull's listing found (see [`crate::model::marker`]): never
    /// transferred, and deleted on the server after the run where the job says so.
    pub markers: Vec<String>,
}

impl SyncPlan {
    /// Takes the transfers out of the plan, in their order, without copying them (see
    /// [`Decided::into_plan`]): [`plan_with`] and [`TreePlan`] put every transfer in one run.
    pub fn take_transfers(&mut self) -> VecDeque<Action> {
        let actions = &mut self.actions;
        let start = actions
            .iter()
            .position(Action::is_transfer)
            .unwrap_or(actions.len());
        let end = start
            + actions[start..]
                .iter()
                .take_while(|a| a.is_transfer())
                .count();
        let mut rest = actions.split_off(end);
        let before: Vec<Action> = actions.drain(..start).collect();
        let mut transfers = VecDeque::from(std::mem::replace(actions, before));
        // Transfers out of that run (none from this module's planners) still go.
        transfers.extend(rest.iter().filter(|a| a.is_transfer()).cloned());
        rest.retain(|a| !a.is_transfer());
        actions.append(&mut rest);
        transfers
    }

    pub fn count(&self, pred: impl Fn(&Action) -> bool) -> usize {
        self.actions.iter().filter(|a| pred(a)).count()
    }
    pub fn transfers(&self) -> usize {
        self.count(|a| matches!(a, Action::Upload { .. } | Action::Download { .. }))
    }
    pub fn deletes(&self) -> usize {
        self.count(|a| matches!(a, Action::DeleteFile { .. }))
    }
    pub fn transfer_bytes(&self) -> u64 {
        self.actions
            .iter()
            .map(|a| match a {
                Action::Upload { source, .. } | Action::Download { source, .. } => source.size,
                _ => 0,
            })
            .sum()
    }
}

/// A run refused before any change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "refusing to delete {wanted} of {dest_files} files on the destination: max_delete {max} allows {limit}; nothing was changed"
    )]
    TooManyDeletes {
        wanted: u64,
        limit: u64,
        dest_files: u64,
        max: String,
    },
    /// The job sets no `max_delete`, and the run would delete more than
    /// [`crate::model::policy::default_max_delete`] allows.
    #[error(
        "refusing to delete {wanted} of {dest_files} files on the destination: without max_delete a run may delete half of the destination's files, and at least 10, so {limit}; nothing was changed; set max_delete (a count, a percentage, or 100% for no limit) to allow more"
    )]
    TooManyDeletesByDefault {
        wanted: u64,
        limit: u64,
        dest_files: u64,
    },
    /// The source lists no file at all while the run would delete files on the destination,
    /// and the job does not set `allow_empty_source`.
    #[error(
        "refusing to delete {wanted} of {dest_files} files on the destination: {} lists no file {}; nothing was changed; set allow_empty_source: true to mirror an emptied source",
        source_name(*.direction, .source_root),
        ledger_note(*.direction, *.ledger_files)
    )]
    EmptySource {
        wanted: u64,
        dest_files: u64,
        /// The job's synced files in the ledger.
        ledger_files: u64,
        direction: Direction,
        /// Where the source is (the local folder, the remote directory), for the message: the
        /// plan does not know it; the run names it with [`PlanError::naming_source`].
        source_root: String,
    },
}

impl PlanError {
    /// The error with the source's location (a local folder, a remote directory) in its text.
    pub fn naming_source(mut self, root: impl Into<String>) -> PlanError {
        if let PlanError::EmptySource { source_root, .. } = &mut self {
            *source_root = root.into();
        }
        self
    }
}

fn source_name(direction: Direction, root: &str) -> String {
    let side = match direction {
        Direction::Push => "the local folder",
        Direction::Pull => "the remote directory",
    };
    if root.is_empty() {
        side.to_string()
    } else {
        format!("{side} {root}")
    }
}

fn ledger_note(direction: Direction, ledger_files: u64) -> String {
    let why = match direction {
        Direction::Push => "an unmounted disk? a moved folder?",
        Direction::Pull => "a moved directory? a listing that came back empty?",
    };
    match ledger_files {
        0 => format!("and the job has synced nothing yet ({why})"),
        1 => format!("while the ledger holds 1 synced file ({why})"),
        n => format!("while the ledger holds {n} synced files ({why})"),
    }
}

/// The options of a job that decide the plan.
#[derive(Debug, Clone, Copy)]
pub struct PlanOptions {
    pub direction: Direction,
    pub mode: SyncMode,
    /// `None`: the job sets none, and [`crate::model::policy::default_max_delete`] applies.
    pub max_delete: Option<MaxDelete>,
    /// The number of files on the whole destination, when the snapshots hold only part of the
    /// tree (an incremental run): `max_delete` is relative to the whole destination, so a
    /// percentage must not shrink to a percentage of the part. `None`: the files of `dest`.
    pub dest_files: Option<u64>,
    /// `allow_empty_source`: a source that lists no file may empty the destination (a mirror
    /// refuses that otherwise, see [`PlanError::EmptySource`]), and the default limit then
    /// does not apply either (an explicit `max_delete` still does).
    pub allow_empty_source: bool,
    /// Whether the whole source holds no file, when the snapshots hold only part of the tree
    /// (an incremental run). `None`: whether the source snapshots hold none.
    pub source_empty: Option<bool>,
    /// The job's synced files in the ledger, when the ledger view holds only part of them (an
    /// incremental run, a full run planned directory by directory), for the refusal's text.
    /// `None`: the rows handed to the plan.
    pub ledger_files: Option<u64>,
    /// What to do with a file both sides hold and the ledger does not know (`adopt:`).
    pub adopt: Adopt,
    /// `min_age:` / `max_age:`: a source file outside them is left alone, as if the filter
    /// excluded it on both sides (see [`crate::model::age`]).
    pub ages: crate::model::age::AgeRule,
    /// `after_transfer: delete | archive`: a destination file is overwritten only while it is
    /// still our last delivery (the ledger's record of it); one changed since (the partner
    /// replaced or edited it) is a conflict, never overwritten by the next file of that name.
    pub protect_dest: bool,
}

/// Decides the actions of one run, with no evidence for files the ledger does not know (see
/// [`plan_with`]): the rules' tests.
#[cfg(test)]
pub fn plan(
    opts: PlanOptions,
    ledger: &LedgerView,
    local: &Snapshot,
    remote: &Snapshot,
) -> Result<SyncPlan, PlanError> {
    plan_with(opts, ledger, local, remote, &EvidenceMap::new())
}

/// Decides the actions of one run; `evidence` holds what the run found out about files both
/// sides hold and the ledger has no row for (see [`adoption`]).
pub fn plan_with(
    opts: PlanOptions,
    ledger: &LedgerView,
    local: &Snapshot,
    remote: &Snapshot,
    evidence: &EvidenceMap,
) -> Result<SyncPlan, PlanError> {
    let decided = decide(opts, ledger, local, remote, evidence);
    let (source, dest) = match opts.direction {
        Direction::Push => (local, remote),
        Direction::Pull => (remote, local),
    };
    let dest_files = opts
        .dest_files
        .unwrap_or_else(|| dest.values().filter(|e| e.kind == Kind::File).count() as u64);
    let source_empty = opts
        .source_empty
        .unwrap_or_else(|| !source.values().any(|e| e.kind == Kind::File));
    let ledger_files = opts.ledger_files.unwrap_or(ledger.len() as u64);
    check_deletes(
        opts,
        decided.delete_files.len(),
        dest_files,
        source_empty,
        ledger_files,
    )?;
    Ok(decided.into_plan())
}

/// What [`plan_with`] decides before `max_delete` is checked, by kind of action.
#[derive(Debug, Default)]
struct Decided {
    /// MakeDir and Record, in the source's order (a directory before what lies in it).
    first: Vec<Action>,
    transfers: Vec<Action>,
    delete_files: Vec<Action>,
    /// Deepest first, so a directory is empty when its turn comes.
    delete_dirs: Vec<Action>,
    forgets: Vec<Action>,
    conflicts: Vec<Conflict>,
    /// Files adopted on evidence (their Record actions are in `first`).
    adopted: u64,
}

impl Decided {
    fn into_plan(self) -> SyncPlan {
        // Built on the transfers' own buffer, the largest by far on a first sync (a million
        // uploads are ~130 MB): moving them into another would hold both at once.
        let mut actions = self.transfers;
        actions.splice(0..0, self.first);
        actions.extend(self.delete_files);
        actions.extend(self.delete_dirs);
        actions.extend(self.forgets);
        SyncPlan {
            actions,
            conflicts: self.conflicts,
            adopted: self.adopted,
            waiting: Vec::new(),
            markers: Vec::new(),
        }
    }
}

/// Whether a run may make `wanted` file deletions, checked before any change: a source that
/// lists no file may not empty the destination unless the job allows it, and no run deletes
/// more than `max_delete` allows, or the default limit where the job sets none.
fn check_deletes(
    opts: PlanOptions,
    wanted: usize,
    dest_files: u64,
    source_empty: bool,
    ledger_files: u64,
) -> Result<(), PlanError> {
    let wanted = wanted as u64;
    if wanted == 0 {
        return Ok(());
    }
    if source_empty && !opts.allow_empty_source {
        return Err(PlanError::EmptySource {
            wanted,
            dest_files,
            ledger_files,
            direction: opts.direction,
            source_root: String::new(),
        });
    }
    match opts.max_delete {
        Some(max) => {
            let limit = max.limit(dest_files);
            if wanted > limit {
                return Err(PlanError::TooManyDeletes {
                    wanted,
                    limit,
                    dest_files,
                    max: max.to_string(),
                });
            }
        }
        // A job that allows an empty source and has one deletes everything by definition.
        None if source_empty => {}
        None => {
            let limit = default_max_delete(dest_files);
            if wanted > limit {
                return Err(PlanError::TooManyDeletesByDefault {
                    wanted,
                    limit,
                    dest_files,
                });
            }
        }
    }
    Ok(())
}

fn decide(
    opts: PlanOptions,
    ledger: &LedgerView,
    local: &Snapshot,
    remote: &Snapshot,
    evidence: &EvidenceMap,
) -> Decided {
    let (source, dest) = match opts.direction {
        Direction::Push => (local, remote),
        Direction::Pull => (remote, local),
    };
    let mut out = Decided::default();
    let mut dest_conflicts = std::collections::BTreeSet::new();

    for (path, s) in source {
        let d = dest.get(path);
        match (s.kind, d.map(|d| d.kind)) {
            (Kind::Dir, Some(Kind::Dir)) => {}
            (Kind::Dir, None) => out.first.push(Action::MakeDir { path: path.clone() }),
            (Kind::Dir, Some(Kind::File)) | (Kind::File, Some(Kind::Dir)) => {
                dest_conflicts.insert(path.clone());
                out.conflicts.push(Conflict {
                    path: path.clone(),
                    reason: format!(
                        "the source has a {} where the destination has a {}; remove one of them by hand",
                        kind_name(s.kind),
                        kind_name(d.map(|d| d.kind).unwrap_or(Kind::File))
                    ),
                });
            }
            // Left alone: neither sent nor, being on the source, a reason to delete.
            (Kind::File, _) if !opts.ages.takes(s.mtime) => {}
            (Kind::File, _) => {
                let d = d.filter(|d| d.kind == Kind::File);
                let decision = match (ledger.get(path), d) {
                    (Some(e), Some(d)) => match unchanged_pair(opts.direction, e, s, d) {
                        None if opts.protect_dest && !dest_as_delivered(opts.direction, e, d) => {
                            out.conflicts.push(Conflict {
                                path: path.clone(),
                                reason: "the destination's copy changed since ferrysync delivered it; with after_transfer it is not overwritten: move it away to have the new file delivered".into(),
                            });
                            continue;
                        }
                        decision => decision,
                    },
                    (None, Some(d)) if opts.adopt == Adopt::Evidence => {
                        match adopt_unknown(opts.direction, path, s, d, evidence.get(path)) {
                            Ok(entry) => {
                                out.adopted += 1;
                                Some(Some(entry))
                            }
                            Err(conflict) => {
                                out.conflicts.push(conflict);
                                continue;
                            }
                        }
                    }
                    _ => None,
                };
                match decision {
                    Some(None) => {}
                    Some(Some(entry)) => out.first.push(Action::Record {
                        path: path.clone(),
                        entry,
                    }),
                    None => out.transfers.push(match opts.direction {
                        Direction::Push => Action::Upload {
                            path: path.clone(),
                            source: s.clone(),
                        },
                        Direction::Pull => Action::Download {
                            path: path.clone(),
                            source: s.clone(),
                        },
                    }),
                }
            }
        }
    }

    // What the destination has and the source does not.
    if opts.mode == SyncMode::Mirror {
        for (path, d) in dest {
            if source.contains_key(path) || under_any(path, &dest_conflicts) {
                continue;
            }
            match d.kind {
                Kind::File => out
                    .delete_files
                    .push(Action::DeleteFile { path: path.clone() }),
                Kind::Dir => out
                    .delete_dirs
                    .push(Action::DeleteDir { path: path.clone() }),
            }
        }
    }
    out.delete_dirs.reverse();

    // A row whose path is on neither side is dropped; a mirror delete drops its own row.
    for path in ledger.keys() {
        if !source.contains_key(path) && !dest.contains_key(path) {
            out.forgets.push(Action::Forget { path: path.clone() });
        }
    }
    out
}

/// Where the walk of a full run enters a directory (see [`TreePlan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirVisit {
    /// Relative to the job's root; `""` is the root.
    pub path: String,
    /// Whether it is a directory on the local side, and on the remote side.
    pub local: bool,
    pub remote: bool,
    /// It lies in a destination directory that a source file stands against: nothing in it is
    /// deleted, as [`plan_with`] spares what lies under a conflict.
    pub protected: bool,
}

impl DirVisit {
    pub fn root(local: bool, remote: bool) -> DirVisit {
        DirVisit {
            path: String::new(),
            local,
            remote,
            protected: false,
        }
    }
}

/// What planning one directory gives the walk.
#[derive(Debug, Default)]
pub struct DirOutcome {
    /// Its subdirectories, to visit in turn.
    pub visits: Vec<DirVisit>,
    /// Record and Forget actions: ledger-only, nothing else waits for them, so a run may apply
    /// them at once instead of keeping them.
    pub ledger_only: Vec<Action>,
}

/// The plan of a full run, built one directory at a time so that a run never holds a whole
/// tree: at a million files the three whole-tree maps (ledger rows, local scan, listing) were
/// 555 MiB of a run's memory.
///
/// The walk hands [`TreePlan::add_dir`] the direct children of each directory (ledger rows,
/// local and remote entries, keyed by their full paths) and visits the subdirectories it
/// returns. What must wait for the whole tree is kept: transfers and deletes (`max_delete`
/// counts every delete), and the directories of both sides, because directory actions depend
/// on what lies below them (include patterns keep only directories that lead to a file).
/// [`TreePlan::finish`] decides those with [`plan_with`] itself, over the directories and the files
/// that stand against a directory on the other side. The result is [`plan_with`]'s over the whole
/// trees, up to the order within a kind of action (a property test checks it).
#[derive(Debug)]
pub struct TreePlan {
    opts: PlanOptions,
    /// The directories seen on each side (the root aside), and whether a file lies below.
    local_dirs: BTreeMap<String, bool>,
    remote_dirs: BTreeMap<String, bool>,
    /// Files at paths where the other side has a directory.
    local_against_dirs: Snapshot,
    remote_against_dirs: Snapshot,
    /// Ledger rows at paths that are a directory, and a file on neither side: forgotten if
    /// include patterns prune that directory away.
    rows_at_dirs: Vec<String>,
    /// Local paths that could not be read: nothing at or below them is deleted or forgotten.
    spared: Vec<String>,
    transfers: Vec<Action>,
    delete_files: Vec<Action>,
    /// Files both sides hold that the ledger does not know and the evidence did not adopt
    /// (those against a directory are `finish`'s).
    unadopted: Vec<Conflict>,
    adopted: u64,
    dest_files: u64,
    /// The files seen on the source side, and the ledger rows handed in.
    source_files: u64,
    ledger_rows: u64,
}

impl TreePlan {
    pub fn new(opts: PlanOptions) -> TreePlan {
        TreePlan {
            opts,
            local_dirs: BTreeMap::new(),
            remote_dirs: BTreeMap::new(),
            local_against_dirs: Snapshot::new(),
            remote_against_dirs: Snapshot::new(),
            rows_at_dirs: Vec::new(),
            spared: Vec::new(),
            transfers: Vec::new(),
            delete_files: Vec::new(),
            unadopted: Vec::new(),
            adopted: 0,
            dest_files: 0,
            source_files: 0,
            ledger_rows: 0,
        }
    }

    /// Plans the direct children of `dir`: `ledger`'s rows and the entries of each side (empty
    /// for a side `dir` is not on), keyed by their full paths.
    pub fn add_dir(
        &mut self,
        dir: &DirVisit,
        ledger: &LedgerView,
        local: &Snapshot,
        remote: &Snapshot,
        evidence: &EvidenceMap,
    ) -> DirOutcome {
        let (source, dest) = match self.opts.direction {
            Direction::Push => (local, remote),
            Direction::Pull => (remote, local),
        };
        for (side, other, dirs, against) in [
            (
                local,
                remote,
                &mut self.local_dirs,
                &mut self.local_against_dirs,
            ),
            (
                remote,
                local,
                &mut self.remote_dirs,
                &mut self.remote_against_dirs,
            ),
        ] {
            let mut has_file = false;
            for (path, e) in side {
                match e.kind {
                    Kind::Dir => {
                        // A subdirectory may have been added first (see `dir_visits`).
                        dirs.entry(path.clone()).or_insert(false);
                    }
                    Kind::File => {
                        has_file = true;
                        if other.get(path).is_some_and(Entry::is_dir) {
                            against.insert(path.clone(), e.clone());
                        }
                    }
                }
            }
            if has_file {
                mark_has_file(dirs, &dir.path);
            }
        }
        self.dest_files += dest.values().filter(|e| e.kind == Kind::File).count() as u64;
        self.source_files += source.values().filter(|e| e.kind == Kind::File).count() as u64;
        self.ledger_rows += ledger.len() as u64;
        let at = |side: &Snapshot, path: &str, dir: bool| {
            side.get(path).is_some_and(|e| e.is_dir() == dir)
        };
        self.rows_at_dirs.extend(
            ledger
                .keys()
                .filter(|p| {
                    (at(local, p, true) || at(remote, p, true))
                        && !at(local, p, false)
                        && !at(remote, p, false)
                })
                .cloned(),
        );

        // The directories, and the files against them, wait for `finish`.
        let decided = decide(self.opts, ledger, local, remote, evidence);
        self.transfers.extend(decided.transfers);
        self.adopted += decided.adopted;
        let file_on_both = |p: &str| {
            local.get(p).is_some_and(|e| !e.is_dir()) && remote.get(p).is_some_and(|e| !e.is_dir())
        };
        self.unadopted.extend(
            decided
                .conflicts
                .into_iter()
                .filter(|c| file_on_both(&c.path)),
        );
        if !dir.protected {
            let spared = &self.spared;
            self.delete_files.extend(
                decided
                    .delete_files
                    .into_iter()
                    .filter(|a| !is_spared(a.path(), spared)),
            );
        }
        let ledger_only = decided
            .first
            .into_iter()
            .filter(|a| matches!(a, Action::Record { .. }))
            .chain(
                decided
                    .forgets
                    .into_iter()
                    .filter(|a| !is_spared(a.path(), &self.spared)),
            )
            .collect();
        DirOutcome {
            visits: self.dir_visits(dir, local, remote),
            ledger_only,
        }
    }

    /// The subdirectories of `dir` to visit, given its children on each side: what
    /// [`TreePlan::add_dir`] returns, known before the directory itself is added (a walk that
    /// must wait to add a directory can visit below it meanwhile; the plan does not depend on
    /// the order in which directories are added).
    pub fn dir_visits(&self, dir: &DirVisit, local: &Snapshot, remote: &Snapshot) -> Vec<DirVisit> {
        let (source, dest) = match self.opts.direction {
            Direction::Push => (local, remote),
            Direction::Pull => (remote, local),
        };
        local
            .iter()
            .chain(remote.iter())
            .filter(|(_, e)| e.is_dir())
            .map(|(path, _)| path)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|path| DirVisit {
                path: path.clone(),
                local: local.get(path).is_some_and(Entry::is_dir),
                remote: remote.get(path).is_some_and(Entry::is_dir),
                protected: dir.protected
                    || (dest.get(path).is_some_and(Entry::is_dir)
                        && source.get(path).is_some_and(|e| !e.is_dir())),
            })
            .collect()
    }

    /// A local path that could not be read (a file whose content is needed, or a directory,
    /// whose visit is then skipped as a whole): it is unknown, not absent, so nothing at or
    /// below it is deleted or forgotten. Call it before adding the directory that holds it.
    pub fn spare(&mut self, path: &str) {
        self.spared.push(path.to_string());
        // An unreadable directory keeps its place on both sides, include patterns or not; an
        // unreadable file keeps its local directory.
        let local_dir = if self.local_dirs.contains_key(path) {
            path
        } else {
            crate::model::paths::split_parent(path).0
        };
        mark_has_file(&mut self.local_dirs, local_dir);
        if self.remote_dirs.contains_key(path) {
            mark_has_file(&mut self.remote_dirs, path);
        }
    }

    /// Whether the walk entered the directory `path`, or spared it (rows of a directory it
    /// never entered, gone from both sides or excluded, are on neither side: forgotten).
    pub fn visited(&self, path: &str) -> bool {
        path.is_empty()
            || self.local_dirs.contains_key(path)
            || self.remote_dirs.contains_key(path)
            || is_spared(path, &self.spared)
    }

    /// The whole plan, once every directory was added. `prune`: the job has include patterns,
    /// so a directory counts only where a file lies below it (as the scans prune a tree).
    pub fn finish(self, prune: bool) -> Result<SyncPlan, PlanError> {
        let sides = |dirs: BTreeMap<String, bool>, against: Snapshot| -> Snapshot {
            dirs.into_iter()
                .filter(|(_, has_file)| !prune || *has_file)
                .map(|(path, _)| (path, Entry::dir()))
                .chain(against)
                .collect()
        };
        let local = sides(self.local_dirs, self.local_against_dirs);
        let remote = sides(self.remote_dirs, self.remote_against_dirs);
        let forgets = self
            .rows_at_dirs
            .into_iter()
            .filter(|p| !local.contains_key(p) && !remote.contains_key(p))
            .filter(|p| !is_spared(p, &self.spared))
            .map(|path| Action::Forget { path })
            .collect();
        let mut decided = decide(
            self.opts,
            &LedgerView::new(),
            &local,
            &remote,
            &EvidenceMap::new(),
        );
        let spared = self.spared;
        decided
            .delete_files
            .retain(|a| !is_spared(a.path(), &spared));
        decided
            .delete_dirs
            .retain(|a| !is_spared(a.path(), &spared));
        let mut delete_files = self.delete_files;
        delete_files.append(&mut decided.delete_files);
        let dest_files = self.opts.dest_files.unwrap_or(self.dest_files);
        check_deletes(
            self.opts,
            delete_files.len(),
            dest_files,
            self.opts.source_empty.unwrap_or(self.source_files == 0),
            self.opts.ledger_files.unwrap_or(self.ledger_rows),
        )?;
        let mut transfers = self.transfers;
        transfers.append(&mut decided.transfers);
        let mut conflicts = self.unadopted;
        conflicts.append(&mut decided.conflicts);
        Ok(Decided {
            first: decided.first,
            transfers,
            delete_files,
            delete_dirs: decided.delete_dirs,
            forgets,
            conflicts,
            adopted: self.adopted,
        }
        .into_plan())
    }
}

/// Whether `path` is one of the `spared` paths or lies below one.
fn is_spared(path: &str, spared: &[String]) -> bool {
    spared
        .iter()
        .any(|s| path == s || crate::model::paths::is_under(path, s))
}

/// Drops from `plan` every delete and forget at or below a local path that could not be read
/// (see [`TreePlan::spare`]): a scan that cannot read a file or directory has not seen it gone.
pub fn spare(plan: &mut SyncPlan, unreadable: &[String]) {
    if unreadable.is_empty() {
        return;
    }
    plan.actions.retain(|a| {
        !matches!(
            a,
            Action::DeleteFile { .. } | Action::DeleteDir { .. } | Action::Forget { .. }
        ) || !is_spared(a.path(), unreadable)
    });
}

/// Marks `dir` and its ancestors in `dirs`, directories of that side, as leading to a file
/// (adding those not seen yet: a directory may be added before its parent).
fn mark_has_file(dirs: &mut BTreeMap<String, bool>, dir: &str) {
    let mut at = dir;
    while !at.is_empty() {
        match dirs.get_mut(at) {
            Some(true) => return,
            Some(has_file) => *has_file = true,
            None => {
                dirs.insert(at.to_string(), true);
            }
        }
        at = at.rfind('/').map_or("", |i| &at[..i]);
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::File => "file",
        Kind::Dir => "directory",
    }
}

fn under_any(path: &str, roots: &std::collections::BTreeSet<String>) -> bool {
    roots.iter().any(|r| {
        path == r
            || path
                .strip_prefix(r.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// A file both sides hold at `path` and the ledger does not know: the ledger's row for it, as a
/// sync of it would write it, where the evidence shows the two copies the same; otherwise a
/// conflict that names what is known and what to do. It is never overwritten: the destination's
/// copy may be someone's work that no run of this job ever saw.
fn adopt_unknown(
    direction: Direction,
    path: &str,
    s: &Entry,
    d: &Entry,
    evidence: Option<&Evidence>,
) -> Result<SyncedEntry, Conflict> {
    let (local, remote) = match direction {
        Direction::Push => (s, d),
        Direction::Pull => (d, s),
    };
    let why = match (adoption(local, remote, evidence), local.hash) {
        (Adoption::Same(_), Some(hash)) => {
            return Ok(SyncedEntry {
                size: local.size,
                mtime: local.mtime,
                hash,
                remote_size: remote.size,
                remote_mtime: Some(remote.mtime),
            })
        }
        (Adoption::Same(_), None) => "no evidence that the two copies are the same".to_string(),
        (Adoption::Differs(why) | Adoption::Unknown(why), _) => why,
    };
    let dest = match direction {
        Direction::Push => "remote",
        Direction::Pull => "local",
    };
    Err(Conflict {
        path: path.to_string(),
        reason: format!(
            "both sides hold this file and the ledger has no record of it: {why}; the {dest} copy was not overwritten: remove it to have it sent again, or set `adopt: recopy` in the job to overwrite files the ledger does not know"
        ),
    })
}

/// Whether the destination file `d` is still what the ledger recorded of it (our last
/// delivery): the remote size and time for a push, the local size and content for a pull.
fn dest_as_delivered(direction: Direction, e: &SyncedEntry, d: &Entry) -> bool {
    match direction {
        Direction::Push => d.size == e.remote_size && e.remote_mtime.is_none_or(|t| t == d.mtime),
        Direction::Pull => d.size == e.size && d.hash.is_some_and(|h| h == e.hash),
    }
}

/// Both sides match the ledger's record of `s`'s path: `None` if a transfer is needed,
/// `Some(None)` if nothing is, `Some(Some(e))` if only the ledger needs the new record `e`
/// (a new local mtime with the same content, or the remote time learnt after an upload).
fn unchanged_pair(
    direction: Direction,
    e: &SyncedEntry,
    s: &Entry,
    d: &Entry,
) -> Option<Option<SyncedEntry>> {
    let (local, remote) = match direction {
        Direction::Push => (s, d),
        Direction::Pull => (d, s),
    };
    let local_same = local.size == e.size && local.hash.is_some_and(|h| h == e.hash);
    let remote_same =
        remote.size == e.remote_size && e.remote_mtime.is_none_or(|t| t == remote.mtime);
    if !(local_same && remote_same) {
        return None;
    }
    let fresh = SyncedEntry {
        size: local.size,
        mtime: local.mtime,
        hash: e.hash,
        remote_size: remote.size,
        remote_mtime: Some(remote.mtime),
    };
    Some(if &fresh == e { None } else { Some(fresh) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(content: &[u8], mtime: i64) -> Entry {
        Entry {
            kind: Kind::File,
            size: content.len() as u64,
            mtime,
            hash: Some(blake3::hash(content)),
            id: None,
        }
    }
    fn remote_file(size: u64, mtime: i64) -> Entry {
        Entry {
            kind: Kind::File,
            size,
            mtime,
            hash: None,
            id: None,
        }
    }
    fn synced(content: &[u8], mtime: i64, remote_mtime: Option<i64>) -> SyncedEntry {
        SyncedEntry {
            size: content.len() as u64,
            mtime,
            hash: blake3::hash(content),
            remote_size: content.len() as u64,
            remote_mtime,
        }
    }
    /// A job with no limit on deletes and an empty source allowed: the rules of what to do,
    /// without the safeguards (see [`guarded`]).
    fn opts(direction: Direction, mode: SyncMode) -> PlanOptions {
        PlanOptions {
            max_delete: Some(MaxDelete::Percent(100.0)),
            allow_empty_source: true,
            ..guarded(direction, mode)
        }
    }
    /// A job as a job file without `max_delete` or `allow_empty_source` makes it.
    fn guarded(direction: Direction, mode: SyncMode) -> PlanOptions {
        PlanOptions {
            direction,
            mode,
            max_delete: None,
            dest_files: None,
            allow_empty_source: false,
            source_empty: None,
            ledger_files: None,
            // The rules before adoption: the adoption tests set `Adopt::Evidence`.
            adopt: Adopt::Recopy,
            ages: crate::model::age::AgeRule::default(),
            protect_dest: false,
        }
    }
    fn snap(items: &[(&str, Entry)]) -> Snapshot {
        items
            .iter()
            .map(|(p, e)| (p.to_string(), e.clone()))
            .collect()
    }

    /// `max_age:` in mirror mode: an old source file is neither sent nor a conflict, and its
    /// destination copy, which the ledger does not know, is not deleted; a new file is sent.
    #[test]
    fn a_file_outside_the_age_limits_is_left_alone_on_both_sides() {
        let hour = std::time::Duration::from_secs(3600);
        let now = 100_000 * 1_000_000_000;
        let old = now - 7200 * 1_000_000_000;
        let local = snap(&[("old", file(b"old local", old)), ("new", file(b"n", now))]);
        let remote = snap(&[("old", file(b"remote copy", old))]);
        let limits = crate::model::age::AgeLimits {
            min_age: None,
            max_age: Some(hour),
        };
        let o = PlanOptions {
            adopt: Adopt::Evidence,
            ages: crate::model::age::AgeRule::new(limits, std::time::Duration::ZERO, now),
            ..opts(Direction::Push, SyncMode::Mirror)
        };
        let p = plan(o, &LedgerView::new(), &local, &remote).unwrap();
        assert!(p.conflicts.is_empty(), "{:?}", p.conflicts);
        let paths: Vec<&str> = p.actions.iter().map(Action::path).collect();
        assert_eq!(paths, ["new"], "{:?}", p.actions);
    }

    #[test]
    fn first_push_makes_dirs_then_uploads() {
        let local = snap(&[
            ("d", Entry::dir()),
            ("d/a", file(b"a", 1)),
            ("e", Entry::dir()),
        ]);
        let p = plan(
            opts(Direction::Push, SyncMode::Mirror),
            &LedgerView::new(),
            &local,
            &Snapshot::new(),
        )
        .unwrap();
        let kinds: Vec<String> = p
            .actions
            .iter()
            .map(|a| format!("{a:?}").split(' ').next().unwrap_or("").to_string())
            .collect();
        assert_eq!(kinds, ["MakeDir", "MakeDir", "Upload"]);
    }

    #[test]
    fn unchanged_file_needs_nothing_and_touched_file_only_a_record() {
        let ledger: LedgerView = [("a".to_string(), synced(b"x", 1, Some(50)))].into();
        let remote = snap(&[("a", remote_file(1, 50))]);
        let p = plan(
            opts(Direction::Push, SyncMode::Mirror),
            &ledger,
            &snap(&[("a", file(b"x", 1))]),
            &remote,
        )
        .unwrap();
        assert!(p.actions.is_empty(), "{p:?}");
        let p = plan(
            opts(Direction::Push, SyncMode::Mirror),
            &ledger,
            &snap(&[("a", file(b"x", 2))]),
            &remote,
        )
        .unwrap();
        assert!(
            matches!(p.actions.as_slice(), [Action::Record { entry, .. }] if entry.mtime == 2),
            "{p:?}"
        );
        let p = plan(
            opts(Direction::Push, SyncMode::Mirror),
            &ledger,
            &snap(&[("a", file(b"y", 2))]),
            &remote,
        )
        .unwrap();
        assert!(
            matches!(p.actions.as_slice(), [Action::Upload { .. }]),
            "{p:?}"
        );
    }

    #[test]
    fn remote_time_is_learnt_after_an_upload() {
        let ledger: LedgerView = [("a".to_string(), synced(b"x", 1, None))].into();
        let p = plan(
            opts(Direction::Push, SyncMode::Mirror),
            &ledger,
            &snap(&[("a", file(b"x", 1))]),
            &snap(&[("a", remote_file(1, 77))]),
        )
        .unwrap();
        assert!(
            matches!(p.actions.as_slice(), [Action::Record { entry, .. }] if entry.remote_mtime == Some(77)),
            "{p:?}"
        );
    }

    #[test]
    fn changed_remote_is_downloaded_on_pull() {
        let ledger: LedgerView = [("a".to_string(), synced(b"x", 1, Some(50)))].into();
        let local = snap(&[("a", file(b"x", 1))]);
        let p = plan(
            opts(Direction::Pull, SyncMode::Mirror),
            &ledger,
            &local,
            &snap(&[("a", remote_file(1, 60))]),
        )
        .unwrap();
        assert!(
            matches!(p.actions.as_slice(), [Action::Download { .. }]),
            "{p:?}"
        );
        let p = plan(
            opts(Direction::Pull, SyncMode::Mirror),
            &ledger,
            &local,
            &snap(&[("a", remote_file(1, 50))]),
        )
        .unwrap();
        assert!(p.actions.is_empty(), "{p:?}");
    }

    #[test]
    fn mirror_deletes_copy_does_not() {
        let remote = snap(&[
            ("old", Entry::dir()),
            ("old/f", remote_file(3, 1)),
            ("keep", remote_file(1, 1)),
        ]);
        let local = snap(&[("keep", file(b"k", 1))]);
        let ledger: LedgerView = [
            ("keep".to_string(), synced(b"k", 1, Some(1))),
            ("old/f".to_string(), synced(b"abc", 1, Some(1))),
        ]
        .into();
        let p = plan(
            opts(Direction::Push, SyncMode::Mirror),
            &ledger,
            &local,
            &remote,
        )
        .unwrap();
        assert_eq!(
            p.actions,
            vec![
                Action::DeleteFile {
                    path: "old/f".into()
                },
                Action::DeleteDir { path: "old".into() }
            ]
        );
        let p = plan(
            opts(Direction::Push, SyncMode::Copy),
            &ledger,
            &local,
            &remote,
        )
        .unwrap();
        assert!(p.actions.is_empty(), "{p:?}");
    }

    /// `after_transfer: archive` (copy mode, `protect_dest`): a source archived after its
    /// delivery is no reason to delete its copy, and its ledger row stays; a new file under the
    /// same name is delivered over our last delivery, but never over a copy the partner
    /// changed since (a conflict).
    #[test]
    fn an_archived_source_and_a_new_file_of_the_same_name() {
        for direction in [Direction::Push, Direction::Pull] {
            let o = PlanOptions {
                protect_dest: true,
                ..opts(direction, SyncMode::Copy)
            };
            let ledger: LedgerView = [("a".to_string(), synced(b"old", 1, Some(50)))].into();
            let delivered = match direction {
                Direction::Push => remote_file(3, 50),
                Direction::Pull => file(b"old", 1),
            };
            let sides = |source: Option<Entry>, dest: Entry| {
                let source = snap(&source.iter().map(|e| ("a", e.clone())).collect::<Vec<_>>());
                let dest = snap(&[("a", dest)]);
                match direction {
                    Direction::Push => (source, dest),
                    Direction::Pull => (dest, source),
                }
            };
            // Archived: nothing to do (no delete, no forget).
            let (l, r) = sides(None, delivered.clone());
            let p = plan(o, &ledger, &l, &r).unwrap();
            assert!(p.actions.is_empty() && p.conflicts.is_empty(), "{p:?}");
            // A new file of that name: delivered.
            let new = match direction {
                Direction::Push => file(b"newer", 9),
                Direction::Pull => remote_file(5, 90),
            };
            let (l, r) = sides(Some(new.clone()), delivered.clone());
            let p = plan(o, &ledger, &l, &r).unwrap();
            assert!(
                p.actions.iter().all(Action::is_transfer) && p.transfers() == 1,
                "{p:?}"
            );
            // ... but not over a copy changed since our delivery.
            let changed = match direction {
                Direction::Push => remote_file(7, 70),
                Direction::Pull => file(b"edited!", 7),
            };
            let (l, r) = sides(Some(new.clone()), changed.clone());
            let p = plan(o, &ledger, &l, &r).unwrap();
            assert_eq!(p.transfers(), 0, "{p:?}");
            assert_eq!(p.conflicts.len(), 1, "{p:?}");
            // Without after_transfer the source wins, as it always has.
            let p = plan(opts(direction, SyncMode::Copy), &ledger, &l, &r).unwrap();
            assert_eq!(p.transfers(), 1, "{p:?}");
        }
    }

    #[test]
    fn max_delete_refuses_before_any_change() {
        let remote = snap(&[
            ("a", remote_file(1, 1)),
            ("b", remote_file(1, 1)),
            ("c", remote_file(1, 1)),
            ("d", remote_file(1, 1)),
        ]);
        let mut o = opts(Direction::Push, SyncMode::Mirror);
        o.max_delete = Some(MaxDelete::Percent(50.0));
        let local = snap(&[("a", file(b"a", 1))]);
        let e = plan(o, &LedgerView::new(), &local, &remote).unwrap_err();
        assert_eq!(
            e,
            PlanError::TooManyDeletes {
                wanted: 3,
                limit: 2,
                dest_files: 4,
                max: "50%".into()
            }
        );
        assert!(e.to_string().contains("refusing to delete 3"));
        o.max_delete = Some(MaxDelete::Count(3));
        assert_eq!(
            plan(o, &LedgerView::new(), &local, &remote)
                .unwrap()
                .deletes(),
            3
        );
    }

    fn evidence_of(pairs: Vec<(&str, Evidence)>) -> EvidenceMap {
        pairs.into_iter().map(|(p, e)| (p.to_string(), e)).collect()
    }
    fn digest(local: &[u8], remote: &[u8]) -> Evidence {
        Evidence {
            digest: Some(crate::model::snapshot::DigestPair {
                algorithm: "SHA-256",
                local: local.to_vec(),
                remote: remote.to_vec(),
            }),
            ..Evidence::default()
        }
    }

    #[test]
    fn the_adoption_rule_takes_the_strongest_evidence() {
        let local = file(b"abc", 5_400_000_000);
        let remote = remote_file(3, 5_000_000_000);
        let same = |a: Adoption| matches!(a, Adoption::Same(_));
        let differs = |a: Adoption| matches!(a, Adoption::Differs(_));
        let unknown = |a: Adoption| matches!(a, Adoption::Unknown(_));
        assert!(differs(adoption(
            &local,
            &remote_file(4, 5_000_000_000),
            None
        )));
        assert!(unknown(adoption(&local, &remote, None)));
        assert!(unknown(adoption(
            &local,
            &remote,
            Some(&Evidence::default())
        )));
        assert!(same(adoption(&local, &remote, Some(&digest(b"d", b"d")))));
        assert!(differs(adoption(
            &local,
            &remote,
            Some(&digest(b"d", b"e"))
        )));
        let content = |bytes: &[u8]| Evidence {
            remote_content: Some((bytes.len() as u64, blake3::hash(bytes))),
            ..Evidence::default()
        };
        assert!(same(adoption(&local, &remote, Some(&content(b"abc")))));
        assert!(differs(adoption(&local, &remote, Some(&content(b"abd")))));
        // A digest outranks a matching time; content outranks a time.
        let timed = |t: i64, base: Evidence| Evidence {
            remote_exact_mtime: Some(t),
            ..base
        };
        assert!(differs(adoption(
            &local,
            &remote,
            Some(&timed(5_000_000_000, digest(b"d", b"e")))
        )));
        assert!(differs(adoption(
            &local,
            &remote,
            Some(&timed(5_000_000_000, content(b"xyz")))
        )));
        // The same second (the local time's nanoseconds aside): the same file.
        assert!(same(adoption(
            &local,
            &remote,
            Some(&timed(5_000_000_000, Evidence::default()))
        )));
        // Another second proves nothing either way.
        let other = adoption(
            &local,
            &remote,
            Some(&timed(6_000_000_000, Evidence::default())),
        );
        assert!(unknown(other.clone()), "{other:?}");
        // Without the local BLAKE3 there is no ledger row to write: unknown.
        let unhashed = Entry {
            hash: None,
            ..local.clone()
        };
        assert!(unknown(adoption(
            &unhashed,
            &remote,
            Some(&digest(b"d", b"d"))
        )));
        let noted = Evidence {
            missing: vec!["HASH: 550 denied".into()],
            ..Evidence::default()
        };
        match adoption(&local, &remote, Some(&noted)) {
            Adoption::Unknown(why) => assert!(why.contains("550 denied"), "{why}"),
            a => panic!("{a:?}"),
        }
    }

    #[test]
    fn files_the_ledger_does_not_know_are_adopted_on_evidence_never_overwritten() {
        for direction in [Direction::Push, Direction::Pull] {
            let mut o = opts(direction, SyncMode::Mirror);
            o.adopt = Adopt::Evidence;
            let local = snap(&[
                ("same", file(b"abc", 7_000_000_000)),
                ("changed", file(b"abc", 7_000_000_000)),
                ("unproven", file(b"abc", 7_000_000_000)),
                ("longer", file(b"abc", 7_000_000_000)),
            ]);
            let remote = snap(&[
                ("same", remote_file(3, 9_000_000_000)),
                ("changed", remote_file(3, 9_000_000_000)),
                ("unproven", remote_file(3, 9_000_000_000)),
                ("longer", remote_file(4, 9_000_000_000)),
            ]);
            let evidence = evidence_of(vec![
                ("same", digest(b"1", b"1")),
                ("changed", digest(b"1", b"2")),
            ]);
            let p = plan_with(o, &LedgerView::new(), &local, &remote, &evidence).unwrap();
            assert_eq!(p.transfers(), 0, "{p:?}");
            assert_eq!(p.adopted, 1);
            assert_eq!(
                p.actions,
                [Action::Record {
                    path: "same".into(),
                    entry: SyncedEntry {
                        size: 3,
                        mtime: 7_000_000_000,
                        hash: blake3::hash(b"abc"),
                        remote_size: 3,
                        remote_mtime: Some(9_000_000_000),
                    },
                }]
            );
            let mut conflicts: Vec<&str> = p.conflicts.iter().map(|c| c.path.as_str()).collect();
            conflicts.sort();
            assert_eq!(conflicts, ["changed", "longer", "unproven"]);
            let dest = if direction == Direction::Push {
                "remote"
            } else {
                "local"
            };
            for c in &p.conflicts {
                assert!(
                    c.reason
                        .contains(&format!("the {dest} copy was not overwritten"))
                        && c.reason.contains("adopt: recopy"),
                    "{}",
                    c.reason
                );
            }
            assert!(
                p.conflicts[0].reason.contains("differs"),
                "{:?}",
                p.conflicts
            );
            // The same directory by directory.
            let by_dirs = plan_by_directories_with(
                o,
                &LedgerView::new(),
                &local,
                &remote,
                &evidence,
                false,
                &[],
            )
            .unwrap();
            assert_eq!(sorted(&by_dirs.actions), sorted(&p.actions));
            assert_eq!(by_dirs.adopted, 1);
            assert_eq!(by_dirs.conflicts.len(), 3);
            // `adopt: recopy` sends every one of them again.
            o.adopt = Adopt::Recopy;
            let p = plan_with(o, &LedgerView::new(), &local, &remote, &evidence).unwrap();
            assert_eq!((p.transfers(), p.adopted, p.conflicts.len()), (4, 0, 0));
        }
    }

    /// Three files synced both ways, as the ledger remembers them: `(ledger, local, remote)`.
    fn three_synced() -> (LedgerView, Snapshot, Snapshot) {
        let names = ["a", "d/b", "d/c"];
        let ledger = names
            .iter()
            .map(|n| (n.to_string(), synced(n.as_bytes(), 1, Some(5))))
            .collect();
        let mut local = snap(&[("d", Entry::dir())]);
        let mut remote = local.clone();
        for n in names {
            local.insert(n.to_string(), file(n.as_bytes(), 1));
            remote.insert(n.to_string(), remote_file(n.len() as u64, 5));
        }
        (ledger, local, remote)
    }

    /// Both planners of a full run: [`plan`] over the whole trees, [`TreePlan`] directory by
    /// directory; they must agree.
    fn both_planners(
        o: PlanOptions,
        ledger: &LedgerView,
        local: &Snapshot,
        remote: &Snapshot,
    ) -> Result<SyncPlan, PlanError> {
        let whole = plan(o, ledger, local, remote);
        let by_dirs = plan_by_directories(o, ledger, local, remote, false, &[]);
        match (&whole, &by_dirs) {
            (Ok(w), Ok(d)) => assert_eq!(sorted(&w.actions), sorted(&d.actions)),
            _ => assert_eq!(whole.clone().err(), by_dirs.err()),
        }
        whole
    }

    #[test]
    fn an_empty_source_never_empties_the_destination_unless_the_job_allows_it() {
        for direction in [Direction::Push, Direction::Pull] {
            let (ledger, local, remote) = three_synced();
            // The source side lists nothing, or only a directory with nothing in it (a
            // mount point whose disk is gone).
            for source in [Snapshot::new(), snap(&[("d", Entry::dir())])] {
                let (local, remote) = match direction {
                    Direction::Push => (source.clone(), remote.clone()),
                    Direction::Pull => (local.clone(), source.clone()),
                };
                let o = guarded(direction, SyncMode::Mirror);
                let e = both_planners(o, &ledger, &local, &remote).unwrap_err();
                assert_eq!(
                    e,
                    PlanError::EmptySource {
                        wanted: 3,
                        dest_files: 3,
                        ledger_files: 3,
                        direction,
                        source_root: String::new(),
                    }
                );
                // Even a generous max_delete does not let an empty source through.
                let generous = PlanOptions {
                    max_delete: Some(MaxDelete::Percent(100.0)),
                    ..o
                };
                assert_eq!(plan(generous, &ledger, &local, &remote).unwrap_err(), e);
                // The job opts in: the destination is emptied, the default limit aside.
                let allowed = PlanOptions {
                    allow_empty_source: true,
                    ..o
                };
                let p = both_planners(allowed, &ledger, &local, &remote).unwrap();
                assert_eq!(p.deletes(), 3);
                // An explicit max_delete still holds.
                let capped = PlanOptions {
                    max_delete: Some(MaxDelete::Count(2)),
                    ..allowed
                };
                assert!(matches!(
                    both_planners(capped, &ledger, &local, &remote),
                    Err(PlanError::TooManyDeletes {
                        wanted: 3,
                        limit: 2,
                        ..
                    })
                ));
            }
        }
        // The text names the count, the source and the option (the job's name is added by
        // the run).
        let push = PlanError::EmptySource {
            wanted: 120,
            dest_files: 120,
            ledger_files: 120,
            direction: Direction::Push,
            source_root: String::new(),
        }
        .naming_source("/srv/out");
        assert_eq!(
            push.to_string(),
            "refusing to delete 120 of 120 files on the destination: the local folder /srv/out lists no file while the ledger holds 120 synced files (an unmounted disk? a moved folder?); nothing was changed; set allow_empty_source: true to mirror an emptied source"
        );
        let pull = PlanError::EmptySource {
            wanted: 2,
            dest_files: 5,
            ledger_files: 0,
            direction: Direction::Pull,
            source_root: String::new(),
        }
        .naming_source("/outbound on ftps.example");
        assert_eq!(
            pull.to_string(),
            "refusing to delete 2 of 5 files on the destination: the remote directory /outbound on ftps.example lists no file and the job has synced nothing yet (a moved directory? a listing that came back empty?); nothing was changed; set allow_empty_source: true to mirror an emptied source"
        );
    }

    #[test]
    fn an_empty_source_with_nothing_to_delete_or_in_copy_mode_is_no_refusal() {
        let (ledger, local, remote) = three_synced();
        for direction in [Direction::Push, Direction::Pull] {
            // Both sides empty: the rows are forgotten, nothing is deleted.
            let p = both_planners(
                guarded(direction, SyncMode::Mirror),
                &ledger,
                &Snapshot::new(),
                &Snapshot::new(),
            )
            .unwrap();
            assert_eq!(p.count(|a| matches!(a, Action::Forget { .. })), 3);
            // Copy mode never deletes, so an empty source changes nothing and is no error.
            let (l, r) = match direction {
                Direction::Push => (Snapshot::new(), remote.clone()),
                Direction::Pull => (local.clone(), Snapshot::new()),
            };
            let p = both_planners(guarded(direction, SyncMode::Copy), &ledger, &l, &r).unwrap();
            assert!(p.actions.iter().all(|a| !a.changes_files()), "{p:?}");
        }
    }

    #[test]
    fn without_max_delete_a_run_deletes_at_most_half_and_always_ten() {
        // 30 files synced; the source keeps `kept` of them.
        let setup = |kept: usize| {
            let mut ledger = LedgerView::new();
            let (mut local, mut remote) = (Snapshot::new(), Snapshot::new());
            for i in 0..30 {
                let name = format!("f{i:02}");
                ledger.insert(name.clone(), synced(name.as_bytes(), 1, Some(5)));
                remote.insert(name.clone(), remote_file(name.len() as u64, 5));
                if i < kept {
                    local.insert(name.clone(), file(name.as_bytes(), 1));
                }
            }
            (ledger, local, remote)
        };
        let o = guarded(Direction::Push, SyncMode::Mirror);
        let (ledger, local, remote) = setup(14);
        let e = both_planners(o, &ledger, &local, &remote).unwrap_err();
        assert_eq!(
            e,
            PlanError::TooManyDeletesByDefault {
                wanted: 16,
                limit: 15,
                dest_files: 30
            }
        );
        assert_eq!(
            e.to_string(),
            "refusing to delete 16 of 30 files on the destination: without max_delete a run may delete half of the destination's files, and at least 10, so 15; nothing was changed; set max_delete (a count, a percentage, or 100% for no limit) to allow more"
        );
        // Half is allowed; so is any number with max_delete: 100%.
        let (ledger, local, remote) = setup(15);
        assert_eq!(
            both_planners(o, &ledger, &local, &remote)
                .unwrap()
                .deletes(),
            15
        );
        let (ledger, local, remote) = setup(1);
        let all = PlanOptions {
            max_delete: Some(MaxDelete::Percent(100.0)),
            ..o
        };
        assert_eq!(
            both_planners(all, &ledger, &local, &remote)
                .unwrap()
                .deletes(),
            29
        );
        // A small destination: 3 of 4 files go, under the floor of 10.
        let (ledger, local, mut remote) = setup(1);
        remote.retain(|p, _| p.as_str() < "f04");
        let ledger: LedgerView = ledger
            .into_iter()
            .filter(|(p, _)| p.as_str() < "f04")
            .collect();
        assert_eq!(
            both_planners(o, &ledger, &local, &remote)
                .unwrap()
                .deletes(),
            3
        );
        // The same for a pull, with the destination's count given (an incremental run).
        let (ledger, local, remote) = setup(30);
        let mut pull = guarded(Direction::Pull, SyncMode::Mirror);
        pull.dest_files = Some(30);
        let few: Snapshot = remote.into_iter().take(10).collect();
        assert!(matches!(
            plan(pull, &ledger, &local, &few),
            Err(PlanError::TooManyDeletesByDefault {
                wanted: 20,
                limit: 15,
                ..
            })
        ));
        // Copy mode: no limit to meet.
        assert_eq!(
            plan(
                guarded(Direction::Pull, SyncMode::Copy),
                &ledger,
                &local,
                &few
            )
            .unwrap()
            .deletes(),
            0
        );
    }

    #[test]
    fn file_against_directory_is_a_conflict_not_a_delete() {
        let local = snap(&[("x", file(b"x", 1))]);
        let remote = snap(&[("x", Entry::dir()), ("x/inner", remote_file(1, 1))]);
        let p = plan(
            opts(Direction::Push, SyncMode::Mirror),
            &LedgerView::new(),
            &local,
            &remote,
        )
        .unwrap();
        assert_eq!(p.conflicts.len(), 1);
        assert!(p.actions.is_empty(), "{p:?}");
    }

    #[test]
    fn ledger_rows_of_vanished_paths_are_forgotten() {
        let ledger: LedgerView = [("gone".to_string(), synced(b"x", 1, Some(1)))].into();
        let p = plan(
            opts(Direction::Push, SyncMode::Copy),
            &ledger,
            &Snapshot::new(),
            &Snapshot::new(),
        )
        .unwrap();
        assert_eq!(
            p.actions,
            vec![Action::Forget {
                path: "gone".into()
            }]
        );
    }

    #[test]
    fn the_scan_hashes_only_what_the_plan_compares_or_what_may_still_change() {
        let rec = synced(b"abc", 100, Some(5));
        let now = 1_000 * UNSETTLED_NS;
        let old = now - 10 * UNSETTLED_NS;
        // Same size and mtime: the record's hash.
        let same = SyncedEntry {
            mtime: old,
            ..rec.clone()
        };
        assert_eq!(
            local_hash(Some(&same), 3, old, now),
            LocalHash::Reuse(rec.hash)
        );
        // Same size, new mtime: a touch or a rewrite, only the content tells.
        assert_eq!(local_hash(Some(&same), 3, old + 1, now), LocalHash::Compute);
        // Another size, or no record: sent anyway, hashed by the transfer.
        assert_eq!(local_hash(Some(&same), 4, old + 1, now), LocalHash::Skip);
        assert_eq!(local_hash(None, 3, old, now), LocalHash::Skip);
        // Modified moments ago: it may still be being written, so the content is kept.
        assert_eq!(local_hash(None, 3, now - 1, now), LocalHash::Compute);
        assert_eq!(local_hash(Some(&same), 4, now - 1, now), LocalHash::Compute);
    }

    #[test]
    fn transfers_come_out_of_a_plan_in_order_and_the_rest_stays() {
        let up = |p: &str| Action::Upload {
            path: p.into(),
            source: file(b"x", 1),
        };
        let mut p = SyncPlan {
            actions: vec![
                Action::MakeDir { path: "d".into() },
                up("d/a"),
                up("d/b"),
                Action::DeleteFile { path: "z".into() },
                up("late"),
                Action::Forget { path: "f".into() },
            ],
            conflicts: Vec::new(),
            adopted: 0,
            waiting: Vec::new(),
            markers: Vec::new(),
        };
        let t = p.take_transfers();
        let paths: Vec<&str> = t.iter().map(Action::path).collect();
        assert_eq!(paths, ["d/a", "d/b", "late"]);
        let rest: Vec<&str> = p.actions.iter().map(Action::path).collect();
        assert_eq!(rest, ["d", "z", "f"]);
    }

    #[test]
    fn what_the_scan_could_not_read_is_neither_deleted_nor_forgotten() {
        // A mirror push after a full sync: the local directory `locked` and the file
        // `top/secret` can no longer be read; the server still holds both.
        let o = opts(Direction::Push, SyncMode::Mirror);
        let ledger: LedgerView = ["locked/a", "locked/deep/b", "top/secret", "top/gone"]
            .iter()
            .map(|p| (p.to_string(), synced(b"x", 1, Some(5))))
            .collect();
        let mut tree = TreePlan::new(o);
        let root_rows = LedgerView::new();
        let local_root = snap(&[("locked", Entry::dir()), ("top", Entry::dir())]);
        let remote_root = snap(&[("locked", Entry::dir()), ("top", Entry::dir())]);
        let out = tree.add_dir(
            &DirVisit::root(true, true),
            &root_rows,
            &local_root,
            &remote_root,
            &EvidenceMap::new(),
        );
        assert_eq!(out.visits.len(), 2);
        // `locked` cannot be read at all: its visit is skipped.
        tree.spare("locked");
        // In `top`, `secret` could not be read; `gone` really is gone.
        tree.spare("top/secret");
        let top_rows: LedgerView = ledger
            .iter()
            .filter(|(p, _)| p.starts_with("top/"))
            .map(|(p, e)| (p.clone(), e.clone()))
            .collect();
        let top_remote = snap(&[
            ("top/secret", remote_file(1, 5)),
            ("top/gone", remote_file(1, 5)),
        ]);
        let top = tree.add_dir(
            &out.visits[1],
            &top_rows,
            &Snapshot::new(),
            &top_remote,
            &EvidenceMap::new(),
        );
        assert!(top.ledger_only.is_empty(), "{:?}", top.ledger_only);
        // Rows of directories never entered: forgotten, unless spared.
        assert!(tree.visited("locked/deep"));
        assert!(!tree.visited("elsewhere"));
        let p = tree.finish(false).unwrap();
        assert_eq!(
            p.actions,
            [Action::DeleteFile {
                path: "top/gone".into()
            }]
        );
    }

    // ---- property tests: apply a plan the way the executor would, then plan again ----

    /// A small tree: file contents are one byte, so collisions of content are common.
    fn tree() -> impl Strategy<Value = BTreeMap<String, Option<u8>>> {
        let names = prop::sample::select(vec!["a", "b", "c d", "é"]);
        let path = prop::collection::vec(names, 1..=3).prop_map(|v| v.join("/"));
        prop::collection::btree_map(path, prop::option::weighted(0.8, any::<u8>()), 0..12)
            .prop_map(normalise)
    }

    /// Makes a map of path -> Some(content) for files and None for dirs consistent: every
    /// parent is a directory, and no file has children.
    fn normalise(raw: BTreeMap<String, Option<u8>>) -> BTreeMap<String, Option<u8>> {
        let mut out: BTreeMap<String, Option<u8>> = BTreeMap::new();
        for (path, content) in raw {
            let parts: Vec<&str> = path.split('/').collect();
            let mut ok = true;
            for i in 1..parts.len() {
                let parent = parts[..i].join("/");
                match out.get(&parent) {
                    Some(Some(_)) => {
                        // A file is in the way: nothing goes below it.
                        ok = false;
                        break;
                    }
                    Some(None) => {}
                    None => {
                        out.insert(parent, None);
                    }
                }
            }
            if ok && !out.contains_key(&path) {
                out.insert(path, content);
            }
        }
        out
    }

    fn local_snap(t: &BTreeMap<String, Option<u8>>, mtime: i64) -> Snapshot {
        t.iter()
            .map(|(p, c)| {
                (
                    p.clone(),
                    c.map(|b| file(&[b], mtime)).unwrap_or_else(Entry::dir),
                )
            })
            .collect()
    }

    /// Random edits of one side: a path gets a file (with this content byte), or a directory,
    /// or is removed with everything below it.
    fn edits() -> impl Strategy<Value = Vec<(String, Option<Option<u8>>)>> {
        let names = prop::sample::select(vec!["a", "b", "c d", "é"]);
        let path = prop::collection::vec(names, 1..=3).prop_map(|v| v.join("/"));
        prop::collection::vec(
            (path, prop::option::of(prop::option::of(any::<u8>()))),
            0..4,
        )
    }

    fn edit(
        side: &mut Snapshot,
        edits: &[(String, Option<Option<u8>>)],
        file_of: impl Fn(u8) -> Entry,
    ) {
        for (path, what) in edits {
            side.retain(|p, _| p != path && !crate::model::paths::is_under(p, path));
            let Some(content) = what else { continue };
            // Parents become directories (a file in the way goes, with what was below it).
            let mut at = path.as_str();
            while let Some(i) = at.rfind('/') {
                at = &at[..i];
                if side.get(at).is_some_and(|e| !e.is_dir()) {
                    side.remove(at);
                }
                side.insert(at.to_string(), Entry::dir());
            }
            side.insert(
                path.clone(),
                content.map(&file_of).unwrap_or_else(Entry::dir),
            );
        }
    }

    /// What the scans do with include patterns: keep only directories that lead to a file.
    fn prune_tree(side: &mut Snapshot) {
        let files: Vec<String> = side
            .iter()
            .filter(|(_, e)| !e.is_dir())
            .map(|(p, _)| p.clone())
            .collect();
        side.retain(|p, e| {
            !e.is_dir() || files.iter().any(|f| crate::model::paths::is_under(f, p))
        });
    }

    fn children(side: &Snapshot, dir: &str) -> Snapshot {
        side.iter()
            .filter(|(p, _)| crate::model::paths::split_parent(p).0 == dir)
            .map(|(p, e)| (p.clone(), e.clone()))
            .collect()
    }

    /// The walk of a full run over in-memory trees: breadth first, each directory's direct
    /// children (the unpruned tree's, as a scan of one directory sees them) handed to a
    /// [`TreePlan`], then the rows of directories never entered forgotten. Where `deferrals`
    /// says so (one flag per directory, in visiting order), a directory is added only at the
    /// end, after what lies below it, as the walk does while a server's LIST offset is unknown.
    fn plan_by_directories(
        o: PlanOptions,
        ledger: &LedgerView,
        local: &Snapshot,
        remote: &Snapshot,
        prune: bool,
        deferrals: &[bool],
    ) -> Result<SyncPlan, PlanError> {
        plan_by_directories_with(
            o,
            ledger,
            local,
            remote,
            &EvidenceMap::new(),
            prune,
            deferrals,
        )
    }

    fn plan_by_directories_with(
        o: PlanOptions,
        ledger: &LedgerView,
        local: &Snapshot,
        remote: &Snapshot,
        evidence: &EvidenceMap,
        prune: bool,
        deferrals: &[bool],
    ) -> Result<SyncPlan, PlanError> {
        let mut tree = TreePlan::new(o);
        let mut ledger_only = Vec::new();
        let mut queue = std::collections::VecDeque::from([DirVisit::root(true, true)]);
        let mut deferred = Vec::new();
        let mut n = 0;
        while let Some(d) = queue.pop_front() {
            let rows: LedgerView = ledger
                .iter()
                .filter(|(p, _)| crate::model::paths::split_parent(p).0 == d.path)
                .map(|(p, e)| (p.clone(), e.clone()))
                .collect();
            let empty = Snapshot::new();
            let l = if d.local {
                children(local, &d.path)
            } else {
                empty.clone()
            };
            let r = if d.remote {
                children(remote, &d.path)
            } else {
                empty
            };
            let defer = deferrals.get(n).copied().unwrap_or(false);
            n += 1;
            if defer {
                queue.extend(tree.dir_visits(&d, &l, &r));
                deferred.push((d, rows, l, r));
                continue;
            }
            let out = tree.add_dir(&d, &rows, &l, &r, evidence);
            queue.extend(out.visits);
            ledger_only.extend(out.ledger_only);
        }
        for (d, rows, l, r) in deferred.into_iter().rev() {
            ledger_only.extend(tree.add_dir(&d, &rows, &l, &r, evidence).ledger_only);
        }
        for path in ledger.keys() {
            if !tree.visited(crate::model::paths::split_parent(path).0) {
                ledger_only.push(Action::Forget { path: path.clone() });
            }
        }
        let mut p = tree.finish(prune)?;
        p.actions.extend(ledger_only);
        Ok(p)
    }

    /// Actions in a canonical order, for comparing plans whose order within a kind differs.
    fn sorted(actions: &[Action]) -> Vec<Action> {
        let rank = |a: &Action| match a {
            Action::MakeDir { .. } => 0,
            Action::Upload { .. } | Action::Download { .. } => 1,
            Action::DeleteFile { .. } => 2,
            Action::DeleteDir { .. } => 3,
            Action::Record { .. } => 4,
            Action::Forget { .. } => 5,
        };
        let mut v = actions.to_vec();
        v.sort_by(|a, b| (rank(a), a.path()).cmp(&(rank(b), b.path())));
        v
    }

    /// Runs the plan against in-memory sides, as the executor does against real ones.
    fn apply(
        p: &SyncPlan,
        dir: Direction,
        ledger: &mut LedgerView,
        local: &mut Snapshot,
        remote: &mut Snapshot,
        clock: i64,
    ) {
        for a in &p.actions {
            match a {
                Action::MakeDir { path } => {
                    let dest = if dir == Direction::Push {
                        &mut *remote
                    } else {
                        &mut *local
                    };
                    dest.insert(path.clone(), Entry::dir());
                }
                Action::Upload { path, source } => {
                    remote.insert(path.clone(), remote_file(source.size, clock));
                    // The transfer hashes what it sends; here the local side holds the content.
                    let hash = source
                        .hash
                        .or_else(|| local.get(path).and_then(|e| e.hash))
                        .unwrap();
                    ledger.insert(
                        path.clone(),
                        SyncedEntry {
                            size: source.size,
                            mtime: source.mtime,
                            hash,
                            remote_size: source.size,
                            remote_mtime: None,
                        },
                    );
                }
                Action::Download { path, source } => {
                    // The content of a remote file is known to the test through its size byte.
                    let content = [source.size as u8];
                    local.insert(path.clone(), file(&content, source.mtime));
                    ledger.insert(
                        path.clone(),
                        SyncedEntry {
                            size: 1,
                            mtime: source.mtime,
                            hash: blake3::hash(&content),
                            remote_size: source.size,
                            remote_mtime: Some(source.mtime),
                        },
                    );
                }
                Action::DeleteFile { path } | Action::DeleteDir { path } => {
                    let dest = if dir == Direction::Push {
                        &mut *remote
                    } else {
                        &mut *local
                    };
                    dest.remove(path);
                    ledger.remove(path);
                }
                Action::Record { path, entry } => {
                    ledger.insert(path.clone(), entry.clone());
                }
                Action::Forget { path } => {
                    ledger.remove(path);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn push_mirror_converges_and_is_idempotent(src in tree(), dst in tree()) {
            let mut local = local_snap(&src, 10);
            let mut remote: Snapshot = dst.iter().map(|(p, c)| (p.clone(), c.map(|_| remote_file(1, 5)).unwrap_or_else(Entry::dir))).collect();
            let mut ledger = LedgerView::new();
            let o = opts(Direction::Push, SyncMode::Mirror);
            let p1 = plan(o, &ledger, &local, &remote).unwrap();
            apply(&p1, Direction::Push, &mut ledger, &mut local, &mut remote, 20);
            // Apart from conflicts, the remote now has exactly the local paths.
            let conflicted: Vec<&String> = p1.conflicts.iter().map(|c| &c.path).collect();
            for path in local.keys() {
                let blocked = conflicted.iter().any(|c| path == *c || path.starts_with(&format!("{c}/")));
                prop_assert!(blocked || remote.contains_key(path), "missing {path}");
            }
            // The second run transfers and deletes nothing.
            let p2 = plan(o, &ledger, &local, &remote).unwrap();
            prop_assert!(p2.actions.iter().all(|a| !a.changes_files()), "{:?}", p2);
            apply(&p2, Direction::Push, &mut ledger, &mut local, &mut remote, 30);
            let p3 = plan(o, &ledger, &local, &remote).unwrap();
            prop_assert!(p3.actions.is_empty(), "{:?}", p3);
        }

        /// An incremental run: after a converged sync the local tree changes; planning only the
        /// changed paths' subtrees (a scope with a few more paths than needed) decides exactly
        /// what the full plan decides for those paths, and the full plan has nothing to do
        /// elsewhere. max_delete counts the whole destination in both.
        #[test]
        fn a_plan_over_the_changed_paths_matches_the_full_plan(
            src in tree(),
            dst in tree(),
            edits in prop::collection::vec(
                (
                    prop::collection::vec(prop::sample::select(vec!["a", "b", "c d", "é"]), 1..=3)
                        .prop_map(|v| v.join("/")),
                    prop::option::of(prop::option::weighted(0.8, any::<u8>())),
                ),
                1..4,
            ),
            extra in prop::collection::vec(
                prop::collection::vec(prop::sample::select(vec!["a", "b", "c d", "é"]), 1..=3)
                    .prop_map(|v| v.join("/")),
                0..3,
            ),
            mirror in any::<bool>(),
            max_percent in prop::option::of(0u8..=100),
            allow_empty in any::<bool>(),
        ) {
            let mode = if mirror { SyncMode::Mirror } else { SyncMode::Copy };
            let mut o = opts(Direction::Push, mode);
            let mut local = local_snap(&src, 10);
            let mut remote: Snapshot = dst.iter().map(|(p, c)| (p.clone(), c.map(|_| remote_file(1, 5)).unwrap_or_else(Entry::dir))).collect();
            let mut ledger = LedgerView::new();
            let p1 = plan(o, &ledger, &local, &remote).unwrap();
            // A file against a directory stays a conflict, and a real server cannot hold what
            // the in-memory sides then hold (a file with children).
            prop_assume!(p1.conflicts.is_empty());
            apply(&p1, Direction::Push, &mut ledger, &mut local, &mut remote, 20);
            let p2 = plan(o, &ledger, &local, &remote).unwrap();
            apply(&p2, Direction::Push, &mut ledger, &mut local, &mut remote, 30);

            // A few local files and directories are written or deleted (same mtime: only real
            // changes differ).
            let mut changed_to = src.clone();
            for (path, edit) in &edits {
                match edit {
                    None => changed_to.retain(|p, _| p != path && !crate::model::paths::is_under(p, path)),
                    Some(content) => {
                        changed_to.insert(path.clone(), *content);
                    }
                }
            }
            let changed_local = local_snap(&normalise(changed_to), 10);
            let mut changed: Vec<&str> = local
                .iter()
                .filter(|(p, e)| changed_local.get(*p) != Some(*e))
                .chain(changed_local.iter().filter(|(p, e)| local.get(*p) != Some(*e)))
                .map(|(p, _)| p.as_str())
                .collect();
            changed.extend(extra.iter().map(String::as_str));
            let Some(scope) = crate::model::scope::Scope::of_changed(changed.iter().copied()) else {
                return Ok(());
            };
            o.max_delete = max_percent.map(|p| MaxDelete::Percent(f64::from(p)));
            o.dest_files = Some(remote.values().filter(|e| e.kind == Kind::File).count() as u64);
            // What the run knows of the whole source and ledger (a look at the local tree, a
            // count of the ledger's rows), in both plans.
            o.allow_empty_source = allow_empty;
            o.source_empty = Some(!changed_local.values().any(|e| e.kind == Kind::File));
            o.ledger_files = Some(ledger.len() as u64);

            let full = plan(o, &ledger, &changed_local, &remote);
            let part = |m: &Snapshot| -> Snapshot {
                m.iter().filter(|(p, _)| scope.contains(p)).map(|(p, e)| (p.clone(), e.clone())).collect()
            };
            let ledger_part: LedgerView = ledger.iter().filter(|(p, _)| scope.contains(p)).map(|(p, e)| (p.clone(), e.clone())).collect();
            let incremental = plan(o, &ledger_part, &part(&changed_local), &part(&remote));
            match (full, incremental) {
                (Ok(full), Ok(incremental)) => {
                    let (inside, outside): (Vec<Action>, Vec<Action>) =
                        full.actions.into_iter().partition(|a| scope.contains(a.path()));
                    prop_assert!(outside.is_empty(), "the full plan acts outside the changes: {:?}", outside);
                    prop_assert_eq!(inside, incremental.actions);
                    let conflicts: Vec<Conflict> = full.conflicts.into_iter().filter(|c| scope.contains(&c.path)).collect();
                    prop_assert_eq!(conflicts, incremental.conflicts);
                }
                (full, incremental) => prop_assert_eq!(full.err(), incremental.err()),
            }
        }

        #[test]
        fn pull_mirror_converges_and_is_idempotent(src in tree(), dst in tree()) {
            let mut remote: Snapshot = src.iter().map(|(p, c)| (p.clone(), c.map(|b| remote_file(u64::from(b), 5)).unwrap_or_else(Entry::dir))).collect();
            let mut local = local_snap(&dst, 10);
            let mut ledger = LedgerView::new();
            let o = opts(Direction::Pull, SyncMode::Mirror);
            let p1 = plan(o, &ledger, &local, &remote).unwrap();
            apply(&p1, Direction::Pull, &mut ledger, &mut local, &mut remote, 20);
            let p2 = plan(o, &ledger, &local, &remote).unwrap();
            prop_assert!(p2.actions.iter().all(|a| !a.changes_files()), "{:?}", p2);
        }

        /// The scan leaves a local file unhashed only where the plan would not look at its
        /// hash: after a converged sync and random edits (new content, a touch, a new size, new
        /// files), the plan over lazily hashed local files decides exactly what the plan over
        /// fully hashed ones decides, in both directions and modes (only an upload's source
        /// lacks the hash, which the transfer computes).
        #[test]
        fn hashing_only_what_the_plan_needs_changes_no_decision(
            src in tree(),
            dst in tree(),
            edits in prop::collection::vec(
                (
                    prop::collection::vec(prop::sample::select(vec!["a", "b", "c d", "é"]), 1..=3)
                        .prop_map(|v| v.join("/")),
                    any::<u8>(),
                    0u8..3,
                ),
                0..5,
            ),
            push in any::<bool>(),
            mirror in any::<bool>(),
        ) {
            let dir = if push { Direction::Push } else { Direction::Pull };
            let mode = if mirror { SyncMode::Mirror } else { SyncMode::Copy };
            let o = opts(dir, mode);
            let mut local = local_snap(&src, 10);
            let mut remote: Snapshot = dst.iter().map(|(p, c)| (p.clone(), c.map(|b| remote_file(u64::from(b % 3) + 1, 5)).unwrap_or_else(Entry::dir))).collect();
            let mut ledger = LedgerView::new();
            let p1 = plan(o, &ledger, &local, &remote).unwrap();
            apply(&p1, dir, &mut ledger, &mut local, &mut remote, 20);
            // Edits of existing local files, each with a new mtime: 0 a touch (same content),
            // 1 new content of the same size, 2 a new size.
            for (path, byte, kind) in &edits {
                if let Some(e) = local.get(path).filter(|e| e.kind == Kind::File).cloned() {
                    let edited = match kind {
                        0 => Entry { mtime: e.mtime + 7, ..e },
                        1 => file(&[*byte], e.mtime + 7),
                        _ => file(&[*byte; 2], e.mtime + 7),
                    };
                    local.insert(path.clone(), edited);
                }
            }
            // What a scan that hashed every changed file saw (the ledger's hash where size and
            // mtime match), and what the lazy scan sees, long after the last write.
            let now = 1_000 * UNSETTLED_NS;
            let full: Snapshot = local.iter().map(|(p, e)| {
                let mut e = e.clone();
                if let Some(r) = ledger.get(p).filter(|r| e.kind == Kind::File && r.size == e.size && r.mtime == e.mtime) {
                    e.hash = Some(r.hash);
                }
                (p.clone(), e)
            }).collect();
            let lazy: Snapshot = full.iter().map(|(p, e)| {
                let mut e = e.clone();
                if e.kind == Kind::File && local_hash(ledger.get(p), e.size, e.mtime, now) == LocalHash::Skip {
                    e.hash = None;
                }
                (p.clone(), e)
            }).collect();
            let strip = |p: Result<SyncPlan, PlanError>| p.map(|mut p| {
                for a in &mut p.actions {
                    if let Action::Upload { source, .. } = a {
                        source.hash = None;
                    }
                }
                p
            });
            prop_assert_eq!(
                strip(plan(o, &ledger, &full, &remote)),
                strip(plan(o, &ledger, &lazy, &remote))
            );
        }

        /// A full run planned directory by directory ([`TreePlan`], as the walk of a real run
        /// feeds it) decides what [`plan`] decides over the whole trees: after a converged sync
        /// both sides are edited at random (files written, subtrees removed, files where
        /// directories were and the other way round), in both directions and modes, with and
        /// without `max_delete`, and with include pruning.
        #[test]
        fn a_plan_built_directory_by_directory_is_the_whole_plan(
            src in tree(),
            dst in tree(),
            local_edits in edits(),
            remote_edits in edits(),
            push in any::<bool>(),
            mirror in any::<bool>(),
            max_delete in prop::option::of(0u64..4),
            allow_empty in any::<bool>(),
            prune in any::<bool>(),
            deferrals in prop::collection::vec(any::<bool>(), 0..8),
        ) {
            let dir = if push { Direction::Push } else { Direction::Pull };
            let mode = if mirror { SyncMode::Mirror } else { SyncMode::Copy };
            let mut o = opts(dir, mode);
            let mut local = local_snap(&src, 10);
            let mut remote: Snapshot = dst.iter().map(|(p, c)| (p.clone(), c.map(|b| remote_file(u64::from(b % 3) + 1, 5)).unwrap_or_else(Entry::dir))).collect();
            let mut ledger = LedgerView::new();
            let p1 = plan(o, &ledger, &local, &remote).unwrap();
            apply(&p1, dir, &mut ledger, &mut local, &mut remote, 20);
            edit(&mut local, &local_edits, |b| file(&[b], 30));
            edit(&mut remote, &remote_edits, |b| remote_file(u64::from(b % 3) + 1, 40));
            // What a real side can hold: nothing below a file (the in-memory executor makes
            // directories under a conflicting file).
            for side in [&mut local, &mut remote] {
                let files: Vec<String> = side.iter().filter(|(_, e)| !e.is_dir()).map(|(p, _)| p.clone()).collect();
                side.retain(|p, _| !files.iter().any(|f| crate::model::paths::is_under(p, f)));
            }
            // None: the default limit.
            o.max_delete = max_delete.map(MaxDelete::Count);
            o.allow_empty_source = allow_empty;
            o.ledger_files = Some(ledger.len() as u64);
            // The scan of one directory sees every subdirectory; a whole-tree scan prunes.
            let by_dirs = plan_by_directories(o, &ledger, &local, &remote, prune, &deferrals);
            if prune {
                prune_tree(&mut local);
                prune_tree(&mut remote);
            }
            let whole = plan(o, &ledger, &local, &remote);
            match (whole, by_dirs) {
                (Ok(whole), Ok(by_dirs)) => {
                    prop_assert_eq!(sorted(&whole.actions), sorted(&by_dirs.actions));
                    let paths = |c: &[Conflict]| { let mut v: Vec<String> = c.iter().map(|c| c.path.clone()).collect(); v.sort(); v };
                    prop_assert_eq!(paths(&whole.conflicts), paths(&by_dirs.conflicts));
                    // Parents are made before their children and removed after them.
                    let made: Vec<&str> = by_dirs.actions.iter().filter_map(|a| match a { Action::MakeDir { path } => Some(path.as_str()), _ => None }).collect();
                    let removed: Vec<&str> = by_dirs.actions.iter().filter_map(|a| match a { Action::DeleteDir { path } => Some(path.as_str()), _ => None }).collect();
                    for (i, a) in made.iter().enumerate() {
                        prop_assert!(!made[..i].iter().any(|b| crate::model::paths::is_under(b, a)), "{:?}", made);
                    }
                    for (i, a) in removed.iter().enumerate() {
                        prop_assert!(!removed[..i].iter().any(|b| crate::model::paths::is_under(a, b)), "{:?}", removed);
                    }
                }
                (whole, by_dirs) => prop_assert_eq!(whole.err(), by_dirs.err()),
            }
        }

        /// After a converged sync the source loses every file (an unmounted disk, a listing
        /// that came back empty): both planners refuse whenever the destination has a file to
        /// lose, in both directions, unless the job allows an empty source; copy mode never
        /// refuses.
        #[test]
        fn an_emptied_source_is_refused_by_both_planners(
            src in tree(),
            dst in tree(),
            push in any::<bool>(),
            mirror in any::<bool>(),
            keep_dirs in any::<bool>(),
            allow_empty in any::<bool>(),
        ) {
            let dir = if push { Direction::Push } else { Direction::Pull };
            let mode = if mirror { SyncMode::Mirror } else { SyncMode::Copy };
            let mut local = local_snap(&src, 10);
            let mut remote: Snapshot = dst.iter().map(|(p, c)| (p.clone(), c.map(|b| remote_file(u64::from(b % 3) + 1, 5)).unwrap_or_else(Entry::dir))).collect();
            let mut ledger = LedgerView::new();
            let p1 = plan(opts(dir, SyncMode::Mirror), &ledger, &local, &remote).unwrap();
            apply(&p1, dir, &mut ledger, &mut local, &mut remote, 20);
            // What a real side can hold: nothing below a file (the in-memory executor makes
            // directories under a conflicting file).
            for side in [&mut local, &mut remote] {
                let files: Vec<String> = side.iter().filter(|(_, e)| !e.is_dir()).map(|(p, _)| p.clone()).collect();
                side.retain(|p, _| !files.iter().any(|f| crate::model::paths::is_under(p, f)));
            }
            let source = if push { &mut local } else { &mut remote };
            source.retain(|_, e| keep_dirs && e.is_dir());
            let dest = if push { &remote } else { &local };
            let dest_files = dest.values().filter(|e| !e.is_dir()).count() as u64;
            let mut o = guarded(dir, mode);
            o.allow_empty_source = allow_empty;
            // As the walk gives it: a full run does not hand the plan every row.
            o.ledger_files = Some(ledger.len() as u64);
            let whole = plan(o, &ledger, &local, &remote);
            let by_dirs = plan_by_directories(o, &ledger, &local, &remote, false, &[]);
            match (&whole, &by_dirs) {
                (Ok(w), Ok(d)) => prop_assert_eq!(sorted(&w.actions), sorted(&d.actions)),
                _ => prop_assert_eq!(whole.clone().err(), by_dirs.err()),
            }
            // What the run deletes when allowed: every destination file but those that stand
            // against a source directory (conflicts), none in copy mode.
            let allowed = plan(PlanOptions { allow_empty_source: true, ..o }, &ledger, &local, &remote).unwrap();
            let deletes = allowed.deletes() as u64;
            prop_assert!(deletes <= dest_files && (mirror || deletes == 0));
            if deletes > 0 && !allow_empty {
                prop_assert_eq!(whole.err(), Some(PlanError::EmptySource {
                    wanted: deletes,
                    dest_files,
                    ledger_files: ledger.len() as u64,
                    direction: dir,
                    source_root: String::new(),
                }));
            } else {
                prop_assert_eq!(whole.unwrap().deletes() as u64, deletes);
            }
        }

        /// A lost ledger: after a converged sync and edits on both sides, the same run planned
        /// without any ledger row deletes nothing the run with the ledger would not delete (and
        /// refuses whenever that run refuses), and never sends a file over one the destination
        /// holds, whatever the evidence: those are adopted or reported.
        #[test]
        fn a_lost_ledger_never_deletes_more_nor_overwrites(
            src in tree(),
            dst in tree(),
            local_edits in edits(),
            remote_edits in edits(),
            push in any::<bool>(),
            mirror in any::<bool>(),
            max_delete in prop::option::of(0u64..4),
            allow_empty in any::<bool>(),
            evidence_kinds in prop::collection::vec(0u8..4, 16),
        ) {
            let dir = if push { Direction::Push } else { Direction::Pull };
            let mode = if mirror { SyncMode::Mirror } else { SyncMode::Copy };
            let mut local = local_snap(&src, 10);
            let mut remote: Snapshot = dst.iter().map(|(p, c)| (p.clone(), c.map(|b| remote_file(u64::from(b % 3) + 1, 5)).unwrap_or_else(Entry::dir))).collect();
            let mut ledger = LedgerView::new();
            let p1 = plan(opts(dir, mode), &ledger, &local, &remote).unwrap();
            apply(&p1, dir, &mut ledger, &mut local, &mut remote, 20);
            edit(&mut local, &local_edits, |b| file(&[b], 30));
            edit(&mut remote, &remote_edits, |b| remote_file(u64::from(b % 3) + 1, 40));
            for side in [&mut local, &mut remote] {
                let files: Vec<String> = side.iter().filter(|(_, e)| !e.is_dir()).map(|(p, _)| p.clone()).collect();
                side.retain(|p, _| !files.iter().any(|f| crate::model::paths::is_under(p, f)));
            }
            let mut o = guarded(dir, mode);
            o.adopt = Adopt::Evidence;
            o.max_delete = max_delete.map(MaxDelete::Count);
            o.allow_empty_source = allow_empty;
            // Evidence of every kind, some of it saying the copies differ.
            let evidence: EvidenceMap = local.iter().filter(|(p, e)| !e.is_dir() && remote.get(*p).is_some_and(|r| !r.is_dir())).enumerate().map(|(i, (p, e))| {
                let ev = match evidence_kinds.get(i % evidence_kinds.len()).copied().unwrap_or(0) {
                    0 => Evidence::default(),
                    1 => digest(&[1], &[(i % 2) as u8 + 1]),
                    2 => Evidence { remote_exact_mtime: Some(e.mtime), ..Evidence::default() },
                    _ => Evidence { remote_content: Some((e.size, e.hash.unwrap_or_else(|| blake3::hash(b"")))), ..Evidence::default() },
                };
                (p.clone(), ev)
            }).collect();
            let with_ledger = plan_with(o, &ledger, &local, &remote, &evidence);
            let mut lost = o;
            lost.ledger_files = Some(0);
            let without = plan_with(lost, &LedgerView::new(), &local, &remote, &evidence);
            let by_dirs = plan_by_directories_with(lost, &LedgerView::new(), &local, &remote, &evidence, false, &[]);
            let deletes = |p: &SyncPlan| -> std::collections::BTreeSet<String> {
                p.actions.iter().filter(|a| matches!(a, Action::DeleteFile { .. } | Action::DeleteDir { .. })).map(|a| a.path().to_string()).collect()
            };
            let dest = if push { &remote } else { &local };
            for lost_plan in [&without, &by_dirs] {
                match (&with_ledger, lost_plan) {
                    (Ok(w), Ok(l)) => {
                        prop_assert!(deletes(l).is_subset(&deletes(w)), "{:?} beyond {:?}", deletes(l), deletes(w));
                        for a in l.actions.iter().filter(|a| a.is_transfer()) {
                            prop_assert!(dest.get(a.path()).is_none_or(|d| d.is_dir()), "overwrites {}", a.path());
                        }
                        // Adopted only where the evidence says the same.
                        for a in &l.actions {
                            if let Action::Record { path, .. } = a {
                                let same = matches!(adoption(&local[path], &remote[path], evidence.get(path)), Adoption::Same(_));
                                prop_assert!(same, "{path} adopted on {:?}", evidence.get(path));
                            }
                        }
                    }
                    // A refusal with the ledger is a refusal without it.
                    (Err(_), Err(_)) => {}
                    (Err(e), Ok(l)) => prop_assert!(deletes(l).is_empty(), "{e} but {:?}", l),
                    (Ok(_), Err(e)) => prop_assert!(false, "refused only without the ledger: {e}"),
                }
            }
        }

        #[test]
        fn copy_never_deletes(src in tree(), dst in tree(), push in any::<bool>()) {
            let dir = if push { Direction::Push } else { Direction::Pull };
            let local = local_snap(&src, 10);
            let remote: Snapshot = dst.iter().map(|(p, c)| (p.clone(), c.map(|_| remote_file(1, 5)).unwrap_or_else(Entry::dir))).collect();
            let p = plan(opts(dir, SyncMode::Copy), &LedgerView::new(), &local, &remote).unwrap();
            let deletes = p.actions.iter().filter(|a| matches!(a, Action::DeleteFile { .. } | Action::DeleteDir { .. })).count();
            prop_assert_eq!(deletes, 0);
        }

        #[test]
        fn max_delete_is_never_exceeded(src in tree(), dst in tree(), max in 0u64..5) {
            let local = local_snap(&src, 10);
            let remote: Snapshot = dst.iter().map(|(p, c)| (p.clone(), c.map(|_| remote_file(1, 5)).unwrap_or_else(Entry::dir))).collect();
            let mut o = opts(Direction::Push, SyncMode::Mirror);
            o.max_delete = Some(MaxDelete::Count(max));
            match plan(o, &LedgerView::new(), &local, &remote) {
                Ok(p) => prop_assert!(p.deletes() as u64 <= max),
                Err(PlanError::TooManyDeletes { wanted, limit, .. }) => prop_assert!(wanted > limit),
                Err(e) => prop_assert!(false, "{e}"),
            }
        }
    }
}
