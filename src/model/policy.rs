//! What a job asks of the plan: the direction of a sync, whether deletes are mirrored, and how
//! many deletions one run may make. Plain values, parsed by `config` and read by `plan`.

use std::fmt;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Also delete what the source no longer has.
    Mirror,
    /// Never delete.
    Copy,
}

/// `max_delete`: an absolute count or a percentage of the destination's files.
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
            MaxDelete::Percent(p) => ((dest_files as f64) * p / 100.0).floor() as u64,
        }
    }
}

impl fmt::Display for MaxDelete {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxDelete::Count(n) => write!(f, "{n}"),
            MaxDelete::Percent(p) => write!(f, "{p}%"),
        }
    }
}
