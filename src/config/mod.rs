//! Job files: YAML in, validated [`Job`]s out.
//!
//! Everything a run needs is checked here, once, before any connection is made: unknown keys,
//! wrong types, cron expressions, time zones, durations, glob patterns, and whether the password
//! can be read. Every error names `file:line:col`. Secrets are wrapped in [`Secret`], whose
//! `Debug` and `Display` never show the value, so they cannot leak through logs or errors.
//!
//! May import: `model`.

pub(crate) mod after;
pub(crate) mod bandwidth;
pub(crate) mod choices;
pub(crate) mod filter;
pub(crate) mod job;
pub(crate) mod notify;
pub(crate) mod policy;
pub(crate) mod raw;
pub(crate) mod remote;
pub(crate) mod schema;
pub(crate) mod trigger;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use after::SourceAfter;
pub use choices::{DataMode, Listing, PassiveAddress, Security};
pub use filter::PathFilter;
pub use job::{
    find_job, job_names, load_job, load_job_dir, load_jobs, parse_job, parse_job_with, unknown_job,
    Job, JobFile,
};
pub use notify::{
    load_defaults, parse_defaults, Defaults, ExecTarget, Expect, Notify, Webhook, DEFAULTS_FILE,
};
pub use policy::{RetryPolicy, UploadOptions};
pub use remote::{Fingerprint, ListTimeOffset, ListingCaps, Remote, Secret, TlsOptions};
pub use schema::{job_schema, SCHEMA_PATH};
pub use trigger::Schedule;

/// A configuration error, already formatted as `file:line:col: reason`; an error that points
/// at no place in a file (line 0: a job that does not exist) is its reason alone.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.shown())]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub reason: String,
}

impl ConfigError {
    fn shown(&self) -> String {
        if self.line == 0 {
            return self.reason.clone();
        }
        format!(
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.reason
        )
    }
}

/// What validating a section needs besides the section itself: the job file (for errors and
/// relative paths), its text (to point errors at a key), and the warnings gathered so far.
struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    /// The job file's folder: relative paths in the job are relative to it.
    base: PathBuf,
    warnings: Vec<String>,
}

impl<'a> Ctx<'a> {
    fn new(file: &'a Path, text: &'a str) -> Self {
        let base = file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ctx {
            file,
            text,
            base,
            warnings: Vec::new(),
        }
    }

    /// An error at the nested key `keys` (`["remote", "tls", "ca_file"]`), as [`locate`] finds
    /// it; `&[]` for the file as a whole (1:1).
    fn fail(&self, keys: &[&str], reason: impl Into<String>) -> ConfigError {
        let (line, column) = locate(self.text, keys);
        self.error_at(line, column, reason)
    }

    /// An error at a position serde_yaml reported.
    fn error_at(&self, line: usize, column: usize, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            reason: reason.into(),
        }
    }

    /// A serde_yaml error at its position (line 1, column 1 when it has none), its text on one
    /// line.
    fn yaml_error(&self, e: &serde_yaml::Error) -> ConfigError {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        self.error_at(line, column, one_line(&e.to_string()))
    }

    /// A path from the job, anchored at the job file's folder if relative.
    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// A non-fatal remark, kept in [`Job::warnings`].
    fn warn(&mut self, warning: impl Into<String>) {
        self.warnings.push(warning.into());
    }
}

/// Finds the line and column of a nested key (`["remote", "tls", "ca_file"]`) in YAML text, for
/// errors found after parsing. Falls back to the deepest key found, or 1:1.
fn locate(text: &str, keys: &[&str]) -> (usize, usize) {
    let mut found = (1, 1);
    let mut start = 0usize;
    let mut min_indent = 0usize;
    let lines: Vec<&str> = text.lines().collect();
    'keys: for key in keys {
        for (i, line) in lines.iter().enumerate().skip(start) {
            let body = line.trim_start();
            let indent = line.len() - body.len();
            if i > start && indent < min_indent && !body.is_empty() && !body.starts_with('#') {
                break;
            }
            if body
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
            {
                found = (i + 1, indent + 1);
                start = i + 1;
                min_indent = indent + 1;
                continue 'keys;
            }
        }
        break;
    }
    found
}

/// A duration written as `2s`, `500ms`, `5m`.
fn parse_duration(key: &str, s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{key}: `{s}` is not a duration like `2s` or `5m`: {e}"))
}

/// serde_yaml sometimes appends " at line L column C"; the location is printed in front instead.
fn one_line(msg: &str) -> String {
    let first = msg.lines().next().unwrap_or(msg);
    match first.find(" at line ") {
        Some(i) => first[..i].to_string(),
        None => first.to_string(),
    }
}

/// For the tests of every section: they parse whole job files, as users write them.
#[cfg(test)]
mod testing {
    use std::path::Path;

    use super::{parse_job, ConfigError, Job};

    pub(super) fn parse(text: &str) -> Result<Job, ConfigError> {
        parse_job(Path::new("/etc/jobs/acme.yaml"), text)
    }

    /// A job with only the keys it must have.
    pub(super) const GOOD: &str =
        "local: /srv/out\nremote:\n  host: ftp.example\n  user: u\n  password: p\n";
}
