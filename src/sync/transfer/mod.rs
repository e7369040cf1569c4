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

use tokio::io::AsyncReadExt;

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
mod upload;

use file_io::{open_at, FileWriter, Written};
pub(crate) use upload::upload;

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
