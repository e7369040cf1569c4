//! `ferrysync history JOB [--limit N] [--files] [--run N] [--json]`: past runs of a job, newest
//! first, and with `--files` or `--run N` the files each run uploaded, downloaded, deleted,
//! recorded or failed (from the audit record).

use serde::Serialize;

use super::{iso_time, shown, CmdResult, Failure, JobsArg, StateArg};
use ferrysync::state::{AuditRecord, Ledger, RunRecord};
use ferrysync::sync::human_bytes;

/// Show past runs of a job, and the files they changed.
#[derive(Debug, clap::Args)]
pub struct HistoryCmd {
    job: String,
    /// How many runs to show.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Also list the files of each run (action, size, BLAKE3, path, server reply).
    #[arg(long)]
    files: bool,
    /// Only run N (an id from `history`), with its files.
    #[arg(long, value_name = "N")]
    run: Option<i64>,
    /// One JSON document: an array of runs, or with `--run` one run (fields documented in the
    /// README).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    state: StateArg,
    #[command(flatten)]
    jobs: JobsArg,
}

/// A run with its files, as `--files --json` and `--run N --json` print it: the run's fields
/// as `history --json` has them, plus `files`.
#[derive(Debug, Serialize)]
struct RunWithFiles<'a> {
    #[serde(flatten)]
    run: &'a RunRecord,
    files: &'a [AuditRecord],
}

impl HistoryCmd {
    pub fn execute(self) -> CmdResult {
        let ledger = Ledger::open_read_only(&self.state.path)?;
        let recorded = match &ledger {
            Some(l) => l.jobs()?.into_iter().map(|j| j.name).collect(),
            None => Vec::new(),
        };
        let ledger = match ledger {
            Some(l) if recorded.contains(&self.job) => l,
            _ => return self.never_ran(recorded),
        };
        if let Some(id) = self.run {
            let Some(run) = ledger.run(&self.job, id)? else {
                return Err(Failure::config(format!(
                    "job `{}` has no run {id} in {}",
                    self.job,
                    self.state.path.display()
                )));
            };
            let files = ledger.audit_of_run(id)?;
            if self.json {
                let doc = RunWithFiles {
                    run: &run,
                    files: &files,
                };
                println!(
                    "{}",
                    serde_json::to_string_pretty(&doc).map_err(Failure::run)?
                );
            } else {
                for line in lines(&[(run, Some(files))]) {
                    println!("{line}");
                }
            }
            return Ok(());
        }
        let runs = ledger.runs(&self.job, self.limit)?;
        let runs: Vec<(RunRecord, Option<Vec<AuditRecord>>)> = runs
            .into_iter()
            .map(|r| {
                let files = match self.files {
                    true => Some(ledger.audit_of_run(r.id)?),
                    false => None,
                };
                Ok((r, files))
            })
            .collect::<Result<_, ferrysync::state::LedgerError>>()?;
        if self.json {
            let text = if self.files {
                let docs: Vec<RunWithFiles> = runs
                    .iter()
                    .map(|(run, files)| RunWithFiles {
                        run,
                        files: files.as_deref().unwrap_or_default(),
                    })
                    .collect();
                serde_json::to_string_pretty(&docs)
            } else {
                let plain: Vec<&RunRecord> = runs.iter().map(|(r, _)| r).collect();
                serde_json::to_string_pretty(&plain)
            };
            println!("{}", text.map_err(Failure::run)?);
            return Ok(());
        }
        if runs.is_empty() {
            println!(
                "job `{}` has no runs in {}",
                shown(&self.job),
                self.state.path.display()
            );
            return Ok(());
        }
        for line in lines(&runs) {
            println!("{line}");
        }
        Ok(())
    }
}

impl HistoryCmd {
    /// A job the ledger has no record of: no runs yet if it has a job file (exit 0, as
    /// before), otherwise a mistyped name (exit 2, naming the jobs there are).
    fn never_ran(&self, recorded: Vec<String>) -> CmdResult {
        let files = job_file_names(&self.jobs.dir);
        if files.contains(&self.job) && self.run.is_none() {
            match self.json {
                true => println!("[]"),
                false => println!(
                    "job `{}` has no runs in {}",
                    shown(&self.job),
                    self.state.path.display()
                ),
            }
            return Ok(());
        }
        if let Some(id) = self.run.filter(|_| files.contains(&self.job)) {
            return Err(Failure::config(format!(
                "job `{}` has no run {id} in {}",
                shown(&self.job),
                self.state.path.display()
            )));
        }
        let mut known: Vec<String> = files.into_iter().chain(recorded).collect();
        known.sort();
        known.dedup();
        let which = match known.is_empty() {
            true => "there are no jobs".to_string(),
            false => format!(
                "the jobs are: {}",
                known.iter().map(shown).collect::<Vec<_>>().join(", ")
            ),
        };
        Err(Failure::config(format!(
            "no job named `{}` (no job file in {}, no record in {}); {which}",
            shown(&self.job),
            self.jobs.dir.display(),
            self.state.path.display()
        )))
    }
}

/// The names of the job files in `dir` (empty if it cannot be read).
fn job_file_names(dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .filter_map(|p| p.file_stem().and_then(|s| s.to_str()).map(str::to_string))
        .collect();
    names.sort();
    names
}

/// Lays out `rows` in columns as wide as their widest value (header included); `right[i]`
/// right-aligns column i. Cells are already escaped.
fn columns(rows: &[Vec<String>], right: &[bool]) -> Vec<String> {
    let count = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..count)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let pad = " ".repeat(widths[i].saturating_sub(c.chars().count()));
                    match right.get(i).copied().unwrap_or(false) {
                        true => format!("{pad}{c}"),
                        // The last column is not padded: no trailing blanks.
                        false if i + 1 == r.len() => c.clone(),
                        false => format!("{c}{pad}"),
                    }
                })
                .collect();
            cells.join("  ")
        })
        .collect()
}

/// The text form: a header, one row per run, its error below it, and its files (where asked
/// for) below that; every value from the ledger shown escaped.
fn lines(runs: &[(RunRecord, Option<Vec<AuditRecord>>)]) -> Vec<String> {
    let mut table = vec![[
        "RUN", "STARTED", "TRIGGER", "OUTCOME", "UP", "DOWN", "DEL", "FAILED",
    ]
    .map(str::to_string)
    .to_vec()];
    for (r, _) in runs {
        table.push(vec![
            r.id.to_string(),
            iso_time(r.started_at),
            shown(&r.trigger),
            r.outcome.to_string(),
            format!("{} ({})", r.counts.files_up, human_bytes(r.counts.bytes_up)),
            format!(
                "{} ({})",
                r.counts.files_down,
                human_bytes(r.counts.bytes_down)
            ),
            r.counts.files_deleted.to_string(),
            r.counts.files_failed.to_string(),
        ]);
    }
    let right = [true, false, false, false, true, true, true, true];
    let mut laid = columns(&table, &right).into_iter();
    let mut out: Vec<String> = laid.next().into_iter().collect();
    for ((r, files), line) in runs.iter().zip(laid) {
        out.push(line);
        if let Some(e) = &r.error {
            out.push(format!("    error: {}", shown(e)));
        }
        match files {
            Some(files) if files.is_empty() => out.push("    (no files)".to_string()),
            Some(files) => out.extend(file_lines(files)),
            None => {}
        }
    }
    out
}

/// One line per file of a run, indented under it.
fn file_lines(files: &[AuditRecord]) -> Vec<String> {
    let mut table = vec![
        ["TIME", "ACTION", "BYTES", "BLAKE3", "PATH", "SERVER REPLY"]
            .map(str::to_string)
            .to_vec(),
    ];
    for f in files {
        table.push(vec![
            iso_time(f.at),
            shown(&f.action),
            f.bytes.to_string(),
            f.blake3.clone().unwrap_or_else(|| "-".into()),
            shown(&f.path),
            f.server_reply.as_deref().map(shown).unwrap_or_default(),
        ]);
    }
    let right = [false, false, true, false, false, false];
    columns(&table, &right)
        .into_iter()
        .map(|l| format!("    {}", l.trim_end()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrysync::state::{Outcome, RunCounts};

    fn run(id: i64, error: Option<&str>) -> RunRecord {
        RunRecord {
            id,
            job: "j".into(),
            trigger: "manual".into(),
            started_at: 0,
            ended_at: Some(1),
            outcome: Outcome::Failed,
            counts: RunCounts::default(),
            error: error.map(str::to_string),
            failures: Vec::new(),
            progress: None,
        }
    }

    #[test]
    fn a_hostile_error_stays_on_its_own_line() {
        let run = run(
            3,
            Some("x\u{1b}[2J: 550\r\n     4 1970-01-01T00:00:00Z manual    ok"),
        );
        let out = lines(&[(run.clone(), None)]);
        assert_eq!(out.len(), 3, "{out:#?}");
        assert_eq!(
            out[2],
            "    error: x\\e[2J: 550\\r\\n     4 1970-01-01T00:00:00Z manual    ok"
        );
        let json = serde_json::to_value(&run).unwrap();
        assert_eq!(json["error"], run.error.clone().unwrap());
    }

    #[test]
    fn columns_fit_their_values() {
        let mut big = run(123456789, None);
        big.counts.files_up = 1_234_567;
        big.counts.bytes_up = 5 << 40;
        big.trigger = "schedule-catch-up".into();
        let out = lines(&[(big, None), (run(7, None), None)]);
        let header = &out[0];
        // Every row's columns start where the header's do.
        let at = |line: &str, word: &str| line.find(word).unwrap();
        assert_eq!(at(header, "STARTED"), at(&out[1], "1970"));
        assert_eq!(at(header, "STARTED"), at(&out[2], "1970"));
        assert_eq!(at(header, "OUTCOME"), at(&out[1], "failed"));
        assert_eq!(at(header, "OUTCOME"), at(&out[2], "failed"));
        assert!(out[1].starts_with("123456789  1970"), "{out:#?}");
        assert!(out[2].starts_with("        7  1970"), "{out:#?}");
        assert!(out.iter().all(|l| l.len() == out[0].len()), "{out:#?}");
    }

    #[test]
    fn files_are_listed_under_their_run_escaped() {
        let file = AuditRecord {
            seq: 1,
            run_id: Some(3),
            job: "j".into(),
            path: "a\u{1b}[31m.csv".into(),
            action: "uploaded".into(),
            bytes: 12,
            blake3: Some(blake3::hash(b"x").to_hex().to_string()),
            server_reply: Some("250 Rename\r\nok".into()),
            at: 0,
            prev: String::new(),
            hash: String::new(),
        };
        let out = lines(&[(run(3, None), Some(vec![file]))]);
        assert_eq!(out.len(), 4, "{out:#?}");
        assert!(out[2].starts_with("    TIME"), "{out:#?}");
        assert!(out[3].contains("a\\e[31m.csv"), "{out:#?}");
        assert!(out[3].ends_with("250 Rename\\r\\nok"), "{out:#?}");
        assert!(out[3].contains(&blake3::hash(b"x").to_hex().to_string()));
    }
}
