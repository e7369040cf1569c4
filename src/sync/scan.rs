//! Scans: what the local tree and the remote tree hold now, as [`Snapshot`]s.
//!
//! The local scan hashes a file only where the plan compares content (see
//! [`crate::model::plan::local_hash`]): a file whose size and mtime are the ledger's keeps the recorded
//! hash, and a new or resized file is hashed by its transfer, in the same read that sends it;
//! the remote scan lists directories (MLSD where offered, LIST otherwise) and refuses names that
//! could escape the job's directory before they ever reach a local path.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::SystemTime;

use crate::config::{ListTimeOffset, PathFilter};
use crate::model::paths::{self, local_path, remote_path};
use crate::model::plan::{adoption, local_hash, Adoption, LedgerView, LocalHash};
use crate::model::scope::Scope;
use crate::model::snapshot::{
    check_remote_name, is_temp_name, system_time_ns, DigestPair, Entry, Evidence, EvidenceMap,
    FileId, Kind, Snapshot,
};
use crate::remote::digest::{DigestAlgorithm, LocalDigest};
use crate::remote::error::FtpsError;
use crate::remote::listing::{self, ListedKind, Precision};
use crate::remote::session::Session;
use crate::state::ledger::PathFailure;

/// A scanned tree and the paths that could not be read.
#[derive(Debug, Default)]
pub struct Scan {
    pub snapshot: Snapshot,
    pub failures: Vec<PathFailure>,
    /// Local scan: how many files were hashed (the rest reused the ledger's hash).
    pub hashed: u64,
    /// Remote scan: the job's remote directory does not exist yet.
    pub root_missing: bool,
    /// Temporary files of transfers (`.NAME.ferrysync-part`), relative paths.
    pub temps: Vec<String>,
    /// Local paths whose content or directory could not be read (each also in `failures`):
    /// they are not absent, only unknown, so nothing at or below them may be deleted or
    /// forgotten (see [`crate::model::plan::spare`]).
    pub unreadable: Vec<String>,
    /// Remote scan: the ready markers listed (`ready_marker:`, `batch_marker:`), relative
    /// paths; never part of the snapshot.
    pub markers: Vec<String>,
}

/// BLAKE3 of a whole file (a link put in its place since it was stat-ed is not followed).
pub fn hash_file(path: &Path) -> std::io::Result<blake3::Hash> {
    hash_file_with(path, None).map(|(hash, _, _)| hash)
}

/// BLAKE3 of a whole file and, where `other` names one, its digest of that algorithm, in one
/// read; and the number of bytes read.
fn hash_file_with(
    path: &Path,
    other: Option<DigestAlgorithm>,
) -> std::io::Result<(blake3::Hash, Option<Vec<u8>>, u64)> {
    let no_follow = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let mut f = std::fs::File::options()
        .read(true)
        .custom_flags(no_follow.bits() as i32)
        .open(path)?;
    let mut digest = LocalDigest::new(other);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        digest.update(&buf[..n]);
        total += n as u64;
    }
    let (hash, other) = digest.finalize();
    Ok((hash, other, total))
}

/// The paths of files that both sides hold, with the same size, and the ledger has no row for:
/// what [`gather_evidence`] looks into. (Of another size, the plan needs no evidence.)
fn adoption_candidates(ledger: &LedgerView, local: &Snapshot, remote: &Snapshot) -> Vec<String> {
    local
        .iter()
        .filter(|(path, l)| {
            l.kind == Kind::File
                && !ledger.contains_key(*path)
                && remote
                    .get(*path)
                    .is_some_and(|r| r.kind == Kind::File && r.size == l.size)
        })
        .map(|(path, _)| path.clone())
        .collect()
}

/// Gathers the evidence the plan adopts files on (see [`crate::model::plan::adoption`]) for
/// the files of `local` and `remote` that the ledger (`ledger`: the rows of the same paths)
/// does not know, strongest first and only as far as the rule needs: the local file is read
/// once for its BLAKE3 and the digest the server offers; then the server's digest (HASH,
/// XSHA256, XSHA1, XMD5); failing that, the remote file's exact time (the listing's, where
/// `listing_exact` says it is MLSD's, else MDTM); failing that, the remote file read whole
/// (RETR) and hashed, never written anywhere. The local files' BLAKE3 go into `local`'s
/// entries, for the ledger's rows. A refused command is noted as missing evidence; a broken
/// connection fails the call (the run retries).
pub async fn gather_evidence(
    session: &mut Session,
    remote_root: &str,
    local_root: &Path,
    ledger: &LedgerView,
    local: &mut Scan,
    remote: &Snapshot,
    listing_exact: bool,
) -> Result<EvidenceMap, FtpsError> {
    let mut found = EvidenceMap::new();
    let algorithm = session.features.digest.map(|c| c.algorithm());
    for rel in adoption_candidates(ledger, &local.snapshot, remote) {
        let (Some(size), Some(r)) = (local.snapshot.get(&rel).map(|l| l.size), remote.get(&rel))
        else {
            continue;
        };
        let mut ev = Evidence::default();
        let abs = local_path(local_root, &rel);
        let read = tokio::task::spawn_blocking(move || hash_file_with(&abs, algorithm)).await;
        let (hash, local_digest) = match read {
            Ok(Ok((hash, other, len))) if len == size => (Some(hash), other),
            Ok(Ok(_)) => {
                ev.missing
                    .push("the local file changed while it was read".into());
                (None, None)
            }
            Ok(Err(e)) => {
                ev.missing.push(format!("cannot read the local file: {e}"));
                (None, None)
            }
            Err(_) => {
                ev.missing
                    .push("the local file's hashing task failed".into());
                (None, None)
            }
        };
        let Some(l) = local.snapshot.get_mut(&rel) else {
            continue;
        };
        l.hash = hash;
        let l = l.clone();
        if hash.is_none() {
            found.insert(rel, ev);
            continue;
        }
        local.hashed += 1;
        let path = remote_path(remote_root, &rel);
        let refused = |e: FtpsError, ev: &mut Evidence| -> Result<(), FtpsError> {
            // A reply (a 5xx, a reply without a digest) leaves the connection in step: noted.
            if e.code().is_some() {
                ev.missing.push(e.to_string());
                Ok(())
            } else {
                Err(e)
            }
        };
        if let Some(local_digest) = local_digest {
            match session.remote_digest(&path).await {
                Ok(Some((alg, remote_digest))) => {
                    ev.digest = Some(DigestPair {
                        algorithm: alg.name(),
                        local: local_digest,
                        remote: remote_digest,
                    })
                }
                Ok(None) => {}
                Err(e) => refused(e, &mut ev)?,
            }
        }
        let unknown = |ev: &Evidence| matches!(adoption(&l, r, Some(ev)), Adoption::Unknown(_));
        if unknown(&ev) {
            if listing_exact {
                ev.remote_exact_mtime = Some(r.mtime);
            } else if session.features.mdtm {
                match session.mdtm(&path).await {
                    Ok(t) => ev.remote_exact_mtime = Some(t),
                    Err(e) => refused(e, &mut ev)?,
                }
            }
        }
        if unknown(&ev) {
            match session.remote_blake3(&path).await {
                Ok(read) => ev.remote_content = Some(read),
                Err(e) => refused(e, &mut ev)?,
            }
        }
        tracing::debug!(path = %rel, evidence = ?adoption(&l, r, Some(&ev)), "adoption");
        found.insert(rel, ev);
    }
    Ok(found)
}

/// The local side of an incremental run: each root of `scope` (stat-ed, and walked when it is
/// a directory), nothing else. `ledger` needs to hold only the rows inside the scope.
pub fn scan_local_scope(
    root: &Path,
    scope: &Scope,
    filter: &PathFilter,
    ledger: &LedgerView,
) -> std::io::Result<Scan> {
    let mut scan = Scan::default();
    std::fs::read_dir(root)?;
    let rules = LocalRules::new(filter, ledger);
    for rel in scope.roots() {
        let (_, name) = paths::split_parent(rel);
        // Inside an excluded directory, or a transfer's temporary file: a full scan never
        // looks there either.
        if is_temp_name(name) || paths::ancestors(rel).any(|a| filter.excludes(a)) {
            continue;
        }
        let abs = local_path(root, rel);
        let meta = match std::fs::symlink_metadata(&abs) {
            Ok(m) => m,
            // Gone (or its parent is no longer a directory): the plan deletes or forgets it.
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(20 /* ENOTDIR */) =>
            {
                continue
            }
            Err(e) => {
                scan.failures.push(PathFailure {
                    path: rel.to_string(),
                    error: format!("cannot stat: {e}"),
                });
                continue;
            }
        };
        let mut dirs = Vec::new();
        add_local(rel.to_string(), &meta, &abs, &rules, &mut scan, &mut dirs);
        walk_local(root, dirs, &rules, &mut scan);
    }
    if filter.has_includes() {
        prune_dirs(&mut scan.snapshot);
    }
    Ok(scan)
}

/// Whether the job's local tree holds a file the job takes (its filter's, not a transfer's
/// temporary file, not behind a symbolic link), looked for depth first and stopped at the first:
/// what an incremental run needs to know of the whole source (see `allow_empty_source`). A
/// directory that cannot be read counts as holding none, as a full run's scan finds none there.
pub fn local_has_file(root: &Path, filter: &PathFilter) -> bool {
    let mut dirs = vec![String::new()];
    while let Some(rel_dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(local_path(root, &rel_dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if is_temp_name(&name) {
                continue;
            }
            let rel = paths::join(&rel_dir, &name);
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() && !filter.excludes(&rel) {
                dirs.push(rel);
            } else if ft.is_file() && filter.includes_file(&rel) {
                return true;
            }
        }
    }
    false
}

/// What decides how the local scan takes in a path: the job's filter, the ledger's records
/// (for the hashes they spare) and the scan's clock (see [`crate::model::plan::local_hash`]).
struct LocalRules<'a> {
    filter: &'a PathFilter,
    ledger: &'a LedgerView,
    now: i64,
}

impl<'a> LocalRules<'a> {
    fn new(filter: &'a PathFilter, ledger: &'a LedgerView) -> Self {
        LocalRules {
            filter,
            ledger,
            now: system_time_ns(SystemTime::now()),
        }
    }
}

/// Walks the directories `dirs` (relative paths) and everything below them into `scan`.
fn walk_local(root: &Path, mut dirs: Vec<String>, rules: &LocalRules<'_>, scan: &mut Scan) {
    while let Some(rel_dir) = dirs.pop() {
        read_local_dir(root, &rel_dir, rules, scan, &mut dirs);
    }
}

/// The direct children of one local directory of the job (blocking: run it on a blocking
/// thread), keyed by their paths relative to `root`, against `ledger`, the ledger's rows of
/// that directory (see [`crate::model::plan::TreePlan`]). A directory that cannot be read is in the
/// scan's `unreadable`.
pub fn scan_local_dir(
    root: &Path,
    rel_dir: &str,
    filter: &PathFilter,
    ledger: &LedgerView,
) -> Scan {
    let mut scan = Scan::default();
    let rules = LocalRules::new(filter, ledger);
    read_local_dir(root, rel_dir, &rules, &mut scan, &mut Vec::new());
    scan
}

/// Adds the children of `rel_dir` to `scan`, and its subdirectories to `dirs`.
fn read_local_dir(
    root: &Path,
    rel_dir: &str,
    rules: &LocalRules<'_>,
    scan: &mut Scan,
    dirs: &mut Vec<String>,
) {
    let abs_dir = local_path(root, rel_dir);
    let unreadable = |scan: &mut Scan, e: std::io::Error| {
        scan.failures.push(PathFailure {
            path: rel_dir.to_string(),
            error: format!("cannot read local directory {}: {e}", abs_dir.display()),
        });
        scan.unreadable.push(rel_dir.to_string());
    };
    let entries = match std::fs::read_dir(&abs_dir) {
        Ok(rd) => rd,
        Err(e) => return unreadable(scan, e),
    };
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            // What was read so far is not the whole directory.
            Err(e) => return unreadable(scan, e),
        };
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            scan.failures.push(PathFailure {
                path: paths::join(rel_dir, &entry.file_name().to_string_lossy()),
                error: "the name is not valid UTF-8 and cannot be sent to an FTP server".into(),
            });
            continue;
        };
        let rel = paths::join(rel_dir, &name);
        if is_temp_name(&name) {
            scan.temps.push(rel);
            continue;
        }
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) => {
                scan.failures.push(PathFailure {
                    path: rel.clone(),
                    error: format!("cannot stat: {e}"),
                });
                scan.unreadable.push(rel);
                continue;
            }
        };
        add_local(rel, &meta, &entry.path(), rules, scan, dirs);
    }
}

/// Adds one local file or directory (not followed if a link) to `scan`; a directory is also
/// pushed onto `dirs` to be walked. A file is hashed only where [`crate::model::plan::local_hash`]
/// says the plan needs it.
fn add_local(
    rel: String,
    meta: &std::fs::Metadata,
    abs: &Path,
    rules: &LocalRules<'_>,
    scan: &mut Scan,
    dirs: &mut Vec<String>,
) {
    let ft = meta.file_type();
    if ft.is_dir() {
        if rules.filter.excludes(&rel) {
            return;
        }
        scan.snapshot.insert(rel.clone(), Entry::dir());
        dirs.push(rel);
    } else if ft.is_file() {
        if !rules.filter.includes_file(&rel) {
            return;
        }
        let size = meta.len();
        let mtime = meta.modified().map(system_time_ns).unwrap_or(0);
        let hash = match local_hash(rules.ledger.get(&rel), size, mtime, rules.now) {
            LocalHash::Reuse(h) => Some(h),
            LocalHash::Skip => None,
            LocalHash::Compute => match hash_file(abs) {
                Ok(h) => {
                    scan.hashed += 1;
                    Some(h)
                }
                Err(e) => {
                    scan.failures.push(PathFailure {
                        path: rel.clone(),
                        error: format!("cannot read: {e}"),
                    });
                    scan.unreadable.push(rel);
                    return;
                }
            },
        };
        scan.snapshot.insert(
            rel,
            Entry {
                kind: Kind::File,
                size,
                mtime,
                hash,
                id: Some(FileId {
                    dev: meta.dev(),
                    ino: meta.ino(),
                }),
            },
        );
    } else {
        tracing::warn!(path = %rel, "skipping: not a regular file or directory (symbolic links are not followed)");
    }
}

/// With include patterns, keeps only the directories that lead to an included file.
fn prune_dirs(snap: &mut Snapshot) {
    let mut keep = std::collections::BTreeSet::new();
    for (path, e) in snap.iter() {
        if e.kind == Kind::File {
            let mut p = path.as_str();
            while let Some(i) = p.rfind('/') {
                p = &p[..i];
                keep.insert(p.to_string());
            }
        }
    }
    snap.retain(|path, e| e.kind == Kind::File || keep.contains(path));
}

/// The remote side of an incremental run: the directory holding each root of `scope` is
/// listed (once per directory) for that root's entry, and a root that is a directory on the
/// server is listed to the bottom. `None` when a root's directory does not exist on the server
/// (or is not a directory): then only a full run knows what to create.
pub async fn scan_remote_scope(
    session: &mut Session,
    root: &str,
    scope: &Scope,
    filter: &PathFilter,
    ledger: &LedgerView,
    offset: ListTimeOffset,
) -> Result<Option<Scan>, FtpsError> {
    let mut by_parent: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for rel in scope.roots() {
        if paths::ancestors(rel).any(|a| filter.excludes(a)) {
            continue;
        }
        let (parent, name) = paths::split_parent(rel);
        by_parent.entry(parent).or_default().insert(name);
    }
    let mut scan = Scan::default();
    let mut times = ListTimes::new(offset);
    for (parent, names) in by_parent {
        let wanted =
            |name: &str| names.contains(crate::model::snapshot::temp_owner(name).unwrap_or(name));
        let listed = list_remote_dir(
            session, root, parent, filter, wanted, ledger, &mut scan, &mut times,
        );
        let mut queue = match listed.await {
            Ok(subdirs) => VecDeque::from(subdirs),
            Err(e) if matches!(e.code(), Some(550)) => {
                tracing::debug!(dir = %parent, "not on the server: {e}");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        while let Some(rel_dir) = queue.pop_front() {
            let subdirs = list_remote_dir(
                session,
                root,
                &rel_dir,
                filter,
                |_| true,
                ledger,
                &mut scan,
                &mut times,
            )
            .await?;
            queue.extend(subdirs);
        }
    }
    times.finish(&mut scan);
    if filter.has_includes() {
        prune_dirs(&mut scan.snapshot);
    }
    Ok(Some(scan))
}

/// Lists one remote directory (`rel_dir`, relative to `root`) into `scan`, keeping the names
/// `wanted` accepts (a temporary file counts as the file it is for); returns the directories
/// found, to be listed in turn. Times of `LIST` entries are settled by `times`.
#[allow(clippy::too_many_arguments)] // the listing's inputs, each used once
pub async fn list_remote_dir(
    session: &mut Session,
    root: &str,
    rel_dir: &str,
    filter: &PathFilter,
    wanted: impl Fn(&str) -> bool,
    ledger: &LedgerView,
    scan: &mut Scan,
    times: &mut ListTimes,
) -> Result<Vec<String>, FtpsError> {
    let listed = RemoteListing::fetch(session, root, rel_dir, !rel_dir.is_empty()).await?;
    listed
        .add_to(session, root, filter, wanted, ledger, scan, times)
        .await
}

/// The raw lines of one remote directory's listing, before they are checked and parsed (see
/// [`RemoteListing::add_to`]).
pub struct RemoteListing {
    rel_dir: String,
    lines: Vec<String>,
    mlsd: bool,
}

impl RemoteListing {
    /// Whether the listing is MLSD's, whose times are exact (LIST's are minute-precise).
    pub fn is_mlsd(&self) -> bool {
        self.mlsd
    }

    /// Lists `rel_dir` (relative to `root`), MLSD where offered, LIST otherwise.
    /// `there`: the directory is expected to be there (see [`Session::list_dir_if_there`]).
    pub async fn fetch(
        session: &mut Session,
        root: &str,
        rel_dir: &str,
        there: bool,
    ) -> Result<RemoteListing, FtpsError> {
        let path = remote_path(root, rel_dir);
        let (lines, mlsd) = if there {
            session.list_dir(&path).await?
        } else {
            session.list_dir_if_there(&path).await?
        };
        Ok(RemoteListing {
            rel_dir: rel_dir.to_string(),
            lines,
            mlsd,
        })
    }

    /// Adds the listing's entries to `scan` (see [`list_remote_dir`]); `session` answers the
    /// MDTM that may tell the server's LIST time offset.
    #[allow(clippy::too_many_arguments)] // as list_remote_dir
    pub async fn add_to(
        self,
        session: &mut Session,
        root: &str,
        filter: &PathFilter,
        wanted: impl Fn(&str) -> bool,
        ledger: &LedgerView,
        scan: &mut Scan,
        times: &mut ListTimes,
    ) -> Result<Vec<String>, FtpsError> {
        let RemoteListing {
            rel_dir,
            lines,
            mlsd,
        } = self;
        let rel_dir = rel_dir.as_str();
        let abs = remote_path(root, rel_dir);
        let mut subdirs = Vec::new();
        for line in lines {
            let Some(file) = listing::parse_line(&line, mlsd) else {
                continue;
            };
            let name = file.name;
            if file.kind == ListedKind::Dir && (name == "." || name == "..") {
                continue;
            }
            if !wanted(&name) {
                continue;
            }
            if let Err(e) = check_remote_name(&abs, &name) {
                scan.failures.push(PathFailure {
                    path: paths::join(rel_dir, &name.escape_debug().to_string()),
                    error: e.to_string(),
                });
                continue;
            }
            let rel = paths::join(rel_dir, &name);
            if is_temp_name(&name) {
                if file.kind == ListedKind::File {
                    scan.temps.push(rel);
                }
                continue;
            }
            match file.kind {
                ListedKind::Symlink => tracing::warn!(path = %rel, "skipping remote symbolic link"),
                ListedKind::Dir => {
                    if filter.excludes(&rel) {
                        continue;
                    }
                    scan.snapshot.insert(rel.clone(), Entry::dir());
                    subdirs.push(rel);
                }
                ListedKind::File => {
                    if filter.is_marker(&rel) {
                        scan.markers.push(rel);
                        continue;
                    }
                    if !filter.includes_file(&rel) {
                        continue;
                    }
                    let recorded = ledger.get(&rel).and_then(|e| e.remote_mtime);
                    let mtime = times
                        .settle(session, root, &rel, file.mtime, file.precision, recorded)
                        .await;
                    scan.snapshot.insert(
                        rel,
                        Entry {
                            kind: Kind::File,
                            size: file.size,
                            mtime,
                            hash: None,
                            id: None,
                        },
                    );
                }
            }
        }
        Ok(subdirs)
    }
}

/// Puts `LIST` times in UTC and, where they agree with the ledger's record at the listing's
/// precision, replaces them by the recorded time (see [`listing::settle_time`]), as the
/// listing goes: the offset is learnt from the first minute-precise file (one MDTM), and only
/// the files listed before that one wait for it. (Remembering every imprecise file until the
/// end cost 64 MB at a million files.)
#[derive(Debug, Clone, Default)]
pub struct ListTimes {
    /// Seconds east of UTC, once known.
    offset: Option<i64>,
    /// Imprecise files listed before the offset was known, with their recorded remote times.
    pending: Vec<(String, Precision, Option<i64>)>,
}

impl ListTimes {
    pub fn new(offset: ListTimeOffset) -> Self {
        ListTimes {
            offset: match offset {
                ListTimeOffset::Fixed(secs) => Some(secs),
                ListTimeOffset::Auto => None,
            },
            pending: Vec::new(),
        }
    }

    /// The server's offset, if known (set in the job, or learnt).
    pub fn offset(&self) -> Option<i64> {
        self.offset
    }

    /// Takes an offset learnt elsewhere in the run, unless one is known already.
    pub fn learn(&mut self, offset: Option<i64>) {
        self.offset = self.offset.or(offset);
    }

    /// Whether files wait for the offset to be known.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The time to record for a file listed at `listed` with `precision`; `recorded` is the
    /// ledger's remote time of that file.
    async fn settle(
        &mut self,
        session: &mut Session,
        root: &str,
        rel: &str,
        listed: i64,
        precision: Precision,
        recorded: Option<i64>,
    ) -> i64 {
        if precision == Precision::Exact {
            return listed;
        }
        if self.offset.is_none() && precision == Precision::Minute {
            self.offset = Some(detect_list_offset(session, root, rel, listed).await);
        }
        match self.offset {
            Some(offset) => {
                listing::settle_time(listing::apply_offset(listed, offset), precision, recorded)
            }
            None => {
                self.pending.push((rel.to_string(), precision, recorded));
                listed
            }
        }
    }

    /// Settles the files that waited for an offset (UTC when no file was minute-precise).
    pub fn finish(&mut self, scan: &mut Scan) {
        let offset = self.offset.unwrap_or(0);
        for (rel, precision, recorded) in self.pending.drain(..) {
            if let Some(e) = scan.snapshot.get_mut(&rel) {
                e.mtime = listing::settle_time(
                    listing::apply_offset(e.mtime, offset),
                    precision,
                    recorded,
                );
            }
        }
    }
}

/// The offset of the server's LIST times from UTC: one minute-precise file's LIST time
/// (`listed`) against its MDTM. 0 (UTC, as vsftpd and most Unix servers list) when the server
/// has no MDTM or the answer makes no sense.
async fn detect_list_offset(session: &mut Session, root: &str, rel: &str, listed: i64) -> i64 {
    if !session.features.mdtm {
        return 0;
    }
    match session.mdtm(&remote_path(root, rel)).await {
        Ok(exact) => match listing::detect_offset(listed, exact) {
            Some(0) => 0,
            Some(secs) => {
                tracing::info!(
                    server = %session.server,
                    "LIST times are UTC{}{:02}:{:02} (from the MDTM of {rel}); set remote.list_time_offset to fix it",
                    if secs < 0 { '-' } else { '+' },
                    secs.abs() / 3600,
                    secs.abs() % 3600 / 60
                );
                secs
            }
            None => {
                tracing::warn!(path = %rel, "the LIST and MDTM times of one file differ by more than 14 hours; reading LIST times as UTC");
                0
            }
        },
        Err(e) => {
            tracing::debug!("MDTM for the LIST time offset failed: {e}");
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::plan::SyncedEntry;
    use std::time::Duration;

    #[test]
    fn a_local_directory_is_read_with_its_children_only_and_reuses_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a b/ünï")).unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::write(root.join("a b/ünï/f.txt"), b"hello").unwrap();
        std::fs::write(root.join("zero"), b"").unwrap();
        std::fs::write(
            root.join(crate::model::snapshot::temp_name("zero")),
            b"partial",
        )
        .unwrap();
        let all = PathFilter::all();
        let s = scan_local_dir(root, "", &all, &LedgerView::new());
        let keys: Vec<&str> = s.snapshot.keys().map(String::as_str).collect();
        assert_eq!(keys, ["a b", "empty", "zero"]);
        assert!(s.snapshot["a b"].is_dir());
        assert_eq!(s.temps, [crate::model::snapshot::temp_name("zero")]);
        assert!(s.unreadable.is_empty());

        let s = scan_local_dir(root, "a b/ünï", &all, &LedgerView::new());
        let f = &s.snapshot["a b/ünï/f.txt"];
        assert_eq!(f.hash, Some(blake3::hash(b"hello")));
        assert_eq!(s.hashed, 1);
        let meta = std::fs::metadata(root.join("a b/ünï/f.txt")).unwrap();
        let id = FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        assert_eq!(
            f.id,
            Some(id),
            "the upload checks the file it opens against it"
        );

        let mut ledger = LedgerView::new();
        ledger.insert(
            "a b/ünï/f.txt".into(),
            SyncedEntry {
                size: 5,
                mtime: f.mtime,
                hash: blake3::hash(b"remembered"),
                remote_size: 5,
                remote_mtime: None,
            },
        );
        let s = scan_local_dir(root, "a b/ünï", &all, &ledger);
        assert_eq!(s.hashed, 0, "unchanged size+mtime reuses the ledger's hash");
        assert_eq!(
            s.snapshot["a b/ünï/f.txt"].hash,
            Some(blake3::hash(b"remembered"))
        );

        let s = scan_local_dir(root, "gone", &all, &LedgerView::new());
        assert_eq!(
            s.unreadable,
            ["gone"],
            "an unreadable directory is unknown, not empty"
        );
        assert_eq!(s.failures.len(), 1);
    }

    #[test]
    fn a_settled_file_without_a_record_is_left_for_the_transfer_to_hash() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("old.csv"), b"settled").unwrap();
        std::fs::write(root.join("new.csv"), b"just written").unwrap();
        let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(root.join("old.csv"))
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap();
        let s = scan_local_dir(root, "", &PathFilter::all(), &LedgerView::new());
        assert_eq!(s.snapshot["old.csv"].hash, None, "hashed before it is sent");
        assert_eq!(s.snapshot["old.csv"].size, 7);
        assert_eq!(
            s.snapshot["new.csv"].hash,
            Some(blake3::hash(b"just written")),
            "a file written moments ago may still change: its content is kept"
        );
        assert_eq!(s.hashed, 1);
    }

    #[test]
    fn a_scoped_local_scan_reads_only_the_roots_and_their_subtrees() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for p in [
            "d/a.csv",
            "d/b.csv",
            "new/x/y.csv",
            "skip/in.csv",
            "other/o.csv",
        ] {
            std::fs::create_dir_all(root.join(p).parent().unwrap()).unwrap();
            std::fs::write(root.join(p), p).unwrap();
        }
        std::fs::write(
            root.join("d")
                .join(crate::model::snapshot::temp_name("a.csv")),
            b"part",
        )
        .unwrap();
        let filter = crate::config::PathFilter::new(&[], &["skip".into()]).unwrap();
        let scope = Scope::of_changed([
            "d/a.csv",
            "new",
            "gone.csv",
            "skip/in.csv",
            "d/.a.csv.ferrysync-part",
            "other/o.csv/under-a-file",
        ])
        .unwrap();
        let s = scan_local_scope(root, &scope, &filter, &LedgerView::new()).unwrap();
        let keys: Vec<&str> = s.snapshot.keys().map(String::as_str).collect();
        // Not d/b.csv or other/ (outside), not skip/ (excluded), nothing for what is gone or
        // lies under a file.
        assert_eq!(keys, ["d/a.csv", "new", "new/x", "new/x/y.csv"]);
        assert!(s.failures.is_empty(), "{:?}", s.failures);
        assert_eq!(s.hashed, 2);
    }

    #[test]
    fn the_look_for_a_local_file_sees_what_the_scan_takes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let none = PathFilter::new(&[], &[]).unwrap();
        // An empty folder (an unmounted mount point), then empty directories only.
        assert!(!local_has_file(root, &none));
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        assert!(!local_has_file(root, &none));
        // A transfer's temporary file, a symbolic link and an excluded file are not the job's.
        std::fs::write(root.join("a/.x.ferrysync-part"), b"x").unwrap();
        std::fs::write(root.join("a/b/skip.tmp"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("link")).unwrap();
        let filter = PathFilter::new(&[], &["**/*.tmp".into()]).unwrap();
        assert!(!local_has_file(root, &filter));
        assert!(local_has_file(root, &none));
        let csv = PathFilter::new(&["**/*.csv".into()], &[]).unwrap();
        assert!(!local_has_file(root, &csv));
        std::fs::write(root.join("a/b/x.csv"), b"x").unwrap();
        assert!(local_has_file(root, &csv));
        assert!(!local_has_file(&root.join("missing"), &none));
    }

    #[test]
    fn remote_paths_join_under_the_root() {
        assert_eq!(remote_path("/", "a/b"), "/a/b");
        assert_eq!(remote_path("/in", "a"), "/in/a");
        assert_eq!(remote_path("/in", ""), "/in");
    }
}
