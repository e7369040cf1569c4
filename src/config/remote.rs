//! The `remote:` section: the server, how to log in, TLS, and the data connections.

use std::fmt;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use super::choices::{DataMode, Listing, PassiveAddress, Security};
use super::raw::{PatternList, RawPorts, RawRemote, RawTls};
use super::{parse_duration, ConfigError, Ctx};

/// A password or other credential. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub(crate) fn new(value: String) -> Secret {
        Secret(value)
    }

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

/// `remote.list_time_offset`: the zone of LIST times (MLSD and MDTM times are UTC by RFC 3659).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListTimeOffset {
    /// Learnt in every run from one file's MDTM against its LIST time (so a daylight-saving
    /// change on the server is followed); UTC where the server has no MDTM.
    Auto,
    /// Seconds east of UTC, from the job.
    Fixed(i64),
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
    /// How much of one directory's listing is read before the run gives up on it.
    pub listing_caps: ListingCaps,
}

/// Caps on one directory's listing (`remote.max_listing_entries`, `remote.max_listing_line`,
/// `remote.max_listing_bytes`). The listing is untrusted input: a server that streams a LIST
/// or MLSD data connection without end (or one line without a newline) must not drive the
/// process out of memory, so it is read line by line and refused at the first cap it passes.
/// The lines kept are at most `max_entries` of at most `max_line` bytes, and `max_bytes`
/// bounds their sum (and the empty lines, which are skipped but still read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListingCaps {
    /// Entries (non-empty lines, `.` and `..` included) of one directory.
    pub max_entries: usize,
    /// Bytes of one line, its line break not counted.
    pub max_line: usize,
    /// Bytes of one directory's listing as a whole.
    pub max_bytes: u64,
}

impl Default for ListingCaps {
    /// A million entries (far above what a real directory served over FTP holds; Pure-FTPd
    /// stops at 10,000), 8 KiB lines (a LIST or MLSD line of a 255-byte name is well under
    /// 1 KiB), 512 MiB in all (a million MLSD lines of typical length are about 150 MiB).
    fn default() -> Self {
        ListingCaps {
            max_entries: 1_000_000,
            max_line: 8 * 1024,
            max_bytes: 512 * 1024 * 1024,
        }
    }
}

impl ListingCaps {
    /// Validates the three `remote.max_listing_*` keys; what the job leaves out keeps its
    /// default. Each must be at least 1 (a cap of 0 would refuse every listing) and the line
    /// cap at least 256 bytes, so that no real listing line is refused.
    fn from_raw(
        entries: Option<u64>,
        line: Option<u64>,
        bytes: Option<u64>,
        ctx: &Ctx,
    ) -> Result<ListingCaps, ConfigError> {
        let d = ListingCaps::default();
        let cap = |v: Option<u64>, key: &str, min: u64, default: u64| match v {
            None => Ok(default),
            Some(n) if n >= min => Ok(n),
            Some(n) => Err(ctx.fail(
                &["remote", key],
                format!("remote.{key}: {n} is below the minimum of {min}"),
            )),
        };
        let usize_cap = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Ok(ListingCaps {
            max_entries: usize_cap(cap(
                entries,
                "max_listing_entries",
                1,
                d.max_entries as u64,
            )?),
            max_line: usize_cap(cap(line, "max_listing_line", 256, d.max_line as u64)?),
            max_bytes: cap(bytes, "max_listing_bytes", 1024, d.max_bytes)?,
        })
    }
}

impl Remote {
    /// Validates `remote:`: who and where, then the password, TLS, and the connections, in
    /// that order; the first failure is the one reported.
    pub(super) fn from_raw(r: RawRemote, ctx: &mut Ctx) -> Result<Remote, ConfigError> {
        if r.host.trim().is_empty() {
            return Err(ctx.fail(&["remote", "host"], "remote.host is empty"));
        }
        if r.user.is_empty() {
            return Err(ctx.fail(&["remote", "user"], "remote.user is empty"));
        }
        if r.security == Security::None && !r.allow_plaintext {
            return Err(ctx.fail(
                &["remote", "security"],
                "security: none sends the password and the files in clear text; set remote.allow_plaintext: true to allow it",
            ));
        }
        let path = remote_path(&r.path, ctx)?;
        let password = password(r.password_env, r.password_file, r.password, ctx)?;
        let tls = match r.tls {
            None => TlsOptions::default(),
            Some(t) => TlsOptions::from_raw(t, ctx)?,
        };
        if r.security == Security::None {
            ctx.warn("security: none: password and files travel in clear text");
        }
        let timeout = timeout(r.timeout.as_deref(), ctx)?;
        let list_time_offset = ListTimeOffset::from_raw(r.list_time_offset.as_deref(), ctx)?;
        let port = r.port.unwrap_or(match r.security {
            Security::Implicit => 990,
            _ => 21,
        });
        if port == 0 {
            return Err(ctx.fail(&["remote", "port"], "remote.port may not be 0"));
        }
        let active_ports = active_ports(r.active_ports.as_ref(), r.data_mode, ctx)?;
        let listing_caps = ListingCaps::from_raw(
            r.max_listing_entries,
            r.max_listing_line,
            r.max_listing_bytes,
            ctx,
        )?;
        Ok(Remote {
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
            listing_caps,
        })
    }
}

/// `remote.path`: absolute, without `..` or control characters; returned without a trailing
/// slash (except `/` itself).
fn remote_path(path: &str, ctx: &Ctx) -> Result<String, ConfigError> {
    if !path.starts_with('/') {
        return Err(ctx.fail(
            &["remote", "path"],
            format!("remote.path `{path}` must be absolute (start with /)"),
        ));
    }
    if path.split('/').any(|c| c == "..") || path.contains(['\r', '\n', '\0']) {
        return Err(ctx.fail(
            &["remote", "path"],
            format!(
                "remote.path `{}` may not contain `..` or control characters",
                path.escape_debug()
            ),
        ));
    }
    let trimmed = path.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    })
}

/// Reads the password from exactly one of `password_env`, `password_file` and `password`
/// (the last with a warning: it sits in the job file).
fn password(
    env: Option<String>,
    file: Option<PathBuf>,
    inline: Option<String>,
    ctx: &mut Ctx,
) -> Result<Secret, ConfigError> {
    let sources = [env.is_some(), file.is_some(), inline.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if sources > 1 {
        return Err(ctx.fail(
            &["remote", "password_env"],
            "give only one of remote.password_env, remote.password_file and remote.password",
        ));
    }
    if let Some(var) = env {
        std::env::var(&var).map(Secret).map_err(|_| {
            ctx.fail(
                &["remote", "password_env"],
                format!("remote.password_env: the environment variable {var} is not set"),
            )
        })
    } else if let Some(pf) = file {
        let pf = ctx.resolve(&pf);
        match std::fs::read_to_string(&pf) {
            // A trailing newline is an editor's, not part of the password.
            Ok(v) => Ok(Secret(v.trim_end_matches(['\n', '\r']).to_string())),
            Err(e) => Err(ctx.fail(
                &["remote", "password_file"],
                format!("remote.password_file {}: cannot read: {e}", pf.display()),
            )),
        }
    } else if let Some(p) = inline {
        ctx.warn("the password is written in the job file; prefer remote.password_env or remote.password_file");
        Ok(Secret(p))
    } else {
        Err(ctx.fail(
            &["remote"],
            "remote needs a password: set remote.password_env or remote.password_file",
        ))
    }
}

/// `remote.timeout`: 60s by default, at least 1s.
fn timeout(raw: Option<&str>, ctx: &Ctx) -> Result<Duration, ConfigError> {
    let timeout = match raw {
        Some(t) => {
            parse_duration("remote.timeout", t).map_err(|e| ctx.fail(&["remote", "timeout"], e))?
        }
        None => Duration::from_secs(60),
    };
    if timeout < Duration::from_secs(1) {
        return Err(ctx.fail(&["remote", "timeout"], "remote.timeout must be at least 1s"));
    }
    Ok(timeout)
}

impl ListTimeOffset {
    /// `remote.list_time_offset`: `auto` (the default) or a fixed offset.
    fn from_raw(raw: Option<&str>, ctx: &Ctx) -> Result<ListTimeOffset, ConfigError> {
        match raw.map(str::trim) {
            None | Some("auto") => Ok(ListTimeOffset::Auto),
            Some(t) => parse_offset(t).map(ListTimeOffset::Fixed).map_err(|e| {
                ctx.fail(
                    &["remote", "list_time_offset"],
                    format!("remote.list_time_offset: {e} (or auto)"),
                )
            }),
        }
    }
}

/// `remote.active_ports`, which only active mode uses.
fn active_ports(
    raw: Option<&RawPorts>,
    data_mode: DataMode,
    ctx: &Ctx,
) -> Result<Option<RangeInclusive<u16>>, ConfigError> {
    let range = match raw {
        None => return Ok(None),
        Some(RawPorts::One(p)) => parse_port_range(&p.to_string()),
        Some(RawPorts::Range(s)) => parse_port_range(s),
    }
    .map_err(|e| ctx.fail(&["remote", "active_ports"], e))?;
    if data_mode != DataMode::Active {
        return Err(ctx.fail(
            &["remote", "active_ports"],
            "remote.active_ports is for data_mode: active; passive mode opens no local ports",
        ));
    }
    Ok(Some(range))
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

impl TlsOptions {
    /// Validates `remote.tls:`; the files it names must exist.
    pub(super) fn from_raw(t: RawTls, ctx: &mut Ctx) -> Result<TlsOptions, ConfigError> {
        let tls12_only = match t.max_version.as_deref().map(str::trim) {
            None | Some("1.3") => false,
            Some("1.2") => true,
            Some(other) => {
                return Err(ctx.fail(
                    &["remote", "tls", "max_version"],
                    format!("remote.tls.max_version: `{other}` is not \"1.2\" or \"1.3\""),
                ))
            }
        };
        let opts = TlsOptions {
            tls12_only,
            ca_file: tls_file(t.ca_file, "ca_file", ctx)?,
            pins: t
                .pin_sha256
                .map(PatternList::into_vec)
                .unwrap_or_default()
                .iter()
                .map(|p| Fingerprint::parse(p))
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    ctx.fail(&["remote", "tls", "pin_sha256"], format!("remote.tls.{e}"))
                })?,
            insecure_skip_verify: t.insecure_skip_verify,
            client_cert: tls_file(t.client_cert, "client_cert", ctx)?,
            client_key: tls_file(t.client_key, "client_key", ctx)?,
        };
        if opts.client_cert.is_some() != opts.client_key.is_some() {
            return Err(ctx.fail(
                &["remote", "tls"],
                "remote.tls.client_cert and remote.tls.client_key go together",
            ));
        }
        if opts.insecure_skip_verify {
            ctx.warn("remote.tls.insecure_skip_verify is true: the server's certificate is NOT checked, anyone on the path can read and change the files");
        }
        Ok(opts)
    }
}

/// A file named under `remote.tls.KEY`, made absolute; it must exist.
fn tls_file(p: Option<PathBuf>, key: &str, ctx: &Ctx) -> Result<Option<PathBuf>, ConfigError> {
    let Some(p) = p else {
        return Ok(None);
    };
    let abs = ctx.resolve(&p);
    std::fs::metadata(&abs).map_err(|e| {
        ctx.fail(
            &["remote", "tls", key],
            format!("remote.tls.{key} {}: cannot read: {e}", abs.display()),
        )
    })?;
    Ok(Some(abs))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{parse, GOOD};

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
    fn listing_caps_default_and_from_the_job() {
        assert_eq!(
            parse(GOOD).unwrap().remote.listing_caps,
            ListingCaps::default()
        );
        let text = format!(
            "{GOOD}  max_listing_entries: 50000\n  max_listing_line: 4096\n  max_listing_bytes: 1048576\n"
        );
        let caps = parse(&text).unwrap().remote.listing_caps;
        assert_eq!(
            caps,
            ListingCaps {
                max_entries: 50_000,
                max_line: 4096,
                max_bytes: 1 << 20
            }
        );
        let e = parse(&format!("{GOOD}  max_listing_entries: 0\n")).unwrap_err();
        assert_eq!((e.line, e.column), (6, 3), "{e}");
        assert!(e.reason.contains("remote.max_listing_entries"), "{e}");
        let e = parse(&format!("{GOOD}  max_listing_line: 80\n")).unwrap_err();
        assert!(e.reason.contains("minimum of 256"), "{e}");
        // Unknown keys stay errors: a misspelt cap is not silently the default.
        let e = parse(&format!("{GOOD}  max_listing_entry: 5\n")).unwrap_err();
        assert!(e.reason.contains("max_listing_entry"), "{e}");
    }
}
