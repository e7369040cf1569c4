//! Job files: YAML in, validated [`Job`]s out.
//!
//! Everything a run needs is checked here, once, before any connection is made: unknown keys,
//! wrong types, cron expressions, time zones, durations, glob patterns, and whether the password
//! can be read. Every error names `file:line:col`. Secrets are wrapped in [`Secret`], whose
//! `Debug` and `Display` never show the value, so they cannot leak through logs or errors.
//!
//! May import: `model`.

use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use crate::model::policy::{Direction, MaxDelete, SyncMode};

/// A configuration error, already formatted as `file:line:col: reason`.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {reason}")]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub reason: String,
}

/// A password or other credential. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The only way to read the value: at the point where it is sent to the server.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// AUTH TLS on the control connection, then PBSZ 0 / PROT P.
    Explicit,
    /// TLS from the first byte (default port 990).
    Implicit,
    /// Plain FTP: refused unless `allow_plaintext: true`.
    None,
}

/// `remote.passive_address`: where a passive data connection goes when the server answers PASV
/// (EPSV replies carry only a port: they always go to the control connection's address).
///
/// FTPS encrypts the control connection, so a NAT gateway's FTP helper cannot rewrite the
/// address in a PASV reply: a server behind NAT announces its private address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PassiveAddress {
    /// The server's address, unless it is private or unroutable and differs from the control
    /// connection's peer; then the control connection's peer.
    #[default]
    Auto,
    /// Always the control connection's peer, ignoring the address in PASV.
    Control,
    /// Always the address in PASV (servers whose data connections come from another host).
    Server,
}

/// `remote.data_mode`: who opens the data connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataMode {
    /// The client connects to the server (EPSV, PASV if refused).
    #[default]
    Passive,
    /// The server connects to the client (EPRT, PORT if refused), for servers whose firewall
    /// admits only the control port.
    Active,
}

/// `remote.active_ports: 50000-50100`: the local ports active-mode listeners may use.
fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let bad = || {
        format!("remote.active_ports: `{s}` is not a port or a range of ports like `50000-50100`")
    };
    let (first, last) = match s.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (s.trim(), s.trim()),
    };
    let first: u16 = first.parse().map_err(|_| bad())?;
    let last: u16 = last.parse().map_err(|_| bad())?;
    if first == 0 || first > last {
        return Err(format!(
            "remote.active_ports: `{s}` must be ports from 1 to 65535, the first not above the last"
        ));
    }
    Ok(first..=last)
}

/// `active_ports` as written: `50000` or `"50000-50100"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawPorts {
    One(u16),
    Range(String),
}

/// How often a transfer or listing is retried after a transient failure (a dropped
/// connection, a timeout, a 4xx reply), and how long the backoff may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `n + 1` (n from 0): 1 s doubling up to `max_delay`, with
    /// ±25% jitter so parallel connections do not retry in lockstep.
    pub fn delay(&self, n: u32) -> Duration {
        let base = Duration::from_secs(1).saturating_mul(1u32 << n.min(16));
        base.min(self.max_delay)
            .mul_f64(0.75 + fastrand::f64() * 0.5)
    }
}

/// `retries` as written: `retries: 5` or `retries: {attempts: 5, max_delay: 30s}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawRetries {
    Attempts(u32),
    Full(RawRetryPolicy),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetryPolicy {
    attempts: Option<u32>,
    max_delay: Option<String>,
}

/// `max_delete` as written: a number or a string such as `25%`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawMaxDelete {
    Count(u64),
    Text(String),
}

fn parse_max_delete(s: &str) -> Result<MaxDelete, String> {
    let s = s.trim();
    if let Some(p) = s.strip_suffix('%') {
        let p: f64 = p
            .trim()
            .parse()
            .map_err(|_| format!("max_delete: `{s}` is not a percentage like `25%`"))?;
        if !(0.0..=100.0).contains(&p) {
            return Err(format!("max_delete: {p}% is outside 0%..100%"));
        }
        Ok(MaxDelete::Percent(p))
    } else {
        s.parse()
            .map(MaxDelete::Count)
            .map_err(|_| format!("max_delete: `{s}` is neither a count nor a percentage"))
    }
}

/// A duration written as `2s`, `500ms`, `5m`.
fn parse_duration(key: &str, s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{key}: `{s}` is not a duration like `2s` or `5m`: {e}"))
}

/// A validated 5-field crontab expression (or `@hourly`, `@daily`, ...).
#[derive(Clone)]
pub struct Schedule {
    pub expr: String,
    pub cron: croner::Cron,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?})", self.expr)
    }
}

impl Schedule {
    pub fn parse(expr: &str) -> Result<Schedule, String> {
        let fields = expr.split_whitespace().count();
        if !expr.trim_start().starts_with('@') && fields != 5 {
            return Err(format!(
                "schedule `{expr}` has {fields} fields; a crontab expression has 5 (minute hour day month weekday)"
            ));
        }
        let cron = croner::Cron::new(expr)
            .parse()
            .map_err(|e| format!("schedule `{expr}` is not a valid cron expression: {e}"))?;
        Ok(Schedule {
            expr: expr.to_string(),
            cron,
        })
    }
}

/// A SHA-256 certificate fingerprint, hex with or without colons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn parse(s: &str) -> Result<Fingerprint, String> {
        let hex: String = s
            .chars()
            .filter(|c| *c != ':' && !c.is_whitespace())
            .collect();
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "pin_sha256 `{s}` is not a SHA-256 fingerprint (64 hex digits, colons allowed)"
            ));
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| format!("pin_sha256 `{s}`: bad hex"))?;
        }
        Ok(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|b| format!("{b:02x}")).collect();
        f.write_str(&parts.join(":"))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_file: Option<PathBuf>,
    pin_sha256: Option<PatternList>,
    #[serde(default)]
    insecure_skip_verify: bool,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    max_version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemote {
    host: String,
    port: Option<u16>,
    #[serde(default = "default_security")]
    security: Security,
    #[serde(default = "default_remote_path")]
    path: String,
    user: String,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    password: Option<String>,
    tls: Option<RawTls>,
    #[serde(default)]
    allow_plaintext: bool,
    timeout: Option<String>,
    #[serde(default)]
    listing: Listing,
    list_time_offset: Option<String>,
    #[serde(default)]
    passive_address: PassiveAddress,
    #[serde(default)]
    data_mode: DataMode,
    active_ports: Option<RawPorts>,
}

fn default_security() -> Security {
    Security::Explicit
}
fn default_remote_path() -> String {
    "/".to_string()
}

/// One string or a list of strings (`include`, `exclude`, `pin_sha256`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PatternList {
    One(String),
    Many(Vec<String>),
}

impl PatternList {
    fn into_vec(self) -> Vec<String> {
        match self {
            PatternList::One(s) => vec![s],
            PatternList::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    local: PathBuf,
    remote: RawRemote,
    #[serde(default = "default_direction")]
    direction: Direction,
    #[serde(default = "default_mode")]
    mode: SyncMode,
    schedule: Option<String>,
    timezone: Option<String>,
    #[serde(default)]
    watch: RawWatch,
    debounce: Option<String>,
    poll: Option<String>,
    include: Option<PatternList>,
    exclude: Option<PatternList>,
    transfers: Option<u16>,
    max_delete: Option<RawMaxDelete>,
    retries: Option<RawRetries>,
    #[serde(default)]
    catch_up: bool,
    upload: Option<RawUpload>,
}

/// `upload:` options for servers with quirks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpload {
    temp_name: Option<bool>,
    verify: Option<String>,
}

/// How uploads reach their final name, and what is checked before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadOptions {
    /// Upload to a temporary name and rename (default). `false` for servers that refuse
    /// RNFR/RNTO: consumers may then see a partial file, and an interrupted upload starts over.
    pub temp_name: bool,
    /// Check the server's SIZE (and hash, on resume) before the rename (default). `false`
    /// (`verify: none`) for write-only drop folders that refuse SIZE and reading back.
    pub verify: bool,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            temp_name: true,
            verify: true,
        }
    }
}

/// `watch:` as written: `true`/`false`, or `poll` for folders where inotify sees nothing.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawWatch {
    Flag(bool),
    Text(String),
}

impl Default for RawWatch {
    fn default() -> Self {
        RawWatch::Flag(false)
    }
}

/// How long the agent waits for a watched folder to be quiet, at least and at most.
pub(crate) const DEBOUNCE_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(3600));

/// The poll watcher's interval when `watch: poll` has no `poll:`.
pub(crate) const DEFAULT_WATCH_POLL: Duration = Duration::from_secs(30);

fn default_direction() -> Direction {
    Direction::Push
}
fn default_mode() -> SyncMode {
    SyncMode::Mirror
}

/// TLS settings of a validated job; paths are absolute.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// `max_version: "1.2"`: never offer TLS 1.3 (servers whose session reuse fails with it).
    pub tls12_only: bool,
    pub ca_file: Option<PathBuf>,
    pub pins: Vec<Fingerprint>,
    pub insecure_skip_verify: bool,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// The server side of a validated job.
#[derive(Debug, Clone)]
pub struct Remote {
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// Absolute remote directory, no trailing slash (except `/` itself).
    pub path: String,
    pub user: String,
    pub password: Secret,
    pub tls: TlsOptions,
    /// How long one command, or one read or write on a data connection, may take.
    pub timeout: Duration,
    /// MLSD where offered, or always LIST.
    pub listing: Listing,
    /// The offset from UTC of the times the server's LIST shows.
    pub list_time_offset: ListTimeOffset,
    pub passive_address: PassiveAddress,
    pub data_mode: DataMode,
    /// Local ports for active-mode listeners; `None`: any port the system picks.
    pub active_ports: Option<RangeInclusive<u16>>,
}

/// `remote.listing`: how directories are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Listing {
    /// MLSD where FEAT offers it (exact UTC times), LIST otherwise.
    #[default]
    Auto,
    /// Always LIST: for servers whose MLSD is missing from FEAT, broken or slow.
    List,
}

/// `remote.list_time_offset`: the zone of LIST times (MLSD and MDTM times are UTC by RFC 3659).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListTimeOffset {
    /// Learnt in every run from one file's MDTM against its LIST time (so a daylight-saving
    /// change on the server is followed); UTC where the server has no MDTM.
    Auto,
    /// Seconds east of UTC, from the job.
    Fixed(i64),
}

/// Include/exclude patterns, matched against `/`-separated paths relative to the job's root.
#[derive(Debug, Clone)]
pub struct PathFilter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

impl PathFilter {
    pub fn all() -> Self {
        PathFilter {
            include: None,
            exclude: None,
        }
    }

    pub(crate) fn new(include: &[String], exclude: &[String]) -> Result<Self, String> {
        fn build(patterns: &[String], key: &str) -> Result<Option<GlobSet>, String> {
            if patterns.is_empty() {
                return Ok(None);
            }
            let mut b = GlobSetBuilder::new();
            for p in patterns {
                let glob = globset::GlobBuilder::new(p)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| format!("{key}: bad pattern `{p}`: {e}"))?;
                b.add(glob);
                // `**/*.csv` should also match `a.csv` at the root, as users expect.
                if let Some(rest) = p.strip_prefix("**/") {
                    if let Ok(g) = Glob::new(rest) {
                        b.add(g);
                    }
                }
            }
            b.build().map(Some).map_err(|e| format!("{key}: {e}"))
        }
        Ok(PathFilter {
            include: build(include, "include")?,
            exclude: build(exclude, "exclude")?,
        })
    }

    /// Whether a file at `rel` takes part in the sync.
    pub fn includes_file(&self, rel: &str) -> bool {
        if self.excludes(rel) {
            return false;
        }
        match &self.include {
            Some(set) => set.is_match(rel),
            None => true,
        }
    }

    /// Whether `rel` (a file or a directory) is excluded; an excluded directory is not descended.
    pub fn excludes(&self, rel: &str) -> bool {
        self.exclude.as_ref().is_some_and(|set| set.is_match(rel))
    }

    /// With include patterns, directories are created only where they lead to included files.
    pub fn has_includes(&self) -> bool {
        self.include.is_some()
    }
}

/// One validated job.
#[derive(Debug, Clone)]
pub struct Job {
    /// The file stem of the job file.
    pub name: String,
    pub file: PathBuf,
    pub local: PathBuf,
    pub remote: Remote,
    pub direction: Direction,
    pub mode: SyncMode,
    pub schedule: Option<Schedule>,
    pub timezone: Option<chrono_tz::Tz>,
    /// `watch: true` or `watch: poll`: the agent syncs soon after local changes.
    pub watch: bool,
    /// `watch: poll`: the local tree is polled at this interval (the job's `poll:`, default
    /// 30s) instead of watched with inotify; `poll:` then does not start runs by itself.
    pub watch_poll: Option<Duration>,
    pub debounce: Duration,
    pub poll: Option<Duration>,
    /// `catch_up: true`: a scheduled time missed while the agent was down runs at start-up.
    pub catch_up: bool,
    pub filter: PathFilter,
    pub transfers: usize,
    pub max_delete: Option<MaxDelete>,
    pub retries: RetryPolicy,
    pub upload: UploadOptions,
    /// Non-fatal remarks about the job (inline password, disabled verification), repeated in
    /// every run's log so they are never forgotten.
    pub warnings: Vec<String>,
}

/// Loads and validates one job file.
pub fn load_job(file: &Path) -> Result<Job, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        line: 1,
        column: 1,
        reason: format!("cannot read job file: {e}"),
    })?;
    parse_job(file, &text)
}

/// Parses job text; `file` names the job and anchors relative paths.
pub fn parse_job(file: &Path, text: &str) -> Result<Job, ConfigError> {
    let fail = |keys: &[&str], reason: String| {
        let (line, column) = locate(text, keys);
        ConfigError {
            file: file.to_path_buf(),
            line,
            column,
            reason,
        }
    };
    let name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| fail(&[], "the job file needs a UTF-8 name".into()))?
        .to_string();
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(fail(
            &[],
            format!(
                "job name `{name}` (the file name) may use only letters, digits, `-`, `_` and `.`"
            ),
        ));
    }
    if text.trim().is_empty() {
        return Err(fail(&[], "the job file is empty".into()));
    }
    let raw: RawJob = serde_yaml::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        ConfigError {
            file: file.to_path_buf(),
            line,
            column,
            reason: one_line(&e.to_string()),
        }
    })?;
    let base = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let resolve = |p: &Path| -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let mut warnings = Vec::new();

    // Remote.
    let r = raw.remote;
    if r.host.trim().is_empty() {
        return Err(fail(&["remote", "host"], "remote.host is empty".into()));
    }
    if r.user.is_empty() {
        return Err(fail(&["remote", "user"], "remote.user is empty".into()));
    }
    if r.security == Security::None && !r.allow_plaintext {
        return Err(fail(
            &["remote", "security"],
            "security: none sends the password and the files in clear text; set remote.allow_plaintext: true to allow it".into(),
        ));
    }
    if !r.path.starts_with('/') {
        return Err(fail(
            &["remote", "path"],
            format!("remote.path `{}` must be absolute (start with /)", r.path),
        ));
    }
    if r.path.split('/').any(|c| c == "..") || r.path.contains(['\r', '\n', '\0']) {
        return Err(fail(
            &["remote", "path"],
            format!(
                "remote.path `{}` may not contain `..` or control characters",
                r.path.escape_debug()
            ),
        ));
    }
    let path = {
        let trimmed = r.path.trim_end_matches('/');
        if trimmed.is_empty() {
            "/".to_string()
        } else {
            trimmed.to_string()
        }
    };
    let sources = [
        r.password_env.is_some(),
        r.password_file.is_some(),
        r.password.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if sources > 1 {
        return Err(fail(
            &["remote", "password_env"],
            "give only one of remote.password_env, remote.password_file and remote.password".into(),
        ));
    }
    let password = if let Some(var) = &r.password_env {
        match std::env::var(var) {
            Ok(v) => Secret(v),
            Err(_) => {
                return Err(fail(
                    &["remote", "password_env"],
                    format!("remote.password_env: the environment variable {var} is not set"),
                ))
            }
        }
    } else if let Some(pf) = &r.password_file {
        let pf = resolve(pf);
        match std::fs::read_to_string(&pf) {
            // A trailing newline is an editor's, not part of the password.
            Ok(v) => Secret(v.trim_end_matches(['\n', '\r']).to_string()),
            Err(e) => {
                return Err(fail(
                    &["remote", "password_file"],
                    format!("remote.password_file {}: cannot read: {e}", pf.display()),
                ))
            }
        }
    } else if let Some(p) = r.password {
        warnings.push(
            "the password is written in the job file; prefer remote.password_env or remote.password_file".to_string(),
        );
        Secret(p)
    } else {
        return Err(fail(
            &["remote"],
            "remote needs a password: set remote.password_env or remote.password_file".into(),
        ));
    };
    let tls = match r.tls {
        None => TlsOptions::default(),
        Some(t) => {
            let check_file =
                |p: &Option<PathBuf>, key: &str| -> Result<Option<PathBuf>, ConfigError> {
                    match p {
                        None => Ok(None),
                        Some(p) => {
                            let abs = resolve(p);
                            std::fs::metadata(&abs).map_err(|e| {
                                fail(
                                    &["remote", "tls", key],
                                    format!("remote.tls.{key} {}: cannot read: {e}", abs.display()),
                                )
                            })?;
                            Ok(Some(abs))
                        }
                    }
                };
            let tls12_only = match t.max_version.as_deref().map(str::trim) {
                None | Some("1.3") => false,
                Some("1.2") => true,
                Some(other) => {
                    return Err(fail(
                        &["remote", "tls", "max_version"],
                        format!("remote.tls.max_version: `{other}` is not \"1.2\" or \"1.3\""),
                    ))
                }
            };
            let opts = TlsOptions {
                tls12_only,
                ca_file: check_file(&t.ca_file, "ca_file")?,
                pins: t
                    .pin_sha256
                    .map(PatternList::into_vec)
                    .unwrap_or_default()
                    .iter()
                    .map(|p| Fingerprint::parse(p))
                    .collect::<Result<_, _>>()
                    .map_err(|e| {
                        fail(&["remote", "tls", "pin_sha256"], format!("remote.tls.{e}"))
                    })?,
                insecure_skip_verify: t.insecure_skip_verify,
                client_cert: check_file(&t.client_cert, "client_cert")?,
                client_key: check_file(&t.client_key, "client_key")?,
            };
            if opts.client_cert.is_some() != opts.client_key.is_some() {
                return Err(fail(
                    &["remote", "tls"],
                    "remote.tls.client_cert and remote.tls.client_key go together".into(),
                ));
            }
            if opts.insecure_skip_verify {
                warnings.push(
                    "remote.tls.insecure_skip_verify is true: the server's certificate is NOT checked, anyone on the path can read and change the files".to_string(),
                );
            }
            opts
        }
    };
    if r.security == Security::None {
        warnings.push("security: none: password and files travel in clear text".to_string());
    }
    let timeout = match &r.timeout {
        Some(t) => {
            parse_duration("remote.timeout", t).map_err(|e| fail(&["remote", "timeout"], e))?
        }
        None => Duration::from_secs(60),
    };
    if timeout < Duration::from_secs(1) {
        return Err(fail(
            &["remote", "timeout"],
            "remote.timeout must be at least 1s".into(),
        ));
    }
    let list_time_offset = match r.list_time_offset.as_deref().map(str::trim) {
        None | Some("auto") => ListTimeOffset::Auto,
        Some(t) => ListTimeOffset::Fixed(parse_offset(t).map_err(|e| {
            fail(
                &["remote", "list_time_offset"],
                format!("remote.list_time_offset: {e} (or auto)"),
            )
        })?),
    };
    let port = r.port.unwrap_or(match r.security {
        Security::Implicit => 990,
        _ => 21,
    });
    if port == 0 {
        return Err(fail(&["remote", "port"], "remote.port may not be 0".into()));
    }
    let active_ports = match &r.active_ports {
        None => None,
        Some(RawPorts::One(p)) => Some(
            parse_port_range(&p.to_string()).map_err(|e| fail(&["remote", "active_ports"], e))?,
        ),
        Some(RawPorts::Range(s)) => {
            Some(parse_port_range(s).map_err(|e| fail(&["remote", "active_ports"], e))?)
        }
    };
    if active_ports.is_some() && r.data_mode != DataMode::Active {
        return Err(fail(
            &["remote", "active_ports"],
            "remote.active_ports is for data_mode: active; passive mode opens no local ports"
                .into(),
        ));
    }

    // The rest.
    if raw.local.as_os_str().is_empty() {
        return Err(fail(&["local"], "local is empty".into()));
    }
    let transfers = raw.transfers.unwrap_or(4);
    if !(1..=64).contains(&transfers) {
        return Err(fail(
            &["transfers"],
            format!("transfers: {transfers} is outside 1..64"),
        ));
    }
    let (watch, watch_by_polling) = match &raw.watch {
        RawWatch::Flag(b) => (*b, false),
        RawWatch::Text(t) if t.trim() == "poll" => (true, true),
        RawWatch::Text(t) => {
            return Err(fail(
                &["watch"],
                format!("watch: `{t}` is neither true, false nor poll"),
            ))
        }
    };
    if watch && raw.direction == Direction::Pull {
        return Err(fail(
            &["watch"],
            "watch: true watches the local folder, which only makes sense for direction: push; pull jobs use poll".into(),
        ));
    }
    let filter = PathFilter::new(
        &raw.include.map(PatternList::into_vec).unwrap_or_default(),
        &raw.exclude.map(PatternList::into_vec).unwrap_or_default(),
    )
    .map_err(|e| fail(&["include"], e))?;
    let schedule = match &raw.schedule {
        Some(expr) => Some(Schedule::parse(expr).map_err(|e| fail(&["schedule"], e))?),
        None => None,
    };
    let timezone = match &raw.timezone {
        Some(name) => Some(chrono_tz::Tz::from_str(name.trim()).map_err(|_| {
            fail(
                &["timezone"],
                format!("timezone `{name}` is not a known time zone (expected a name like Europe/Amsterdam)"),
            )
        })?),
        None => None,
    };
    let debounce = match &raw.debounce {
        Some(d) => parse_duration("debounce", d).map_err(|e| fail(&["debounce"], e))?,
        None => Duration::from_secs(2),
    };
    let poll = match &raw.poll {
        Some(d) => Some(parse_duration("poll", d).map_err(|e| fail(&["poll"], e))?),
        None => None,
    };
    let max_delete = match raw.max_delete {
        None => None,
        Some(RawMaxDelete::Count(n)) => Some(MaxDelete::Count(n)),
        Some(RawMaxDelete::Text(t)) => {
            Some(parse_max_delete(&t).map_err(|e| fail(&["max_delete"], e))?)
        }
    };
    let retries = match raw.retries {
        None => RetryPolicy::default(),
        Some(RawRetries::Attempts(attempts)) => RetryPolicy {
            attempts,
            ..RetryPolicy::default()
        },
        Some(RawRetries::Full(r)) => RetryPolicy {
            attempts: r.attempts.unwrap_or(RetryPolicy::default().attempts),
            max_delay: match &r.max_delay {
                Some(d) => parse_duration("retries.max_delay", d)
                    .map_err(|e| fail(&["retries", "max_delay"], e))?,
                None => RetryPolicy::default().max_delay,
            },
        },
    };
    if !(1..=100).contains(&retries.attempts) {
        return Err(fail(
            &["retries"],
            format!("retries: {} attempts is outside 1..100", retries.attempts),
        ));
    }
    let upload = match raw.upload {
        None => UploadOptions::default(),
        Some(u) => {
            let verify = match u.verify.as_deref() {
                None | Some("size") => true,
                Some("none") => false,
                Some(other) => {
                    return Err(fail(
                        &["upload", "verify"],
                        format!("upload.verify: `{other}` is not `size` or `none`"),
                    ))
                }
            };
            UploadOptions {
                temp_name: u.temp_name.unwrap_or(true),
                verify,
            }
        }
    };
    if !upload.temp_name {
        warnings.push(
            "upload.temp_name: false: files are written under their final name, so a consumer can see a partial file, and an interrupted upload starts over".to_string(),
        );
    }
    if !upload.verify {
        warnings.push(
            "upload.verify: none: the size the server stored is not checked before a file counts as sent".to_string(),
        );
    }
    if poll.is_some_and(|d| d < Duration::from_secs(1)) {
        return Err(fail(
            &["poll"],
            "poll: the interval must be at least 1s".into(),
        ));
    }
    if !(DEBOUNCE_RANGE.0..=DEBOUNCE_RANGE.1).contains(&debounce) {
        return Err(fail(
            &["debounce"],
            format!(
                "debounce: {} is outside 100ms..1h",
                humantime::format_duration(debounce)
            ),
        ));
    }
    if raw.catch_up && schedule.is_none() {
        return Err(fail(
            &["catch_up"],
            "catch_up: true catches up missed scheduled times, but the job has no schedule".into(),
        ));
    }
    let watch_poll = watch_by_polling.then(|| poll.unwrap_or(DEFAULT_WATCH_POLL));

    Ok(Job {
        name,
        file: file.to_path_buf(),
        local: resolve(&raw.local),
        remote: Remote {
            host: r.host.trim().to_string(),
            port,
            security: r.security,
            path,
            user: r.user,
            password,
            tls,
            timeout,
            listing: r.listing,
            list_time_offset,
            passive_address: r.passive_address,
            data_mode: r.data_mode,
            active_ports,
        },
        direction: raw.direction,
        mode: raw.mode,
        schedule,
        timezone,
        watch,
        watch_poll,
        debounce,
        poll,
        catch_up: raw.catch_up,
        filter,
        transfers: usize::from(transfers),
        max_delete,
        retries,
        upload,
        warnings,
    })
}

/// Loads every `*.yaml`/`*.yml` file in `dir`, in name order; stops at the first bad one.
pub fn load_jobs(dir: &Path) -> Result<Vec<Job>, ConfigError> {
    let mut files = job_files(dir).map_err(|e| ConfigError {
        file: dir.to_path_buf(),
        line: 1,
        column: 1,
        reason: e,
    })?;
    files.sort();
    let mut jobs: Vec<Job> = Vec::new();
    for f in files {
        let job = load_job(&f)?;
        if let Some(other) = jobs.iter().find(|j| j.name == job.name) {
            return Err(ConfigError {
                file: f.clone(),
                line: 1,
                column: 1,
                reason: format!(
                    "job `{}` is also defined by {}",
                    job.name,
                    other.file.display()
                ),
            });
        }
        jobs.push(job);
    }
    Ok(jobs)
}

/// Finds the job file for `name` in `dir`.
pub fn find_job(dir: &Path, name: &str) -> Result<Job, ConfigError> {
    for ext in ["yaml", "yml"] {
        let f = dir.join(format!("{name}.{ext}"));
        if f.exists() {
            return load_job(&f);
        }
    }
    Err(ConfigError {
        file: dir.join(format!("{name}.yaml")),
        line: 1,
        column: 1,
        reason: format!("no job named `{name}` in {}", dir.display()),
    })
}

fn job_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("cannot read the jobs directory: {e}"))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| format!("cannot read the jobs directory: {e}"))?;
        let p = entry.path();
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if (ext == "yaml" || ext == "yml") && p.is_file() {
            out.push(p);
        }
    }
    Ok(out)
}

/// serde_yaml sometimes appends " at line L column C"; the location is printed in front instead.
fn one_line(msg: &str) -> String {
    let first = msg.lines().next().unwrap_or(msg);
    match first.find(" at line ") {
        Some(i) => first[..i].to_string(),
        None => first.to_string(),
    }
}

/// Finds the line and column of a nested key (`["remote", "tls", "ca_file"]`) in YAML text, for
/// errors found after parsing. Falls back to the deepest key found, or 1:1.
fn locate(text: &str, keys: &[&str]) -> (usize, usize) {
    let mut found = (1, 1);
    let mut start = 0usize;
    let mut min_indent = 0usize;
    let lines: Vec<&str> = text.lines().collect();
    'keys: for key in keys {
        for (i, line) in lines.iter().enumerate().skip(start) {
            let body = line.trim_start();
            let indent = line.len() - body.len();
            if i > start && indent < min_indent && !body.is_empty() && !body.starts_with('#') {
                break;
            }
            if body
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
            {
                found = (i + 1, indent + 1);
                start = i + 1;
                min_indent = indent + 1;
                continue 'keys;
            }
        }
        break;
    }
    found
}

/// Parses an offset from the job (`+02:00`, `-0530`, `UTC`, `0`) into seconds east of UTC.
pub(crate) fn parse_offset(text: &str) -> Result<i64, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("utc") || t.eq_ignore_ascii_case("z") || t == "0" {
        return Ok(0);
    }
    let bad = || format!("`{t}` is not an offset like +02:00, -05:30 or UTC");
    let (sign, rest) = match t.as_bytes().first() {
        Some(b'+') => (1, &t[1..]),
        Some(b'-') => (-1, &t[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = match rest.split_once(':') {
        Some((h, m)) => (h, m),
        None if rest.len() == 4 => rest.split_at(2),
        None => (rest, "0"),
    };
    let h: i64 = h.parse().map_err(|_| bad())?;
    let m: i64 = m.parse().map_err(|_| bad())?;
    if h > 14 || m > 59 {
        return Err(bad());
    }
    Ok(sign * (h * 3600 + m * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Job, ConfigError> {
        parse_job(Path::new("/etc/jobs/acme.yaml"), text)
    }

    const GOOD: &str = "local: /srv/out\nremote:\n  host: ftp.example\n  user: u\n  password: p\n";

    #[test]
    fn offsets_parse_from_the_job() {
        assert_eq!(parse_offset("UTC"), Ok(0));
        assert_eq!(parse_offset("+02:00"), Ok(7200));
        assert_eq!(parse_offset("-05:30"), Ok(-19800));
        assert_eq!(parse_offset("+0545"), Ok(20700));
        assert_eq!(parse_offset("+3"), Ok(10800));
        assert!(parse_offset("Europe/Berlin").is_err());
        assert!(parse_offset("+15:00").is_err());
    }

    #[test]
    fn minimal_job_gets_defaults() {
        let job = parse(GOOD).unwrap();
        assert_eq!(job.name, "acme");
        assert_eq!(job.remote.port, 21);
        assert_eq!(job.remote.security, Security::Explicit);
        assert_eq!(job.direction, Direction::Push);
        assert_eq!(job.mode, SyncMode::Mirror);
        assert_eq!(job.transfers, 4);
        assert_eq!(job.remote.path, "/");
        assert_eq!(job.warnings.len(), 1, "inline password warns");
    }

    #[test]
    fn unknown_key_is_reported_with_position() {
        let e = parse(&format!("{GOOD}colour: blue\n")).unwrap_err();
        assert_eq!((e.line, e.column), (6, 1), "{e}");
        assert!(e.reason.contains("colour"), "{e}");
        let e = parse("local: /x\nremote:\n  host: h\n  user: u\n  password: p\n  prot: 1\n")
            .unwrap_err();
        assert_eq!(e.line, 6, "{e}");
    }

    #[test]
    fn wrong_type_and_missing_keys() {
        let e = parse(&format!("{GOOD}transfers: many\n")).unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        let e = parse("remote:\n  host: h\n  user: u\n  password: p\n").unwrap_err();
        assert!(e.reason.contains("local"), "{e}");
        let e = parse("local: /x\nremote:\n  user: u\n  password: p\n").unwrap_err();
        assert!(e.reason.contains("host"), "{e}");
    }

    #[test]
    fn bad_cron_and_timezone_point_at_the_value() {
        let e = parse(&format!("{GOOD}schedule: \"61 * * * *\"\n")).unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        assert!(e.to_string().starts_with("/etc/jobs/acme.yaml:6:"), "{e}");
        let e = parse(&format!("{GOOD}schedule: \"* * * *\"\n")).unwrap_err();
        assert!(e.reason.contains("5"), "{e}");
        let e = parse(&format!("{GOOD}timezone: Mars/Olympus\n")).unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        assert!(parse(&format!(
            "{GOOD}schedule: \"*/15 * * * 1-5\"\ntimezone: Europe/Amsterdam\n"
        ))
        .is_ok());
        assert!(parse(&format!("{GOOD}schedule: \"@daily\"\n")).is_ok());
    }

    #[test]
    fn unreadable_password_file_names_the_key() {
        let text = "local: /x\nremote:\n  host: h\n  user: u\n  password_file: /nonexistent/pw\n";
        let e = parse(text).unwrap_err();
        assert_eq!((e.line, e.column), (5, 3), "{e}");
    }

    #[test]
    fn password_env_missing_is_an_error_and_never_printed() {
        std::env::set_var("FERRYSYNC_TEST_PW_SET", "hunter2-secret");
        let text =
            "local: /x\nremote:\n  host: h\n  user: u\n  password_env: FERRYSYNC_TEST_PW_SET\n";
        let job = parse(text).unwrap();
        assert_eq!(job.remote.password.expose(), "hunter2-secret");
        assert!(!format!("{job:?}").contains("hunter2"));
        let e = parse(&text.replace("_SET", "_UNSET_X")).unwrap_err();
        assert_eq!(e.line, 5);
    }

    #[test]
    fn plaintext_needs_opt_in() {
        let text = "local: /x\nremote:\n  host: h\n  user: u\n  password: p\n  security: none\n";
        let e = parse(text).unwrap_err();
        assert!(e.reason.contains("allow_plaintext"), "{e}");
        assert!(parse(&format!("{text}  allow_plaintext: true\n")).is_ok());
    }

    #[test]
    fn implicit_defaults_to_990_and_pins_parse() {
        let text = format!(
            "local: /x\nremote:\n  host: h\n  user: u\n  password: p\n  security: implicit\n  tls:\n    pin_sha256: \"{}\"\n",
            ["ab"; 32].join(":")
        );
        let job = parse(&text).unwrap();
        assert_eq!(job.remote.port, 990);
        assert_eq!(job.remote.tls.pins, vec![Fingerprint([0xab; 32])]);
        let e = parse(&text.replace("ab:ab:", "zz:")).unwrap_err();
        assert_eq!(e.line, 8, "{e}");
    }

    #[test]
    fn retries_forms_and_backoff() {
        assert_eq!(parse(GOOD).unwrap().retries, RetryPolicy::default());
        let job = parse(&format!("{GOOD}retries: 2\n")).unwrap();
        assert_eq!(job.retries.attempts, 2);
        let job = parse(&format!("{GOOD}retries:\n  attempts: 8\n  max_delay: 5s\n")).unwrap();
        assert_eq!(
            job.retries,
            RetryPolicy {
                attempts: 8,
                max_delay: Duration::from_secs(5)
            }
        );
        assert!(job.retries.delay(10) <= Duration::from_millis(6250));
        assert!(job.retries.delay(0) >= Duration::from_millis(750));
        assert!(parse(&format!("{GOOD}retries: 0\n")).is_err());
        assert!(parse(&format!("{GOOD}retries:\n  tries: 3\n")).is_err());
    }

    #[test]
    fn tls_max_version() {
        let text = "local: /x\nremote:\n  host: h\n  user: u\n  password: p\n  tls:\n    max_version: \"1.2\"\n";
        assert!(parse(text).unwrap().remote.tls.tls12_only);
        assert!(
            !parse(&text.replace("1.2", "1.3"))
                .unwrap()
                .remote
                .tls
                .tls12_only
        );
        let e = parse(&text.replace("1.2", "1.1")).unwrap_err();
        assert_eq!(e.line, 7, "{e}");
    }

    #[test]
    fn listing_and_list_time_offset() {
        let job = parse(GOOD).unwrap();
        assert_eq!(job.remote.listing, Listing::Auto);
        assert_eq!(job.remote.list_time_offset, ListTimeOffset::Auto);
        let text = format!("{GOOD}  listing: list\n  list_time_offset: \"+05:30\"\n");
        let job = parse(&text).unwrap();
        assert_eq!(job.remote.listing, Listing::List);
        assert_eq!(job.remote.list_time_offset, ListTimeOffset::Fixed(19800));
        let e = parse(&text.replace("+05:30", "Europe/Berlin")).unwrap_err();
        assert_eq!((e.line, e.column), (7, 3), "{e}");
        assert!(e.to_string().contains("list_time_offset"), "{e}");
        let e = parse(&text.replace("listing: list", "listing: nlst")).unwrap_err();
        assert_eq!(e.line, 6, "{e}");
    }

    #[test]
    fn passive_address_data_mode_and_active_ports() {
        let job = parse(GOOD).unwrap();
        assert_eq!(job.remote.passive_address, PassiveAddress::Auto);
        assert_eq!(job.remote.data_mode, DataMode::Passive);
        assert_eq!(job.remote.active_ports, None);
        let job = parse(&format!("{GOOD}  passive_address: control\n")).unwrap();
        assert_eq!(job.remote.passive_address, PassiveAddress::Control);
        let job = parse(&format!("{GOOD}  passive_address: server\n")).unwrap();
        assert_eq!(job.remote.passive_address, PassiveAddress::Server);
        let e = parse(&format!("{GOOD}  passive_address: nat\n")).unwrap_err();
        assert_eq!((e.line, e.column), (6, 20), "{e}");
        assert!(e.reason.contains("auto"), "{e}");

        let active = format!("{GOOD}  data_mode: active\n");
        assert_eq!(parse(&active).unwrap().remote.data_mode, DataMode::Active);
        let e = parse(&format!("{GOOD}  data_mode: port\n")).unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        let job = parse(&format!("{active}  active_ports: 50000-50100\n")).unwrap();
        assert_eq!(job.remote.active_ports, Some(50000..=50100));
        let job = parse(&format!("{active}  active_ports: 50007\n")).unwrap();
        assert_eq!(job.remote.active_ports, Some(50007..=50007));
        for bad in ["50100-50000", "0-10", "50000-70000", "ports", "1-2-3"] {
            let e = parse(&format!("{active}  active_ports: {bad}\n")).unwrap_err();
            assert_eq!((e.line, e.column), (7, 3), "{bad}: {e}");
            assert!(e.reason.contains("active_ports"), "{bad}: {e}");
        }
        let e = parse(&format!("{GOOD}  active_ports: 50000-50100\n")).unwrap_err();
        assert_eq!((e.line, e.column), (6, 3), "{e}");
        assert!(e.reason.contains("data_mode: active"), "{e}");
    }

    #[test]
    fn max_delete_forms() {
        let job = parse(&format!("{GOOD}max_delete: 25%\n")).unwrap();
        assert_eq!(job.max_delete, Some(MaxDelete::Percent(25.0)));
        assert_eq!(job.max_delete.unwrap().limit(12), 3);
        let job = parse(&format!("{GOOD}max_delete: 10\n")).unwrap();
        assert_eq!(job.max_delete, Some(MaxDelete::Count(10)));
        assert!(parse(&format!("{GOOD}max_delete: lots\n")).is_err());
        assert!(parse(&format!("{GOOD}max_delete: 150%\n")).is_err());
    }

    #[test]
    fn filters_match_relative_paths() {
        let f = PathFilter::new(&["**/*.csv".into()], &["**/*.tmp".into(), "skip".into()]).unwrap();
        assert!(f.includes_file("a.csv"));
        assert!(f.includes_file("x/y/a.csv"));
        assert!(!f.includes_file("a.txt"));
        assert!(f.excludes("skip"));
        assert!(f.excludes("d/b.tmp"));
    }

    #[test]
    fn watch_forms_debounce_and_catch_up() {
        let job = parse(&format!("{GOOD}watch: true\n")).unwrap();
        assert!(job.watch && job.watch_poll.is_none());
        let job = parse(&format!("{GOOD}watch: poll\npoll: 10s\n")).unwrap();
        assert_eq!(job.watch_poll, Some(Duration::from_secs(10)));
        let job = parse(&format!("{GOOD}watch: poll\n")).unwrap();
        assert_eq!(job.watch_poll, Some(DEFAULT_WATCH_POLL));
        let e = parse(&format!("{GOOD}watch: sometimes\n")).unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        let e = parse(&format!("{GOOD}direction: pull\nwatch: poll\n")).unwrap_err();
        assert!(e.reason.contains("push"), "{e}");
        assert!(parse(&format!("{GOOD}debounce: 0s\n")).is_err());
        assert!(parse(&format!("{GOOD}debounce: 2h\n")).is_err());
        let e = parse(&format!("{GOOD}catch_up: true\n")).unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        let job = parse(&format!("{GOOD}schedule: \"@daily\"\ncatch_up: true\n")).unwrap();
        assert!(job.catch_up);
        assert!(!parse(GOOD).unwrap().catch_up);
    }

    #[test]
    fn relative_paths_are_anchored_at_the_job_file() {
        let job = parse(GOOD.replace("/srv/out", "../data").as_str()).unwrap();
        assert_eq!(job.local, PathBuf::from("/etc/jobs/../data"));
    }
}
