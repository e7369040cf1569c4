//! Bandwidth limits (`bandwidth:`): a rate, or a weekly timetable of rates in the job's zone,
//! for each direction; and the rule that decides the limit in force at an instant. Pure: the
//! caller passes the zoned time (the limiter in `sync/bandwidth.rs` asks again as time passes,
//! so a run that started before a window's boundary changes speed at it).
//!
//! A timetable is a set of windows (days of the week, a start and an end time of day, a rate)
//! and the rate outside them. Windows are wall-clock times in the job's zone: `08:00-18:00` is
//! 08:00 to 18:00 on the clock on the wall whatever the UTC offset, so a DST change moves
//! nothing; an hour that does not exist (spring forward) never matches, one that happens twice
//! (fall back) matches both times. A window whose end is not after its start (`22:00-06:00`)
//! runs past midnight into the next day, and belongs to the day it starts on. Windows may not
//! overlap: which one would win is a guess no reader of the job file should have to make.

use chrono::{DateTime, Datelike, TimeZone, Timelike};

const MINUTES_PER_DAY: u32 = 24 * 60;
const MINUTES_PER_WEEK: u32 = 7 * MINUTES_PER_DAY;
/// Day names as the timetable writes them, Monday first (chrono's `num_days_from_monday`).
pub const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// A limit on the payload bytes of a job's data connections, all of them together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// `off`: no limit.
    Unlimited,
    /// At most this many bytes per second (never 0: a limit of nothing would stall every
    /// transfer until its timeout).
    BytesPerSecond(u64),
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Rate::Unlimited => f.write_str("off"),
            Rate::BytesPerSecond(n) => {
                const UNITS: [(&str, u64); 3] =
                    [("GiB/s", 1 << 30), ("MiB/s", 1 << 20), ("KiB/s", 1 << 10)];
                for (unit, size) in UNITS {
                    if n >= size {
                        let v = n as f64 / size as f64;
                        return if n % size == 0 {
                            write!(f, "{}{unit}", n / size)
                        } else {
                            write!(f, "{v:.2}{unit}")
                        };
                    }
                }
                write!(f, "{n}B/s")
            }
        }
    }
}

/// One window of a timetable: `Mon-Fri 08:00-18:00 5MiB/s`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Bit `d` set: the window starts on day `d` (0 = Monday).
    pub days: u8,
    /// Minutes after midnight, 0..1440.
    pub start: u32,
    /// Minutes after midnight, 0..=1440; not after `start`: the window ends on the next day.
    pub end: u32,
    pub rate: Rate,
    /// The window as written, for errors.
    pub text: String,
}

impl Window {
    /// The window's stretches of the week: (first minute of the week, length in minutes).
    fn stretches(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        let len = if self.end > self.start {
            self.end - self.start
        } else {
            self.end + MINUTES_PER_DAY - self.start
        };
        (0..7u32)
            .filter(move |d| self.days & (1 << d) != 0)
            .map(move |d| (d * MINUTES_PER_DAY + self.start, len))
    }

    /// Whether the window holds `minute` of the week (wrapping from Sunday into Monday).
    fn holds(&self, minute: u32) -> bool {
        self.stretches()
            .any(|(first, len)| (minute + MINUTES_PER_WEEK - first) % MINUTES_PER_WEEK < len)
    }
}

/// Why a set of windows is not a timetable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimetableError {
    #[error("`{0}`: the window starts and ends at the same time (a whole day is 00:00-24:00)")]
    Empty(String),
    #[error("`{0}`: names no day")]
    NoDay(String),
    #[error("`{first}` and `{second}` overlap ({day} {time}): windows may not overlap")]
    Overlap {
        first: String,
        second: String,
        day: &'static str,
        time: String,
    },
}

/// The limit in force at any time of the week, for one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timetable {
    windows: Vec<Window>,
    /// The rate outside every window.
    otherwise: Rate,
}

impl Default for Timetable {
    fn default() -> Self {
        Timetable::constant(Rate::Unlimited)
    }
}

impl Timetable {
    /// The same rate all the time.
    pub fn constant(rate: Rate) -> Self {
        Timetable {
            windows: Vec::new(),
            otherwise: rate,
        }
    }

    /// A timetable of `windows`, and `otherwise` outside them. Refuses an empty window and
    /// windows that overlap (naming both and the first minute they share).
    pub fn new(windows: Vec<Window>, otherwise: Rate) -> Result<Self, TimetableError> {
        let mut owner: Vec<Option<usize>> = vec![None; MINUTES_PER_WEEK as usize];
        for (i, w) in windows.iter().enumerate() {
            if w.days & 0x7f == 0 {
                return Err(TimetableError::NoDay(w.text.clone()));
            }
            if w.start == w.end {
                return Err(TimetableError::Empty(w.text.clone()));
            }
            for (first, len) in w.stretches() {
                for m in first..first + len {
                    let slot = &mut owner[(m % MINUTES_PER_WEEK) as usize];
                    if let Some(j) = *slot {
                        let at = m % MINUTES_PER_WEEK;
                        return Err(TimetableError::Overlap {
                            first: windows[j].text.clone(),
                            second: w.text.clone(),
                            day: DAY_NAMES[(at / MINUTES_PER_DAY) as usize],
                            time: format!("{:02}:{:02}", at % MINUTES_PER_DAY / 60, at % 60),
                        });
                    }
                    *slot = Some(i);
                }
            }
        }
        Ok(Timetable { windows, otherwise })
    }

    /// Whether no time of the week has a limit (the limiter is then left out altogether).
    pub fn is_unlimited(&self) -> bool {
        self.otherwise == Rate::Unlimited && self.windows.iter().all(|w| w.rate == Rate::Unlimited)
    }

    /// The rate at minute `minute` of the week (0 = Monday 00:00).
    pub fn rate_at_minute(&self, minute: u32) -> Rate {
        let minute = minute % MINUTES_PER_WEEK;
        self.windows
            .iter()
            .find(|w| w.holds(minute))
            .map_or(self.otherwise, |w| w.rate)
    }

    /// The rate at `t`, read on the wall clock of `t`'s zone (the job's).
    pub fn rate_at<Tz: TimeZone>(&self, t: &DateTime<Tz>) -> Rate {
        let minute =
            t.weekday().num_days_from_monday() * MINUTES_PER_DAY + t.hour() * 60 + t.minute();
        self.rate_at_minute(minute)
    }
}

/// A job's limits: uploads (push jobs) and downloads (pull jobs), each its own timetable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bandwidth {
    pub up: Timetable,
    pub down: Timetable,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, Utc};
    use chrono_tz::Tz;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    fn window(days: u8, start: u32, end: u32, rate: Rate, text: &str) -> Window {
        Window {
            days,
            start,
            end,
            rate,
            text: text.to_string(),
        }
    }

    fn hm(h: u32, m: u32) -> u32 {
        h * 60 + m
    }

    /// `Mon-Fri 08:00-18:00 5MiB/s, off`
    fn office_hours() -> Timetable {
        Timetable::new(
            vec![window(
                0b001_1111,
                hm(8, 0),
                hm(18, 0),
                Rate::BytesPerSecond(5 * MIB),
                "Mon-Fri 08:00-18:00 5MiB/s",
            )],
            Rate::Unlimited,
        )
        .unwrap()
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_opt(h, mi, s)
            .unwrap()
            .and_utc()
    }

    #[test]
    fn windows_start_at_their_first_minute_and_end_before_their_last() {
        let t = office_hours();
        let limited = Rate::BytesPerSecond(5 * MIB);
        assert_eq!(t.rate_at_minute(hm(7, 59)), Rate::Unlimited);
        assert_eq!(t.rate_at_minute(hm(8, 0)), limited);
        assert_eq!(t.rate_at_minute(hm(17, 59)), limited);
        assert_eq!(t.rate_at_minute(hm(18, 0)), Rate::Unlimited);
        // Friday yes, Saturday and Sunday no.
        assert_eq!(t.rate_at_minute(4 * 1440 + hm(9, 0)), limited);
        assert_eq!(t.rate_at_minute(5 * 1440 + hm(9, 0)), Rate::Unlimited);
        assert_eq!(t.rate_at_minute(6 * 1440 + hm(9, 0)), Rate::Unlimited);
    }

    #[test]
    fn a_window_past_midnight_belongs_to_its_first_day_and_sunday_wraps_into_monday() {
        let night = Rate::BytesPerSecond(MIB);
        // Fri 22:00-06:00 and Sun 23:00-01:00.
        let t = Timetable::new(
            vec![
                window(1 << 4, hm(22, 0), hm(6, 0), night, "Fri 22:00-06:00 1MiB/s"),
                window(1 << 6, hm(23, 0), hm(1, 0), night, "Sun 23:00-01:00 1MiB/s"),
            ],
            Rate::BytesPerSecond(10 * MIB),
        )
        .unwrap();
        assert_eq!(
            t.rate_at_minute(4 * 1440 + hm(21, 59)),
            Rate::BytesPerSecond(10 * MIB)
        );
        assert_eq!(t.rate_at_minute(4 * 1440 + hm(23, 0)), night);
        assert_eq!(t.rate_at_minute(5 * 1440 + hm(5, 59)), night); // Saturday morning
        assert_eq!(
            t.rate_at_minute(5 * 1440 + hm(6, 0)),
            Rate::BytesPerSecond(10 * MIB)
        );
        // Thursday night is not Friday's window.
        assert_eq!(
            t.rate_at_minute(3 * 1440 + hm(23, 0)),
            Rate::BytesPerSecond(10 * MIB)
        );
        assert_eq!(t.rate_at_minute(6 * 1440 + hm(23, 30)), night);
        assert_eq!(t.rate_at_minute(hm(0, 30)), night); // Monday 00:30
        assert_eq!(t.rate_at_minute(hm(1, 0)), Rate::BytesPerSecond(10 * MIB));
    }

    #[test]
    fn a_whole_day_is_0000_to_2400() {
        let t = Timetable::new(
            vec![window(
                1 << 5,
                0,
                1440,
                Rate::BytesPerSecond(1),
                "Sat 00:00-24:00 1B/s",
            )],
            Rate::Unlimited,
        )
        .unwrap();
        assert_eq!(t.rate_at_minute(5 * 1440), Rate::BytesPerSecond(1));
        assert_eq!(t.rate_at_minute(5 * 1440 + 1439), Rate::BytesPerSecond(1));
        assert_eq!(t.rate_at_minute(6 * 1440), Rate::Unlimited);
    }

    #[test]
    fn overlapping_and_empty_windows_are_refused_naming_them() {
        let r = Rate::BytesPerSecond(MIB);
        let e = Timetable::new(
            vec![
                window(
                    0b001_1111,
                    hm(8, 0),
                    hm(18, 0),
                    r,
                    "Mon-Fri 08:00-18:00 1MiB/s",
                ),
                window(1 << 2, hm(17, 0), hm(19, 0), r, "Wed 17:00-19:00 1MiB/s"),
            ],
            Rate::Unlimited,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "`Mon-Fri 08:00-18:00 1MiB/s` and `Wed 17:00-19:00 1MiB/s` overlap (Wed 17:00): windows may not overlap"
        );
        // Through midnight into the next day's window.
        let e = Timetable::new(
            vec![
                window(1 << 6, hm(22, 0), hm(2, 0), r, "Sun 22:00-02:00 1MiB/s"),
                window(1, hm(1, 0), hm(3, 0), r, "Mon 01:00-03:00 1MiB/s"),
            ],
            Rate::Unlimited,
        )
        .unwrap_err();
        assert!(e.to_string().contains("(Mon 01:00)"), "{e}");
        let e = Timetable::new(
            vec![window(1, hm(8, 0), hm(8, 0), r, "Mon 08:00-08:00 1MiB/s")],
            r,
        )
        .unwrap_err();
        assert!(matches!(e, TimetableError::Empty(_)), "{e}");
        // Adjacent windows do not overlap.
        Timetable::new(
            vec![
                window(1, hm(8, 0), hm(12, 0), r, "a"),
                window(1, hm(12, 0), hm(13, 0), Rate::Unlimited, "b"),
            ],
            r,
        )
        .unwrap();
    }

    #[test]
    fn the_zone_is_read_on_the_wall_clock_across_dst_changes() {
        let t = office_hours();
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let limited = Rate::BytesPerSecond(5 * MIB);
        // Winter (UTC+1): 06:59 UTC = 07:59 local, 07:00 UTC = 08:00 local.
        assert_eq!(
            t.rate_at(&utc(2026, 1, 14, 6, 59, 59).with_timezone(&berlin)),
            Rate::Unlimited
        );
        assert_eq!(
            t.rate_at(&utc(2026, 1, 14, 7, 0, 0).with_timezone(&berlin)),
            limited
        );
        // Summer (UTC+2): the same wall-clock boundary is an hour earlier in UTC.
        assert_eq!(
            t.rate_at(&utc(2026, 7, 15, 5, 59, 59).with_timezone(&berlin)),
            Rate::Unlimited
        );
        assert_eq!(
            t.rate_at(&utc(2026, 7, 15, 6, 0, 0).with_timezone(&berlin)),
            limited
        );
        // The UTC instant of a winter boundary is inside the window in summer.
        assert_eq!(
            t.rate_at(&utc(2026, 7, 15, 16, 30, 0).with_timezone(&berlin)),
            Rate::Unlimited
        );
        assert_eq!(
            t.rate_at(&utc(2026, 1, 14, 16, 30, 0).with_timezone(&berlin)),
            limited
        );
        // The same instant in another zone is another wall-clock time.
        let ny: Tz = "America/New_York".parse().unwrap();
        assert_eq!(
            t.rate_at(&utc(2026, 1, 14, 7, 0, 0).with_timezone(&ny)),
            Rate::Unlimited
        );
    }

    #[test]
    fn an_hour_skipped_in_spring_never_matches_and_one_repeated_in_autumn_matches_twice() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        // Every day 02:00-03:00: the hour that 2026-03-29 (Sunday) skips and 2026-10-25 repeats.
        let slow = Rate::BytesPerSecond(MIB);
        let t = Timetable::new(
            vec![window(0x7f, hm(2, 0), hm(3, 0), slow, "02:00-03:00 1MiB/s")],
            Rate::Unlimited,
        )
        .unwrap();
        // Spring: 00:59:59 UTC is 01:59:59 CET, 01:00 UTC is 03:00 CEST.
        assert_eq!(
            t.rate_at(&utc(2026, 3, 29, 0, 59, 59).with_timezone(&berlin)),
            Rate::Unlimited
        );
        assert_eq!(
            t.rate_at(&utc(2026, 3, 29, 1, 0, 0).with_timezone(&berlin)),
            Rate::Unlimited
        );
        // Autumn: 00:00-01:00 UTC is 02:00-03:00 CEST, 01:00-02:00 UTC is 02:00-03:00 CET.
        for h in [0, 1] {
            assert_eq!(
                t.rate_at(&utc(2026, 10, 25, h, 30, 0).with_timezone(&berlin)),
                slow,
                "{h}"
            );
        }
        assert_eq!(
            t.rate_at(&utc(2026, 10, 24, 23, 59, 0).with_timezone(&berlin)),
            Rate::Unlimited
        );
        assert_eq!(
            t.rate_at(&utc(2026, 10, 25, 2, 0, 0).with_timezone(&berlin)),
            Rate::Unlimited
        );
    }

    #[test]
    fn rates_display_in_the_units_job_files_use() {
        assert_eq!(Rate::BytesPerSecond(5 * MIB).to_string(), "5MiB/s");
        assert_eq!(Rate::BytesPerSecond(1536).to_string(), "1.50KiB/s");
        assert_eq!(Rate::BytesPerSecond(512).to_string(), "512B/s");
        assert_eq!(Rate::Unlimited.to_string(), "off");
    }

    fn arb_window() -> impl Strategy<Value = Window> {
        (
            1u8..128,
            0u32..1440,
            0u32..=1440,
            prop_oneof![
                Just(Rate::Unlimited),
                (1u64..1_000_000).prop_map(Rate::BytesPerSecond)
            ],
        )
            .prop_map(|(days, start, end, rate)| window(days, start, end, rate, "w"))
    }

    proptest! {
        #![proptest_config(crate::fuzz_config(64))]

        /// A timetable that is accepted gives every minute of the week the rate of the one
        /// window holding it (counted by brute force), else the rate outside the windows.
        #[test]
        fn each_minute_has_the_rate_of_the_one_window_holding_it(
            windows in proptest::collection::vec(arb_window(), 0..4),
            otherwise in (1u64..1000).prop_map(Rate::BytesPerSecond),
        ) {
            let accepted = Timetable::new(windows.clone(), otherwise);
            // Brute force: which windows hold each minute.
            let mut holders = vec![Vec::new(); MINUTES_PER_WEEK as usize];
            let mut empty = false;
            for (i, w) in windows.iter().enumerate() {
                empty |= w.start == w.end;
                for d in 0..7u32 {
                    if w.days & (1 << d) == 0 { continue; }
                    let mut m = d * MINUTES_PER_DAY + w.start;
                    let end = d * MINUTES_PER_DAY + if w.end > w.start { w.end } else { w.end + MINUTES_PER_DAY };
                    while m < end {
                        holders[(m % MINUTES_PER_WEEK) as usize].push(i);
                        m += 1;
                    }
                }
            }
            let overlap = holders.iter().any(|h| h.len() > 1);
            match accepted {
                Err(TimetableError::Overlap { .. }) => prop_assert!(overlap && !empty),
                Err(_) => prop_assert!(empty),
                Ok(t) => {
                    prop_assert!(!overlap && !empty);
                    for m in (0..MINUTES_PER_WEEK).step_by(7) {
                        let want = holders[m as usize].first().map_or(otherwise, |&i| windows[i].rate);
                        prop_assert_eq!(t.rate_at_minute(m), want);
                    }
                }
            }
        }
    }
}
