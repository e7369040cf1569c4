//! The job file as serde reads it: the shape and the types of every key, before any value is
//! checked. Unknown keys are refused here (`deny_unknown_fields`), with serde_yaml's position.
//! The sections turn these into validated types (`Remote::from_raw`, ...).

use std::path::PathBuf;

use serde::Deserialize;

use super::choices::{DataMode, Listing, PassiveAddress, Security};
use crate::model::policy::{Direction, SyncMode};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJob {
    pub(super) local: PathBuf,
    pub(super) remote: RawRemote,
    #[serde(default = "default_direction")]
    pub(super) direction: Direction,
    #[serde(default = "default_mode")]
    pub(super) mode: SyncMode,
    pub(super) schedule: Option<String>,
    pub(super) timezone: Option<String>,
    #[serde(default)]
    pub(super) watch: RawWatch,
    pub(super) debounce: Option<String>,
    pub(super) poll: Option<String>,
    pub(super) include: Option<PatternList>,
    pub(super) exclude: Option<PatternList>,
    pub(super) transfers: Option<u16>,
    pub(super) max_delete: Option<RawMaxDelete>,
    #[serde(default)]
    pub(super) allow_empty_source: bool,
    pub(super) retries: Option<RawRetries>,
    #[serde(default)]
    pub(super) catch_up: bool,
    pub(super) upload: Option<RawUpload>,
}

fn default_direction() -> Direction {
    Direction::Push
}
fn default_mode() -> SyncMode {
    SyncMode::Mirror
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRemote {
    pub(super) host: String,
    pub(super) port: Option<u16>,
    #[serde(default = "default_security")]
    pub(super) security: Security,
    #[serde(default = "default_remote_path")]
    pub(super) path: String,
    pub(super) user: String,
    pub(super) password_env: Option<String>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) password: Option<String>,
    pub(super) tls: Option<RawTls>,
    #[serde(default)]
    pub(super) allow_plaintext: bool,
    pub(super) timeout: Option<String>,
    #[serde(default)]
    pub(super) listing: Listing,
    pub(super) list_time_offset: Option<String>,
    #[serde(default)]
    pub(super) passive_address: PassiveAddress,
    #[serde(default)]
    pub(super) data_mode: DataMode,
    pub(super) active_ports: Option<RawPorts>,
    pub(super) max_listing_entries: Option<u64>,
    pub(super) max_listing_line: Option<u64>,
    pub(super) max_listing_bytes: Option<u64>,
}

fn default_security() -> Security {
    Security::Explicit
}
fn default_remote_path() -> String {
    "/".to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) ca_file: Option<PathBuf>,
    pub(super) pin_sha256: Option<PatternList>,
    #[serde(default)]
    pub(super) insecure_skip_verify: bool,
    pub(super) client_cert: Option<PathBuf>,
    pub(super) client_key: Option<PathBuf>,
    pub(super) max_version: Option<String>,
}

/// `active_ports` as written: `50000` or `"50000-50100"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawPorts {
    One(u16),
    Range(String),
}

/// One string or a list of strings (`include`, `exclude`, `pin_sha256`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum PatternList {
    One(String),
    Many(Vec<String>),
}

impl PatternList {
    pub(super) fn into_vec(self) -> Vec<String> {
        match self {
            PatternList::One(s) => vec![s],
            PatternList::Many(v) => v,
        }
    }
}

/// `watch:` as written: `true`/`false`, or `poll` for folders where inotify sees nothing.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawWatch {
    Flag(bool),
    Text(String),
}

impl Default for RawWatch {
    fn default() -> Self {
        RawWatch::Flag(false)
    }
}

/// `retries` as written: `retries: 5` or `retries: {attempts: 5, max_delay: 30s}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawRetries {
    Attempts(u32),
    Full(RawRetryPolicy),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetryPolicy {
    pub(super) attempts: Option<u32>,
    pub(super) max_delay: Option<String>,
}

/// `max_delete` as written: a number or a string such as `25%`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawMaxDelete {
    Count(u64),
    Text(String),
}

/// `upload:` options for servers with quirks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpload {
    pub(super) temp_name: Option<bool>,
    pub(super) verify: Option<String>,
}
