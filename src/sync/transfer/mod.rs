//! Moving the bytes of one file, safely and resumably: an upload goes to a temporary name in
//! the target's own remote directory and is renamed into place only when complete and
//! verified; a download goes to a temporary file beside its target, is fsynced and then
//! renamed. Each transfer is journaled in the ledger before its first byte, with checkpoints,
//! so that after a crash or a dropped connection the next attempt continues from the bytes
//! already on the destination (REST) instead of from zero. BLAKE3 is computed from the bytes
//! as they stream (plus, on resume, the part already transferred).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Job;
use crate::model::paths::{local_path, remote_path};
use crate::model::plan::SyncedEntry;
use crate::model::policy::Direction;
use crate::model::snapshot::system_time_ns;
use crate::model::snapshot::{temp_rel, Entry};
use crate::remote::listing::{self, Precision};
use crate::remote::session::{FtpsError, Session};
use crate::state::ledger::JournalEntry;
use crate::state::SharedLedger;

mod file_io;

use file_io::{open_at, sha256_of, FileReader, FileWriter, Written};

const CHUNK: usize = 256 * 1024;

/// The I/O buffer for `remaining` bytes: CHUNK for large files, less for small ones (zeroing a
/// 256 KiB buffer per 4 KiB file showed in profiles of small-file runs). One byte more than the
/// size, so that a file that grew since the scan still reads to its end in whole buffers.
fn buffer_len(remaining: u64) -> usize {
    usize::try_from(remaining)
        .unwrap_or(CHUNK)
        .saturating_add(1)
        .clamp(4096, CHUNK)
}
/// Transfers smaller than this are not journaled, so never resumed: after an interruption
/// such a file is sent again whole, and its temporary file, which no journal entry accounts
/// for, is removed by the next run. A journal row before each file and its removal after were
/// two of the three ledger writes of every small file, on the path of the transfer.
const JOURNAL_MIN: u64 = 1 << 20;
/// A checkpoint is written after this many bytes or this much time, whichever comes first.
const CHECKPOINT_BYTES: u64 = 8 << 20;
const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Ftps(#[from] FtpsError),
    #[error("{path}: {action}: {source}")]
    Local {
        path: String,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Verify(String),
    /// The data connection ended before the whole file arrived.
    #[error("{path}: the transfer ended after {got} of {expected} bytes")]
    Short {
        path: String,
        got: u64,
        expected: u64,
    },
    #[error(transparent)]
    Ledger(#[from] crate::state::ledger::LedgerError),
    /// The server refused the temporary name (553, e.g. Pure-FTPd's `ProhibitDotFilesWrite`).
    #[error("{0} (the server refuses the temporary name .NAME.ferrysync-part: if it forbids dot files, set upload.temp_name: false)")]
    TempNameRefused(FtpsError),
    /// Stopped on request at a checkpoint; the journal lets the next run resume.
    #[error("{0}: stopped at a checkpoint on request")]
    Interrupted(String),
}

impl TransferError {
    /// Whether the connection is in an unknown state and must be replaced before reuse (425,
    /// "cannot open data connection", included: a fresh connection may well succeed).
    pub fn breaks_connection(&self) -> bool {
        matches!(
            self,
            TransferError::Ftps(
                FtpsError::Connection { .. }
                    | FtpsError::Timeout { .. }
                    | FtpsError::Reply { code: 425, .. }
            ) | TransferError::Short { .. }
        )
    }

    /// Whether trying again (after a pause, on a fresh connection if needed) may succeed:
    /// dropped connections, timeouts and 4xx replies; not 5xx replies (530 login, 550
    /// permission, 553 name) nor local disk errors.
    pub fn is_transient(&self) -> bool {
        match self {
            TransferError::Ftps(e) => e.is_transient(),
            TransferError::Short { .. } => true,
            _ => false,
        }
    }
}

/// Bytes moved so far by all transfers of a run, for progress display.
#[derive(Debug, Default, Clone)]
pub struct ByteCounter(Arc<AtomicU64>);

impl ByteCounter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a finished transfer leaves for the ledger and the run's counters.
#[derive(Debug, Clone)]
pub struct Transferred {
    pub entry: SyncedEntry,
    /// Bytes that crossed the network in this attempt (less than the size after a resume).
    pub bytes_moved: u64,
}

/// What a transfer needs besides the connection.
pub struct TransferContext<'a> {
    pub job: &'a Job,
    pub ledger: &'a SharedLedger,
    pub counter: &'a ByteCounter,
    /// Turns true when the run must stop at the next checkpoint.
    pub stop: Option<&'a tokio::sync::watch::Receiver<bool>>,
}

impl TransferContext<'_> {
    fn stop_requested(&self) -> bool {
        self.stop.is_some_and(|s| *s.borrow())
    }
    /// The journal entry of a transfer of `size` bytes at `path`, if one may be resumed.
    fn journal_entry(&self, path: &str, size: u64) -> Result<Option<JournalEntry>, TransferError> {
        if size < JOURNAL_MIN {
            return Ok(None);
        }
        Ok(self.ledger.lock().journal_entry(&self.job.name, path)?)
    }
    fn journal_begin(&self, j: &JournalEntry) -> Result<(), TransferError> {
        if j.size < JOURNAL_MIN {
            return Ok(());
        }
        Ok(self.ledger.lock().journal_begin(&self.job.name, j)?)
    }
    fn checkpoint(&self, path: &str, offset: u64) -> Result<(), TransferError> {
        Ok(self
            .ledger
            .lock()
            .journal_checkpoint(&self.job.name, path, offset)?)
    }
}

/// Decides when the next journal checkpoint is due.
struct Checkpoints {
    last_bytes: u64,
    last_time: Instant,
}

impl Checkpoints {
    fn new(at: u64) -> Self {
        Checkpoints {
            last_bytes: at,
            last_time: Instant::now(),
        }
    }
    fn due(&mut self, at: u64) -> bool {
        if at - self.last_bytes >= CHECKPOINT_BYTES || self.last_time.elapsed() >= CHECKPOINT_EVERY
        {
            self.last_bytes = at;
            self.last_time = Instant::now();
            true
        } else {
            false
        }
    }
}

async fn timed<T>(
    session: &Session,
    command: &'static str,
    path: &str,
    fut: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, TransferError> {
    match tokio::time::timeout(session.timeout, fut).await {
        Err(_) => Err(FtpsError::Timeout {
            server: session.server.clone(),
            command,
            path: path.to_string(),
            secs: session.timeout.as_secs(),
        }
        .into()),
        Ok(Err(e)) => Err(FtpsError::Connection {
            server: session.server.clone(),
            command,
            path: path.to_string(),
            reason: e.to_string(),
        }
        .into()),
        Ok(Ok(v)) => Ok(v),
    }
}

/// Uploads `rel`; returns what the ledger must record once the caller commits it.
pub async fn upload(
    session: &mut Session,
    ctx: &TransferContext<'_>,
    rel: &str,
    source: &Entry,
) -> Result<Transferred, TransferError> {
    let job = ctx.job;
    let final_path = remote_path(&job.remote.path, rel);
    // Without a temporary name the bytes go straight to the final name.
    let temp = if job.upload.temp_name {
        temp_rel(rel)
    } else {
        rel.to_string()
    };
    let temp_path = remote_path(&job.remote.path, &temp);
    let local = local_path(&job.local, rel);
    let local_err = |action, source| TransferError::Local {
        path: local.display().to_string(),
        action,
        source,
    };

    // Resume only the same transfer of the same unchanged file, from what the server holds.
    let journal = ctx.journal_entry(rel, source.size)?;
    let same = journal.as_ref().is_some_and(|j| {
        j.direction == Direction::Push.to_string()
            && j.temp_name == temp
            && j.size == source.size
            && j.mtime == source.mtime
            // A hash on both sides must agree; a file the scan did not hash is known by size and
            // mtime, and the server's hash check (where offered) covers the joined bytes.
            && (j.hash.is_none() || source.hash.is_none() || j.hash == source.hash)
    });
    let mut offset = 0;
    if same && job.upload.temp_name && job.upload.verify {
        if let Ok(on_server) = session.size(&temp_path).await {
            if on_server <= source.size {
                offset = on_server;
            }
        }
    } else {
        ctx.journal_begin(&JournalEntry {
            path: rel.to_string(),
            direction: Direction::Push.to_string(),
            temp_name: temp.clone(),
            size: source.size,
            mtime: source.mtime,
            hash: source.hash,
            offset: 0,
        })?;
    }

    if offset > 0 {
        tracing::info!(path = rel, offset, "resuming upload");
    }
    let mut reader = FileReader::start(
        local.clone(),
        offset,
        buffer_len(source.size.saturating_sub(offset)),
    );

    let mut sent = 0u64;
    if offset < source.size || source.size == 0 {
        // The first buffer (or the open's error) before the data connection: a file that
        // cannot be read costs no STOR.
        let mut next = reader.next().await;
        if offset > 0 {
            session.restart_at(&temp_path, offset).await?;
        }
        if let Some(Err(e)) = next {
            return Err(local_err("read", e));
        }
        let mut stream = match session.store(&temp_path).await {
            Err(e) if e.code() == Some(553) && job.upload.temp_name => {
                return Err(TransferError::TempNameRefused(e))
            }
            other => other?,
        };
        let mut checkpoints = Checkpoints::new(offset);
        while let Some(read) = next {
            let buf = read.map_err(|e| local_err("read", e))?;
            let n = buf.len() as u64;
            timed(session, "STOR", &temp_path, stream.write_all(&buf)).await?;
            reader.recycle(buf);
            sent += n;
            ctx.counter.add(n);
            if checkpoints.due(offset + sent) {
                ctx.checkpoint(rel, offset + sent)?;
                if ctx.stop_requested() {
                    // The server keeps what it received; the next run resumes from its SIZE.
                    drop(stream);
                    return Err(TransferError::Interrupted(rel.to_string()));
                }
            }
            next = reader.next().await;
        }
        session.finish("STOR", &temp_path, stream).await?;
    } else {
        // Nothing left to send (the server already holds every byte): drain the reader so its
        // hash covers the whole file.
        while let Some(read) = reader.next().await {
            let buf = read.map_err(|e| local_err("read", e))?;
            reader.recycle(buf);
        }
    }
    let read = reader.finish().await.map_err(|e| local_err("read", e))?;

    let total = offset + sent;
    let hash = read.hasher.finalize();
    // The bytes sent are the file the plan saw: the same content where the scan hashed it;
    // otherwise (a file the scan left to the transfer, settled for seconds) the same size and
    // mtime after the last read, which any write since the scan would have moved.
    let as_scanned = match source.hash {
        Some(scanned) => scanned == hash,
        None => read.size == source.size && read.mtime == source.mtime,
    };
    if !as_scanned || total != source.size {
        let _ = session.delete_file(&temp_path).await;
        return Err(TransferError::Verify(format!(
            "{rel}: the local file changed while it was being uploaded; it will be sent again by the next run"
        )));
    }
    if session.features.size && job.upload.verify {
        let remote_size = session.size(&temp_path).await?;
        if remote_size != total {
            let _ = session.delete_file(&temp_path).await;
            return Err(TransferError::Verify(format!(
                "{rel}: the server stored {remote_size} bytes of {total}; the upload was discarded"
            )));
        }
    }
    if offset > 0 && session.features.sha256.is_some() && job.upload.verify {
        // A resumed upload joined two sessions' bytes on the server: where the server can hash
        // a file, compare its SHA-256 with the local file's before the rename.
        let local_sha = sha256_of(local.clone())
            .await
            .map_err(|e| local_err("read", e))?;
        if let Some(remote_sha) = session.remote_sha256(&temp_path).await? {
            if remote_sha != local_sha {
                let _ = session.delete_file(&temp_path).await;
                return Err(TransferError::Verify(format!(
                    "{rel}: the server's SHA-256 of the resumed upload differs from the local file; the upload was discarded and starts over next time"
                )));
            }
        }
    }
    if job.upload.temp_name {
        session.rename(&temp_path, &final_path).await?;
    }
    if session.features.mfmt {
        if let Err(e) = session
            .set_mtime(&final_path, source.mtime.div_euclid(1_000_000_000))
            .await
        {
            tracing::warn!("cannot preserve the modification time: {e}");
        }
    }
    Ok(Transferred {
        entry: SyncedEntry {
            size: total,
            mtime: source.mtime,
            hash,
            remote_size: total,
            remote_mtime: None,
        },
        bytes_moved: sent,
    })
}

/// Downloads `rel`; returns what the ledger must record once the caller commits it.
pub async fn download(
    session: &mut Session,
    ctx: &TransferContext<'_>,
    rel: &str,
    source: &Entry,
) -> Result<Transferred, TransferError> {
    let job = ctx.job;
    let remote = remote_path(&job.remote.path, rel);
    let final_path = local_path(&job.local, rel);
    let temp = temp_rel(rel);
    let temp_path = local_path(&job.local, &temp);
    let local_err = |action, source| TransferError::Local {
        path: final_path.display().to_string(),
        action,
        source,
    };

    // Resume from the bytes both on disk and confirmed by the last checkpoint (the checkpoint
    // follows an fsync, so those bytes survive even a power cut).
    let journal = ctx.journal_entry(rel, source.size)?;
    let kept = journal
        .filter(|j| {
            j.direction == Direction::Pull.to_string()
                && j.temp_name == temp
                && j.size == source.size
                && j.mtime == source.mtime
        })
        .map(|j| {
            let on_disk = std::fs::metadata(&temp_path).map(|m| m.len()).unwrap_or(0);
            on_disk.min(j.offset)
        });
    let offset = kept.unwrap_or(0);
    if kept.is_none() {
        ctx.journal_begin(&JournalEntry {
            path: rel.to_string(),
            direction: Direction::Pull.to_string(),
            temp_name: temp.clone(),
            size: source.size,
            mtime: source.mtime,
            hash: None,
            offset: 0,
        })?;
    }
    let opened = {
        let temp_path = temp_path.clone();
        tokio::task::spawn_blocking(move || open_at(&temp_path, offset, true))
            .await
            .map_err(std::io::Error::other)
            .and_then(|opened| opened)
    };
    let (hasher, file) = opened.map_err(|e| local_err("open the temporary file", e))?;
    if offset > 0 {
        tracing::info!(path = rel, offset, "resuming download");
        session.restart_at(&remote, offset).await?;
    }

    let mut stream = session.retrieve(&remote).await?;
    let len = buffer_len(source.size.saturating_sub(offset));
    let mut writer = FileWriter::start(file, hasher, offset, len);
    let mut received = 0u64;
    let mut checkpoints = Checkpoints::new(offset);
    // Why the loop ended early: the network's error, a write error (in the writer's result),
    // or a stop request.
    let mut failed: Option<TransferError> = None;
    let mut stopped = false;
    'transfer: loop {
        // Fill a whole buffer (fewer, larger hand-overs to the writer), with the timeout on
        // every single read as before.
        let mut buf = writer.buffer();
        let mut filled = 0;
        while filled < buf.len() {
            match timed(session, "RETR", &remote, stream.read(&mut buf[filled..])).await {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if filled > 0 {
            buf.truncate(filled);
            if !writer.write(buf).await {
                break 'transfer; // the write failed: the writer's result says why
            }
            received += filled as u64;
            ctx.counter.add(filled as u64);
        }
        if failed.is_some() || filled == 0 {
            break;
        }
        if checkpoints.due(offset + received) {
            writer.request_sync().await;
        }
        if let Some(durable) = writer.durable().map_err(|e| local_err("sync", e))? {
            ctx.checkpoint(rel, durable)?;
            if ctx.stop_requested() {
                stopped = true;
                break;
            }
        }
    }
    let written = writer.finish().await.map_err(|e| local_err("write", e))?;
    let Written {
        file,
        hasher,
        len: total,
        error,
    } = written;
    if failed.is_some() || stopped || error.is_some() {
        drop(stream);
        // What arrived is kept, made durable and checkpointed for the next attempt (a full
        // disk included: the bytes before the failed write stay for a later resume).
        if tokio::task::spawn_blocking({
            let file = file.try_clone();
            move || file.and_then(|f| f.sync_data())
        })
        .await
        .is_ok_and(|synced| synced.is_ok())
        {
            let _ = ctx.checkpoint(rel, total);
        }
        if let Some(e) = error {
            return Err(local_err("write", e));
        }
        if let Some(e) = failed {
            return Err(e);
        }
        return Err(TransferError::Interrupted(rel.to_string()));
    }
    session.finish("RETR", &remote, stream).await?;
    if total < source.size {
        let synced = tokio::task::spawn_blocking({
            let file = file.try_clone();
            move || file.and_then(|f| f.sync_data())
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|synced| synced);
        synced.map_err(|e| local_err("sync", e))?;
        ctx.checkpoint(rel, total)?;
        return Err(TransferError::Short {
            path: rel.to_string(),
            got: total,
            expected: source.size,
        });
    }
    // A LIST time is only minute- (or day-) precise: where the server has MDTM, the local
    // file and the ledger get the exact second, if it lies in the window the listing showed.
    let remote_mtime = if !session.features.mlsd && session.features.mdtm {
        match session.mdtm(&remote).await {
            Ok(exact) => listing::settle_time(source.mtime, Precision::Day, Some(exact)),
            Err(e) => {
                tracing::debug!(path = rel, "MDTM: {e}");
                source.mtime
            }
        }
    } else {
        source.mtime
    };
    let mtime =
        std::time::UNIX_EPOCH + Duration::from_nanos(u64::try_from(remote_mtime).unwrap_or(0));
    let synced = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        file.set_modified(mtime)?;
        file.sync_all()
    })
    .await
    .map_err(|e| local_err("sync", std::io::Error::other(e)))?;
    synced.map_err(|e| local_err("sync", e))?;
    tokio::fs::rename(&temp_path, &final_path)
        .await
        .map_err(|e| local_err("rename into place", e))?;
    if let Some(dir) = final_path.parent() {
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    let meta = tokio::fs::metadata(&final_path)
        .await
        .map_err(|e| local_err("stat", e))?;
    Ok(Transferred {
        entry: SyncedEntry {
            size: total,
            mtime: meta.modified().map(system_time_ns).unwrap_or(remote_mtime),
            hash: hasher.finalize(),
            remote_size: source.size,
            remote_mtime: Some(remote_mtime),
        },
        bytes_moved: received,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::snapshot::temp_name;
    use std::path::Path;

    /// A push job against the in-process server, and a connection to it.
    async fn loopback_job(dir: &Path) -> (Job, Session, SharedLedger) {
        let server = crate::loopback::start(crate::loopback::LoopbackOptions {
            root: dir.join("server"),
            cert_dir: dir.join("tls"),
            user: "u".into(),
            password: "p".into(),
            port: None,
            tls: true,
        })
        .await
        .unwrap();
        std::fs::create_dir_all(dir.join("local")).unwrap();
        let yaml = format!(
            "local: {}\nremote:\n  host: 127.0.0.1\n  port: {}\n  path: /\n  user: u\n  password: p\n  tls:\n    ca_file: {}\n",
            dir.join("local").display(),
            server.port,
            server.cert_pem_path.display()
        );
        let job = crate::config::parse_job(&dir.join("t.yaml"), &yaml).unwrap();
        let tls = crate::remote::tls::TlsContext::new(&job.remote.tls).unwrap();
        let session = Session::connect(&job.remote, &tls).await.unwrap();
        let ledger = crate::state::ledger::Ledger::open(&dir.join("state.db")).unwrap();
        (job, session, SharedLedger::new(ledger))
    }

    /// The file as a scan that did not hash it saw it (see [`crate::model::plan::local_hash`]).
    fn unhashed_entry(path: &Path) -> Entry {
        let meta = std::fs::metadata(path).unwrap();
        Entry {
            kind: crate::model::snapshot::Kind::File,
            size: meta.len(),
            mtime: system_time_ns(meta.modified().unwrap()),
            hash: None,
        }
    }

    #[tokio::test]
    async fn an_unhashed_file_written_after_the_scan_is_not_uploaded() {
        let dir = tempfile::tempdir().unwrap();
        let (job, mut session, ledger) = loopback_job(dir.path()).await;
        let local = dir.path().join("local/a.csv");
        std::fs::write(&local, b"old content").unwrap();
        let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        let f = std::fs::File::options().write(true).open(&local).unwrap();
        f.set_modified(an_hour_ago).unwrap();
        let scanned = unhashed_entry(&local);
        // Rewritten after the scan, with the same size: only the mtime tells.
        std::fs::write(&local, b"new content").unwrap();
        let counter = ByteCounter::default();
        let ctx = TransferContext {
            job: &job,
            ledger: &ledger,
            counter: &counter,
            stop: None,
        };
        let err = upload(&mut session, &ctx, "a.csv", &scanned)
            .await
            .unwrap_err();
        assert!(matches!(err, TransferError::Verify(_)), "{err}");
        let server_root = dir.path().join("server");
        assert!(
            !server_root.join("a.csv").exists(),
            "a changed file went live"
        );
        assert!(!server_root.join(temp_name("a.csv")).exists());

        // As the next scan sees it: sent, and recorded with the hash of the bytes sent.
        let rescanned = unhashed_entry(&local);
        let done = upload(&mut session, &ctx, "a.csv", &rescanned)
            .await
            .unwrap();
        assert_eq!(done.entry.hash, blake3::hash(b"new content"));
        assert_eq!(
            std::fs::read(server_root.join("a.csv")).unwrap(),
            b"new content"
        );
    }
}
