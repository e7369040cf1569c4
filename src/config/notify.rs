//! `notify:` (where alerts go and which events they carry), `expect:` (a pull job's deadline
//! for new files), and the agent-wide defaults file `_defaults.yaml` next to the job files.
//!
//! A job's `notify:` keys override the defaults' keys one by one (`events`, `cert_expiry_days`,
//! `exec` with `exec_timeout`, `webhook` as a whole); `enabled: false` turns a job's alerts off.
//! Secrets (`webhook.secret_file`, `webhook.secret_env`) are read here, once, into [`Secret`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{PatternList, RawDefaults, RawExpect, RawNotify, RawWebhook};
use super::remote::Secret;
use super::trigger::Schedule;
use super::{parse_duration, ConfigError, Ctx};
use crate::model::notify::{Event, EventSet};
use crate::model::policy::Direction;

/// The agent-wide defaults, in the jobs directory. Its stem starts with `_`, and it is the one
/// `*.yaml` file there that is not a job.
pub const DEFAULTS_FILE: &str = "_defaults.yaml";

/// How long an exec target may run by default before it is killed.
const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a webhook's POST may take by default (connect, TLS, reply).
const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Alert on certificates that expire within this many days, by default.
pub(crate) const DEFAULT_CERT_EXPIRY_DAYS: u32 = 21;

/// A job's notification settings, defaults applied.
#[derive(Debug, Clone)]
pub struct Notify {
    pub events: EventSet,
    /// Alert when a certificate expires within this many days.
    pub cert_expiry_days: u32,
    pub exec: Option<ExecTarget>,
    pub webhook: Option<Webhook>,
}

/// `notify.exec`: a command (never through a shell) that gets the payload on its stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecTarget {
    pub argv: Vec<String>,
    pub timeout: Duration,
}

/// `notify.webhook`: an HTTP POST of the payload, signed with HMAC-SHA256.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: String,
    pub secret: Secret,
    pub timeout: Duration,
    /// Trust this CA (PEM) rather than the system's trust store.
    pub ca_file: Option<PathBuf>,
}

/// `expect:` (pull jobs): at least `new_files` files downloaded between two deadlines.
#[derive(Debug, Clone)]
pub struct Expect {
    pub new_files: u64,
    /// The deadline, a crontab expression in the job's `timezone`.
    pub by: Schedule,
}

/// The validated defaults file.
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    pub file: Option<PathBuf>,
    pub notify: Option<Notify>,
    /// The file's text (a reload restarts every job when it changes).
    pub text: String,
}

/// Reads `_defaults.yaml` of the jobs directory `dir`, if there is one.
pub fn load_defaults(dir: &Path) -> Result<Defaults, ConfigError> {
    let file = dir.join(DEFAULTS_FILE);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Defaults::default()),
        Err(e) => {
            return Err(ConfigError {
                file,
                line: 1,
                column: 1,
                reason: format!("cannot read the defaults file: {e}"),
            })
        }
    };
    parse_defaults(&file, &text)
}

/// Parses the text of a defaults file.
pub fn parse_defaults(file: &Path, text: &str) -> Result<Defaults, ConfigError> {
    let mut ctx = Ctx::new(file, text);
    let raw: RawDefaults = if text.trim().is_empty() {
        RawDefaults { notify: None }
    } else {
        serde_yaml::from_str(text).map_err(|e| ctx.yaml_error(&e))?
    };
    let notify = match raw.notify {
        Some(n) => notify_section(n, None, &mut ctx)?,
        None => None,
    };
    Ok(Defaults {
        file: Some(file.to_path_buf()),
        notify,
        text: text.to_string(),
    })
}

/// A job's `notify:` over the defaults: `None` when there is nowhere to send alerts.
pub(super) fn job_notify(
    raw: Option<RawNotify>,
    defaults: Option<&Notify>,
    ctx: &mut Ctx,
) -> Result<Option<Notify>, ConfigError> {
    match raw {
        None => Ok(defaults.cloned()),
        Some(raw) => notify_section(raw, defaults, ctx),
    }
}

/// Validates one `notify:` section; `defaults` fills the keys it does not set.
fn notify_section(
    raw: RawNotify,
    defaults: Option<&Notify>,
    ctx: &mut Ctx,
) -> Result<Option<Notify>, ConfigError> {
    if raw.enabled == Some(false) {
        return Ok(None);
    }
    let events = match raw.events {
        Some(list) => events(list, ctx)?,
        None => defaults.map_or(EventSet::DEFAULT, |d| d.events),
    };
    let cert_expiry_days = match raw.cert_expiry_days {
        Some(d) if d > 3650 => {
            return Err(ctx.fail(
                &["notify", "cert_expiry_days"],
                format!("notify.cert_expiry_days: {d} is outside 0..3650"),
            ))
        }
        Some(d) => d,
        None => defaults.map_or(DEFAULT_CERT_EXPIRY_DAYS, |d| d.cert_expiry_days),
    };
    let exec_timeout = raw
        .exec_timeout
        .as_deref()
        .map(|t| {
            bounded(
                "notify.exec_timeout",
                &["notify", "exec_timeout"],
                t,
                600,
                ctx,
            )
        })
        .transpose()?;
    let exec = match raw.exec {
        Some(argv) => Some(exec_target(
            argv,
            exec_timeout.unwrap_or(DEFAULT_EXEC_TIMEOUT),
            ctx,
        )?),
        None => defaults.and_then(|d| d.exec.clone()).map(|mut e| {
            e.timeout = exec_timeout.unwrap_or(e.timeout);
            e
        }),
    };
    let webhook = match raw.webhook {
        Some(w) => Some(webhook(w, ctx)?),
        None => defaults.and_then(|d| d.webhook.clone()),
    };
    if exec.is_none() && webhook.is_none() {
        return Err(ctx.fail(
            &["notify"],
            format!("notify: no target: set notify.exec (a command) or notify.webhook (a URL), here or in {DEFAULTS_FILE} next to the job files"),
        ));
    }
    Ok(Some(Notify {
        events,
        cert_expiry_days,
        exec,
        webhook,
    }))
}

fn events(list: PatternList, ctx: &Ctx) -> Result<EventSet, ConfigError> {
    let mut set = EventSet::empty();
    for name in list.into_vec() {
        let e = Event::parse(name.trim()).ok_or_else(|| {
            let known: Vec<&str> = Event::ALL.iter().map(|e| e.as_str()).collect();
            ctx.fail(
                &["notify", "events"],
                format!(
                    "notify.events: `{name}` is not an event (one of {})",
                    known.join(", ")
                ),
            )
        })?;
        set = set.with(e);
    }
    Ok(set)
}

/// A duration between 1 s and `max_secs`.
fn bounded(
    key: &str,
    keys: &[&str],
    text: &str,
    max_secs: u64,
    ctx: &Ctx,
) -> Result<Duration, ConfigError> {
    let d = parse_duration(key, text).map_err(|e| ctx.fail(keys, e))?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(max_secs) {
        return Err(ctx.fail(keys, format!("{key}: `{text}` is outside 1s..{max_secs}s")));
    }
    Ok(d)
}

fn exec_target(argv: PatternList, timeout: Duration, ctx: &Ctx) -> Result<ExecTarget, ConfigError> {
    let mut argv = argv.into_vec();
    let Some(program) = argv.first_mut().filter(|p| !p.trim().is_empty()) else {
        return Err(ctx.fail(&["notify", "exec"], "notify.exec: the command is empty"));
    };
    // Run as given, never through a shell: a relative path with a `/` is the job file's
    // folder's; a bare name is looked up in PATH.
    if program.contains('/') && !program.starts_with('/') {
        *program = ctx.resolve(Path::new(program)).display().to_string();
    }
    Ok(ExecTarget { argv, timeout })
}

fn webhook(w: RawWebhook, ctx: &Ctx) -> Result<Webhook, ConfigError> {
    let at = |key: &'static str| -> [&'static str; 3] { ["notify", "webhook", key] };
    let url = reqwest::Url::parse(w.url.trim()).map_err(|e| {
        ctx.fail(
            &at("url"),
            format!("notify.webhook.url: `{}` is not a URL: {e}", w.url),
        )
    })?;
    match url.scheme() {
        "https" => {}
        "http" if w.allow_http || is_loopback(&url) => {}
        "http" => {
            return Err(ctx.fail(
                &at("url"),
                "notify.webhook.url: plain http sends the payload in clear text; use https, or set notify.webhook.allow_http: true",
            ))
        }
        other => {
            return Err(ctx.fail(
                &at("url"),
                format!("notify.webhook.url: scheme `{other}` is not http or https"),
            ))
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ctx.fail(
            &at("url"),
            "notify.webhook.url: no user or password in the URL (it would be logged); sign with secret_file or secret_env",
        ));
    }
    let secret = match (&w.secret_file, &w.secret_env) {
        (Some(_), Some(_)) => {
            return Err(ctx.fail(
                &at("secret_env"),
                "give only one of notify.webhook.secret_file and notify.webhook.secret_env",
            ))
        }
        (Some(f), None) => {
            let f = ctx.resolve(f);
            let text = std::fs::read_to_string(&f).map_err(|e| {
                ctx.fail(
                    &at("secret_file"),
                    format!(
                        "notify.webhook.secret_file {}: cannot read: {e}",
                        f.display()
                    ),
                )
            })?;
            text.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, Some(var)) => std::env::var(var).map_err(|_| {
            ctx.fail(
                &at("secret_env"),
                format!("notify.webhook.secret_env: the environment variable {var} is not set"),
            )
        })?,
        (None, None) => {
            return Err(ctx.fail(
                &at("url"),
                "notify.webhook needs a secret to sign with: set secret_file or secret_env",
            ))
        }
    };
    if secret.is_empty() {
        return Err(ctx.fail(&at("secret_file"), "notify.webhook: the secret is empty"));
    }
    let timeout = match w.timeout.as_deref() {
        Some(t) => bounded("notify.webhook.timeout", &at("timeout"), t, 300, ctx)?,
        None => DEFAULT_WEBHOOK_TIMEOUT,
    };
    let ca_file = match w.ca_file {
        Some(ca) => {
            let ca = ctx.resolve(&ca);
            if let Err(e) = std::fs::metadata(&ca) {
                return Err(ctx.fail(
                    &at("ca_file"),
                    format!("notify.webhook.ca_file {}: {e}", ca.display()),
                ));
            }
            Some(ca)
        }
        None => None,
    };
    Ok(Webhook {
        url: url.to_string(),
        secret: Secret::new(secret),
        timeout,
        ca_file,
    })
}

/// `localhost`, 127.0.0.0/8 or ::1: plain http there does not leave the machine.
fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

/// Validates `expect:` (pull jobs only, and only with somewhere to send the alert).
pub(super) fn expect(
    raw: Option<RawExpect>,
    direction: Direction,
    notify: Option<&Notify>,
    ctx: &Ctx,
) -> Result<Option<Expect>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    if direction != Direction::Pull {
        return Err(ctx.fail(
            &["expect"],
            "expect: counts downloaded files, which only direction: pull jobs have",
        ));
    }
    let by = Schedule::parse(raw.by.trim())
        .map_err(|e| ctx.fail(&["expect", "by"], format!("expect.by: {e}")))?;
    let new_files = raw.new_files.unwrap_or(1);
    if new_files == 0 {
        return Err(ctx.fail(
            &["expect", "new_files"],
            "expect.new_files: 0 expects nothing; at least 1",
        ));
    }
    if notify.is_none() {
        return Err(ctx.fail(
            &["expect"],
            format!("expect: a missed deadline alerts `late`, but the job has no notify target (set notify: here or in {DEFAULTS_FILE})"),
        ));
    }
    Ok(Some(Expect { new_files, by }))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::parse_job_with;
    use crate::config::testing::{parse, GOOD};

    fn secret_file(dir: &Path) -> String {
        let f = dir.join("hook.secret");
        std::fs::write(&f, "s3cret-hook-key\n").unwrap();
        f.display().to_string()
    }

    #[test]
    fn notify_takes_exec_and_a_signed_webhook_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let secret = secret_file(dir.path());
        let job = parse(&format!(
            "{GOOD}notify:\n  exec: [/usr/bin/logger, -t, ferrysync]\n  webhook:\n    url: https://hooks.example/x\n    secret_file: {secret}\n"
        ))
        .unwrap();
        let n = job.notify.unwrap();
        assert_eq!(n.events, EventSet::DEFAULT);
        assert_eq!(n.cert_expiry_days, 21);
        let exec = n.exec.unwrap();
        assert_eq!(exec.argv, ["/usr/bin/logger", "-t", "ferrysync"]);
        assert_eq!(exec.timeout, Duration::from_secs(30));
        let hook = n.webhook.unwrap();
        assert_eq!(hook.secret.expose(), "s3cret-hook-key");
        assert_eq!(hook.timeout, Duration::from_secs(10));
        assert!(!format!("{hook:?}").contains("s3cret"));
        assert!(parse(GOOD).unwrap().notify.is_none());
    }

    #[test]
    fn bad_notify_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let secret = secret_file(dir.path());
        let cases = [
            ("notify:\n  events: [failure]\n", "no target"),
            ("notify:\n  exec: []\n", "the command is empty"),
            ("notify:\n  exec: x\n  events: [oops]\n", "`oops` is not an event"),
            ("notify:\n  exec: x\n  exec_timeout: 0s\n", "exec_timeout"),
            ("notify:\n  exec: x\n  cert_expiry_days: 9999\n", "cert_expiry_days"),
            ("notify:\n  webhook:\n    url: http://hooks.example/x\n", "plain http"),
            ("notify:\n  webhook:\n    url: https://hooks.example/x\n", "needs a secret"),
            ("notify:\n  webhook:\n    url: ftp://h/x\n", "scheme `ftp`"),
            ("notify:\n  webhook:\n    url: https://u:p@h/x\n", "no user or password"),
            (
                "notify:\n  webhook:\n    url: https://h/x\n    secret_env: FERRYSYNC_TEST_NO_SUCH_VAR\n",
                "FERRYSYNC_TEST_NO_SUCH_VAR is not set",
            ),
            ("notify:\n  webhook:\n    url: https://h/x\n    secret_file: /nonexistent/s\n", "secret_file"),
            ("notify:\n  exec: x\n  colour: red\n", "unknown field `colour`"),
            ("expect:\n  by: \"0 7 * * 1-5\"\n", "direction: pull"),
        ];
        for (extra, says) in cases {
            let e = parse(&format!("{GOOD}{extra}")).unwrap_err();
            assert!(e.reason.contains(says), "{extra:?}: {e}");
            assert!(e.line > 5, "points into the section: {e}");
        }
        // Plain http to loopback, or with allow_http.
        for url in [
            "http://127.0.0.1:9/x",
            "http://localhost/x",
            "http://[::1]/x",
        ] {
            parse(&format!(
                "{GOOD}notify:\n  webhook:\n    url: {url}\n    secret_file: {secret}\n"
            ))
            .unwrap();
        }
        parse(&format!(
            "{GOOD}notify:\n  webhook:\n    url: http://hooks.example/x\n    allow_http: true\n    secret_file: {secret}\n"
        ))
        .unwrap();
    }

    #[test]
    fn expect_is_for_pull_jobs_with_a_target() {
        let pull = format!("{GOOD}direction: pull\n");
        let job = parse(&format!(
            "{pull}notify:\n  exec: [true]\nexpect:\n  new_files: 2\n  by: \"0 7 * * 1-5\"\n"
        ))
        .unwrap();
        let expect = job.expect.unwrap();
        assert_eq!(expect.new_files, 2);
        assert_eq!(expect.by.expr, "0 7 * * 1-5");
        let e = parse(&format!("{pull}expect:\n  by: \"0 7 * * 1-5\"\n")).unwrap_err();
        assert!(e.reason.contains("no notify target"), "{e}");
        let e = parse(&format!(
            "{pull}notify:\n  exec: [true]\nexpect:\n  by: \"0 7 * *\"\n"
        ))
        .unwrap_err();
        assert!(e.reason.contains("expect.by"), "{e}");
    }

    #[test]
    fn the_defaults_file_fills_what_a_job_does_not_set() {
        let dir = tempfile::tempdir().unwrap();
        let secret = secret_file(dir.path());
        let defaults = parse_defaults(
            &dir.path().join(DEFAULTS_FILE),
            &format!(
                "notify:\n  cert_expiry_days: 30\n  exec: [notify-send]\n  webhook:\n    url: https://hooks.example/x\n    secret_file: {secret}\n"
            ),
        )
        .unwrap();
        let file = dir.path().join("acme.yaml");
        let plain = parse_job_with(&file, GOOD, &defaults).unwrap();
        let n = plain.notify.unwrap();
        assert_eq!(n.cert_expiry_days, 30);
        assert!(n.webhook.is_some() && n.exec.is_some());
        let own = parse_job_with(
            &file,
            &format!("{GOOD}notify:\n  events: [failure, success]\n  exec_timeout: 5s\n"),
            &defaults,
        )
        .unwrap();
        let n = own.notify.unwrap();
        assert!(n.events.contains(Event::Success) && !n.events.contains(Event::Recovery));
        assert_eq!(n.exec.unwrap().timeout, Duration::from_secs(5));
        assert_eq!(n.cert_expiry_days, 30);
        let off = parse_job_with(
            &file,
            &format!("{GOOD}notify:\n  enabled: false\n"),
            &defaults,
        )
        .unwrap();
        assert!(off.notify.is_none());
        // A defaults file holds only defaults.
        let e = parse_defaults(&dir.path().join(DEFAULTS_FILE), "local: /x\n").unwrap_err();
        assert!(e.reason.contains("unknown field `local`"), "{e}");
    }

    #[test]
    fn a_jobs_dir_reads_the_defaults_file_and_does_not_take_it_for_a_job() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
        std::fs::write(
            dir.path().join(DEFAULTS_FILE),
            "notify:\n  exec: [logger]\n",
        )
        .unwrap();
        let files = crate::config::load_job_dir(dir.path()).unwrap();
        assert_eq!(files.len(), 1);
        let job = files[0].job.as_ref().unwrap();
        assert_eq!(
            job.notify.as_ref().unwrap().exec.as_ref().unwrap().argv,
            ["logger"]
        );
        assert_eq!(crate::config::job_names(dir.path()).unwrap(), ["a"]);
        assert!(crate::config::load_job(&dir.path().join("a.yaml"))
            .unwrap()
            .notify
            .is_some());
        // A bad defaults file is every job's error, at its own file:line:col.
        std::fs::write(dir.path().join(DEFAULTS_FILE), "notify:\n  exec: []\n").unwrap();
        let files = crate::config::load_job_dir(dir.path()).unwrap();
        let e = files[0].job.as_ref().unwrap_err().to_string();
        assert!(
            e.contains("_defaults.yaml:3:") || e.contains("_defaults.yaml:2:"),
            "{e}"
        );
        assert!(crate::config::find_job(dir.path(), "_defaults").is_err());
    }
}
