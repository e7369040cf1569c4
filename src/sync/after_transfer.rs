//! `after_transfer: delete | archive`: the source side's step after the transfers. Each source
//! to move was journaled (`source_intents`) in the transaction that recorded its transfer
//! ([`intents_for`], called by the coordinator's commit), so a crash between "transferred" and
//! "archived" leaves the intent, and the next run completes it here. Before acting, the source
//! is observed again and must still be the file that was delivered (`model::after::due`);
//! otherwise it is kept (and a changed one is sent again by the plan). Then a rename into the
//! archive (rename(2) beneath the local root, no link followed, never over an existing name;
//! RNFR/RNTO on the server after a listing of the archive folder) or a delete, and the audit
//! row with the intent dropped, in one transaction. Last, the retention of a local archive.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use chrono::Datelike;

use crate::config::{Job, PathFilter};
use crate::model::after::{self, AfterTransfer, Due, Observed, SourceIntent};
use crate::model::paths::{remote_path, split_parent};
use crate::model::plan::{LedgerView, SyncedEntry};
use crate::model::policy::Direction;
use crate::remote::listing::{self, ListedKind};
use crate::remote::session::Session;
use crate::state::audit::{AuditAction, AuditEvent};
use crate::state::ledger::PathFailure;
use crate::state::SharedLedger;
use crate::sync::report::RunReport;
use crate::sync::scan::{list_remote_dir, ListTimes, Scan};
use crate::sync::transfer::beneath::Dir;
use crate::sync::transfer::Transferred;

/// Test hook: set to 1, the process kills itself (SIGKILL) right before the first journaled
/// source is acted on, so the tests can show that the next run completes the step.
pub const KILL_BEFORE_AFTER_TRANSFER: &str = "FERRYSYNC_TEST_KILL_BEFORE_AFTER_TRANSFER";

/// The intents to journal with the commit of `done` (empty for `after_transfer: keep`): each
/// source as it was sent, and for an archive the folder, the template expanded with today's
/// date in the job's time zone.
pub(crate) fn intents_for(job: &Job, done: &[(String, Transferred)]) -> Vec<SourceIntent> {
    let action = job.after.action;
    if action == AfterTransfer::Keep {
        return Vec::new();
    }
    let archive_dir = job.after.archive_to.as_ref().map(|t| {
        let now = chrono::Utc::now();
        let date = match job.timezone {
            Some(tz) => {
                let d = now.with_timezone(&tz);
                (d.year(), d.month(), d.day())
            }
            None => {
                let d = now.with_timezone(&chrono::Local);
                (d.year(), d.month(), d.day())
            }
        };
        t.expand(date, &job.name)
    });
    done.iter()
        .filter_map(|(path, t)| {
            let (size, mtime, hash) = match job.direction {
                Direction::Push => (t.entry.size, t.entry.mtime, Some(t.entry.hash)),
                // Without the server's time the source could not be checked again: kept.
                Direction::Pull => (t.entry.remote_size, t.entry.remote_mtime?, None),
            };
            Some(SourceIntent {
                path: path.clone(),
                action,
                archive_dir: archive_dir.clone(),
                size,
                mtime,
                hash,
            })
        })
        .collect()
}

/// What became of one journaled source.
enum Outcome {
    /// Archived under this path (relative to the source root, or absolute), with the server's
    /// reply for a remote one.
    Archived(String, Option<String>),
    Deleted(Option<String>),
    Changed(String),
    Gone,
    Failed(String),
}

/// Completes the journaled sources of `job` (this run's and any a crash left), then applies
/// the local archive's retention. `session`: the run's connection, for a pull's remote sources.
pub(crate) async fn complete(
    job: &Job,
    ledger: &SharedLedger,
    session: Option<&mut Session>,
    report: &mut RunReport,
) {
    if !job.after.moves_sources() {
        return;
    }
    let intents = match ledger.lock().source_intents(&job.name) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(job = %job.name, "cannot read the sources to move: {e}");
            return;
        }
    };
    if !intents.is_empty() && std::env::var(KILL_BEFORE_AFTER_TRANSFER).as_deref() == Ok("1") {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
    let outcomes = match job.direction {
        Direction::Push => {
            let root = job.local.clone();
            let base = job
                .after
                .archive_to
                .as_ref()
                .filter(|t| t.is_absolute())
                .map(|t| t.fixed_prefix().to_string());
            let todo = intents.clone();
            tokio::task::spawn_blocking(move || {
                todo.iter()
                    .map(|i| complete_local(&root, base.as_deref(), i))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_else(|e| {
                intents
                    .iter()
                    .map(|_| Outcome::Failed(format!("the archive step panicked: {e}")))
                    .collect()
            })
        }
        Direction::Pull => match session {
            Some(s) => complete_remote(job, s, &intents).await,
            // Every connection was lost: the intents wait for the next run.
            None => return,
        },
    };
    for (intent, outcome) in intents.iter().zip(outcomes) {
        record(job, ledger, intent, outcome, report);
    }
    if let Some(retention) = job.after.retention {
        prune_local_archive(job, retention).await;
    }
}

/// Records what became of `intent`: the audit row and the intent dropped together, or the
/// intent dropped with a log line (changed, gone), or a failed path (the intent stays).
fn record(
    job: &Job,
    ledger: &SharedLedger,
    intent: &SourceIntent,
    outcome: Outcome,
    report: &mut RunReport,
) {
    let path = intent.path.as_str();
    let l = ledger.lock();
    let event = |action, reply| AuditEvent {
        path,
        action,
        bytes: intent.size,
        blake3: intent.hash,
        reply,
    };
    let written = match &outcome {
        Outcome::Archived(to, reply) => {
            let text = match reply {
                Some(r) => format!("archived to {to}: {r}"),
                None => format!("archived to {to}"),
            };
            let done = l.commit_source_done(&job.name, &event(AuditAction::Archived, Some(&text)));
            if done.is_ok() {
                report.counts.files_archived += 1;
                tracing::info!(job = %job.name, path = %path, action = "archived", to = %to, "archived");
            }
            done
        }
        Outcome::Deleted(reply) => {
            let done = l.commit_source_done(
                &job.name,
                &event(AuditAction::SourceDeleted, reply.as_deref()),
            );
            if done.is_ok() {
                report.counts.files_source_deleted += 1;
                tracing::info!(job = %job.name, path = %path, action = "source_deleted", "source deleted");
            }
            done
        }
        Outcome::Changed(why) => {
            tracing::info!(job = %job.name, path = %path, "kept, not {}: {why}; it is sent again", past(intent.action));
            l.drop_source_intent(&job.name, path)
        }
        Outcome::Gone => {
            tracing::info!(job = %job.name, path = %path, "no longer there to be {}", past(intent.action));
            l.drop_source_intent(&job.name, path)
        }
        Outcome::Failed(error) => {
            report.failures.push(PathFailure {
                path: path.to_string(),
                error: format!(
                    "not {} (tried again next run): {error}",
                    past(intent.action)
                ),
            });
            Ok(())
        }
    };
    if let Err(e) = written {
        report.failures.push(PathFailure {
            path: path.to_string(),
            error: e.to_string(),
        });
    }
}

/// The folder `sub` (relative, `""` for none) below the archive folder `dir`.
fn below(dir: &str, sub: &str) -> String {
    if sub.is_empty() {
        dir.to_string()
    } else {
        format!("{dir}/{sub}")
    }
}

fn past(action: AfterTransfer) -> &'static str {
    match action {
        AfterTransfer::Archive => "archived",
        _ => "deleted",
    }
}

/// A push's source: checked and moved beneath the local root, through no link.
fn complete_local(root: &Path, base: Option<&str>, intent: &SourceIntent) -> Outcome {
    let (parent, name) = match Dir::parent_of(root, &intent.path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Outcome::Gone,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let observed = match observe_local(&parent, name) {
        Ok(o) => o,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    match after::due(intent, observed.as_ref()) {
        Due::Act => {}
        Due::Changed(why) => return Outcome::Changed(why),
        Due::Gone => return Outcome::Gone,
    }
    match (intent.action, intent.archive_dir.as_deref()) {
        (AfterTransfer::Archive, Some(dir)) => {
            // A file in a subfolder keeps its place below the archive folder.
            let dir = below(dir, split_parent(&intent.path).0);
            match archive_local(root, base, &parent, name, &dir) {
                Ok(to) => Outcome::Archived(to, None),
                Err(e) => Outcome::Failed(format!("cannot move it into {dir}: {e}")),
            }
        }
        (AfterTransfer::Delete, _) => match parent.remove_file(name).and_then(|()| parent.sync()) {
            Ok(()) => Outcome::Deleted(None),
            Err(e) => Outcome::Failed(format!("cannot delete it: {e}")),
        },
        _ => Outcome::Failed("no archive folder was recorded".into()),
    }
}

/// The local source `name` now: size, mtime and BLAKE3 of its bytes (`None`: not there).
fn observe_local(parent: &Dir, name: &str) -> std::io::Result<Option<Observed>> {
    let mut file = match parent.open_file(name) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Ok(Some(Observed {
        size: meta.len(),
        mtime,
        hash: Some(hasher.finalize()),
    }))
}

/// Opens (creating where missing, through no link) the archive folder `dir`: relative to the
/// job's root, or absolute, where `base` (the template's fixed part, from the trusted job
/// file) is made as the administrator wrote it and no link below it is followed.
fn open_archive_dir(root: &Path, base: Option<&str>, dir: &str) -> std::io::Result<Dir> {
    if !dir.starts_with('/') {
        return Dir::make_all(root, dir);
    }
    let (base, rest) = match base.and_then(|b| Some((b, dir.strip_prefix(b)?))) {
        Some((b, rest)) if rest.is_empty() || rest.starts_with('/') => {
            (b, rest.trim_start_matches('/'))
        }
        // The job file changed since the intent was written: its folder as recorded.
        _ => (dir, ""),
    };
    std::fs::create_dir_all(base)?;
    Dir::make_all(Path::new(base), rest)
}

/// Moves `name` from `parent` into the archive folder `dir` under the first free name
/// (`report.csv`, `report.1.csv`, ...); returns where it went.
fn archive_local(
    root: &Path,
    base: Option<&str>,
    parent: &Dir,
    name: &str,
    dir: &str,
) -> std::io::Result<String> {
    let archive = open_archive_dir(root, base, dir)?;
    for n in 0..10_000 {
        let candidate = after::unique_name(name, n);
        if parent.move_no_replace(name, &archive, &candidate)? {
            archive.sync()?;
            parent.sync()?;
            return Ok(format!("{dir}/{candidate}"));
        }
    }
    Err(std::io::Error::other(format!(
        "{dir} already holds 10000 files named like {name}"
    )))
}

/// A pull's sources: each parent folder listed once (the size and time of each source, as the
/// run's scan would see them), then a delete or RNFR/RNTO into the archive folder, which is
/// created where missing and listed once so that no name in it is replaced.
async fn complete_remote(
    job: &Job,
    session: &mut Session,
    intents: &[SourceIntent],
) -> Vec<Outcome> {
    let root = job.remote.path.as_str();
    // The ledger view the listing settles LIST times against: the times of the intents.
    let recorded: LedgerView = intents
        .iter()
        .map(|i| {
            (
                i.path.clone(),
                SyncedEntry {
                    size: i.size,
                    mtime: i.mtime,
                    hash: blake3::Hash::from_bytes([0; 32]),
                    remote_size: i.size,
                    remote_mtime: Some(i.mtime),
                },
            )
        })
        .collect();
    let mut by_parent: BTreeMap<&str, HashSet<&str>> = BTreeMap::new();
    for i in intents {
        let (parent, name) = split_parent(&i.path);
        by_parent.entry(parent).or_default().insert(name);
    }
    let mut scan = Scan::default();
    let mut listing_errors: HashMap<&str, String> = HashMap::new();
    let mut times = ListTimes::new(job.remote.list_time_offset);
    for (parent, names) in &by_parent {
        let listed = list_remote_dir(
            session,
            root,
            parent,
            &PathFilter::all(),
            |n| names.contains(n),
            &recorded,
            &mut scan,
            &mut times,
        )
        .await;
        if let Err(e) = listed {
            listing_errors.insert(parent, e.to_string());
        }
    }
    times.finish(&mut scan);
    let mut archive_names: HashMap<String, HashSet<String>> = HashMap::new();
    let mut out = Vec::with_capacity(intents.len());
    for i in intents {
        let (parent, name) = split_parent(&i.path);
        if let Some(e) = listing_errors.get(parent) {
            out.push(Outcome::Failed(format!("cannot list its folder: {e}")));
            continue;
        }
        let observed = scan.snapshot.get(&i.path).map(|e| Observed {
            size: e.size,
            mtime: e.mtime,
            hash: None,
        });
        match after::due(i, observed.as_ref()) {
            Due::Act => {}
            Due::Changed(why) => {
                out.push(Outcome::Changed(why));
                continue;
            }
            Due::Gone => {
                out.push(Outcome::Gone);
                continue;
            }
        }
        let from = remote_path(root, &i.path);
        let outcome = match (i.action, i.archive_dir.as_deref()) {
            (AfterTransfer::Delete, _) => match session.delete_file_replied(&from).await {
                Ok(reply) => Outcome::Deleted(Some(reply)),
                Err(e) => Outcome::Failed(format!("cannot delete it: {e}")),
            },
            (AfterTransfer::Archive, Some(dir)) => {
                let dir = below(dir, parent);
                let abs_dir = if dir.starts_with('/') {
                    dir
                } else {
                    remote_path(root, &dir)
                };
                match archive_remote(session, &mut archive_names, &abs_dir, name, &from).await {
                    Ok((to, reply)) => Outcome::Archived(to, Some(reply)),
                    Err(e) => Outcome::Failed(format!("cannot move it into {abs_dir}: {e}")),
                }
            }
            _ => Outcome::Failed("no archive folder was recorded".into()),
        };
        out.push(outcome);
    }
    out
}

/// RNFR/RNTO of `from` into `dir` (absolute) under the first name the folder does not hold.
/// A server's RNTO replaces an existing file (vsftpd's rename(2) does), so the folder is
/// listed first (once per run) and the names given out are remembered.
async fn archive_remote(
    session: &mut Session,
    known: &mut HashMap<String, HashSet<String>>,
    dir: &str,
    name: &str,
    from: &str,
) -> Result<(String, String), crate::remote::FtpsError> {
    if !known.contains_key(dir) {
        let names = match session.list_dir_if_there(dir).await {
            Ok(listing) => listing_names(&listing),
            Err(_) => {
                // Not there yet: made, parents first (an existing one answers 550).
                let mut prefix = String::new();
                for part in dir.split('/').filter(|p| !p.is_empty()) {
                    prefix.push('/');
                    prefix.push_str(part);
                    let _ = session.mkdir(&prefix).await;
                }
                listing_names(&session.list_dir(dir).await?)
            }
        };
        known.insert(dir.to_string(), names);
    }
    let taken = known.entry(dir.to_string()).or_default();
    let free = after::free_name(name, |n| taken.contains(n));
    let to = format!("{}/{free}", dir.trim_end_matches('/'));
    let reply = session.rename_replied(from, &to).await?;
    taken.insert(free);
    Ok((to, reply))
}

fn listing_names((lines, mlsd): &(Vec<String>, bool)) -> HashSet<String> {
    lines
        .iter()
        .filter_map(|l| listing::parse_line(l, *mlsd))
        .filter(|e| !(e.kind == ListedKind::Dir && (e.name == "." || e.name == "..")))
        .map(|e| e.name)
        .collect()
}

/// `archive_retention:`: removes the regular files of the local archive that entered it
/// longer ago than `retention` (their inode change time, which the rename into the archive
/// sets; a file's own mtime may be years old), then the folders that this left empty. Only
/// beneath the archive's fixed folder, and no link is followed or removed.
async fn prune_local_archive(job: &Job, retention: std::time::Duration) {
    let Some(template) = job.after.archive_to.clone() else {
        return;
    };
    let (base, rel): (PathBuf, String) = match template.fixed_root() {
        Some(first) => (job.local.clone(), first.to_string()),
        None => (PathBuf::from(template.fixed_prefix()), String::new()),
    };
    let job_name = job.name.clone();
    let pruned = tokio::task::spawn_blocking(move || {
        let dir = match Dir::open(&base, &rel) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        prune_dir(&dir, crate::state::now_unix(), retention).map(|(n, _)| n)
    })
    .await;
    match pruned {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => {
            tracing::info!(job = %job_name, files = n, "removed archived files older than archive_retention")
        }
        Ok(Err(e)) => tracing::warn!(job = %job_name, "archive retention: {e}"),
        Err(e) => tracing::warn!(job = %job_name, "archive retention: {e}"),
    }
}

/// Prunes `dir` (see [`prune_local_archive`]); returns the files removed and whether `dir` is
/// left empty.
fn prune_dir(dir: &Dir, now: i64, retention: std::time::Duration) -> std::io::Result<(u64, bool)> {
    use rustix::fs::FileType;
    let mut removed = 0;
    let mut left = 0;
    for (name, st) in dir.entries()? {
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile if after::expired(st.st_ctime, now, retention) => {
                dir.remove_file(&name)?;
                removed += 1;
            }
            FileType::Directory => {
                let child = dir.child(&name)?;
                let (n, empty) = prune_dir(&child, now, retention)?;
                removed += n;
                // Only a folder this pass emptied goes: a new, still empty one stays.
                if !(empty && n > 0 && dir.remove_dir(&name).is_ok()) {
                    left += 1;
                }
            }
            _ => left += 1,
        }
    }
    Ok((removed, left == 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Retention removes the archive's files past it (by when they entered the archive) and
    /// the folders that leaves empty; it follows no link and removes none, and leaves alone a
    /// folder that was empty already.
    #[test]
    fn retention_prunes_old_archived_files_and_follows_no_link() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("archive");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(archive.join("2026/01")).unwrap();
        std::fs::create_dir_all(archive.join("empty")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(archive.join("2026/01/a.csv"), b"a").unwrap();
        std::fs::write(archive.join("top.csv"), b"t").unwrap();
        std::fs::write(outside.join("secret"), b"s").unwrap();
        symlink(&outside, archive.join("linked")).unwrap();
        symlink(outside.join("secret"), archive.join("2026/file-link")).unwrap();
        let day = std::time::Duration::from_secs(86_400);
        let root = Dir::open(dir.path(), "archive").unwrap();
        let now = crate::state::now_unix();
        // Nothing is old yet.
        assert_eq!(prune_dir(&root, now, day).unwrap().0, 0);
        assert!(archive.join("top.csv").exists());
        // Two days on: the files go, the emptied folder goes, links and their targets stay.
        let (removed, _) = prune_dir(&root, now + 2 * 86_400, day).unwrap();
        assert_eq!(removed, 2);
        assert!(!archive.join("top.csv").exists());
        assert!(!archive.join("2026/01").exists(), "emptied folder removed");
        assert!(
            archive.join("empty").is_dir(),
            "a folder that was empty stays"
        );
        assert!(std::fs::symlink_metadata(archive.join("linked")).is_ok());
        assert!(std::fs::symlink_metadata(archive.join("2026/file-link")).is_ok());
        assert!(outside.join("secret").exists());
    }

    #[test]
    fn a_local_archive_never_replaces_a_name_and_keeps_subfolders() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::create_dir_all(root.join("archive/d")).unwrap();
        std::fs::write(root.join("d/r.csv"), b"new").unwrap();
        std::fs::write(root.join("archive/d/r.csv"), b"old").unwrap();
        let intent = SourceIntent {
            path: "d/r.csv".into(),
            action: AfterTransfer::Archive,
            archive_dir: Some("archive".into()),
            size: 3,
            mtime: 0,
            hash: Some(blake3::hash(b"new")),
        };
        match complete_local(root, None, &intent) {
            Outcome::Archived(to, _) => assert_eq!(to, "archive/d/r.1.csv"),
            _ => panic!("not archived"),
        }
        assert_eq!(std::fs::read(root.join("archive/d/r.csv")).unwrap(), b"old");
        assert_eq!(
            std::fs::read(root.join("archive/d/r.1.csv")).unwrap(),
            b"new"
        );
        assert!(!root.join("d/r.csv").exists());
        // A source that changed is kept.
        std::fs::write(root.join("d/r.csv"), b"other").unwrap();
        let changed = SourceIntent { size: 5, ..intent };
        assert!(matches!(
            complete_local(root, None, &changed),
            Outcome::Changed(_)
        ));
        assert!(root.join("d/r.csv").exists());
    }
}
