//! The job file as serde reads it: the shape and the types of every key, before any value is
//! checked. Unknown keys are refused here (`deny_unknown_fields`), with serde_yaml's position.
//! The sections turn these into validated types (`Remote::from_raw`, ...).
//!
//! The keys that take more than one form (`max_delete`, `retries`, `watch`, `active_ports`,
//! the pattern lists) have their own visitors rather than `#[serde(untagged)]`: an untagged
//! enum answers any wrong value with "data did not match any variant of untagged enum", at
//! 1:1, which names neither the key nor what it accepts. A visitor's error names both, and
//! serde_yaml reports it at the value.

use std::fmt;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Unexpected, Visitor};
use serde::Deserialize;

use super::choices::{DataMode, Listing, PassiveAddress, Security};
use crate::model::policy::{Direction, SyncMode};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJob {
    pub(super) local: PathBuf,
    pub(super) remote: RawRemote,
    #[serde(default = "default_direction")]
    pub(super) direction: Direction,
    /// `None`: mirror, or copy where `after_transfer:` moves sources (see `config/after.rs`).
    pub(super) mode: Option<SyncMode>,
    pub(super) schedule: Option<String>,
    pub(super) timezone: Option<String>,
    #[serde(default)]
    pub(super) watch: RawWatch,
    pub(super) debounce: Option<String>,
    pub(super) poll: Option<String>,
    pub(super) include: Option<PatternList>,
    pub(super) exclude: Option<PatternList>,
    pub(super) transfers: Option<RawTransfers>,
    pub(super) max_transfers: Option<u16>,
    pub(super) max_delete: Option<RawMaxDelete>,
    #[serde(default)]
    pub(super) allow_empty_source: bool,
    #[serde(default)]
    pub(super) adopt: crate::model::plan::Adopt,
    #[serde(default)]
    pub(super) initial_files: crate::model::baseline::InitialFiles,
    pub(super) retries: Option<RawRetries>,
    #[serde(default)]
    pub(super) catch_up: bool,
    pub(super) upload: Option<RawUpload>,
    pub(super) audit_retention: Option<String>,
    pub(super) settle: Option<String>,
    pub(super) min_age: Option<String>,
    pub(super) max_age: Option<String>,
    pub(super) notify: Option<RawNotify>,
    pub(super) expect: Option<RawExpect>,
    pub(super) bandwidth: Option<super::bandwidth::RawBandwidth>,
    pub(super) ready_marker: Option<String>,
    pub(super) batch_marker: Option<String>,
    pub(super) marker_after_pull: Option<crate::model::marker::MarkerAfterPull>,
    pub(super) after_transfer: Option<crate::model::after::AfterTransfer>,
    pub(super) archive_to: Option<String>,
    pub(super) archive_retention: Option<String>,
}

fn default_direction() -> Direction {
    Direction::Push
}

#[derive(Debug, Deserialize, JsonSchema)]
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

#[derive(Debug, Deserialize, JsonSchema)]
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
#[derive(Debug)]
pub(super) enum RawPorts {
    One(u16),
    Range(String),
}

impl<'de> Deserialize<'de> for RawPorts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawPorts;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port like 50000 or a range of ports like 50000-50100")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<RawPorts, E> {
                // Out of range: the range check says what is allowed.
                Ok(u16::try_from(n).map_or_else(|_| RawPorts::Range(n.to_string()), RawPorts::One))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<RawPorts, E> {
                Err(E::invalid_value(Unexpected::Signed(n), &self))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawPorts, E> {
                Ok(RawPorts::Range(s.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// One string or a list of strings (`include`, `exclude`, `pin_sha256`).
#[derive(Debug)]
pub(super) enum PatternList {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for PatternList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PatternList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            // `exclude: 2024` means the name 2024, as `[2024]` does (serde_yaml reads a list's
            // items as strings); a float would not keep its spelling, so it stays an error.
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<PatternList, E> {
                Ok(PatternList::One(n.to_string()))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<PatternList, E> {
                Ok(PatternList::One(n.to_string()))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<PatternList, E> {
                Ok(PatternList::One(s.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<PatternList, A::Error> {
                // Each item's own error (`[1]: invalid type ...`) keeps its position.
                Vec::<String>::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(PatternList::Many)
            }
        }
        d.deserialize_any(V)
    }
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
#[derive(Debug)]
pub(super) enum RawWatch {
    Flag(bool),
    Text(String),
}

impl<'de> Deserialize<'de> for RawWatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawWatch;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false or poll")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<RawWatch, E> {
                Ok(RawWatch::Flag(b))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawWatch, E> {
                Ok(RawWatch::Text(s.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl Default for RawWatch {
    fn default() -> Self {
        RawWatch::Flag(false)
    }
}

/// `retries` as written: `retries: 5` or `retries: {attempts: 5, max_delay: 30s}`.
#[derive(Debug)]
pub(super) enum RawRetries {
    Attempts(u32),
    Full(RawRetryPolicy),
}

impl<'de> Deserialize<'de> for RawRetries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawRetries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of attempts like 5, or attempts: and max_delay: keys")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<RawRetries, E> {
                // Too large: the range check (1..100) says what is allowed.
                Ok(RawRetries::Attempts(u32::try_from(n).unwrap_or(u32::MAX)))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<RawRetries, E> {
                Err(E::invalid_value(Unexpected::Signed(n), &self))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawRetries, A::Error> {
                // The section's own errors (an unknown key, a wrong type) keep their position.
                RawRetryPolicy::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawRetries::Full)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetryPolicy {
    pub(super) attempts: Option<u32>,
    pub(super) max_delay: Option<String>,
}

/// `max_delete` as written: a number or a string such as `25%`.
#[derive(Debug)]
pub(super) enum RawMaxDelete {
    Count(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawMaxDelete {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawMaxDelete;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a count of files like 10 or a percentage like 25%")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<RawMaxDelete, E> {
                Ok(RawMaxDelete::Count(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<RawMaxDelete, E> {
                Err(E::invalid_value(Unexpected::Signed(n), &self))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawMaxDelete, E> {
                Ok(RawMaxDelete::Text(s.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `transfers` as written: a number of connections or `auto`.
#[derive(Debug)]
pub(super) enum RawTransfers {
    Count(u16),
    Auto,
}

impl<'de> Deserialize<'de> for RawTransfers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawTransfers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of connections like 4, or auto")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<RawTransfers, E> {
                u16::try_from(n)
                    .map(RawTransfers::Count)
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(n), &self))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<RawTransfers, E> {
                Err(E::invalid_value(Unexpected::Signed(n), &self))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawTransfers, E> {
                match s {
                    "auto" => Ok(RawTransfers::Auto),
                    _ => Err(E::invalid_value(Unexpected::Str(s), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `notify:` (see `notify.rs`).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    pub(super) enabled: Option<bool>,
    pub(super) events: Option<PatternList>,
    pub(super) cert_expiry_days: Option<u32>,
    pub(super) exec: Option<PatternList>,
    pub(super) exec_timeout: Option<String>,
    pub(super) webhook: Option<RawWebhook>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    pub(super) url: String,
    pub(super) secret_file: Option<PathBuf>,
    pub(super) secret_env: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) allow_http: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExpect {
    pub(super) new_files: Option<u64>,
    pub(super) by: String,
}

/// `_defaults.yaml` as serde reads it (see `notify.rs`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefaults {
    pub(super) notify: Option<RawNotify>,
}

/// `upload:` options for servers with quirks.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpload {
    pub(super) temp_name: Option<bool>,
    pub(super) verify: Option<String>,
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{parse, GOOD};

    /// The error for `extra` appended to a good job: `line:col: reason`.
    fn error(extra: &str) -> String {
        let e = parse(&format!("{GOOD}{extra}")).unwrap_err();
        format!("{}:{}: {}", e.line, e.column, e.reason)
    }

    #[test]
    fn a_wrong_value_of_a_key_with_several_forms_names_the_key_and_points_at_the_value() {
        let cases = [
            (
                "max_delete: -5\n",
                "6:13: max_delete: invalid value: integer `-5`, expected a count of files like 10 or a percentage like 25%",
            ),
            (
                "max_delete: 2.5\n",
                "6:13: max_delete: invalid type: floating point `2.5`, expected a count of files like 10 or a percentage like 25%",
            ),
            (
                "max_delete: [1]\n",
                "6:13: max_delete: invalid type: sequence, expected a count of files like 10 or a percentage like 25%",
            ),
            (
                "retries: -1\n",
                "6:10: retries: invalid value: integer `-1`, expected a number of attempts like 5, or attempts: and max_delay: keys",
            ),
            (
                "retries: lots\n",
                "6:10: retries: invalid type: string \"lots\", expected a number of attempts like 5, or attempts: and max_delay: keys",
            ),
            (
                "retries:\n  attempts: x\n",
                "7:13: retries.attempts: invalid type: string \"x\", expected u32",
            ),
            (
                "retries:\n  tries: 3\n",
                "7:3: retries: unknown field `tries`, expected `attempts` or `max_delay`",
            ),
            (
                "watch: 3\n",
                "6:8: watch: invalid type: integer `3`, expected true, false or poll",
            ),
            (
                "include: 2.5\n",
                "6:10: include: invalid type: floating point `2.5`, expected a string or a list of strings",
            ),
            (
                "exclude: {a: b}\n",
                "6:10: exclude: invalid type: map, expected a string or a list of strings",
            ),
            (
                "exclude: [a, [b]]\n",
                "6:14: exclude[1]: invalid type: sequence, expected a string",
            ),
            (
                "  data_mode: active\n  active_ports: -1\n",
                "7:17: remote.active_ports: invalid value: integer `-1`, expected a port like 50000 or a range of ports like 50000-50100",
            ),
            (
                "  tls:\n    pin_sha256: {a: 1}\n",
                "7:17: remote.tls.pin_sha256: invalid type: map, expected a string or a list of strings",
            ),
        ];
        for (extra, expected) in cases {
            let got = error(extra);
            assert_eq!(got, expected, "{extra:?}");
            assert!(!got.contains("untagged"), "{got}");
        }
    }

    #[test]
    fn every_form_still_parses() {
        for extra in [
            "max_delete: 10\n",
            "max_delete: 25%\n",
            "retries: 3\n",
            "retries:\n  attempts: 3\n  max_delay: 5s\n",
            "watch: true\n",
            "watch: poll\n",
            "include: \"*.csv\"\n",
            "include: [\"*.csv\", 2024]\n",
            "exclude: 2024\n",
            "  data_mode: active\n  active_ports: 50000\n",
            "  data_mode: active\n  active_ports: 50000-50100\n",
        ] {
            assert!(parse(&format!("{GOOD}{extra}")).is_ok(), "{extra:?}");
        }
        // Out of range numbers reach the range checks, which say what is allowed.
        let e = parse(&format!(
            "{GOOD}  data_mode: active\n  active_ports: 70000\n"
        ))
        .unwrap_err();
        assert!(e.reason.contains("remote.active_ports: `70000`"), "{e}");
        let e = parse(&format!("{GOOD}retries: 5000000000\n")).unwrap_err();
        assert!(e.reason.contains("outside 1..100"), "{e}");
    }
}
