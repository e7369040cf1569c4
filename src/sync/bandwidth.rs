//! The limiter of `bandwidth:`: one token bucket per run, shared by the data connections of
//! all its workers, so the job as a whole keeps to the limit however many connections it
//! opens. The rate follows the job's timetable as time passes: it is read again at least every
//! second ([`RECHECK`]), so a run that started at 07:59 slows down at 08:00.
//!
//! The bucket is `async_speed_limit`'s: clones share one bucket, the rate can change while
//! tasks wait on it, and it holds at most one refill period (100 ms) of bytes, so a burst after
//! a pause is bounded by that. Payload is handed over in pieces of at most that much
//! ([`BandwidthLimiter::piece_len`]), so no single write or read runs far ahead of the rate.
//! A job without a limit has no limiter at all: the transfer loops then test one `Option`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Job;
use crate::model::bandwidth::{Rate, Timetable};
use crate::model::policy::Direction;

/// How often the timetable is read again while a run goes on.
const RECHECK: Duration = Duration::from_secs(1);
/// The bucket's depth: the largest burst, as time at the current rate.
const REFILL: Duration = Duration::from_millis(100);
/// Pieces are never smaller than this (a 16 KiB TLS record), whatever the rate.
const MIN_PIECE: usize = 16 * 1024;

/// A run's bandwidth limiter (see the module's docs).
pub(crate) struct BandwidthLimiter {
    table: Timetable,
    zone: Option<chrono_tz::Tz>,
    /// The time of day (`Utc::now`; the tests' own clock).
    wall_clock: fn() -> chrono::DateTime<chrono::Utc>,
    bucket: async_speed_limit::Limiter,
    /// The rate in force and when to read the timetable again.
    current: Mutex<(Rate, Instant)>,
}

impl BandwidthLimiter {
    /// The limiter of a run of `job` (its direction's timetable), or `None` when that
    /// timetable never limits anything.
    pub(crate) fn for_job(job: &Job) -> Option<BandwidthLimiter> {
        let table = match job.direction {
            Direction::Push => &job.bandwidth.up,
            Direction::Pull => &job.bandwidth.down,
        };
        if table.is_unlimited() {
            return None;
        }
        let limiter = BandwidthLimiter::new(table.clone(), job.timezone);
        tracing::info!(limit = %limiter.rate(), "bandwidth limit");
        Some(limiter)
    }

    pub(crate) fn new(table: Timetable, zone: Option<chrono_tz::Tz>) -> BandwidthLimiter {
        BandwidthLimiter::with_clock(table, zone, chrono::Utc::now)
    }

    fn with_clock(
        table: Timetable,
        zone: Option<chrono_tz::Tz>,
        wall_clock: fn() -> chrono::DateTime<chrono::Utc>,
    ) -> BandwidthLimiter {
        let rate = rate_at(&table, zone, wall_clock());
        let bucket = <async_speed_limit::Limiter>::builder(speed(rate))
            .refill(REFILL)
            .build();
        BandwidthLimiter {
            table,
            zone,
            wall_clock,
            bucket,
            current: Mutex::new((rate, Instant::now() + RECHECK)),
        }
    }

    /// The rate in force now, reading the timetable again when [`RECHECK`] has passed.
    pub(crate) fn rate(&self) -> Rate {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if now >= current.1 {
            let rate = rate_at(&self.table, self.zone, (self.wall_clock)());
            if rate != current.0 {
                tracing::info!(from = %current.0, to = %rate, "bandwidth limit changes (timetable)");
                self.bucket.set_speed_limit(speed(rate));
            }
            *current = (rate, now + RECHECK);
        }
        current.0
    }

    /// The most bytes to write or read in one go at the current rate: a refill period's
    /// worth, between 16 KiB and `max`.
    pub(crate) fn piece_len(&self, max: usize) -> usize {
        match self.rate() {
            Rate::Unlimited => max,
            Rate::BytesPerSecond(r) => {
                let per_refill = (r as f64 * REFILL.as_secs_f64()) as usize;
                per_refill.clamp(MIN_PIECE, max.max(MIN_PIECE)).min(max)
            }
        }
    }

    /// Waits until `n` more bytes keep the run within its limit.
    pub(crate) async fn take(&self, n: usize) {
        if self.rate() != Rate::Unlimited && n > 0 {
            self.bucket.consume(n).await;
        }
    }
}

/// The bucket's speed for `rate` (infinity: no limit).
fn speed(rate: Rate) -> f64 {
    match rate {
        Rate::Unlimited => f64::INFINITY,
        Rate::BytesPerSecond(r) => r as f64,
    }
}

/// The timetable's rate at `now`, on the wall clock of the job's zone (the machine's without
/// one).
fn rate_at(
    table: &Timetable,
    zone: Option<chrono_tz::Tz>,
    now: chrono::DateTime<chrono::Utc>,
) -> Rate {
    match zone {
        Some(tz) => table.rate_at(&now.with_timezone(&tz)),
        None => table.rate_at(&now.with_timezone(&chrono::Local)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;

    /// Four tasks sharing one limiter of 400 KiB/s move 200 KiB in about half a second
    /// together, not a quarter of that each.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tasks_share_one_limit() {
        let limiter = std::sync::Arc::new(BandwidthLimiter::new(
            Timetable::constant(Rate::BytesPerSecond(400 * KIB)),
            None,
        ));
        let start = Instant::now();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let l = limiter.clone();
                tokio::spawn(async move {
                    let mut left = 50 * 1024usize;
                    while left > 0 {
                        let n = l.piece_len(left);
                        l.take(n).await;
                        left -= n;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let took = start.elapsed();
        // 200 KiB at 400 KiB/s, less the 40 KiB the full bucket starts with: 0.4 s.
        assert!(took >= Duration::from_millis(350), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    /// The tests' wall clock: seconds since the epoch.
    static FAKE_NOW: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

    fn fake_now() -> chrono::DateTime<chrono::Utc> {
        let secs = FAKE_NOW.load(std::sync::atomic::Ordering::SeqCst);
        chrono::DateTime::from_timestamp(secs, 0).unwrap()
    }

    /// A run that started at 07:59:59 (Berlin) under `Mon-Fri 08:00-18:00 1MiB/s, off` is
    /// limited from the first second after 08:00, without a new run.
    #[test]
    fn a_running_limiter_follows_the_timetable_across_a_boundary() {
        let table = crate::config::bandwidth::timetable("Mon-Fri 08:00-18:00 1MiB/s, off").unwrap();
        let berlin: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
        // Wednesday 2026-01-14 06:59:59 UTC = 07:59:59 CET.
        let before = chrono::NaiveDate::from_ymd_opt(2026, 1, 14)
            .unwrap()
            .and_hms_opt(6, 59, 59)
            .unwrap()
            .and_utc()
            .timestamp();
        FAKE_NOW.store(before, std::sync::atomic::Ordering::SeqCst);
        let l = BandwidthLimiter::with_clock(table, Some(berlin), fake_now);
        assert_eq!(l.rate(), Rate::Unlimited);
        assert_eq!(l.piece_len(256 * 1024), 256 * 1024);
        FAKE_NOW.store(before + 2, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(RECHECK + Duration::from_millis(50));
        assert_eq!(l.rate(), Rate::BytesPerSecond(1 << 20));
        assert_eq!(l.piece_len(256 * 1024), 104_857);
    }

    #[test]
    fn pieces_are_a_refill_period_of_bytes_within_bounds() {
        let l = BandwidthLimiter::new(Timetable::constant(Rate::BytesPerSecond(10 << 20)), None);
        assert_eq!(l.piece_len(256 * 1024), 256 * 1024);
        let l = BandwidthLimiter::new(Timetable::constant(Rate::BytesPerSecond(1 << 20)), None);
        assert_eq!(l.piece_len(256 * 1024), 104_857);
        let l = BandwidthLimiter::new(Timetable::constant(Rate::BytesPerSecond(1000)), None);
        assert_eq!(l.piece_len(256 * 1024), MIN_PIECE);
        assert_eq!(l.piece_len(4096), 4096);
    }
}
