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

use crate::config::Job;
use crate::model::plan::SyncedEntry;
use crate::remote::error::FtpsError;
use crate::remote::session::Session;
use crate::state::ledger::JournalEntry;
use crate::state::SharedLedger;

pub(crate) mod beneath;
mod download;
mod file_io;
mod upload;

pub(crate) use download::download;
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
    /// The data connection carried more than the bytes expected (the listed size less the
    /// resume offset): a file still growing on the server, or a server that ignored REST and
    /// sent from byte 0. What arrived was discarded; the next attempt starts from byte 0.
    #[error("{path}: the server sent more than the {expected} bytes expected (the listed size less the {offset} bytes resumed from); what arrived was discarded")]
    Overrun {
        path: String,
        expected: u64,
        offset: u64,
    },
    /// What arrived is the expected length but is not the server's file (its SHA-256 after a
    /// resume differs): discarded; the next attempt starts from byte 0.
    #[error("{0}")]
    Discarded(String),
    #[error(transparent)]
    Ledger(#[from] crate::state::ledger::LedgerError),
    /// The server refused to create the temporary file (553, or 550 "permission denied"): a
    /// directory the user may not write to, or a server that forbids dot files (Pure-FTPd's
    /// `ProhibitDotFilesWrite`); the hint tells them apart by the reply where it can.
    #[error("{0} ({hint})", hint = crate::sync::error::temp_name_refused_hint(.0))]
    TempNameRefused(FtpsError),
    /// Stopped on request at a checkpoint; the journal lets the next run resume.
    #[error("{0}: stopped at a checkpoint on request")]
    Interrupted(String),
    /// The remote file changed while it was downloaded (`settle:`): its SIZE or MDTM after the
    /// download is not the listing's. Not renamed into place, its bytes dropped; not a failure:
    /// a later run takes it once it has settled.
    #[error("{path}: still changing: {why}; not taken, a later run takes it once it has settled")]
    StillChanging { path: String, why: String },
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
                | TransferError::Overrun { .. }
        )
    }

    /// Whether trying again (after a pause, on a fresh connection if needed) may succeed:
    /// dropped connections, timeouts and 4xx replies; not 5xx replies (530 login, 550
    /// permission, 553 name) nor local disk errors.
    pub fn is_transient(&self) -> bool {
        match self {
            TransferError::Ftps(e) => e.is_transient(),
            TransferError::Short { .. }
            | TransferError::Overrun { .. }
            | TransferError::Discarded(_) => true,
            _ => false,
        }
    }
}

/// Exact byte accounting of one download: the data connection must carry exactly the bytes
/// expected (the listed size less the offset it resumes from). Fewer is a short transfer
/// (kept, resumed next time); more means the bytes are not the listed file from that offset (it
/// grew, or the server ignored REST and sent from byte 0), so reading stops as soon as the
/// count passes the expected end and nothing beyond it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ByteAccount {
    expected: u64,
    received: u64,
}

/// What a [`ByteAccount`] says of a transfer whose data connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tally {
    Exact,
    Short { got: u64, expected: u64 },
    Over { expected: u64 },
}

impl ByteAccount {
    /// A transfer of a file listed at `size` bytes, resumed from `offset`.
    pub(crate) fn new(size: u64, offset: u64) -> Self {
        ByteAccount {
            expected: size.saturating_sub(offset),
            received: 0,
        }
    }

    /// Counts `n` more bytes off the wire; returns how many of them belong to the file (the
    /// ones before the expected end).
    pub(crate) fn take(&mut self, n: usize) -> usize {
        let room = self.expected.saturating_sub(self.received);
        self.received = self.received.saturating_add(n as u64);
        usize::try_from(room).map_or(n, |room| n.min(room))
    }

    /// Whether more than the expected bytes arrived: stop reading.
    pub(crate) fn overrun(&self) -> bool {
        self.received > self.expected
    }

    /// The verdict once the data connection ended.
    pub(crate) fn tally(&self) -> Tally {
        match self.received.cmp(&self.expected) {
            std::cmp::Ordering::Equal => Tally::Exact,
            std::cmp::Ordering::Less => Tally::Short {
                got: self.received,
                expected: self.expected,
            },
            std::cmp::Ordering::Greater => Tally::Over {
                expected: self.expected,
            },
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
    /// The server's reply that put the file in place (an upload's RNTO), for the audit record.
    pub reply: Option<String>,
}

/// What a transfer needs besides the connection.
pub struct TransferContext<'a> {
    pub job: &'a Job,
    pub ledger: &'a SharedLedger,
    pub counter: &'a ByteCounter,
    /// Turns true when the run must stop at the next checkpoint.
    pub stop: Option<&'a tokio::sync::watch::Receiver<bool>>,
    /// `bandwidth:`: the run's limiter, shared with the other workers (`None`: no limit).
    pub bandwidth: Option<&'a crate::sync::bandwidth::BandwidthLimiter>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_counts_exactly_the_bytes_expected_and_no_more() {
        // Resumed at 400 of 1000: 600 expected.
        let mut a = ByteAccount::new(1000, 400);
        assert_eq!(a.take(250), 250);
        assert_eq!(
            a.tally(),
            Tally::Short {
                got: 250,
                expected: 600
            }
        );
        assert_eq!(a.take(350), 350);
        assert!(!a.overrun());
        assert_eq!(a.tally(), Tally::Exact);
        // A server that ignored REST sends all 1000: the bytes past 600 are not kept, and
        // the transfer is over its length.
        let mut a = ByteAccount::new(1000, 400);
        assert_eq!(a.take(512), 512);
        assert_eq!(a.take(512), 88);
        assert!(a.overrun());
        assert_eq!(a.tally(), Tally::Over { expected: 600 });
        assert_eq!(a.take(512), 0, "nothing past the end is kept");
        // An empty file: any byte is one too many.
        let mut a = ByteAccount::new(0, 0);
        assert_eq!(a.tally(), Tally::Exact);
        assert_eq!(a.take(1), 0);
        assert!(a.overrun());
        // An endless stream stays bounded.
        let mut a = ByteAccount::new(10, 0);
        for _ in 0..1000 {
            a.take(usize::MAX);
        }
        assert!(a.overrun());
    }
}

/// What the unit tests of upload and download share.
#[cfg(test)]
mod test_support {
    use std::path::Path;

    use crate::config::Job;
    use crate::remote::session::Session;
    use crate::state::SharedLedger;

    /// A job against the in-process server (push, the default: a download needs only its
    /// paths), and a connection to it.
    pub(super) async fn loopback_job(dir: &Path) -> (Job, Session, SharedLedger) {
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
}
