//! The decision: given what the ledger remembers and what both sides hold now, what must happen.
//!
//! [`plan`] is pure (no I/O, no clock), so every rule here is tested without a server. The
//! ledger remembers, per file, the local size/mtime/BLAKE3 and the remote size/mtime as they
//! were when the file was last synced; a side is "unchanged" when it still matches that record.

use std::collections::BTreeMap;

use crate::config::{Direction, MaxDelete, SyncMode};
use crate::snapshot::{Entry, Kind, Snapshot};

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
}

impl SyncPlan {
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
}

/// The options of a job that decide the plan.
#[derive(Debug, Clone, Copy)]
pub struct PlanOptions {
    pub direction: Direction,
    pub mode: SyncMode,
    pub max_delete: Option<MaxDelete>,
    /// The number of files on the whole destination, when the snapshots hold only part of the
    /// tree (an incremental run): `max_delete` is relative to the whole destination, so a
    /// percentage must not shrink to a percentage of the part. `None`: the files of `dest`.
    pub dest_files: Option<u64>,
}

/// Decides the actions of one run.
pub fn plan(
    opts: PlanOptions,
    ledger: &LedgerView,
    local: &Snapshot,
    remote: &Snapshot,
) -> Result<SyncPlan, PlanError> {
    let (source, dest) = match opts.direction {
        Direction::Push => (local, remote),
        Direction::Pull => (remote, local),
    };
    let mut out = SyncPlan::default();
    let mut transfers = Vec::new();
    let mut dest_conflicts = std::collections::BTreeSet::new();

    for (path, s) in source {
        let d = dest.get(path);
        match (s.kind, d.map(|d| d.kind)) {
            (Kind::Dir, Some(Kind::Dir)) => {}
            (Kind::Dir, None) => out.actions.push(Action::MakeDir { path: path.clone() }),
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
            (Kind::File, _) => {
                let d = d.filter(|d| d.kind == Kind::File);
                let decision = match (ledger.get(path), d) {
                    (Some(e), Some(d)) => unchanged_pair(opts.direction, e, s, d),
                    _ => None,
                };
                match decision {
                    Some(None) => {}
                    Some(Some(entry)) => out.actions.push(Action::Record {
                        path: path.clone(),
                        entry,
                    }),
                    None => transfers.push(match opts.direction {
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
    out.actions.extend(transfers);

    // What the destination has and the source does not.
    let mut delete_files = Vec::new();
    let mut delete_dirs = Vec::new();
    if opts.mode == SyncMode::Mirror {
        for (path, d) in dest {
            if source.contains_key(path) || under_any(path, &dest_conflicts) {
                continue;
            }
            match d.kind {
                Kind::File => delete_files.push(Action::DeleteFile { path: path.clone() }),
                Kind::Dir => delete_dirs.push(Action::DeleteDir { path: path.clone() }),
            }
        }
        let dest_files = opts
            .dest_files
            .unwrap_or_else(|| dest.values().filter(|e| e.kind == Kind::File).count() as u64);
        if let Some(max) = opts.max_delete {
            let wanted = delete_files.len() as u64;
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
    }
    out.actions.extend(delete_files);
    // Deepest first, so a directory is empty when its turn comes.
    delete_dirs.reverse();
    out.actions.extend(delete_dirs);

    // A row whose path is on neither side is dropped; a mirror delete drops its own row.
    for path in ledger.keys() {
        if !source.contains_key(path) && !dest.contains_key(path) {
            out.actions.push(Action::Forget { path: path.clone() });
        }
    }
    Ok(out)
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
        }
    }
    fn remote_file(size: u64, mtime: i64) -> Entry {
        Entry {
            kind: Kind::File,
            size,
            mtime,
            hash: None,
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
    fn opts(direction: Direction, mode: SyncMode) -> PlanOptions {
        PlanOptions {
            direction,
            mode,
            max_delete: None,
            dest_files: None,
        }
    }
    fn snap(items: &[(&str, Entry)]) -> Snapshot {
        items
            .iter()
            .map(|(p, e)| (p.to_string(), e.clone()))
            .collect()
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
                    Some(Some(_)) => ok = false,
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
                    None => changed_to.retain(|p, _| p != path && !crate::scope::is_under(p, path)),
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
            let Some(scope) = crate::scope::Scope::of_changed(changed.iter().copied()) else {
                return Ok(());
            };
            o.max_delete = max_percent.map(|p| MaxDelete::Percent(f64::from(p)));
            o.dest_files = Some(remote.values().filter(|e| e.kind == Kind::File).count() as u64);

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
            }
        }
    }
}
