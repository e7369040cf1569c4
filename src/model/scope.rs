//! The part of a job's tree an incremental run looks at.
//!
//! A watch knows which local paths changed. Listing and planning the whole tree for one changed
//! file costs seconds at 100,000 files, so a watch-triggered run of a push job looks only at the
//! *roots*: the changed paths, each with everything below it (a created, deleted or renamed
//! directory brings its whole subtree). Both sides and the ledger are read for the roots only,
//! and the same pure [`crate::model::plan::plan`] decides over that subset. Outside the roots the run
//! changes nothing; full runs (start-up, schedule, poll, an overflowed watch, a failed run)
//! still compare everything.

use std::collections::BTreeSet;

use crate::model::paths::ancestors;

/// At most this many roots make an incremental run; more and a full run is cheaper than a
/// listing of each root's directory.
pub const MAX_ROOTS: usize = 1_000;

/// The roots of an incremental run: `/`-separated paths relative to the job's root, none of
/// them inside another, never the job's root itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    roots: BTreeSet<String>,
}

impl Scope {
    /// The scope of these changed paths, or `None` when only a full run will do: the job's
    /// root itself changed, a path is not a plain relative path, or there are more than
    /// [`MAX_ROOTS`] roots.
    pub fn of_changed<'a>(paths: impl IntoIterator<Item = &'a str>) -> Option<Scope> {
        let mut all = BTreeSet::new();
        for p in paths {
            if p.is_empty()
                || p.starts_with('/')
                || p.ends_with('/')
                || p.split('/')
                    .any(|part| part.is_empty() || part == "." || part == "..")
            {
                return None;
            }
            all.insert(p.to_string());
        }
        // In sorted order an ancestor comes before its descendants, so every kept root that
        // could contain `p` is already in `roots`.
        let mut roots = BTreeSet::new();
        for p in all {
            if !ancestors(&p).any(|a| roots.contains(a)) {
                roots.insert(p);
            }
        }
        if roots.is_empty() || roots.len() > MAX_ROOTS {
            return None;
        }
        Some(Scope { roots })
    }

    pub fn roots(&self) -> impl Iterator<Item = &str> {
        self.roots.iter().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.roots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// Whether `path` is a root or inside one.
    pub fn contains(&self, path: &str) -> bool {
        self.roots.contains(path) || ancestors(path).any(|a| self.roots.contains(a))
    }

    /// The union of two scopes (runs coalesced by the agent), `None` beyond [`MAX_ROOTS`].
    pub fn union(&self, other: &Scope) -> Option<Scope> {
        Scope::of_changed(self.roots().chain(other.roots()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::paths::is_under;
    use proptest::prelude::*;

    fn roots(s: &Scope) -> Vec<&str> {
        s.roots().collect()
    }

    #[test]
    fn nested_paths_collapse_into_their_outermost_root() {
        let s = Scope::of_changed(["new/deeper/b.csv", "new", "new/deeper", "a.csv"]).unwrap();
        assert_eq!(roots(&s), ["a.csv", "new"]);
        // `a.b` sorts between `a` and `a/x`: `a/x` is still inside `a`.
        let s = Scope::of_changed(["a", "a.b", "a/x", "a.b/y"]).unwrap();
        assert_eq!(roots(&s), ["a", "a.b"]);
        assert!(s.contains("a/x/y") && s.contains("a.b") && !s.contains("ab"));
        assert!(!s.contains("a.c"));
    }

    #[test]
    fn the_whole_tree_or_odd_paths_need_a_full_run() {
        assert_eq!(Scope::of_changed([""]), None);
        assert_eq!(Scope::of_changed(["a", ""]), None);
        assert_eq!(Scope::of_changed(["/abs"]), None);
        assert_eq!(Scope::of_changed(["a/../b"]), None);
        assert_eq!(Scope::of_changed(["a//b"]), None);
        assert_eq!(Scope::of_changed(Vec::<&str>::new()), None);
        let many: Vec<String> = (0..=MAX_ROOTS).map(|i| format!("f{i}")).collect();
        assert_eq!(Scope::of_changed(many.iter().map(String::as_str)), None);
        assert!(Scope::of_changed(many[1..].iter().map(String::as_str)).is_some());
    }

    #[test]
    fn helpers() {
        let u = Scope::of_changed(["x/y"])
            .unwrap()
            .union(&Scope::of_changed(["x", "z"]).unwrap())
            .unwrap();
        assert_eq!(roots(&u), ["x", "z"]);
    }

    proptest! {
        #[test]
        fn roots_cover_exactly_the_changed_paths_and_their_subtrees(
            changed in prop::collection::vec(
                prop::collection::vec(prop::sample::select(vec!["a", "a.b", "b", "é"]), 1..=3)
                    .prop_map(|v| v.join("/")),
                1..8,
            ),
            probe in prop::collection::vec(prop::sample::select(vec!["a", "a.b", "b", "é"]), 1..=4)
                .prop_map(|v| v.join("/")),
        ) {
            let s = Scope::of_changed(changed.iter().map(String::as_str)).unwrap();
            // No root inside another.
            for r in s.roots() {
                prop_assert!(!ancestors(r).any(|a| s.roots().any(|o| o == a)));
            }
            // A path is in scope iff it is a changed path or inside one.
            let expected = changed.iter().any(|c| probe == *c || is_under(&probe, c));
            prop_assert_eq!(s.contains(&probe), expected);
        }
    }
}
