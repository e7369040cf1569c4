//! `bandwidth:` as a job file writes it: a rate (`20MiB/s`, `200Mbit/s`, `off`), a timetable
//! (`"Mon-Fri 08:00-18:00 5MiB/s, off"`), or one of either per direction (`{up: ..., down:
//! ...}`), parsed into [`crate::model::bandwidth`]'s values; errors name the key's
//! `file:line:col` and the entry at fault.
//!
//! The grammar of a timetable, entries separated by commas:
//!
//! ```text
//! timetable := entry ("," entry)*
//! entry     := [DAYS] HH:MM-HH:MM RATE      a window: DAYS is Mon, or Mon-Fri (every day if left out)
//!            | RATE                         the rate outside every window (at most one, last; default off)
//! RATE      := off | unlimited | NUMBER UNIT    UNIT: B/s KiB/s MiB/s GiB/s kbit/s Mbit/s Gbit/s
//! ```
//!
//! rclone's `--bwlimit` timetable (`"08:00,512k 18:00,30M 23:00,off"`) lists the instants where
//! the rate changes, each rate holding until the next; its meaning depends on the order of the
//! entries and on how daily and weekday entries combine. Windows with explicit ends read
//! alone, overlaps are refused, and the time outside them has one stated rate, so a reader sees
//! the limit at any hour without replaying a list. Its units (`512k` = KiB/s, `M` = MiB/s) are
//! spelled out here as KiB/s and MiB/s, since `M` is read as megabit by half of the people
//! who write job files.

use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::{ConfigError, Ctx};
use crate::model::bandwidth::{Bandwidth, Rate, Timetable, Window, DAY_NAMES};

/// `bandwidth:` as written: one timetable for both directions, or one per direction.
#[derive(Debug)]
pub(super) enum RawBandwidth {
    Both(String),
    Split(RawSplit),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSplit {
    up: Option<String>,
    down: Option<String>,
}

const EXPECTING: &str = "a rate like 20MiB/s, off, a timetable like \"Mon-Fri 08:00-18:00 5MiB/s, off\", or {up: ..., down: ...}";

impl<'de> Deserialize<'de> for RawBandwidth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawBandwidth;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(EXPECTING)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawBandwidth, E> {
                Ok(RawBandwidth::Both(s.to_string()))
            }
            // A number or a boolean is a scalar like any other here (as the schema has it):
            // the rate's own check says what is wrong with it (no unit; `off`, not `false`).
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<RawBandwidth, E> {
                Ok(RawBandwidth::Both(b.to_string()))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<RawBandwidth, E> {
                Ok(RawBandwidth::Both(n.to_string()))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<RawBandwidth, E> {
                Ok(RawBandwidth::Both(n.to_string()))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<RawBandwidth, E> {
                Ok(RawBandwidth::Both(n.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawBandwidth, A::Error> {
                RawSplit::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawBandwidth::Split)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for RawBandwidth {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Bandwidth".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": EXPECTING,
            // Any scalar is the text of a rate or a timetable (as serde_yaml hands it over);
            // whether it is one is `ferrysync check`'s to say.
            "oneOf": [
                { "type": ["string", "number", "boolean", "null"] },
                {
                    "type": "object",
                    "properties": {
                        "up": { "type": ["string", "number", "boolean", "null"] },
                        "down": { "type": ["string", "number", "boolean", "null"] }
                    },
                    "additionalProperties": false
                }
            ]
        })
    }
}

/// The job's limits: none without the key.
pub(super) fn from_raw(raw: Option<RawBandwidth>, ctx: &Ctx) -> Result<Bandwidth, ConfigError> {
    let table = |text: &str, keys: &[&str]| {
        timetable(text).map_err(|e| ctx.fail(keys, format!("{}: {e}", keys.join("."))))
    };
    Ok(match raw {
        None => Bandwidth::default(),
        Some(RawBandwidth::Both(text)) => {
            let t = table(&text, &["bandwidth"])?;
            Bandwidth {
                up: t.clone(),
                down: t,
            }
        }
        Some(RawBandwidth::Split(RawSplit { up, down })) => Bandwidth {
            up: up.map_or(Ok(Timetable::default()), |t| {
                table(&t, &["bandwidth", "up"])
            })?,
            down: down.map_or(Ok(Timetable::default()), |t| {
                table(&t, &["bandwidth", "down"])
            })?,
        },
    })
}

const ENTRY_FORMS: &str = "`[DAYS] HH:MM-HH:MM RATE` (a window, DAYS like Mon or Mon-Fri) or a RATE alone (the rate outside the windows, last)";

/// A timetable (a rate alone is a timetable without windows).
pub(crate) fn timetable(text: &str) -> Result<Timetable, String> {
    let mut windows = Vec::new();
    let mut otherwise = None;
    for entry in text.split(',').map(str::trim) {
        if entry.is_empty() {
            return Err(format!("`{text}`: an empty entry; expected {ENTRY_FORMS}"));
        }
        if otherwise.is_some() {
            return Err(format!(
                "`{entry}` follows the rate outside the windows; that rate comes once, last"
            ));
        }
        let tokens: Vec<&str> = entry.split_whitespace().collect();
        match tokens[..] {
            [rate] => otherwise = Some(parse_rate(rate)?),
            [times, rate] => windows.push(window(entry, 0x7f, times, rate)?),
            [days, times, rate] => windows.push(window(entry, parse_days(days)?, times, rate)?),
            _ => {
                return Err(format!(
                    "`{entry}`: expected {ENTRY_FORMS}; a rate has no space (5MiB/s)"
                ))
            }
        }
    }
    Timetable::new(windows, otherwise.unwrap_or(Rate::Unlimited)).map_err(|e| e.to_string())
}

fn window(entry: &str, days: u8, times: &str, rate: &str) -> Result<Window, String> {
    let (start, end) = times
        .split_once('-')
        .ok_or_else(|| format!("`{entry}`: `{times}` is not a time range like 08:00-18:00"))?;
    Ok(Window {
        days,
        start: parse_time(entry, start, false)?,
        end: parse_time(entry, end, true)?,
        rate: parse_rate(rate)?,
        text: entry.to_string(),
    })
}

/// `Mon`, `Mon-Fri`, `Fri-Mon` (through the weekend): a bit per day, Monday first.
fn parse_days(days: &str) -> Result<u8, String> {
    let day = |name: &str| {
        DAY_NAMES
            .iter()
            .position(|d| d.eq_ignore_ascii_case(name))
            .ok_or_else(|| format!("`{name}` is not a day: Mon, Tue, Wed, Thu, Fri, Sat, Sun, or a range like Mon-Fri"))
    };
    let (first, last) = match days.split_once('-') {
        Some((a, b)) => (day(a)?, day(b)?),
        None => (day(days)?, day(days)?),
    };
    let mut bits = 0u8;
    let mut d = first;
    loop {
        bits |= 1 << d;
        if d == last {
            return Ok(bits);
        }
        d = (d + 1) % 7;
    }
}

/// `HH:MM` in minutes after midnight; `24:00` only as an end.
fn parse_time(entry: &str, s: &str, end: bool) -> Result<u32, String> {
    let bad = || {
        format!(
            "`{entry}`: `{s}` is not a time of day HH:MM (00:00 to 23:59{})",
            if end { ", or 24:00 as an end" } else { "" }
        )
    };
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let digits = |t: &str, n: std::ops::RangeInclusive<usize>| {
        n.contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit())
    };
    if !digits(h, 1..=2) || !digits(m, 2..=2) {
        return Err(bad());
    }
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    match (h, m) {
        (24, 0) if end => Ok(24 * 60),
        (0..=23, 0..=59) => Ok(h * 60 + m),
        _ => Err(bad()),
    }
}

/// Units a rate may carry, and their bytes per second.
const UNITS: [(&str, f64); 7] = [
    ("B/s", 1.0),
    ("KiB/s", 1024.0),
    ("MiB/s", 1_048_576.0),
    ("GiB/s", 1_073_741_824.0),
    ("kbit/s", 1000.0 / 8.0),
    ("Mbit/s", 1_000_000.0 / 8.0),
    ("Gbit/s", 1_000_000_000.0 / 8.0),
];

/// `20MiB/s`, `200Mbit/s`, `1.5GiB/s`, `off` (or `unlimited`).
pub(crate) fn parse_rate(s: &str) -> Result<Rate, String> {
    if s.eq_ignore_ascii_case("off") || s.eq_ignore_ascii_case("unlimited") {
        return Ok(Rate::Unlimited);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let units = "B/s, KiB/s, MiB/s, GiB/s, kbit/s, Mbit/s or Gbit/s";
    let value: f64 = number
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && !number.is_empty())
        .ok_or_else(|| format!("`{s}` is not a rate like 20MiB/s or 200Mbit/s, or off"))?;
    let Some(&(_, per)) = UNITS
        .iter()
        .find(|(u, _)| *u == unit || (unit == "Kbit/s" && *u == "kbit/s"))
    else {
        let hint = match unit.to_ascii_lowercase().as_str() {
            "kb/s" | "mb/s" | "gb/s" | "k" | "m" | "g" | "kb" | "mb" | "gb" => {
                " (bytes or bits? write KiB/s, MiB/s, GiB/s for bytes, kbit/s, Mbit/s, Gbit/s for bits)"
            }
            "" => " (a rate needs its unit)",
            _ => "",
        };
        return Err(format!("`{s}`: the unit must be {units}{hint}"));
    };
    let bytes = (value * per).round();
    if bytes < 1.0 {
        return Err(format!(
            "`{s}`: a limit must be at least 1B/s (no limit is `off`)"
        ));
    }
    if bytes >= u64::MAX as f64 {
        return Err(format!("`{s}`: too large"));
    }
    Ok(Rate::BytesPerSecond(bytes as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{parse, GOOD};
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn rates_in_every_unit() {
        for (text, bytes) in [
            ("1B/s", 1),
            ("512KiB/s", 512 * 1024),
            ("20MiB/s", 20 * MIB),
            ("1.5MiB/s", 3 * MIB / 2),
            ("2GiB/s", 2 << 30),
            ("200Mbit/s", 25_000_000),
            ("200Kbit/s", 25_000),
            ("8kbit/s", 1000),
            ("1Gbit/s", 125_000_000),
        ] {
            assert_eq!(parse_rate(text), Ok(Rate::BytesPerSecond(bytes)), "{text}");
        }
        assert_eq!(parse_rate("off"), Ok(Rate::Unlimited));
        assert_eq!(parse_rate("Unlimited"), Ok(Rate::Unlimited));
    }

    #[test]
    fn rates_without_a_clear_unit_or_of_nothing_are_refused() {
        for (text, says) in [
            ("20MB/s", "bytes or bits?"),
            ("20M", "bytes or bits?"),
            ("20", "needs its unit"),
            ("0MiB/s", "at least 1B/s"),
            ("0.1B/s", "at least 1B/s"),
            ("MiB/s", "is not a rate"),
            ("1.2.3MiB/s", "is not a rate"),
            ("-5MiB/s", "is not a rate"),
            ("20mib/s", "the unit must be"),
        ] {
            let e = parse_rate(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn timetables_as_the_readme_writes_them() {
        let t = timetable("Mon-Fri 08:00-18:00 5MiB/s, off").unwrap();
        assert_eq!(t.rate_at_minute(8 * 60), Rate::BytesPerSecond(5 * MIB));
        assert_eq!(t.rate_at_minute(5 * 1440 + 8 * 60), Rate::Unlimited);
        let t = timetable(
            "Mon-Fri 08:00-18:00 5MiB/s, sat-sun 00:00-24:00 50MiB/s, Mon-Thu 22:00-06:00 off, 20MiB/s",
        )
        .unwrap();
        assert_eq!(t.rate_at_minute(12 * 60), Rate::BytesPerSecond(5 * MIB));
        assert_eq!(t.rate_at_minute(19 * 60), Rate::BytesPerSecond(20 * MIB));
        assert_eq!(t.rate_at_minute(23 * 60), Rate::Unlimited);
        assert_eq!(
            t.rate_at_minute(6 * 1440 + 12 * 60),
            Rate::BytesPerSecond(50 * MIB)
        );
        // Every night from 22:00 would overlap Saturday's whole day.
        let e = timetable("Sat-Sun 00:00-24:00 50MiB/s, 22:00-06:00 off").unwrap_err();
        assert!(e.contains("overlap (Sat 00:00)"), "{e}");
        let t = timetable("Fri-Mon 09:00-17:00 1MiB/s").unwrap();
        assert_eq!(
            t.rate_at_minute(6 * 1440 + 10 * 60),
            Rate::BytesPerSecond(MIB)
        );
        assert_eq!(t.rate_at_minute(1440 + 10 * 60), Rate::Unlimited); // Tuesday
        assert_eq!(
            timetable("20MiB/s").unwrap(),
            Timetable::constant(Rate::BytesPerSecond(20 * MIB))
        );
        // A window alone: off outside it.
        assert_eq!(
            timetable("08:00-18:00 1MiB/s").unwrap().rate_at_minute(0),
            Rate::Unlimited
        );
    }

    #[test]
    fn bad_timetables_say_which_entry_and_why() {
        for (text, says) in [
            (
                "off, Mon 08:00-09:00 1MiB/s",
                "follows the rate outside the windows",
            ),
            ("1MiB/s, 2MiB/s", "follows the rate outside the windows"),
            ("Mon-Fri 08:00-18:00 5MiB/s,", "an empty entry"),
            ("Mon-Fri 08:00-18:00 5 MiB/s", "a rate has no space"),
            ("Mon-Fry 08:00-18:00 5MiB/s", "`Fry` is not a day"),
            ("Mon 08:00 5MiB/s", "not a time range"),
            ("Mon 8:0-18:00 5MiB/s", "`8:0` is not a time of day"),
            (
                "Mon 24:00-02:00 5MiB/s",
                "`24:00` is not a time of day HH:MM (00:00 to 23:59)",
            ),
            ("Mon 08:00-24:01 5MiB/s", "or 24:00 as an end"),
            ("Mon 08:00-08:00 5MiB/s", "starts and ends at the same time"),
            (
                "Mon-Fri 08:00-18:00 5MiB/s, Wed 12:00-13:00 off",
                "overlap (Wed 12:00)",
            ),
            ("Mon-Fri 08:00-18:00 5MB/s", "bytes or bits?"),
        ] {
            let e = timetable(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn the_key_in_a_job_file() {
        let job = parse(&format!("{GOOD}bandwidth: 20MiB/s\n")).unwrap();
        let limit = Timetable::constant(Rate::BytesPerSecond(20 * MIB));
        assert_eq!(
            job.bandwidth,
            Bandwidth {
                up: limit.clone(),
                down: limit.clone()
            }
        );
        let job = parse(&format!("{GOOD}bandwidth:\n  down: 20MiB/s\n")).unwrap();
        assert_eq!(
            job.bandwidth,
            Bandwidth {
                up: Timetable::default(),
                down: limit
            }
        );
        let job = parse(&format!(
            "{GOOD}bandwidth: {{up: \"Mon-Fri 08:00-18:00 5MiB/s, off\", down: off}}\n"
        ))
        .unwrap();
        assert!(!job.bandwidth.up.is_unlimited());
        assert!(job.bandwidth.down.is_unlimited());
        assert!(parse(GOOD).unwrap().bandwidth.up.is_unlimited());
    }

    #[test]
    fn errors_point_at_the_key_in_the_file() {
        let e = parse(&format!(
            "{GOOD}bandwidth: \"Mon-Fri 08:00-18:00 5MiB/s, Wed 12:00-13:00 off\"\n"
        ))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/jobs/acme.yaml:6:1: bandwidth: `Mon-Fri 08:00-18:00 5MiB/s` and `Wed 12:00-13:00 off` overlap (Wed 12:00): windows may not overlap"
        );
        let e = parse(&format!("{GOOD}bandwidth:\n  up: 1MiB/s\n  down: 20MB/s\n")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/etc/jobs/acme.yaml:8:3: bandwidth.down: `20MB/s`"),
            "{e}"
        );
        let e = parse(&format!("{GOOD}bandwidth:\n  sideways: 1MiB/s\n")).unwrap_err();
        assert!(e.to_string().contains("unknown field `sideways`"), "{e}");
        assert!(e.to_string().contains(":7:"), "{e}");
        let e = parse(&format!("{GOOD}bandwidth: 1048576\n")).unwrap_err();
        assert!(e.to_string().contains("a rate needs its unit"), "{e}");
        let e = parse(&format!("{GOOD}bandwidth: false\n")).unwrap_err();
        assert!(e.to_string().contains("`false` is not a rate"), "{e}");
        assert!(e.to_string().contains(":6:"), "{e}");
    }

    proptest! {
        #![proptest_config(crate::fuzz_config(256))]

        /// Whatever the text, the parser answers (a timetable or an error), never panics.
        #[test]
        fn any_text_is_a_timetable_or_an_error(text in "[A-Za-z0-9:,./ -]{0,40}") {
            let _ = timetable(&text);
        }

        /// A window written from its parts reads back as those parts.
        #[test]
        fn written_windows_read_back(day in 0usize..7, start in 0u32..1440, len in 1u32..1440, kib in 1u64..100_000) {
            let end = (start + len) % 1440;
            let text = format!(
                "{} {:02}:{:02}-{:02}:{:02} {kib}KiB/s, off",
                DAY_NAMES[day], start / 60, start % 60, end / 60, end % 60
            );
            let t = timetable(&text).unwrap();
            let first = day as u32 * 1440 + start;
            prop_assert_eq!(t.rate_at_minute(first), Rate::BytesPerSecond(kib * 1024));
            prop_assert_eq!(t.rate_at_minute(first + len - 1), Rate::BytesPerSecond(kib * 1024));
            prop_assert_eq!(t.rate_at_minute(first + len), Rate::Unlimited);
        }
    }
}
