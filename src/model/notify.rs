//! Notifications, the decisions: which event a run's result produces given the job's last
//! notified state (state changes only, so a job failing every minute alerts once), when a
//! certificate's expiry is worth an alert, and the payload every target receives (the same
//! JSON on an exec target's stdin and in a webhook's body).
//!
//! No I/O and no clock: the caller passes the previous state, the time and the facts.

use serde::{Deserialize, Serialize};

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A run failed (or ended with failed paths) after the job was fine (or had never run).
    Failure,
    /// The first successful run after failures.
    Recovery,
    /// Any successful run (opt-in).
    Success,
    /// The server's or the client's certificate expires within `cert_expiry_days`.
    CertificateExpiring,
    /// A pull job's `expect:` deadline passed with fewer new files than expected.
    Late,
}

impl Event {
    pub const ALL: [Event; 5] = [
        Event::Failure,
        Event::Recovery,
        Event::Success,
        Event::CertificateExpiring,
        Event::Late,
    ];

    /// The word job files, payloads and `FERRYSYNC_EVENT` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Failure => "failure",
            Event::Recovery => "recovery",
            Event::Success => "success",
            Event::CertificateExpiring => "certificate_expiring",
            Event::Late => "late",
        }
    }

    pub fn parse(s: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The events a job notifies about (`notify.events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSet(u8);

impl EventSet {
    /// Everything but `success`: state changes, expiring certificates, late files.
    pub const DEFAULT: EventSet = EventSet(0b1_1011);

    pub fn empty() -> EventSet {
        EventSet(0)
    }
    pub fn with(self, e: Event) -> EventSet {
        EventSet(self.0 | e.bit())
    }
    pub fn contains(self, e: Event) -> bool {
        self.0 & e.bit() != 0
    }
    pub fn iter(self) -> impl Iterator<Item = Event> {
        Event::ALL.into_iter().filter(move |e| self.contains(*e))
    }
}

/// A job's health as last notified (kept in the ledger, so a restart does not alert again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Ok,
    Failing,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Failing => "failing",
        }
    }
    pub fn parse(s: &str) -> Option<Health> {
        match s {
            "ok" => Some(Health::Ok),
            "failing" => Some(Health::Failing),
            _ => None,
        }
    }
}

/// What a run's outcome means for notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunResult {
    /// Ended `ok`.
    Ok,
    /// Ended `failed` or `partial` (some paths failed).
    Failed,
    /// Interrupted (a stop was asked for) or a dry run: says nothing about the job's health.
    Neither,
}

/// What a run changes: the event to send (before filtering by the job's [`EventSet`]) and the
/// health to remember (`None`: keep what is remembered).
///
/// `routine`: the run was a poll that found nothing to do; it is not worth a `success`.
pub fn run_event(
    previous: Option<Health>,
    result: RunResult,
    routine: bool,
) -> (Option<Event>, Option<Health>) {
    match (result, previous) {
        (RunResult::Neither, _) => (None, None),
        (RunResult::Failed, Some(Health::Failing)) => (None, Some(Health::Failing)),
        (RunResult::Failed, _) => (Some(Event::Failure), Some(Health::Failing)),
        (RunResult::Ok, Some(Health::Failing)) => (Some(Event::Recovery), Some(Health::Ok)),
        (RunResult::Ok, _) if routine => (None, Some(Health::Ok)),
        (RunResult::Ok, _) => (Some(Event::Success), Some(Health::Ok)),
    }
}

/// Whether a certificate that expires at `not_after` (Unix seconds) is worth an alert now:
/// within `days` of `now` (or already expired), and not already alerted for this certificate
/// (`alerted_for`: the `not_after` of the certificate last alerted about; a renewed
/// certificate has another and alerts again when its own time comes).
pub fn certificate_alert(not_after: i64, now: i64, days: u32, alerted_for: Option<i64>) -> bool {
    not_after.saturating_sub(now) <= i64::from(days) * 86_400 && alerted_for != Some(not_after)
}

/// Whole days left until `not_after` (negative once expired), rounded down.
pub fn days_left(not_after: i64, now: i64) -> i64 {
    (not_after - now).div_euclid(86_400)
}

/// The JSON every target receives: on an exec target's stdin, as a webhook's body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Payload {
    /// The payload's format; changes that remove or rename a field raise it.
    pub version: u32,
    pub event: Event,
    pub job: String,
    /// When the notification was made (ISO 8601 UTC).
    pub at: String,
    /// One line for a human (a chat message, a page).
    pub message: String,
    /// The agent's host name, to tell agents apart.
    pub host: String,
    /// The job's server and folder, `host:port/path` (no user, no password).
    pub remote: String,
    /// The job's health as last notified before this event.
    pub previous_state: Option<Health>,
    /// `failure`, `recovery`, `success`: the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<RunFacts>,
    /// `certificate_expiring`: the certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateFacts>,
    /// `late`: the deadline and what arrived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect: Option<ExpectFacts>,
}

/// The current payload format.
pub const PAYLOAD_VERSION: u32 = 1;

/// The most failed paths a payload lists (`failures_total` counts them all).
pub const PAYLOAD_FAILURES: usize = 20;

/// A run, as `history --json` shows it (the same field names).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunFacts {
    pub id: Option<i64>,
    pub trigger: String,
    pub outcome: String,
    pub started_at: String,
    pub ended_at: String,
    pub duration_seconds: f64,
    pub files_up: u64,
    pub bytes_up: u64,
    pub files_down: u64,
    pub bytes_down: u64,
    pub files_deleted: u64,
    pub files_failed: u64,
    pub files_adopted: u64,
    pub files_waiting: u64,
    pub error: Option<String>,
    /// The first [`PAYLOAD_FAILURES`] failed paths.
    pub failures: Vec<FailureFacts>,
    pub failures_total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailureFacts {
    pub path: String,
    pub error: String,
}

/// A certificate close to its expiry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CertificateFacts {
    /// `server` (the leaf the server presented) or `client` (`remote.tls.client_cert`).
    pub which: String,
    pub subject: String,
    pub not_after: String,
    pub days_left: i64,
}

/// A missed `expect:` deadline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExpectFacts {
    pub deadline: String,
    /// The previous deadline: files downloaded since then count.
    pub since: String,
    pub expected_files: u64,
    pub downloaded_files: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_failing_every_minute_alerts_once_and_recovers_once() {
        let mut state = None;
        let mut sent = Vec::new();
        let results = [RunResult::Ok]
            .into_iter()
            .chain(std::iter::repeat_n(RunResult::Failed, 1440))
            .chain([RunResult::Neither, RunResult::Ok, RunResult::Ok]);
        for r in results {
            let (event, health) = run_event(state, r, true);
            sent.extend(event);
            state = health.or(state);
        }
        assert_eq!(sent, [Event::Failure, Event::Recovery]);
        assert_eq!(state, Some(Health::Ok));
    }

    #[test]
    fn the_first_run_alerts_a_failure_and_success_is_opt_in() {
        assert_eq!(
            run_event(None, RunResult::Failed, false),
            (Some(Event::Failure), Some(Health::Failing))
        );
        assert_eq!(
            run_event(None, RunResult::Ok, false),
            (Some(Event::Success), Some(Health::Ok))
        );
        assert_eq!(
            run_event(Some(Health::Ok), RunResult::Ok, true),
            (None, Some(Health::Ok))
        );
        assert_eq!(
            run_event(Some(Health::Failing), RunResult::Neither, false),
            (None, None)
        );
        assert!(!EventSet::DEFAULT.contains(Event::Success));
        assert_eq!(
            EventSet::DEFAULT.iter().collect::<Vec<_>>(),
            [
                Event::Failure,
                Event::Recovery,
                Event::CertificateExpiring,
                Event::Late
            ]
        );
    }

    #[test]
    fn a_certificate_alerts_once_within_its_window_and_again_when_renewed() {
        let day = 86_400;
        let now = 1_000 * day;
        assert!(!certificate_alert(now + 30 * day, now, 21, None));
        assert!(certificate_alert(now + 21 * day, now, 21, None));
        assert!(certificate_alert(now - day, now, 21, None), "expired");
        assert!(!certificate_alert(
            now + 5 * day,
            now,
            21,
            Some(now + 5 * day)
        ));
        assert!(certificate_alert(
            now + 5 * day,
            now,
            21,
            Some(now - 300 * day)
        ));
        assert_eq!(days_left(now + 5 * day + 10, now), 5);
        assert_eq!(days_left(now - 10, now), -1);
    }

    #[test]
    fn event_names_round_trip() {
        for e in Event::ALL {
            assert_eq!(Event::parse(e.as_str()), Some(e));
            assert_eq!(serde_json::to_value(e).unwrap(), e.as_str());
        }
        assert_eq!(Event::parse("fail"), None);
    }
}
