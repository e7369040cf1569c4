//! `ferrysync test` and `ferrysync ls`: one connection made exactly as a run makes it (the same
//! [`Session::connect`], so the same errors), and what it found out: the address, the TLS
//! version and suite, the server's certificate chain and how it was verified, whether a data
//! connection resumed the control connection's TLS session, the FEAT lines, how the data
//! connection was opened (EPSV or PASV, and where it went), and the first entries of a folder.
//! Nothing here retries: a test says what the first attempt met.

use std::net::SocketAddr;

use serde::Serialize;

use crate::config::{PassiveAddress, Remote, Security};
use crate::remote::error::FtpsError;
use crate::remote::listing::{self, ListedKind, Precision};
use crate::remote::session::Session;
use crate::remote::tls::{HandshakeFacts, TlsContext, Verification};

/// What one TLS handshake negotiated.
#[derive(Debug, Clone, Serialize)]
pub struct TlsSummary {
    /// `TLS 1.2` or `TLS 1.3`.
    pub version: String,
    pub cipher_suite: String,
    /// The handshake resumed an earlier session (on a data connection: the control
    /// connection's, which servers with `require_ssl_reuse` demand).
    pub resumed: bool,
}

/// One certificate of the chain the server sent, leaf first.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateSummary {
    pub subject: String,
    pub issuer: String,
    /// ISO 8601 UTC.
    pub not_after: String,
    /// Whole days from now to `not_after` (negative once expired).
    pub days_left: i64,
}

/// One entry of a remote folder, as its listing shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RemoteEntry {
    pub name: String,
    /// `file`, `dir` or `link`.
    pub kind: &'static str,
    pub size: u64,
    /// As listed: MLSD gives UTC to the second (`2026-12-04 04:21:54 UTC`); LIST gives the
    /// server's own zone, to the minute or only the day.
    pub modified: String,
}

/// How the listing's data connection was opened.
#[derive(Debug, Clone, Serialize)]
pub struct DataSummary {
    /// `EPSV`, `PASV` (the server refused EPSV), `EPRT` or `PORT` (active mode).
    pub command: &'static str,
    /// Passive: the address and port the server's reply named (EPSV replies carry only a port,
    /// paired with the control connection's address).
    pub announced: Option<String>,
    /// Passive: where the data connection went.
    pub connected_to: Option<String>,
    /// A PASV reply named another address than the control connection's, and the data
    /// connection went to the control connection's address instead (`passive_address: auto`).
    pub announced_address_replaced: bool,
    /// The job's `remote.passive_address` (`auto`, `control` or `server`).
    pub passive_address: &'static str,
    /// The data connection's TLS handshake.
    pub tls: Option<TlsSummary>,
}

/// A listing of one remote folder.
#[derive(Debug, Clone, Serialize)]
pub struct FolderListing {
    pub path: String,
    /// `MLSD` or `LIST`.
    pub command: &'static str,
    /// Entries other than `.` and `..`.
    pub total: usize,
    /// The first entries by name.
    pub entries: Vec<RemoteEntry>,
}

/// What `ferrysync test` found, as far as it got; `error` says where it stopped.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    /// `user@host:port`.
    pub server: String,
    /// `explicit`, `implicit` or `none`.
    pub security: &'static str,
    /// The address the control connection went to.
    pub address: Option<String>,
    /// The server's greeting, one line per line of a multi-line 220 reply.
    pub greeting: Vec<String>,
    /// How the certificate is verified: `system roots`, `tls.ca_file PATH`, `tls.pin_sha256`,
    /// `none (tls.insecure_skip_verify)`; null for plain FTP.
    pub verification: Option<String>,
    /// The control connection's TLS handshake.
    pub tls: Option<TlsSummary>,
    pub certificates: Vec<CertificateSummary>,
    pub logged_in: bool,
    /// The FEAT reply's lines.
    pub features: Vec<String>,
    pub data: Option<DataSummary>,
    pub listing: Option<FolderListing>,
    /// The error that ended the test (the same text a run gives), if any.
    pub error: Option<String>,
}

/// Connects as a run would, lists `remote.path` and reports what it met; shows the first
/// `shown` entries of the folder.
pub async fn probe(remote: &Remote, shown: usize) -> Probe {
    let mut probe = Probe {
        server: format!("{}@{}:{}", remote.user, remote.host, remote.port),
        security: match remote.security {
            Security::Explicit => "explicit",
            Security::Implicit => "implicit",
            Security::None => "none",
        },
        address: None,
        greeting: Vec::new(),
        verification: None,
        tls: None,
        certificates: Vec::new(),
        logged_in: false,
        features: Vec::new(),
        data: None,
        listing: None,
        error: None,
    };
    let tls = match TlsContext::new(&remote.tls) {
        Ok(tls) => tls,
        Err(reason) => {
            probe.error = Some(format!("{}: {reason}", probe.server));
            return probe;
        }
    };
    tls.record_handshakes();
    if remote.security != Security::None {
        probe.verification = Some(match tls.verification() {
            Verification::SystemRoots => "system roots".to_string(),
            Verification::CaFile(p) => format!("tls.ca_file {}", p.display()),
            Verification::Pin => "tls.pin_sha256".to_string(),
            Verification::None => "none (tls.insecure_skip_verify)".to_string(),
        });
    }
    let connected = Session::connect(remote, &tls).await;
    // The control handshake is known even when the login after it failed.
    let handshakes = tls.handshakes();
    if let Some(control) = handshakes.iter().find(|h| !h.data_connection) {
        probe.tls = Some(summary(control));
        probe.certificates = control
            .peer_certificates
            .iter()
            .map(|der| certificate(der, chrono::Utc::now().timestamp()))
            .collect();
    }
    let mut session = match connected {
        Ok(s) => s,
        Err(e) => {
            probe.error = Some(e.to_string());
            return probe;
        }
    };
    probe.address = Some(session.control_peer().to_string());
    probe.greeting = session
        .greeting()
        .map(|g| {
            g.lines()
                .map(|l| l.trim_end().to_string())
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default();
    probe.logged_in = true;
    probe.features = session.features.offered.clone();
    let listed = list(&mut session, &remote.path, shown).await;
    let facts = session.last_data_connection();
    let data_tls = tls
        .handshakes()
        .iter()
        .rev()
        .find(|h| h.data_connection)
        .map(summary);
    probe.data = Some(DataSummary {
        command: facts.command,
        announced: facts.announced.map(|a| a.to_string()),
        connected_to: facts.connected_to.map(|a| a.to_string()),
        announced_address_replaced: replaced(
            facts.announced,
            facts.connected_to,
            remote.passive_address,
        ),
        passive_address: match remote.passive_address {
            PassiveAddress::Auto => "auto",
            PassiveAddress::Control => "control",
            PassiveAddress::Server => "server",
        },
        tls: data_tls,
    });
    match listed {
        Ok(l) => probe.listing = Some(l),
        Err(e) => probe.error = Some(e.to_string()),
    }
    session.quit().await;
    probe
}

/// Whether the data connection went elsewhere than the reply said (`passive_address: auto`
/// replacing a PASV address).
fn replaced(
    announced: Option<SocketAddr>,
    connected_to: Option<SocketAddr>,
    policy: PassiveAddress,
) -> bool {
    match (announced, connected_to) {
        (Some(a), Some(c)) => {
            policy != PassiveAddress::Server && a.ip().to_canonical() != c.ip().to_canonical()
        }
        _ => false,
    }
}

/// Connects as a run would and lists `path` (absolute; see [`path_within`]): `ferrysync ls`.
pub async fn list_folder(remote: &Remote, path: &str) -> Result<FolderListing, FtpsError> {
    let tls = TlsContext::new(&remote.tls).map_err(|reason| FtpsError::Setup {
        server: format!("{}@{}:{}", remote.user, remote.host, remote.port),
        reason,
    })?;
    let mut session = Session::connect(remote, &tls).await?;
    let listed = list(&mut session, path, usize::MAX).await;
    session.quit().await;
    listed
}

/// Lists `path` and keeps its first `shown` entries by name.
async fn list(session: &mut Session, path: &str, shown: usize) -> Result<FolderListing, FtpsError> {
    let (lines, mlsd) = session.list_dir_if_there(path).await?;
    let mut entries: Vec<RemoteEntry> = lines
        .iter()
        .filter_map(|l| listing::parse_line(l, mlsd))
        .filter(|e| e.name != "." && e.name != "..")
        .map(|e| RemoteEntry {
            kind: match e.kind {
                ListedKind::File => "file",
                ListedKind::Dir => "dir",
                ListedKind::Symlink => "link",
            },
            modified: listed_time(e.mtime, e.precision),
            size: e.size,
            name: e.name,
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let total = entries.len();
    entries.truncate(shown);
    Ok(FolderListing {
        path: path.to_string(),
        command: if mlsd { "MLSD" } else { "LIST" },
        total,
        entries,
    })
}

/// A listed time at its precision; LIST times are the server's wall clock.
fn listed_time(ns: i64, precision: Precision) -> String {
    let Some(t) = chrono::DateTime::from_timestamp(ns.div_euclid(1_000_000_000), 0) else {
        return "-".to_string();
    };
    match precision {
        Precision::Exact => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        Precision::Minute => t.format("%Y-%m-%d %H:%M").to_string(),
        Precision::Day => t.format("%Y-%m-%d").to_string(),
    }
}

fn summary(h: &HandshakeFacts) -> TlsSummary {
    TlsSummary {
        version: h.version.clone(),
        cipher_suite: h.cipher_suite.clone(),
        resumed: h.resumed,
    }
}

/// Subject, issuer and expiry of a DER certificate; `now` in Unix seconds.
fn certificate(der: &[u8], now: i64) -> CertificateSummary {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => {
            let not_after = cert.validity().not_after.timestamp();
            CertificateSummary {
                subject: cert.subject().to_string(),
                issuer: cert.issuer().to_string(),
                not_after: chrono::DateTime::from_timestamp(not_after, 0)
                    .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                    .unwrap_or_else(|| not_after.to_string()),
                days_left: (not_after - now).div_euclid(86_400),
            }
        }
        Err(e) => CertificateSummary {
            subject: format!("(unreadable certificate: {e})"),
            issuer: String::new(),
            not_after: String::new(),
            days_left: 0,
        },
    }
}

/// The absolute remote path of `rel` below the job's remote `root`: `.` and `..` are resolved,
/// a leading `/` means the root itself, and a path that would leave the root (or holds a
/// control character, which would end the FTP command) is refused.
pub fn path_within(root: &str, rel: &str) -> Result<String, String> {
    if rel.chars().any(char::is_control) {
        return Err(format!(
            "{rel:?}: a remote path may not hold control characters"
        ));
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!(
                        "{rel}: leaves the job's remote folder {root}; paths are relative to it"
                    ));
                }
            }
            p => parts.push(p),
        }
    }
    let base = root.trim_end_matches('/');
    if parts.is_empty() {
        return Ok(if base.is_empty() {
            "/".into()
        } else {
            root.into()
        });
    }
    Ok(format!("{base}/{}", parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_below_the_remote_root() {
        assert_eq!(path_within("/in", "").unwrap(), "/in");
        assert_eq!(path_within("/in", "/").unwrap(), "/in");
        assert_eq!(path_within("/in", "a/./b/").unwrap(), "/in/a/b");
        assert_eq!(path_within("/in", "a/../b").unwrap(), "/in/b");
        assert_eq!(path_within("/", "a").unwrap(), "/a");
        assert_eq!(path_within("/", "..").map_err(|_| ()), Err(()));
        assert!(path_within("/in", "../out").is_err());
        assert!(path_within("/in", "a/../../out").is_err());
        assert!(path_within("/in", "a\r\nDELE x").is_err());
    }

    #[test]
    fn a_certificate_shows_subject_issuer_and_days_left() {
        let mut params = rcgen::CertificateParams::new(vec!["ftp.example".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ftp.example");
        params.not_after = rcgen::date_time_ymd(2027, 1, 31);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let now = chrono::DateTime::parse_from_rfc3339("2027-01-01T12:00:00Z")
            .unwrap()
            .timestamp();
        let c = certificate(cert.der(), now);
        assert_eq!(c.subject, "CN=ftp.example");
        assert_eq!(c.issuer, "CN=ftp.example");
        assert_eq!(c.not_after, "2027-01-31T00:00:00Z");
        assert_eq!(c.days_left, 29);
    }

    #[test]
    fn only_a_pasv_address_that_was_not_followed_counts_as_replaced() {
        let a = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        let nat = a("127.0.0.200:40000");
        let peer = a("127.0.0.1:40000");
        assert!(replaced(nat, peer, PassiveAddress::Auto));
        assert!(!replaced(peer, peer, PassiveAddress::Auto));
        assert!(!replaced(nat, nat, PassiveAddress::Server));
        assert!(!replaced(nat, None, PassiveAddress::Auto));
    }
}
