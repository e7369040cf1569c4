//! What becomes of a source file once its copy is delivered (`after_transfer:`): kept (the
//! default), deleted, or moved into an archive folder. The pure rules: the archive template and
//! its expansion, the unique name for a name already in the archive, whether a journaled
//! source is still the file that was delivered (and so due), and which archived files the
//! retention removes. No I/O and no clock: the caller passes the date and the observations.

use schemars::JsonSchema;
use serde::Deserialize;

/// `after_transfer:` in a job file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AfterTransfer {
    /// The source file stays where it is (what every run did before the option).
    #[default]
    Keep,
    /// The source file is deleted once its copy is verified and recorded.
    Delete,
    /// The source file is moved into `archive_to` once its copy is verified and recorded.
    Archive,
}

impl AfterTransfer {
    /// The word the ledger's journal stores.
    pub fn as_str(self) -> &'static str {
        match self {
            AfterTransfer::Keep => "keep",
            AfterTransfer::Delete => "delete",
            AfterTransfer::Archive => "archive",
        }
    }

    pub fn parse(s: &str) -> Option<AfterTransfer> {
        match s {
            "keep" => Some(AfterTransfer::Keep),
            "delete" => Some(AfterTransfer::Delete),
            "archive" => Some(AfterTransfer::Archive),
            _ => None,
        }
    }
}

/// The placeholders `archive_to:` knows.
pub const PLACEHOLDERS: [&str; 4] = ["{yyyy}", "{mm}", "{dd}", "{job}"];

/// `archive_to:` as validated: a `/`-separated folder template, relative to the source root
/// (`archive/{yyyy}/{mm}/`) or absolute (`/srv/archive/{job}/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveTemplate {
    /// Without leading or trailing `/` (an absolute one keeps its leading `/`), and without
    /// empty, `.` or `..` components.
    text: String,
}

impl ArchiveTemplate {
    /// Checks `raw`: known placeholders only, no `.`/`..` component (an archive outside what
    /// the template says is a mistake, not a feature), and a relative template must start with
    /// a fixed folder name (`archive/{yyyy}`, not `{yyyy}`), which is the folder the walk
    /// leaves out: otherwise the archive would be the source itself.
    pub fn parse(raw: &str) -> Result<ArchiveTemplate, String> {
        let absolute = raw.starts_with('/');
        let parts: Vec<&str> = raw.split('/').filter(|p| !p.is_empty()).collect();
        if parts.is_empty() {
            return Err(
                "archive_to: is empty; give a folder such as \"archive/{yyyy}/{mm}/\"".into(),
            );
        }
        for part in &parts {
            if *part == "." || *part == ".." {
                return Err(format!(
                    "archive_to: `{raw}`: `.` and `..` are not allowed in the archive folder"
                ));
            }
            if part.contains('\\') || part.contains('\0') {
                return Err(format!(
                    "archive_to: `{raw}`: a folder name may not hold `\\` or NUL"
                ));
            }
            let mut rest = *part;
            while let Some(open) = rest.find('{') {
                let Some(len) = rest[open..].find('}') else {
                    return Err(format!("archive_to: `{raw}`: an unclosed `{{`"));
                };
                let placeholder = &rest[open..open + len + 1];
                if !PLACEHOLDERS.contains(&placeholder) {
                    return Err(format!(
                        "archive_to: `{raw}`: unknown placeholder `{placeholder}` (known: {})",
                        PLACEHOLDERS.join(", ")
                    ));
                }
                rest = &rest[open + len + 1..];
            }
            if rest.contains('}') {
                return Err(format!("archive_to: `{raw}`: a `}}` without its `{{`"));
            }
        }
        if !absolute && parts[0].contains('{') {
            return Err(format!(
                "archive_to: `{raw}` starts with a placeholder: a relative archive needs a fixed first folder (such as \"archive/{{yyyy}}/\"), which the sync then leaves out"
            ));
        }
        let joined = parts.join("/");
        Ok(ArchiveTemplate {
            text: if absolute {
                format!("/{joined}")
            } else {
                joined
            },
        })
    }

    pub fn is_absolute(&self) -> bool {
        self.text.starts_with('/')
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The template made relative to `root` when it is an absolute path inside it
    /// (`/data/out` + `/data/out/archive/{yyyy}` -> `archive/{yyyy}`), so that the walk can
    /// leave it out; otherwise unchanged.
    pub fn relative_to(self, root: &str) -> Result<ArchiveTemplate, String> {
        let root = root.trim_end_matches('/');
        if !self.is_absolute() {
            return Ok(self);
        }
        let inside = if root.is_empty() {
            Some(self.text.trim_start_matches('/'))
        } else {
            self.text
                .strip_prefix(root)
                .and_then(|r| r.strip_prefix('/'))
        };
        match inside {
            Some(rel) => ArchiveTemplate::parse(rel),
            None if self.text == root => Err("archive_to: is the source folder itself".to_string()),
            None => Ok(self),
        }
    }

    /// The fixed folder a relative template starts with (`archive` for
    /// `archive/{yyyy}/{mm}`): the part of the source the walk leaves out. `None` for an
    /// absolute template (outside the source).
    pub fn fixed_root(&self) -> Option<&str> {
        if self.is_absolute() {
            return None;
        }
        self.text.split('/').next()
    }

    /// The fixed folder an absolute template starts with, up to the first placeholder
    /// (`/srv/archive` for `/srv/archive/{yyyy}`): the folder retention works beneath.
    pub fn fixed_prefix(&self) -> &str {
        let end = self.text.find('{').unwrap_or(self.text.len());
        match self.text[..end].rfind('/') {
            Some(i) if end < self.text.len() => &self.text[..i],
            _ => &self.text,
        }
    }

    /// The folder for a file delivered on `date` (year, month, day in the job's time zone) by
    /// job `job`.
    pub fn expand(&self, date: (i32, u32, u32), job: &str) -> String {
        self.text
            .replace("{yyyy}", &format!("{:04}", date.0))
            .replace("{mm}", &format!("{:02}", date.1))
            .replace("{dd}", &format!("{:02}", date.2))
            .replace("{job}", job)
    }
}

/// The `n`th name to try for `name` in the archive: `n = 0` is the name itself; then a number
/// before the last extension, `report.csv` -> `report.1.csv`, `report.2.csv`; a name without
/// an extension (or a dot file) gets it at the end, `README` -> `README.1`.
///
/// A counter rather than a timestamp: it keeps the extension (tools still open the file), it
/// is short and ordered the way the copies arrived, it cannot itself collide (a timestamp can,
/// twice in one second), and the archive folder's date already says when.
pub fn unique_name(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_string();
    }
    match name.rfind('.') {
        Some(i) if i > 0 => format!("{}.{n}{}", &name[..i], &name[i..]),
        _ => format!("{name}.{n}"),
    }
}

/// The first of [`unique_name`]'s names that `taken` does not hold.
pub fn free_name(name: &str, taken: impl Fn(&str) -> bool) -> String {
    (0..)
        .map(|n| unique_name(name, n))
        .find(|candidate| !taken(candidate))
        .unwrap_or_else(|| name.to_string())
}

/// A source file journaled, with its transfer's commit, to be deleted or archived: what it was
/// when it was delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceIntent {
    /// Relative to the job's root.
    pub path: String,
    /// [`AfterTransfer::Delete`] or [`AfterTransfer::Archive`].
    pub action: AfterTransfer,
    /// For an archive: the folder (the template expanded at the commit), relative to the
    /// source root or absolute.
    pub archive_dir: Option<String>,
    /// The source as transferred: size and mtime (ns, as the scan or listing saw it), and its
    /// BLAKE3 where the source is local.
    pub size: u64,
    pub mtime: i64,
    pub hash: Option<blake3::Hash>,
}

/// The source file at an intent's path now, as the run observes it just before acting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub size: u64,
    pub mtime: i64,
    /// Known for a local source (read and hashed), unknown for a remote one.
    pub hash: Option<blake3::Hash>,
}

/// What to do with a journaled source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// Still the file that was delivered: delete or archive it.
    Act,
    /// It changed since its transfer: kept, and the plan sends it again as a changed file.
    Changed(String),
    /// It is no longer there (moved or deleted by someone else): nothing to do.
    Gone,
}

/// Whether `intent`'s source, observed now as `now`, may be deleted or archived: only when it
/// is still the file that was delivered. A local source (hashed then and now) is judged by its
/// size and content, so a touched but unchanged file still goes (the plan would only record
/// its new time, never send it again); a remote one by its size and modification time. Anything
/// else keeps it.
pub fn due(intent: &SourceIntent, now: Option<&Observed>) -> Due {
    let Some(now) = now else {
        return Due::Gone;
    };
    if now.size != intent.size {
        return Due::Changed(format!(
            "it has {} bytes now, {} when it was delivered",
            now.size, intent.size
        ));
    }
    match (intent.hash, now.hash) {
        (Some(then), Some(now)) if then != now => {
            Due::Changed("its content changed since it was delivered".into())
        }
        (Some(_), Some(_)) => Due::Act,
        // A local intent always has its hash; without one now, nothing shows it is the same.
        (Some(_), None) => Due::Changed("its content could not be read to compare".into()),
        (None, _) if now.mtime != intent.mtime => {
            Due::Changed("its modification time changed since it was delivered".into())
        }
        (None, _) => Due::Act,
    }
}

/// Whether an archived file that entered the archive at `entered` (unix seconds: its inode's
/// change time, which the rename into the archive sets) is past `retention` at `now`.
pub fn expired(entered: i64, now: i64, retention: std::time::Duration) -> bool {
    let keep = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    now.saturating_sub(entered) > keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_and_bad_ones_are_refused() {
        let t = ArchiveTemplate::parse("archive/{yyyy}/{mm}/{dd}/").unwrap();
        assert_eq!(t.expand((2026, 3, 7), "acme"), "archive/2026/03/07");
        assert_eq!(t.fixed_root(), Some("archive"));
        let abs = ArchiveTemplate::parse("/srv/arch/{job}/{yyyy}").unwrap();
        assert!(abs.is_absolute());
        assert_eq!(abs.expand((2026, 12, 4), "acme"), "/srv/arch/acme/2026");
        assert_eq!(abs.fixed_root(), None);
        assert_eq!(abs.fixed_prefix(), "/srv/arch");
        assert_eq!(
            ArchiveTemplate::parse("/srv/archive")
                .unwrap()
                .fixed_prefix(),
            "/srv/archive"
        );
        assert_eq!(
            ArchiveTemplate::parse("done").unwrap().fixed_root(),
            Some("done")
        );
        for bad in [
            "", "/", "{yyyy}/x", "a/../b", "a/{hh}", "a/{yyyy", "a/b}", "./a",
        ] {
            assert!(ArchiveTemplate::parse(bad).is_err(), "{bad:?}");
        }
        // An absolute template inside the source root becomes relative (so it is left out).
        let inside = ArchiveTemplate::parse("/data/out/archive/{yyyy}")
            .unwrap()
            .relative_to("/data/out/")
            .unwrap();
        assert_eq!(inside.as_str(), "archive/{yyyy}");
        let outside = ArchiveTemplate::parse("/data/outbox/{yyyy}")
            .unwrap()
            .relative_to("/data/out")
            .unwrap();
        assert!(outside.is_absolute());
        assert!(ArchiveTemplate::parse("/data/out")
            .unwrap()
            .relative_to("/data/out")
            .is_err());
        assert_eq!(
            ArchiveTemplate::parse("/archive/{mm}")
                .unwrap()
                .relative_to("/")
                .unwrap()
                .as_str(),
            "archive/{mm}"
        );
    }

    #[test]
    fn a_taken_name_gets_a_number_before_its_extension() {
        assert_eq!(unique_name("report.csv", 0), "report.csv");
        assert_eq!(unique_name("report.csv", 1), "report.1.csv");
        assert_eq!(unique_name("a.tar.gz", 2), "a.tar.2.gz");
        assert_eq!(unique_name("README", 3), "README.3");
        assert_eq!(unique_name(".profile", 1), ".profile.1");
        let taken = ["report.csv", "report.1.csv"];
        assert_eq!(
            free_name("report.csv", |n| taken.contains(&n)),
            "report.2.csv"
        );
        assert_eq!(free_name("new.csv", |n| taken.contains(&n)), "new.csv");
    }

    #[test]
    fn only_the_delivered_file_is_due() {
        let h = blake3::hash(b"x");
        let intent = SourceIntent {
            path: "a.csv".into(),
            action: AfterTransfer::Archive,
            archive_dir: Some("archive".into()),
            size: 1,
            mtime: 10,
            hash: Some(h),
        };
        let seen = |size, mtime, hash| Observed { size, mtime, hash };
        assert_eq!(due(&intent, Some(&seen(1, 10, Some(h)))), Due::Act);
        assert_eq!(due(&intent, None), Due::Gone);
        assert!(matches!(
            due(&intent, Some(&seen(2, 10, Some(h)))),
            Due::Changed(_)
        ));
        // Touched, same content: still the delivered file.
        assert_eq!(due(&intent, Some(&seen(1, 11, Some(h)))), Due::Act);
        let other = blake3::hash(b"y");
        assert!(matches!(
            due(&intent, Some(&seen(1, 10, Some(other)))),
            Due::Changed(_)
        ));
        assert!(matches!(
            due(&intent, Some(&seen(1, 10, None))),
            Due::Changed(_)
        ));
        // A remote source has no hash: size and time decide.
        let remote = SourceIntent {
            hash: None,
            ..intent
        };
        assert_eq!(due(&remote, Some(&seen(1, 10, None))), Due::Act);
        assert!(matches!(
            due(&remote, Some(&seen(1, 11, None))),
            Due::Changed(_)
        ));
    }

    #[test]
    fn retention_counts_from_the_day_a_file_entered_the_archive() {
        let day = std::time::Duration::from_secs(86_400);
        assert!(!expired(1000, 1000 + 86_400, day));
        assert!(expired(1000, 1001 + 86_400, day));
    }
}
