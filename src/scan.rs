//! Scans: what the local tree and the remote tree hold now, as [`Snapshot`]s.
//!
//! The local scan hashes a file only where the plan compares content (see
//! [`crate::plan::local_hash`]): a file whose size and mtime are the ledger's keeps the recorded
//! hash, and a new or resized file is hashed by its transfer, in the same read that sends it;
//! the remote scan lists directories (MLSD where offered, LIST otherwise) and refuses names that
//! could escape the job's directory before they ever reach a local path.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::{ListTimeOffset, PathFilter, Remote};
use crate::ftps::{FtpsError, Session};
use crate::ledger::PathFailure;
use crate::listing::{self, ListedKind, Precision};
use crate::plan::{local_hash, LedgerView, LocalHash};
use crate::scope::{self, Scope};
use crate::snapshot::{self, check_remote_name, is_temp_name, Entry, Kind, Snapshot};
use crate::tls::TlsContext;

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
}

pub fn system_time_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

/// The local path of a relative `/`-separated path.
pub fn local_path(root: &Path, rel: &str) -> PathBuf {
    let mut p = root.to_path_buf();
    for part in rel.split('/') {
        p.push(part);
    }
    p
}

/// The absolute remote path of a relative path under the job's remote directory.
pub fn remote_path(root: &str, rel: &str) -> String {
    match (root, rel) {
        (_, "") => root.to_string(),
        ("/", _) => format!("/{rel}"),
        _ => format!("{root}/{rel}"),
    }
}

/// BLAKE3 of a whole file.
pub fn hash_file(path: &Path) -> std::io::Result<blake3::Hash> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize())
}

/// Walks the local tree under `root` (blocking; run it on a blocking thread).
pub fn scan_local(root: &Path, filter: &PathFilter, ledger: &LedgerView) -> std::io::Result<Scan> {
    let mut scan = Scan::default();
    // The root itself must be readable: anything else is a failure of the whole run.
    std::fs::read_dir(root)?;
    let rules = LocalRules::new(filter, ledger);
    walk_local(root, vec![String::new()], &rules, &mut scan);
    if filter.has_includes() {
        prune_dirs(&mut scan.snapshot);
    }
    Ok(scan)
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
        let (_, name) = scope::split_parent(rel);
        // Inside an excluded directory, or a transfer's temporary file: a full scan never
        // looks there either.
        if is_temp_name(name) || scope::ancestors(rel).any(|a| filter.excludes(a)) {
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

/// What decides how the local scan takes in a path: the job's filter, the ledger's records
/// (for the hashes they spare) and the scan's clock (see [`crate::plan::local_hash`]).
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
        let abs_dir = local_path(root, &rel_dir);
        let entries = match std::fs::read_dir(&abs_dir) {
            Ok(rd) => rd,
            Err(e) => {
                scan.failures.push(PathFailure {
                    path: rel_dir.clone(),
                    error: format!("cannot read local directory {}: {e}", abs_dir.display()),
                });
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    scan.failures.push(PathFailure {
                        path: rel_dir.clone(),
                        error: format!("cannot read local directory {}: {e}", abs_dir.display()),
                    });
                    continue;
                }
            };
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                scan.failures.push(PathFailure {
                    path: snapshot::join(&rel_dir, &entry.file_name().to_string_lossy()),
                    error: "the name is not valid UTF-8 and cannot be sent to an FTP server".into(),
                });
                continue;
            };
            let rel = snapshot::join(&rel_dir, &name);
            if is_temp_name(&name) {
                scan.temps.push(rel);
                continue;
            }
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) => {
                    scan.failures.push(PathFailure {
                        path: rel,
                        error: format!("cannot stat: {e}"),
                    });
                    continue;
                }
            };
            add_local(rel, &meta, &entry.path(), rules, scan, &mut dirs);
        }
    }
}

/// Adds one local file or directory (not followed if a link) to `scan`; a directory is also
/// pushed onto `dirs` to be walked. A file is hashed only where [`crate::plan::local_hash`]
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
                        path: rel,
                        error: format!("cannot read: {e}"),
                    });
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

/// Where more connections for a listing come from: the job's server, at most `max` in all,
/// and what the first one cost to open.
pub struct MoreConnections<'a> {
    pub remote: &'a Remote,
    pub tls: &'a TlsContext,
    pub max: usize,
    pub connect_time: Duration,
}

/// Whether listing `waiting` directories, at `per_dir` each on one connection, is worth opening
/// more connections that cost `connect_time` each (opened side by side). On loopback a listing
/// takes a few ms and a login tens of ms, so a 20-directory tree is listed faster alone
/// (measured: 0.14 s alone, 0.25 s with three more connections); over a WAN link a listing is
/// several round trips and the same tree gains.
fn worth_more_connections(waiting: usize, per_dir: Duration, connect_time: Duration) -> bool {
    waiting >= 2
        && per_dir.saturating_mul(u32::try_from(waiting).unwrap_or(u32::MAX)) > connect_time * 4
}

/// Lists the remote tree under `root` (an absolute path), breadth first. `LIST` times are put
/// in UTC and settled against the ledger (see [`RemoteTimes`]).
///
/// A wide tree is listed on several connections at once: one listing is a round trip and a
/// data connection per directory, so at 100,000 files in 1,000 directories one connection
/// spends seconds waiting. When the directories waiting would take long enough alone (see
/// [`worth_more_connections`]), up to `more.max` connections list them, level by level; they
/// are left in `spare` for the transfers.
pub async fn scan_remote(
    session: &mut Session,
    spare: &mut Vec<Session>,
    more: Option<MoreConnections<'_>>,
    root: &str,
    filter: &PathFilter,
    ledger: &LedgerView,
    offset: ListTimeOffset,
) -> Result<Scan, FtpsError> {
    let mut parts = vec![(Scan::default(), RemoteTimes::new(ledger, offset))];
    let started = Instant::now();
    let mut level = {
        let (scan, times) = &mut parts[0];
        match list_remote_dir(session, root, "", filter, |_| true, scan, times).await {
            Ok(subdirs) => subdirs,
            Err(e) if matches!(e.code(), Some(550)) => {
                scan.root_missing = true;
                return Ok(std::mem::take(scan));
            }
            Err(e) => return Err(e),
        }
    };
    // What one directory takes to list on one connection, from the last level listed alone.
    let mut per_dir = started.elapsed();
    let mut more = more;
    while !level.is_empty() {
        if more
            .as_ref()
            .is_some_and(|m| worth_more_connections(level.len(), per_dir, m.connect_time))
        {
            if let Some(m) = more.take() {
                let wanted = m.max.saturating_sub(1 + spare.len()).min(level.len() - 1);
                tracing::debug!(
                    waiting = level.len(),
                    per_dir_ms = per_dir.as_millis() as u64,
                    connect_ms = m.connect_time.as_millis() as u64,
                    "listing on {wanted} more connections"
                );
                let opened = futures_util::future::join_all(
                    (0..wanted).map(|_| Session::connect(m.remote, m.tls)),
                )
                .await;
                for s in opened {
                    match s {
                        Ok(s) => spare.push(s),
                        // Too many connections, say: list on the ones there are.
                        Err(e) => tracing::debug!("no extra connection for the listing: {e}"),
                    }
                }
            }
        }
        let alone = spare.is_empty();
        let sessions: Vec<&mut Session> = std::iter::once(&mut *session)
            .chain(spare.iter_mut())
            .collect();
        while parts.len() < sessions.len() {
            parts.push((Scan::default(), RemoteTimes::new(ledger, offset)));
        }
        let (level_started, level_len) = (Instant::now(), level.len());
        let queue = std::sync::Mutex::new(std::mem::take(&mut level).into_iter());
        let next_dir = || queue.lock().ok().and_then(|mut q| q.next());
        let listed =
            futures_util::future::join_all(sessions.into_iter().zip(parts.iter_mut()).map(
                |(session, (scan, times))| async {
                    let mut subdirs = Vec::new();
                    while let Some(dir) = next_dir() {
                        subdirs.extend(
                            list_remote_dir(session, root, &dir, filter, |_| true, scan, times)
                                .await?,
                        );
                    }
                    Ok::<_, FtpsError>(subdirs)
                },
            ))
            .await;
        for subdirs in listed {
            level.extend(subdirs?);
        }
        if alone {
            per_dir = level_started.elapsed() / u32::try_from(level_len).unwrap_or(u32::MAX);
        }
    }
    let mut scan = Scan::default();
    for (mut part, times) in parts {
        times.finish(&mut part);
        scan.snapshot.append(&mut part.snapshot);
        scan.failures.append(&mut part.failures);
        scan.temps.append(&mut part.temps);
    }
    if filter.has_includes() {
        prune_dirs(&mut scan.snapshot);
    }
    Ok(scan)
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
        if scope::ancestors(rel).any(|a| filter.excludes(a)) {
            continue;
        }
        let (parent, name) = scope::split_parent(rel);
        by_parent.entry(parent).or_default().insert(name);
    }
    let mut scan = Scan::default();
    let mut times = RemoteTimes::new(ledger, offset);
    for (parent, names) in by_parent {
        let wanted = |name: &str| names.contains(snapshot::temp_owner(name).unwrap_or(name));
        let mut queue =
            match list_remote_dir(session, root, parent, filter, wanted, &mut scan, &mut times)
                .await
            {
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
async fn list_remote_dir(
    session: &mut Session,
    root: &str,
    rel_dir: &str,
    filter: &PathFilter,
    wanted: impl Fn(&str) -> bool,
    scan: &mut Scan,
    times: &mut RemoteTimes<'_>,
) -> Result<Vec<String>, FtpsError> {
    let abs = remote_path(root, rel_dir);
    let (lines, mlsd) = session.list_dir(&abs).await?;
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
                path: snapshot::join(rel_dir, &name.escape_debug().to_string()),
                error: e.to_string(),
            });
            continue;
        }
        let rel = snapshot::join(rel_dir, &name);
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
                if !filter.includes_file(&rel) {
                    continue;
                }
                let mtime = times
                    .settle(session, root, &rel, file.mtime, file.precision)
                    .await;
                scan.snapshot.insert(
                    rel,
                    Entry {
                        kind: Kind::File,
                        size: file.size,
                        mtime,
                        hash: None,
                    },
                );
            }
        }
    }
    Ok(subdirs)
}

/// Puts `LIST` times in UTC and, where they agree with the ledger's record at the listing's
/// precision, replaces them by the recorded time (see [`listing::settle_time`]), as the
/// listing goes: the offset is learnt from the first minute-precise file (one MDTM), and only
/// the files listed before that one wait for it. (Remembering every imprecise file until the
/// end cost 64 MB at a million files.)
struct RemoteTimes<'a> {
    ledger: &'a LedgerView,
    /// Seconds east of UTC, once known.
    offset: Option<i64>,
    /// Imprecise files listed before the offset was known.
    pending: Vec<(String, Precision)>,
}

impl<'a> RemoteTimes<'a> {
    fn new(ledger: &'a LedgerView, offset: ListTimeOffset) -> Self {
        RemoteTimes {
            ledger,
            offset: match offset {
                ListTimeOffset::Fixed(secs) => Some(secs),
                ListTimeOffset::Auto => None,
            },
            pending: Vec::new(),
        }
    }

    /// The time to record for a file listed at `listed` with `precision`.
    async fn settle(
        &mut self,
        session: &mut Session,
        root: &str,
        rel: &str,
        listed: i64,
        precision: Precision,
    ) -> i64 {
        if precision == Precision::Exact {
            return listed;
        }
        if self.offset.is_none() && precision == Precision::Minute {
            self.offset = Some(detect_list_offset(session, root, rel, listed).await);
        }
        match self.offset {
            Some(offset) => self.settled(rel, listed, precision, offset),
            None => {
                self.pending.push((rel.to_string(), precision));
                listed
            }
        }
    }

    fn settled(&self, rel: &str, listed: i64, precision: Precision, offset: i64) -> i64 {
        let recorded = self.ledger.get(rel).and_then(|e| e.remote_mtime);
        listing::settle_time(listing::apply_offset(listed, offset), precision, recorded)
    }

    /// Settles the files that waited for an offset (UTC when no file was minute-precise).
    fn finish(self, scan: &mut Scan) {
        let offset = self.offset.unwrap_or(0);
        for (rel, precision) in &self.pending {
            if let Some(e) = scan.snapshot.get_mut(rel) {
                e.mtime = self.settled(rel, e.mtime, *precision, offset);
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
    use crate::plan::SyncedEntry;

    #[test]
    fn local_scan_finds_files_dirs_and_reuses_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a b/ünï")).unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::write(root.join("a b/ünï/f.txt"), b"hello").unwrap();
        std::fs::write(root.join("zero"), b"").unwrap();
        std::fs::write(root.join(snapshot::temp_name("zero")), b"partial").unwrap();
        let s = scan_local(root, &PathFilter::all(), &LedgerView::new()).unwrap();
        let keys: Vec<&str> = s.snapshot.keys().map(String::as_str).collect();
        assert_eq!(keys, ["a b", "a b/ünï", "a b/ünï/f.txt", "empty", "zero"]);
        assert_eq!(s.hashed, 2);
        let f = &s.snapshot["a b/ünï/f.txt"];
        assert_eq!(f.hash, Some(blake3::hash(b"hello")));

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
        let s = scan_local(root, &PathFilter::all(), &ledger).unwrap();
        assert_eq!(s.hashed, 1, "unchanged size+mtime reuses the ledger's hash");
        assert_eq!(
            s.snapshot["a b/ünï/f.txt"].hash,
            Some(blake3::hash(b"remembered"))
        );
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
        let s = scan_local(root, &PathFilter::all(), &LedgerView::new()).unwrap();
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
        std::fs::write(root.join("d").join(snapshot::temp_name("a.csv")), b"part").unwrap();
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

    #[test]
    fn remote_paths_join_under_the_root() {
        assert_eq!(remote_path("/", "a/b"), "/a/b");
        assert_eq!(remote_path("/in", "a"), "/in/a");
        assert_eq!(remote_path("/in", ""), "/in");
    }
}
