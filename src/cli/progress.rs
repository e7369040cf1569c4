//! The progress line of `sync` and `demo`: one line on stderr, redrawn in place about four times
//! a second, only when stderr is a terminal (a redirected log gets the summary alone). It shows
//! files and bytes done of the total, the transfer rate (smoothed over the last few seconds), the
//! time left at that rate, and a file in flight, shortened to fit the terminal's width.
//!
//! ```text
//! nightly: 12/40 files, 3.1 MiB of 10.0 MiB, 1.2 MiB/s, 6s left  invoices/2026-11/in…0002.csv
//! ```
//!
//! Log lines (warnings, `-v`) go to the same terminal: [`ClearingStderr`] blanks a drawn
//! progress line before each of them, so a log line never starts in the middle of it; the next tick
//! draws the progress line again below.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrysync::sync::{human_bytes, ProgressObserver, TransferProgress};

/// The length (in characters) of the unfinished progress line on the screen, 0 for none: the
/// next line overwrites it with spaces where it is shorter. Spaces rather than the "erase line"
/// escape sequence, so that the output holds no escape sequence at all (`NO_COLOR`,
/// `TERM=dumb`, a terminal log).
static LINE_SHOWN: AtomicUsize = AtomicUsize::new(0);

/// `line` padded with spaces over what is left of the previous line.
fn over_previous(line: &str) -> String {
    let len = line.chars().count();
    let previous = LINE_SHOWN.load(Ordering::SeqCst);
    format!("\r{line}{}", " ".repeat(previous.saturating_sub(len)))
}

/// An observer that draws the progress line, or `None` when stderr is not a terminal.
pub fn on_terminal() -> Option<ProgressObserver> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let state = Mutex::new(Rate::new(Instant::now()));
    Some(ProgressObserver(Arc::new(
        move |p: &TransferProgress<'_>| {
            let now = Instant::now();
            let mut rate = state.lock().unwrap_or_else(|e| e.into_inner());
            rate.update(p.bytes_done, now);
            let line = if p.finished {
                finished_line(p, rate.elapsed(now))
            } else {
                progress_line(p, rate.per_second(), terminal_width())
            };
            let mut err = std::io::stderr().lock();
            // Errors writing to the terminal are not worth failing a sync over.
            let drawn = over_previous(&line);
            let _ = if p.finished {
                LINE_SHOWN.store(0, Ordering::SeqCst);
                writeln!(err, "{drawn}")
            } else {
                LINE_SHOWN.store(line.chars().count(), Ordering::SeqCst);
                write!(err, "{drawn}")
            };
            let _ = err.flush();
        },
    )))
}

/// The transfer rate, smoothed: an exponentially weighted average of the rate between calls,
/// each weighted by how long it lasted, so that the rate follows a change within a few seconds
/// without jumping with every quarter-second sample.
#[derive(Debug, Clone)]
pub struct Rate {
    started: Instant,
    last: Instant,
    last_bytes: u64,
    smoothed: Option<f64>,
}

/// The time constant of the smoothing: a change of speed shows about two thirds after this.
const SMOOTHING: Duration = Duration::from_secs(3);

impl Rate {
    pub fn new(now: Instant) -> Rate {
        Rate {
            started: now,
            last: now,
            last_bytes: 0,
            smoothed: None,
        }
    }

    /// Takes the bytes done so far at `now`.
    pub fn update(&mut self, bytes_done: u64, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        // Calls closer than this say nothing about the rate (two at the same instant).
        if dt < 0.05 {
            return;
        }
        let moved = bytes_done.saturating_sub(self.last_bytes) as f64;
        let sample = moved / dt;
        let weight = 1.0 - (-dt / SMOOTHING.as_secs_f64()).exp();
        self.smoothed = Some(match self.smoothed {
            None => sample,
            Some(old) => old + weight * (sample - old),
        });
        self.last = now;
        self.last_bytes = bytes_done;
    }

    /// Bytes per second, once there are two samples to tell.
    pub fn per_second(&self) -> Option<f64> {
        self.smoothed
    }

    pub fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }
}

/// The line while transfers run, at most `width` characters (less one, so that a terminal that
/// wraps at the last column does not scroll). The file shown loses its middle first, then the
/// line its tail.
pub fn progress_line(p: &TransferProgress<'_>, rate: Option<f64>, width: usize) -> String {
    let mut line = format!(
        "{}: {}/{} files, {} of {}",
        super::shown(p.job),
        p.files_done,
        p.files_total,
        human_bytes(p.bytes_done),
        human_bytes(p.bytes_total)
    );
    if let Some(rate) = rate {
        line.push_str(&format!(", {}/s", human_bytes(rate.round() as u64)));
        if let Some(left) = time_left(p.bytes_total.saturating_sub(p.bytes_done), rate) {
            line.push_str(&format!(", {left} left"));
        }
    }
    let room = width.saturating_sub(1);
    if let Some(current) = p.current {
        let more = if p.in_flight > 1 {
            format!(" (+{})", p.in_flight - 1)
        } else {
            String::new()
        };
        let used = line.chars().count() + 2 + more.chars().count();
        // A file name shorter than this says nothing; better none.
        const SHORTEST: usize = 12;
        if room >= used + SHORTEST {
            let name = shorten_middle(&super::shown(current), room - used);
            line.push_str(&format!("  {name}{more}"));
        }
    }
    truncate_chars(&line, room)
}

/// The line when every transfer has ended: the totals, the time taken and the average rate.
pub fn finished_line(p: &TransferProgress<'_>, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let mut line = format!(
        "{}: {}/{} files, {} of {} in {}",
        super::shown(p.job),
        p.files_done,
        p.files_total,
        human_bytes(p.bytes_done),
        human_bytes(p.bytes_total),
        // Tenths below ten seconds: a quick run is not "in 0s".
        if secs < 10.0 {
            format!("{secs:.1}s")
        } else {
            short_duration(elapsed)
        }
    );
    if secs >= 0.5 {
        line.push_str(&format!(
            ", {}/s on average",
            human_bytes((p.bytes_done as f64 / secs).round() as u64)
        ));
    }
    line
}

/// The time `bytes` take at `rate` bytes a second, when there is a rate to tell and it is less
/// than a day (beyond that an estimate says nothing).
fn time_left(bytes: u64, rate: f64) -> Option<String> {
    // Nothing left to send: what remains is the server's confirmation, which no rate predicts.
    if rate < 1.0 || bytes == 0 {
        return None;
    }
    let secs = bytes as f64 / rate;
    if !secs.is_finite() || secs >= 86_400.0 {
        return None;
    }
    Some(short_duration(Duration::from_secs_f64(secs.ceil())))
}

/// `7s`, `3m05s`, `2h07m`.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// `text` in at most `max` characters, its middle replaced by `…` where it is longer (the start
/// and the end of a path say the most: its top folder and its file name).
pub fn shorten_middle(text: &str, max: usize) -> String {
    let n = text.chars().count();
    if n <= max {
        return text.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let keep = max - 1;
    let head = keep / 2;
    let tail = keep - head;
    let mut out: String = text.chars().take(head).collect();
    out.push('…');
    out.extend(text.chars().skip(n - tail));
    out
}

fn truncate_chars(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// The width of the terminal on stderr: the kernel's idea of it, else `$COLUMNS`, else 80.
fn terminal_width() -> usize {
    if let Ok(size) = rustix::termios::tcgetwinsize(std::io::stderr()) {
        if size.ws_col > 0 {
            return usize::from(size.ws_col);
        }
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|&c: &usize| c > 0)
        .unwrap_or(80)
}

/// stderr for log lines: erases an unfinished progress line first, so that a log line starts at
/// the left margin instead of after the progress text.
pub struct ClearingStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ClearingStderr {
    type Writer = ClearingWriter;
    fn make_writer(&'a self) -> ClearingWriter {
        ClearingWriter
    }
}

pub struct ClearingWriter;

impl Write for ClearingWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        let shown = LINE_SHOWN.swap(0, Ordering::SeqCst);
        if shown > 0 {
            err.write_all(format!("\r{}\r", " ".repeat(shown)).as_bytes())?;
        }
        err.write(data)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress<'a>(current: Option<&'a str>, in_flight: usize) -> TransferProgress<'a> {
        TransferProgress {
            job: "nightly",
            files_done: 12,
            files_total: 40,
            bytes_done: 3 << 20,
            bytes_total: 10 << 20,
            current,
            in_flight,
            finished: false,
        }
    }

    #[test]
    fn the_line_shows_counts_rate_time_left_and_the_file() {
        let p = progress(Some("invoices/2026-11/invoice 0002.csv"), 1);
        let line = progress_line(&p, Some(1024.0 * 1024.0), 200);
        assert_eq!(
            line,
            "nightly: 12/40 files, 3.0 MiB of 10.0 MiB, 1.0 MiB/s, 7s left  invoices/2026-11/invoice 0002.csv"
        );
        // No rate yet: no rate and no time left.
        let line = progress_line(&p, None, 200);
        assert_eq!(
            line,
            "nightly: 12/40 files, 3.0 MiB of 10.0 MiB  invoices/2026-11/invoice 0002.csv"
        );
        let line = progress_line(&progress(Some("a.csv"), 3), Some(1e6), 200);
        assert!(line.ends_with("  a.csv (+2)"), "{line}");
    }

    #[test]
    fn the_line_fits_the_terminal_by_shortening_the_file_first() {
        let long = format!("reports/{}/final.csv", "x".repeat(200));
        let p = progress(Some(&long), 1);
        for width in [20, 40, 80, 100, 132] {
            let line = progress_line(&p, Some(2e6), width);
            assert!(line.chars().count() < width, "{width}: {line}");
        }
        let line = progress_line(&p, Some(2e6), 100);
        assert!(line.contains("  reports/xx"), "{line}");
        assert!(
            line.contains('…') && line.ends_with("xx/final.csv"),
            "{line}"
        );
        // Too narrow for a useful name: none, and the counts are cut.
        let line = progress_line(&p, Some(2e6), 30);
        assert!(!line.contains("reports"), "{line}");
        assert!(line.starts_with("nightly: 12/40 files"), "{line}");
    }

    #[test]
    fn control_characters_in_a_file_name_are_escaped() {
        let hostile = "in/\u{1b}]0;pwned\u{7}\u{1b}[2Jreport\r\n.csv";
        let line = progress_line(&progress(Some(hostile), 1), None, 300);
        assert!(!line.chars().any(|c| c.is_control()), "{line:?}");
        assert!(line.contains("report"), "{line}");
    }

    #[test]
    fn the_rate_is_smoothed_and_follows_a_change() {
        let t0 = Instant::now();
        let mut r = Rate::new(t0);
        assert_eq!(r.per_second(), None);
        let mut bytes = 0;
        // A steady 1 MB/s, sampled four times a second.
        for i in 1..=40 {
            bytes += 250_000;
            r.update(bytes, t0 + Duration::from_millis(250 * i));
        }
        let steady = r.per_second().unwrap();
        assert!((steady - 1e6).abs() < 1.0, "{steady}");
        // One quarter-second with nothing moved does not drop the rate to zero...
        r.update(bytes, t0 + Duration::from_millis(250 * 41));
        let after_gap = r.per_second().unwrap();
        assert!(after_gap > 0.9e6, "{after_gap}");
        // ... and a sustained 4 MB/s shows within a few seconds.
        for i in 42..=42 + 40 {
            bytes += 1_000_000;
            r.update(bytes, t0 + Duration::from_millis(250 * i));
        }
        let fast = r.per_second().unwrap();
        assert!(fast > 3.8e6 && fast <= 4e6 + 1.0, "{fast}");
        // Calls at the same instant change nothing.
        r.update(bytes + 1_000_000, t0 + Duration::from_millis(250 * 82));
        assert_eq!(r.per_second().unwrap(), fast);
    }

    #[test]
    fn durations_and_time_left() {
        assert_eq!(short_duration(Duration::from_secs(7)), "7s");
        assert_eq!(short_duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(short_duration(Duration::from_secs(7620)), "2h07m");
        assert_eq!(time_left(10, 0.5), None);
        assert_eq!(time_left(0, 1e6), None);
        assert_eq!(time_left(100 << 30, 1000.0), None, "more than a day");
        assert_eq!(time_left(3_000_000, 1e6).as_deref(), Some("3s"));
    }

    #[test]
    fn shortening_keeps_both_ends() {
        assert_eq!(shorten_middle("abcdefghij", 20), "abcdefghij");
        assert_eq!(shorten_middle("abcdefghij", 7), "abc…hij");
        assert_eq!(shorten_middle("abcdefghij", 6), "ab…hij");
        assert_eq!(shorten_middle("ääääbbbb", 5), "ää…bb");
    }

    #[test]
    fn the_finished_line_has_totals_time_and_average() {
        let mut p = progress(None, 0);
        p.finished = true;
        p.files_done = 40;
        p.bytes_done = 10 << 20;
        let line = finished_line(&p, Duration::from_secs(5));
        assert_eq!(
            line,
            "nightly: 40/40 files, 10.0 MiB of 10.0 MiB in 5.0s, 2.0 MiB/s on average"
        );
    }
}
