//! What a run did, as the agent's log and the command line tell it: the counts, the failed
//! paths, and one summary line.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::Duration;

use crate::model::plan::SyncPlan;
use crate::state::ledger::{Outcome, PathFailure, RunCounts};
use crate::sync::error::RunError;

/// What a run did.
#[derive(Debug)]
pub struct RunReport {
    pub job: String,
    pub outcome: Outcome,
    pub counts: RunCounts,
    pub failures: Vec<PathFailure>,
    /// Why the run as a whole failed, if it did.
    pub error: Option<RunError>,
    /// The plan (kept for `--dry-run`).
    pub plan: Option<SyncPlan>,
    pub elapsed: Duration,
    /// The run's row in the history (none for a dry run).
    pub run_id: Option<i64>,
    /// The run stopped on request before its end.
    pub interrupted: bool,
    /// Downloads not renamed into place because the remote file changed while they ran
    /// (`settle:`): counted in `files_waiting`, not failures.
    pub changing: Vec<String>,
    /// Source files left alone as there before the job began (`initial_files: skip`).
    pub preexisting: u64,
    /// Of `files_waiting`, the files left for a later run because their ready marker was not
    /// there (`ready_marker:`, `batch_marker:`).
    pub waiting_for_markers: u64,
}

impl RunReport {
    /// One line for people and scripts alike, with the failed paths and errors below it.
    /// Names and server replies are untrusted: their control characters are shown escaped
    /// ([`escape_controls`]), so that none can forge a line or drive the terminal (the agent
    /// logs this text too).
    pub fn summary(&self) -> String {
        let c = &self.counts;
        let mut s = format!(
            "{}: {} ({} uploaded, {}; {} downloaded, {}; {} deleted; {} failed{}{}{}{}) in {:.1}s",
            escape_controls(&self.job),
            match self.outcome {
                Outcome::Ok => "ok",
                Outcome::Partial => "finished with failures",
                Outcome::Failed => "FAILED",
                Outcome::Running => "running",
                Outcome::Interrupted => "interrupted (the next run resumes)",
            },
            c.files_up,
            human_bytes(c.bytes_up),
            c.files_down,
            human_bytes(c.bytes_down),
            c.files_deleted,
            c.files_failed,
            // Only when there are: the line stays as it was for runs that adopt nothing.
            match c.files_adopted {
                0 => String::new(),
                n => format!("; {n} adopted"),
            },
            // Likewise for files left to settle (`settle:`) or for their ready marker: not
            // failures, taken later.
            match (
                c.files_waiting.saturating_sub(self.waiting_for_markers),
                self.waiting_for_markers,
            ) {
                (0, 0) => String::new(),
                (n, 0) => format!("; {n} waiting to settle"),
                (0, m) => format!("; {m} waiting for a ready marker"),
                (n, m) => format!("; {n} waiting to settle; {m} waiting for a ready marker"),
            },
            match self.preexisting {
                0 => String::new(),
                n => format!("; {n} there before the job began, left alone"),
            },
            // Likewise for sources moved after their transfer (`after_transfer:`).
            match (c.files_archived, c.files_source_deleted) {
                (0, 0) => String::new(),
                (a, 0) => format!("; {a} sources archived"),
                (0, d) => format!("; {d} sources deleted"),
                (a, d) => format!("; {a} sources archived, {d} deleted"),
            },
            self.elapsed.as_secs_f64()
        );
        if let Some(e) = &self.error {
            s.push_str(&format!("\n  error: {}", escape_controls(&e.to_string())));
        }
        for p in self.changing.iter().take(20) {
            s.push_str(&format!(
                "\n  still changing: {} (taken once it has settled)",
                escape_controls(p)
            ));
        }
        for f in self.failures.iter().take(20) {
            s.push_str(&format!(
                "\n  failed: {}: {}",
                escape_controls(&f.path),
                escape_controls(&f.error)
            ));
        }
        if self.failures.len() > 20 {
            s.push_str(&format!(
                "\n  ... and {} more failed paths (see `ferrysync history`)",
                self.failures.len() - 20
            ));
        }
        s
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `text` as it may be shown to a person: every control character is replaced by a visible
/// escape, so that a file name or a server reply can neither start a line of its own (CR, LF,
/// the Unicode line and paragraph separators), nor move the cursor, clear the screen or set the
/// terminal's title (ESC, CSI and the other C0 and C1 controls, DEL), nor reorder what is shown
/// (the bidirectional overrides and isolates). Printable text, non-ASCII included, is unchanged.
///
/// Escapes: `\e` (ESC), `\r`, `\n`, `\t`, `\0`, `\xNN` for the other C0 controls and DEL,
/// `\u{NNNN}` for C1 controls and the Unicode format characters above. A backslash is printable
/// and stays as it is. Machine output (`--json`) is exact and does not use this.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\x1b' => out.push_str("\\e"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if c < ' ' || c == '\x7f' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Control characters (C0, DEL, C1), line and paragraph separators, and the bidirectional
/// marks, embeddings, overrides and isolates.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ledger::{PathFailure, RunCounts};

    #[test]
    fn control_characters_are_shown_escaped() {
        let cases = [
            ("plain name.csv", "plain name.csv"),
            (
                "Übersicht für November 日本 ✓",
                "Übersicht für November 日本 ✓",
            ),
            ("a\u{1b}]0;owned\u{7}b", "a\\e]0;owned\\x07b"),
            ("\u{1b}[2J\u{1b}[H", "\\e[2J\\e[H"),
            ("x\r\ny\tz\0", "x\\r\\ny\\tz\\0"),
            ("del\u{7f}", "del\\x7f"),
            ("csi\u{9b}2J", "csi\\u{9b}2J"),
            ("nel\u{85}", "nel\\u{85}"),
            ("ls\u{2028}ps\u{2029}", "ls\\u{2028}ps\\u{2029}"),
            ("evil\u{202e}fdp.exe", "evil\\u{202e}fdp.exe"),
            ("iso\u{2066}x\u{2069}", "iso\\u{2066}x\\u{2069}"),
            ("back\\slash", "back\\slash"),
        ];
        for (raw, shown) in cases {
            assert_eq!(escape_controls(raw), shown, "{raw:?}");
            assert!(!escape_controls(raw).chars().any(needs_escape));
        }
        assert!(matches!(escape_controls("clean"), Cow::Borrowed(_)));
    }

    fn report(job: &str, failures: &[(&str, &str)]) -> RunReport {
        RunReport {
            job: job.into(),
            outcome: Outcome::Partial,
            counts: RunCounts::default(),
            changing: Vec::new(),
            preexisting: 0,
            waiting_for_markers: 0,
            failures: failures
                .iter()
                .map(|(p, e)| PathFailure {
                    path: p.to_string(),
                    error: e.to_string(),
                })
                .collect(),
            error: None,
            plan: None,
            elapsed: Duration::from_millis(1500),
            run_id: None,
            interrupted: false,
        }
    }

    #[test]
    fn summary_escapes_hostile_names_and_replies() {
        let r = report(
            "nightly",
            &[
                ("in/\u{1b}]0;pwned\u{7}\u{1b}[2Jreport.csv", "550 no\u{1b}[31m"),
                (
                    "out/a.csv\nnightly: ok (9 uploaded, 0 B; 0 downloaded, 0 B; 0 deleted; 0 failed)",
                    "451 bad\r\n226 fine",
                ),
            ],
        );
        let s = r.summary();
        assert!(
            !s.chars()
                .any(|c| c == '\u{1b}' || c == '\u{7}' || c == '\r'),
            "{s:?}"
        );
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 3, "a name forged a line: {s}");
        assert!(lines[0].starts_with("nightly: finished with failures"));
        assert_eq!(
            lines[1],
            "  failed: in/\\e]0;pwned\\x07\\e[2Jreport.csv: 550 no\\e[31m"
        );
        assert_eq!(
            lines[2],
            "  failed: out/a.csv\\nnightly: ok (9 uploaded, 0 B; 0 downloaded, 0 B; 0 deleted; 0 failed): 451 bad\\r\\n226 fine"
        );
    }

    #[test]
    fn summary_of_plain_names_is_unchanged() {
        let r = report("job", &[("reports/überblick.txt", "550 denied")]);
        assert_eq!(
            r.summary(),
            "job: finished with failures (0 uploaded, 0 B; 0 downloaded, 0 B; 0 deleted; 0 failed) in 1.5s\n  failed: reports/überblick.txt: 550 denied"
        );
    }
}
