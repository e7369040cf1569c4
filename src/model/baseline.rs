//! Which source files a job leaves alone because they were there before the job began
//! (`initial_files: skip` in a job file).
//!
//! Some partner folders hold years of files nobody wants sent again, yet every file that
//! appears from now on must be sent, including one copied in with an old modification time
//! (an mtime watermark would miss it). So "new" is decided by the ledger's knowledge of the
//! path, never by its time: the job's first run records every source file it would have sent
//! as the *baseline* (path, size, time) and sends none of them; a later run sends any file the
//! baseline does not hold, and a baseline file once its size or time changes (it is new
//! content), which also drops it from the baseline.
//!
//! Pure: the run hands in the baseline it loaded and writes back the [`BaselineChange`].

use std::collections::{BTreeMap, BTreeSet};

use crate::model::plan::{Action, SyncPlan};

/// `initial_files:` of a job: what its first run does with the files the source already holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InitialFiles {
    /// Send them, like every other file (what a job always did).
    #[default]
    Transfer,
    /// Leave them alone for good, unless they change; send only files that appear later.
    Skip,
}

/// A source file as the baseline knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaselineFile {
    pub size: u64,
    /// ns since the epoch, as the source's listing or `stat` gave it.
    pub mtime: i64,
}

/// The files a job's first run found, by path.
pub type Baseline = BTreeMap<String, BaselineFile>;

/// What [`hold_baseline`] decided: the rows to add to and drop from the baseline, and how many
/// transfers it left alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BaselineChange {
    pub add: Baseline,
    pub drop: Vec<String>,
    pub held: u64,
}

/// Takes out of `plan` the transfers of files the job leaves alone. `first`: the baseline was
/// never taken, so every transfer is a file that was there before the job began and goes into
/// [`BaselineChange::add`]. Otherwise a transfer whose path the baseline holds with the same
/// size and time is left alone, and one whose file changed is kept and its row dropped.
/// Directories the plan would make only for files left alone are not made.
pub fn hold_baseline(plan: &mut SyncPlan, baseline: &Baseline, first: bool) -> BaselineChange {
    let mut change = BaselineChange::default();
    let mut held_paths = BTreeSet::new();
    plan.actions.retain(|a| {
        let (Action::Upload { path, source } | Action::Download { path, source }) = a else {
            return true;
        };
        let now = BaselineFile {
            size: source.size,
            mtime: source.mtime,
        };
        let hold = if first {
            change.add.insert(path.clone(), now);
            true
        } else {
            match baseline.get(path) {
                Some(b) if *b == now => true,
                Some(_) => {
                    change.drop.push(path.clone());
                    false
                }
                None => false,
            }
        };
        if hold {
            held_paths.insert(path.clone());
        }
        !hold
    });
    change.held = held_paths.len() as u64;
    if held_paths.is_empty() {
        return change;
    }
    let sent: BTreeSet<&str> = plan
        .actions
        .iter()
        .filter(|a| a.is_transfer())
        .map(Action::path)
        .collect();
    let under = |set: &BTreeSet<String>, dir: &str| {
        let prefix = format!("{dir}/");
        set.range(prefix.clone()..)
            .next()
            .is_some_and(|p| p.starts_with(&prefix))
    };
    let sent_owned: BTreeSet<String> = sent.iter().map(|s| s.to_string()).collect();
    plan.actions.retain(|a| match a {
        Action::MakeDir { path } => !under(&held_paths, path) || under(&sent_owned, path),
        _ => true,
    });
    change
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::snapshot::{Entry, Kind};

    fn file(size: u64, mtime: i64) -> Entry {
        Entry {
            kind: Kind::File,
            size,
            mtime,
            hash: None,
            id: None,
        }
    }

    fn up(path: &str, size: u64, mtime: i64) -> Action {
        Action::Upload {
            path: path.to_string(),
            source: file(size, mtime),
        }
    }

    fn dir(path: &str) -> Action {
        Action::MakeDir {
            path: path.to_string(),
        }
    }

    fn plan_of(actions: Vec<Action>) -> SyncPlan {
        SyncPlan {
            actions,
            ..SyncPlan::default()
        }
    }

    fn paths(plan: &SyncPlan) -> Vec<&str> {
        plan.actions.iter().map(Action::path).collect()
    }

    #[test]
    fn the_first_run_sends_nothing_and_remembers_every_file_it_would_have_sent() {
        let mut plan = plan_of(vec![
            dir("old"),
            dir("empty"),
            up("old/a.csv", 3, 10),
            up("b.csv", 4, 20),
        ]);
        let change = hold_baseline(&mut plan, &Baseline::new(), true);
        assert_eq!(change.held, 2);
        assert_eq!(change.add.len(), 2);
        assert_eq!(
            change.add.get("old/a.csv"),
            Some(&BaselineFile { size: 3, mtime: 10 })
        );
        // `old` was only for a file left alone; an empty source directory is still made.
        assert_eq!(paths(&plan), vec!["empty"]);
    }

    #[test]
    fn a_later_run_sends_new_and_changed_files_whatever_their_time() {
        let baseline: Baseline = [
            ("a".to_string(), BaselineFile { size: 3, mtime: 10 }),
            ("b".to_string(), BaselineFile { size: 4, mtime: 20 }),
        ]
        .into();
        let mut plan = plan_of(vec![
            up("a", 3, 10), // unchanged: left alone
            up("b", 4, 21), // changed: sent, its row dropped
            up("c", 1, 1),  // new, with a time older than any baseline file: sent
        ]);
        let change = hold_baseline(&mut plan, &baseline, false);
        assert_eq!(paths(&plan), vec!["b", "c"]);
        assert_eq!(change.drop, vec!["b".to_string()]);
        assert!(change.add.is_empty());
        assert_eq!(change.held, 1);
    }

    #[test]
    fn a_directory_is_made_when_a_file_in_it_is_sent() {
        let baseline: Baseline = [("d/old".to_string(), BaselineFile { size: 1, mtime: 1 })].into();
        let mut plan = plan_of(vec![dir("d"), up("d/old", 1, 1), up("d/new", 2, 2)]);
        hold_baseline(&mut plan, &baseline, false);
        assert_eq!(paths(&plan), vec!["d", "d/new"]);
        // A sibling whose name extends the directory's is not "under" it.
        let mut plan = plan_of(vec![dir("d"), up("d/old", 1, 1), up("d2/new", 2, 2)]);
        hold_baseline(&mut plan, &baseline, false);
        assert_eq!(paths(&plan), vec!["d2/new"]);
    }

    #[test]
    fn deletes_records_and_other_actions_are_untouched() {
        let mut plan = plan_of(vec![
            Action::DeleteFile {
                path: "x".to_string(),
            },
            Action::Forget {
                path: "y".to_string(),
            },
        ]);
        let before = plan.clone();
        let change = hold_baseline(&mut plan, &Baseline::new(), true);
        assert_eq!(plan, before);
        assert_eq!(change, BaselineChange::default());
    }
}
