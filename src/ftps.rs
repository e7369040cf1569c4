//! FTPS connections: TLS set-up and verification, login, the server's features, and the
//! commands the rest of ferrysync needs, each with a timeout and an error that names the
//! server, the command, the path and the server's reply.

use std::net::SocketAddr;
use std::time::Duration;

use suppaftp::tokio::{ImplAsyncFtpStream, TransferStream};
use suppaftp::types::FileType;
use suppaftp::{FtpError, Mode, Status};

use crate::config::{Remote, Security};
use crate::tls::{FlushingTlsStream, TlsContext};

pub type FtpStream = ImplAsyncFtpStream<FlushingTlsStream>;
pub type DataStream = TransferStream<FlushingTlsStream>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum FtpsError {
    #[error("{server}: {reason}")]
    Setup { server: String, reason: String },
    #[error("cannot connect to {server}: {source}")]
    Connect {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{server}: TLS handshake failed: {reason}{hint}")]
    Tls {
        server: String,
        reason: String,
        hint: &'static str,
    },
    #[error("{server} does not offer FTPS: AUTH TLS was answered `{reply}`; ferrysync never falls back to plain FTP (use security: implicit if the server speaks TLS from the first byte)")]
    NoTls { server: String, reply: String },
    #[error("{server}: login as `{user}` refused: {reply}")]
    Login {
        server: String,
        user: String,
        reply: String,
    },
    #[error("{server}: {command} {path}: server replied `{reply}`")]
    Reply {
        server: String,
        command: &'static str,
        path: String,
        code: u32,
        reply: String,
    },
    #[error("{server}: {command} {path}: timed out after {secs}s")]
    Timeout {
        server: String,
        command: &'static str,
        path: String,
        secs: u64,
    },
    #[error("{server}: {command} {path}: {reason}")]
    Connection {
        server: String,
        command: &'static str,
        path: String,
        reason: String,
    },
}

impl FtpsError {
    /// Whether trying again later may succeed: connections refused, reset or timed out, and
    /// 4xx replies (421 too many connections, 425/426 data connection trouble, 450/451).
    /// Login, certificate and 5xx failures are permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            FtpsError::Connect { .. }
            | FtpsError::Connection { .. }
            | FtpsError::Timeout { .. } => true,
            FtpsError::Reply { code, .. } => (400..500).contains(code),
            FtpsError::Setup { .. }
            | FtpsError::Tls { .. }
            | FtpsError::NoTls { .. }
            | FtpsError::Login { .. } => false,
        }
    }

    /// The server's reply code, if the error is a reply.
    pub fn code(&self) -> Option<u32> {
        match self {
            FtpsError::Reply { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The text of a server reply, with its code in front.
fn reply_text(r: &suppaftp::types::Response) -> String {
    let body = String::from_utf8_lossy(&r.body);
    let body = body.trim();
    let code = r.status.code().to_string();
    if body.starts_with(&code) {
        body.to_string()
    } else {
        format!("{code} {body}")
    }
}

/// What the server said it can do in FEAT.
#[derive(Debug, Clone, Default)]
pub struct Features {
    pub mlsd: bool,
    pub mfmt: bool,
    pub size: bool,
    pub utf8: bool,
    /// How to ask the server for the SHA-256 of a file, if it can tell.
    pub sha256: Option<Sha256Command>,
}

/// The server-side hash commands ferrysync can check a file with (SHA-256 only: BLAKE3 is
/// not offered by servers, and MD5 and CRC32 are too weak to prove a resumed file whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sha256Command {
    /// `HASH` (draft-bryan-ftpext-hash) with SHA-256 among its algorithms.
    Hash,
    /// `XSHA256 path` (ProFTPD mod_digest, some appliances).
    XSha256,
}

impl Features {
    /// Reads FEAT's answer: feature name -> optional parameters.
    fn from_feat(f: &std::collections::HashMap<String, Option<String>>) -> Features {
        let get = |k: &str| {
            f.iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone().unwrap_or_default())
        };
        let sha256 =
            if get("HASH").is_some_and(|algs| algs.to_ascii_uppercase().contains("SHA-256")) {
                Some(Sha256Command::Hash)
            } else if get("XSHA256").is_some() {
                Some(Sha256Command::XSha256)
            } else {
                None
            };
        Features {
            mlsd: get("MLSD").is_some() || get("MLST").is_some(),
            mfmt: get("MFMT").is_some(),
            size: get("SIZE").is_some(),
            utf8: get("UTF8").is_some(),
            sha256,
        }
    }
}

/// The first 64-hex-digit word of a hash reply (`213 SHA-256 0-99 <hex> name`, `250 <hex>`).
fn sha256_in_reply(reply: &str) -> Option<[u8; 32]> {
    let word = reply
        .split_whitespace()
        .find(|w| w.len() == 64 && w.chars().all(|c| c.is_ascii_hexdigit()))?;
    crate::config::Fingerprint::parse(word).ok().map(|f| f.0)
}

/// Pure-FTPd ends a listing after `LimitRecursion`'s file count, 10000 by default, and says so
/// only in the final reply of the transfer (`226 Output truncated to 10000 matches`), which
/// suppaftp does not hand back. It is known by its greeting (`Welcome to Pure-FTPd`).
const PUREFTPD_DEFAULT_LIST_LIMIT: usize = 10_000;

/// The number of entries (lines, `.` and `..` included) at which this server, known by its
/// greeting, cuts a directory listing short without an error; `None` if it is not known to.
fn listing_limit(greeting: &str) -> Option<usize> {
    greeting
        .contains("Pure-FTPd")
        .then_some(PUREFTPD_DEFAULT_LIST_LIMIT)
}

/// Refuses a listing that has reached the server's limit: it is probably cut short, and the
/// missing entries would look deleted to the plan (a pull mirror would delete the local
/// copies). A directory of exactly the limit's size is refused too: the listing cannot tell.
fn check_listing_complete(
    server: &str,
    command: &'static str,
    dir: &str,
    lines: usize,
    limit: Option<usize>,
) -> Result<(), FtpsError> {
    match limit {
        Some(limit) if lines >= limit => Err(FtpsError::Setup {
            server: server.to_string(),
            reason: format!(
                "{command} {dir}: the listing stopped at {lines} entries, the limit at which \
                 Pure-FTPd cuts listings short (LimitRecursion, 10000 by default), so it is \
                 probably incomplete and nothing was changed; ask the server's administrator to \
                 raise LimitRecursion above the number of entries in the directory, or keep \
                 fewer than {limit} entries in one directory"
            ),
        }),
        _ => Ok(()),
    }
}

/// One logged-in connection.
pub struct Session {
    ftp: FtpStream,
    pub features: Features,
    /// `user@host:port`, for errors and logs.
    pub server: String,
    /// How long one command, or one read or write on a data connection, may take.
    pub timeout: Duration,
    /// See [`listing_limit`].
    listing_limit: Option<usize>,
}

fn timeout_err(server: &str, command: &'static str, path: &str, d: Duration) -> FtpsError {
    FtpsError::Timeout {
        server: server.to_string(),
        command,
        path: path.to_string(),
        secs: d.as_secs(),
    }
}

impl Session {
    /// Connects, secures, logs in and prepares a connection for binary transfers.
    pub async fn connect(remote: &Remote, tls: &TlsContext) -> Result<Session, FtpsError> {
        let op = remote.timeout;
        let server = format!("{}@{}:{}", remote.user, remote.host, remote.port);
        let setup = |reason: String| FtpsError::Setup {
            server: server.clone(),
            reason,
        };
        let addr: SocketAddr = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::lookup_host((remote.host.as_str(), remote.port)),
        )
        .await
        .map_err(|_| timeout_err(&server, "resolve", &remote.host, CONNECT_TIMEOUT))?
        .map_err(|source| FtpsError::Connect {
            server: server.clone(),
            source,
        })?
        .next()
        .ok_or_else(|| setup(format!("{} resolves to no address", remote.host)))?;
        let tls_error = |reason: String| FtpsError::Tls {
            server: server.clone(),
            hint: if reason.contains("UnknownIssuer") || reason.contains("NotValidForName") {
                " (set remote.tls.ca_file to the CA that signed the server's certificate, or pin it with remote.tls.pin_sha256)"
            } else if reason.contains("CertificateRequired") {
                " (the server requires a client certificate: set remote.tls.client_cert and remote.tls.client_key)"
            } else if reason.contains("BadCertificate") || reason.contains("UnknownCA") {
                " (the server refused the client certificate)"
            } else {
                ""
            },
            reason,
        };
        let connect_error = |e: FtpError| match e {
            // With TLS 1.3 the server's verdict on a client certificate arrives as an alert
            // after the client's side of the handshake: still a TLS failure, not a network one.
            FtpError::ConnectionError(source) if source.to_string().contains("fatal alert") => {
                tls_error(source.to_string())
            }
            FtpError::ConnectionError(source) => FtpsError::Connect {
                server: server.clone(),
                source,
            },
            // A greeting other than 220, such as 421 "too many connections".
            FtpError::UnexpectedResponse(r) => FtpsError::Reply {
                server: server.clone(),
                command: "connect",
                path: String::new(),
                code: r.status.code(),
                reply: reply_text(&r),
            },
            FtpError::SecureError(reason) => tls_error(reason),
            other => setup(other.to_string()),
        };

        let mut ftp = match remote.security {
            Security::Explicit | Security::None => {
                let tcp =
                    tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
                        .await
                        .map_err(|_| {
                            timeout_err(&server, "connect", &addr.to_string(), CONNECT_TIMEOUT)
                        })?
                        .map_err(|source| FtpsError::Connect {
                            server: server.clone(),
                            source,
                        })?;
                let plain = tokio::time::timeout(op, FtpStream::connect_with_stream(tcp))
                    .await
                    .map_err(|_| timeout_err(&server, "greeting", "", op))?
                    .map_err(connect_error)?;
                if remote.security == Security::None {
                    plain
                } else {
                    let connector = tls.connector().map_err(setup)?;
                    tokio::time::timeout(op, plain.into_secure(connector, &remote.host))
                        .await
                        .map_err(|_| timeout_err(&server, "AUTH TLS", "", op))?
                        .map_err(|e| match e {
                            FtpError::UnexpectedResponse(r) => FtpsError::NoTls {
                                server: server.clone(),
                                reply: reply_text(&r),
                            },
                            other => connect_error(other),
                        })?
                }
            }
            Security::Implicit => {
                let connector = tls.connector().map_err(setup)?;
                let mut ftp = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    FtpStream::connect_secure_implicit(addr, connector, &remote.host),
                )
                .await
                .map_err(|_| timeout_err(&server, "connect", &addr.to_string(), CONNECT_TIMEOUT))?
                .map_err(connect_error)?;
                // suppaftp does not protect the data channel in implicit mode by itself.
                for cmd in ["PBSZ 0", "PROT P"] {
                    tokio::time::timeout(op, ftp.custom_command(cmd, &[Status::CommandOk]))
                        .await
                        .map_err(|_| timeout_err(&server, "PROT", "", op))?
                        .map_err(&connect_error)?;
                }
                ftp
            }
        };

        tokio::time::timeout(
            op,
            ftp.login(remote.user.as_str(), remote.password.expose()),
        )
        .await
        .map_err(|_| timeout_err(&server, "login", "", op))?
        .map_err(|e| match e {
            FtpError::UnexpectedResponse(r) => FtpsError::Login {
                server: server.clone(),
                user: remote.user.clone(),
                reply: reply_text(&r),
            },
            other => connect_error(other),
        })?;

        {
            // A long data transfer leaves the control connection idle for minutes, and NAT
            // gateways and firewalls drop idle connections. TCP keepalives keep it open without
            // a NOOP, whose reply some servers (vsftpd) would only send after the transfer,
            // where it would be taken for the transfer's own reply. No Nagle delay on commands.
            let control = ftp.get_ref().await;
            let sock = socket2::SockRef::from(&*control);
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(60))
                .with_interval(Duration::from_secs(15));
            if let Err(e) = sock.set_tcp_keepalive(&keepalive) {
                tracing::debug!("cannot enable TCP keepalive: {e}");
            }
            let _ = control.set_nodelay(true);
        }
        let features = match tokio::time::timeout(op, ftp.feat()).await {
            Ok(Ok(f)) => Features::from_feat(&f),
            _ => Features::default(),
        };
        if features.utf8 {
            // Where offered, ask for UTF-8 names; servers that answer 5xx keep their default.
            let _ = tokio::time::timeout(op, ftp.opts("UTF8", Some("ON"))).await;
        }
        // suppaftp defaults to ASCII, which rewrites line endings: every transfer is binary.
        tokio::time::timeout(op, ftp.transfer_type(FileType::Binary))
            .await
            .map_err(|_| timeout_err(&server, "TYPE I", "", op))?
            .map_err(|e| map_err(&server, "TYPE I", "", e))?;
        ftp.set_mode(Mode::ExtendedPassive);
        let limit = ftp.get_welcome_msg().and_then(listing_limit);
        Ok(Session {
            ftp,
            features,
            server,
            timeout: op,
            listing_limit: limit,
        })
    }

    fn err(&self, command: &'static str, path: &str, e: FtpError) -> FtpsError {
        map_err(&self.server, command, path, e)
    }

    /// Runs one control-connection step with the standard timeout and error mapping.
    async fn step<T>(
        &mut self,
        command: &'static str,
        path: &str,
        f: impl for<'a> FnOnce(
            &'a mut FtpStream,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, FtpError>> + Send + 'a>,
        >,
    ) -> Result<T, FtpsError> {
        let result = tokio::time::timeout(self.timeout, f(&mut self.ftp)).await;
        self.outcome(command, path, result)
    }

    /// Maps a timed command's result: the timeout, or the server's reply, become [`FtpsError`].
    fn outcome<T>(
        &self,
        command: &'static str,
        path: &str,
        result: Result<Result<T, FtpError>, tokio::time::error::Elapsed>,
    ) -> Result<T, FtpsError> {
        match result {
            Err(_) => Err(timeout_err(&self.server, command, path, self.timeout)),
            Ok(r) => r.map_err(|e| self.err(command, path, e)),
        }
    }

    /// Lists one directory (absolute path), MLSD where offered, LIST otherwise. Returns the raw
    /// lines and whether they are MLSD facts.
    pub async fn list_dir(&mut self, dir: &str) -> Result<(Vec<String>, bool), FtpsError> {
        // CWD first and list without an argument: some servers (vsftpd) glob a LIST argument,
        // so a directory named `[x]` or `a*` would list the wrong thing.
        let d = dir.to_string();
        self.step("CWD", dir, |f| Box::pin(f.cwd(d))).await?;
        let mlsd = self.features.mlsd;
        let lines = self
            .data_command(if mlsd { "MLSD" } else { "LIST" }, dir, move |f| {
                Box::pin(async move {
                    if mlsd {
                        f.mlsd(None).await
                    } else {
                        f.list(None).await
                    }
                })
            })
            .await?;
        check_listing_complete(
            &self.server,
            if mlsd { "MLSD" } else { "LIST" },
            dir,
            lines.len(),
            self.listing_limit,
        )?;
        Ok((lines, mlsd))
    }

    /// A data-connection command; falls back from EPSV to PASV once if the server refuses EPSV.
    async fn data_command<T>(
        &mut self,
        command: &'static str,
        path: &str,
        f: impl for<'a> Fn(
            &'a mut FtpStream,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, FtpError>> + Send + 'a>,
        >,
    ) -> Result<T, FtpsError> {
        let first = tokio::time::timeout(self.timeout, f(&mut self.ftp)).await;
        let epsv_refused = matches!(&first, Ok(Err(FtpError::UnexpectedResponse(r)))
            if matches!(r.status.code(), 500..=502)
                && String::from_utf8_lossy(&r.body).to_ascii_uppercase().contains("EPSV"));
        if !epsv_refused {
            return self.outcome(command, path, first);
        }
        tracing::info!(server = %self.server, "EPSV refused, using PASV");
        self.ftp.set_mode(Mode::Passive);
        self.ftp.set_passive_nat_workaround(true);
        let second = tokio::time::timeout(self.timeout, f(&mut self.ftp)).await;
        self.outcome(command, path, second)
    }

    pub async fn mkdir(&mut self, path: &str) -> Result<(), FtpsError> {
        let p = path.to_string();
        self.step("MKD", path, |f| Box::pin(f.mkdir(p))).await
    }

    pub async fn rename(&mut self, from: &str, to: &str) -> Result<(), FtpsError> {
        let (a, b) = (from.to_string(), to.to_string());
        self.step("RNFR/RNTO", to, |f| Box::pin(f.rename(a, b)))
            .await
    }

    pub async fn delete_file(&mut self, path: &str) -> Result<(), FtpsError> {
        let p = path.to_string();
        self.step("DELE", path, |f| Box::pin(f.rm(p))).await
    }

    pub async fn remove_dir(&mut self, path: &str) -> Result<(), FtpsError> {
        let p = path.to_string();
        self.step("RMD", path, |f| Box::pin(f.rmdir(p))).await
    }

    pub async fn size(&mut self, path: &str) -> Result<u64, FtpsError> {
        let p = path.to_string();
        self.step("SIZE", path, |f| Box::pin(f.size(p)))
            .await
            .map(|n| n as u64)
    }

    /// Sets a file's modification time with MFMT (only called where FEAT offers it).
    pub async fn set_mtime(&mut self, path: &str, unix_secs: i64) -> Result<(), FtpsError> {
        let stamp = chrono::DateTime::from_timestamp(unix_secs, 0)
            .map(|t| t.format("%Y%m%d%H%M%S").to_string())
            .unwrap_or_else(|| "19700101000000".to_string());
        let cmd = format!("MFMT {stamp} {path}");
        self.step("MFMT", path, |f| {
            Box::pin(async move { f.custom_command(cmd, &[Status::File]).await.map(|_| ()) })
        })
        .await
    }

    /// The server's SHA-256 of `path`, where it offers a hash command (see [`Features`]).
    pub async fn remote_sha256(&mut self, path: &str) -> Result<Option<[u8; 32]>, FtpsError> {
        let (cmd, expected) = match self.features.sha256 {
            None => return Ok(None),
            Some(Sha256Command::Hash) => {
                // SHA-256 may not be the server's default algorithm: select it first.
                self.step("OPTS HASH", path, |f| {
                    Box::pin(async move {
                        f.custom_command("OPTS HASH SHA-256", &[Status::CommandOk])
                            .await
                            .map(|_| ())
                    })
                })
                .await?;
                (format!("HASH {path}"), Status::File)
            }
            Some(Sha256Command::XSha256) => {
                (format!("XSHA256 {path}"), Status::RequestedFileActionOk)
            }
        };
        let reply = self
            .step("HASH", path, |f| {
                Box::pin(async move { f.custom_command(cmd, &[expected]).await })
            })
            .await?;
        let text = String::from_utf8_lossy(&reply.body).to_string();
        match sha256_in_reply(&text) {
            Some(h) => Ok(Some(h)),
            None => Err(FtpsError::Reply {
                server: self.server.clone(),
                command: "HASH",
                path: path.to_string(),
                code: reply.status.code(),
                reply: format!("no SHA-256 in the reply `{}`", text.trim()),
            }),
        }
    }

    /// Makes the next STOR or RETR start at byte `offset` (REST).
    pub async fn restart_at(&mut self, path: &str, offset: u64) -> Result<(), FtpsError> {
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        self.step("REST", path, |f| Box::pin(f.resume_transfer(offset)))
            .await
    }

    /// Opens a STOR to `path`; write the bytes, then [`Session::finish`].
    pub async fn store(&mut self, path: &str) -> Result<DataStream, FtpsError> {
        let p = path.to_string();
        self.data_command("STOR", path, move |f| {
            let p = p.clone();
            Box::pin(async move { f.put_with_stream(p).await })
        })
        .await
    }

    /// Opens a RETR of `path`; read the bytes, then [`Session::finish`].
    pub async fn retrieve(&mut self, path: &str) -> Result<DataStream, FtpsError> {
        let p = path.to_string();
        self.data_command("RETR", path, move |f| {
            let p = p.clone();
            Box::pin(async move { f.retr_as_stream(p).await })
        })
        .await
    }

    /// Closes a data connection (close_notify, then the server's 226).
    pub async fn finish(
        &mut self,
        command: &'static str,
        path: &str,
        stream: DataStream,
    ) -> Result<(), FtpsError> {
        let result = tokio::time::timeout(self.timeout, stream.finish()).await;
        self.outcome(command, path, result)
    }

    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.ftp.quit()).await;
    }
}

fn map_err(server: &str, command: &'static str, path: &str, e: FtpError) -> FtpsError {
    match e {
        FtpError::UnexpectedResponse(r) => FtpsError::Reply {
            server: server.to_string(),
            command,
            path: path.to_string(),
            code: r.status.code(),
            reply: reply_text(&r),
        },
        other => FtpsError::Connection {
            server: server.to_string(),
            command,
            path: path.to_string(),
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_features_and_replies() {
        let feat = |pairs: &[(&str, Option<&str>)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
                .collect::<std::collections::HashMap<_, _>>()
        };
        let f = Features::from_feat(&feat(&[
            ("HASH", Some("SHA-1;SHA-256*;MD5")),
            ("MLST", Some("type*;size*;")),
        ]));
        assert_eq!(f.sha256, Some(Sha256Command::Hash));
        assert!(f.mlsd);
        let f = Features::from_feat(&feat(&[("XSHA256", None), ("HASH", Some("MD5*"))]));
        assert_eq!(f.sha256, Some(Sha256Command::XSha256));
        assert_eq!(Features::from_feat(&feat(&[("XMD5", None)])).sha256, None);
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(
            sha256_in_reply(&format!("213 SHA-256 0-3 {hex} a b.txt")).unwrap()[0],
            0xba
        );
        assert_eq!(sha256_in_reply(&format!("250 {hex}")).unwrap()[31], 0xad);
        assert!(sha256_in_reply("213 SHA-256 0-3 zz a.txt").is_none());
    }

    #[test]
    fn a_pureftpd_listing_at_its_limit_is_refused() {
        let greeting = "220---------- Welcome to Pure-FTPd [privsep] [TLS] ----------\n220-You are user number 1 of 50 allowed.";
        let limit = listing_limit(greeting);
        assert_eq!(limit, Some(10_000));
        assert_eq!(listing_limit("220 (vsFTPd 3.0.3)"), None);
        assert_eq!(
            listing_limit("220 ProFTPD Server (ferrysync test ProFTPD)"),
            None
        );
        assert!(check_listing_complete("s", "MLSD", "/d", 9_999, limit).is_ok());
        let err = check_listing_complete("s", "MLSD", "/d", 10_000, limit).unwrap_err();
        assert!(!err.is_transient());
        let text = err.to_string();
        assert!(
            text.contains("MLSD /d") && text.contains("LimitRecursion"),
            "{text}"
        );
        assert!(check_listing_complete("s", "LIST", "/d", 50_000, None).is_ok());
    }

    #[test]
    fn reply_text_keeps_the_code() {
        let r =
            suppaftp::types::Response::new(Status::FileUnavailable, b"550 No such file".to_vec());
        assert_eq!(reply_text(&r), "550 No such file");
        let r = suppaftp::types::Response::new(Status::FileUnavailable, b"No such file".to_vec());
        assert_eq!(reply_text(&r), "550 No such file");
    }
}
