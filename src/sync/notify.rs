//! Notifications, delivered: after a run (and at an `expect:` deadline, from the agent) the
//! event the model decides is sent to the job's targets, each on a task of its own, retried
//! with backoff a bounded number of times, and logged when it fails. A notification never
//! fails a run and never holds up the agent; `ferrysync sync` waits a few seconds for its own
//! before exiting ([`Notifier::wait`]).
//!
//! Targets: `exec` (a command, never through a shell, with the payload on stdin, a few
//! `FERRYSYNC_*` variables and no other environment than PATH, HOME and the locale; killed
//! with its process group at its timeout) and `webhook` (an HTTPS POST signed with
//! HMAC-SHA256 over `TIMESTAMP.BODY`, verified against the system's roots or `ca_file`, no
//! redirects followed).
//!
//! No secret reaches a payload or a log: the job's password and the webhook's secret are
//! masked in every text of the payload, and a webhook is logged by its scheme, host and port
//! only (a URL's path is often a token itself).

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::config::{ExecTarget, Job, Notify, Webhook};
use crate::model::notify::{
    certificate_alert, days_left, run_event, CertificateFacts, Event, ExpectFacts, FailureFacts,
    Health, Payload, RunFacts, RunResult, PAYLOAD_FAILURES, PAYLOAD_VERSION,
};
use crate::remote::TlsContext;
use crate::state::ledger::{Outcome, RunCounts};
use crate::state::{iso_time, now_unix, SharedLedger};
use crate::sync::report::{escape_controls, RunReport};

/// The waits between attempts of one notification: four attempts in all, over about 20 s.
pub const RETRY_DELAYS: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(4),
    Duration::from_secs(15),
];

/// The header carrying `sha256=HEX`, the HMAC-SHA256 of `TIMESTAMP.BODY` with the secret.
pub const SIGNATURE_HEADER: &str = "X-Ferrysync-Signature";
/// The header carrying the Unix time (seconds) the signature covers, against replays.
pub const TIMESTAMP_HEADER: &str = "X-Ferrysync-Timestamp";
/// The header naming the event (`failure`, ...), as the payload's `event`.
pub const EVENT_HEADER: &str = "X-Ferrysync-Event";

/// The environment an exec target keeps (everything else, passwords' variables included, is
/// left out).
const EXEC_ENV_KEPT: [&str; 8] = [
    "PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER",
];

/// `sha256=HEX`: the HMAC-SHA256 of `TIMESTAMP.BODY` under `secret`.
pub fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256=");
    for b in tag {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// Records the certificates a run met (the server's leaf, the client certificate) in the
/// ledger, for `certificate_expiring` and for metrics. Not in a dry run, which writes nothing.
pub(crate) fn record_certificates(job: &Job, ledger: &SharedLedger, tls: &TlsContext) {
    let seen = [
        ("server", tls.server_certificate()),
        ("client", tls.client_certificate()),
    ];
    let l = ledger.lock();
    for (which, dates) in seen {
        if let Some(d) = dates {
            if let Err(e) = l.record_certificate(&job.name, which, &d.subject, d.not_after) {
                tracing::warn!(job = %job.name, "cannot record the {which} certificate's expiry: {e}");
            }
        }
    }
}

/// Sends notifications on tasks of their own and keeps track of them.
#[derive(Clone, Default)]
pub struct Notifier {
    pending: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Notifier {
    pub fn new() -> Notifier {
        Notifier::default()
    }

    /// After a run of `job` (`trigger` as recorded): decides the events (state changes,
    /// `success` if asked for, expiring certificates) from the ledger's memory, remembers the
    /// new state and sends. Returns the events sent, for the log and the tests. Needs a tokio
    /// runtime; never waits for delivery.
    pub fn after_run(
        &self,
        job: &Job,
        ledger: &SharedLedger,
        report: &RunReport,
        trigger: &str,
    ) -> Vec<Event> {
        let Some(notify) = &job.notify else {
            return Vec::new();
        };
        if report.run_id.is_none() {
            // A dry run, or a run that never began (another process holds the job).
            return Vec::new();
        }
        let result = match report.outcome {
            Outcome::Ok => RunResult::Ok,
            Outcome::Partial | Outcome::Failed => RunResult::Failed,
            Outcome::Running | Outcome::Interrupted => RunResult::Neither,
        };
        let routine = trigger == "poll"
            && report.counts == RunCounts::default()
            && report.failures.is_empty();
        let now = now_unix();
        let mut payloads = Vec::new();
        {
            let l = ledger.lock();
            let previous = l.notify_health(&job.name).unwrap_or_else(|e| {
                tracing::warn!(job = %job.name, "notify: cannot read the last notified state: {e}");
                None
            });
            let (event, health) = run_event(previous, result, routine);
            if let Some(h) = health {
                if let Err(e) = l.set_notify_health(&job.name, h) {
                    tracing::warn!(job = %job.name, "notify: cannot remember the job's state: {e}");
                }
            }
            if let Some(event) = event.filter(|e| notify.events.contains(*e)) {
                let mut p = base_payload(job, event, previous, now);
                let run = run_facts(report, trigger, now);
                p.message = run_message(job, event, report);
                p.run = Some(run);
                payloads.push(p);
            }
            if notify.events.contains(Event::CertificateExpiring) {
                for c in l.certificates(&job.name).unwrap_or_default() {
                    if !certificate_alert(
                        c.not_after,
                        now,
                        notify.cert_expiry_days,
                        c.alerted_not_after,
                    ) {
                        continue;
                    }
                    if let Err(e) = l.mark_certificate_alerted(&job.name, &c.which, c.not_after) {
                        tracing::warn!(job = %job.name, "notify: cannot remember the certificate alert: {e}");
                        continue;
                    }
                    let mut p = base_payload(job, Event::CertificateExpiring, previous, now);
                    let left = days_left(c.not_after, now);
                    let whose = if c.which == "client" {
                        "the client certificate (tls.client_cert)"
                    } else {
                        "the server's certificate"
                    };
                    p.message = if left < 0 {
                        format!(
                            "job {}: {whose} {} expired on {}",
                            job.name,
                            c.subject,
                            iso_time(c.not_after)
                        )
                    } else {
                        format!(
                            "job {}: {whose} {} expires in {left} days ({})",
                            job.name,
                            c.subject,
                            iso_time(c.not_after)
                        )
                    };
                    p.certificate = Some(CertificateFacts {
                        which: c.which.clone(),
                        subject: c.subject.clone(),
                        not_after: iso_time(c.not_after),
                        days_left: left,
                    });
                    payloads.push(p);
                }
            }
        }
        let events = payloads.iter().map(|p| p.event).collect();
        for p in payloads {
            self.send(job, notify, p);
        }
        events
    }

    /// A missed `expect:` deadline (called by the agent).
    pub fn late(&self, job: &Job, facts: ExpectFacts) {
        let Some(notify) = &job.notify else {
            return;
        };
        if !notify.events.contains(Event::Late) {
            return;
        }
        let mut p = base_payload(job, Event::Late, None, now_unix());
        p.message = format!(
            "job {}: {} of {} expected new files downloaded between {} and the deadline {}",
            job.name, facts.downloaded_files, facts.expected_files, facts.since, facts.deadline
        );
        p.expect = Some(facts);
        self.send(job, notify, p);
    }

    /// Sends `payload` to every target of `notify`, each on a task of its own.
    fn send(&self, job: &Job, notify: &Notify, mut payload: Payload) {
        let mut secrets = vec![job.remote.password.expose().to_string()];
        if let Some(w) = &notify.webhook {
            secrets.push(w.secret.expose().to_string());
        }
        mask_payload(&mut payload, &secrets);
        let body: Arc<[u8]> = match serde_json::to_vec_pretty(&payload) {
            Ok(b) => b.into(),
            Err(e) => {
                tracing::error!(job = %job.name, "notify: cannot encode the payload: {e}");
                return;
            }
        };
        tracing::info!(job = %job.name, event = %payload.event, "notify: {}", escape_controls(&payload.message));
        let meta = Arc::new(Meta {
            job: job.name.clone(),
            event: payload.event,
            outcome: payload.run.as_ref().map(|r| r.outcome.clone()),
            run_id: payload.run.as_ref().and_then(|r| r.id),
        });
        let mut tasks = Vec::new();
        if let Some(exec) = notify.exec.clone() {
            let (body, meta) = (body.clone(), meta.clone());
            tasks.push(tokio::spawn(async move {
                retrying(&meta, "exec", || run_exec(&exec, &body, &meta)).await
            }));
        }
        if let Some(hook) = notify.webhook.clone() {
            let (body, meta) = (body.clone(), meta.clone());
            tasks.push(tokio::spawn(async move {
                let target = format!("webhook {}", origin(&hook.url));
                retrying(&meta, &target, || post_webhook(&hook, &body, &meta)).await
            }));
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|h| !h.is_finished());
        pending.extend(tasks);
    }

    /// Waits up to `within` for the notifications sent so far (their retries included);
    /// returns how many were still going then (they are abandoned with the process).
    pub async fn wait(&self, within: Duration) -> usize {
        let handles: Vec<JoinHandle<()>> = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *pending)
        };
        let deadline = tokio::time::Instant::now() + within;
        let mut left = 0;
        for h in handles {
            if tokio::time::timeout_at(deadline, h).await.is_err() {
                left += 1;
            }
        }
        if left > 0 {
            tracing::warn!(
                "notify: {left} notifications still being retried after {}s are abandoned",
                within.as_secs()
            );
        }
        left
    }
}

/// What an attempt's log line and an exec target's environment say about the notification.
struct Meta {
    job: String,
    event: Event,
    outcome: Option<String>,
    run_id: Option<i64>,
}

/// Tries `attempt` until it succeeds, at most `RETRY_DELAYS.len() + 1` times.
async fn retrying<F, Fut>(meta: &Meta, target: &str, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let attempts = RETRY_DELAYS.len() + 1;
    for n in 1..=attempts {
        match attempt().await {
            Ok(()) => {
                tracing::info!(job = %meta.job, event = %meta.event, "notify: {target}: delivered");
                return;
            }
            Err(e) if n < attempts => {
                let delay = RETRY_DELAYS[n - 1];
                tracing::warn!(job = %meta.job, event = %meta.event,
                    "notify: {target}: attempt {n} of {attempts} failed: {}; trying again in {}s",
                    escape_controls(&e), delay.as_secs());
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                tracing::error!(job = %meta.job, event = %meta.event,
                    "notify: {target}: not delivered after {attempts} attempts: {}", escape_controls(&e));
            }
        }
    }
}

/// `scheme://host:port` of a URL: what logs may show of a webhook.
fn origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "(unparsable URL)".to_string(),
    }
}

/// One run of an exec target.
async fn run_exec(exec: &ExecTarget, body: &[u8], meta: &Meta) -> Result<(), String> {
    let Some((program, args)) = exec.argv.split_first() else {
        return Err("empty command".into());
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group: a timeout kills what it started too.
        .process_group(0);
    for key in EXEC_ENV_KEPT {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    cmd.env("FERRYSYNC_JOB", &meta.job)
        .env("FERRYSYNC_EVENT", meta.event.as_str());
    if let Some(o) = &meta.outcome {
        cmd.env("FERRYSYNC_OUTCOME", o);
    }
    if let Some(id) = meta.run_id {
        cmd.env("FERRYSYNC_RUN_ID", id.to_string());
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program))?;
    let pid = child.id();
    if let Some(mut stdin) = child.stdin.take() {
        let body = body.to_vec();
        // A command that does not read its stdin is no failure: the write just ends.
        tokio::spawn(async move {
            let _ = stdin.write_all(&body).await;
        });
    }
    let stderr = child.stderr.take().map(|mut err| {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = (&mut err).take(2048).read_to_end(&mut buf).await;
            String::from_utf8_lossy(&buf).trim().to_string()
        })
    });
    match tokio::time::timeout(exec.timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => {
            let said = match stderr {
                Some(t) => tokio::time::timeout(Duration::from_secs(1), t)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default(),
                None => String::new(),
            };
            Err(format!(
                "{program} exited with {status}{}",
                if said.is_empty() {
                    String::new()
                } else {
                    format!(": {said}")
                }
            ))
        }
        Ok(Err(e)) => Err(format!("waiting for {program}: {e}")),
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.kill().await;
            Err(format!(
                "{program} was killed after its timeout of {}s",
                exec.timeout.as_secs()
            ))
        }
    }
}

/// One POST of a webhook.
async fn post_webhook(hook: &Webhook, body: &Arc<[u8]>, meta: &Meta) -> Result<(), String> {
    let client = webhook_client(hook)?;
    let timestamp = now_unix().to_string();
    let sig = signature(hook.secret.expose().as_bytes(), &timestamp, body);
    let reply = client
        .post(&hook.url)
        .header("Content-Type", "application/json")
        .header(TIMESTAMP_HEADER, &timestamp)
        .header(SIGNATURE_HEADER, sig)
        .header(EVENT_HEADER, meta.event.as_str())
        .body(body.to_vec())
        .send()
        .await
        .map_err(describe_reqwest_error)?;
    let status = reply.status();
    if status.is_success() {
        return Ok(());
    }
    let text = reply.text().await.unwrap_or_default();
    let text: String = text.chars().take(200).collect();
    Err(format!("the receiver answered {status}: {}", text.trim()))
}

/// The error and its causes, without the URL (reqwest puts it in its message).
fn describe_reqwest_error(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// A client for one webhook: rustls with ring (as the FTPS side), the system's roots or the
/// webhook's `ca_file`, the webhook's timeout, no redirects (the signed payload goes where the
/// job file says, nowhere else).
fn webhook_client(hook: &Webhook) -> Result<reqwest::Client, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &hook.ca_file {
        Some(ca) => {
            let pem = std::fs::read(ca)
                .map_err(|e| format!("notify.webhook.ca_file {}: {e}", ca.display()))?;
            for c in rustls_pemfile::certs(&mut pem.as_slice()) {
                let c = c.map_err(|e| format!("notify.webhook.ca_file {}: {e}", ca.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("notify.webhook.ca_file {}: {e}", ca.display()))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(hook.timeout)
        .connect_timeout(hook.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("ferrysync/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("HTTP client: {}", describe_reqwest_error(e)))
}

/// The fields every payload has.
fn base_payload(job: &Job, event: Event, previous: Option<Health>, now: i64) -> Payload {
    Payload {
        version: PAYLOAD_VERSION,
        event,
        job: job.name.clone(),
        at: iso_time(now),
        message: String::new(),
        host: host_name(),
        remote: format!("{}:{}{}", job.remote.host, job.remote.port, job.remote.path),
        previous_state: previous,
        run: None,
        certificate: None,
        expect: None,
    }
}

fn run_facts(report: &RunReport, trigger: &str, now: i64) -> RunFacts {
    let c = &report.counts;
    let started = now - i64::try_from(report.elapsed.as_secs()).unwrap_or(0);
    RunFacts {
        id: report.run_id,
        trigger: trigger.to_string(),
        outcome: report.outcome.to_string(),
        started_at: iso_time(started),
        ended_at: iso_time(now),
        duration_seconds: (report.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        files_up: c.files_up,
        bytes_up: c.bytes_up,
        files_down: c.files_down,
        bytes_down: c.bytes_down,
        files_deleted: c.files_deleted,
        files_failed: c.files_failed,
        files_adopted: c.files_adopted,
        files_waiting: c.files_waiting,
        error: report.error.as_ref().map(ToString::to_string),
        failures: report
            .failures
            .iter()
            .take(PAYLOAD_FAILURES)
            .map(|f| FailureFacts {
                path: f.path.clone(),
                error: f.error.clone(),
            })
            .collect(),
        failures_total: report.failures.len() as u64,
    }
}

fn run_message(job: &Job, event: Event, report: &RunReport) -> String {
    let name = &job.name;
    let first_failure = || {
        report
            .error
            .as_ref()
            .map(ToString::to_string)
            .or_else(|| {
                report.failures.first().map(|f| {
                    format!(
                        "{} failed paths, the first {}: {}",
                        report.failures.len(),
                        f.path,
                        f.error
                    )
                })
            })
            .unwrap_or_default()
    };
    match event {
        Event::Failure => format!("job {name} failed: {}", first_failure()),
        Event::Recovery => format!("job {name} recovered: its run ended ok after failures"),
        _ => format!(
            "job {name}: {}",
            report.summary().lines().next().unwrap_or("")
        ),
    }
}

/// Masks every secret in every text of the payload.
fn mask_payload(p: &mut Payload, secrets: &[String]) {
    let mask = |s: &mut String| {
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            if s.contains(secret.as_str()) {
                *s = s.replace(secret.as_str(), "***");
            }
        }
    };
    mask(&mut p.message);
    if let Some(r) = &mut p.run {
        if let Some(e) = &mut r.error {
            mask(e);
        }
        for f in &mut r.failures {
            mask(&mut f.path);
            mask(&mut f.error);
        }
    }
}

/// This machine's name (`/proc/sys/kernel/hostname`), for the payload's `host`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // RFC 4231 test case 2 ("Jefe", "what do ya want for nothing?"), split at the dot.
        assert_eq!(
            signature(b"Jefe", "what do ya want ", b"for nothing?"),
            "sha256=".to_string()
                + &{
                    let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
                    mac.update(b"what do ya want .for nothing?");
                    mac.finalize()
                        .into_bytes()
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                }
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    fn meta() -> Meta {
        Meta {
            job: "j".into(),
            event: Event::Failure,
            outcome: Some("failed".into()),
            run_id: Some(7),
        }
    }

    fn exec(argv: &[&str]) -> ExecTarget {
        ExecTarget {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn an_exec_target_that_fails_says_why() {
        let e = run_exec(&exec(&["/nonexistent/ferrysync-alert"]), b"{}", &meta())
            .await
            .unwrap_err();
        assert!(
            e.starts_with("cannot start /nonexistent/ferrysync-alert"),
            "{e}"
        );
        let e = run_exec(
            &exec(&["sh", "-c", "echo pager down >&2; exit 3"]),
            b"{}",
            &meta(),
        )
        .await
        .unwrap_err();
        assert!(
            e.contains("exit status: 3") && e.ends_with(": pager down"),
            "{e}"
        );
        run_exec(
            &exec(&["sh", "-c", "test \"$FERRYSYNC_RUN_ID\" = 7 && grep -q x"]),
            b"x",
            &meta(),
        )
        .await
        .unwrap();
    }

    #[test]
    fn logs_show_a_webhook_by_its_origin_only() {
        assert_eq!(
            origin("https://hooks.example:8443/services/T000/B000/XXXXSECRET?token=abc"),
            "https://hooks.example:8443"
        );
        assert_eq!(origin("http://127.0.0.1/x"), "http://127.0.0.1");
    }
}
