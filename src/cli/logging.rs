//! Logging on stderr, and the two guards that keep credentials out of it.
//!
//! suppaftp logs every control command it sends through the `log` crate at trace level
//! (`CC OUT: PASS <password>`), tracing-subscriber bridges `log` records into tracing, and a
//! user may set any filter (`FERRYSYNC_LOG=trace`, `suppaftp=trace`). So no filter directive
//! can be the defence. Two guards sit after the filter, where the user cannot reach them:
//!
//! 1. [`HideCredentials`], a layer that vetoes every event whose message carries an FTP `PASS`
//!    command, whatever its target or level, before any formatter sees it. It needs no
//!    knowledge of the passwords.
//! 2. [`Redacting`], the writer under the formatter: every line, text or JSON, is held whole
//!    and every known secret value (the passwords of the jobs the command loaded, kept in
//!    [`SECRETS`]) is replaced by `***` before the line reaches stderr, in the forms the
//!    formatters may have written it in (raw, JSON-escaped, Debug-escaped, control characters
//!    escaped). This catches a password that reaches a log line by any other road (a server
//!    that echoes it in a reply, a future log statement).
//!
//! Text-format fields go through [`EscapedFields`], so that no value (a file name, a server
//! reply) can break a log line or drive the terminal; JSON escapes by itself.
//!
//! The CLI registers a job's password as soon as it has loaded the job, before anything can
//! connect with it: `run` (at start and, on SIGHUP, before the agent reloads), `sync`, `check`
//! and `demo` (the embedded server's password too). The registry only grows: a password that
//! a reload replaced stays redacted.

use std::fmt;
use std::io::{self, Write};
use std::sync::{Mutex, MutexGuard};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FormatFields, MakeWriter};
use tracing_subscriber::layer::{Context, Layer};

use ferrysync::config::{Job, Secret};
use ferrysync::sync::escape_controls;

/// What replaces a secret in output.
pub const MASK: &str = "***";

/// The secret values this process knows, in every form a formatter may print them in, longest
/// first (so that a longer form is replaced before a shorter one inside it).
pub struct Secrets {
    forms: Mutex<Vec<String>>,
}

/// The process-wide registry the CLI fills after loading jobs.
pub static SECRETS: Secrets = Secrets::new();

impl Secrets {
    pub const fn new() -> Secrets {
        Secrets {
            forms: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<String>> {
        // A panic elsewhere while holding the lock must not switch redaction off.
        self.forms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers a secret value. Empty values are ignored (there is nothing to hide).
    pub fn add(&self, value: &str) {
        if value.is_empty() {
            return;
        }
        let mut forms = self.lock();
        for form in printed_forms(value) {
            if !form.is_empty() && !forms.contains(&form) {
                forms.push(form);
            }
        }
        forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    }

    pub fn add_secret(&self, secret: &Secret) {
        self.add(secret.expose());
    }

    /// Remembers the credentials of a job.
    pub fn add_job(&self, job: &Job) {
        self.add_secret(&job.remote.password);
        if let Some(w) = job.notify.as_ref().and_then(|n| n.webhook.as_ref()) {
            self.add_secret(&w.secret);
        }
    }

    /// `text` with every known secret replaced by [`MASK`].
    pub fn redact(&self, text: &str) -> String {
        let forms = self.lock();
        let mut out = text.to_string();
        for f in forms.iter() {
            if out.contains(f.as_str()) {
                out = out.replace(f.as_str(), MASK);
            }
        }
        out
    }
}

/// The forms in which the formatters may print `value`: as is, JSON-escaped (JSON lines),
/// Debug-escaped (`{:?}` fields such as suppaftp's `CC IN: {:?}` replies, `str` fields), Debug
/// inside JSON, and with its control characters escaped ([`escape_controls`]: text-format
/// fields, human output).
fn printed_forms(value: &str) -> Vec<String> {
    let json = |s: &str| {
        let q = serde_json::to_string(s).unwrap_or_default();
        q.get(1..q.len().saturating_sub(1))
            .unwrap_or("")
            .to_string()
    };
    let debug = {
        let q = format!("{value:?}");
        q[1..q.len() - 1].to_string()
    };
    vec![
        value.to_string(),
        json(value),
        json(&debug),
        escape_controls(value).into_owned(),
        debug,
    ]
}

/// A [`MakeWriter`] whose writers hold each formatted event whole and hand it, redacted, to the
/// inner writer when the formatter is done with it (formatters write one event per writer).
pub struct Redacting<M> {
    inner: M,
    secrets: &'static Secrets,
}

impl<M> Redacting<M> {
    pub fn new(inner: M, secrets: &'static Secrets) -> Self {
        Redacting { inner, secrets }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Redacting<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter {
            buf: Vec::new(),
            inner: self.inner.make_writer(),
            secrets: self.secrets,
        }
    }
}

/// One event's writer: buffers, and writes the redacted text on flush or drop.
pub struct RedactingWriter<W: Write> {
    buf: Vec<u8>,
    inner: W,
    secrets: &'static Secrets,
}

impl<W: Write> RedactingWriter<W> {
    fn emit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        // The formatters write UTF-8; should anything else arrive, it is redacted lossily
        // rather than let through unread.
        let clean = self.secrets.redact(&String::from_utf8_lossy(&self.buf));
        self.buf.clear();
        self.inner.write_all(clean.as_bytes())?;
        self.inner.flush()
    }
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        // A line is only redacted whole: a flush in the middle of one would let a secret that
        // spans two writes through. Formatters never flush mid-event; hold everything to drop.
        Ok(())
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        let _ = self.emit();
    }
}

/// A layer that vetoes events carrying an FTP `PASS` command (see the module documentation).
pub struct HideCredentials;

impl<S: Subscriber> Layer<S> for HideCredentials {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let mut v = MessageVisitor::default();
        event.record(&mut v);
        !v.carries_password
    }
}

/// Looks at every field that holds text (the `message` of a `log` record included) for a
/// `PASS` command.
#[derive(Default)]
struct MessageVisitor {
    carries_password: bool,
}

impl Visit for MessageVisitor {
    fn record_str(&mut self, _field: &Field, value: &str) {
        self.carries_password |= has_pass_command(value);
    }
    fn record_debug(&mut self, _field: &Field, value: &dyn fmt::Debug) {
        if !self.carries_password {
            self.carries_password = has_pass_command(&format!("{value:?}"));
        }
    }
}

/// Whether `text` holds the FTP command `PASS` followed by an argument: the word `PASS` (in
/// any case, as servers accept it) at the start or after a character that is not a letter or
/// digit, then a space. "Password" and "passive" do not match.
pub fn has_pass_command(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.windows(5).enumerate().any(|(i, w)| {
        w[..4].eq_ignore_ascii_case(b"PASS")
            && w[4] == b' '
            && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric())
    })
}

/// The text format's fields: like tracing-subscriber's default (the message bare, other fields
/// `name=value`, the `log.*` fields of bridged `log` records left out), but every value shown
/// through [`escape_controls`]. The default escapes ESC in messages only, and CR and LF nowhere,
/// so a path logged as `path = %p` (the warnings `sync` prints on stderr, the agent's journal)
/// could forge log lines or drive the terminal. JSON escapes all of them itself.
pub struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = EscapingVisitor {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct EscapingVisitor<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visit for EscapingVisitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let text = format!("{value:?}");
        let sep = if std::mem::take(&mut self.first) {
            ""
        } else {
            " "
        };
        let shown = escape_controls(&text);
        self.result = match name {
            "message" => write!(self.writer, "{sep}{shown}"),
            name => write!(
                self.writer,
                "{sep}{}={shown}",
                name.strip_prefix("r#").unwrap_or(name)
            ),
        };
    }
}

/// Log format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Whether log lines on stderr may carry colours (ANSI escape sequences): only on a terminal,
/// never under systemd's journal (`journal`: its stderr is a socket, and the journal stores
/// escape codes verbatim), and never when `NO_COLOR` is set to anything but the empty string
/// (<https://no-color.org>). A redirected log (`2>file`, a pipe to `less` or `grep`) gets plain
/// text, which tracing-subscriber alone would not give: it colours whatever stderr is.
pub fn colours(
    stderr_is_terminal: bool,
    no_color: Option<&std::ffi::OsStr>,
    journal: bool,
) -> bool {
    stderr_is_terminal && !journal && no_color.is_none_or(|v| v.is_empty())
}

/// The subscriber of the command line: `filter`, then [`HideCredentials`], then the text or
/// JSON formatter writing through [`Redacting`] to `writer`. `journal`: under systemd's
/// journal, no timestamp. `ansi`: colours ([`colours`] decides).
pub fn subscriber<M>(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
    journal: bool,
    ansi: bool,
    writer: M,
    secrets: &'static Secrets,
) -> Box<dyn Subscriber + Send + Sync>
where
    M: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt;
    let writer = Redacting::new(writer, secrets);
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == LogFormat::Json {
        let json = builder.with_writer(writer).json().finish();
        return Box::new(json.with(HideCredentials));
    }
    let text = builder
        .with_writer(writer)
        .fmt_fields(EscapedFields)
        .with_target(false)
        .with_ansi(ansi && !journal);
    if journal {
        Box::new(text.without_time().finish().with(HideCredentials))
    } else {
        Box::new(text.finish().with(HideCredentials))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Once};

    /// A writer into a shared buffer, as the tests read what stderr would have got.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// `log` records reach tracing the way they do in the binary: through tracing-log's
    /// `LogTracer` as the `log` crate's logger.
    fn bridge_log() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| tracing_log::LogTracer::init().unwrap());
    }

    /// Runs `emit` under the CLI's subscriber with `filter`, and returns what it wrote.
    fn capture(
        format: LogFormat,
        filter: &str,
        secrets: &'static Secrets,
        emit: impl FnOnce(),
    ) -> String {
        bridge_log();
        let out = Captured::default();
        let sub = subscriber(
            format,
            tracing_subscriber::EnvFilter::new(filter),
            false,
            false,
            out.clone(),
            secrets,
        );
        tracing::subscriber::with_default(sub, emit);
        out.text()
    }

    const FILTERS: [&str; 4] = [
        "trace",
        "suppaftp=trace",
        "suppaftp::async_ftp=trace,ferrysync=trace",
        "warn,suppaftp::async_ftp::tokio_ftp::control=trace",
    ];

    #[test]
    fn suppaftp_pass_command_never_reaches_the_output() {
        // An empty registry: the layer alone must hold, for every filter and format.
        static NONE: Secrets = Secrets::new();
        for format in [LogFormat::Text, LogFormat::Json] {
            for filter in FILTERS {
                let out = capture(format, filter, &NONE, || {
                    log::trace!(target: "suppaftp::async_ftp::tokio_ftp::control", "CC OUT: USER demo");
                    log::trace!(target: "suppaftp::async_ftp::tokio_ftp::control", "CC OUT: PASS hunter2");
                    log::trace!(target: "suppaftp::async_ftp", "CC OUT: PASS hunter2");
                    log::trace!(target: "suppaftp::sync_ftp::control", "CC OUT: pass hunter2");
                    tracing::trace!(target: "suppaftp::async_ftp", "CC OUT: PASS hunter2");
                    tracing::error!(command = "PASS hunter2", "sent");
                });
                assert!(
                    out.contains("CC OUT: USER demo"),
                    "{format:?} {filter}: the bridge carried nothing:\n{out}"
                );
                assert!(
                    !out.contains("hunter2"),
                    "{format:?} {filter}: the password leaked:\n{out}"
                );
            }
        }
    }

    #[test]
    fn a_registered_secret_is_masked_in_every_line_and_form() {
        static SOME: Secrets = Secrets::new();
        SOME.add("s3cr\"et\\pw");
        SOME.add("plain-pw-42");
        for format in [LogFormat::Text, LogFormat::Json] {
            let out = capture(format, "trace", &SOME, || {
                log::trace!(target: "suppaftp::async_ftp", "CC IN: {:?}", "530 plain-pw-42 rejected");
                log::debug!(target: "suppaftp::async_ftp", "echo s3cr\"et\\pw");
                tracing::warn!(reply = %"331 plain-pw-42", "server said");
                tracing::warn!(reply = ?"331 s3cr\"et\\pw", "server said");
                tracing::info!("login with s3cr\"et\\pw and plain-pw-42");
            });
            assert_eq!(out.lines().count(), 5, "{format:?}:\n{out}");
            for leak in ["plain-pw-42", "s3cr", "et\\pw", "et\\\\pw"] {
                assert!(!out.contains(leak), "{format:?}: `{leak}` leaked:\n{out}");
            }
            assert!(out.contains(MASK), "{format:?}:\n{out}");
        }
    }

    #[test]
    fn redaction_covers_the_escaped_forms() {
        let s = Secrets::new();
        s.add("a\u{1b}b\"c\td");
        let json = serde_json::to_string("x a\u{1b}b\"c\td y").unwrap();
        assert_eq!(s.redact(&json), "\"x *** y\"");
        assert_eq!(s.redact(&format!("{:?}", "a\u{1b}b\"c\td")), "\"***\"");
        assert_eq!(s.redact("a\\eb\"c\\td"), "***");
        assert_eq!(s.redact("a\u{1b}b\"c\td!"), "***!");
        s.add("");
        assert_eq!(s.redact("nothing here"), "nothing here");
    }

    #[test]
    fn the_writer_redacts_a_line_written_in_pieces() {
        static SOME: Secrets = Secrets::new();
        SOME.add("hunter2");
        let out = Captured::default();
        let make = Redacting::new(out.clone(), &SOME);
        {
            let mut w = make.make_writer();
            w.write_all(b"PASS hun").unwrap();
            w.flush().unwrap();
            w.write_all(b"ter2\n").unwrap();
        }
        assert_eq!(out.text(), "PASS ***\n");
    }

    #[test]
    fn a_text_event_is_one_line_whatever_its_values_hold() {
        static NONE: Secrets = Secrets::new();
        let hostile = "a.csv\n2026-12-03T00:00:00Z  INFO forged\r\u{1b}]0;title\u{7}\u{1b}[2J";
        let out = capture(LogFormat::Text, "trace", &NONE, || {
            tracing::warn!(path = %hostile, "cannot upload: 550\r\nforged too");
            log::warn!(target: "suppaftp::async_ftp", "reply {hostile}");
            tracing::info!("nightly: ok\n  failed: x");
        });
        assert_eq!(out.lines().count(), 3, "{out}");
        for c in ['\r', '\u{7}'] {
            assert!(!out.contains(c), "{out:?}");
        }
        assert!(
            !out.contains("\u{1b}]") && !out.contains("\u{1b}[2J"),
            "{out:?}"
        );
        assert!(
            out.contains("a.csv\\n2026-12-03T00:00:00Z  INFO forged\\r"),
            "{out}"
        );
        assert!(out.contains("nightly: ok\\n  failed: x"), "{out}");
        // JSON lines are one line each by construction, and exact once parsed.
        let json = capture(LogFormat::Json, "trace", &NONE, || {
            tracing::warn!(path = %hostile, "cannot upload");
        });
        assert_eq!(json.lines().count(), 1, "{json}");
        let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
        assert_eq!(v["fields"]["path"], hostile);
    }

    /// A real sync against the in-process loopback FTPS server, its client logging at trace
    /// level in text and JSON under the CLI's subscriber: suppaftp's control traffic is there,
    /// the password is not, with the registry empty (the layer alone) and filled.
    #[test]
    fn a_real_sync_at_trace_level_never_logs_the_password() {
        use ferrysync::loopback::{self, LoopbackOptions};
        use ferrysync::state::{Ledger, Outcome, SharedLedger};
        use ferrysync::sync::{run_job, RunOptions};

        let password = "hunter2-\"q\\z\"-s3cr3t";
        let dir = tempfile::tempdir().unwrap();
        let server_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = server_rt
            .block_on(loopback::start(LoopbackOptions {
                root: dir.path().join("root"),
                cert_dir: dir.path().join("tls"),
                user: "tester".into(),
                password: password.into(),
                port: None,
                tls: true,
            }))
            .unwrap();
        let local = dir.path().join("local");
        std::fs::create_dir_all(local.join("sub")).unwrap();
        std::fs::write(local.join("a.txt"), b"a").unwrap();
        std::fs::write(local.join("sub/b.txt"), b"b").unwrap();
        std::fs::write(dir.path().join("password"), password).unwrap();
        let job_file = dir.path().join("leak.yaml");
        std::fs::write(
            &job_file,
            format!(
                "local: {}\nremote:\n  host: 127.0.0.1\n  port: {}\n  security: explicit\n  path: /up\n  user: tester\n  password_file: {}\n  tls:\n    ca_file: {}\ndirection: push\ntransfers: 2\n",
                local.display(),
                server.port,
                dir.path().join("password").display(),
                server.cert_pem_path.display()
            ),
        )
        .unwrap();
        let job = ferrysync::config::load_job(&job_file).unwrap();

        static NONE: Secrets = Secrets::new();
        static KNOWN: Secrets = Secrets::new();
        KNOWN.add_job(&job);
        let mut n = 0;
        for secrets in [&NONE, &KNOWN] {
            for format in [LogFormat::Text, LogFormat::Json] {
                for filter in ["trace", "suppaftp=trace,ferrysync=trace"] {
                    n += 1;
                    let ledger = SharedLedger::new(
                        Ledger::open(&dir.path().join(format!("{n}.db"))).unwrap(),
                    );
                    let opts = RunOptions {
                        trigger: "manual".into(),
                        dry_run: false,
                        progress: None,
                        stop: None,
                        scope: None,
                    };
                    let mut outcome = None;
                    let out = capture(format, filter, secrets, || {
                        // One thread: every task logs under this thread's subscriber.
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .unwrap();
                        outcome = Some(rt.block_on(run_job(&job, &ledger, &opts)).outcome);
                    });
                    assert_eq!(outcome, Some(Outcome::Ok), "{format:?} {filter}:\n{out}");
                    assert!(
                        out.contains("CC OUT: USER tester"),
                        "{format:?} {filter}:\n{out}"
                    );
                    for leak in ["hunter2", "s3cr3t"] {
                        assert!(
                            !out.contains(leak),
                            "{format:?} {filter}: `{leak}` leaked:\n{out}"
                        );
                    }
                }
            }
        }
        drop(server_rt);
    }

    #[test]
    fn colours_only_on_a_terminal_outside_the_journal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colours(true, None, false));
        assert!(
            colours(true, Some(OsStr::new("")), false),
            "an empty NO_COLOR is unset"
        );
        assert!(!colours(true, Some(OsStr::new("1")), false));
        assert!(
            !colours(true, Some(OsStr::new("0")), false),
            "any value counts"
        );
        assert!(!colours(false, None, false), "redirected");
        assert!(!colours(true, None, true), "journal");
    }

    /// The subscriber writes what it is told: level names coloured with `ansi`, plain without.
    #[test]
    fn ansi_off_means_no_escape_sequence_in_any_line() {
        static NONE: Secrets = Secrets::new();
        for (ansi, journal, expect) in [
            (true, false, true),
            (false, false, false),
            (true, true, false),
        ] {
            let out = Captured::default();
            let sub = subscriber(
                LogFormat::Text,
                tracing_subscriber::EnvFilter::new("trace"),
                journal,
                ansi,
                out.clone(),
                &NONE,
            );
            tracing::subscriber::with_default(sub, || {
                tracing::warn!(path = "a.csv", "cannot upload");
                tracing::error!("failed");
            });
            let text = out.text();
            assert_eq!(
                text.contains('\u{1b}'),
                expect,
                "ansi {ansi} journal {journal}: {text:?}"
            );
        }
    }

    #[test]
    fn pass_commands_are_recognised_and_words_are_not() {
        for yes in ["PASS x", "CC OUT: PASS hunter2", "pass  x", "[PASS x]"] {
            assert!(has_pass_command(yes), "{yes}");
        }
        for no in [
            "Password is required",
            "entering passive mode",
            "PASS",
            "bypass x",
            "compass rose",
            "PASSWORD x",
        ] {
            assert!(!has_pass_command(no), "{no}");
        }
    }
}
