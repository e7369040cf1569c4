//! The state ledger: one SQLite file (WAL) shared by the agent, `sync` and the read-only CLI
//! commands. It owns the schema and its migrations, the synced state of every path of every
//! job, and the history of runs. A path is written here only after its transfer is committed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::model::after::{AfterTransfer, SourceIntent};
use crate::model::baseline::{Baseline, BaselineChange, BaselineFile};
use crate::model::plan::{LedgerView, SyncedEntry};
use crate::model::scope::Scope;
use crate::model::settle::{Sighting, Sightings};
use crate::state::audit::{
    self, AuditAction, AuditAnchor, AuditEvent, AuditKey, AuditRecord, ChainReport, ChainWalker,
    HeadCheck,
};
use crate::state::clock::{iso_time, now_unix};

/// path, size, mtime, BLAKE3 (hex), remote size, remote mtime: one row of `entries`.
type EntryRow = (String, i64, i64, String, i64, Option<i64>);

/// path, action, archive folder, size, mtime, BLAKE3 (hex): one row of `source_intents`.
type IntentRow = (String, String, Option<String>, i64, i64, Option<String>);

fn journal_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JournalEntry> {
    Ok(JournalEntry {
        path: r.get(0)?,
        direction: r.get(1)?,
        temp_name: r.get(2)?,
        size: r.get::<_, i64>(3)? as u64,
        mtime: r.get(4)?,
        hash: r
            .get::<_, Option<String>>(5)?
            .and_then(|h| blake3::Hash::from_hex(h).ok()),
        offset: r.get::<_, i64>(6)? as u64,
    })
}

fn row_to_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<EntryRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("ledger {path}: cannot create its directory: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ledger {path}: schema version {found} is newer than this ferrysync understands ({known}); upgrade ferrysync")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("ledger {path}: bad stored value: {what}")]
    Corrupt { path: PathBuf, what: String },
    /// The audit record's key cannot be read or made.
    #[error("ledger {path}: {reason}")]
    AuditKey { path: PathBuf, reason: String },
}

/// Schema migrations; `PRAGMA user_version` is the number applied so far.
const MIGRATIONS: &[&str] = &[
    // 1: jobs, synced entries, runs, in-flight transfers.
    "CREATE TABLE jobs (
        name TEXT PRIMARY KEY,
        direction TEXT NOT NULL,
        local TEXT NOT NULL,
        remote TEXT NOT NULL,
        schedule TEXT,
        timezone TEXT,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE entries (
        job TEXT NOT NULL,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime INTEGER NOT NULL,
        blake3 TEXT NOT NULL,
        remote_size INTEGER NOT NULL,
        remote_mtime INTEGER,
        synced_at INTEGER NOT NULL,
        PRIMARY KEY (job, path)
    ) WITHOUT ROWID;
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        job TEXT NOT NULL,
        trigger TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        ended_at INTEGER,
        outcome TEXT NOT NULL,
        files_up INTEGER NOT NULL DEFAULT 0,
        bytes_up INTEGER NOT NULL DEFAULT 0,
        files_down INTEGER NOT NULL DEFAULT 0,
        bytes_down INTEGER NOT NULL DEFAULT 0,
        files_deleted INTEGER NOT NULL DEFAULT 0,
        files_failed INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        failures TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX runs_by_job ON runs (job, id);
    CREATE TABLE transfers (
        job TEXT NOT NULL,
        path TEXT NOT NULL,
        direction TEXT NOT NULL,
        temp_name TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime INTEGER NOT NULL,
        blake3 TEXT,
        offset INTEGER NOT NULL DEFAULT 0,
        started_at INTEGER NOT NULL,
        PRIMARY KEY (job, path)
    ) WITHOUT ROWID;",
    // 2 (agent): poll runs that found nothing to do are counted, not kept in the history.
    "ALTER TABLE jobs ADD COLUMN polls INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN last_poll_at INTEGER;",
    // 3: live progress of a running run, for `status`.
    "ALTER TABLE runs ADD COLUMN progress TEXT;",
    // 4: a full run reads the rows of one directory at a time (src/sync/walk.rs). `parent` is the
    // path up to its last `/` (`a/b/c` -> `a/b`, `c` -> ``), computed by SQLite, so every
    // writer of rows keeps it right; rtrim strips every character of the path but `/`.
    "ALTER TABLE entries ADD COLUMN parent TEXT
        GENERATED ALWAYS AS (rtrim(rtrim(path, replace(path, '/', '')), '/')) VIRTUAL;
    CREATE INDEX entries_by_parent ON entries (job, parent);",
    // 5 (audit): one row per file a run changed, chained per job with a keyed BLAKE3 (see
    // src/state/audit.rs); what retention pruned of a job is summed up by its anchor.
    "CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        run_id INTEGER,
        job TEXT NOT NULL,
        path TEXT NOT NULL,
        action TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        blake3 TEXT,
        server_reply TEXT,
        at INTEGER NOT NULL,
        prev TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX audit_by_job ON audit (job, seq);
    CREATE INDEX audit_by_run ON audit (run_id);
    CREATE TABLE audit_anchors (
        job TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        hash TEXT NOT NULL,
        pruned INTEGER NOT NULL,
        at INTEGER NOT NULL,
        mac TEXT NOT NULL
    );",
    // 6 (adopt): files a run recorded as synced on evidence, without a transfer (a lost state
    // file, a tree copied by another tool).
    "ALTER TABLE runs ADD COLUMN files_adopted INTEGER NOT NULL DEFAULT 0;",
    // 7 (ops): the job files the agent found invalid at its last load or reload, for `status`.
    // Replaced as a whole by each load; `kept_previous`: the agent still runs the job's last
    // valid version.
    "CREATE TABLE job_file_errors (
        file TEXT PRIMARY KEY,
        job TEXT NOT NULL,
        error TEXT NOT NULL,
        kept_previous INTEGER NOT NULL,
        seen_at INTEGER NOT NULL
    );",
    // 8 (settle): the first sighting of each remote file a pull is waiting on to stop
    // changing (`settle:`), so that a restart does not start the interval again. Replaced per
    // job by each full pull run.
    "CREATE TABLE settle_sightings (
        job TEXT NOT NULL,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime INTEGER NOT NULL,
        since INTEGER NOT NULL,
        PRIMARY KEY (job, path)
    );
    ALTER TABLE runs ADD COLUMN files_waiting INTEGER NOT NULL DEFAULT 0;",
    // 9 (baseline): `initial_files: skip`: the source files a job's first run found and left
    // alone, and when that baseline was taken (a job without a row has none yet).
    "CREATE TABLE baseline_files (
        job TEXT NOT NULL,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime INTEGER NOT NULL,
        PRIMARY KEY (job, path)
    );
    CREATE TABLE baselines (
        job TEXT PRIMARY KEY,
        taken_at INTEGER NOT NULL
    );",
    // 10 (metrics): a run's retries (attempts after a transient failure) and whether it fell back
    // from TLS 1.3 to TLS 1.2, for the Prometheus counters (src/agent/metrics.rs).
    "ALTER TABLE runs ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN tls_fallbacks INTEGER NOT NULL DEFAULT 0;",
    // 11 (notify): each job's health as last notified (`ok` | `failing`), so that alerts go
    // out on state changes only, across restarts; and the not-after of the certificates a
    // run met (the server's leaf, the job's client certificate), with the one last alerted
    // about, so that `certificate_expiring` goes out once per certificate.
    "CREATE TABLE notify_state (
        job TEXT PRIMARY KEY,
        health TEXT NOT NULL,
        since INTEGER NOT NULL
    );
    CREATE TABLE certificates (
        job TEXT NOT NULL,
        which TEXT NOT NULL,
        subject TEXT NOT NULL,
        not_after INTEGER NOT NULL,
        seen_at INTEGER NOT NULL,
        alerted_not_after INTEGER,
        PRIMARY KEY (job, which)
    );",
    // 12 (after_transfer): source files to delete or archive once their transfer is committed,
    // written in the transaction of that commit (so a crash between the two is completed by
    // the next run), as the source was when it was sent; dropped with the audit row of the
    // delete or archive. And the run's counts of both.
    "CREATE TABLE source_intents (
        job TEXT NOT NULL,
        path TEXT NOT NULL,
        action TEXT NOT NULL,
        archive_dir TEXT,
        size INTEGER NOT NULL,
        mtime INTEGER NOT NULL,
        blake3 TEXT,
        since INTEGER NOT NULL,
        PRIMARY KEY (job, path)
    ) WITHOUT ROWID;
    ALTER TABLE runs ADD COLUMN files_archived INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN files_source_deleted INTEGER NOT NULL DEFAULT 0;",
    // 13 (issue 16): what the last run measured of the job's link (see `state/link.rs`).
    "ALTER TABLE jobs ADD COLUMN rtt_us INTEGER;
    ALTER TABLE jobs ADD COLUMN login_us INTEGER;",
];

/// A certificate a run of a job met, and when it expires (the ledger's `certificates`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateExpiry {
    pub job: String,
    /// `server`: the leaf the server presented; `client`: `remote.tls.client_cert`.
    pub which: String,
    pub subject: String,
    /// Unix seconds (ISO 8601 UTC in JSON).
    #[serde(serialize_with = "serialize_iso")]
    pub not_after: i64,
    /// When a run last saw it (Unix seconds).
    #[serde(serialize_with = "serialize_iso")]
    pub seen_at: i64,
    /// The `not_after` of the certificate last alerted about (`certificate_expiring`).
    #[serde(skip)]
    pub alerted_not_after: Option<i64>,
}

/// A job file the agent could not load (recorded at its last load or SIGHUP reload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobFileError {
    pub file: String,
    /// The job name the file would define (its stem).
    pub job: String,
    /// `file:line:col: reason`.
    pub error: String,
    /// The agent still runs the job's last valid version (the file turned invalid on reload).
    pub kept_previous: bool,
}

/// How far a running run has got (null once it has ended).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RunProgress {
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// The files being transferred now.
    #[serde(default)]
    pub current: Vec<String>,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Running,
    Ok,
    /// The run finished but some paths failed.
    Partial,
    /// The run could not do its work (connection, refused plan, ...).
    Failed,
    /// Stopped on request (SIGTERM, Ctrl-C) at a checkpoint; the next run resumes.
    Interrupted,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Outcome {
    /// The word the ledger stores and `status` and `history` show.
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Ok => "ok",
            Outcome::Partial => "partial",
            Outcome::Failed => "failed",
            Outcome::Interrupted => "interrupted",
        }
    }
    fn parse(s: &str) -> Outcome {
        match s {
            "ok" => Outcome::Ok,
            "partial" => Outcome::Partial,
            "running" => Outcome::Running,
            "interrupted" => Outcome::Interrupted,
            _ => Outcome::Failed,
        }
    }
}

/// One path that failed in a run, with the reason (server reply included where there is one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PathFailure {
    pub path: String,
    pub error: String,
}

/// Counters of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunCounts {
    pub files_up: u64,
    pub bytes_up: u64,
    pub files_down: u64,
    pub bytes_down: u64,
    pub files_deleted: u64,
    pub files_failed: u64,
    /// Files both sides held and the ledger did not know, recorded as synced on evidence
    /// without a transfer (see `adopt:` in the README).
    pub files_adopted: u64,
    /// Remote files a pull left for a later run because they may still be changing
    /// (`settle:`): neither transferred nor failed.
    pub files_waiting: u64,
    /// Attempts made again after a transient failure (a connection, a listing, a transfer).
    pub retries: u64,
    /// 1 when the run's new connections moved from TLS 1.3 to TLS 1.2 (see "TLS session reuse
    /// and TLS 1.3" in the README), else 0.
    pub tls_fallbacks: u64,
    /// Source files moved into the archive after their transfer (`after_transfer: archive`).
    pub files_archived: u64,
    /// Source files deleted after their transfer (`after_transfer: delete`).
    pub files_source_deleted: u64,
}

impl RunCounts {
    /// Counts a committed transfer of `bytes` bytes the job's way.
    pub(crate) fn add_transferred(
        &mut self,
        direction: crate::model::policy::Direction,
        bytes: u64,
    ) {
        use crate::model::policy::Direction;
        match direction {
            Direction::Push => {
                self.files_up += 1;
                self.bytes_up += bytes;
            }
            Direction::Pull => {
                self.files_down += 1;
                self.bytes_down += bytes;
            }
        }
    }
}

/// A path as the path part of an SQLite `file:` URI.
fn uri_path(path: &Path) -> String {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    abs.to_string_lossy()
        .bytes()
        .map(|b| match b {
            b'?' | b'#' | b'%' | b' ' | 0x80..=0xff => format!("%{b:02X}"),
            _ => (b as char).to_string(),
        })
        .collect()
}

fn serialize_iso<S: serde::Serializer>(t: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&iso_time(*t))
}

fn serialize_iso_opt<S: serde::Serializer>(t: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&iso_time(*t)),
        None => s.serialize_none(),
    }
}

/// One row of the run history, as `history --json` and `status --json` print it.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub job: String,
    pub trigger: String,
    /// Unix seconds (ISO 8601 UTC in JSON).
    #[serde(serialize_with = "serialize_iso")]
    pub started_at: i64,
    #[serde(serialize_with = "serialize_iso_opt")]
    pub ended_at: Option<i64>,
    pub outcome: Outcome,
    #[serde(flatten)]
    pub counts: RunCounts,
    pub error: Option<String>,
    pub failures: Vec<PathFailure>,
    /// While the run is going: its transfers so far.
    pub progress: Option<RunProgress>,
}

/// A transfer in flight, as journaled before it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    pub path: String,
    /// `push` or `pull`.
    pub direction: String,
    /// The temporary name (in the target's directory) the bytes go to.
    pub temp_name: String,
    /// Size and mtime (ns) of the source when the transfer started.
    pub size: u64,
    pub mtime: i64,
    /// BLAKE3 of the source, where known (local sources).
    pub hash: Option<blake3::Hash>,
    /// Bytes confirmed on the destination at the last checkpoint.
    pub offset: u64,
}

/// What the ledger knows of a job's configuration, kept for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct JobRecord {
    pub name: String,
    pub direction: String,
    pub local: String,
    pub remote: String,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
}

impl JobRecord {
    /// The row of `job` in the ledger's table of jobs.
    pub(crate) fn of(job: &crate::config::Job) -> JobRecord {
        JobRecord {
            name: job.name.clone(),
            direction: job.direction.to_string(),
            local: job.local.display().to_string(),
            remote: format!("{}:{}{}", job.remote.host, job.remote.port, job.remote.path),
            schedule: job.schedule.as_ref().map(|s| s.expr.clone()),
            timezone: job.timezone.map(|t| t.name().to_string()),
        }
    }
}

pub struct Ledger {
    conn: Connection,
    path: PathBuf,
    /// The audit chain's key, read (or made) at the first audit write.
    audit_key: std::cell::OnceCell<AuditKey>,
    /// The run in progress of each job (from [`Ledger::begin_run`] to [`Ledger::finish_run`]),
    /// which the audit rows written meanwhile belong to.
    runs_now: std::cell::RefCell<std::collections::HashMap<String, i64>>,
}

impl Ledger {
    /// Opens (creating if needed) the ledger at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Ledger, LedgerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| LedgerError::Dir {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let conn = Connection::open(path).map_err(|source| LedgerError::Sqlite {
            path: path.to_path_buf(),
            source,
        })?;
        let mut ledger = Ledger {
            conn,
            path: path.to_path_buf(),
            audit_key: Default::default(),
            runs_now: Default::default(),
        };
        ledger.configure()?;
        ledger.migrate()?;
        Ok(ledger)
    }

    /// Opens an existing ledger for reading only (`status`, `history`): no file is created
    /// and nothing is written, so it works for any user who can read the ledger, also while
    /// the agent writes it. `None` if there is no ledger yet.
    pub fn open_read_only(path: &Path) -> Result<Option<Ledger>, LedgerError> {
        if !path.exists() {
            return Ok(None);
        }
        let read_only = |immutable: bool| -> Result<(Ledger, i64), LedgerError> {
            let err = |source| LedgerError::Sqlite {
                path: path.to_path_buf(),
                source,
            };
            let conn = if immutable {
                let uri = format!("file:{}?immutable=1", uri_path(path));
                Connection::open_with_flags(
                    uri,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_URI,
                )
                .map_err(err)?
            } else {
                Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                    .map_err(err)?
            };
            conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
            let ledger = Ledger {
                conn,
                path: path.to_path_buf(),
                audit_key: Default::default(),
                runs_now: Default::default(),
            };
            let version = ledger.schema_version()?;
            Ok((ledger, version))
        };
        // A reader without write access to the ledger's directory cannot create the WAL index
        // (-shm) that SQLite removes when the last writer closes. Then no writer is active and
        // the file holds every committed change, so it is read as an immutable snapshot.
        let wal = path.with_file_name(format!(
            "{}-wal",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        let (ledger, version) = match read_only(false) {
            Err(LedgerError::Sqlite { source, .. })
                if source.sqlite_error_code() == Some(rusqlite::ErrorCode::ReadOnly)
                    && !wal.exists() =>
            {
                read_only(true)?
            }
            other => other?,
        };
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(LedgerError::TooNew {
                path: path.to_path_buf(),
                found: version,
                known,
            });
        }
        if version < known {
            return Err(LedgerError::Corrupt {
                path: path.to_path_buf(),
                what: format!(
                    "schema version {version} is older than this ferrysync's ({known}); run `ferrysync sync` or the agent once to upgrade it"
                ),
            });
        }
        Ok(Some(ledger))
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> LedgerError + '_ {
        move |source| LedgerError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Every row `sql` selects with `params`, each made into a `T` by `row`.
    pub(super) fn query_rows<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, LedgerError> {
        let mut stmt = self.conn.prepare(sql).map_err(self.err())?;
        let rows = stmt.query_map(params, row).map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }

    /// Runs one statement that changes rows; returns how many.
    pub(super) fn execute(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<usize, LedgerError> {
        self.conn.execute(sql, params).map_err(self.err())
    }

    fn configure(&self) -> Result<(), LedgerError> {
        self.conn
            .busy_timeout(Duration::from_secs(10))
            .map_err(self.err())?;
        // WAL lets `status` read while a run writes; NORMAL is durable across process crashes.
        self.conn
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(self.err())?;
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(self.err())?;
        self.conn
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(self.err())
    }

    fn migrate(&mut self) -> Result<(), LedgerError> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(self.err())?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(LedgerError::TooNew {
                path: self.path.clone(),
                found: version,
                known,
            });
        }
        let path = self.path.clone();
        let err = move |source| LedgerError::Sqlite {
            path: path.clone(),
            source,
        };
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.conn.transaction().map_err(&err)?;
            tx.execute_batch(sql).map_err(&err)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(&err)?;
            tx.commit().map_err(&err)?;
        }
        Ok(())
    }

    pub(crate) fn schema_version(&self) -> Result<i64, LedgerError> {
        self.conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(self.err())
    }

    /// Remembers a job's identity and schedule for `status`.
    pub(crate) fn upsert_job(&self, job: &JobRecord) -> Result<(), LedgerError> {
        self.conn
            .execute(
                "INSERT INTO jobs (name, direction, local, remote, schedule, timezone, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(name) DO UPDATE SET direction = ?2, local = ?3, remote = ?4,
                    schedule = ?5, timezone = ?6, updated_at = ?7",
                params![
                    job.name,
                    job.direction,
                    job.local,
                    job.remote,
                    job.schedule,
                    job.timezone,
                    now_unix()
                ],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// Replaces the record of invalid job files with what the agent's latest load found.
    pub(crate) fn set_job_file_errors(
        &mut self,
        errors: &[JobFileError],
    ) -> Result<(), LedgerError> {
        let path = self.path.clone();
        let err = move |source| LedgerError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(&err)?;
        tx.execute("DELETE FROM job_file_errors", [])
            .map_err(&err)?;
        for e in errors {
            tx.execute(
                "INSERT OR REPLACE INTO job_file_errors (file, job, error, kept_previous, seen_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![e.file, e.job, e.error, e.kept_previous, now_unix()],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)
    }

    /// The first sightings of the remote files `job` is waiting on to settle.
    pub fn settle_sightings(&self, job: &str) -> Result<Sightings, LedgerError> {
        let rows = self.query_rows(
            "SELECT path, size, mtime, since FROM settle_sightings WHERE job = ?1",
            params![job],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Sighting {
                        size: r.get::<_, i64>(1)?.max(0) as u64,
                        mtime: r.get(2)?,
                        since: r.get(3)?,
                    },
                ))
            },
        )?;
        Ok(rows.into_iter().collect())
    }

    /// Replaces `job`'s sightings with `sightings` (what a full pull run still waits on).
    pub fn set_settle_sightings(
        &mut self,
        job: &str,
        sightings: &Sightings,
    ) -> Result<(), LedgerError> {
        let path = self.path.clone();
        let err = move |source| LedgerError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(&err)?;
        tx.execute("DELETE FROM settle_sightings WHERE job = ?1", params![job])
            .map_err(&err)?;
        for (p, s) in sightings {
            tx.execute(
                "INSERT INTO settle_sightings (job, path, size, mtime, since)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    job,
                    p,
                    i64::try_from(s.size).unwrap_or(i64::MAX),
                    s.mtime,
                    s.since
                ],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)
    }

    /// `job`'s baseline (`initial_files: skip`), or `None` when its first run has not taken
    /// one yet.
    pub fn baseline(&self, job: &str) -> Result<Option<Baseline>, LedgerError> {
        let taken: Option<i64> = self
            .conn
            .query_row(
                "SELECT taken_at FROM baselines WHERE job = ?1",
                params![job],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?;
        if taken.is_none() {
            return Ok(None);
        }
        let rows = self.query_rows(
            "SELECT path, size, mtime FROM baseline_files WHERE job = ?1",
            params![job],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    BaselineFile {
                        size: r.get::<_, i64>(1)?.max(0) as u64,
                        mtime: r.get(2)?,
                    },
                ))
            },
        )?;
        Ok(Some(rows.into_iter().collect()))
    }

    /// Applies what a run decided of `job`'s baseline, in one transaction; the first call also
    /// marks the baseline as taken (even with no file in it: an empty source at the first run
    /// makes every later file new).
    pub fn change_baseline(
        &mut self,
        job: &str,
        change: &BaselineChange,
    ) -> Result<(), LedgerError> {
        let path = self.path.clone();
        let err = move |source| LedgerError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(&err)?;
        tx.execute(
            "INSERT OR IGNORE INTO baselines (job, taken_at) VALUES (?1, ?2)",
            params![job, now_unix()],
        )
        .map_err(&err)?;
        for p in &change.drop {
            tx.execute(
                "DELETE FROM baseline_files WHERE job = ?1 AND path = ?2",
                params![job, p],
            )
            .map_err(&err)?;
        }
        for (p, f) in &change.add {
            tx.execute(
                "INSERT OR REPLACE INTO baseline_files (job, path, size, mtime)
                 VALUES (?1, ?2, ?3, ?4)",
                params![job, p, i64::try_from(f.size).unwrap_or(i64::MAX), f.mtime],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)
    }

    /// The job files the agent found invalid at its latest load, by file name.
    pub fn job_file_errors(&self) -> Result<Vec<JobFileError>, LedgerError> {
        self.query_rows(
            "SELECT file, job, error, kept_previous FROM job_file_errors ORDER BY file",
            [],
            |r| {
                Ok(JobFileError {
                    file: r.get(0)?,
                    job: r.get(1)?,
                    error: r.get(2)?,
                    kept_previous: r.get(3)?,
                })
            },
        )
    }

    pub fn jobs(&self) -> Result<Vec<JobRecord>, LedgerError> {
        self.query_rows(
            "SELECT name, direction, local, remote, schedule, timezone FROM jobs ORDER BY name",
            [],
            |r| {
                Ok(JobRecord {
                    name: r.get(0)?,
                    direction: r.get(1)?,
                    local: r.get(2)?,
                    remote: r.get(3)?,
                    schedule: r.get(4)?,
                    timezone: r.get(5)?,
                })
            },
        )
    }

    /// Every synced path of `job` (runs read the rows of one directory at a time: see
    /// [`Ledger::children`]).
    #[cfg(test)]
    pub(crate) fn entries(&self, job: &str) -> Result<LedgerView, LedgerError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT path, size, mtime, blake3, remote_size, remote_mtime FROM entries WHERE job = ?1",
            )
            .map_err(self.err())?;
        let rows = stmt.query_map([job], row_to_entry).map_err(self.err())?;
        let mut out = LedgerView::new();
        for row in rows {
            let (path, entry) = self.entry_of(job, row.map_err(self.err())?)?;
            out.insert(path, entry);
        }
        Ok(out)
    }

    /// The synced paths of `job` directly inside the directory `dir` (`""`: the job's root).
    pub(crate) fn children(&self, job: &str, dir: &str) -> Result<LedgerView, LedgerError> {
        // The planner does not pick the index of a generated column by itself.
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT path, size, mtime, blake3, remote_size, remote_mtime FROM entries
                 INDEXED BY entries_by_parent WHERE job = ?1 AND parent = ?2",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map(params![job, dir], row_to_entry)
            .map_err(self.err())?;
        let mut out = LedgerView::new();
        for row in rows {
            let (path, entry) = self.entry_of(job, row.map_err(self.err())?)?;
            out.insert(path, entry);
        }
        Ok(out)
    }

    /// Every directory of `job` that holds a synced path.
    pub(crate) fn parents(&self, job: &str) -> Result<Vec<String>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT DISTINCT parent FROM entries INDEXED BY entries_by_parent WHERE job = ?1",
            )
            .map_err(self.err())?;
        let rows = stmt.query_map([job], |r| r.get(0)).map_err(self.err())?;
        rows.collect::<Result<Vec<String>, _>>().map_err(self.err())
    }

    /// How many directories hold a synced path of `job` (the root counts as one): the width
    /// of the tree the last runs saw, before this run has listed any of it.
    pub(crate) fn directory_count(&self, job: &str) -> Result<usize, LedgerError> {
        self.conn
            .query_row(
                "SELECT COUNT(DISTINCT parent) FROM entries INDEXED BY entries_by_parent WHERE job = ?1",
                [job],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| usize::try_from(n).unwrap_or(0))
            .map_err(self.err())
    }

    /// The synced paths of `job` directly inside `dir`, without their records.
    pub(crate) fn paths_in(&self, job: &str, dir: &str) -> Result<Vec<String>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT path FROM entries INDEXED BY entries_by_parent WHERE job = ?1 AND parent = ?2",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([job, dir], |r| r.get(0))
            .map_err(self.err())?;
        rows.collect::<Result<Vec<String>, _>>().map_err(self.err())
    }

    /// The synced paths of `job` inside `scope` (each root and everything below it): what an
    /// incremental run needs, without reading the rows of the whole tree.
    pub(crate) fn entries_in(&self, job: &str, scope: &Scope) -> Result<LedgerView, LedgerError> {
        let mut out = LedgerView::new();
        for root in scope.roots() {
            // `path` is compared bytewise: everything below `root/` lies in [`root/`, `root0`).
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT path, size, mtime, blake3, remote_size, remote_mtime FROM entries
                     WHERE job = ?1 AND (path = ?2 OR (path >= ?2 || '/' AND path < ?2 || '0'))",
                )
                .map_err(self.err())?;
            let rows = stmt
                .query_map(params![job, root], row_to_entry)
                .map_err(self.err())?;
            for row in rows {
                let (path, entry) = self.entry_of(job, row.map_err(self.err())?)?;
                out.insert(path, entry);
            }
        }
        Ok(out)
    }

    fn entry_of(&self, job: &str, row: EntryRow) -> Result<(String, SyncedEntry), LedgerError> {
        let (path, size, mtime, hash, remote_size, remote_mtime) = row;
        let hash = blake3::Hash::from_hex(&hash).map_err(|_| LedgerError::Corrupt {
            path: self.path.clone(),
            what: format!("BLAKE3 of {job}:{path}"),
        })?;
        Ok((
            path,
            SyncedEntry {
                size: size as u64,
                mtime,
                hash,
                remote_size: remote_size as u64,
                remote_mtime,
            },
        ))
    }

    /// Runs one statement through the connection's statement cache: these run once per file,
    /// and parsing the SQL each time showed in profiles of small-file runs.
    fn exec_cached(&self, sql: &str, params: impl rusqlite::Params) -> Result<(), LedgerError> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut stmt| stmt.execute(params))
            .map(|_| ())
            .map_err(self.err())
    }

    /// Records a path as synced without a transfer (a ledger-only action). A new path (both
    /// sides already agree: adopted) or new content gets an audit row; a refresh of the
    /// metadata of content already recorded (a touched file, the server's mtime after an
    /// upload) does not, so the record lists changes of content only.
    pub(crate) fn record(&self, job: &str, path: &str, e: &SyncedEntry) -> Result<(), LedgerError> {
        self.atomic(|| {
            let known: Option<String> = self
                .conn
                .prepare_cached("SELECT blake3 FROM entries WHERE job = ?1 AND path = ?2")
                .and_then(|mut st| st.query_row(params![job, path], |r| r.get(0)).optional())
                .map_err(self.err())?;
            self.upsert_entry(job, path, e)?;
            if known.is_some_and(|h| h == e.hash.to_hex().as_str()) {
                return Ok(());
            }
            self.audit_append(
                job,
                &AuditEvent {
                    path,
                    action: AuditAction::Recorded,
                    bytes: e.size,
                    blake3: Some(e.hash),
                    reply: None,
                },
            )
        })
    }

    /// Writes the row of a synced path.
    fn upsert_entry(&self, job: &str, path: &str, e: &SyncedEntry) -> Result<(), LedgerError> {
        self.exec_cached(
                "INSERT INTO entries (job, path, size, mtime, blake3, remote_size, remote_mtime, synced_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(job, path) DO UPDATE SET size = ?3, mtime = ?4, blake3 = ?5,
                    remote_size = ?6, remote_mtime = ?7, synced_at = ?8",
                params![
                    job,
                    path,
                    e.size as i64,
                    e.mtime,
                    e.hash.to_hex().as_str(),
                    e.remote_size as i64,
                    e.remote_mtime,
                    now_unix()
                ],
        )
    }

    /// Drops a path gone from both sides, with its audit row.
    pub(crate) fn forget(&self, job: &str, path: &str) -> Result<(), LedgerError> {
        self.drop_entry(job, path, AuditAction::Forgotten, None)
    }

    /// A delete on the destination is done: the path's row goes, and the audit row says what
    /// was deleted (size and BLAKE3 as last synced) and the server's reply, in one transaction.
    pub(crate) fn commit_delete(
        &self,
        job: &str,
        path: &str,
        reply: Option<&str>,
    ) -> Result<(), LedgerError> {
        self.drop_entry(job, path, AuditAction::Deleted, reply)
    }

    fn drop_entry(
        &self,
        job: &str,
        path: &str,
        action: AuditAction,
        reply: Option<&str>,
    ) -> Result<(), LedgerError> {
        self.atomic(|| {
            let was: Option<(i64, String)> = self
                .conn
                .prepare_cached("SELECT size, blake3 FROM entries WHERE job = ?1 AND path = ?2")
                .and_then(|mut st| {
                    st.query_row(params![job, path], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(self.err())?;
            self.exec_cached(
                "DELETE FROM entries WHERE job = ?1 AND path = ?2",
                params![job, path],
            )?;
            let (bytes, hash) = match was {
                Some((size, hash)) => (size as u64, blake3::Hash::from_hex(hash).ok()),
                None => (0, None),
            };
            self.audit_append(
                job,
                &AuditEvent {
                    path,
                    action,
                    bytes,
                    blake3: hash,
                    reply,
                },
            )
        })
    }

    /// Runs `f` in a transaction of its own, or in the caller's where one is open (see
    /// [`Ledger::batch`]), so a ledger change and its audit row are written together.
    fn atomic<T>(&self, f: impl FnOnce() -> Result<T, LedgerError>) -> Result<T, LedgerError> {
        if !self.conn.is_autocommit() {
            return f();
        }
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(self.err())?;
        match f() {
            Ok(v) => {
                self.conn.execute_batch("COMMIT").map_err(self.err())?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    pub fn entry_count(&self, job: &str) -> Result<u64, LedgerError> {
        self.conn
            .query_row("SELECT count(*) FROM entries WHERE job = ?1", [job], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .map_err(self.err())
    }

    /// Starts a run in the history; its id is passed to [`Ledger::finish_run`].
    pub(crate) fn begin_run(&self, job: &str, trigger: &str) -> Result<i64, LedgerError> {
        self.conn
            .execute(
                "INSERT INTO runs (job, trigger, started_at, outcome) VALUES (?1, ?2, ?3, 'running')",
                params![job, trigger, now_unix()],
            )
            .map_err(self.err())?;
        let id = self.conn.last_insert_rowid();
        self.runs_now.borrow_mut().insert(job.to_string(), id);
        Ok(id)
    }

    pub(crate) fn finish_run(
        &self,
        id: i64,
        outcome: Outcome,
        counts: &RunCounts,
        error: Option<&str>,
        failures: &[PathFailure],
    ) -> Result<(), LedgerError> {
        let failures = serde_json::to_string(failures).unwrap_or_else(|_| "[]".to_string());
        self.runs_now.borrow_mut().retain(|_, run| *run != id);
        self.conn
            .execute(
                "UPDATE runs SET ended_at = ?2, outcome = ?3, files_up = ?4, bytes_up = ?5,
                    files_down = ?6, bytes_down = ?7, files_deleted = ?8, files_failed = ?9,
                    error = ?10, failures = ?11, progress = NULL, files_adopted = ?12,
                    files_waiting = ?13, retries = ?14, tls_fallbacks = ?15,
                    files_archived = ?16, files_source_deleted = ?17
                 WHERE id = ?1",
                params![
                    id,
                    now_unix(),
                    outcome.as_str(),
                    counts.files_up as i64,
                    counts.bytes_up as i64,
                    counts.files_down as i64,
                    counts.bytes_down as i64,
                    counts.files_deleted as i64,
                    counts.files_failed as i64,
                    error,
                    failures,
                    counts.files_adopted as i64,
                    counts.files_waiting as i64,
                    counts.retries as i64,
                    counts.tls_fallbacks as i64,
                    counts.files_archived as i64,
                    counts.files_source_deleted as i64
                ],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// Publishes the progress of a running run.
    pub(crate) fn set_progress(&self, id: i64, p: &RunProgress) -> Result<(), LedgerError> {
        let text = serde_json::to_string(p).unwrap_or_default();
        self.conn
            .execute(
                "UPDATE runs SET progress = ?2 WHERE id = ?1",
                params![id, text],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// The latest `limit` runs of `job`, newest first.
    pub fn runs(&self, job: &str, limit: usize) -> Result<Vec<RunRecord>, LedgerError> {
        self.runs_where(
            "job = ?1 ORDER BY id DESC LIMIT ?2",
            params![job, limit as i64],
        )
    }

    /// Run `id` of `job`, if there is one.
    pub fn run(&self, job: &str, id: i64) -> Result<Option<RunRecord>, LedgerError> {
        Ok(self
            .runs_where("job = ?1 AND id = ?2", params![job, id])?
            .pop())
    }

    fn runs_where(
        &self,
        condition: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<RunRecord>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT id, job, trigger, started_at, ended_at, outcome, files_up, bytes_up,
                        files_down, bytes_down, files_deleted, files_failed, error, failures, progress,
                        files_adopted, files_waiting, retries, tls_fallbacks,
                        files_archived, files_source_deleted
                 FROM runs WHERE {condition}"
            ))
            .map_err(self.err())?;
        let rows = stmt
            .query_map(args, |r| {
                let failures: String = r.get(13)?;
                Ok(RunRecord {
                    id: r.get(0)?,
                    job: r.get(1)?,
                    trigger: r.get(2)?,
                    started_at: r.get(3)?,
                    ended_at: r.get(4)?,
                    outcome: Outcome::parse(&r.get::<_, String>(5)?),
                    counts: RunCounts {
                        files_up: r.get::<_, i64>(6)? as u64,
                        bytes_up: r.get::<_, i64>(7)? as u64,
                        files_down: r.get::<_, i64>(8)? as u64,
                        bytes_down: r.get::<_, i64>(9)? as u64,
                        files_deleted: r.get::<_, i64>(10)? as u64,
                        files_failed: r.get::<_, i64>(11)? as u64,
                        files_adopted: r.get::<_, i64>(15)? as u64,
                        files_waiting: r.get::<_, i64>(16)? as u64,
                        retries: r.get::<_, i64>(17)? as u64,
                        tls_fallbacks: r.get::<_, i64>(18)? as u64,
                        files_archived: r.get::<_, i64>(19)? as u64,
                        files_source_deleted: r.get::<_, i64>(20)? as u64,
                    },
                    error: r.get(12)?,
                    failures: serde_json::from_str(&failures).unwrap_or_default(),
                    progress: r
                        .get::<_, Option<String>>(14)?
                        .and_then(|p| serde_json::from_str(&p).ok()),
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }

    /// The latest run that ended successfully, for "last success" in `status`.
    pub fn last_success(&self, job: &str) -> Result<Option<i64>, LedgerError> {
        self.conn
            .query_row(
                "SELECT max(ended_at) FROM runs WHERE job = ?1 AND outcome = 'ok'",
                [job],
                |r| r.get::<_, Option<i64>>(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(self.err())
    }

    /// Runs left `running` by a process that died are marked failed when the next one starts.
    pub(crate) fn close_abandoned_runs(&self, job: &str) -> Result<usize, LedgerError> {
        self.conn
            .execute(
                "UPDATE runs SET outcome = 'failed', error = 'the process running this job stopped before the run ended'
                 WHERE job = ?1 AND outcome = 'running'",
                [job],
            )
            .map_err(self.err())
    }

    #[cfg(test)]
    pub(crate) fn integrity_check(&self) -> Result<String, LedgerError> {
        self.conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(self.err())
    }

    /// Journals a transfer before its first byte moves, so that a later run can resume it.
    pub(crate) fn journal_begin(&self, job: &str, j: &JournalEntry) -> Result<(), LedgerError> {
        self.exec_cached(
                "INSERT INTO transfers (job, path, direction, temp_name, size, mtime, blake3, offset, started_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(job, path) DO UPDATE SET direction = ?3, temp_name = ?4, size = ?5,
                    mtime = ?6, blake3 = ?7, offset = ?8, started_at = ?9",
                params![
                    job,
                    j.path,
                    j.direction,
                    j.temp_name,
                    j.size as i64,
                    j.mtime,
                    j.hash.map(|h| h.to_hex().to_string()),
                    j.offset as i64,
                    now_unix()
                ],
        )
    }

    /// Records how many bytes of a journaled transfer are safely on the destination.
    pub(crate) fn journal_checkpoint(
        &self,
        job: &str,
        path: &str,
        offset: u64,
    ) -> Result<(), LedgerError> {
        self.exec_cached(
            "UPDATE transfers SET offset = ?3 WHERE job = ?1 AND path = ?2",
            params![job, path, offset as i64],
        )
    }

    pub(crate) fn journal_end(&self, job: &str, path: &str) -> Result<(), LedgerError> {
        self.exec_cached(
            "DELETE FROM transfers WHERE job = ?1 AND path = ?2",
            params![job, path],
        )
    }

    /// The journal entry of one path, if its transfer was started and not committed.
    pub(crate) fn journal_entry(
        &self,
        job: &str,
        path: &str,
    ) -> Result<Option<JournalEntry>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT path, direction, temp_name, size, mtime, blake3, offset FROM transfers WHERE job = ?1 AND path = ?2",
            )
            .map_err(self.err())?;
        let mut rows = stmt
            .query_map([job, path], journal_row)
            .map_err(self.err())?;
        rows.next().transpose().map_err(self.err())
    }

    /// The ledger file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Every transfer of `job` that was started and not committed.
    pub(crate) fn journal(&self, job: &str) -> Result<Vec<JournalEntry>, LedgerError> {
        self.query_rows(
            "SELECT path, direction, temp_name, size, mtime, blake3, offset FROM transfers WHERE job = ?1",
            [job],
            journal_row,
        )
    }

    /// A transfer is committed (renamed into place): its path is recorded, its audit row
    /// written and its journal entry dropped, in one transaction.
    pub(crate) fn commit_transfer(
        &mut self,
        job: &str,
        entry: &SyncedEntry,
        event: &AuditEvent<'_>,
    ) -> Result<(), LedgerError> {
        self.commit_transfers(job, std::iter::once((entry, event.clone())))
    }

    /// Several committed transfers in one transaction: all are recorded (each with its audit
    /// row), or none.
    pub(crate) fn commit_transfers<'a>(
        &mut self,
        job: &str,
        done: impl IntoIterator<Item = (&'a SyncedEntry, AuditEvent<'a>)>,
    ) -> Result<(), LedgerError> {
        self.commit_transfers_then(job, done, &[])
    }

    /// [`Ledger::commit_transfers`], and in the same transaction the intents to delete or
    /// archive their sources (`after_transfer:`): a source is never moved unless its
    /// transfer is recorded, and a recorded transfer's intent is never lost.
    pub(crate) fn commit_transfers_then<'a>(
        &mut self,
        job: &str,
        done: impl IntoIterator<Item = (&'a SyncedEntry, AuditEvent<'a>)>,
        intents: &[SourceIntent],
    ) -> Result<(), LedgerError> {
        self.batch(|l| {
            for (entry, event) in done {
                l.upsert_entry(job, event.path, entry)?;
                l.audit_append(job, &event)?;
                l.journal_end(job, event.path)?;
            }
            for i in intents {
                l.exec_cached(
                    "INSERT OR REPLACE INTO source_intents
                        (job, path, action, archive_dir, size, mtime, blake3, since)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        job,
                        i.path,
                        i.action.as_str(),
                        i.archive_dir,
                        i.size as i64,
                        i.mtime,
                        i.hash.map(|h| h.to_hex().to_string()),
                        now_unix()
                    ],
                )?;
            }
            Ok(())
        })
    }

    /// The sources of `job` waiting to be deleted or archived, oldest first.
    pub(crate) fn source_intents(&self, job: &str) -> Result<Vec<SourceIntent>, LedgerError> {
        let rows: Vec<IntentRow> = self.query_rows(
            "SELECT path, action, archive_dir, size, mtime, blake3 FROM source_intents
                 WHERE job = ?1 ORDER BY since, path",
            [job],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )?;
        rows.into_iter()
            .map(|(path, action, archive_dir, size, mtime, hash)| {
                let action = AfterTransfer::parse(&action).ok_or_else(|| LedgerError::Corrupt {
                    path: self.path.clone(),
                    what: format!("source_intents.action `{action}`"),
                })?;
                let hash = match hash {
                    Some(h) => {
                        Some(
                            blake3::Hash::from_hex(&h).map_err(|_| LedgerError::Corrupt {
                                path: self.path.clone(),
                                what: format!("source_intents.blake3 of {path}"),
                            })?,
                        )
                    }
                    None => None,
                };
                Ok(SourceIntent {
                    path,
                    action,
                    archive_dir,
                    size: size as u64,
                    mtime,
                    hash,
                })
            })
            .collect()
    }

    /// A source was deleted or archived (`event` says which, with where to): its intent is
    /// dropped and the audit row written, in one transaction.
    pub(crate) fn commit_source_done(
        &self,
        job: &str,
        event: &AuditEvent<'_>,
    ) -> Result<(), LedgerError> {
        self.atomic(|| {
            self.drop_source_intent(job, event.path)?;
            self.audit_append(job, event)
        })
    }

    /// Drops the intent of a source that is gone or changed since its transfer (it is kept,
    /// and a changed one is sent again).
    pub(crate) fn drop_source_intent(&self, job: &str, path: &str) -> Result<(), LedgerError> {
        self.exec_cached(
            "DELETE FROM source_intents WHERE job = ?1 AND path = ?2",
            params![job, path],
        )
    }

    /// Runs `f` inside one transaction, so a batch of ledger writes costs one commit.
    pub(crate) fn batch<T>(
        &mut self,
        f: impl FnOnce(&Ledger) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(self.err())?;
        match f(self) {
            Ok(v) => {
                self.conn.execute_batch("COMMIT").map_err(self.err())?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    // The agent (src/agent.rs).

    /// A `poll` run that changed nothing and failed nothing leaves no row in the history: if
    /// the newest run of `job` is one, it is removed and counted in `jobs.polls` (and
    /// `jobs.last_poll_at`) instead. Returns whether it was.
    pub(crate) fn fold_idle_poll(&mut self, job: &str) -> Result<bool, LedgerError> {
        self.batch(|l| {
            let idle: Option<(i64, i64)> = l
                .conn
                .query_row(
                    "SELECT id, started_at FROM runs
                     WHERE id = (SELECT max(id) FROM runs WHERE job = ?1)
                       AND trigger = 'poll' AND outcome = 'ok' AND files_up = 0
                       AND files_down = 0 AND files_deleted = 0 AND files_failed = 0
                       AND files_adopted = 0 AND files_waiting = 0
                       AND retries = 0 AND tls_fallbacks = 0
                       AND files_archived = 0 AND files_source_deleted = 0",
                    [job],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(l.err())?;
            let Some((id, started_at)) = idle else {
                return Ok(false);
            };
            l.conn
                .execute("DELETE FROM runs WHERE id = ?1", [id])
                .map_err(l.err())?;
            l.conn
                .execute(
                    "UPDATE jobs SET polls = polls + 1, last_poll_at = ?2 WHERE name = ?1",
                    params![job, started_at],
                )
                .map_err(l.err())?;
            Ok(true)
        })
    }

    // Notifications (src/sync/notify.rs).

    /// The health of `job` as last notified, if it was ever decided.
    pub fn notify_health(
        &self,
        job: &str,
    ) -> Result<Option<crate::model::notify::Health>, LedgerError> {
        let text: Option<String> = self
            .conn
            .query_row(
                "SELECT health FROM notify_state WHERE job = ?1",
                [job],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?;
        Ok(text.and_then(|t| crate::model::notify::Health::parse(&t)))
    }

    /// Remembers `job`'s health as notified (kept across restarts).
    pub(crate) fn set_notify_health(
        &self,
        job: &str,
        health: crate::model::notify::Health,
    ) -> Result<(), LedgerError> {
        self.conn
            .execute(
                "INSERT INTO notify_state (job, health, since) VALUES (?1, ?2, ?3)
                 ON CONFLICT(job) DO UPDATE SET since = CASE WHEN health = ?2 THEN since ELSE ?3 END,
                    health = ?2",
                params![job, health.as_str(), now_unix()],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// Records a certificate a run of `job` met (`which`: `server` or `client`); what was last
    /// alerted about is kept.
    pub(crate) fn record_certificate(
        &self,
        job: &str,
        which: &str,
        subject: &str,
        not_after: i64,
    ) -> Result<(), LedgerError> {
        self.conn
            .execute(
                "INSERT INTO certificates (job, which, subject, not_after, seen_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(job, which) DO UPDATE SET subject = ?3, not_after = ?4, seen_at = ?5",
                params![job, which, subject, not_after, now_unix()],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// The certificates `job`'s runs met (server first), with their expiry: for alerts, and
    /// for `ferrysync_tls_certificate_expiry_timestamp_seconds`.
    pub fn certificates(&self, job: &str) -> Result<Vec<CertificateExpiry>, LedgerError> {
        self.certificates_where("job = ?1", [job])
    }

    /// The certificates of every job, by job (server first).
    pub fn all_certificates(&self) -> Result<Vec<CertificateExpiry>, LedgerError> {
        self.certificates_where("1", [])
    }

    fn certificates_where(
        &self,
        condition: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<CertificateExpiry>, LedgerError> {
        self.query_rows(
            &format!(
                "SELECT job, which, subject, not_after, seen_at, alerted_not_after
                 FROM certificates WHERE {condition} ORDER BY job, which DESC"
            ),
            args,
            |r| {
                Ok(CertificateExpiry {
                    job: r.get(0)?,
                    which: r.get(1)?,
                    subject: r.get(2)?,
                    not_after: r.get(3)?,
                    seen_at: r.get(4)?,
                    alerted_not_after: r.get(5)?,
                })
            },
        )
    }

    /// Remembers that `certificate_expiring` went out for `job`'s `which` certificate expiring
    /// at `not_after`.
    pub(crate) fn mark_certificate_alerted(
        &self,
        job: &str,
        which: &str,
        not_after: i64,
    ) -> Result<(), LedgerError> {
        self.conn
            .execute(
                "UPDATE certificates SET alerted_not_after = ?3 WHERE job = ?1 AND which = ?2",
                params![job, which, not_after],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// How many files `job` downloaded in [from, to) (Unix seconds), from the audit record:
    /// what `expect:` counts.
    pub fn files_downloaded_between(
        &self,
        job: &str,
        from: i64,
        to: i64,
    ) -> Result<u64, LedgerError> {
        self.conn
            .query_row(
                "SELECT count(*) FROM audit WHERE job = ?1 AND action = 'downloaded' AND at >= ?2 AND at < ?3",
                params![job, from, to],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(self.err())
    }

    /// How many idle polls were folded by [`Ledger::fold_idle_poll`], and when the last began.
    #[cfg(test)]
    pub(crate) fn polls(&self, job: &str) -> Result<(u64, Option<i64>), LedgerError> {
        self.conn
            .query_row(
                "SELECT polls, last_poll_at FROM jobs WHERE name = ?1",
                [job],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Option<i64>>(1)?)),
            )
            .optional()
            .map(|o| o.unwrap_or((0, None)))
            .map_err(self.err())
    }
}

/// The columns of an audit row, in [`audit_row`]'s order.
const AUDIT_COLUMNS: &str =
    "seq, run_id, job, path, action, bytes, blake3, server_reply, at, prev, hash";

fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        seq: r.get(0)?,
        run_id: r.get(1)?,
        job: r.get(2)?,
        path: r.get(3)?,
        action: r.get(4)?,
        bytes: r.get::<_, i64>(5)? as u64,
        blake3: r.get(6)?,
        server_reply: r.get(7)?,
        at: r.get(8)?,
        prev: r.get(9)?,
        hash: r.get(10)?,
    })
}

/// Which audit rows a query reads.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter<'a> {
    pub job: Option<&'a str>,
    /// Rows written at or after this Unix second.
    pub since: Option<i64>,
    pub run_id: Option<i64>,
}

// The audit record (see src/state/audit.rs).
impl Ledger {
    /// The chain's key: read, or made on the first write (see [`audit::key_path`]).
    fn audit_key(&self, create: bool) -> Result<&AuditKey, LedgerError> {
        if let Some(k) = self.audit_key.get() {
            return Ok(k);
        }
        let path = audit::key_path(&self.path);
        let key = AuditKey::load(&path, create).map_err(|reason| LedgerError::AuditKey {
            path: self.path.clone(),
            reason,
        })?;
        Ok(self.audit_key.get_or_init(|| key))
    }

    /// Appends one audit row of `job`, linked to the job's newest row (or its anchor, or its
    /// genesis). Called inside the transaction of the change it records.
    pub(crate) fn audit_append(&self, job: &str, e: &AuditEvent<'_>) -> Result<(), LedgerError> {
        let key = self.audit_key(true)?;
        let prev: Option<String> = self
            .conn
            .prepare_cached("SELECT hash FROM audit WHERE job = ?1 ORDER BY seq DESC LIMIT 1")
            .and_then(|mut st| st.query_row([job], |r| r.get(0)).optional())
            .map_err(self.err())?;
        let prev = match prev {
            Some(p) => p,
            None => match self.audit_anchor(job)? {
                Some(a) => a.hash,
                None => audit::genesis(key, job),
            },
        };
        // After the newest row and anchor of every job, so a row never sorts before an anchor.
        let seq: i64 = self
            .conn
            .prepare_cached(
                "SELECT max(coalesce((SELECT max(seq) FROM audit), 0),
                            coalesce((SELECT max(seq) FROM audit_anchors), 0)) + 1",
            )
            .and_then(|mut st| st.query_row([], |r| r.get(0)))
            .map_err(self.err())?;
        let mut row = AuditRecord {
            seq,
            run_id: self.runs_now.borrow().get(job).copied(),
            job: job.to_string(),
            path: e.path.to_string(),
            action: e.action.as_str().to_string(),
            bytes: e.bytes,
            blake3: e.blake3.map(|h| h.to_hex().to_string()),
            server_reply: e.reply.map(str::to_string),
            at: now_unix(),
            prev,
            hash: String::new(),
        };
        row.hash = audit::row_hash(key, &row);
        self.exec_cached(
            "INSERT INTO audit (seq, run_id, job, path, action, bytes, blake3, server_reply, at, prev, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                row.seq,
                row.run_id,
                row.job,
                row.path,
                row.action,
                row.bytes as i64,
                row.blake3,
                row.server_reply,
                row.at,
                row.prev,
                row.hash
            ],
        )
    }

    /// Records a path whose transfer or delete failed, with the reason.
    pub(crate) fn audit_failure(
        &self,
        job: &str,
        path: &str,
        error: &str,
    ) -> Result<(), LedgerError> {
        self.atomic(|| {
            self.audit_append(
                job,
                &AuditEvent {
                    path,
                    action: AuditAction::Failed,
                    bytes: 0,
                    blake3: None,
                    reply: Some(error),
                },
            )
        })
    }

    fn audit_anchor(&self, job: &str) -> Result<Option<AuditAnchor>, LedgerError> {
        self.conn
            .prepare_cached(
                "SELECT job, seq, hash, pruned, at, mac FROM audit_anchors WHERE job = ?1",
            )
            .and_then(|mut st| {
                st.query_row([job], |r| {
                    Ok(AuditAnchor {
                        job: r.get(0)?,
                        seq: r.get(1)?,
                        hash: r.get(2)?,
                        pruned: r.get::<_, i64>(3)? as u64,
                        at: r.get(4)?,
                        mac: r.get(5)?,
                    })
                })
                .optional()
            })
            .map_err(self.err())
    }

    /// Retention: removes the audit rows of `job` written before `before` (Unix seconds), and
    /// moves the job's anchor to the last one removed, so the rows kept still verify. Returns
    /// how many rows went.
    pub(crate) fn prune_audit(&self, job: &str, before: i64) -> Result<u64, LedgerError> {
        self.atomic(|| {
            // Rows go oldest first and without gaps: everything up to the newest row that is
            // old enough (a clock set back cannot leave an old row stranded behind a new one).
            let last: Option<(i64, String)> = self
                .conn
                .query_row(
                    "SELECT seq, hash FROM audit WHERE job = ?1 AND at < ?2
                     ORDER BY seq DESC LIMIT 1",
                    params![job, before],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(self.err())?;
            let Some((seq, hash)) = last else {
                return Ok(0);
            };
            let removed = self
                .conn
                .execute(
                    "DELETE FROM audit WHERE job = ?1 AND seq <= ?2",
                    params![job, seq],
                )
                .map_err(self.err())? as u64;
            let key = self.audit_key(true)?;
            let earlier = self.audit_anchor(job)?.map_or(0, |a| a.pruned);
            let mut anchor = AuditAnchor {
                job: job.to_string(),
                seq,
                hash,
                pruned: earlier + removed,
                at: now_unix(),
                mac: String::new(),
            };
            anchor.mac = audit::anchor_mac(key, &anchor);
            self.conn
                .execute(
                    "INSERT INTO audit_anchors (job, seq, hash, pruned, at, mac)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT(job) DO UPDATE SET seq = ?2, hash = ?3, pruned = ?4, at = ?5, mac = ?6",
                    params![
                        anchor.job,
                        anchor.seq,
                        anchor.hash,
                        anchor.pruned as i64,
                        anchor.at,
                        anchor.mac
                    ],
                )
                .map_err(self.err())?;
            Ok(removed)
        })
    }

    /// Calls `each` with every audit row `filter` selects, oldest first.
    pub fn audit_rows(
        &self,
        filter: &AuditFilter<'_>,
        mut each: impl FnMut(AuditRecord),
    ) -> Result<(), LedgerError> {
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit
             WHERE (?1 IS NULL OR job = ?1) AND (?2 IS NULL OR at >= ?2) AND (?3 IS NULL OR run_id = ?3)
             ORDER BY seq"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(self.err())?;
        let rows = stmt
            .query_map(params![filter.job, filter.since, filter.run_id], audit_row)
            .map_err(self.err())?;
        for row in rows {
            each(row.map_err(self.err())?);
        }
        Ok(())
    }

    /// The audit rows of one run, oldest first.
    pub fn audit_of_run(&self, run_id: i64) -> Result<Vec<AuditRecord>, LedgerError> {
        let mut out = Vec::new();
        self.audit_rows(
            &AuditFilter {
                run_id: Some(run_id),
                ..Default::default()
            },
            |r| out.push(r),
        )?;
        Ok(out)
    }

    /// Whether the head `seq`:`hash` an operator noted earlier for `job` is still in its chain
    /// (see [`HeadCheck`]): a cut of the newest rows since then shows as `Gone`.
    pub fn check_head(&self, job: &str, seq: i64, hash: &str) -> Result<HeadCheck, LedgerError> {
        let stored: Option<String> = self
            .conn
            .query_row(
                "SELECT hash FROM audit WHERE job = ?1 AND seq = ?2",
                params![job, seq],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?;
        if let Some(stored) = stored {
            return Ok(match stored.eq_ignore_ascii_case(hash) {
                true => HeadCheck::Found,
                false => HeadCheck::Gone,
            });
        }
        Ok(match self.audit_anchor(job)? {
            Some(a) if a.seq == seq && a.hash.eq_ignore_ascii_case(hash) => HeadCheck::Found,
            Some(a) if seq <= a.seq => HeadCheck::Pruned,
            _ => HeadCheck::Gone,
        })
    }

    /// Walks the chain of each job (or of `job` only) with the key; reports each job's first
    /// break and head. The key must exist: verifying never makes one.
    pub fn verify_audit(&self, job: Option<&str>) -> Result<Vec<ChainReport>, LedgerError> {
        let key = self.audit_key(false)?;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT job FROM audit WHERE ?1 IS NULL OR job = ?1
                 UNION SELECT job FROM audit_anchors WHERE ?1 IS NULL OR job = ?1 ORDER BY 1",
            )
            .map_err(self.err())?;
        let jobs = stmt
            .query_map([job], |r| r.get::<_, String>(0))
            .map_err(self.err())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err())?;
        let mut reports = Vec::new();
        for name in jobs {
            let anchor = self.audit_anchor(&name)?;
            let mut walker = ChainWalker::new(key, &name, anchor.as_ref());
            self.audit_rows(
                &AuditFilter {
                    job: Some(&name),
                    ..Default::default()
                },
                |r| walker.check(r),
            )?;
            reports.push(walker.finish());
        }
        Ok(reports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8) -> SyncedEntry {
        SyncedEntry {
            size: u64::from(n),
            mtime: 1_700_000_000_000_000_000 + i64::from(n),
            hash: blake3::hash(&[n]),
            remote_size: u64::from(n),
            remote_mtime: if n.is_multiple_of(2) { Some(5) } else { None },
        }
    }

    fn uploaded<'a>(path: &'a str, e: &SyncedEntry) -> AuditEvent<'a> {
        AuditEvent {
            path,
            action: AuditAction::Uploaded,
            bytes: e.size,
            blake3: Some(e.hash),
            reply: Some("250 Rename successful."),
        }
    }

    /// `after_transfer:`: the intent is written with the transfer's commit (or not at all,
    /// when the commit fails), survives a reopen, and goes with the audit row of the archive.
    #[test]
    fn source_intents_are_written_with_the_commit_and_dropped_with_their_audit_row() {
        use crate::model::after::{AfterTransfer, SourceIntent};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let e = entry(3);
        let intent = SourceIntent {
            path: "d/a.csv".into(),
            action: AfterTransfer::Archive,
            archive_dir: Some("archive/2026/12".into()),
            size: e.size,
            mtime: e.mtime,
            hash: Some(e.hash),
        };
        {
            let mut l = Ledger::open(&path).unwrap();
            l.commit_transfers_then(
                "j",
                std::iter::once((&e, uploaded("d/a.csv", &e))),
                std::slice::from_ref(&intent),
            )
            .unwrap();
        }
        let l = Ledger::open(&path).unwrap();
        assert_eq!(
            l.source_intents("j").unwrap(),
            std::slice::from_ref(&intent)
        );
        assert!(l.source_intents("k").unwrap().is_empty());
        l.commit_source_done(
            "j",
            &AuditEvent {
                path: "d/a.csv",
                action: AuditAction::Archived,
                bytes: e.size,
                blake3: Some(e.hash),
                reply: Some("archived to archive/2026/12/d/a.csv"),
            },
        )
        .unwrap();
        assert!(l.source_intents("j").unwrap().is_empty());
        let mut actions = Vec::new();
        l.audit_rows(
            &AuditFilter {
                job: Some("j"),
                ..Default::default()
            },
            |r| actions.push(r.action),
        )
        .unwrap();
        assert_eq!(actions, ["uploaded", "archived"]);
        assert_eq!(
            l.entry_count("j").unwrap(),
            1,
            "the row of the delivery stays"
        );
    }

    #[test]
    fn a_baseline_is_taken_once_and_changed_row_by_row() {
        use crate::model::baseline::{BaselineChange, BaselineFile};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let f = |size| BaselineFile { size, mtime: 7 };
        {
            let mut l = Ledger::open(&path).unwrap();
            assert_eq!(l.baseline("j").unwrap(), None, "not taken yet");
            // An empty source at the first run: taken all the same.
            l.change_baseline("empty", &BaselineChange::default())
                .unwrap();
            assert_eq!(l.baseline("empty").unwrap(), Some(Baseline::new()));
            let first = BaselineChange {
                add: [("a".to_string(), f(1)), ("b".to_string(), f(2))].into(),
                ..BaselineChange::default()
            };
            l.change_baseline("j", &first).unwrap();
        }
        let mut l = Ledger::open(&path).unwrap();
        assert_eq!(l.baseline("j").unwrap().unwrap().len(), 2);
        l.change_baseline(
            "j",
            &BaselineChange {
                drop: vec!["a".to_string()],
                ..BaselineChange::default()
            },
        )
        .unwrap();
        assert_eq!(
            l.baseline("j").unwrap(),
            Some(Baseline::from([("b".to_string(), f(2))]))
        );
        assert_eq!(l.baseline("other").unwrap(), None);
    }

    #[test]
    fn notified_health_and_certificates_survive_a_reopen() {
        use crate::model::notify::Health;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.db");
        {
            let l = Ledger::open(&path).unwrap();
            assert_eq!(l.notify_health("j").unwrap(), None);
            l.set_notify_health("j", Health::Failing).unwrap();
            l.record_certificate("j", "server", "CN=s", 2_000).unwrap();
            l.record_certificate("j", "client", "CN=c", 1_000).unwrap();
            l.mark_certificate_alerted("j", "client", 1_000).unwrap();
            // A renewed certificate replaces its row.
            l.record_certificate("j", "server", "CN=s2", 3_000).unwrap();
        }
        let l = Ledger::open(&path).unwrap();
        assert_eq!(l.notify_health("j").unwrap(), Some(Health::Failing));
        let certs = l.certificates("j").unwrap();
        let got: Vec<(&str, &str, i64, Option<i64>)> = certs
            .iter()
            .map(|c| {
                (
                    c.which.as_str(),
                    c.subject.as_str(),
                    c.not_after,
                    c.alerted_not_after,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("server", "CN=s2", 3_000, None),
                ("client", "CN=c", 1_000, Some(1_000))
            ]
        );
        assert_eq!(l.all_certificates().unwrap().len(), 2);
        assert!(l.certificates("other").unwrap().is_empty());
        assert_eq!(l.files_downloaded_between("j", 0, i64::MAX).unwrap(), 0);
    }

    #[test]
    fn settle_sightings_survive_a_reopen_and_are_replaced_per_job() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let at = |size, since| Sighting {
            size,
            mtime: 7,
            since,
        };
        let first = Sightings::from([("in/a.csv".to_string(), at(10, 100))]);
        {
            let mut l = Ledger::open(&path).unwrap();
            l.set_settle_sightings("pull", &first).unwrap();
            l.set_settle_sightings("other", &first).unwrap();
        }
        let mut l = Ledger::open(&path).unwrap();
        assert_eq!(l.settle_sightings("pull").unwrap(), first);
        l.set_settle_sightings("pull", &Sightings::new()).unwrap();
        assert!(l.settle_sightings("pull").unwrap().is_empty());
        assert_eq!(l.settle_sightings("other").unwrap(), first);
    }

    #[test]
    fn each_load_replaces_the_record_of_invalid_job_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut l = Ledger::open(&path).unwrap();
        let bad = |file: &str, kept_previous| JobFileError {
            file: format!("/jobs/{file}.yaml"),
            job: file.into(),
            error: format!("/jobs/{file}.yaml:1:8: did not find expected node content"),
            kept_previous,
        };
        l.set_job_file_errors(&[bad("b", false), bad("a", true)])
            .unwrap();
        let read = Ledger::open_read_only(&path).unwrap().unwrap();
        assert_eq!(
            read.job_file_errors().unwrap(),
            [bad("a", true), bad("b", false)]
        );
        l.set_job_file_errors(&[bad("c", false)]).unwrap();
        assert_eq!(l.job_file_errors().unwrap(), [bad("c", false)]);
        l.set_job_file_errors(&[]).unwrap();
        assert!(l.job_file_errors().unwrap().is_empty());
    }

    #[test]
    fn entries_round_trip_and_migrations_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.db");
        {
            let l = Ledger::open(&path).unwrap();
            l.record("j", "a/b c", &entry(1)).unwrap();
            l.record("j", "é", &entry(2)).unwrap();
            l.record("other", "x", &entry(3)).unwrap();
            l.record("j", "é", &entry(4)).unwrap();
        }
        let l = Ledger::open(&path).unwrap();
        assert_eq!(l.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let v = l.entries("j").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v["é"], entry(4));
        assert_eq!(v["a/b c"], entry(1));
        l.forget("j", "é").unwrap();
        assert_eq!(l.entry_count("j").unwrap(), 1);
        assert_eq!(l.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn rows_are_read_one_directory_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(&dir.path().join("s.db")).unwrap();
        let paths = [
            "top",
            "a/x",
            "a/b/y",
            "a/b/z",
            "ab/ba",
            "é/ü/ß.csv",
            "a.b/c",
        ];
        l.batch(|l| {
            for (i, p) in paths.iter().enumerate() {
                l.record("j", p, &entry(i as u8))?;
            }
            l.record("other", "a/x", &entry(9))
        })
        .unwrap();
        let keys = |v: LedgerView| v.into_keys().collect::<Vec<_>>();
        assert_eq!(keys(l.children("j", "").unwrap()), ["top"]);
        assert_eq!(keys(l.children("j", "a").unwrap()), ["a/x"]);
        assert_eq!(keys(l.children("j", "a/b").unwrap()), ["a/b/y", "a/b/z"]);
        assert_eq!(keys(l.children("j", "é/ü").unwrap()), ["é/ü/ß.csv"]);
        assert_eq!(l.children("j", "a/b").unwrap()["a/b/z"], entry(3));
        let mut parents = l.parents("j").unwrap();
        parents.sort();
        assert_eq!(parents, ["", "a", "a.b", "a/b", "ab", "é/ü"]);
        assert_eq!(l.directory_count("j").unwrap(), 6);
        assert_eq!(l.directory_count("other").unwrap(), 1);
        assert_eq!(l.directory_count("none").unwrap(), 0);
        assert_eq!(l.paths_in("j", "ab").unwrap(), ["ab/ba"]);
    }

    #[test]
    fn entries_in_a_scope_are_the_roots_and_what_lies_below_them() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("s.db")).unwrap();
        for p in [
            "a", "a/x", "a/y/z", "a.b", "a0", "ab", "b/c", "b/cd", "b/c/d",
        ] {
            l.record("j", p, &entry(1)).unwrap();
        }
        l.record("other", "a/x", &entry(1)).unwrap();
        let scope = Scope::of_changed(["a", "b/c"]).unwrap();
        let v = l.entries_in("j", &scope).unwrap();
        let keys: Vec<&str> = v.keys().map(String::as_str).collect();
        assert_eq!(keys, ["a", "a/x", "a/y/z", "b/c", "b/c/d"]);
    }

    #[test]
    fn runs_are_recorded_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("s.db")).unwrap();
        let a = l.begin_run("j", "manual").unwrap();
        let counts = RunCounts {
            files_up: 3,
            bytes_up: 30,
            ..Default::default()
        };
        l.finish_run(a, Outcome::Ok, &counts, None, &[]).unwrap();
        let b = l.begin_run("j", "schedule").unwrap();
        let fail = vec![PathFailure {
            path: "x".into(),
            error: "550 denied".into(),
        }];
        l.finish_run(
            b,
            Outcome::Partial,
            &RunCounts::default(),
            Some("1 path failed"),
            &fail,
        )
        .unwrap();
        let runs = l.runs("j", 10).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].outcome, Outcome::Partial);
        assert_eq!(runs[0].failures, fail);
        assert_eq!(runs[1].counts, counts);
        assert!(l.last_success("j").unwrap().is_some());
        let c = l.begin_run("j", "manual").unwrap();
        assert_eq!(l.close_abandoned_runs("j").unwrap(), 1);
        assert_eq!(l.runs("j", 1).unwrap()[0].id, c);
        assert_eq!(l.runs("j", 1).unwrap()[0].outcome, Outcome::Failed);
    }

    #[test]
    fn journal_survives_until_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(&dir.path().join("s.db")).unwrap();
        let j = JournalEntry {
            path: "big.bin".into(),
            direction: "pull".into(),
            temp_name: ".big.bin.ferrysync-part".into(),
            size: 100,
            mtime: 7,
            hash: None,
            offset: 0,
        };
        l.journal_begin("j", &j).unwrap();
        l.journal_checkpoint("j", "big.bin", 40).unwrap();
        assert_eq!(
            l.journal("j").unwrap(),
            vec![JournalEntry {
                offset: 40,
                ..j.clone()
            }]
        );
        l.commit_transfer("j", &entry(9), &uploaded("big.bin", &entry(9)))
            .unwrap();
        assert!(l.journal("j").unwrap().is_empty());
        assert_eq!(l.entries("j").unwrap()["big.bin"], entry(9));
    }

    #[test]
    fn idle_polls_are_counted_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(&dir.path().join("s.db")).unwrap();
        l.upsert_job(&JobRecord {
            name: "j".into(),
            direction: "pull".into(),
            local: "/l".into(),
            remote: "h:21/".into(),
            schedule: None,
            timezone: None,
        })
        .unwrap();
        let busy = l.begin_run("j", "poll").unwrap();
        let counts = RunCounts {
            files_down: 1,
            ..Default::default()
        };
        l.finish_run(busy, Outcome::Ok, &counts, None, &[]).unwrap();
        assert!(
            !l.fold_idle_poll("j").unwrap(),
            "a poll that downloaded stays"
        );
        let idle = l.begin_run("j", "poll").unwrap();
        l.finish_run(idle, Outcome::Ok, &RunCounts::default(), None, &[])
            .unwrap();
        assert!(l.fold_idle_poll("j").unwrap());
        assert_eq!(l.runs("j", 10).unwrap().len(), 1);
        assert_eq!(l.polls("j").unwrap().0, 1);
        let failed = l.begin_run("j", "poll").unwrap();
        l.finish_run(
            failed,
            Outcome::Failed,
            &RunCounts::default(),
            Some("x"),
            &[],
        )
        .unwrap();
        assert!(!l.fold_idle_poll("j").unwrap(), "a failed poll stays");
        let manual = l.begin_run("j", "manual").unwrap();
        l.finish_run(manual, Outcome::Ok, &RunCounts::default(), None, &[])
            .unwrap();
        assert!(!l.fold_idle_poll("j").unwrap(), "only polls are folded");
        let archiving = l.begin_run("j", "poll").unwrap();
        let counts = RunCounts {
            files_archived: 1,
            ..Default::default()
        };
        l.finish_run(archiving, Outcome::Ok, &counts, None, &[])
            .unwrap();
        assert!(
            !l.fold_idle_poll("j").unwrap(),
            "a poll that archived stays"
        );
        assert_eq!(l.runs("j", 10).unwrap()[0].counts.files_archived, 1);
        assert_eq!(l.runs("j", 10).unwrap().len(), 4);
    }

    #[test]
    fn read_only_opening_creates_nothing_and_reads_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a b/é.db");
        assert!(Ledger::open_read_only(&path).unwrap().is_none());
        assert!(!path.exists());
        Ledger::open(&path)
            .unwrap()
            .record("j", "x", &entry(1))
            .unwrap();
        let l = Ledger::open_read_only(&path).unwrap().unwrap();
        assert_eq!(l.entry_count("j").unwrap(), 1);
        assert!(
            l.record("j", "y", &entry(2)).is_err(),
            "a read-only ledger accepted a write"
        );
        assert_eq!(
            uri_path(Path::new("/t/a b/é?#%.db")),
            "/t/a%20b/%C3%A9%3F%23%25.db"
        );
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        drop(Ledger::open(&path).unwrap());
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        assert!(matches!(
            Ledger::open(&path),
            Err(LedgerError::TooNew { found: 99, .. })
        ));
    }

    /// A ledger with `n` committed uploads of job `j` in run 1, and one of job `k`.
    fn audited(n: u8) -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(&dir.path().join("s.db")).unwrap();
        let run = l.begin_run("j", "manual").unwrap();
        let paths: Vec<String> = (1..=n).map(|i| format!("d/f{i}.csv")).collect();
        let entries: Vec<SyncedEntry> = (1..=n).map(entry).collect();
        l.commit_transfers(
            "j",
            paths
                .iter()
                .zip(&entries)
                .map(|(p, e)| (e, uploaded(p.as_str(), e))),
        )
        .unwrap();
        l.finish_run(run, Outcome::Ok, &RunCounts::default(), None, &[])
            .unwrap();
        l.record("k", "other", &entry(9)).unwrap();
        (dir, l)
    }

    fn verdict(l: &Ledger, job: &str) -> Option<audit::ChainBreak> {
        let reports = l.verify_audit(Some(job)).unwrap();
        assert_eq!(reports.len(), 1);
        reports[0].first_break.clone()
    }

    fn seqs(l: &Ledger, job: &str) -> Vec<i64> {
        let mut out = Vec::new();
        l.audit_rows(
            &AuditFilter {
                job: Some(job),
                ..Default::default()
            },
            |r| out.push(r.seq),
        )
        .unwrap();
        out
    }

    #[test]
    fn the_audit_rows_are_written_with_the_commit_and_belong_to_the_run() {
        let (dir, l) = audited(3);
        let run = l.runs("j", 1).unwrap()[0].id;
        let rows = l.audit_of_run(run).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].path, "d/f1.csv");
        assert_eq!(rows[0].action, "uploaded");
        assert_eq!(rows[0].bytes, 1);
        assert_eq!(
            rows[0].blake3,
            Some(blake3::hash(&[1]).to_hex().to_string())
        );
        assert_eq!(
            rows[0].server_reply.as_deref(),
            Some("250 Rename successful.")
        );
        assert_eq!(verdict(&l, "j"), None);
        assert_eq!(verdict(&l, "k"), None);
        // Recording new metadata of the same content is no change of content: no row. New
        // content is.
        let n = seqs(&l, "j").len();
        let touched = SyncedEntry {
            remote_mtime: Some(99),
            ..entry(1)
        };
        l.record("j", "d/f1.csv", &touched).unwrap();
        assert_eq!(seqs(&l, "j").len(), n);
        l.record("j", "d/f1.csv", &entry(5)).unwrap();
        assert_eq!(seqs(&l, "j").len(), n + 1);
        // A delete keeps what was deleted, as last synced.
        l.commit_delete("j", "d/f2.csv", Some("250 Delete operation successful."))
            .unwrap();
        let mut last = None;
        l.audit_rows(&AuditFilter::default(), |r| last = Some(r))
            .unwrap();
        let last = last.unwrap();
        assert_eq!((last.action.as_str(), last.bytes), ("deleted", 2));
        assert_eq!(
            last.server_reply.as_deref(),
            Some("250 Delete operation successful.")
        );
        assert_eq!(last.blake3, Some(blake3::hash(&[2]).to_hex().to_string()));
        assert_eq!(last.run_id, None, "no run in progress");
        // A failure is a row too, with its reason.
        l.audit_failure("j", "d/f3.csv", "550 Permission denied")
            .unwrap();
        let mut last = None;
        l.audit_rows(&AuditFilter::default(), |r| last = Some(r))
            .unwrap();
        let last = last.unwrap();
        assert_eq!(
            (last.action.as_str(), last.server_reply.as_deref()),
            ("failed", Some("550 Permission denied"))
        );
        assert_eq!(verdict(&l, "j"), None);
        // The key lives beside the ledger, not in it.
        assert!(dir.path().join("s.db.audit-key").exists());
        // A failed commit writes no audit row either.
        let before = seqs(&l, "j").len();
        let mut l = l;
        let failed = l.batch(|l| {
            l.record("j", "x", &entry(4))?;
            Err::<(), _>(LedgerError::Corrupt {
                path: PathBuf::new(),
                what: "test".into(),
            })
        });
        assert!(failed.is_err());
        assert_eq!(seqs(&l, "j").len(), before);
    }

    #[test]
    fn verify_finds_an_edited_row() {
        let (_dir, l) = audited(4);
        let s = seqs(&l, "j");
        l.conn
            .execute(
                "UPDATE audit SET blake3 = ?2 WHERE seq = ?1",
                params![s[1], blake3::hash(b"other").to_hex().as_str()],
            )
            .unwrap();
        assert_eq!(
            verdict(&l, "j"),
            Some(audit::ChainBreak::Edited { seq: s[1] })
        );
        assert_eq!(verdict(&l, "k"), None, "another job's chain is its own");
    }

    #[test]
    fn verify_finds_a_deleted_middle_row() {
        let (_dir, l) = audited(4);
        let s = seqs(&l, "j");
        l.conn
            .execute("DELETE FROM audit WHERE seq = ?1", [s[1]])
            .unwrap();
        assert_eq!(
            verdict(&l, "j"),
            Some(audit::ChainBreak::Unlinked { seq: s[2] })
        );
        // The first row too: it no longer starts from the genesis value.
        let (_dir, l) = audited(2);
        let s = seqs(&l, "j");
        l.conn
            .execute("DELETE FROM audit WHERE seq = ?1", [s[0]])
            .unwrap();
        assert_eq!(
            verdict(&l, "j"),
            Some(audit::ChainBreak::Unlinked { seq: s[1] })
        );
    }

    #[test]
    fn verify_finds_reordered_and_inserted_rows() {
        let (_dir, l) = audited(4);
        let s = seqs(&l, "j");
        // Swap the places of rows 2 and 3 (each keeps its own content and hash).
        l.conn
            .execute_batch(&format!(
                "UPDATE audit SET seq = -1 WHERE seq = {b};
                 UPDATE audit SET seq = {b} WHERE seq = {c};
                 UPDATE audit SET seq = {c} WHERE seq = -1;",
                b = s[1],
                c = s[2]
            ))
            .unwrap();
        assert_eq!(
            verdict(&l, "j"),
            Some(audit::ChainBreak::Edited { seq: s[1] })
        );
        // A row copied in from elsewhere, with a hash computed without the key.
        let (_dir, l) = audited(2);
        l.conn
            .execute(
                "INSERT INTO audit (seq, run_id, job, path, action, bytes, blake3, server_reply, at, prev, hash)
                 SELECT (SELECT max(seq) FROM audit) + 1, run_id, job, 'forged', action, bytes,
                        blake3, server_reply, at, hash, hash
                 FROM audit WHERE seq = (SELECT max(seq) FROM audit WHERE job = 'j')",
                [],
            )
            .unwrap();
        assert!(matches!(
            verdict(&l, "j"),
            Some(audit::ChainBreak::Edited { .. })
        ));
    }

    #[test]
    fn a_noted_head_shows_a_cut_of_the_newest_rows() {
        let (_dir, l) = audited(4);
        let report = &l.verify_audit(Some("j")).unwrap()[0];
        let (seq, head) = (report.head_seq, report.head.clone());
        assert_eq!(l.check_head("j", seq, &head).unwrap(), HeadCheck::Found);
        l.record("j", "later", &entry(8)).unwrap();
        assert_eq!(l.check_head("j", seq, &head).unwrap(), HeadCheck::Found);
        // The two newest rows cut off: the chain alone still verifies, the noted head does not.
        l.conn
            .execute("DELETE FROM audit WHERE job = 'j' AND seq >= ?1", [seq])
            .unwrap();
        assert_eq!(verdict(&l, "j"), None);
        assert_eq!(l.check_head("j", seq, &head).unwrap(), HeadCheck::Gone);
        assert_eq!(l.check_head("j", 1, "00").unwrap(), HeadCheck::Gone);
        // A head that retention pruned can no longer be checked, and says so.
        let s = seqs(&l, "j");
        l.prune_audit("j", i64::MAX).unwrap();
        assert_eq!(l.check_head("j", s[0], "00").unwrap(), HeadCheck::Pruned);
    }

    #[test]
    fn retention_prunes_the_oldest_rows_and_the_rest_still_verifies() {
        let (_dir, l) = audited(5);
        let s = seqs(&l, "j");
        // The first three rows are old.
        l.conn
            .execute("UPDATE audit SET at = 10 WHERE seq <= ?1", [s[2]])
            .unwrap();
        // Their hashes covered `at`: rewrite them as if written then (the key is ours here).
        let key = l.audit_key(false).unwrap().clone();
        let mut prev = audit::genesis(&key, "j");
        let mut rows = Vec::new();
        l.audit_rows(
            &AuditFilter {
                job: Some("j"),
                ..Default::default()
            },
            |r| rows.push(r),
        )
        .unwrap();
        for mut r in rows {
            r.prev = prev;
            r.hash = audit::row_hash(&key, &r);
            prev = r.hash.clone();
            l.conn
                .execute(
                    "UPDATE audit SET prev = ?2, hash = ?3 WHERE seq = ?1",
                    params![r.seq, r.prev, r.hash],
                )
                .unwrap();
        }
        assert_eq!(verdict(&l, "j"), None);
        assert_eq!(l.prune_audit("j", 100).unwrap(), 3);
        assert_eq!(seqs(&l, "j"), &s[3..]);
        let report = &l.verify_audit(Some("j")).unwrap()[0];
        assert_eq!(
            (report.first_break.clone(), report.rows, report.pruned),
            (None, 2, 3)
        );
        assert_eq!(
            l.prune_audit("j", 100).unwrap(),
            0,
            "nothing more is old enough"
        );
        // New rows link on; a later prune of everything leaves the anchor to link to.
        l.record("j", "new", &entry(7)).unwrap();
        assert_eq!(verdict(&l, "j"), None);
        assert_eq!(l.prune_audit("j", i64::MAX).unwrap(), 3);
        assert_eq!(l.verify_audit(Some("j")).unwrap()[0].pruned, 6);
        l.record("j", "newer", &entry(8)).unwrap();
        assert_eq!(verdict(&l, "j"), None);
        // Deleting a kept row is still seen; so is editing the anchor.
        l.conn
            .execute("UPDATE audit_anchors SET pruned = 1 WHERE job = 'j'", [])
            .unwrap();
        assert_eq!(verdict(&l, "j"), Some(audit::ChainBreak::AnchorEdited));
        assert_eq!(verdict(&l, "k"), None);
    }
}
