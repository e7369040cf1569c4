//! What one side of a job looks like at one moment: the [`Entry`] type both scans produce and
//! the plan compares, and the rules for names that may cross from a server onto a local disk.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::model::paths::{join, split_parent};

/// Whether an entry is a regular file or a directory. Symbolic links are not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// One file or directory, keyed in a [`Snapshot`] by its `/`-separated path relative to the
/// job's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch (remote listings may only be
    /// precise to the second or the minute).
    pub mtime: i64,
    /// BLAKE3 of the content: never known for remote files; for local ones, known where the
    /// plan compares content or the file may still be changing, otherwise left to the transfer
    /// (see [`crate::model::plan::local_hash`]).
    pub hash: Option<blake3::Hash>,
    /// Which file on disk a local entry is (see [`FileId`]); `None` for remote entries and
    /// directories.
    pub id: Option<FileId>,
}

/// A local file's device and inode numbers as the scan saw them: an upload opens the file
/// again and sends it only if the descriptor it got is still that file (a file swapped since
/// the scan, for a link to a secret with the same size and mtime say, is not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl Entry {
    pub fn dir() -> Entry {
        Entry {
            kind: Kind::Dir,
            size: 0,
            mtime: 0,
            hash: None,
            id: None,
        }
    }
    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }
}

/// A whole tree, sorted so that a directory comes before everything inside it.
pub type Snapshot = BTreeMap<String, Entry>;

/// What a run found out about a file that both sides hold and the ledger has no row for (a lost
/// or moved state file, a tree copied by another tool): the facts the plan adopts it on, or
/// refuses to (see [`crate::model::plan::adoption`]). Gathered by the sync layer, strongest
/// first, and only as far as needed: a digest from the server, else the remote file's exact
/// time, else the remote file's bytes read and hashed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    /// The server's digest of the remote file and the local file's, of the same algorithm.
    pub digest: Option<DigestPair>,
    /// The remote file's modification time to the second (MLSD, MDTM), in nanoseconds; a LIST
    /// time (minute- or day-precise) is never put here.
    pub remote_exact_mtime: Option<i64>,
    /// The remote file's bytes as read in full (RETR), hashed with BLAKE3: how many were read,
    /// and their hash.
    pub remote_content: Option<(u64, blake3::Hash)>,
    /// Why a stronger kind of evidence could not be had (a refused HASH, an unreadable local
    /// file), for the conflict's text when none could.
    pub missing: Vec<String>,
}

/// One file's digest on both sides, of one algorithm (`SHA-256`, `SHA-1`, `MD5`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestPair {
    pub algorithm: &'static str,
    pub local: Vec<u8>,
    pub remote: Vec<u8>,
}

/// The evidence gathered in one run, by path.
pub type EvidenceMap = BTreeMap<String, Evidence>;

/// Why a name from a remote listing was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refusing remote entry {name:?} in {dir:?}: {reason}")]
pub struct HostileName {
    pub dir: String,
    pub name: String,
    pub reason: &'static str,
}

/// What a listed name that was not valid UTF-8 on the server looks like once decoded: listings
/// are decoded as lossy UTF-8, which puts U+FFFD where the bytes were invalid.
pub const NOT_UTF8_MARK: char = '\u{FFFD}';

/// Checks one name from a remote listing before it can become part of a local path.
///
/// A name with U+FFFD is refused: it almost always stands for bytes that were not valid UTF-8
/// on the server, and requesting the decoded name (RETR, DELE, RNFR) would name another file
/// or none, while the local copy would get a name the server never had. (A name that really
/// contains U+FFFD is refused too; it cannot be told apart here.)
pub fn check_remote_name(dir: &str, name: &str) -> Result<(), HostileName> {
    let reason = if name.is_empty() {
        Some("empty name")
    } else if name == "." || name == ".." {
        Some("`.` and `..` would leave the directory")
    } else if name.contains('/') || name.contains('\\') {
        Some("a path separator inside a name")
    } else if name.contains('\0') {
        Some("a NUL byte inside a name")
    } else if name.chars().any(|c| c == '\r' || c == '\n') {
        Some("a line break inside a name")
    } else if name.contains(NOT_UTF8_MARK) {
        Some("name is not valid UTF-8 on the server; ferrysync cannot request it by its exact name")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(HostileName {
            dir: dir.to_string(),
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Temporary names carry this marker so that scans skip them and a later run can find them.
pub const TEMP_MARKER: &str = ".ferrysync-part";

/// The temporary name a file is written under in its own directory before it is renamed.
pub fn temp_name(name: &str) -> String {
    format!(".{name}{TEMP_MARKER}")
}

pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(TEMP_MARKER)
}

/// The temporary path (relative to the job's root) of the file at `rel`.
pub fn temp_rel(rel: &str) -> String {
    let (parent, name) = split_parent(rel);
    join(parent, &temp_name(name))
}

/// The name a temporary file is for (`.a.csv.ferrysync-part` -> `a.csv`).
pub fn temp_owner(name: &str) -> Option<&str> {
    name.strip_prefix('.')?
        .strip_suffix(TEMP_MARKER)
        .filter(|n| !n.is_empty())
}

/// A file time as a snapshot holds it: nanoseconds since the Unix epoch (negative before it).
pub fn system_time_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused() {
        for bad in ["..", ".", "a/b", "..\\x", "a\0b", "", "x\ny"] {
            assert!(check_remote_name("d", bad).is_err(), "{bad:?}");
        }
        for ok in ["a b", "ünïcødé.csv", "...", "..x", ".hidden"] {
            assert!(check_remote_name("d", ok).is_ok(), "{ok:?}");
        }
        let e = check_remote_name("in", "../x").unwrap_err();
        assert!(e.to_string().contains("../x"));
    }

    #[test]
    fn names_that_were_not_utf8_on_the_server_are_refused() {
        // `caf\xe9.txt` (Latin-1) as a lossy UTF-8 listing decodes it.
        let listed = String::from_utf8_lossy(b"caf\xe9.txt").into_owned();
        let e = check_remote_name("/in", &listed).unwrap_err();
        assert_eq!(
            e.to_string(),
            "refusing remote entry \"caf\u{fffd}.txt\" in \"/in\": name is not valid UTF-8 on the server; ferrysync cannot request it by its exact name"
        );
        assert!(check_remote_name("/in", "café.txt").is_ok());
    }

    #[test]
    fn temp_names_round_trip() {
        assert!(is_temp_name(&temp_name("a.csv")));
        assert!(!is_temp_name("a.csv"));
        assert_eq!(temp_owner(&temp_name("a.csv")), Some("a.csv"));
        assert_eq!(temp_owner("a.csv"), None);
    }
}
