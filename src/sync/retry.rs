//! Retrying with backoff, written once: a listing, a connection or a transfer that failed in a
//! way the next attempt may not meet is tried again after the job's backoff (1 s doubling up to
//! `retries.max_delay`, jittered), up to `retries.attempts` attempts in all. The backoff races
//! the run's stop signal: a stop request ends the waiting at once, and no further attempt is
//! made.
//!
//! Which failures are retried is the errors' own call (`RunError::is_transient`,
//! `FtpsError::is_transient`): a dropped or timed-out connection and 4xx replies are; a
//! refused connection, an unknown host, the wrong `security:`, a refused login or certificate
//! and 5xx replies are not, because the same attempt meets them again until someone changes
//! the job or the server.

use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::RetryPolicy;
use crate::sync::stop::StopSignal;

/// What a run's tasks (the survey, every transfer worker) met that its record keeps: the
/// attempts made again after a transient failure, and the fall-back from TLS 1.3 to TLS 1.2.
/// Shared by those tasks; read once the run ends (`RunCounts::retries`, `tls_fallbacks`, and so
/// the Prometheus counters).
#[derive(Debug, Clone, Default)]
pub(crate) struct RunTally {
    retries: Arc<AtomicU64>,
    tls_fallbacks: Arc<AtomicU64>,
}

impl RunTally {
    pub(crate) fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
    /// The run's new connections moved to TLS 1.2 (at most once per run: the caller counts
    /// only the call that made the switch).
    pub(crate) fn fell_back_to_tls12(&self) {
        self.tls_fallbacks.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
    pub(crate) fn tls_fallbacks(&self) -> u64 {
        self.tls_fallbacks.load(Ordering::Relaxed)
    }
}

/// The attempts of one piece of work.
pub(crate) struct Attempts<'a> {
    policy: &'a RetryPolicy,
    /// Attempts that failed so far (0 during the first).
    failed: u32,
    stop: StopSignal,
    /// Where each attempt made again is counted.
    tally: RunTally,
}

impl<'a> Attempts<'a> {
    /// Attempts whose backoff ends early, with no further attempt, when `stop` is requested;
    /// each attempt made again is counted in `tally`.
    pub(crate) fn new(policy: &'a RetryPolicy, stop: StopSignal, tally: &RunTally) -> Self {
        Attempts {
            policy,
            failed: 0,
            stop,
            tally: tally.clone(),
        }
    }

    /// The number of the current attempt, from 0.
    pub(crate) fn number(&self) -> u32 {
        self.failed
    }

    /// After a failure: `true` once the backoff has passed and another attempt may be made
    /// (`transient`, attempts left, and no stop requested before or during the backoff),
    /// `false` when the failure is final. Logs the wait with
    /// `what` (the failure) and `path` (what it was about, `""` for the run as a whole).
    pub(crate) async fn retry_after(
        &mut self,
        transient: bool,
        path: &str,
        what: impl Display,
    ) -> bool {
        if !transient || self.failed + 1 >= self.policy.attempts || self.stop.requested() {
            return false;
        }
        let wait = self.policy.delay(self.failed);
        tracing::warn!(
            path,
            attempt = self.failed,
            "retrying in {:.1}s: {what}",
            wait.as_secs_f64()
        );
        if self.stop.race(tokio::time::sleep(wait)).await.is_none() {
            tracing::info!(path, "stop requested: no further attempt");
            return false;
        }
        self.failed += 1;
        self.tally.retried();
        true
    }
}

/// Runs `attempt` until it succeeds or fails for good (see [`Attempts::retry_after`]);
/// `on_failure` sees every failure first (a 425 moves the run to TLS 1.2). A stop request
/// during the backoff returns the last failure; the caller races the attempts themselves
/// (see [`StopSignal::race`]).
pub(crate) async fn with_retries<T, E, F, Fut>(
    policy: &RetryPolicy,
    stop: &StopSignal,
    tally: &RunTally,
    mut on_failure: impl FnMut(&E),
    is_transient: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<T, E>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempts = Attempts::new(policy, stop.clone(), tally);
    loop {
        match attempt().await {
            Ok(done) => return Ok(done),
            Err(e) => {
                on_failure(&e);
                if !attempts.retry_after(is_transient(&e), "", &e).await {
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_up_to_the_attempts_and_permanent_ones_never() {
        let tally = RunTally::default();
        let policy = RetryPolicy {
            attempts: 3,
            max_delay: Duration::from_secs(1),
        };
        let mut calls = 0;
        let r: Result<(), String> = with_retries(
            &policy,
            &StopSignal::default(),
            &tally,
            |_| {},
            |_| true,
            || {
                calls += 1;
                async { Err("dropped".to_string()) }
            },
        )
        .await;
        assert!(r.is_err());
        assert_eq!(calls, 3);
        assert_eq!(tally.retries(), 2, "the attempts made again are counted");

        let mut calls = 0;
        let r: Result<(), String> = with_retries(
            &policy,
            &StopSignal::default(),
            &tally,
            |_| {},
            |_| false,
            || {
                calls += 1;
                async { Err("530 login".to_string()) }
            },
        )
        .await;
        assert!(r.is_err());
        assert_eq!(calls, 1);
        assert_eq!(tally.retries(), 2, "a permanent failure is not retried");

        let mut calls = 0;
        let r: Result<u32, String> = with_retries(
            &policy,
            &StopSignal::default(),
            &tally,
            |_| {},
            |_| true,
            || {
                calls += 1;
                let n = calls;
                async move {
                    if n < 2 {
                        Err("dropped".to_string())
                    } else {
                        Ok(n)
                    }
                }
            },
        )
        .await;
        assert_eq!(r, Ok(2));
        assert_eq!(tally.retries(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_during_the_backoff_ends_it_at_once_with_no_further_attempt() {
        let policy = RetryPolicy {
            attempts: 5,
            max_delay: Duration::from_secs(3600),
        };
        let (tx, rx) = tokio::sync::watch::channel(false);
        let stop = StopSignal::new(Some(rx));
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = calls.clone();
        let started = tokio::time::Instant::now();
        let retrying = tokio::spawn(async move {
            with_retries(
                &policy,
                &stop,
                &RunTally::default(),
                |_| {},
                |_| true,
                || {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async { Err::<(), _>("refused".to_string()) }
                },
            )
            .await
        });
        // Into the second backoff (1 s, then about 2 s), then the stop.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tx.send(true).unwrap();
        let r = retrying.await.unwrap();
        assert_eq!(r, Err("refused".to_string()));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
