//! What a job asks of the plan: the direction of a sync, whether deletes are mirrored, and how
//! many deletions one run may make. Plain values, parsed by `config` and read by `plan`.

use std::fmt;

use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// local -> remote
    Push,
    /// remote -> local
    Pull,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Push => "push",
            Direction::Pull => "pull",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Also delete what the source no longer has.
    Mirror,
    /// Never delete.
    Copy,
}

/// `max_delete`: an absolute count or a percentage of the destination's files. `100%` allows
/// any number (the way to turn the limit off); a job without `max_delete` gets
/// [`default_max_delete`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxDelete {
    Count(u64),
    Percent(f64),
}

impl MaxDelete {
    /// The number of deletions allowed when the destination holds `dest_files` files.
    pub fn limit(&self, dest_files: u64) -> u64 {
        match *self {
            MaxDelete::Count(n) => n,
            // All of them, whatever the count it is taken of (an incremental run counts the
            // ledger's files, which a destination's strays can outnumber).
            MaxDelete::Percent(p) if p >= 100.0 => u64::MAX,
            MaxDelete::Percent(p) => ((dest_files as f64) * p / 100.0).floor() as u64,
        }
    }
}

/// The share of the destination's files a job without `max_delete` may delete in one run.
pub const DEFAULT_MAX_DELETE_PERCENT: u64 = 50;
/// ... and the number it may always delete, however few files the destination holds.
pub const DEFAULT_MAX_DELETE_FLOOR: u64 = 10;

/// The deletions a job without `max_delete` may make when the destination holds `dest_files`
/// files: half of them, and at least 10.
///
/// Why: rclone's `--max-delete` is off unless asked for, and a mirror that nobody configured
/// then deletes whatever a broken source hides. An emptied source is refused on its own (see
/// `allow_empty_source`, Syncthing's folder-marker idea without the marker), so this limit is for
/// the partial disasters: a nested mount that is gone, an include pattern edited too narrow, a
/// listing that came back short. Ordinary runs delete a small share (one file of 1,000 in the
/// integration tests); a run that deletes more than half is far more often an accident than an
/// intent, and the floor of 10 keeps small folders (delete 2 of 3 files) working without any
/// setting. A job that replaces most of its files each run (a daily rotation of more than 10
/// files) sets `max_delete: 100%`.
pub fn default_max_delete(dest_files: u64) -> u64 {
    (dest_files.saturating_mul(DEFAULT_MAX_DELETE_PERCENT) / 100).max(DEFAULT_MAX_DELETE_FLOOR)
}

impl fmt::Display for MaxDelete {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxDelete::Count(n) => write!(f, "{n}"),
            MaxDelete::Percent(p) => write!(f, "{p}%"),
        }
    }
}
