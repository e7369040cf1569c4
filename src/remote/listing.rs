//! Remote directory listings: MLSD facts, Unix `ls -l` and DOS/IIS `LIST` lines, turned into
//! [`ListedEntry`]s, and the time rules that make `LIST` usable for change detection.
//!
//! MLSD (RFC 3659) gives exact UTC times. `LIST` does not: Unix servers print minutes for
//! recent files and only the day for files older than six months, in the server's local time
//! or in UTC depending on the server; IIS prints minutes in local time. A sync tool that
//! compares such times with what it recorded would see every file "change" the day its listing
//! switches from `Nov 28 15:38` to `Nov 28  2026`, and every file in a server's zone look hours
//! off. So each `LIST` time carries its [`Precision`], the server's offset from UTC is learnt
//! once per run (its MDTM of one file, which RFC 3659 defines as UTC, against that file's
//! `LIST` time) or set in the job, and [`settle_time`] keeps the ledger's exact time when the
//! listing is consistent with it. Everything here is pure.

use suppaftp::list::ListParser;

use crate::model::snapshot::system_time_ns;

const NS: i64 = 1_000_000_000;

/// How precise a listed modification time is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// MLSD `modify` fact: the second (or better), UTC.
    Exact,
    /// `LIST` with `HH:MM`: the true time lies in the minute that starts here.
    Minute,
    /// `LIST` with a year instead of a time (files older than six months): only the day.
    Day,
}

impl Precision {
    fn window_ns(self) -> i64 {
        match self {
            Precision::Exact => NS,
            Precision::Minute => 60 * NS,
            Precision::Day => 86_400 * NS,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListedKind {
    File,
    Dir,
    Symlink,
}

/// One entry of a remote directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedEntry {
    pub name: String,
    pub kind: ListedKind,
    pub size: u64,
    /// Nanoseconds since the Unix epoch, as the listing shows it (for `LIST`, in the server's
    /// zone, read as if it were UTC: see [`apply_offset`]).
    pub mtime: i64,
    pub precision: Precision,
}

/// Parses one listing line; `None` for lines that describe no entry (`total 12`, MLSD's
/// `cdir`/`pdir` facts) or that no parser understands (logged).
pub fn parse_line(line: &str, mlsd: bool) -> Option<ListedEntry> {
    let trimmed = line.trim_end_matches(['\r', '\n']);
    if trimmed.is_empty() {
        return None;
    }
    if mlsd {
        let facts = trimmed.split(' ').next().unwrap_or("").to_ascii_lowercase();
        if facts.contains("type=cdir") || facts.contains("type=pdir") {
            return None;
        }
        return ListParser::parse_mlsd(trimmed)
            .map(|f| from_suppaftp(&f, Precision::Exact))
            .map_err(|e| tracing::warn!(line = trimmed, "cannot parse MLSD line: {e}"))
            .ok();
    }
    if trimmed.starts_with("total ") {
        return None;
    }
    if let Ok(f) = ListParser::parse_posix(trimmed) {
        let mut entry = from_suppaftp(&f, unix_precision(trimmed));
        if let Some(name) = unix_name(trimmed, f.is_symlink(), &entry.name) {
            entry.name = name.to_string();
        }
        return Some(entry);
    }
    match parse_dos(trimmed) {
        Some(e) => Some(e),
        None => {
            tracing::warn!(line = trimmed, "cannot parse LIST line");
            None
        }
    }
}

fn from_suppaftp(f: &suppaftp::list::File, precision: Precision) -> ListedEntry {
    let kind = if f.is_symlink() {
        ListedKind::Symlink
    } else if f.is_directory() {
        ListedKind::Dir
    } else {
        ListedKind::File
    };
    ListedEntry {
        name: f.name().to_string(),
        kind,
        size: f.size() as u64,
        mtime: system_time_ns(f.modified()),
        precision,
    }
}

/// The exact name of a Unix `ls -l` line, leading blanks included: everything after the
/// single blank that follows the time-or-year (8th) field, up to ` -> ` for a symbolic link.
///
/// suppaftp's parser reads the blanks before the name as one separator, so `12:00  lead.txt`
/// (a name that starts with a space) came back as `lead.txt`, a different file. vsftpd,
/// ProFTPD, Pure-FTPd and `ls -l` itself put exactly one space between the time and the name.
/// `None` (keep suppaftp's name) unless the fields found here give suppaftp's name once the
/// leading blanks are dropped: the two parsers must agree on where the name starts.
fn unix_name<'a>(line: &'a str, symlink: bool, parsed: &str) -> Option<&'a str> {
    let mut rest = line;
    for _ in 0..8 {
        rest = next_field(rest)?.1;
    }
    let mut name = rest.strip_prefix([' ', '\t'])?;
    if symlink {
        name = name.split(" -> ").next()?;
    }
    let blanks: &[char] = &[' ', '\t'];
    (!name.is_empty() && name.trim_start_matches(blanks) == parsed.trim_start_matches(blanks))
        .then_some(name)
}

/// A Unix `ls -l` line shows `HH:MM` for recent files and a year for older ones. The time is
/// the 8th field (mode, links, owner, group, size, month, day, time-or-year).
fn unix_precision(line: &str) -> Precision {
    match line.split_whitespace().nth(7) {
        Some(t) if t.contains(':') => Precision::Minute,
        _ => Precision::Day,
    }
}

/// A DOS/IIS `LIST` line: `MM-DD-YY  hh:mmAM  <DIR>|SIZE  NAME`, also with a four-digit year
/// (IIS "FourDigitYears") and a 24-hour clock, and sizes with thousands separators.
pub fn parse_dos(line: &str) -> Option<ListedEntry> {
    let (date, rest) = next_field(line)?;
    let (time, rest) = next_field(rest)?;
    let (time, rest) = match next_field(rest) {
        // `03:19 PM`, with a space before the meridiem.
        Some((m, after)) if m.eq_ignore_ascii_case("AM") || m.eq_ignore_ascii_case("PM") => {
            (format!("{time}{m}"), after)
        }
        _ => (time.to_string(), rest),
    };
    let (size_or_dir, rest) = next_field(rest)?;
    // The name is the rest of the line after the single run of blanks that follows the size:
    // names may contain (and start with) further spaces.
    let name = rest.strip_prefix(|c: char| c == ' ' || c == '\t')?;
    let name = name.trim_start_matches([' ', '\t']);
    if name.is_empty() {
        return None;
    }
    let mut d = date.split('-');
    let (month, day, year) = (d.next()?, d.next()?, d.next()?);
    if d.next().is_some() {
        return None;
    }
    let month: u32 = month.parse().ok()?;
    let day: u32 = day.parse().ok()?;
    let mut year: i32 = year.parse().ok()?;
    if date.len() <= 8 {
        // Two-digit years: 70..99 are 1970..1999, the rest 2000..2069 (as IIS and Windows do).
        year += if year >= 70 { 1900 } else { 2000 };
    }
    let upper = time.to_ascii_uppercase();
    let (clock, meridiem) = match upper.strip_suffix("AM") {
        Some(c) => (c, Some(false)),
        None => match upper.strip_suffix("PM") {
            Some(c) => (c, Some(true)),
            None => (upper.as_str(), None),
        },
    };
    let (h, m) = clock.split_once(':')?;
    let mut hour: u32 = h.parse().ok()?;
    let minute: u32 = m.parse().ok()?;
    match meridiem {
        Some(pm) => {
            if !(1..=12).contains(&hour) {
                return None;
            }
            hour = hour % 12 + if pm { 12 } else { 0 };
        }
        None if hour > 23 => return None,
        None => {}
    }
    let when = chrono::NaiveDate::from_ymd_opt(year, month, day)?.and_hms_opt(hour, minute, 0)?;
    let (kind, size) = if size_or_dir.eq_ignore_ascii_case("<DIR>") {
        (ListedKind::Dir, 0)
    } else {
        let digits: String = size_or_dir.chars().filter(|c| *c != ',').collect();
        (ListedKind::File, digits.parse().ok()?)
    };
    Some(ListedEntry {
        name: name.to_string(),
        kind,
        size,
        // Years past 2262 do not fit in i64 nanoseconds: saturated, as suppaftp's times are
        // (see `system_time_ns`), so the entry stays listed rather than being skipped, which a
        // pull mirror would read as a deletion.
        mtime: when.and_utc().timestamp().saturating_mul(NS),
        precision: Precision::Minute,
    })
}

/// The next blank-separated field and the rest of the line (which starts with the blanks).
fn next_field(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start_matches([' ', '\t']);
    if s.is_empty() {
        return None;
    }
    let end = s.find([' ', '\t']).unwrap_or(s.len());
    Some((&s[..end], &s[end..]))
}

/// The server's `LIST` offset from UTC in seconds, from one file's `LIST` time (minute
/// precision, read as UTC) and its MDTM (UTC): the difference rounded to the quarter hour.
/// `None` when the difference is beyond any real zone (±14 h): the MDTM or the listing is
/// not what it claims, and guessing would shift every time.
pub fn detect_offset(listed_ns: i64, mdtm_ns: i64) -> Option<i64> {
    // The listed minute starts up to 59 s before the exact time. Both times come from the
    // server: a difference beyond i64 (years centuries apart) is no zone either.
    let diff = listed_ns.checked_sub(mdtm_ns)? / NS + 30;
    let quarter = 15 * 60;
    let offset = diff.div_euclid(quarter) * quarter
        + if diff.rem_euclid(quarter) >= quarter / 2 {
            quarter
        } else {
            0
        };
    (offset.abs() <= 14 * 3600).then_some(offset)
}

/// A `LIST` time in the server's zone, turned into UTC.
pub fn apply_offset(listed_ns: i64, offset_secs: i64) -> i64 {
    listed_ns.saturating_sub(offset_secs.saturating_mul(NS))
}

/// The time a listed file should carry: the ledger's recorded time when the listing is
/// consistent with it (the recorded instant falls in the window the listing shows), else the
/// listing's own. This keeps an unchanged file unchanged when its listing loses precision (six
/// months after its last change) and when the recorded time came from MLSD or MDTM.
/// `listed_utc` is already corrected by the server's offset.
pub fn settle_time(listed_utc: i64, precision: Precision, recorded: Option<i64>) -> i64 {
    match (precision, recorded) {
        (Precision::Exact, _) | (_, None) => listed_utc,
        (p, Some(r)) => {
            // Whole seconds are compared: LIST has no fractions and MDTM rarely has.
            let r_secs = r.div_euclid(NS) * NS;
            if r_secs >= listed_utc && r_secs < listed_utc.saturating_add(p.window_ns()) {
                r
            } else {
                listed_utc
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
        chrono::NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_opt(h, mi, s)
            .unwrap()
            .and_utc()
            .timestamp()
            * NS
    }

    #[test]
    fn unix_lines_carry_their_precision() {
        let f = parse_line(
            "-rw-r--r--    1 1000     1000           12 Nov 28 15:38 a file.csv",
            false,
        )
        .unwrap();
        assert_eq!(
            (f.name.as_str(), f.size, f.kind, f.precision),
            ("a file.csv", 12, ListedKind::File, Precision::Minute)
        );
        let old = parse_line("-rw-r--r-- 1 ftp ftp 7 Mar  3  2019 old.txt", false).unwrap();
        assert_eq!(old.precision, Precision::Day);
        assert_eq!(old.mtime, utc(2019, 3, 3, 0, 0, 0));
        let d = parse_line("drwxr-xr-x 2 ftp ftp 4096 Mar  3  2019 12:30 dir", false).unwrap();
        assert_eq!((d.kind, d.name.as_str()), (ListedKind::Dir, "12:30 dir"));
        let l = parse_line("lrwxrwxrwx 1 ftp ftp 4 Mar  3  2019 link -> x", false).unwrap();
        assert_eq!(l.kind, ListedKind::Symlink);
        assert_eq!(l.name, "link");
        assert!(parse_line("total 8", false).is_none());
    }

    #[test]
    fn unix_names_keep_their_leading_blanks() {
        // vsftpd and ProFTPD put one space between the time and the name: the rest is the name.
        let f = parse_line("-rw-r--r-- 1 u g 5 Jan 01 12:00  lead.txt", false).unwrap();
        assert_eq!((f.name.as_str(), f.size), (" lead.txt", 5));
        let f = parse_line("-rw-r--r-- 1 u g 5 Jan  1  2019   two.txt", false).unwrap();
        assert_eq!(f.name, "  two.txt");
        // A name of blanks only.
        let f = parse_line("-rw-r--r-- 1 u g 5 Jan 01 12:00    ", false).unwrap();
        assert_eq!(f.name, "   ");
        let d = parse_line("drwxr-xr-x 2 u g 4096 Jan 01 12:00  lead dir", false).unwrap();
        assert_eq!((d.kind, d.name.as_str()), (ListedKind::Dir, " lead dir"));
        let l = parse_line("lrwxrwxrwx 1 u g 4 Jan 01 12:00  lead -> x", false).unwrap();
        assert_eq!((l.kind, l.name.as_str()), (ListedKind::Symlink, " lead"));
        // Trailing blanks, and padded columns before the name, are untouched.
        let f = parse_line(
            "-rw-r--r--    1 1000     1000           12 Nov 28 15:38 trail.txt ",
            false,
        )
        .unwrap();
        assert_eq!(f.name, "trail.txt ");
        // MLSD separates facts and name by one space already.
        let f = parse_line("type=file;size=5;modify=20201019151930;  lead.txt", true).unwrap();
        assert_eq!(f.name, " lead.txt");
    }

    #[test]
    fn mlsd_lines_are_exact_and_skip_cdir() {
        let d = parse_line("type=dir;modify=20201019151930; sub", true).unwrap();
        assert_eq!((d.kind, d.precision), (ListedKind::Dir, Precision::Exact));
        let f = parse_line("type=file;size=5;modify=20201019151930; a b.txt", true).unwrap();
        assert_eq!(f.mtime, utc(2020, 10, 19, 15, 19, 30));
        assert!(parse_line("type=cdir;modify=20201019151930; /inbound", true).is_none());
        assert!(parse_line("type=pdir;modify=20201019151930; ..", true).is_none());
    }

    #[test]
    fn dos_and_iis_lines() {
        let f = parse_line("10-19-20  03:19PM                 1024 dos.txt", false).unwrap();
        assert_eq!(
            (f.name.as_str(), f.size, f.mtime),
            ("dos.txt", 1024, utc(2020, 10, 19, 15, 19, 0))
        );
        let d = parse_line(
            "10-19-20  12:05AM       <DIR>          Annual Reports",
            false,
        )
        .unwrap();
        assert_eq!(
            (d.kind, d.name.as_str(), d.mtime),
            (
                ListedKind::Dir,
                "Annual Reports",
                utc(2020, 10, 19, 0, 5, 0)
            )
        );
        // IIS with four-digit years, a 24-hour clock and thousands separators.
        let f = parse_line("11-28-2026  15:19        1,234,567 big  file.bin", false).unwrap();
        assert_eq!(
            (f.name.as_str(), f.size, f.mtime),
            ("big  file.bin", 1_234_567, utc(2026, 11, 28, 15, 19, 0))
        );
        let f = parse_line("01-02-99  12:00 PM  5 noon.txt", false).unwrap();
        assert_eq!(f.mtime, utc(1999, 1, 2, 12, 0, 0));
        for bad in [
            "13-40-20  03:19PM  5 x",
            "10-19-20  13:19PM  5 x",
            "10-19-20  03:19PM  5",
        ] {
            assert!(parse_dos(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn offsets_are_detected_to_the_quarter_hour() {
        let exact = utc(2026, 11, 28, 15, 38, 42);
        // UTC listing: the minute that holds the exact time.
        assert_eq!(detect_offset(utc(2026, 11, 28, 15, 38, 0), exact), Some(0));
        assert_eq!(
            detect_offset(utc(2026, 11, 28, 17, 38, 0), exact),
            Some(7200)
        );
        assert_eq!(
            detect_offset(utc(2026, 11, 28, 10, 8, 0), exact),
            Some(-19800)
        );
        assert_eq!(
            detect_offset(utc(2026, 11, 28, 21, 23, 0), exact),
            Some(20700)
        );
        assert_eq!(detect_offset(utc(2026, 11, 30, 15, 38, 0), exact), None);
        assert_eq!(
            apply_offset(utc(2026, 11, 28, 17, 38, 0), 7200),
            utc(2026, 11, 28, 15, 38, 0)
        );
    }

    #[test]
    fn settled_times_keep_the_ledger_when_consistent() {
        let exact = utc(2026, 5, 1, 9, 30, 17) + 250_000_000;
        let minute = utc(2026, 5, 1, 9, 30, 0);
        let day = utc(2026, 5, 1, 0, 0, 0);
        assert_eq!(settle_time(minute, Precision::Minute, Some(exact)), exact);
        // Six months later the listing shows only the day: still the same file.
        assert_eq!(settle_time(day, Precision::Day, Some(exact)), exact);
        assert_eq!(settle_time(day, Precision::Day, Some(minute)), minute);
        // A later minute, or a different day, is a change.
        let later = utc(2026, 5, 1, 9, 31, 0);
        assert_eq!(settle_time(later, Precision::Minute, Some(exact)), later);
        let next_day = utc(2026, 5, 2, 0, 0, 0);
        assert_eq!(settle_time(next_day, Precision::Day, Some(exact)), next_day);
        // Nothing recorded, or an exact listing: the listing's own time.
        assert_eq!(settle_time(minute, Precision::Minute, None), minute);
        assert_eq!(settle_time(exact, Precision::Exact, Some(minute)), exact);
    }

    #[test]
    fn times_beyond_i64_nanoseconds_saturate_instead_of_overflowing() {
        // Found by the fuzz targets below (each panicked with an overflow in a debug build and
        // wrapped around in a release build). A DOS line of the year 2300 (`400` read as a
        // two-digit-style year) is kept, at the latest time there is.
        let e = parse_line("1-1-400  1:0AM  <DIR> A", false).unwrap();
        assert_eq!((e.name.as_str(), e.mtime), ("A", i64::MAX));
        // A LIST time and an MDTM centuries apart are no zone offset.
        assert_eq!(
            detect_offset(-6_163_327_551_618_808_120, 3_060_044_485_235_967_689),
            None
        );
        assert_eq!(detect_offset(i64::MAX, i64::MIN), None);
        assert_eq!(apply_offset(i64::MAX, -14 * 3600), i64::MAX);
        assert_eq!(apply_offset(i64::MIN, 14 * 3600), i64::MIN);
        let late = i64::MAX - NS;
        assert_eq!(settle_time(late, Precision::Day, Some(i64::MAX)), i64::MAX);
    }

    mod fuzz {
        //! Fuzz targets (proptest): listing lines come from the server, so no line may panic
        //! the parser or the time rules that follow it, and a name the parser returns reaches a
        //! local path only if `check_remote_name` lets it through, as a single safe component.

        use proptest::prelude::*;

        use super::super::*;
        use crate::model::snapshot::check_remote_name;

        /// What a scan does with a listed entry: the offset (±14 h, to the quarter hour) and
        /// the recorded time applied, the offset learnt from an MDTM, the name checked.
        fn through_the_pipeline(e: &ListedEntry, offset_q: i64, recorded: Option<i64>, mdtm: i64) {
            let settled = settle_time(apply_offset(e.mtime, offset_q * 900), e.precision, recorded);
            let _ = detect_offset(e.mtime, mdtm);
            let _ = settled;
            if check_remote_name("/d", &e.name).is_ok() {
                assert!(!e.name.is_empty() && e.name != "." && e.name != "..");
                assert!(
                    !e.name.contains(['/', '\\', '\0', '\r', '\n']),
                    "{:?}",
                    e.name
                );
            }
        }

        /// A Unix `ls -l` line with every field drawn from what a hostile server might send.
        fn unix_line() -> impl Strategy<Value = String> {
            (
                "[-dlcbps?][-rwxsStT]{9}[+@.]?",
                prop_oneof![Just("1".to_string()), "[0-9]{1,25}", "-?[0-9]{1,3}"],
                "[a-z0-9]{0,8}",
                "[a-z0-9]{0,8}",
                prop_oneof!["[0-9]{1,25}", "-[0-9]{1,5}", Just(u64::MAX.to_string())],
                "(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec|[A-Za-z]{3})",
                "[0-9]{1,3}",
                prop_oneof!["[0-9]{1,2}:[0-9]{1,2}", "[0-9]{1,6}", "-[0-9]{1,4}"],
                " {1,3}",
                any::<String>(),
            )
                .prop_map(|(mode, links, u, g, size, mon, day, time, gap, name)| {
                    format!("{mode} {links} {u} {g} {size} {mon} {day} {time}{gap}{name}")
                })
        }

        /// A DOS/IIS line with every field drawn wide.
        fn dos_line() -> impl Strategy<Value = String> {
            (
                "[0-9]{1,3}-[0-9]{1,3}-[0-9]{1,5}",
                "[0-9]{1,3}:[0-9]{1,3}(AM|PM| AM| pm|)",
                prop_oneof![Just("<DIR>".to_string()), "[0-9,]{1,30}"],
                " {1,4}",
                any::<String>(),
            )
                .prop_map(|(date, time, size, gap, name)| {
                    format!("{date}  {time}  {size}{gap}{name}")
                })
        }

        /// An MLSD line: facts with wide values, then the name.
        fn mlsd_line() -> impl Strategy<Value = String> {
            (
                "(file|dir|cdir|pdir|OS\\.unix=slink:[a-z/]{0,5}|[a-z]{0,4})",
                prop_oneof!["[0-9]{1,25}", "-[0-9]{1,5}", Just(String::new())],
                prop_oneof![
                    "[0-9]{14}",
                    "[0-9]{14}\\.[0-9]{1,9}",
                    "[0-9]{0,20}",
                    "[0-9]{14}[a-z]"
                ],
                "([a-z]{1,6}=[^; ]{0,6};){0,3}",
                " {0,2}",
                any::<String>(),
            )
                .prop_map(|(kind, size, modify, extra, gap, name)| {
                    format!("type={kind};size={size};modify={modify};{extra}{gap}{name}")
                })
        }

        proptest! {
            #![proptest_config(crate::fuzz_config(512))]

            #[test]
            fn any_text_as_a_listing_line(line in any::<String>(), mlsd in any::<bool>(),
                                          offset_q in -56i64..=56, recorded in any::<Option<i64>>(),
                                          mdtm in any::<i64>()) {
                if let Some(e) = parse_line(&line, mlsd) {
                    through_the_pipeline(&e, offset_q, recorded, mdtm);
                }
            }

            #[test]
            fn any_bytes_as_a_listing_line(bytes in proptest::collection::vec(any::<u8>(), 0..200),
                                           mlsd in any::<bool>()) {
                let line = String::from_utf8_lossy(&bytes);
                if let Some(e) = parse_line(&line, mlsd) {
                    through_the_pipeline(&e, 0, None, 0);
                }
            }

            #[test]
            fn unix_lines_with_hostile_fields(line in unix_line(), offset_q in -56i64..=56,
                                              recorded in any::<Option<i64>>(), mdtm in any::<i64>()) {
                if let Some(e) = parse_line(&line, false) {
                    through_the_pipeline(&e, offset_q, recorded, mdtm);
                }
            }

            #[test]
            fn dos_lines_with_hostile_fields(line in dos_line(), offset_q in -56i64..=56,
                                             recorded in any::<Option<i64>>(), mdtm in any::<i64>()) {
                if let Some(e) = parse_line(&line, false) {
                    through_the_pipeline(&e, offset_q, recorded, mdtm);
                }
            }

            #[test]
            fn mlsd_lines_with_hostile_facts(line in mlsd_line(), recorded in any::<Option<i64>>(),
                                             mdtm in any::<i64>()) {
                if let Some(e) = parse_line(&line, true) {
                    prop_assert_eq!(e.precision, Precision::Exact);
                    through_the_pipeline(&e, 0, recorded, mdtm);
                }
            }

            /// The time rules alone, on every value a listing, a ledger and an MDTM can hold.
            #[test]
            fn time_rules_on_any_values(listed in any::<i64>(), offset_q in -56i64..=56,
                                        recorded in any::<Option<i64>>(), mdtm in any::<i64>(),
                                        p in prop_oneof![Just(Precision::Exact), Just(Precision::Minute), Just(Precision::Day)]) {
                let _ = settle_time(apply_offset(listed, offset_q * 900), p, recorded);
                if let Some(o) = detect_offset(listed, mdtm) {
                    prop_assert!(o.abs() <= 14 * 3600 && o % 900 == 0);
                }
            }
        }
    }
}
