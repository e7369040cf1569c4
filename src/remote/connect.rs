//! Setting up a control connection, one step per function: resolve; TCP and the greeting (with
//! TLS from the first byte for implicit FTPS); AUTH TLS for explicit FTPS, PBSZ 0 / PROT P for
//! implicit; login; then the preparation for transfers (TCP keepalive, FEAT, OPTS UTF8,
//! TYPE I). [`Session::connect`](crate::remote::session::Session::connect) runs them in order.
//!
//! Every step maps its failures through the [`Dialer`], which knows the server's name and the
//! hints that go with TLS failures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use suppaftp::types::FileType;
use suppaftp::{FtpError, Status};

use crate::config::{Listing, Remote, Security};
use crate::remote::error::{map_err, reply_text, timeout_err, FtpsError};
use crate::remote::features::Features;
use crate::remote::pipelined::Pipelined;
use crate::remote::tls::{
    ControlProgress, FlushingTlsStream, Resumption, TlsConnector, TlsContext,
};

/// A control connection: suppaftp's, over ferrysync's TLS stream.
pub type FtpStream = suppaftp::tokio::ImplAsyncFtpStream<FlushingTlsStream>;

/// How long resolving the host, and opening the TCP connection (with the TLS handshake for
/// implicit FTPS), may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a plain connection waits for the server's greeting before it also checks, on a
/// second connection, whether the port speaks implicit TLS (an implicit FTPS server says
/// nothing until the client's TLS handshake, so the greeting would only time out).
const GREETING_PATIENCE: Duration = Duration::from_secs(2);

/// How long that check, or the look at a plain greeting where TLS was expected, may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What to set when the port speaks implicit TLS.
const SET_IMPLICIT: &str = "this port speaks implicit TLS: set `security: implicit` (or set `port:` to the server's explicit FTPS port, usually 21)";

/// What to set when the port greets in plain text.
const SET_EXPLICIT: &str = "this port speaks explicit FTPS (AUTH TLS) or plain FTP: set `security: explicit` (or set `port:` to the server's implicit FTPS port, usually 990)";

/// A control connection before login: secured as the job's `security` says, with the TLS
/// connector its data connections share (`None` for plain FTP).
pub(super) struct Control {
    pub(super) ftp: FtpStream,
    /// Whether data connections can still resume the control connection's TLS session.
    pub(super) resumption: Option<Arc<Resumption>>,
    /// A clone of the control connection's TLS connector, for active data connections.
    pub(super) data_tls: Option<TlsConnector>,
}

/// One connection set-up to the job's server: the steps, and the errors they fail with.
pub(super) struct Dialer<'a> {
    remote: &'a Remote,
    /// `user@host:port`, for errors and logs.
    pub(super) server: String,
    /// How long one command may take.
    op: Duration,
}

impl<'a> Dialer<'a> {
    pub(super) fn new(remote: &'a Remote) -> Dialer<'a> {
        Dialer {
            remote,
            server: format!("{}@{}:{}", remote.user, remote.host, remote.port),
            op: remote.timeout,
        }
    }

    /// The first address the host resolves to.
    pub(super) async fn resolve(&self) -> Result<SocketAddr, FtpsError> {
        let host = &self.remote.host;
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::lookup_host((host.as_str(), self.remote.port)),
        )
        .await
        .map_err(|_| timeout_err(&self.server, "resolve", host, CONNECT_TIMEOUT))?
        .map_err(|source| self.resolve_error(source))?
        .next()
        .ok_or_else(|| self.setup(format!("{host} resolves to no address")))
    }

    /// Connects to `addr` and secures the connection as the job's `security` says.
    /// `flight`: over TLS, the login's commands (see [`Dialer::login_flight`]) to send in the
    /// flight of the last set-up command; the caller then reads their replies.
    pub(super) async fn open(
        &self,
        addr: SocketAddr,
        tls: &TlsContext,
        flight: Option<&[u8]>,
    ) -> Result<Control, FtpsError> {
        match self.remote.security {
            Security::None => Ok(Control {
                ftp: self.open_plain(addr, tls).await?,
                resumption: None,
                data_tls: None,
            }),
            Security::Explicit => {
                let plain = self.open_plain(addr, tls).await?;
                self.auth_tls(plain, tls, flight).await
            }
            Security::Implicit => self.open_implicit(addr, tls, flight).await,
        }
    }

    /// USER and PASS, to go out with PROT P over TLS (see
    /// [`ControlProgress::write_after_protection`]): PBSZ 0 and PROT P first, as RFC 4217
    /// orders, then the login without waiting for PROT P's reply (the password travels on the
    /// control connection's TLS either way): one round trip less per connection. FEAT, OPTS
    /// and TYPE I wait for the login's replies (see [`Dialer::features_ahead`]): a server that
    /// authenticates in a task of its own (libunftp) would answer them before PASS, as not
    /// logged in. A user name or password with a line break is refused, never sent.
    pub(super) fn login_flight(&self) -> Result<Vec<u8>, FtpsError> {
        let user = &self.remote.user;
        let lines = [
            Pipelined::new("USER", "", format!("USER {user}"), &[]),
            Pipelined::new(
                "PASS",
                "",
                format!("PASS {}", self.remote.password.expose()),
                &[],
            ),
        ];
        let mut bytes = Vec::new();
        for l in &lines {
            bytes.extend_from_slice(&l.encoded().map_err(|e| self.connect_error(e))?);
        }
        Ok(bytes)
    }

    /// TCP and the server's greeting, in the clear. A greeting that has not come after
    /// [`GREETING_PATIENCE`] may never come: the port may speak implicit TLS, which a TLS
    /// handshake on a second connection shows, and then the job's `security:` is wrong.
    async fn open_plain(&self, addr: SocketAddr, tls: &TlsContext) -> Result<FtpStream, FtpsError> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| timeout_err(&self.server, "connect", &addr.to_string(), CONNECT_TIMEOUT))?
            .map_err(|source| self.cannot_connect(source))?;
        let _ = tcp.set_nodelay(true);
        let greeting = FtpStream::connect_with_stream(tcp);
        tokio::pin!(greeting);
        let patience = GREETING_PATIENCE.min(self.op);
        let greeted = match tokio::time::timeout(patience, &mut greeting).await {
            Ok(greeted) => greeted,
            Err(_) => {
                let rest = self.op.saturating_sub(patience);
                tokio::select! {
                    greeted = tokio::time::timeout(rest, &mut greeting) => greeted
                        .map_err(|_| timeout_err(&self.server, "greeting", "", self.op))?,
                    true = self.speaks_tls(addr, tls) => {
                        return Err(self.wrong_security(
                            format!("no FTP greeting within {}s, but the port answers a TLS handshake", patience.as_secs()),
                            SET_IMPLICIT,
                        ));
                    }
                }
            }
        };
        greeted.map_err(|e| self.connect_error(e))
    }

    /// Whether `addr` answers a TLS handshake (on a connection of its own): a completed
    /// handshake, or a TLS verdict on it (a certificate the job does not trust, an alert).
    async fn speaks_tls(&self, addr: SocketAddr, tls: &TlsContext) -> bool {
        use suppaftp::tokio::AsyncTlsConnector;
        let probe = async {
            let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
            let connector = tls.connector().ok()?;
            Some(connector.connect(&self.remote.host, tcp).await)
        };
        let answered = match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Some(Ok(_))) => true,
            Ok(Some(Err(FtpError::SecureError(reason)))) => {
                ["certificate", "alert", "incompatible"]
                    .iter()
                    .any(|w| reason.contains(w))
            }
            _ => false,
        };
        tracing::debug!(server = %self.server, answered, "looked for implicit TLS on the port");
        answered
    }

    /// The first line a server sends on a plain connection of its own, if it sends one within
    /// [`PROBE_TIMEOUT`]: its greeting, shown where TLS was expected and plain text came.
    async fn plain_greeting(&self, addr: SocketAddr) -> Option<String> {
        use tokio::io::AsyncReadExt;
        let read = async {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
            let mut buf = vec![0u8; 512];
            let mut len = 0;
            while len < buf.len() && !buf[..len].contains(&b'\n') {
                match tcp.read(&mut buf[len..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => len += n,
                }
            }
            let text = String::from_utf8_lossy(&buf[..len]).to_string();
            let line = text.lines().next()?.trim().to_string();
            line.starts_with(|c: char| c.is_ascii_digit())
                .then_some(line)
        };
        tokio::time::timeout(PROBE_TIMEOUT, read)
            .await
            .ok()
            .flatten()
    }

    /// Explicit FTPS: AUTH TLS on the plain connection. A server that refuses it is an error:
    /// ferrysync never falls back to plain FTP.
    async fn auth_tls(
        &self,
        plain: FtpStream,
        tls: &TlsContext,
        flight: Option<&[u8]>,
    ) -> Result<Control, FtpsError> {
        let connector = tls.connector().map_err(|reason| self.setup(reason))?;
        let resumption = Some(connector.resumption());
        let data_tls = Some(connector.clone());
        let progress = connector.control_progress();
        if let Some(flight) = flight {
            progress.write_after_protection(flight);
        }
        let ftp = tokio::time::timeout(self.op, plain.into_secure(connector, &self.remote.host))
            .await
            .map_err(|_| timeout_err(&self.server, "AUTH TLS", "", self.op))?
            .map_err(|e| match progress.lines_after_handshake() {
                // The server answered AUTH TLS with 234 (a refusal is a reply, not a TLS
                // error), then sent plain text where its TLS records belonged: the two sides
                // fell out of step (a server that wrote before it switched, a middlebox). Not
                // a setting to change, unlike a certificate: a new connection is worth a try.
                None if not_tls(&e) => FtpsError::Connection {
                    server: self.server.clone(),
                    command: "AUTH TLS",
                    path: String::new(),
                    reason: format!(
                        "the server accepted AUTH TLS, then sent plain text where the TLS handshake belonged ({e})"
                    ),
                },
                lines => self.auth_tls_error(e, lines),
            })?;
        // Not sent with PROT P (a suppaftp that did not send it last): sent now instead.
        let unsent = progress.take_after_protection();
        if !unsent.is_empty() {
            progress.write_ahead(&unsent);
        }
        Ok(Control {
            ftp,
            resumption,
            data_tls,
        })
    }

    /// Implicit FTPS: TCP and TLS from the first byte, the greeting, then PBSZ 0 / PROT P.
    async fn open_implicit(
        &self,
        addr: SocketAddr,
        tls: &TlsContext,
        flight: Option<&[u8]>,
    ) -> Result<Control, FtpsError> {
        let connector = tls.connector().map_err(|reason| self.setup(reason))?;
        let resumption = Some(connector.resumption());
        let data_tls = Some(connector.clone());
        let ftp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            FtpStream::connect_secure_implicit(addr, connector, &self.remote.host),
        )
        .await
        .map_err(|_| timeout_err(&self.server, "connect", &addr.to_string(), CONNECT_TIMEOUT));
        let mut ftp = match ftp? {
            Ok(ftp) => ftp,
            Err(e) if not_tls(&e) => {
                // Plain text where the server's side of the handshake belonged: its greeting.
                let found = match self.plain_greeting(addr).await {
                    Some(greeting) => format!("the server greeted in plain text (`{greeting}`) where implicit FTPS expects a TLS handshake"),
                    None => format!("the server answered the TLS handshake with something that is not TLS ({e})"),
                };
                return Err(self.wrong_security(found, SET_EXPLICIT));
            }
            Err(e) => return Err(self.connect_error(e)),
        };
        match flight {
            Some(flight) => {
                let mut lines = b"PBSZ 0\r\nPROT P\r\n".to_vec();
                lines.extend_from_slice(flight);
                if let Some(connector) = &data_tls {
                    connector.control_progress().write_ahead(&lines);
                }
                for cmd in ["PBSZ 0", "PROT P"] {
                    let r = self.reply(&mut ftp, cmd).await?;
                    if r.status != Status::CommandOk {
                        return Err(self.protection_refused(cmd, &r));
                    }
                }
            }
            None => self.protect_data_channel(&mut ftp).await?,
        }
        Ok(Control {
            ftp,
            resumption,
            data_tls,
        })
    }

    /// PBSZ 0 and PROT P: suppaftp does not protect the data channel in implicit mode by itself.
    async fn protect_data_channel(&self, ftp: &mut FtpStream) -> Result<(), FtpsError> {
        for cmd in ["PBSZ 0", "PROT P"] {
            tokio::time::timeout(self.op, ftp.custom_command(cmd, &[Status::CommandOk]))
                .await
                .map_err(|_| timeout_err(&self.server, cmd, "", self.op))?
                .map_err(|e| match e {
                    FtpError::UnexpectedResponse(r) => self.protection_refused(cmd, &r),
                    other => self.connect_error(other),
                })?;
        }
        Ok(())
    }

    /// USER and PASS.
    pub(super) async fn login(&self, ftp: &mut FtpStream) -> Result<(), FtpsError> {
        let user = &self.remote.user;
        tokio::time::timeout(
            self.op,
            ftp.login(user.as_str(), self.remote.password.expose()),
        )
        .await
        .map_err(|_| timeout_err(&self.server, "login", "", self.op))?
        .map_err(|e| match e {
            FtpError::UnexpectedResponse(r) => FtpsError::Login {
                server: self.server.clone(),
                user: user.clone(),
                reply: reply_text(&r),
            },
            other => self.connect_error(other),
        })
    }

    /// The replies to USER and PASS sent with PROT P (see [`Dialer::login_flight`]) where
    /// they went out (`ahead`); else [`Dialer::login`].
    pub(super) async fn login_ahead(
        &self,
        ftp: &mut FtpStream,
        ahead: Option<&ControlProgress>,
    ) -> Result<(), FtpsError> {
        if ahead.is_none() {
            return self.login(ftp).await;
        }
        let user = &self.remote.user;
        let refused = |r: &suppaftp::types::Response| FtpsError::Login {
            server: self.server.clone(),
            user: user.clone(),
            reply: reply_text(r),
        };
        let to_user = self.reply(ftp, "USER").await?;
        // Both replies are read whatever the first says, so the connection stays in step.
        let to_pass = self.reply(ftp, "PASS").await?;
        match (to_user.status, to_pass.status) {
            // Logged in by USER alone: PASS was refused as out of place, which does not matter.
            (Status::LoggedIn, _) => Ok(()),
            (Status::NeedPassword, Status::LoggedIn) => Ok(()),
            (Status::NeedPassword, _) => Err(refused(&to_pass)),
            _ => Err(refused(&to_user)),
        }
    }

    /// FEAT, OPTS UTF8 ON and TYPE I in one flight, over TLS where commands can be written
    /// ahead; else [`Dialer::features`] and [`Dialer::binary`], one after the other. Returns
    /// what FEAT offered and how long its reply took: the round trip (FEAT is answered without
    /// work; TCP's connect time would not do, a proxy or load balancer in front answers it at
    /// once). OPTS UTF8 ON goes out whether or not FEAT offers UTF8: a server without it
    /// answers 5xx and keeps its default, as it would have.
    pub(super) async fn features_ahead(
        &self,
        ftp: &mut FtpStream,
        ahead: Option<&ControlProgress>,
    ) -> Result<(Features, Duration), FtpsError> {
        let Some(ahead) = ahead else {
            let asked = std::time::Instant::now();
            let features = self.features(ftp).await;
            let feat_took = asked.elapsed();
            let asked = std::time::Instant::now();
            self.binary(ftp).await?;
            return Ok((features, feat_took.min(asked.elapsed())));
        };
        ahead.write_ahead(b"FEAT\r\nOPTS UTF8 ON\r\nTYPE I\r\n");
        let asked = std::time::Instant::now();
        let feat = self.reply(ftp, "FEAT").await?;
        let rtt = asked.elapsed();
        self.reply(ftp, "OPTS UTF8").await?;
        let binary = self.reply(ftp, "TYPE I").await?;
        if binary.status != Status::CommandOk {
            return Err(map_err(
                &self.server,
                "TYPE I",
                "",
                FtpError::UnexpectedResponse(binary),
            ));
        }
        let mut features = if feat.status == Status::System {
            Features::from_feat(&feat_lines(&String::from_utf8_lossy(&feat.body)))
        } else {
            Features::default()
        };
        if self.remote.listing == Listing::List {
            features.mlsd = false;
        }
        Ok((features, rtt))
    }

    /// The next reply, whatever its code (a multi-line one whole): only a closed connection,
    /// a timeout or an unreadable reply is an error.
    async fn reply(
        &self,
        ftp: &mut FtpStream,
        command: &'static str,
    ) -> Result<suppaftp::types::Response, FtpsError> {
        // No code is expected, so each reply comes back as "unexpected", FEAT's whole.
        match tokio::time::timeout(self.op, ftp.read_response_in(&[])).await {
            Err(_) => Err(timeout_err(&self.server, command, "", self.op)),
            Ok(Err(FtpError::UnexpectedResponse(r))) | Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(self.connect_error(e)),
        }
    }

    /// Sets the control connection's socket up for a long life; returns its local address
    /// (active listeners bind its IP).
    pub(super) async fn keep_alive(&self, ftp: &FtpStream) -> Result<SocketAddr, FtpsError> {
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
        control
            .local_addr()
            .map_err(|source| self.cannot_connect(source))
    }

    /// FEAT (a server that does not answer it offers nothing), with MLSD dropped where the job
    /// asks for LIST; OPTS UTF8 ON where the server offers UTF8.
    pub(super) async fn features(&self, ftp: &mut FtpStream) -> Features {
        let mut features = match tokio::time::timeout(self.op, ftp.feat()).await {
            Ok(Ok(f)) => Features::from_feat(&f),
            _ => Features::default(),
        };
        if self.remote.listing == Listing::List {
            // The job asks for LIST: for servers whose MLSD is broken or slow.
            features.mlsd = false;
        }
        if features.utf8 {
            // Where offered, ask for UTF-8 names; servers that answer 5xx keep their default.
            let _ = tokio::time::timeout(self.op, ftp.opts("UTF8", Some("ON"))).await;
        }
        features
    }

    /// TYPE I: suppaftp defaults to ASCII, which rewrites line endings; every transfer is binary.
    pub(super) async fn binary(&self, ftp: &mut FtpStream) -> Result<(), FtpsError> {
        tokio::time::timeout(self.op, ftp.transfer_type(FileType::Binary))
            .await
            .map_err(|_| timeout_err(&self.server, "TYPE I", "", self.op))?
            .map_err(|e| map_err(&self.server, "TYPE I", "", e))
    }

    // ---- the errors of the set-up

    fn setup(&self, reason: String) -> FtpsError {
        FtpsError::Setup {
            server: self.server.clone(),
            reason,
        }
    }

    /// A failed TCP connection: refused (nothing listens, not retried) or any other failure.
    fn cannot_connect(&self, source: std::io::Error) -> FtpsError {
        if source.kind() == std::io::ErrorKind::ConnectionRefused {
            return FtpsError::Refused {
                server: self.server.clone(),
                addr: format!("{}:{}", self.remote.host, self.remote.port),
            };
        }
        FtpsError::Connect {
            server: self.server.clone(),
            source,
        }
    }

    /// A failed look-up of the host: a name that does not exist is said so (and not
    /// retried); a resolver that could not answer for now stays a transient failure.
    fn resolve_error(&self, source: std::io::Error) -> FtpsError {
        let text = source.to_string();
        if unknown_host(&text) {
            return FtpsError::UnknownHost {
                server: self.server.clone(),
                host: self.remote.host.clone(),
                reason: text,
            };
        }
        self.cannot_connect(source)
    }

    fn wrong_security(&self, found: String, hint: &'static str) -> FtpsError {
        FtpsError::WrongSecurity {
            server: self.server.clone(),
            found,
            hint,
        }
    }

    /// A failure of `into_secure` (AUTH TLS, the handshake, PBSZ 0, PROT P), told apart by
    /// how far the control connection got: `lines` is `None` before the handshake completed,
    /// then the command lines sent over TLS (see [`ControlProgress`](crate::remote::tls::ControlProgress)).
    fn auth_tls_error(&self, e: FtpError, lines: Option<usize>) -> FtpsError {
        match (e, lines) {
            (FtpError::UnexpectedResponse(r), None) => FtpsError::NoTls {
                server: self.server.clone(),
                reply: reply_text(&r),
            },
            (FtpError::UnexpectedResponse(r), Some(0 | 1)) => self.protection_refused("PBSZ 0", &r),
            (FtpError::UnexpectedResponse(r), Some(_)) => self.protection_refused("PROT P", &r),
            (other, _) => self.connect_error(other),
        }
    }

    fn protection_refused(
        &self,
        command: &'static str,
        r: &suppaftp::types::Response,
    ) -> FtpsError {
        FtpsError::Protection {
            server: self.server.clone(),
            command,
            code: r.status.code(),
            reply: reply_text(r),
        }
    }

    fn tls_error(&self, reason: String) -> FtpsError {
        FtpsError::Tls {
            server: self.server.clone(),
            hint: tls_hint(&reason),
            reason,
        }
    }

    /// A failure of the connection, the greeting, the TLS handshake or the login exchange that
    /// is not the server's answer to the step itself.
    fn connect_error(&self, e: FtpError) -> FtpsError {
        match e {
            // With TLS 1.3 the server's verdict on a client certificate arrives as an alert
            // after the client's side of the handshake: still a TLS failure, not a network one.
            FtpError::ConnectionError(source) if source.to_string().contains("fatal alert") => {
                self.tls_error(source.to_string())
            }
            FtpError::ConnectionError(source) => self.cannot_connect(source),
            // A greeting other than 220, such as 421 "too many connections".
            FtpError::UnexpectedResponse(r) => FtpsError::Reply {
                server: self.server.clone(),
                command: "connect",
                path: String::new(),
                code: r.status.code(),
                reply: reply_text(&r),
            },
            FtpError::SecureError(reason) => self.tls_error(reason),
            other => self.setup(other.to_string()),
        }
    }
}

/// Whether the resolver's answer (getaddrinfo's words, glibc or musl) says the name does not
/// exist, rather than that it could not be looked up for now (`Temporary failure`).
fn unknown_host(text: &str) -> bool {
    [
        "Name or service not known",
        "No address associated with hostname",
        "nodename nor servname provided",
        "Name does not resolve",
    ]
    .iter()
    .any(|w| text.contains(w))
}

/// Whether a failed implicit-TLS connection met plain text where the server's TLS records
/// belonged (rustls: "received corrupt message of type InvalidContentType").
fn not_tls(e: &FtpError) -> bool {
    let text = match e {
        FtpError::SecureError(reason) => reason.clone(),
        FtpError::ConnectionError(source) => source.to_string(),
        _ => return false,
    };
    text.contains("InvalidContentType") || text.contains("corrupt message")
}

/// What to set when a TLS handshake fails for `reason` (rustls's words for it).
fn tls_hint(reason: &str) -> &'static str {
    if reason.contains("UnknownIssuer") || reason.contains("NotValidForName") {
        " (set remote.tls.ca_file to the CA that signed the server's certificate, or pin it with remote.tls.pin_sha256)"
    } else if reason.contains("CertificateRequired") {
        " (the server requires a client certificate: set remote.tls.client_cert and remote.tls.client_key)"
    } else if reason.contains("BadCertificate") || reason.contains("UnknownCA") {
        " (the server refused the client certificate)"
    } else {
        ""
    }
}

/// The features of a whole multi-line FEAT reply (`211-...`, one ` NAME params` line each,
/// `211 End`), as suppaftp's `feat` would have read them.
fn feat_lines(body: &str) -> suppaftp::types::Features {
    body.lines()
        .skip(1)
        .take_while(|l| !l.starts_with("211 "))
        .filter(|l| l.starts_with(' '))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?.to_string();
            let values = words.collect::<Vec<_>>().join(" ");
            Some((name, (!values.is_empty()).then_some(values)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_up_failures_keep_their_variants_and_hints() {
        let yaml = "local: /srv/out\nremote:\n  host: ftp.example\n  user: u\n  password: p\n";
        let job = crate::config::parse_job(std::path::Path::new("/jobs/acme.yaml"), yaml).unwrap();
        let dialer = Dialer::new(&job.remote);
        assert_eq!(dialer.server, "u@ftp.example:21");
        let io = |text: &str| std::io::Error::other(text.to_string());

        let e = dialer.connect_error(FtpError::SecureError(
            "invalid peer certificate: UnknownIssuer".into(),
        ));
        assert!(matches!(e, FtpsError::Tls { .. }), "{e:?}");
        assert!(
            e.to_string()
                .ends_with("or pin it with remote.tls.pin_sha256)"),
            "{e}"
        );
        let e = dialer.connect_error(FtpError::ConnectionError(io(
            "received fatal alert: CertificateRequired",
        )));
        assert!(
            e.to_string().contains("requires a client certificate"),
            "{e}"
        );
        let e = dialer.connect_error(FtpError::ConnectionError(io("refused")));
        assert!(
            matches!(e, FtpsError::Connect { .. }) && e.is_transient(),
            "{e:?}"
        );
        let busy = suppaftp::types::Response::new(Status::NotAvailable, b"421 Too many".to_vec());
        let e = dialer.connect_error(FtpError::UnexpectedResponse(busy));
        assert_eq!(e.code(), Some(421));
        assert_eq!(
            e.to_string(),
            "u@ftp.example:21: connect : server replied `421 Too many`"
        );
        assert_eq!(
            tls_hint("BadCertificate"),
            " (the server refused the client certificate)"
        );
        assert_eq!(tls_hint("HandshakeFailure"), "");
    }

    #[test]
    fn refused_connections_unknown_hosts_and_plain_text_for_tls_are_permanent() {
        let yaml = "local: /srv/out\nremote:\n  host: ftp.example\n  port: 990\n  user: u\n  password: p\n";
        let job = crate::config::parse_job(std::path::Path::new("/jobs/acme.yaml"), yaml).unwrap();
        let dialer = Dialer::new(&job.remote);
        let e = dialer.cannot_connect(std::io::ErrorKind::ConnectionRefused.into());
        assert!(!e.is_transient(), "{e:?}");
        assert_eq!(
            e.to_string(),
            "cannot connect to u@ftp.example:990: connection refused by ftp.example:990 (nothing listens there): check remote.host and remote.port"
        );
        let e = dialer.resolve_error(std::io::Error::other(
            "failed to lookup address information: Name or service not known",
        ));
        assert!(matches!(e, FtpsError::UnknownHost { .. }) && !e.is_transient());
        assert!(e.to_string().contains("unknown host `ftp.example`"), "{e}");
        // The resolver could not answer for now: the next attempt may succeed.
        let e = dialer.resolve_error(std::io::Error::other(
            "failed to lookup address information: Temporary failure in name resolution",
        ));
        assert!(matches!(e, FtpsError::Connect { .. }) && e.is_transient());
        assert!(not_tls(&FtpError::SecureError(
            "received corrupt message of type InvalidContentType".into()
        )));
        assert!(!not_tls(&FtpError::SecureError(
            "invalid peer certificate: UnknownIssuer".into()
        )));
        let e = dialer.wrong_security("no greeting".into(), SET_IMPLICIT);
        assert!(!e.is_transient());
        assert_eq!(
            e.to_string(),
            "u@ftp.example:990: no greeting: this port speaks implicit TLS: set `security: implicit` (or set `port:` to the server's explicit FTPS port, usually 21)"
        );
    }

    #[test]
    fn a_refused_pbsz_or_prot_is_not_a_refused_auth_tls() {
        let yaml = "local: /srv/out\nremote:\n  host: ftp.example\n  user: u\n  password: p\n";
        let job = crate::config::parse_job(std::path::Path::new("/jobs/acme.yaml"), yaml).unwrap();
        let dialer = Dialer::new(&job.remote);
        let reply = |code: Status, text: &str| {
            FtpError::UnexpectedResponse(suppaftp::types::Response::new(
                code,
                text.as_bytes().to_vec(),
            ))
        };
        // No handshake yet: the reply answered AUTH TLS.
        let e = dialer.auth_tls_error(
            reply(Status::NotImplemented, "502 AUTH not supported"),
            None,
        );
        assert!(matches!(e, FtpsError::NoTls { .. }), "{e:?}");
        // After the handshake, one line out: PBSZ 0 was refused.
        let e = dialer.auth_tls_error(reply(Status::BadSequence, "503 PBSZ refused"), Some(1));
        assert!(
            matches!(
                e,
                FtpsError::Protection {
                    command: "PBSZ 0",
                    code: 503,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "u@ftp.example:21: TLS is up, but the server refused `PBSZ 0`: `503 PBSZ refused`; without it the data connections would not be encrypted, and ferrysync never transfers in the clear"
        );
        assert!(!e.to_string().contains("AUTH TLS"), "{e}");
        assert!(!e.is_transient());
        // Two lines out: PROT P; a 4xx may pass.
        let e = dialer.auth_tls_error(reply(Status::NotAvailable, "421 Try later"), Some(2));
        assert!(
            matches!(
                e,
                FtpsError::Protection {
                    command: "PROT P",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.is_transient());
        assert_eq!(e.code(), Some(421));
        // A handshake failure stays a TLS error.
        let e = dialer.auth_tls_error(FtpError::SecureError("UnknownIssuer".into()), None);
        assert!(matches!(e, FtpsError::Tls { .. }), "{e:?}");
    }

    #[test]
    fn a_feat_reply_read_whole_gives_its_features() {
        let f = feat_lines(
            "211-Features:\r\n EPRT\r\n MDTM\r\n MLST type*;size*;modify*;\r\n UTF8\r\n211 End\r\n",
        );
        assert_eq!(f.len(), 4);
        assert_eq!(f.get("MDTM"), Some(&None));
        assert_eq!(
            f.get("MLST"),
            Some(&Some("type*;size*;modify*;".to_string()))
        );
        assert!(feat_lines("211 no features\r\n").is_empty());
        assert!(feat_lines("").is_empty());
    }
}
