//! The file side of a transfer: the threads that read an upload's source and write a
//! download's temporary file (hashing as they go, and fsyncing for checkpoints), and the
//! blocking helpers they share.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use crate::model::snapshot::system_time_ns;

/// BLAKE3 state over the first `len` bytes of an open file (the part a resumed transfer
/// keeps), read from its start.
fn hash_prefix(mut f: &std::fs::File, len: u64) -> std::io::Result<blake3::Hasher> {
    let mut hasher = blake3::Hasher::new();
    f.seek(SeekFrom::Start(0))?;
    let copied = std::io::copy(&mut f.take(len), &mut hasher)?;
    if copied != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("expected {len} bytes, found {copied}"),
        ));
    }
    Ok(hasher)
}

/// Positions an open file at `offset`, with the BLAKE3 state of the bytes before it (call it
/// on a blocking thread). The file was opened beneath the job's root (see
/// [`super::beneath::Dir`]): for an upload its source, for a download its temporary file,
/// which the caller has cut to `offset`.
pub(super) fn resume_at(
    mut f: std::fs::File,
    offset: u64,
) -> std::io::Result<(blake3::Hasher, std::fs::File)> {
    let hasher = if offset > 0 {
        hash_prefix(&f, offset)?
    } else {
        blake3::Hasher::new()
    };
    f.seek(SeekFrom::Start(offset))?;
    Ok((hasher, f))
}

/// Why an upload's source, opened again for the transfer, is not the file the scan saw (see
/// [`opened_as_scanned`]); carried inside the `io::Error` a [`FileReader`] reports.
#[derive(Debug)]
pub(super) struct NotAsScanned(pub(super) String);

impl std::fmt::Display for NotAsScanned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotAsScanned {}

/// Opens the upload source `rel` beneath the job's `root` (no link followed, a regular file
/// only, see [`super::beneath::Dir::open_file`]) and checks that the descriptor is the file the
/// scan saw: the same device and inode (where the scan recorded them), size and mtime. So a file
/// swapped since the scan, for a link to a secret with the same size and mtime say, is never
/// read, let alone sent.
pub(super) fn opened_as_scanned(
    root: &std::path::Path,
    rel: &str,
    scanned: &crate::model::snapshot::Entry,
) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    let (dir, name) = super::beneath::Dir::parent_of(root, rel)?;
    let file = dir.open_file(name)?;
    let meta = file.metadata()?;
    let mtime = meta.modified().map(system_time_ns).unwrap_or(0);
    let why = if scanned
        .id
        .is_some_and(|id| id.dev != meta.dev() || id.ino != meta.ino())
    {
        Some("another file is in its place".to_string())
    } else if meta.len() != scanned.size {
        Some(format!(
            "{} bytes, the scan saw {}",
            meta.len(),
            scanned.size
        ))
    } else if mtime != scanned.mtime {
        Some("modified since".to_string())
    } else {
        None
    };
    match why {
        Some(why) => Err(std::io::Error::other(NotAsScanned(why))),
        None => Ok(file),
    }
}

/// Buffers in flight between the network task and a file thread, each way: enough to keep
/// both busy, little memory (4 x 256 KiB per transfer).
const BUFFERS_IN_FLIGHT: usize = 4;

/// The source of an upload, read on a thread of its own that also hashes every buffer before
/// handing it to the network task. A profile of a 200 MiB upload showed the network task
/// spending a third of its time outside TLS: tokio::fs's hop to the blocking pool and extra
/// copy per read, and BLAKE3 inline. Here reading and hashing overlap with encryption and the
/// socket, so on two cores they cost almost no wall time. The hash still covers exactly the
/// bytes handed over, in order, from the first byte of the file (see [`resume_at`]).
pub(super) struct FileReader {
    full: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    empty: std::sync::mpsc::Sender<Vec<u8>>,
    thread: tokio::task::JoinHandle<Option<ReadToEnd>>,
}

/// What a [`FileReader`] knows once it read its file to the end.
pub(super) struct ReadToEnd {
    /// BLAKE3 over every byte of the file, from its first.
    pub(super) hasher: blake3::Hasher,
    /// The file that was read (for a second read, such as a SHA-256 to compare with the
    /// server's).
    pub(super) file: std::fs::File,
    /// The open file's size and mtime (ns) after the last read: the scan's, unless the file was
    /// written to since.
    pub(super) size: u64,
    pub(super) mtime: i64,
}

impl FileReader {
    /// Opens the file with `open` (beneath the job's root, checked against the scan), positions
    /// it at `offset` (hashing the bytes before it) and starts reading ahead in buffers of `len`
    /// bytes. An error of `open` is the first thing [`FileReader::next`] returns.
    pub(super) fn start(
        open: impl FnOnce() -> std::io::Result<std::fs::File> + Send + 'static,
        offset: u64,
        len: usize,
    ) -> FileReader {
        let (full_tx, full) = tokio::sync::mpsc::channel(BUFFERS_IN_FLIGHT);
        let (empty, empty_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let thread = tokio::task::spawn_blocking(move || {
            let (mut hasher, mut file) = match open().and_then(|f| resume_at(f, offset)) {
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
                                file,
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
    pub(super) async fn next(&mut self) -> Option<std::io::Result<Vec<u8>>> {
        self.full.recv().await
    }

    /// Hands a sent buffer back for reuse.
    pub(super) fn recycle(&self, buf: Vec<u8>) {
        let _ = self.empty.send(buf);
    }

    /// The BLAKE3 state over every byte read and the file's state at the end, once
    /// [`FileReader::next`] returned `None`.
    pub(super) async fn finish(self) -> std::io::Result<ReadToEnd> {
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
pub(super) struct Written {
    pub(super) file: std::fs::File,
    pub(super) hasher: blake3::Hasher,
    /// Bytes in the file, from its start (the resumed part included).
    pub(super) len: u64,
    /// A write failed (a full disk): everything before it is in `len`.
    pub(super) error: Option<std::io::Error>,
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
pub(super) struct FileWriter {
    to_writer: tokio::sync::mpsc::Sender<ToWriter>,
    empty: std::sync::mpsc::Receiver<Vec<u8>>,
    len: usize,
    durable: tokio::sync::mpsc::UnboundedReceiver<std::io::Result<u64>>,
    thread: tokio::task::JoinHandle<Written>,
}

impl FileWriter {
    /// Starts writing `file` (positioned at `offset`, `hasher` covering the bytes before it)
    /// from buffers of `len` bytes.
    pub(super) fn start(
        file: std::fs::File,
        hasher: blake3::Hasher,
        offset: u64,
        len: usize,
    ) -> FileWriter {
        let (to_writer, from_task) = tokio::sync::mpsc::channel(BUFFERS_IN_FLIGHT);
        let (empty_tx, empty) = std::sync::mpsc::channel::<Vec<u8>>();
        let (durable_tx, durable) = tokio::sync::mpsc::unbounded_channel();
        let thread = tokio::task::spawn_blocking(move || {
            let w = Written {
                file,
                hasher,
                len: offset,
                error: None,
            };
            write_file(w, from_task, empty_tx, durable_tx)
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
    pub(super) fn buffer(&mut self) -> Vec<u8> {
        let mut buf = self.empty.try_recv().unwrap_or_default();
        buf.resize(self.len, 0);
        buf
    }

    /// Queues `buf` for writing; false if the writer stopped (a write failed).
    pub(super) async fn write(&mut self, buf: Vec<u8>) -> bool {
        self.to_writer.send(ToWriter::Data(buf)).await.is_ok()
    }

    /// Asks for the bytes written so far to be made durable; [`FileWriter::durable`] reports
    /// them once they are.
    pub(super) async fn request_sync(&mut self) {
        let _ = self.to_writer.send(ToWriter::Sync).await;
    }

    /// The highest offset made durable since the last call, if any (never blocks).
    pub(super) fn durable(&mut self) -> std::io::Result<Option<u64>> {
        let mut at = None;
        while let Ok(reported) = self.durable.try_recv() {
            at = Some(reported?);
        }
        Ok(at)
    }

    /// Writes what is queued and ends the thread.
    pub(super) async fn finish(self) -> std::io::Result<Written> {
        drop(self.to_writer);
        self.thread.await.map_err(std::io::Error::other)
    }
}

/// The thread of a [`FileWriter`]: writes and hashes each buffer from the network task (handing
/// it back for reuse) and passes the sync requests of checkpoints on to the syncer, started at
/// the first; ends with the transfer or at the first failed write.
fn write_file(
    mut w: Written,
    mut from_task: tokio::sync::mpsc::Receiver<ToWriter>,
    empty_tx: std::sync::mpsc::Sender<Vec<u8>>,
    durable_tx: tokio::sync::mpsc::UnboundedSender<std::io::Result<u64>>,
) -> Written {
    // Started at the first checkpoint: small files never need it.
    let mut syncer: Option<(std::sync::mpsc::Sender<u64>, std::thread::JoinHandle<()>)> = None;
    // The bytes before the offset it starts at (`w.len`) were durable when this attempt began.
    let progress = SharedSyncProgress::default();
    if let Ok(mut p) = progress.0.lock() {
        p.durable = w.len;
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
                            syncer = Some(start_syncer(f, durable_tx.clone(), progress.clone()))
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

/// SHA-256 of the whole of an open local file (read from its start), on a blocking thread.
pub(super) async fn sha256_of(file: &std::fs::File) -> std::io::Result<[u8; 32]> {
    let mut file = file.try_clone()?;
    tokio::task::spawn_blocking(move || {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        file.seek(SeekFrom::Start(0))?;
        std::io::copy(&mut file, &mut hasher)?;
        Ok(hasher.finalize().into())
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::transfer::CHUNK;
    use std::time::Duration;

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
            let p = path.clone();
            let mut reader = FileReader::start(move || std::fs::File::open(p), offset, CHUNK);
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

    #[tokio::test]
    async fn the_reader_reports_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing");
        let mut reader = FileReader::start(move || std::fs::File::open(p), 0, CHUNK);
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
        let f = std::fs::File::options()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let (hasher, file) = resume_at(f, 1000).unwrap();
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
        // On a busy machine an fsync can take longer than the pauses above: wait (boundedly)
        // for the last one to be reported.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while durable.last() != Some(&sent) && std::time::Instant::now() < deadline {
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
