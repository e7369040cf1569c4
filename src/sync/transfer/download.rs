//! A download, step by step: the resume decision, the temporary file, streaming into it (or
//! keeping what arrived when that fails), the exact byte count, the exact mtime, and the commit
//! (mode of the file it replaces, fsync, rename into place, fsync of the directory).
//!
//! Every local path is reached beneath the job's folder without following links (see
//! [`super::beneath`]): the target's directory is opened once, and the temporary file is
//! created, reopened, renamed and removed relative to it.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::beneath::Dir;
use super::file_io::{resume_at, sha256_of, FileWriter, Written};
use super::{
    buffer_len, timed, ByteAccount, Checkpoints, Tally, TransferContext, TransferError, Transferred,
};
use crate::config::Job;
use crate::model::paths::{local_path, remote_path, split_parent};
use crate::model::plan::SyncedEntry;
use crate::model::policy::Direction;
use crate::model::snapshot::system_time_ns;
use crate::model::snapshot::{temp_name, temp_rel, Entry};
use crate::remote::listing::{self, Precision};
use crate::remote::session::{DataStream, Session};
use crate::state::ledger::JournalEntry;

/// Where the bytes of one download come from and go to.
struct DownloadPaths<'a> {
    rel: &'a str,
    /// The source, on the server.
    remote: String,
    /// The target, and the temporary file beside it the bytes are written to (for errors and
    /// logs: the files themselves are reached through their directory, see [`open_temp`]).
    final_path: std::path::PathBuf,
    temp_path: std::path::PathBuf,
    /// The temporary file relative to the job's local root (as the journal has it).
    temp: String,
    /// The names of the target and of its temporary file in their directory.
    name: String,
    temp_name: String,
}

impl<'a> DownloadPaths<'a> {
    fn new(job: &Job, rel: &'a str) -> Self {
        let temp = temp_rel(rel);
        let name = split_parent(rel).1.to_string();
        DownloadPaths {
            rel,
            remote: remote_path(&job.remote.path, rel),
            final_path: local_path(&job.local, rel),
            temp_path: local_path(&job.local, &temp),
            temp,
            temp_name: temp_name(&name),
            name,
        }
    }

    fn local_err(&self, action: &'static str, source: std::io::Error) -> TransferError {
        TransferError::Local {
            path: self.final_path.display().to_string(),
            action,
            source,
        }
    }
}

/// How the streaming loop of a download ended.
struct Received {
    /// Bytes that crossed the network in this attempt and belong to the file.
    bytes: u64,
    /// The network's error, if that ended the loop (a write error is in the writer's result).
    failed: Option<TransferError>,
    /// Stopped on request at a checkpoint.
    stopped: bool,
    /// The count of bytes against the expected length.
    account: ByteAccount,
}

/// Downloads `rel`; returns what the ledger must record once the caller commits it.
pub(crate) async fn download(
    session: &mut Session,
    ctx: &TransferContext<'_>,
    rel: &str,
    source: &Entry,
) -> Result<Transferred, TransferError> {
    let paths = DownloadPaths::new(ctx.job, rel);
    let journaled = journaled_offset(ctx, &paths, source)?;
    let (dir, offset, hasher, file) = open_temp(ctx.job, &paths, journaled).await?;
    if offset > 0 {
        tracing::info!(path = rel, offset, "resuming download");
        session.restart_at(&paths.remote, offset).await?;
    }

    let mut stream = match session.retrieve(&paths.remote).await {
        Ok(stream) => stream,
        Err(e) => {
            // A temporary file this attempt created holds nothing yet: a refused RETR (550, a
            // file gone since the listing) leaves no empty `.NAME.ferrysync-part` behind. A
            // resumed one keeps its bytes for the next attempt.
            if offset == 0 {
                if let Err(removed) = dir.remove_file(&paths.temp_name) {
                    tracing::debug!(
                        path = rel,
                        "cannot remove the empty temporary file: {removed}"
                    );
                }
            }
            return Err(e.into());
        }
    };
    let len = buffer_len(source.size.saturating_sub(offset));
    let mut writer = FileWriter::start(file, hasher, offset, len);
    let account = ByteAccount::new(source.size, offset);
    let received = receive(
        session,
        ctx,
        &paths,
        &mut stream,
        &mut writer,
        offset,
        account,
    )
    .await?;
    let written = writer
        .finish()
        .await
        .map_err(|e| paths.local_err("write", e))?;
    if let Tally::Over { expected } = received.account.tally() {
        drop(stream);
        discard(ctx, &paths, &dir).await;
        return Err(TransferError::Overrun {
            path: rel.to_string(),
            expected,
            offset,
        });
    }
    if received.failed.is_some() || received.stopped || written.error.is_some() {
        drop(stream);
        return Err(keep_what_arrived(ctx, &paths, written, received.failed).await);
    }
    session.finish("RETR", &paths.remote, stream).await?;
    let Written {
        file,
        hasher,
        len: total,
        error: _,
    } = written;
    check_complete(ctx, &paths, &file, total, source.size).await?;
    if offset > 0 {
        verify_resumed(session, ctx, &paths, &dir, &file).await?;
    }

    if !ctx.job.settle.is_zero() {
        if let Some(why) = changed_since_listing(session, &paths, source).await? {
            drop(file);
            discard(ctx, &paths, &dir).await;
            return Err(TransferError::StillChanging {
                path: rel.to_string(),
                why,
            });
        }
    }
    let remote_mtime = settle_mtime(session, &paths, source.mtime).await;
    let meta = put_in_place(&paths, dir, file, remote_mtime).await?;
    Ok(Transferred {
        entry: SyncedEntry {
            size: total,
            mtime: meta.modified().map(system_time_ns).unwrap_or(remote_mtime),
            hash: hasher.finalize(),
            remote_size: source.size,
            remote_mtime: Some(remote_mtime),
        },
        bytes_moved: received.bytes,
        // suppaftp's passive transfer stream does not hand back the 226 text.
        reply: None,
    })
}

/// The journal's part of the resume decision: the last checkpoint of this same transfer, or
/// `None` after journaling a fresh one. (What the temporary file still holds is the other
/// part, see [`open_temp`].)
fn journaled_offset(
    ctx: &TransferContext<'_>,
    paths: &DownloadPaths<'_>,
    source: &Entry,
) -> Result<Option<u64>, TransferError> {
    // Resume from the bytes both on disk and confirmed by the last checkpoint (the checkpoint
    // follows an fsync, so those bytes survive even a power cut).
    let journal = ctx.journal_entry(paths.rel, source.size)?;
    let kept = journal
        .filter(|j| {
            j.direction == Direction::Pull.to_string()
                && j.temp_name == paths.temp
                && j.size == source.size
                && j.mtime == source.mtime
        })
        .map(|j| j.offset);
    if kept.is_none() {
        ctx.journal_begin(&JournalEntry {
            path: paths.rel.to_string(),
            direction: Direction::Pull.to_string(),
            temp_name: paths.temp.clone(),
            size: source.size,
            mtime: source.mtime,
            hash: None,
            offset: 0,
        })?;
    }
    Ok(kept)
}

/// Opens the target's directory beneath the job's root (through no link) and, in it, the
/// temporary file: the journaled one, cut to the bytes both on disk and checkpointed, where it
/// is still the regular file ferrysync wrote (see [`Dir::reopen_own`]); otherwise a new one,
/// created exclusively after removing whatever held the name. Returns the directory, the
/// offset to resume from and the file positioned there, with the BLAKE3 state of the bytes
/// before it.
async fn open_temp(
    job: &Job,
    paths: &DownloadPaths<'_>,
    journaled: Option<u64>,
) -> Result<(Arc<Dir>, u64, blake3::Hasher, std::fs::File), TransferError> {
    let root = job.local.clone();
    let rel = paths.rel.to_string();
    let temp_name = paths.temp_name.clone();
    let opened = tokio::task::spawn_blocking(move || {
        let (dir, _) = Dir::parent_of(&root, &rel)?;
        if let Some(checkpoint) = journaled.filter(|&at| at > 0) {
            if let Some(file) = dir.reopen_own(&temp_name)? {
                let offset = file.metadata()?.len().min(checkpoint);
                if offset > 0 {
                    file.set_len(offset)?;
                    let (hasher, file) = resume_at(file, offset)?;
                    return Ok((Arc::new(dir), offset, hasher, file));
                }
            }
        }
        let file = dir.create_new(&temp_name)?;
        Ok((Arc::new(dir), 0, blake3::Hasher::new(), file))
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|opened| opened);
    opened.map_err(|e| paths.local_err("open the temporary file", e))
}

/// Streams the RETR into `writer`, with checkpoints of what an fsync made durable, until the
/// data connection ends, more than the expected bytes arrive (`account`), the network or a
/// write fails, or a stop is requested at a checkpoint. `offset` is where this attempt began.
async fn receive(
    session: &Session,
    ctx: &TransferContext<'_>,
    paths: &DownloadPaths<'_>,
    stream: &mut DataStream,
    writer: &mut FileWriter,
    offset: u64,
    mut account: ByteAccount,
) -> Result<Received, TransferError> {
    let mut received = 0u64;
    let mut checkpoints = Checkpoints::new(offset);
    // Why the loop ended early: the network's error (set by every pass, before any way out of
    // the loop), a write error (in the writer's result), a stop request, or too many bytes.
    let mut failed: Option<TransferError>;
    let mut stopped = false;
    loop {
        let mut buf = writer.buffer();
        let filled;
        (filled, failed) = fill(session, &paths.remote, stream, &mut buf, ctx.bandwidth).await;
        // Only the bytes before the expected end are the file's.
        let kept = account.take(filled);
        if kept > 0 {
            buf.truncate(kept);
            if !writer.write(buf).await {
                break; // the write failed: the writer's result says why
            }
            received += kept as u64;
            ctx.counter.add(kept as u64);
        }
        if account.overrun() || failed.is_some() || filled == 0 {
            break;
        }
        if checkpoints.due(offset + received) {
            writer.request_sync().await;
        }
        if let Some(durable) = writer.durable().map_err(|e| paths.local_err("sync", e))? {
            ctx.checkpoint(paths.rel, durable)?;
            if ctx.stop_requested() {
                stopped = true;
                break;
            }
        }
    }
    Ok(Received {
        bytes: received,
        failed,
        stopped,
        account,
    })
}

/// Fills `buf` from the data connection (fewer, larger hand-overs to the writer), with the
/// timeout on every single read; returns the bytes read and the error that ended it early.
/// Under a bandwidth limit each read takes at most the bucket's depth and waits for its turn
/// after it (the server's sends then wait on TCP's window).
async fn fill(
    session: &Session,
    remote: &str,
    stream: &mut DataStream,
    buf: &mut [u8],
    bandwidth: Option<&crate::sync::bandwidth::BandwidthLimiter>,
) -> (usize, Option<TransferError>) {
    let mut filled = 0;
    while filled < buf.len() {
        let end = match bandwidth {
            None => buf.len(),
            Some(limit) => filled + limit.piece_len(buf.len() - filled),
        };
        match timed(session, "RETR", remote, stream.read(&mut buf[filled..end])).await {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                if let Some(limit) = bandwidth {
                    limit.take(n).await;
                }
            }
            Err(e) => return (filled, Some(e)),
        }
    }
    (filled, None)
}

/// The failure path of the streaming loop (a network error, a failed write, a stop request):
/// returns why the transfer failed, a write error first, then the network's, else the stop.
async fn keep_what_arrived(
    ctx: &TransferContext<'_>,
    paths: &DownloadPaths<'_>,
    written: Written,
    failed: Option<TransferError>,
) -> TransferError {
    let Written {
        file,
        hasher: _,
        len: total,
        error,
    } = written;
    // What arrived is kept, made durable and checkpointed for the next attempt (a full
    // disk included: the bytes before the failed write stay for a later resume).
    if tokio::task::spawn_blocking({
        let file = file.try_clone();
        move || file.and_then(|f| f.sync_data())
    })
    .await
    .is_ok_and(|synced| synced.is_ok())
    {
        let _ = ctx.checkpoint(paths.rel, total);
    }
    if let Some(e) = error {
        return paths.local_err("write", e);
    }
    if let Some(e) = failed {
        return e;
    }
    TransferError::Interrupted(paths.rel.to_string())
}

/// The short-transfer check: a data connection that closed cleanly before `expected` bytes
/// leaves what arrived durable and checkpointed, and fails the transfer as short (transient:
/// the next attempt resumes).
async fn check_complete(
    ctx: &TransferContext<'_>,
    paths: &DownloadPaths<'_>,
    file: &std::fs::File,
    total: u64,
    expected: u64,
) -> Result<(), TransferError> {
    if total < expected {
        let synced = tokio::task::spawn_blocking({
            let file = file.try_clone();
            move || file.and_then(|f| f.sync_data())
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|synced| synced);
        synced.map_err(|e| paths.local_err("sync", e))?;
        ctx.checkpoint(paths.rel, total)?;
        return Err(TransferError::Short {
            path: paths.rel.to_string(),
            got: total,
            expected,
        });
    }
    Ok(())
}

/// For a job with `settle:`, the second look before the rename: SIZE (where the server has it)
/// and, where the listing's time is exact (MLSD), MDTM to the second must still be the
/// listing's. `Some(why)`: the file changed while it was downloaded. A LIST time is only
/// minute-precise, so there the size decides.
async fn changed_since_listing(
    session: &mut Session,
    paths: &DownloadPaths<'_>,
    source: &Entry,
) -> Result<Option<String>, TransferError> {
    if session.features.size {
        let now = session.size(&paths.remote).await?;
        if now != source.size {
            return Ok(Some(format!(
                "SIZE says {now} bytes, the listing said {}",
                source.size
            )));
        }
    }
    if session.features.mlsd && session.features.mdtm {
        let now = session.mdtm(&paths.remote).await?;
        if now.div_euclid(NS_PER_SEC) != source.mtime.div_euclid(NS_PER_SEC) {
            return Ok(Some(
                "MDTM gives another modification time than the listing".into(),
            ));
        }
    }
    Ok(None)
}

const NS_PER_SEC: i64 = 1_000_000_000;

/// The file's mtime on the server, as exact as it can be had: the listing's `listed` time,
/// settled by MDTM where only a LIST (minute- or day-precise) gave it.
async fn settle_mtime(session: &mut Session, paths: &DownloadPaths<'_>, listed: i64) -> i64 {
    // A LIST time is only minute- (or day-) precise: where the server has MDTM, the local
    // file and the ledger get the exact second, if it lies in the window the listing showed.
    if !session.features.mlsd && session.features.mdtm {
        match session.mdtm(&paths.remote).await {
            Ok(exact) => listing::settle_time(listed, Precision::Day, Some(exact)),
            Err(e) => {
                tracing::debug!(path = paths.rel, "MDTM: {e}");
                listed
            }
        }
    } else {
        listed
    }
}

/// Removes the temporary file of bytes that are not the server's file (too many, or a
/// SHA-256 that differs) and sets the journal back to byte 0, so that no later attempt
/// resumes from them. Failures here are only logged: the error the caller returns is why.
async fn discard(ctx: &TransferContext<'_>, paths: &DownloadPaths<'_>, dir: &Arc<Dir>) {
    let removed = tokio::task::spawn_blocking({
        let dir = Arc::clone(dir);
        let temp_name = paths.temp_name.clone();
        move || dir.remove_file(&temp_name)
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|removed| removed);
    if let Err(e) = removed {
        tracing::warn!(
            path = paths.rel,
            "cannot remove {}: {e}",
            paths.temp_path.display()
        );
    }
    if let Err(e) = ctx.checkpoint(paths.rel, 0) {
        tracing::warn!(path = paths.rel, "cannot reset the transfer journal: {e}");
    }
}

/// After a resume, the local file joins two attempts' bytes: where the server can hash a file
/// (HASH or XSHA256), its SHA-256 must be the local file's, or the bytes are discarded.
async fn verify_resumed(
    session: &mut Session,
    ctx: &TransferContext<'_>,
    paths: &DownloadPaths<'_>,
    dir: &Arc<Dir>,
    file: &std::fs::File,
) -> Result<(), TransferError> {
    if session.features.sha256.is_none() {
        return Ok(());
    }
    let Some(remote_sha) = session.remote_sha256(&paths.remote).await? else {
        return Ok(());
    };
    let local_sha = sha256_of(file)
        .await
        .map_err(|e| paths.local_err("read", e))?;
    if local_sha != remote_sha {
        discard(ctx, paths, dir).await;
        return Err(TransferError::Discarded(format!(
            "{}: the server's SHA-256 differs from the resumed download's; it was discarded and starts over from the first byte",
            paths.rel
        )));
    }
    Ok(())
}

/// Gives the temporary file the permissions of the file it replaces (new files keep what the
/// umask gave them), sets its mtime, fsyncs it, renames it into place within its directory
/// and fsyncs the directory so that the rename itself is durable. Returns the file's metadata
/// as it went into place.
async fn put_in_place(
    paths: &DownloadPaths<'_>,
    dir: Arc<Dir>,
    file: std::fs::File,
    remote_mtime: i64,
) -> Result<std::fs::Metadata, TransferError> {
    let mtime =
        std::time::UNIX_EPOCH + Duration::from_nanos(u64::try_from(remote_mtime).unwrap_or(0));
    let name = paths.name.clone();
    let synced = tokio::task::spawn_blocking({
        let dir = Arc::clone(&dir);
        move || -> std::io::Result<std::fs::Metadata> {
            use std::os::unix::fs::PermissionsExt;
            // An update keeps the mode the user gave the file (0600 stays 0600), as rsync does
            // without --perms; only the permission bits, never set-id bits from an old file.
            if let Some(mode) = dir.file_mode(&name)? {
                file.set_permissions(std::fs::Permissions::from_mode(mode))?;
            }
            file.set_modified(mtime)?;
            file.sync_all()?;
            file.metadata()
        }
    })
    .await
    .map_err(|e| paths.local_err("sync", std::io::Error::other(e)))?;
    let meta = synced.map_err(|e| paths.local_err("sync", e))?;
    let renamed = tokio::task::spawn_blocking({
        let dir = Arc::clone(&dir);
        let (name, temp_name) = (paths.name.clone(), paths.temp_name.clone());
        move || dir.rename(&temp_name, &name)
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|renamed| renamed);
    renamed.map_err(|e| paths.local_err("rename into place", e))?;
    // Make the rename itself durable.
    let _ = tokio::task::spawn_blocking(move || dir.sync()).await;
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::snapshot::temp_name;
    use crate::sync::transfer::test_support::loopback_job;
    use crate::sync::transfer::ByteCounter;

    fn patterned(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// The server's file as a listing shows it (whole seconds, as MLSD gives them).
    fn listed(len: usize) -> Entry {
        Entry {
            kind: crate::model::snapshot::Kind::File,
            size: len as u64,
            mtime: 1_700_000_000 * 1_000_000_000,
            hash: None,
            id: None,
        }
    }

    /// With `settle:`, a file whose MDTM after the download is not the listing's changed while
    /// it was read: not renamed into place, its bytes dropped, reported as still changing (not
    /// retried in this run); the same file with the listed time is taken.
    #[tokio::test]
    async fn with_settle_a_file_that_changed_during_the_download_is_not_put_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let (mut job, mut session, ledger) = loopback_job(dir.path()).await;
        job.settle = std::time::Duration::from_secs(1);
        let data = patterned(super::super::CHUNK + 5);
        let on_server = dir.path().join("server/c.csv");
        std::fs::write(&on_server, &data).unwrap();
        let source = listed(data.len());
        let counter = ByteCounter::default();
        let ctx = context(&job, &ledger, &counter);
        let err = download(&mut session, &ctx, "c.csv", &source)
            .await
            .unwrap_err();
        assert!(matches!(err, TransferError::StillChanging { .. }), "{err}");
        assert!(!err.is_transient(), "retried in the same run");
        assert!(err.to_string().contains("still changing"), "{err}");
        assert!(!dir.path().join("local/c.csv").exists(), "put in place");
        assert!(!dir.path().join("local").join(temp_name("c.csv")).exists());

        let listed_time =
            std::time::UNIX_EPOCH + std::time::Duration::from_nanos(source.mtime as u64);
        std::fs::File::options()
            .write(true)
            .open(&on_server)
            .unwrap()
            .set_modified(listed_time)
            .unwrap();
        download(&mut session, &ctx, "c.csv", &source)
            .await
            .unwrap();
        assert_eq!(std::fs::read(dir.path().join("local/c.csv")).unwrap(), data);
    }

    #[tokio::test]
    async fn a_download_lands_whole_with_the_listed_mtime_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let (job, mut session, ledger) = loopback_job(dir.path()).await;
        let data = patterned(2 * super::super::CHUNK + 777);
        std::fs::write(dir.path().join("server/b.bin"), &data).unwrap();
        let source = listed(data.len());
        let counter = ByteCounter::default();
        let ctx = TransferContext {
            job: &job,
            ledger: &ledger,
            counter: &counter,
            stop: None,
            bandwidth: None,
        };
        let done = download(&mut session, &ctx, "b.bin", &source)
            .await
            .unwrap();
        let local = dir.path().join("local/b.bin");
        assert_eq!(std::fs::read(&local).unwrap(), data);
        assert!(!dir.path().join("local").join(temp_name("b.bin")).exists());
        assert_eq!(done.bytes_moved, data.len() as u64);
        assert_eq!(counter.get(), data.len() as u64);
        assert_eq!(done.entry.size, data.len() as u64);
        assert_eq!(done.entry.hash, blake3::hash(&data));
        assert_eq!(done.entry.mtime, source.mtime);
        assert_eq!(done.entry.remote_mtime, Some(source.mtime));
        let on_disk = std::fs::metadata(&local).unwrap().modified().unwrap();
        assert_eq!(system_time_ns(on_disk), source.mtime);
    }

    #[tokio::test]
    async fn a_download_resumes_from_the_checkpoint_not_from_what_follows_it_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (job, mut session, ledger) = loopback_job(dir.path()).await;
        let data = patterned(3 << 20);
        std::fs::write(dir.path().join("server/big.bin"), &data).unwrap();
        let source = listed(data.len());
        // An earlier attempt: 1 MiB + 5 bytes checkpointed, and unsynced garbage after them.
        let kept = (1 << 20) + 5;
        let mut partial = data[..kept].to_vec();
        partial.extend_from_slice(&[0xEE; 4000]);
        let temp = dir.path().join("local").join(temp_name("big.bin"));
        std::fs::write(&temp, &partial).unwrap();
        ledger
            .lock()
            .journal_begin(
                &job.name,
                &JournalEntry {
                    path: "big.bin".into(),
                    direction: Direction::Pull.to_string(),
                    temp_name: temp_rel("big.bin"),
                    size: source.size,
                    mtime: source.mtime,
                    hash: None,
                    offset: 0,
                },
            )
            .unwrap();
        ledger
            .lock()
            .journal_checkpoint(&job.name, "big.bin", kept as u64)
            .unwrap();
        let counter = ByteCounter::default();
        let ctx = TransferContext {
            job: &job,
            ledger: &ledger,
            counter: &counter,
            stop: None,
            bandwidth: None,
        };
        let done = download(&mut session, &ctx, "big.bin", &source)
            .await
            .unwrap();
        assert_eq!(done.bytes_moved, (data.len() - kept) as u64);
        assert_eq!(done.entry.hash, blake3::hash(&data));
        assert_eq!(
            std::fs::read(dir.path().join("local/big.bin")).unwrap(),
            data
        );
        assert!(!temp.exists());
    }

    fn context<'a>(
        job: &'a Job,
        ledger: &'a crate::state::SharedLedger,
        counter: &'a ByteCounter,
    ) -> TransferContext<'a> {
        TransferContext {
            job,
            ledger,
            counter,
            stop: None,
            bandwidth: None,
        }
    }

    fn journal_at(
        job: &Job,
        ledger: &crate::state::SharedLedger,
        rel: &str,
        source: &Entry,
        at: u64,
    ) {
        let l = ledger.lock();
        l.journal_begin(
            &job.name,
            &JournalEntry {
                path: rel.into(),
                direction: Direction::Pull.to_string(),
                temp_name: temp_rel(rel),
                size: source.size,
                mtime: source.mtime,
                hash: None,
                offset: 0,
            },
        )
        .unwrap();
        l.journal_checkpoint(&job.name, rel, at).unwrap();
    }

    #[tokio::test]
    async fn a_file_that_grew_on_the_server_since_the_listing_is_not_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (job, mut session, ledger) = loopback_job(dir.path()).await;
        let data = patterned(3 * super::super::CHUNK);
        // Listed at 100 KiB, then written on to 768 KiB before the RETR.
        let source = listed(100 << 10);
        std::fs::write(dir.path().join("server/g.bin"), &data).unwrap();
        let counter = ByteCounter::default();
        let ctx = context(&job, &ledger, &counter);
        let err = download(&mut session, &ctx, "g.bin", &source)
            .await
            .unwrap_err();
        assert!(matches!(err, TransferError::Overrun { .. }), "{err}");
        assert!(err.is_transient() && err.breaks_connection());
        assert!(err.to_string().contains("g.bin"), "{err}");
        assert!(!dir.path().join("local/g.bin").exists(), "committed");
        assert!(!dir.path().join("local").join(temp_name("g.bin")).exists());
        assert!(
            counter.get() <= source.size,
            "{} bytes counted for a {}-byte file",
            counter.get(),
            source.size
        );
    }

    #[tokio::test]
    async fn a_resumed_download_that_gets_more_than_the_rest_starts_over_from_byte_0() {
        let dir = tempfile::tempdir().unwrap();
        let (job, mut session, ledger) = loopback_job(dir.path()).await;
        let data = patterned(2 << 20);
        let source = listed(data.len());
        let kept = (1 << 20) + 3;
        let temp = dir.path().join("local").join(temp_name("r.bin"));
        std::fs::write(&temp, &data[..kept]).unwrap();
        journal_at(&job, &ledger, "r.bin", &source, kept as u64);
        // What a server that answers REST with 350 but sends from byte 0 puts on the wire:
        // the whole file after the offset (here: `kept` bytes more than the rest).
        let mut served = data[..kept].to_vec();
        served.extend_from_slice(&data);
        std::fs::write(dir.path().join("server/r.bin"), &served).unwrap();
        let counter = ByteCounter::default();
        let ctx = context(&job, &ledger, &counter);
        let err = download(&mut session, &ctx, "r.bin", &source)
            .await
            .unwrap_err();
        assert!(matches!(err, TransferError::Overrun { .. }), "{err}");
        assert!(!dir.path().join("local/r.bin").exists(), "committed");
        assert!(!temp.exists(), "the stitched bytes were kept");
        let j = ledger.lock().journal_entry(&job.name, "r.bin").unwrap();
        assert_eq!(j.map(|j| j.offset), Some(0), "the journal still resumes");
        // The retry (the server now behaving) fetches the whole file from byte 0.
        let mut session = Session::connect(
            &job.remote,
            &crate::remote::tls::TlsContext::new(&job.remote.tls).unwrap(),
        )
        .await
        .unwrap();
        std::fs::write(dir.path().join("server/r.bin"), &data).unwrap();
        let done = download(&mut session, &ctx, "r.bin", &source)
            .await
            .unwrap();
        assert_eq!(done.bytes_moved, data.len() as u64);
        assert_eq!(std::fs::read(dir.path().join("local/r.bin")).unwrap(), data);
    }

    #[tokio::test]
    async fn a_link_planted_at_the_temporary_name_is_replaced_not_written_through() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let (job, mut session, ledger) = loopback_job(dir.path()).await;
        let secret = dir.path().join("secret");
        let secret_bytes = patterned(2 << 20);
        std::fs::write(&secret, &secret_bytes).unwrap();
        let counter = ByteCounter::default();
        let ctx = context(&job, &ledger, &counter);
        // A small file (never journaled) and a journaled one resumed from a checkpoint.
        for (rel, len, journaled) in [("small.bin", 1000, false), ("big.bin", 3 << 20, true)] {
            let data = patterned(len);
            std::fs::write(dir.path().join("server").join(rel), &data).unwrap();
            let source = listed(len);
            symlink(&secret, dir.path().join("local").join(temp_name(rel))).unwrap();
            if journaled {
                journal_at(&job, &ledger, rel, &source, 1 << 20);
            }
            let done = download(&mut session, &ctx, rel, &source).await.unwrap();
            assert_eq!(std::fs::read(&secret).unwrap(), secret_bytes, "{rel}");
            assert_eq!(done.bytes_moved, len as u64, "{rel}: resumed from a link");
            let local = dir.path().join("local").join(rel);
            assert!(std::fs::symlink_metadata(&local).unwrap().is_file());
            assert_eq!(std::fs::read(&local).unwrap(), data);
        }
        // A link at the final name is replaced itself; its target keeps its bytes.
        symlink(&secret, dir.path().join("local/linked.bin")).unwrap();
        std::fs::write(dir.path().join("server/linked.bin"), b"new").unwrap();
        download(&mut session, &ctx, "linked.bin", &listed(3))
            .await
            .unwrap();
        assert_eq!(std::fs::read(&secret).unwrap(), secret_bytes);
        assert_eq!(
            std::fs::read(dir.path().join("local/linked.bin")).unwrap(),
            b"new"
        );
    }

    #[tokio::test]
    async fn a_download_into_a_directory_replaced_by_a_link_writes_nothing_outside() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let (job, mut session, ledger) = loopback_job(dir.path()).await;
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(dir.path().join("server/sub")).unwrap();
        std::fs::write(dir.path().join("server/sub/f.txt"), b"payload").unwrap();
        symlink(&outside, dir.path().join("local/sub")).unwrap();
        let counter = ByteCounter::default();
        let ctx = context(&job, &ledger, &counter);
        let err = download(&mut session, &ctx, "sub/f.txt", &listed(7))
            .await
            .unwrap_err();
        assert!(matches!(err, TransferError::Local { .. }), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn an_updated_file_keeps_its_mode_and_a_new_one_follows_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (job, mut session, ledger) = loopback_job(dir.path()).await;
        let counter = ByteCounter::default();
        let ctx = context(&job, &ledger, &counter);
        let mode =
            |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let local = dir.path().join("local/private.csv");
        std::fs::write(&local, b"old").unwrap();
        std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(dir.path().join("server/private.csv"), b"updated").unwrap();
        download(&mut session, &ctx, "private.csv", &listed(7))
            .await
            .unwrap();
        assert_eq!(std::fs::read(&local).unwrap(), b"updated");
        assert_eq!(mode(&local), 0o600, "an update widened the permissions");
        // A new file gets what any new file gets here: 0666 less the umask.
        let reference = dir.path().join("reference");
        std::fs::write(&reference, b"").unwrap();
        std::fs::write(dir.path().join("server/new.csv"), b"new").unwrap();
        download(&mut session, &ctx, "new.csv", &listed(3))
            .await
            .unwrap();
        assert_eq!(mode(&dir.path().join("local/new.csv")), mode(&reference));
    }
}
