//! The audit record: one row per file a run uploaded, downloaded, deleted, recorded or failed,
//! written in the same transaction as the ledger change it describes (see
//! `Ledger::commit_transfers`, `Ledger::commit_delete`, `Ledger::record`), so that the record
//! and the ledger cannot disagree after a crash.
//!
//! This module owns what is pure about it: the actions, the rows as the CLI prints them, the
//! key, and the chain. Each row of a job carries `hash = keyed BLAKE3(key, its content and the
//! previous row's hash)`; the first row of a job links to a genesis value derived from the key
//! and the job, or, once retention has pruned older rows, to the anchor that pruning left (the
//! last pruned row's hash, itself keyed). The key lives outside the database (a 0600 file beside
//! the ledger, or `$FERRYSYNC_AUDIT_KEY`), so whoever can write the database but not read the
//! key cannot edit, insert, delete or re-order a row without [`verify_chain`] seeing it. What it
//! cannot see without an external copy of the head hash: the newest rows cut off, or a job's
//! whole record (rows and anchor) removed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The environment variable naming the key file (default: the ledger's path + `.audit-key`).
pub const AUDIT_KEY_ENV: &str = "FERRYSYNC_AUDIT_KEY";

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// Sent to the server and renamed into place.
    Uploaded,
    /// Received from the server and renamed into place.
    Downloaded,
    /// Deleted on the destination (a mirror whose source no longer has it).
    Deleted,
    /// Recorded as synced without a transfer (both sides already agree: adopted, or only the
    /// metadata changed).
    Recorded,
    /// Dropped from the ledger: gone from both sides.
    Forgotten,
    /// The transfer or delete failed; `server_reply` holds the reason.
    Failed,
    /// The source file was moved into the archive after its transfer (`after_transfer:
    /// archive`); `server_reply` says where to (and the server's RNTO reply for a remote one).
    Archived,
    /// The source file was deleted after its transfer (`after_transfer: delete`).
    SourceDeleted,
}

impl AuditAction {
    /// The word the ledger stores and the CLI shows.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Uploaded => "uploaded",
            AuditAction::Downloaded => "downloaded",
            AuditAction::Deleted => "deleted",
            AuditAction::Recorded => "recorded",
            AuditAction::Forgotten => "forgotten",
            AuditAction::Failed => "failed",
            AuditAction::Archived => "archived",
            AuditAction::SourceDeleted => "source_deleted",
        }
    }
}

impl std::fmt::Display for AuditAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One file's change, as the code that committed it describes it.
#[derive(Debug, Clone)]
pub struct AuditEvent<'a> {
    pub path: &'a str,
    pub action: AuditAction,
    /// The file's size (not the bytes of this attempt: a resumed transfer moved fewer).
    pub bytes: u64,
    pub blake3: Option<blake3::Hash>,
    /// The server's reply that confirmed the change (the RNTO or DELE reply), or why it failed.
    pub reply: Option<&'a str>,
}

/// One stored row, as `history --files`, `audit export` and `audit verify` read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// The row's place in the ledger's audit table (increasing, shared by all jobs).
    pub seq: i64,
    pub run_id: Option<i64>,
    pub job: String,
    pub path: String,
    /// `uploaded`, `downloaded`, `deleted`, `recorded`, `forgotten`, `failed`, `archived` or
    /// `source_deleted`.
    pub action: String,
    pub bytes: u64,
    /// BLAKE3 (hex) of the file's content, where known.
    pub blake3: Option<String>,
    pub server_reply: Option<String>,
    /// Unix seconds (ISO 8601 UTC in JSON).
    #[serde(serialize_with = "serialize_iso")]
    pub at: i64,
    /// The previous row's hash (or the genesis or anchor value), hex.
    pub prev: String,
    /// This row's chain hash, hex.
    pub hash: String,
}

fn serialize_iso<S: serde::Serializer>(t: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&super::clock::iso_time(*t))
}

/// What retention pruning leaves of a job's oldest rows: the last pruned row's place and hash,
/// and a MAC over them, so the first row kept still links to something verifiable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditAnchor {
    pub job: String,
    pub seq: i64,
    pub hash: String,
    /// Rows pruned so far, in all.
    pub pruned: u64,
    pub at: i64,
    pub mac: String,
}

/// The key of the chain: 32 bytes, kept as 64 hex digits in its own file.
#[derive(Clone)]
pub struct AuditKey([u8; 32]);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(***)")
    }
}

impl AuditKey {
    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: [u8; 32]) -> AuditKey {
        AuditKey(bytes)
    }

    /// Reads the key at `path`; if there is none and `create`, makes one (random, mode 0600,
    /// created exclusively, so two processes starting together agree on one key).
    pub(crate) fn load(path: &Path, create: bool) -> Result<AuditKey, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => return Self::parse(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!(
                    "no audit key at {} (it is created by the first run that records a file; set {AUDIT_KEY_ENV} if it lives elsewhere)",
                    path.display()
                ))
            }
            Err(e) => return Err(format!("cannot read the audit key {}: {e}", path.display())),
        }
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|e| format!("cannot read random bytes for the audit key: {e}"))?;
        use std::os::unix::fs::OpenOptionsExt;
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        match created {
            Ok(mut f) => {
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                f.write_all(format!("{hex}\n").as_bytes())
                    .and_then(|_| f.sync_all())
                    .map_err(|e| format!("cannot write the audit key {}: {e}", path.display()))?;
                Ok(AuditKey(bytes))
            }
            // Another process made it first: use that one.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(path, false),
            Err(e) => Err(format!(
                "cannot create the audit key {}: {e}",
                path.display()
            )),
        }
    }

    fn parse(text: &str) -> Result<AuditKey, String> {
        let text = text.trim();
        if text.len() != 64 || !text.is_ascii() {
            return Err("the audit key is not 64 hex digits".into());
        }
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                .map_err(|_| "the audit key is not 64 hex digits".to_string())?;
        }
        Ok(AuditKey(bytes))
    }
}

/// Where the key of the ledger at `ledger` lives: `$FERRYSYNC_AUDIT_KEY`, or beside it.
pub fn key_path(ledger: &Path) -> PathBuf {
    match std::env::var_os(AUDIT_KEY_ENV).filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => {
            let mut name = ledger.as_os_str().to_owned();
            name.push(".audit-key");
            PathBuf::from(name)
        }
    }
}

/// Fields of a hashed message, each length-prefixed, so no two contents encode alike.
struct Message(Vec<u8>);

impl Message {
    fn new(domain: &str) -> Message {
        let mut m = Message(Vec::with_capacity(256));
        m.field(domain.as_bytes());
        m
    }
    fn field(&mut self, bytes: &[u8]) -> &mut Message {
        self.0
            .extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        self.0.extend_from_slice(bytes);
        self
    }
    fn opt(&mut self, s: Option<&str>) -> &mut Message {
        match s {
            None => self.field(b"\x00none"),
            Some(s) => self.field(format!("\x01{s}").as_bytes()),
        }
    }
    fn int(&mut self, n: i64) -> &mut Message {
        self.field(&n.to_le_bytes())
    }
    fn hash(&self, key: &AuditKey) -> String {
        blake3::keyed_hash(&key.0, &self.0).to_hex().to_string()
    }
}

/// The value the first row of `job` links to when nothing was pruned.
pub(crate) fn genesis(key: &AuditKey, job: &str) -> String {
    Message::new("ferrysync audit genesis v1")
        .field(job.as_bytes())
        .hash(key)
}

/// The chain hash of a row: its content and `prev`.
pub(crate) fn row_hash(key: &AuditKey, r: &AuditRecord) -> String {
    Message::new("ferrysync audit row v1")
        .int(r.seq)
        .opt(r.run_id.map(|id| id.to_string()).as_deref())
        .field(r.job.as_bytes())
        .field(r.path.as_bytes())
        .field(r.action.as_bytes())
        .int(r.bytes as i64)
        .opt(r.blake3.as_deref())
        .opt(r.server_reply.as_deref())
        .int(r.at)
        .field(r.prev.as_bytes())
        .hash(key)
}

/// The MAC of an anchor.
pub(crate) fn anchor_mac(key: &AuditKey, a: &AuditAnchor) -> String {
    Message::new("ferrysync audit anchor v1")
        .field(a.job.as_bytes())
        .int(a.seq)
        .field(a.hash.as_bytes())
        .int(a.pruned as i64)
        .int(a.at)
        .hash(key)
}

/// Why a chain does not verify, at the first row where it breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainBreak {
    /// The anchor pruning left was changed.
    AnchorEdited,
    /// The row's content or hash is not what the key makes of it: edited, or inserted
    /// without the key.
    Edited { seq: i64 },
    /// The row is intact but does not link to the row before it: a row between was
    /// deleted, or rows were re-ordered (or the anchor was removed).
    Unlinked { seq: i64 },
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainBreak::AnchorEdited => f.write_str("the retention anchor was edited"),
            ChainBreak::Edited { seq } => write!(
                f,
                "row {seq} was edited (or inserted without the key): its hash does not match its content"
            ),
            ChainBreak::Unlinked { seq } => write!(
                f,
                "row {seq} does not link to the row before it: a row before it was deleted, or rows were re-ordered"
            ),
        }
    }
}

/// The verdict on one job's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    pub job: String,
    /// Rows checked.
    pub rows: u64,
    /// Rows pruned by retention before the anchor.
    pub pruned: u64,
    /// The hash of the newest row (or of the anchor, or the genesis value, if none is left):
    /// what an operator copies elsewhere to detect a later truncation.
    pub head: String,
    /// The `seq` of the head row (the anchor's where no row is left; 0 for the genesis).
    pub head_seq: i64,
    pub first_break: Option<ChainBreak>,
}

/// What became of a head an operator noted earlier (`audit verify --head SEQ:HASH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadCheck {
    /// The row is there with that hash: nothing before it was cut.
    Found,
    /// Retention pruned it (it lies at or before the anchor): it can no longer be checked.
    Pruned,
    /// No row has that place any more, or it has another hash: rows were cut or replaced.
    Gone,
}

/// Walks one job's rows in `seq` order, from its anchor or genesis, one row at a time (a
/// job's record may hold millions of rows); remembers the first break.
pub(crate) struct ChainWalker<'k> {
    key: &'k AuditKey,
    expected: String,
    report: ChainReport,
}

impl<'k> ChainWalker<'k> {
    pub(crate) fn new(key: &'k AuditKey, job: &str, anchor: Option<&AuditAnchor>) -> Self {
        let mut report = ChainReport {
            job: job.to_string(),
            rows: 0,
            pruned: anchor.map_or(0, |a| a.pruned),
            head: String::new(),
            head_seq: anchor.map_or(0, |a| a.seq),
            first_break: None,
        };
        let expected = match anchor {
            Some(a) => {
                if anchor_mac(key, a) != a.mac || a.job != job {
                    report.first_break = Some(ChainBreak::AnchorEdited);
                }
                a.hash.clone()
            }
            None => genesis(key, job),
        };
        ChainWalker {
            key,
            expected,
            report,
        }
    }

    /// Checks the next row: its hash against its content, its link against the row before.
    pub(crate) fn check(&mut self, row: AuditRecord) {
        self.report.rows += 1;
        if self.report.first_break.is_none() {
            if row.job != self.report.job || row_hash(self.key, &row) != row.hash {
                self.report.first_break = Some(ChainBreak::Edited { seq: row.seq });
            } else if row.prev != self.expected {
                self.report.first_break = Some(ChainBreak::Unlinked { seq: row.seq });
            }
        }
        self.expected = row.hash;
        self.report.head_seq = row.seq;
    }

    pub(crate) fn finish(mut self) -> ChainReport {
        self.report.head = self.expected;
        self.report
    }
}

/// [`ChainWalker`] over a whole list, for the tests.
#[cfg(test)]
pub(crate) fn verify_chain(
    key: &AuditKey,
    job: &str,
    anchor: Option<&AuditAnchor>,
    rows: impl IntoIterator<Item = AuditRecord>,
) -> ChainReport {
    let mut walker = ChainWalker::new(key, job, anchor);
    for row in rows {
        walker.check(row);
    }
    walker.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AuditKey {
        AuditKey::from_bytes([7; 32])
    }

    fn chain(n: i64) -> Vec<AuditRecord> {
        let k = key();
        let mut prev = genesis(&k, "j");
        (1..=n)
            .map(|seq| {
                let mut r = AuditRecord {
                    seq,
                    run_id: Some(1),
                    job: "j".into(),
                    path: format!("f{seq}"),
                    action: "uploaded".into(),
                    bytes: seq as u64,
                    blake3: Some(blake3::hash(&[seq as u8]).to_hex().to_string()),
                    server_reply: Some("250 Rename successful.".into()),
                    at: 1_000 + seq,
                    prev: prev.clone(),
                    hash: String::new(),
                };
                r.hash = row_hash(&k, &r);
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies_and_its_head_is_the_newest_hash() {
        let rows = chain(3);
        let v = verify_chain(&key(), "j", None, rows.clone());
        assert_eq!(v.first_break, None);
        assert_eq!(v.rows, 3);
        assert_eq!(v.head, rows[2].hash);
        let other = verify_chain(&AuditKey::from_bytes([8; 32]), "j", None, rows);
        assert_eq!(other.first_break, Some(ChainBreak::Edited { seq: 1 }));
    }

    #[test]
    fn fields_cannot_run_into_each_other() {
        let mut a = chain(1).remove(0);
        let mut b = a.clone();
        a.path = "ab".into();
        a.action = "c".into();
        b.path = "a".into();
        b.action = "bc".into();
        assert_ne!(row_hash(&key(), &a), row_hash(&key(), &b));
        b.path = "ab".into();
        b.action = "c".into();
        b.server_reply = None;
        assert_ne!(row_hash(&key(), &a), row_hash(&key(), &b));
    }

    #[test]
    fn a_key_file_is_made_once_with_mode_0600_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db.audit-key");
        assert!(AuditKey::load(&path, false).is_err());
        let made = AuditKey::load(&path, true).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = AuditKey::load(&path, true).unwrap();
        assert_eq!(made.0, again.0);
        assert_eq!(format!("{made:?}"), "AuditKey(***)");
        std::fs::write(&path, "xyz").unwrap();
        assert!(AuditKey::load(&path, true).is_err());
    }
}
