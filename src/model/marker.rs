//! Ready markers: a pull takes a remote file only once the partner says it is complete
//! (`ready_marker:` and `batch_marker:` in a job file), instead of judging by time (`settle:`).
//!
//! - A per-file marker names its file by a template, `ready_marker: "{name}.done"`: the remote
//!   file `a/x.csv` is taken only once `a/x.csv.done` exists beside it.
//! - A batch marker is one name, `batch_marker: "_READY"`: the files of a folder (its own
//!   files, not those of its subfolders, which need a marker of their own) are taken only once
//!   `_READY` exists in that folder.
//!
//! With both, a file needs both. A marker is never data: every remote file whose name fits
//! the template or is the batch marker's name is left out of the sync (never downloaded, never
//! a reason to delete), whether or not its file exists. After the run a marker is deleted on
//! the server (`marker_after_pull: delete`, the default) once none of the files it released is
//! left pending (failed, still changing, stopped): a marker left in place would release the
//! partner's next, half-written, batch.
//!
//! Pure: the run hands in the markers its listing found and the paths still pending.

use std::collections::BTreeSet;

use crate::model::paths::{join, split_parent};
use crate::model::plan::{Action, SyncPlan, Waiting};

/// `marker_after_pull:` in a job file: what becomes of a marker once its files are pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MarkerAfterPull {
    /// Deleted on the server (a failed delete is a warning): the partner's next batch needs a
    /// new marker, so a marker left behind cannot release files still being written.
    #[default]
    Delete,
    /// Left in place: for partners who remove their markers themselves, or servers where the
    /// job may not delete. The partner must then remove it before writing the next batch.
    Keep,
}

/// The placeholder a `ready_marker:` template must hold once.
pub const NAME_PLACEHOLDER: &str = "{name}";

/// A per-file marker's name as a template: `prefix{name}suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameTemplate {
    prefix: String,
    suffix: String,
}

impl NameTemplate {
    /// Reads a template such as `{name}.done` or `{name}.ok` or `.{name}.ready`: `{name}` once,
    /// something beside it (or every file would be its own marker), no path separator, and no
    /// other braces (a typo such as `{file}.done` would otherwise be a literal name).
    pub fn parse(text: &str) -> Result<NameTemplate, String> {
        let mut parts = text.split(NAME_PLACEHOLDER);
        let (Some(prefix), Some(suffix), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!(
                "`{text}` must hold {NAME_PLACEHOLDER} exactly once (e.g. \"{NAME_PLACEHOLDER}.done\")"
            ));
        };
        if prefix.is_empty() && suffix.is_empty() {
            return Err(format!(
                "`{text}` would make every file its own marker: add a suffix or prefix (e.g. \"{NAME_PLACEHOLDER}.done\")"
            ));
        }
        check_name_part(text, prefix)?;
        check_name_part(text, suffix)?;
        Ok(NameTemplate {
            prefix: prefix.to_string(),
            suffix: suffix.to_string(),
        })
    }

    /// The marker's name for a file named `name`.
    pub fn marker_for(&self, name: &str) -> String {
        format!("{}{name}{}", self.prefix, self.suffix)
    }

    /// The file a marker named `name` stands for, if `name` fits the template.
    pub fn owner_of<'a>(&self, name: &'a str) -> Option<&'a str> {
        let owner = name
            .strip_prefix(self.prefix.as_str())?
            .strip_suffix(self.suffix.as_str())?;
        (!owner.is_empty()).then_some(owner)
    }
}

fn check_name_part(text: &str, part: &str) -> Result<(), String> {
    if part
        .chars()
        .any(|c| matches!(c, '/' | '\\' | '{' | '}') || c.is_control())
    {
        return Err(format!(
            "`{text}` is a file name beside the file: no `/`, `\\`, control characters or braces besides {NAME_PLACEHOLDER}"
        ));
    }
    Ok(())
}

/// Checks a `batch_marker:` name: one file name.
pub fn check_batch_name(text: &str) -> Result<(), String> {
    if text.is_empty()
        || text == "."
        || text == ".."
        || text.contains(NAME_PLACEHOLDER)
        || text
            .chars()
            .any(|c| matches!(c, '/' | '\\') || c.is_control())
    {
        return Err(format!(
            "`{text}` must be one file name in the folder it releases (e.g. \"_READY\"), without `/` or {NAME_PLACEHOLDER}"
        ));
    }
    Ok(())
}

/// A pull job's markers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerRule {
    pub per_file: Option<NameTemplate>,
    pub batch: Option<String>,
    pub after_pull: MarkerAfterPull,
}

impl MarkerRule {
    /// Whether the remote file at `rel` is a marker (never data).
    pub fn is_marker(&self, rel: &str) -> bool {
        let (_, name) = split_parent(rel);
        self.batch.as_deref() == Some(name)
            || self
                .per_file
                .as_ref()
                .is_some_and(|t| t.owner_of(name).is_some())
    }

    /// The markers (paths) the data file at `rel` needs before it is taken.
    pub fn needed_by(&self, rel: &str) -> Vec<String> {
        let (dir, name) = split_parent(rel);
        let mut needed = Vec::new();
        if let Some(t) = &self.per_file {
            needed.push(join(dir, &t.marker_for(name)));
        }
        if let Some(b) = &self.batch {
            needed.push(join(dir, b));
        }
        needed
    }

    /// Whether the marker at `marker` releases the data file at `rel`.
    fn releases(&self, marker: &str, rel: &str) -> bool {
        self.needed_by(rel).iter().any(|m| m == marker)
    }

    /// The file a per-file marker at `marker` stands for (a path), if it is one.
    fn owner_of(&self, marker: &str) -> Option<String> {
        let (dir, name) = split_parent(marker);
        let t = self.per_file.as_ref()?;
        t.owner_of(name).map(|owner| join(dir, owner))
    }
}

/// Takes out of `plan` every download whose markers are not all in `present` (the markers the
/// listing found) and lists it in `plan.waiting`, naming the first marker missing.
pub fn hold_unmarked(plan: &mut SyncPlan, rule: &MarkerRule, present: &BTreeSet<String>) {
    let mut waiting = Vec::new();
    plan.actions.retain(|a| {
        let Action::Download { path, source } = a else {
            return true;
        };
        let Some(missing) = rule
            .needed_by(path)
            .into_iter()
            .find(|m| !present.contains(m))
        else {
            return true;
        };
        waiting.push(Waiting {
            path: path.clone(),
            size: source.size,
            remaining_ns: 0,
            marker: Some(missing),
        });
        false
    });
    plan.waiting.extend(waiting);
}

/// The markers (of `present`) to delete on the server after a run in which the files in
/// `pending` were not taken (failed, still changing, waiting, stopped): those that release no
/// pending file. A per-file marker goes only if its file is one the job takes (`takes`: the
/// job's include/exclude), so that a job pulling `*.csv` never deletes the marker of an `.xml`
/// another job waits for. None with `marker_after_pull: keep`.
pub fn markers_to_delete(
    rule: &MarkerRule,
    present: &[String],
    pending: &BTreeSet<String>,
    takes: impl Fn(&str) -> bool,
) -> Vec<String> {
    if rule.after_pull == MarkerAfterPull::Keep {
        return Vec::new();
    }
    present
        .iter()
        .filter(|m| {
            let is_batch = rule.batch.as_deref() == Some(split_parent(m).1);
            is_batch || rule.owner_of(m).is_some_and(|owner| takes(&owner))
        })
        .filter(|m| !pending.iter().any(|p| rule.releases(m, p)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::snapshot::{Entry, Kind};
    use proptest::prelude::*;

    fn rule(per_file: Option<&str>, batch: Option<&str>) -> MarkerRule {
        MarkerRule {
            per_file: per_file.map(|t| NameTemplate::parse(t).unwrap()),
            batch: batch.map(str::to_string),
            after_pull: MarkerAfterPull::Delete,
        }
    }

    fn download(path: &str) -> Action {
        Action::Download {
            path: path.into(),
            source: Entry {
                kind: Kind::File,
                size: 3,
                mtime: 0,
                hash: None,
                id: None,
            },
        }
    }

    fn set(paths: &[&str]) -> BTreeSet<String> {
        paths.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn templates_need_the_placeholder_once_and_a_file_name() {
        let t = NameTemplate::parse("{name}.done").unwrap();
        assert_eq!(t.marker_for("x.csv"), "x.csv.done");
        assert_eq!(t.owner_of("x.csv.done"), Some("x.csv"));
        assert_eq!(t.owner_of(".done"), None);
        assert_eq!(t.owner_of("x.csv"), None);
        let t = NameTemplate::parse(".{name}.ready").unwrap();
        assert_eq!(t.owner_of(".a.ready"), Some("a"));
        for bad in [
            "{name}",
            "done",
            "{name}.{name}",
            "{file}.done",
            "ok/{name}",
            "",
        ] {
            assert!(NameTemplate::parse(bad).is_err(), "{bad}");
        }
        assert!(check_batch_name("_READY").is_ok());
        for bad in ["", ".", "..", "a/b", "{name}.ok"] {
            assert!(check_batch_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_file_waits_for_its_marker_and_the_marker_is_no_data() {
        let r = rule(Some("{name}.done"), None);
        assert!(r.is_marker("d/x.csv.done"));
        assert!(!r.is_marker("d/x.csv"));
        let mut plan = SyncPlan {
            actions: vec![
                download("d/x.csv"),
                download("d/y.csv"),
                Action::MakeDir { path: "d".into() },
            ],
            ..SyncPlan::default()
        };
        hold_unmarked(&mut plan, &r, &set(&["d/y.csv.done"]));
        let kept: Vec<&str> = plan.actions.iter().map(Action::path).collect();
        assert_eq!(kept, ["d/y.csv", "d"]);
        assert_eq!(plan.waiting.len(), 1);
        assert_eq!(plan.waiting[0].path, "d/x.csv");
        assert_eq!(plan.waiting[0].marker.as_deref(), Some("d/x.csv.done"));
    }

    #[test]
    fn a_batch_marker_releases_its_own_folder_only() {
        let r = rule(None, Some("_READY"));
        assert!(r.is_marker("_READY") && r.is_marker("a/_READY"));
        let mut plan = SyncPlan {
            actions: vec![
                download("a/1.csv"),
                download("a/b/2.csv"),
                download("3.csv"),
            ],
            ..SyncPlan::default()
        };
        hold_unmarked(&mut plan, &r, &set(&["a/_READY"]));
        let kept: Vec<&str> = plan.actions.iter().map(Action::path).collect();
        assert_eq!(kept, ["a/1.csv"]);
        let waiting: Vec<_> = plan
            .waiting
            .iter()
            .map(|w| (w.path.as_str(), w.marker.as_deref()))
            .collect();
        assert_eq!(
            waiting,
            [("a/b/2.csv", Some("a/b/_READY")), ("3.csv", Some("_READY"))]
        );
    }

    #[test]
    fn with_both_a_file_needs_both() {
        let r = rule(Some("{name}.ok"), Some("_READY"));
        let mut plan = SyncPlan {
            actions: vec![download("x"), download("y")],
            ..SyncPlan::default()
        };
        hold_unmarked(&mut plan, &r, &set(&["x.ok", "y.ok"]));
        assert!(plan.actions.is_empty());
        assert_eq!(plan.waiting[0].marker.as_deref(), Some("_READY"));
    }

    #[test]
    fn markers_are_deleted_once_nothing_they_release_is_pending() {
        let r = rule(Some("{name}.done"), Some("_READY"));
        let present = [
            "a.done".to_string(),
            "b.done".into(),
            "_READY".into(),
            "s/_READY".into(),
        ];
        // b failed: its marker and the root's batch marker stay; the subfolder's goes.
        let all = |_: &str| true;
        let gone = markers_to_delete(&r, &present, &set(&["b"]), all);
        assert_eq!(gone, ["a.done", "s/_READY"]);
        let gone = markers_to_delete(&r, &present, &BTreeSet::new(), all);
        assert_eq!(gone.len(), 4);
        // The marker of a file the job does not take (another job's) stays.
        let gone = markers_to_delete(&r, &present, &BTreeSet::new(), |p: &str| p != "b");
        assert_eq!(gone, ["a.done", "_READY", "s/_READY"]);
        let keep = MarkerRule {
            after_pull: MarkerAfterPull::Keep,
            ..r
        };
        assert!(markers_to_delete(&keep, &present, &BTreeSet::new(), all).is_empty());
    }

    proptest! {
        /// Whatever the names and markers: a download stays in the plan only if every marker
        /// it needs is present, no marker is ever a download that stays, and nothing is lost
        /// (each download either stays or waits).
        #[test]
        fn taken_only_with_every_marker(
            files in prop::collection::btree_set("(d/)?[a-c]{1,2}(\\.done)?", 0..8),
            markers in prop::collection::btree_set("(d/)?([a-c]{1,2}\\.done|_READY)", 0..8),
            per_file in any::<bool>(),
            batch in any::<bool>(),
        ) {
            let r = rule(per_file.then_some("{name}.done"), batch.then_some("_READY"));
            let data: Vec<&String> = files.iter().filter(|f| !r.is_marker(f)).collect();
            let mut plan = SyncPlan {
                actions: data.iter().map(|f| download(f)).collect(),
                ..SyncPlan::default()
            };
            hold_unmarked(&mut plan, &r, &markers);
            prop_assert_eq!(plan.actions.len() + plan.waiting.len(), data.len());
            for a in &plan.actions {
                prop_assert!(!r.is_marker(a.path()));
                for m in r.needed_by(a.path()) {
                    prop_assert!(markers.contains(&m));
                }
            }
            for w in &plan.waiting {
                let m = w.marker.clone().unwrap();
                prop_assert!(!markers.contains(&m));
            }
        }
    }
}
