//! `ferrysync audit verify|export`: checks the audit record's chain with its key, and writes
//! the record out as CSV or JSON lines for auditors and other tools.

use std::io::Write;

use super::{shown, CmdResult, ExitStatus, Failure, StateArg};
use ferrysync::state::{audit_key_path, AuditFilter, AuditRecord, HeadCheck, Ledger, LedgerError};

/// Verify or export the per-file audit record.
#[derive(Debug, clap::Args)]
pub struct AuditCmd {
    #[command(subcommand)]
    action: AuditAction,
}

#[derive(Debug, clap::Subcommand)]
enum AuditAction {
    /// Walk each job's chain with the key; exit 1 at an edited, inserted, deleted or
    /// re-ordered row, 0 if intact. Prints each job's head hash: keep a copy elsewhere to
    /// detect a later removal of the newest rows.
    Verify {
        /// Only this job.
        #[arg(long)]
        job: Option<String>,
        /// One JSON document: an array of jobs with rows, pruned, head, head_seq, first_break.
        #[arg(long)]
        json: bool,
        /// A head noted earlier (`SEQ:HASH`, as verify prints it): exit 1 if it is no longer
        /// in the job's chain (the newest rows were cut). Needs --job.
        #[arg(long, value_name = "SEQ:HASH", requires = "job")]
        head: Option<String>,
        #[command(flatten)]
        state: StateArg,
    },
    /// Write the record to stdout, oldest first.
    Export {
        /// Only this job.
        #[arg(long)]
        job: Option<String>,
        /// Only rows written since: a date (2026-12-01, UTC), a time (2026-12-01T09:00:00Z),
        /// or a duration back from now (7d, 12h).
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        #[arg(long, value_enum)]
        format: ExportFormat,
        #[command(flatten)]
        state: StateArg,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    /// RFC 4180 CSV with a header line.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

impl AuditCmd {
    pub fn execute(self) -> CmdResult {
        match self.action {
            AuditAction::Verify {
                job,
                json,
                head,
                state,
            } => {
                let head = match head {
                    Some(h) => Some(parse_head(&h).map_err(Failure::config)?),
                    None => None,
                };
                verify(job.as_deref(), json, head, &state)
            }
            AuditAction::Export {
                job,
                since,
                format,
                state,
            } => {
                let since = match since {
                    Some(s) => Some(parse_since(&s, chrono::Utc::now()).map_err(Failure::config)?),
                    None => None,
                };
                export(job.as_deref(), since, format, &state)
            }
        }
    }
}

fn open(state: &StateArg) -> Result<Ledger, Failure> {
    Ledger::open_read_only(&state.path)?
        .ok_or_else(|| Failure::config(format!("no ledger at {}", state.path.display())))
}

/// `--head SEQ:HASH`.
fn parse_head(text: &str) -> Result<(i64, String), String> {
    let bad = || format!("--head: `{text}` is not SEQ:HASH as `audit verify` prints it");
    let (seq, hash) = text.trim().split_once(':').ok_or_else(bad)?;
    let seq = seq.parse().map_err(|_| bad())?;
    if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok((seq, hash.to_string()))
}

fn verify(
    job: Option<&str>,
    json: bool,
    head: Option<(i64, String)>,
    state: &StateArg,
) -> CmdResult {
    let ledger = open(state)?;
    let reports = match ledger.verify_audit(job) {
        // Without the key nothing can be checked: a configuration matter.
        Err(e @ LedgerError::AuditKey { .. }) => return Err(Failure::config(e)),
        other => other?,
    };
    let mut broken = reports.iter().any(|r| r.first_break.is_some());
    let noted = match (&head, job) {
        (Some((seq, hash)), Some(job)) => Some((*seq, ledger.check_head(job, *seq, hash)?)),
        _ => None,
    };
    if let Some((_, HeadCheck::Gone)) = noted {
        broken = true;
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).map_err(Failure::run)?
        );
    } else if reports.is_empty() {
        match job {
            Some(j) => println!("job `{}` has no audit rows", shown(j)),
            None => println!("the audit record is empty"),
        }
    } else {
        println!(
            "audit record of {} (key {})",
            state.path.display(),
            audit_key_path(&state.path).display()
        );
        for r in &reports {
            let pruned = match r.pruned {
                0 => String::new(),
                n => format!(" (after {n} rows pruned by retention)"),
            };
            let verdict = match &r.first_break {
                None => "intact".to_string(),
                Some(b) => format!("BROKEN: {b}"),
            };
            println!(
                "{}: {verdict}; {} rows{pruned}; head {}:{}",
                shown(&r.job),
                r.rows,
                r.head_seq,
                r.head
            );
        }
    }
    match noted {
        None => {}
        Some((seq, HeadCheck::Found)) => {
            eprintln!("the noted head {seq} is in the chain: no row up to it was cut")
        }
        Some((seq, HeadCheck::Pruned)) => eprintln!(
            "the noted head {seq} was pruned by retention: it can no longer be checked"
        ),
        Some((seq, HeadCheck::Gone)) => eprintln!(
            "BROKEN: the noted head {seq} is no longer in the chain: the newest rows were cut or replaced"
        ),
    }
    if broken {
        return Err(Failure {
            status: ExitStatus::RunFailed,
            message: "the audit record does not verify".into(),
        });
    }
    Ok(())
}

fn export(
    job: Option<&str>,
    since: Option<i64>,
    format: ExportFormat,
    state: &StateArg,
) -> CmdResult {
    let ledger = open(state)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut failed: Option<std::io::Error> = None;
    let mut write = |line: String| {
        if failed.is_none() {
            if let Err(e) = writeln!(out, "{line}") {
                failed = Some(e);
            }
        }
    };
    if let ExportFormat::Csv = format {
        write(CSV_HEADER.join(","));
    }
    ledger.audit_rows(
        &AuditFilter {
            job,
            since,
            run_id: None,
        },
        |r| match format {
            ExportFormat::Csv => write(csv_line(&r)),
            ExportFormat::Jsonl => write(serde_json::to_string(&r).unwrap_or_default()),
        },
    )?;
    if let Some(e) = failed.or_else(|| out.flush().err()) {
        // A closed pipe (`| head`) is the reader's choice, not a failure.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(Failure::run(format!("cannot write the export: {e}")));
        }
    }
    Ok(())
}

const CSV_HEADER: [&str; 11] = [
    "seq",
    "run_id",
    "job",
    "path",
    "action",
    "bytes",
    "blake3",
    "server_reply",
    "at",
    "prev",
    "hash",
];

/// One CSV record (RFC 4180: a field with a comma, quote or line break is quoted, its quotes
/// doubled). Values are exported as stored, control characters included.
fn csv_line(r: &AuditRecord) -> String {
    let fields = [
        r.seq.to_string(),
        r.run_id.map(|i| i.to_string()).unwrap_or_default(),
        r.job.clone(),
        r.path.clone(),
        r.action.clone(),
        r.bytes.to_string(),
        r.blake3.clone().unwrap_or_default(),
        r.server_reply.clone().unwrap_or_default(),
        super::iso_time(r.at),
        r.prev.clone(),
        r.hash.clone(),
    ];
    fields
        .iter()
        .map(|f| {
            if f.contains([',', '"', '\r', '\n']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `--since`: a date (UTC midnight), an RFC 3339 time, or a duration back from `now`.
fn parse_since(text: &str, now: chrono::DateTime<chrono::Utc>) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .map_or(0, |t| t.and_utc().timestamp()));
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp());
    }
    if let Ok(d) = humantime::parse_duration(text) {
        let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        return Ok(now.timestamp().saturating_sub(secs));
    }
    Err(format!(
        "--since: `{text}` is not a date (2026-12-01), a time (2026-12-01T09:00:00Z) or a duration (7d)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let r = AuditRecord {
            seq: 4,
            run_id: None,
            job: "j".into(),
            path: "a,\"b\"\nc.csv".into(),
            action: "deleted".into(),
            bytes: 3,
            blake3: None,
            server_reply: Some("250 ok".into()),
            at: 0,
            prev: "p".into(),
            hash: "h".into(),
        };
        assert_eq!(
            csv_line(&r),
            "4,,j,\"a,\"\"b\"\"\nc.csv\",deleted,3,,250 ok,1970-01-01T00:00:00Z,p,h"
        );
    }

    #[test]
    fn a_head_is_seq_colon_hash() {
        let h = "ab".repeat(32);
        assert_eq!(parse_head(&format!("12:{h}")), Ok((12, h.clone())));
        assert!(parse_head(&h).is_err());
        assert!(parse_head("x:ab").is_err());
    }

    #[test]
    fn since_takes_dates_times_and_durations() {
        let now = chrono::DateTime::from_timestamp(1_000_000, 0).unwrap();
        assert_eq!(parse_since("1970-01-02", now), Ok(86_400));
        assert_eq!(parse_since("1970-01-01T00:01:00Z", now), Ok(60));
        assert_eq!(parse_since("1d", now), Ok(1_000_000 - 86_400));
        assert!(parse_since("tuesday", now).is_err());
    }
}
