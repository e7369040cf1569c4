//! `include:` and `exclude:`: which paths under the job's root take part in the sync.

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::raw::PatternList;
use super::{ConfigError, Ctx};

/// Include/exclude patterns, matched against `/`-separated paths relative to the job's root.
#[derive(Debug, Clone)]
pub struct PathFilter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    /// A pull job's ready markers: never part of the sync on either side, whatever the
    /// patterns; a remote listing notes them (see [`PathFilter::is_marker`]).
    markers: Option<crate::model::marker::MarkerRule>,
    /// A folder always left out, whatever the patterns: the archive of `after_transfer:
    /// archive` inside the source (see [`PathFilter::leave_out`]).
    left_out: Option<String>,
}

impl PathFilter {
    pub fn all() -> Self {
        PathFilter {
            include: None,
            exclude: None,
            markers: None,
            left_out: None,
        }
    }

    pub(crate) fn new(include: &[String], exclude: &[String]) -> Result<Self, String> {
        fn build(patterns: &[String], key: &str) -> Result<Option<GlobSet>, String> {
            if patterns.is_empty() {
                return Ok(None);
            }
            let mut b = GlobSetBuilder::new();
            for p in patterns {
                let glob = globset::GlobBuilder::new(p)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| format!("{key}: bad pattern `{p}`: {e}"))?;
                b.add(glob);
                // `**/*.csv` should also match `a.csv` at the root, as users expect.
                if let Some(rest) = p.strip_prefix("**/") {
                    if let Ok(g) = Glob::new(rest) {
                        b.add(g);
                    }
                }
            }
            b.build().map(Some).map_err(|e| format!("{key}: {e}"))
        }
        Ok(PathFilter {
            include: build(include, "include")?,
            exclude: build(exclude, "exclude")?,
            markers: None,
            left_out: None,
        })
    }

    /// Whether a file at `rel` takes part in the sync.
    pub fn includes_file(&self, rel: &str) -> bool {
        if self.excludes(rel) || self.is_marker(rel) {
            return false;
        }
        match &self.include {
            Some(set) => set.is_match(rel),
            None => true,
        }
    }

    /// Whether the file at `rel` is a ready marker (`ready_marker:`, `batch_marker:`): never
    /// data, whatever `include:` and `exclude:` say.
    pub fn is_marker(&self, rel: &str) -> bool {
        self.markers.as_ref().is_some_and(|m| m.is_marker(rel))
    }

    pub(super) fn set_markers(&mut self, markers: Option<crate::model::marker::MarkerRule>) {
        self.markers = markers;
    }

    /// Whether `rel` (a file or a directory) is excluded; an excluded directory is not descended.
    pub fn excludes(&self, rel: &str) -> bool {
        if self
            .left_out
            .as_deref()
            .is_some_and(|d| rel == d || crate::model::paths::is_under(rel, d))
        {
            return true;
        }
        self.exclude.as_ref().is_some_and(|set| set.is_match(rel))
    }

    /// Leaves the folder `dir` (relative to the job's root) out of the sync on both sides,
    /// whatever the patterns say: an archive inside the source is never itself a source.
    pub(crate) fn leave_out(&mut self, dir: &str) {
        self.left_out = Some(dir.to_string());
    }

    /// With include patterns, directories are created only where they lead to included files.
    pub fn has_includes(&self) -> bool {
        self.include.is_some()
    }

    /// Validates `include:` and `exclude:`; an error in either points at `include`.
    pub(super) fn from_raw(
        include: Option<PatternList>,
        exclude: Option<PatternList>,
        ctx: &Ctx,
    ) -> Result<Self, ConfigError> {
        PathFilter::new(
            &include.map(PatternList::into_vec).unwrap_or_default(),
            &exclude.map(PatternList::into_vec).unwrap_or_default(),
        )
        .map_err(|e| ctx.fail(&["include"], e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_relative_paths() {
        let f = PathFilter::new(&["**/*.csv".into()], &["**/*.tmp".into(), "skip".into()]).unwrap();
        assert!(f.includes_file("a.csv"));
        assert!(f.includes_file("x/y/a.csv"));
        assert!(!f.includes_file("a.txt"));
        assert!(f.excludes("skip"));
        assert!(f.excludes("d/b.tmp"));
    }
}
