//! `after_transfer:`, `archive_to:` and `archive_retention:`: what becomes of a source file
//! once its copy is delivered, and how they combine with `mode:` (delete and archive imply
//! `mode: copy`; an explicit mirror with them is refused: a source moved away is not a
//! deletion to mirror).

use std::time::Duration;

use super::{parse_duration, ConfigError, Ctx};
use crate::model::after::{AfterTransfer, ArchiveTemplate};
use crate::model::policy::{Direction, SyncMode};

/// A job's `after_transfer:` settings, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceAfter {
    pub action: AfterTransfer,
    /// `archive_to:` (with `after_transfer: archive` only): relative to the source root (the
    /// local folder for a push, the remote folder for a pull) or absolute on the source side.
    pub archive_to: Option<ArchiveTemplate>,
    /// `archive_retention:` (a local archive, so push jobs only): archived files older than
    /// this (counted from when they entered the archive) are removed after each run.
    pub retention: Option<Duration>,
}

impl SourceAfter {
    /// Whether source files are deleted or archived after their transfer.
    pub fn moves_sources(&self) -> bool {
        self.action != AfterTransfer::Keep
    }
}

/// The keys as written.
pub(super) struct RawAfter<'a> {
    pub(super) action: Option<AfterTransfer>,
    pub(super) archive_to: Option<&'a str>,
    pub(super) retention: Option<&'a str>,
    pub(super) mode: Option<SyncMode>,
    pub(super) direction: Direction,
    /// The source root: the local folder (push) or the remote folder (pull).
    pub(super) source_root: &'a str,
    /// `upload.verify` (push jobs): without it a delivery is not verified, so no source may go.
    pub(super) upload_verified: bool,
}

/// Validates the keys; returns them with the job's mode.
pub(super) fn from_raw(
    raw: RawAfter<'_>,
    ctx: &Ctx,
) -> Result<(SourceAfter, SyncMode), ConfigError> {
    let action = raw.action.unwrap_or_default();
    let mode = match (action, raw.mode) {
        (AfterTransfer::Keep, mode) => mode.unwrap_or(SyncMode::Mirror),
        (_, Some(SyncMode::Mirror)) => {
            return Err(ctx.fail(
                &["mode"],
                format!(
                    "mode: mirror cannot go with after_transfer: {}: a source file moved away after its transfer is not a deletion to mirror; leave mode out (after_transfer: {} implies mode: copy)",
                    action.as_str(),
                    action.as_str()
                ),
            ))
        }
        (_, _) => SyncMode::Copy,
    };
    if action != AfterTransfer::Keep && raw.direction == Direction::Push && !raw.upload_verified {
        return Err(ctx.fail(
            &["after_transfer"],
            format!(
                "after_transfer: {} needs verified uploads: with upload.verify: none a delivery is never checked, so no source may be deleted or archived",
                action.as_str()
            ),
        ));
    }
    let archive_to = match (action, raw.archive_to) {
        (AfterTransfer::Archive, Some(text)) => Some(
            ArchiveTemplate::parse(text)
                .and_then(|t| t.relative_to(raw.source_root))
                .map_err(|e| ctx.fail(&["archive_to"], e))?,
        ),
        (AfterTransfer::Archive, None) => return Err(ctx.fail(
            &["after_transfer"],
            "after_transfer: archive needs archive_to: (the folder, e.g. \"archive/{yyyy}/{mm}/\")",
        )),
        (_, Some(_)) => {
            return Err(ctx.fail(
                &["archive_to"],
                "archive_to: is for after_transfer: archive",
            ))
        }
        (_, None) => None,
    };
    let retention = match raw.retention {
        None => None,
        Some(_) if action != AfterTransfer::Archive => {
            return Err(ctx.fail(
                &["archive_retention"],
                "archive_retention: is for after_transfer: archive",
            ))
        }
        Some(_) if raw.direction == Direction::Pull => {
            return Err(ctx.fail(
                &["archive_retention"],
                "archive_retention: applies to a local archive (push jobs); a pull's archive is on the server",
            ))
        }
        Some(text) => {
            let d = parse_duration("archive_retention", text)
                .map_err(|e| ctx.fail(&["archive_retention"], e))?;
            if d < Duration::from_secs(86_400) {
                return Err(ctx.fail(
                    &["archive_retention"],
                    format!("archive_retention: `{text}` is less than a day (`1d`)"),
                ));
            }
            Some(d)
        }
    };
    Ok((
        SourceAfter {
            action,
            archive_to,
            retention,
        },
        mode,
    ))
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{parse, GOOD};
    use crate::model::after::AfterTransfer;
    use crate::model::policy::SyncMode;

    #[test]
    fn keep_is_the_default_and_archive_implies_copy() {
        let job = parse(GOOD).unwrap();
        assert_eq!(job.after.action, AfterTransfer::Keep);
        assert_eq!(job.mode, SyncMode::Mirror);
        let job = parse(&format!(
            "{GOOD}after_transfer: archive\narchive_to: \"archive/{{yyyy}}/{{mm}}/\"\narchive_retention: 90d\n"
        ))
        .unwrap();
        assert_eq!(job.after.action, AfterTransfer::Archive);
        assert_eq!(job.mode, SyncMode::Copy);
        assert_eq!(
            job.after.retention,
            Some(std::time::Duration::from_secs(90 * 86_400))
        );
        assert!(
            job.filter.excludes("archive"),
            "the archive is left out of the walk"
        );
        assert!(job.filter.excludes("archive/2026/x.csv"));
        assert!(!job.filter.excludes("archived.csv"));
        let job = parse(&format!("{GOOD}after_transfer: delete\nmode: copy\n")).unwrap();
        assert_eq!(job.mode, SyncMode::Copy);
    }

    #[test]
    fn mistakes_are_refused_with_the_reason() {
        for (extra, needle) in [
            (
                "after_transfer: delete\nmode: mirror\n",
                "implies mode: copy",
            ),
            ("after_transfer: archive\n", "needs archive_to"),
            ("archive_to: x\n", "is for after_transfer: archive"),
            (
                "after_transfer: delete\narchive_retention: 9d\n",
                "is for after_transfer: archive",
            ),
            (
                "after_transfer: archive\narchive_to: \"{yyyy}\"\n",
                "fixed first folder",
            ),
            (
                "after_transfer: archive\narchive_to: \"a/{hour}\"\n",
                "unknown placeholder",
            ),
            (
                "after_transfer: archive\narchive_to: a\narchive_retention: 1h\n",
                "less than a day",
            ),
            ("after_transfer: move\n", "after_transfer"),
            (
                "after_transfer: delete\nupload:\n  verify: none\n",
                "needs verified uploads",
            ),
            (
                "direction: pull\nafter_transfer: archive\narchive_to: a\narchive_retention: 9d\n",
                "push jobs",
            ),
        ] {
            let e = parse(&format!("{GOOD}{extra}")).unwrap_err();
            assert!(e.reason.contains(needle), "{extra:?}: {e}");
            assert!(e.line > 1, "points at a key: {e}");
        }
    }
}
