//! Retrying with backoff, written once: a listing, a connection or a transfer that failed in a
//! way the next attempt may not meet is tried again after the job's backoff (1 s doubling up to
//! `retries.max_delay`, jittered), up to `retries.attempts` attempts in all.

use std::fmt::Display;

use crate::config::RetryPolicy;

/// The attempts of one piece of work.
pub(crate) struct Attempts<'a> {
    policy: &'a RetryPolicy,
    /// Attempts that failed so far (0 during the first).
    failed: u32,
}

impl<'a> Attempts<'a> {
    pub(crate) fn new(policy: &'a RetryPolicy) -> Self {
        Attempts { policy, failed: 0 }
    }

    /// The number of the current attempt, from 0.
    pub(crate) fn number(&self) -> u32 {
        self.failed
    }

    /// After a failure: `true` once the backoff has passed and another attempt may be made
    /// (`transient` and attempts left), `false` when the failure is final. Logs the wait with
    /// `what` (the failure) and `path` (what it was about, `""` for the run as a whole).
    pub(crate) async fn retry_after(
        &mut self,
        transient: bool,
        path: &str,
        what: impl Display,
    ) -> bool {
        if !transient || self.failed + 1 >= self.policy.attempts {
            return false;
        }
        let wait = self.policy.delay(self.failed);
        tracing::warn!(
            path,
            attempt = self.failed,
            "retrying in {:.1}s: {what}",
            wait.as_secs_f64()
        );
        tokio::time::sleep(wait).await;
        self.failed += 1;
        true
    }
}

/// Runs `attempt` until it succeeds or fails for good (see [`Attempts::retry_after`]);
/// `on_failure` sees every failure first (a 425 moves the run to TLS 1.2).
pub(crate) async fn with_retries<T, E, F, Fut>(
    policy: &RetryPolicy,
    mut on_failure: impl FnMut(&E),
    is_transient: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<T, E>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempts = Attempts::new(policy);
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
        let policy = RetryPolicy {
            attempts: 3,
            max_delay: Duration::from_secs(1),
        };
        let mut calls = 0;
        let r: Result<(), String> = with_retries(
            &policy,
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

        let mut calls = 0;
        let r: Result<(), String> = with_retries(
            &policy,
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

        let mut calls = 0;
        let r: Result<u32, String> = with_retries(
            &policy,
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
    }
}
