//! Moving the bytes of one file, safely and resumably: an upload goes to a temporary name in
//! the target's own remote directory and is renamed into place only when complete and
//! verified; a download goes to a temporary file beside its target, is fsynced and then
//! renamed. Each transfer is journaled in the ledger before its first byte, with checkpoints,
//! so that after a crash or a dropped connection the next attempt continues from the bytes
//! already on the destination (REST) instead of from zero. BLAKE3 is computed from the bytes
//! as they stream (plus, on resume, the part already transferred).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
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
use crate::remote::error::FtpsError;
use crate::remote::listing::{self, Precision};
use crate::remote::session::Session;
use crate::state::ledger::JournalEntry;
use crate::state::SharedLedger;

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

/// BLAKE3 state over the first `len` bytes of a file (the part a resumed transfer keeps).
fn hash_prefix(path: &Path, len: u64) -> std::io::Result<blake3::Hasher> {
    let mut hasher = blake3::Hasher::new();
    let f = std::fs::File::open(path)?;
    let copied = std::io::copy(&mut f.take(len), &mut hasher)?;
    if copied != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("expected {len} bytes, found {copied}"),
        ));
    }
    Ok(hasher)
}

/// Opens `path` positioned at `offset`, with the BLAKE3 state of the bytes before it (call it
/// on a blocking thread). `for_writing` opens (creating) the temporary file of a download and
/// cuts it to `offset`; otherwise the file is the source of an upload.
fn open_at(
    path: &Path,
    offset: u64,
    for_writing: bool,
) -> std::io::Result<(blake3::Hasher, std::fs::File)> {
    let mut f = if for_writing {
        let f = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        f.set_len(offset)?;
        f
    } else {
        std::fs::File::open(path)?
    };
    let hasher = if offset > 0 {
        hash_prefix(path, offset)?
    } else {
        blake3::Hasher::new()
    };
    f.seek(SeekFrom::Start(offset))?;
    Ok((hasher, f))
}

/// Buffers in flight between the network task and a file thread, each way: enough to keep
/// both busy, little memory (4 x 256 KiB per transfer).
const BUFFERS_IN_FLIGHT: usize = 4;

/// The source of an upload, read on a thread of its own that also hashes every buffer before
/// handing it to the network task. A profile of a 200 MiB upload showed the network task
/// spending a third of its time outside TLS: tokio::fs's hop to the blocking pool and extra
/// copy per read, and BLAKE3 inline. Here reading and hashing overlap with encryption and the
/// socket, so on two cores they cost almost no wall time. The hash still covers exactly the
/// bytes handed over, in order, from the first byte of the file (see [`open_at`]).
struct FileReader {
    full: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    empty: std::sync::mpsc::Sender<Vec<u8>>,
    thread: tokio::task::JoinHandle<Option<ReadToEnd>>,
}

/// What a [`FileReader`] knows once it read its file to the end.
struct ReadToEnd {
    /// BLAKE3 over every byte of the file, from its first.
    hasher: blake3::Hasher,
    /// The open file's size and mtime (ns) after the last read: the scan's, unless the file was
    /// written to since.
    size: u64,
    mtime: i64,
}

impl FileReader {
    /// Opens `path` at `offset` (hashing the bytes before it) and starts reading ahead in
    /// buffers of `len` bytes.
    fn start(path: std::path::PathBuf, offset: u64, len: usize) -> FileReader {
        let (full_tx, full) = tokio::sync::mpsc::channel(BUFFERS_IN_FLIGHT);
        let (empty, empty_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let thread = tokio::task::spawn_blocking(move || {
            let (mut hasher, mut file) = match open_at(&path, offset, false) {
                Ok(opened) => opened,
                Err(e) => {
                    let _ = full_tx.blocking_send(Err(e));
                    return None;
                }
            };
            let mut allocated = 0;
            loop {
                let mut buf = match empty_rx.try_recv() {
                    Ok(buf) => buf,
                    Err(_) if allocated < BUFFERS_IN_FLIGHT + 1 => {
                        allocated += 1;
                        Vec::new()
                    }
                    // All buffers are in flight: wait for one, or for the end of the transfer.
                    Err(_) => match empty_rx.recv() {
                        Ok(buf) => buf,
                        Err(_) => return None,
                    },
                };
                buf.resize(len, 0);
                match read_full(&mut file, &mut buf) {
                    Ok(0) => {
                        return match file.metadata() {
                            Ok(meta) => Some(ReadToEnd {
                                hasher,
                                size: meta.len(),
                                mtime: meta.modified().map(system_time_ns).unwrap_or(0),
                            }),
                            Err(e) => {
                                let _ = full_tx.blocking_send(Err(e));
                                None
                            }
                        }
                    }
                    Ok(n) => {
                        buf.truncate(n);
                        hasher.update(&buf);
                        if full_tx.blocking_send(Ok(buf)).is_err() {
                            return None; // the transfer ended early
                        }
                    }
                    Err(e) => {
                        let _ = full_tx.blocking_send(Err(e));
                        return None;
                    }
                }
            }
        });
        FileReader {
            full,
            empty,
            thread,
        }
    }

    /// The next buffer of the file; `None` at its end.
    async fn next(&mut self) -> Option<std::io::Result<Vec<u8>>> {
        self.full.recv().await
    }

    /// Hands a sent buffer back for reuse.
    fn recycle(&self, buf: Vec<u8>) {
        let _ = self.empty.send(buf);
    }

    /// The BLAKE3 state over every byte read and the file's state at the end, once
    /// [`FileReader::next`] returned `None`.
    async fn finish(self) -> std::io::Result<ReadToEnd> {
        drop(self.empty);
        self.thread
            .await
            .map_err(std::io::Error::other)?
            .ok_or_else(|| std::io::Error::other("the file reader stopped early"))
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// What the writer thread of a download hands back at its end.
struct Written {
    file: std::fs::File,
    hasher: blake3::Hasher,
    /// Bytes in the file, from its start (the resumed part included).
    len: u64,
    /// A write failed (a full disk): everything before it is in `len`.
    error: Option<std::io::Error>,
}

/// How far a download's writer may run ahead of the last offset an fsync made durable, once
/// checkpoints have begun. Without a bound, a fast network fills the page cache faster than an
/// fsync drains it: each fsync then has more to flush, the durable offset falls far behind, and
/// a crash re-fetches most of the file (seen in the kill -9 test on loopback: the checkpoint
/// lagged 100 MiB behind the bytes on disk). With it, at most this much plus one checkpoint
/// interval is fetched again, as with the fsync inline.
const MAX_UNSYNCED: u64 = 12 << 20;

/// The syncer's progress, shared with the writer that waits on it (see [`MAX_UNSYNCED`]).
#[derive(Default)]
struct SyncProgress {
    durable: u64,
    /// The syncer ended (a failed fsync, or the transfer is over): nobody waits any more.
    ended: bool,
}
type SharedSyncProgress = Arc<(std::sync::Mutex<SyncProgress>, std::sync::Condvar)>;

enum ToWriter {
    Data(Vec<u8>),
    /// Make every byte written so far durable, then report it (a checkpoint).
    Sync,
}

/// The temporary file of a download, written and hashed on a thread of its own, with the
/// fsyncs of checkpoints on a second one. A profile of a 200 MiB download showed the network
/// task waiting for tokio::fs's blocking-pool writes and for an fsync every 8 MiB; here the
/// network keeps reading while the file is written and synced. A checkpoint still only ever
/// names bytes that an fsync made durable: [`FileWriter::durable`] reports an offset only
/// after `sync_data` returned for everything written before it.
struct FileWriter {
    to_writer: tokio::sync::mpsc::Sender<ToWriter>,
    empty: std::sync::mpsc::Receiver<Vec<u8>>,
    len: usize,
    durable: tokio::sync::mpsc::UnboundedReceiver<std::io::Result<u64>>,
    thread: tokio::task::JoinHandle<Written>,
}

impl FileWriter {
    /// Starts writing `file` (positioned at `offset`, `hasher` covering the bytes before it)
    /// from buffers of `len` bytes.
    fn start(file: std::fs::File, hasher: blake3::Hasher, offset: u64, len: usize) -> FileWriter {
        let (to_writer, mut from_task) = tokio::sync::mpsc::channel(BUFFERS_IN_FLIGHT);
        let (empty_tx, empty) = std::sync::mpsc::channel::<Vec<u8>>();
        let (durable_tx, durable) = tokio::sync::mpsc::unbounded_channel();
        let thread = tokio::task::spawn_blocking(move || {
            let mut w = Written {
                file,
                hasher,
                len: offset,
                error: None,
            };
            // Started at the first checkpoint: small files never need it.
            let mut syncer: Option<(std::sync::mpsc::Sender<u64>, std::thread::JoinHandle<()>)> =
                None;
            // The bytes before `offset` were durable when this attempt began.
            let progress = SharedSyncProgress::default();
            if let Ok(mut p) = progress.0.lock() {
                p.durable = offset;
            }
            while let Some(msg) = from_task.blocking_recv() {
                match msg {
                    ToWriter::Data(buf) => {
                        if let Some((to_syncer, _)) = &syncer {
                            wait_for_sync(&progress, to_syncer, w.len);
                        }
                        if let Err(e) = std::io::Write::write_all(&mut w.file, &buf) {
                            w.error = Some(e);
                            break;
                        }
                        w.hasher.update(&buf);
                        w.len += buf.len() as u64;
                        let _ = empty_tx.send(buf);
                    }
                    ToWriter::Sync => {
                        if syncer.is_none() {
                            match w.file.try_clone() {
                                Ok(f) => {
                                    syncer =
                                        Some(start_syncer(f, durable_tx.clone(), progress.clone()))
                                }
                                Err(e) => {
                                    let _ = durable_tx.send(Err(e));
                                    continue;
                                }
                            }
                        }
                        if let Some((to_syncer, _)) = &syncer {
                            let _ = to_syncer.send(w.len);
                        }
                    }
                }
            }
            if let Some((to_syncer, thread)) = syncer {
                drop(to_syncer);
                let _ = thread.join();
            }
            w
        });
        FileWriter {
            to_writer,
            empty,
            len,
            durable,
            thread,
        }
    }

    /// An empty buffer of the transfer's size: a recycled one if the writer has one back (the
    /// bounded queue keeps the number in flight small either way).
    fn buffer(&mut self) -> Vec<u8> {
        let mut buf = self.empty.try_recv().unwrap_or_default();
        buf.resize(self.len, 0);
        buf
    }

    /// Queues `buf` for writing; false if the writer stopped (a write failed).
    async fn write(&mut self, buf: Vec<u8>) -> bool {
        self.to_writer.send(ToWriter::Data(buf)).await.is_ok()
    }

    /// Asks for the bytes written so far to be made durable; [`FileWriter::durable`] reports
    /// them once they are.
    async fn request_sync(&mut self) {
        let _ = self.to_writer.send(ToWriter::Sync).await;
    }

    /// The highest offset made durable since the last call, if any (never blocks).
    fn durable(&mut self) -> std::io::Result<Option<u64>> {
        let mut at = None;
        while let Ok(reported) = self.durable.try_recv() {
            at = Some(reported?);
        }
        Ok(at)
    }

    /// Writes what is queued and ends the thread.
    async fn finish(self) -> std::io::Result<Written> {
        drop(self.to_writer);
        self.thread.await.map_err(std::io::Error::other)
    }
}

/// Blocks the writer while it is more than [`MAX_UNSYNCED`] bytes ahead of the durable offset,
/// after asking the syncer for a sync of everything written (`written` bytes).
fn wait_for_sync(
    progress: &SharedSyncProgress,
    to_syncer: &std::sync::mpsc::Sender<u64>,
    written: u64,
) {
    let (state, changed) = &**progress;
    let Ok(mut p) = state.lock() else { return };
    if p.ended || written.saturating_sub(p.durable) <= MAX_UNSYNCED {
        return;
    }
    let _ = to_syncer.send(written);
    while !p.ended && written.saturating_sub(p.durable) > MAX_UNSYNCED {
        p = match changed.wait(p) {
            Ok(p) => p,
            Err(_) => return,
        };
    }
}

/// The fsync thread of a [`FileWriter`]: syncs the file whenever asked (coalescing requests
/// that queued up meanwhile) and reports the offset that is now durable, to the network task
/// (for the checkpoint) and to the writer (see [`wait_for_sync`]).
fn start_syncer(
    file: std::fs::File,
    report: tokio::sync::mpsc::UnboundedSender<std::io::Result<u64>>,
    progress: SharedSyncProgress,
) -> (std::sync::mpsc::Sender<u64>, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let thread = std::thread::spawn(move || {
        let publish = |durable: Option<u64>, ended: bool| {
            let (state, changed) = &*progress;
            if let Ok(mut p) = state.lock() {
                if let Some(at) = durable {
                    p.durable = p.durable.max(at);
                }
                p.ended |= ended;
            }
            changed.notify_all();
        };
        while let Ok(mut at) = rx.recv() {
            while let Ok(later) = rx.try_recv() {
                at = later;
            }
            let synced = file.sync_data().map(|()| at);
            let failed = synced.is_err();
            publish(synced.as_ref().ok().copied(), failed);
            if report.send(synced).is_err() || failed {
                break;
            }
        }
        publish(None, true);
    });
    (tx, thread)
}

/// SHA-256 of a whole local file, on a blocking thread.
async fn sha256_of(path: std::path::PathBuf) -> std::io::Result<[u8; 32]> {
    tokio::task::spawn_blocking(move || {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        std::io::copy(&mut std::fs::File::open(&path)?, &mut hasher)?;
        Ok(hasher.finalize().into())
    })
    .await
    .map_err(std::io::Error::other)?
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

    fn patterned(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn the_reader_hands_over_every_byte_in_order_and_hashes_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = patterned(3 * CHUNK + 12345);
        std::fs::write(&path, &data).unwrap();
        for offset in [0u64, 1, CHUNK as u64 + 7] {
            let mut reader = FileReader::start(path.clone(), offset, CHUNK);
            let mut got = Vec::new();
            while let Some(buf) = reader.next().await {
                let buf = buf.unwrap();
                got.extend_from_slice(&buf);
                reader.recycle(buf);
            }
            assert_eq!(got, data[offset as usize..]);
            let end = reader.finish().await.unwrap();
            assert_eq!(
                end.hasher.finalize(),
                blake3::hash(&data),
                "offset {offset}"
            );
            let meta = std::fs::metadata(&path).unwrap();
            assert_eq!(end.size, meta.len());
            assert_eq!(end.mtime, system_time_ns(meta.modified().unwrap()));
        }
    }

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

    #[tokio::test]
    async fn the_reader_reports_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut reader = FileReader::start(dir.path().join("missing"), 0, CHUNK);
        let first = reader.next().await.unwrap();
        assert_eq!(first.unwrap_err().kind(), std::io::ErrorKind::NotFound);
        assert!(reader.next().await.is_none());
        assert!(reader.finish().await.is_err());
    }

    #[tokio::test]
    async fn the_writer_reports_only_synced_offsets_and_hashes_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = patterned(5 * CHUNK + 99);
        // Resume after the first 1000 bytes, as a download does.
        std::fs::write(&path, &data[..1000]).unwrap();
        let (hasher, file) = open_at(&path, 1000, true).unwrap();
        let mut writer = FileWriter::start(file, hasher, 1000, CHUNK);
        let mut durable = Vec::new();
        let mut sent = 1000u64;
        for piece in data[1000..].chunks(CHUNK) {
            let mut buf = writer.buffer();
            buf[..piece.len()].copy_from_slice(piece);
            buf.truncate(piece.len());
            assert!(writer.write(buf).await);
            sent += piece.len() as u64;
            writer.request_sync().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
            if let Some(at) = writer.durable().unwrap() {
                assert!(at <= sent, "{at} reported durable, only {sent} sent");
                durable.push(at);
            }
        }
        let written = writer.finish().await.unwrap();
        assert!(written.error.is_none());
        assert_eq!(written.len, data.len() as u64);
        assert_eq!(written.hasher.finalize(), blake3::hash(&data));
        assert!(
            !durable.is_empty(),
            "no checkpoint was ever reported durable"
        );
        assert!(durable.windows(2).all(|w| w[0] <= w[1]), "{durable:?}");
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }
}
