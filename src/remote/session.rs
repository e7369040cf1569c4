//! FTPS connections: TLS set-up and verification, login, the server's features, and the
//! commands the rest of ferrysync needs, each with a timeout and an error that names the
//! server, the command, the path and the server's reply.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use suppaftp::tokio::{AsyncDataStream, AsyncTlsConnector, TransferStream};
use suppaftp::{FtpError, Mode, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::config::{DataMode, ListingCaps, PassiveAddress, Remote};
use crate::remote::connect::{Control, Dialer, FtpStream};
use crate::remote::data_channel::{self, ActiveTransfer};
use crate::remote::digest::{digest_in_reply, DigestAlgorithm, DigestCommand};
use crate::remote::error::{map_err, reply_text, timeout_err, FtpsError};
use crate::remote::features::{
    check_listing_complete, listing_limit, sha256_in_reply, Features, Sha256Command,
};
use crate::remote::listing_read::{read_listing_lines, ReadListingError};
use crate::remote::tls::{FlushingTlsStream, TlsConnector, TlsContext};

/// The replies that end a successful transfer.
const TRANSFER_COMPLETE: &[Status] =
    &[Status::ClosingDataConnection, Status::RequestedFileActionOk];

/// The data connection of a STOR or RETR: passive (suppaftp's) or active (ours, see
/// [`data_channel`]). Read or write it, then close it with [`Session::finish`].
pub enum DataStream {
    Passive(TransferStream<FlushingTlsStream>),
    Active(ActiveTransfer),
}

impl AsyncRead for DataStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            DataStream::Passive(s) => Pin::new(s).poll_read(cx, buf),
            DataStream::Active(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for DataStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            DataStream::Passive(s) => Pin::new(s).poll_write(cx, buf),
            DataStream::Active(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            DataStream::Passive(s) => Pin::new(s).poll_flush(cx),
            DataStream::Active(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            DataStream::Passive(s) => Pin::new(s).poll_shutdown(cx),
            DataStream::Active(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// What the passive stream builder did during the current data command: the address the
/// server announced, where ferrysync connected instead (`passive_address`), and whether the
/// connection opened. Read after a failure to say which address failed and why.
#[derive(Debug, Clone, Copy, Default)]
struct PassiveAttempt {
    announced: Option<SocketAddr>,
    target: Option<SocketAddr>,
    connected: bool,
}

/// How a data connection was opened (see [`Session::last_data_connection`]).
#[derive(Debug, Clone)]
pub struct DataConnectionFacts {
    /// `EPSV`, `PASV`, `EPRT` or `PORT`.
    pub command: &'static str,
    /// Passive: the address and port of the server's reply (for EPSV, the control connection's
    /// address with the reply's port).
    pub announced: Option<SocketAddr>,
    /// Passive: where the data connection went, once it was open.
    pub connected_to: Option<SocketAddr>,
}

/// One logged-in connection.
pub struct Session {
    ftp: FtpStream,
    /// Whether data connections can still resume the control connection's TLS session.
    resumption: Option<std::sync::Arc<crate::remote::tls::Resumption>>,
    pub features: Features,
    /// `user@host:port`, for errors and logs.
    pub server: String,
    /// How long one command, or one read or write on a data connection, may take.
    pub timeout: Duration,
    data_mode: DataMode,
    passive_address: PassiveAddress,
    active_ports: Option<RangeInclusive<u16>>,
    /// The control connection's own address (active listeners bind its IP) and its peer's.
    control_local: SocketAddr,
    control_peer: SocketAddr,
    /// A clone of the control connection's TLS connector, sharing its session cache, for the
    /// handshakes on active data connections; `None` for plain FTP.
    data_tls: Option<TlsConnector>,
    tls_domain: String,
    /// The server refused EPSV: PASV from now on.
    epsv_refused: bool,
    /// The server refused EPRT: PORT from now on.
    eprt_refused: bool,
    /// The offset of the next STOR or RETR (REST), from [`Session::restart_at`].
    restart: Option<u64>,
    passive_attempt: Arc<Mutex<PassiveAttempt>>,
    /// An active transfer was dropped without [`Session::finish`]: its reply comes first.
    active_reply_pending: Arc<AtomicBool>,
    /// See [`listing_limit`].
    listing_limit: Option<usize>,
    /// The job's caps on one directory's listing (see [`read_listing_lines`]).
    listing_caps: ListingCaps,
    /// The control connection's round trip, measured at login: what `transfers: auto` scales by.
    rtt: Duration,
}

impl Session {
    /// Connects, secures, logs in and prepares a connection for binary transfers; each step is
    /// a function of `remote/connect.rs`.
    pub async fn connect(remote: &Remote, tls: &TlsContext) -> Result<Session, FtpsError> {
        let dialer = Dialer::new(remote);
        let addr = dialer.resolve().await?;
        let Control {
            mut ftp,
            resumption,
            data_tls,
        } = dialer.open(addr, tls).await?;
        dialer.login(&mut ftp).await?;
        let control_local = dialer.keep_alive(&ftp).await?;
        // Two commands the server answers without work: the faster is the round trip (TCP's
        // connect time would not do: a proxy or load balancer in front answers it at once).
        let asked = std::time::Instant::now();
        let features = dialer.features(&mut ftp).await;
        let feat_took = asked.elapsed();
        let asked = std::time::Instant::now();
        dialer.binary(&mut ftp).await?;
        let rtt = feat_took.min(asked.elapsed());
        let (ftp, passive_attempt) =
            with_passive_builder(ftp, addr, remote.passive_address, tls, &dialer.server);
        let limit = ftp.get_welcome_msg().and_then(listing_limit);
        Ok(Session {
            ftp,
            resumption,
            features,
            server: dialer.server,
            timeout: remote.timeout,
            data_mode: remote.data_mode,
            passive_address: remote.passive_address,
            active_ports: remote.active_ports.clone(),
            control_local,
            control_peer: addr,
            data_tls,
            tls_domain: remote.host.clone(),
            epsv_refused: false,
            eprt_refused: false,
            restart: None,
            passive_attempt,
            active_reply_pending: Arc::new(AtomicBool::new(false)),
            listing_limit: limit,
            listing_caps: remote.listing_caps,
            rtt,
        })
    }

    /// The control connection's round trip as measured at login (see [`Session::connect`]).
    pub fn rtt(&self) -> Duration {
        self.rtt
    }

    /// The control connection speaks TLS 1.3 and has no session ticket left: its next data
    /// connection would need a full handshake, which servers requiring session reuse refuse.
    pub(crate) fn data_resumption_exhausted(&self) -> bool {
        self.resumption.as_ref().is_some_and(|r| r.exhausted())
    }

    /// The address the control connection went to.
    pub(crate) fn control_peer(&self) -> SocketAddr {
        self.control_peer
    }

    /// The server's greeting (its 220 reply), as suppaftp kept it.
    pub(crate) fn greeting(&self) -> Option<String> {
        self.ftp.get_welcome_msg().map(str::to_string)
    }

    /// How the latest data connection was opened: the command that set it up, and for passive
    /// ones the address the server announced and the one connected to (see
    /// [`passive_connector`]).
    pub(crate) fn last_data_connection(&self) -> DataConnectionFacts {
        let attempt = self.attempt();
        let command = match (self.data_mode, self.epsv_refused, self.eprt_refused) {
            (DataMode::Active, _, false) => "EPRT",
            (DataMode::Active, _, true) => "PORT",
            (_, false, _) => "EPSV",
            (_, true, _) => "PASV",
        };
        DataConnectionFacts {
            command,
            announced: attempt.announced,
            connected_to: attempt.target.filter(|_| attempt.connected),
        }
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
        self.read_abandoned_transfer_reply().await?;
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
    ///
    /// The listing's bytes are read here for both data modes, not by suppaftp's `list`/`mlsd`:
    /// those turn any read error into "Response contains an invalid syntax", so a data
    /// connection cut without close_notify was reported as a malformed reply.
    pub async fn list_dir(&mut self, dir: &str) -> Result<(Vec<String>, bool), FtpsError> {
        // CWD first and list without an argument: some servers (vsftpd) glob a LIST argument,
        // so a directory named `[x]` or `a*` would list the wrong thing.
        let d = dir.to_string();
        self.step("CWD", dir, |f| Box::pin(f.cwd(d))).await?;
        let mlsd = self.features.mlsd;
        // A listing never resumes: an offset left by a failed transfer is dropped here.
        self.restart = None;
        let command = if mlsd { "MLSD" } else { "LIST" };
        let mut stream = if self.data_mode == DataMode::Active {
            let t = self
                .open_active(command, dir, command.to_string(), false, None)
                .await?;
            DataStream::Active(t)
        } else {
            let t = self
                .data_command(command, dir, None, move |f| {
                    Box::pin(async move {
                        f.custom_data_command(command, &[Status::AboutToSend, Status::AlreadyOpen])
                            .await
                            .map(|(_, stream)| stream)
                    })
                })
                .await?;
            DataStream::Passive(t)
        };
        let lines = match read_listing_lines(&mut stream, &self.listing_caps, self.timeout).await {
            Ok(lines) => lines,
            Err(ReadListingError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                // Dropped unfinished: the next command reads the transfer's reply first.
                return Err(timeout_err(&self.server, command, dir, self.timeout));
            }
            Err(ReadListingError::Cap(cap)) => {
                // Dropped unread, as after a timeout: a server that streams without end would
                // keep `finish` waiting for its verdict. The error is permanent: the same
                // listing passes the same cap again.
                return Err(FtpsError::Listing {
                    server: self.server.clone(),
                    command,
                    path: dir.to_string(),
                    reason: cap.explain(&self.listing_caps),
                });
            }
            Err(ReadListingError::Io(e)) => {
                // The server's verdict keeps the control connection in step, and may tell more.
                let verdict = self.finish(command, dir, stream).await;
                return Err(listing_read_error(
                    &self.server,
                    command,
                    dir,
                    &e,
                    verdict.err(),
                ));
            }
        };
        self.finish(command, dir, stream).await?;
        check_listing_complete(&self.server, command, dir, lines.len(), self.listing_limit)?;
        Ok((lines, mlsd))
    }

    /// A passive data-connection command: EPSV, or PASV once the server refused EPSV. `restart`
    /// is the REST offset of a STOR or RETR, armed again for the PASV attempt.
    async fn data_command<T>(
        &mut self,
        command: &'static str,
        path: &str,
        restart: Option<u64>,
        f: impl for<'a> Fn(
            &'a mut FtpStream,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, FtpError>> + Send + 'a>,
        >,
    ) -> Result<T, FtpsError> {
        self.read_abandoned_transfer_reply().await?;
        let first = self.try_passive(path, restart, &f).await?;
        // Any 5xx before the stream builder ran answers EPSV itself (vsftpd's cmds_denied says
        // `550 Permission denied.`, others `500`/`502`): REST and the command come after it.
        let epsv_refused = !self.epsv_refused
            && self.attempt().announced.is_none()
            && matches!(&first, Ok(Err(FtpError::UnexpectedResponse(r)))
                if (500..600).contains(&r.status.code()));
        if !epsv_refused {
            return self.passive_outcome(command, path, first);
        }
        if let Ok(Err(FtpError::UnexpectedResponse(r))) = &first {
            tracing::info!(server = %self.server, "EPSV refused (`{}`), using PASV", reply_text(r));
        }
        self.epsv_refused = true;
        self.ftp.set_mode(Mode::Passive);
        let second = self.try_passive(path, restart, &f).await?;
        self.passive_outcome(command, path, second)
    }

    /// One try of a passive data command, with the REST offset armed first.
    async fn try_passive<T>(
        &mut self,
        path: &str,
        restart: Option<u64>,
        f: &impl for<'a> Fn(
            &'a mut FtpStream,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, FtpError>> + Send + 'a>,
        >,
    ) -> Result<Result<Result<T, FtpError>, tokio::time::error::Elapsed>, FtpsError> {
        if let Some(offset) = restart {
            let offset = usize::try_from(offset).unwrap_or(usize::MAX);
            let armed = tokio::time::timeout(self.timeout, self.ftp.resume_transfer(offset)).await;
            self.outcome("REST", path, armed)?;
        }
        if let Ok(mut a) = self.passive_attempt.lock() {
            *a = PassiveAttempt::default();
        }
        Ok(tokio::time::timeout(self.timeout, f(&mut self.ftp)).await)
    }

    fn attempt(&self) -> PassiveAttempt {
        self.passive_attempt.lock().map(|a| *a).unwrap_or_default()
    }

    /// Maps a passive data command's result; a data connection that could not be opened is
    /// reported with the address it went to, and why that address (see [`passive_connector`]).
    fn passive_outcome<T>(
        &self,
        command: &'static str,
        path: &str,
        result: Result<Result<T, FtpError>, tokio::time::error::Elapsed>,
    ) -> Result<T, FtpsError> {
        let attempt = self.attempt();
        let (Some(announced), Some(target), false) =
            (attempt.announced, attempt.target, attempt.connected)
        else {
            return self.outcome(command, path, result);
        };
        let failure = match &result {
            Err(_) => format!("timed out after {}s", self.timeout.as_secs()),
            Ok(Err(FtpError::ConnectionError(e))) => e.to_string(),
            _ => return self.outcome(command, path, result),
        };
        let (source, hint) = if self.epsv_refused {
            passive_failure_text(
                announced,
                target,
                self.control_peer.ip(),
                self.passive_address,
            )
        } else {
            (
                " (the port in the server's EPSV reply)".to_string(),
                FIREWALL_HINT.to_string(),
            )
        };
        Err(FtpsError::Connection {
            server: self.server.clone(),
            command,
            path: path.to_string(),
            reason: format!("cannot open the data connection to {target}{source}: {failure}{hint}"),
        })
    }

    pub(crate) async fn mkdir(&mut self, path: &str) -> Result<(), FtpsError> {
        let p = path.to_string();
        self.step("MKD", path, |f| Box::pin(f.mkdir(p))).await
    }

    pub(crate) async fn delete_file(&mut self, path: &str) -> Result<(), FtpsError> {
        let p = path.to_string();
        self.step("DELE", path, |f| Box::pin(f.rm(p))).await
    }

    pub(crate) async fn remove_dir(&mut self, path: &str) -> Result<(), FtpsError> {
        let p = path.to_string();
        self.step("RMD", path, |f| Box::pin(f.rmdir(p))).await
    }

    pub async fn size(&mut self, path: &str) -> Result<u64, FtpsError> {
        let p = path.to_string();
        self.step("SIZE", path, |f| Box::pin(f.size(p)))
            .await
            .map(|n| n as u64)
    }

    /// A file's modification time from MDTM (UTC by RFC 3659), in nanoseconds since the epoch.
    pub(crate) async fn mdtm(&mut self, path: &str) -> Result<i64, FtpsError> {
        let p = path.to_string();
        self.step("MDTM", path, |f| Box::pin(f.mdtm(p)))
            .await
            .map(|t| t.and_utc().timestamp().saturating_mul(1_000_000_000))
    }

    /// Sets a file's modification time with MFMT (only called where FEAT offers it).
    pub(crate) async fn set_mtime(&mut self, path: &str, unix_secs: i64) -> Result<(), FtpsError> {
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
    pub(crate) async fn remote_sha256(
        &mut self,
        path: &str,
    ) -> Result<Option<[u8; 32]>, FtpsError> {
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

    /// The server's digest of `path` with the command FEAT offers (see
    /// [`crate::remote::digest`]), or `None` if it offers none: evidence for adopting a file.
    pub(crate) async fn remote_digest(
        &mut self,
        path: &str,
    ) -> Result<Option<(DigestAlgorithm, Vec<u8>)>, FtpsError> {
        let Some(command) = self.features.digest else {
            return Ok(None);
        };
        let algorithm = command.algorithm();
        let line = match command {
            DigestCommand::Hash(_) => {
                let opts = format!("OPTS HASH {}", algorithm.name());
                self.step("OPTS HASH", path, |f| {
                    Box::pin(async move {
                        f.custom_command(opts, &[Status::CommandOk])
                            .await
                            .map(|_| ())
                    })
                })
                .await?;
                format!("HASH {path}")
            }
            DigestCommand::X(_) => format!("{} {path}", command.name()),
        };
        let reply = self
            .step(command.name(), path, |f| {
                Box::pin(async move {
                    f.custom_command(line, &[Status::File, Status::RequestedFileActionOk])
                        .await
                })
            })
            .await?;
        let text = String::from_utf8_lossy(&reply.body).to_string();
        match digest_in_reply(&text, algorithm) {
            Some(d) => Ok(Some((algorithm, d))),
            None => Err(FtpsError::Reply {
                server: self.server.clone(),
                command: command.name(),
                path: path.to_string(),
                code: reply.status.code(),
                reply: format!("no {} in the reply `{}`", algorithm.name(), text.trim()),
            }),
        }
    }

    /// Reads the whole of `path` (RETR) into BLAKE3 and nothing else: evidence for adopting a
    /// file when the server offers no digest and the times do not tell. Returns the number of
    /// bytes read and their hash.
    pub(crate) async fn remote_blake3(
        &mut self,
        path: &str,
    ) -> Result<(u64, blake3::Hash), FtpsError> {
        let mut stream = self.retrieve(path).await?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let read = tokio::time::timeout(self.timeout, stream.read(&mut buf)).await;
            let n = match read {
                Err(_) => return Err(timeout_err(&self.server, "RETR", path, self.timeout)),
                Ok(Err(e)) => {
                    return Err(self.connection_err("RETR", path, e.to_string()));
                }
                Ok(Ok(n)) => n,
            };
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n as u64;
        }
        self.finish("RETR", path, stream).await?;
        Ok((total, hasher.finalize()))
    }

    /// Makes the next STOR or RETR start at byte `offset` (REST, sent right before it).
    pub async fn restart_at(&mut self, _path: &str, offset: u64) -> Result<(), FtpsError> {
        self.restart = (offset > 0).then_some(offset);
        Ok(())
    }

    /// Opens a STOR to `path`; write the bytes, then [`Session::finish`].
    pub(crate) async fn store(&mut self, path: &str) -> Result<DataStream, FtpsError> {
        let restart = self.restart.take();
        if self.data_mode == DataMode::Active {
            let t = self
                .open_active("STOR", path, format!("STOR {path}"), true, restart)
                .await?;
            return Ok(DataStream::Active(t));
        }
        let p = path.to_string();
        self.data_command("STOR", path, restart, move |f| {
            let p = p.clone();
            Box::pin(async move { f.put_with_stream(p).await })
        })
        .await
        .map(DataStream::Passive)
    }

    /// Opens a RETR of `path`; read the bytes, then [`Session::finish`].
    pub async fn retrieve(&mut self, path: &str) -> Result<DataStream, FtpsError> {
        let restart = self.restart.take();
        if self.data_mode == DataMode::Active {
            let t = self
                .open_active("RETR", path, format!("RETR {path}"), false, restart)
                .await?;
            return Ok(DataStream::Active(t));
        }
        let p = path.to_string();
        self.data_command("RETR", path, restart, move |f| {
            let p = p.clone();
            Box::pin(async move { f.retr_as_stream(p).await })
        })
        .await
        .map(DataStream::Passive)
    }

    /// Closes a data connection (close_notify, then the server's 226).
    pub async fn finish(
        &mut self,
        command: &'static str,
        path: &str,
        stream: DataStream,
    ) -> Result<(), FtpsError> {
        let finished = match stream {
            DataStream::Passive(stream) => {
                let result = tokio::time::timeout(self.timeout, stream.finish()).await;
                self.outcome(command, path, result)
            }
            DataStream::Active(mut transfer) => {
                let Some(socket) = transfer.take_socket() else {
                    return Ok(());
                };
                let result = tokio::time::timeout(
                    self.timeout,
                    finish_active(&mut self.ftp, socket, transfer.upload),
                )
                .await;
                if result.is_err() {
                    // The reply may still come: the next command reads it first.
                    self.active_reply_pending.store(true, Ordering::Release);
                }
                self.outcome(command, path, result)
            }
        };
        if finished.is_ok() {
            self.data_transfer_completed();
        }
        finished
    }

    /// Tells the TLS session's resumption count that the server completed a transfer.
    fn data_transfer_completed(&self) {
        if let Some(r) = &self.resumption {
            r.data_transfer_completed();
        }
    }

    // ---- active mode (see data_channel)

    /// Reads the reply of an active transfer that was dropped without [`Session::finish`], so
    /// the next command's reply is its own. A failed transfer's reply is only logged: whoever
    /// dropped it has already given up on it.
    async fn read_abandoned_transfer_reply(&mut self) -> Result<(), FtpsError> {
        if !self.active_reply_pending.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let result =
            tokio::time::timeout(self.timeout, self.ftp.read_response_in(TRANSFER_COMPLETE)).await;
        match result {
            Ok(Err(FtpError::UnexpectedResponse(r))) => {
                tracing::warn!(server = %self.server, "an abandoned transfer ended with `{}`", reply_text(&r));
                Ok(())
            }
            other => self.outcome("transfer reply", "", other).map(|_| ()),
        }
    }

    /// Opens an active-mode data connection for `line` (`STOR path`, `RETR path`, `LIST`):
    /// listen, EPRT (PORT if refused), REST, the command, then accept the server's connection
    /// and, over FTPS, shake hands on it as the TLS client, resuming the control session.
    async fn open_active(
        &mut self,
        command: &'static str,
        path: &str,
        line: String,
        upload: bool,
        restart: Option<u64>,
    ) -> Result<ActiveTransfer, FtpsError> {
        self.read_abandoned_transfer_reply().await?;
        let (listener, listening) = self.listen(command, path)?;
        self.announce_listener(path, listening).await?;
        if let Some(offset) = restart {
            self.rest_active(path, offset).await?;
        }
        self.start_active(command, path, line, listening).await?;
        // From here on the server owes a completion reply, whatever happens to the connection.
        let pending = self.active_reply_pending.clone();
        let connected = match self.accept_server(command, path, listener, listening).await {
            Ok(tcp) => self.data_handshake(command, path, tcp).await,
            Err(e) => Err(e),
        };
        let socket = connected.inspect_err(|_| pending.store(true, Ordering::Release))?;
        Ok(ActiveTransfer {
            socket: Some(socket),
            upload,
            reply_pending: pending,
        })
    }

    /// A listener for the server's data connection, on the control connection's local address
    /// and at a port within `remote.active_ports`; with the address it listens on.
    fn listen(
        &self,
        command: &'static str,
        path: &str,
    ) -> Result<(tokio::net::TcpListener, SocketAddr), FtpsError> {
        let local_ip = self.control_local.ip();
        let listener = data_channel::bind_listener(local_ip, self.active_ports.as_ref())
            .and_then(|l| l.local_addr().map(|a| (l, a)));
        listener.map_err(|e| {
            self.connection_err(
                command,
                path,
                format!("cannot listen on {local_ip} for the server's data connection: {e}"),
            )
        })
    }

    /// REST before an active STOR or RETR.
    async fn rest_active(&mut self, path: &str, offset: u64) -> Result<(), FtpsError> {
        let rest = format!("REST {offset}");
        self.step("REST", path, move |f| {
            Box::pin(async move {
                f.custom_command(rest, &[Status::RequestFilePending])
                    .await
                    .map(|_| ())
            })
        })
        .await
    }

    /// Sends the transfer command of an active data connection; a 425 means the server could
    /// not reach the listener at `listening`.
    async fn start_active(
        &mut self,
        command: &'static str,
        path: &str,
        line: String,
        listening: SocketAddr,
    ) -> Result<(), FtpsError> {
        let opened = tokio::time::timeout(
            self.timeout,
            self.ftp
                .custom_command(line, &[Status::AboutToSend, Status::AlreadyOpen]),
        )
        .await;
        match opened {
            Ok(Err(FtpError::UnexpectedResponse(r)))
                if r.status == Status::CannotOpenDataConnection =>
            {
                Err(self.connection_err(
                    command,
                    path,
                    format!(
                        "the server could not connect to {listening} for the data connection: `{}`{ACTIVE_HINT}",
                        reply_text(&r)
                    ),
                ))
            }
            other => self.outcome(command, path, other).map(|_| ()),
        }
    }

    /// Waits for the server's data connection on `listener`, which closes once it is taken.
    async fn accept_server(
        &self,
        command: &'static str,
        path: &str,
        listener: tokio::net::TcpListener,
        listening: SocketAddr,
    ) -> Result<tokio::net::TcpStream, FtpsError> {
        let control_peer = self.control_peer.ip().to_canonical();
        let server = &self.server;
        let accept = async {
            loop {
                match listener.accept().await {
                    Ok((tcp, from)) if from.ip().to_canonical() == control_peer => break Ok(tcp),
                    // Anyone may reach the listener; only the server's connection is taken.
                    Ok((_, from)) => {
                        tracing::warn!(%server, "ignored a data connection from {from}, not the server")
                    }
                    Err(e) => break Err(e),
                }
            }
        };
        match tokio::time::timeout(self.timeout, accept).await {
            Ok(Ok(tcp)) => Ok(tcp),
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("not within {}s", self.timeout.as_secs()),
                };
                Err(self.connection_err(
                    command,
                    path,
                    format!("the server did not connect to {listening} for the data connection: {why}{ACTIVE_HINT}"),
                ))
            }
        }
    }

    /// Over FTPS, the TLS handshake on an accepted data connection, as the TLS client
    /// resuming the control connection's session; plain FTP keeps the TCP stream.
    async fn data_handshake(
        &self,
        command: &'static str,
        path: &str,
        tcp: tokio::net::TcpStream,
    ) -> Result<AsyncDataStream<FlushingTlsStream>, FtpsError> {
        let Some(connector) = &self.data_tls else {
            return Ok(AsyncDataStream::Tcp(tcp));
        };
        match tokio::time::timeout(self.timeout, connector.connect(&self.tls_domain, tcp)).await {
            Ok(Ok(tls)) => Ok(AsyncDataStream::Ssl(Box::new(tls))),
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("timed out after {}s", self.timeout.as_secs()),
                };
                Err(self.connection_err(
                    command,
                    path,
                    format!("TLS handshake on the data connection failed: {why}"),
                ))
            }
        }
    }

    /// Tells the server where to connect: EPRT (RFC 2428), or PORT once the server refused
    /// EPRT (IPv4 only; PORT cannot name an IPv6 address).
    async fn announce_listener(&mut self, path: &str, at: SocketAddr) -> Result<(), FtpsError> {
        let v4 = match at {
            SocketAddr::V4(v4) if self.eprt_refused => v4,
            _ => {
                let eprt = format!("EPRT {}", data_channel::eprt_argument(at));
                let result = tokio::time::timeout(
                    self.timeout,
                    self.ftp.custom_command(eprt, &[Status::CommandOk]),
                )
                .await;
                match (result, at) {
                    (Ok(Err(FtpError::UnexpectedResponse(r))), SocketAddr::V4(v4))
                        if (500..600).contains(&r.status.code()) =>
                    {
                        tracing::info!(server = %self.server, "EPRT refused (`{}`), using PORT", reply_text(&r));
                        self.eprt_refused = true;
                        v4
                    }
                    (other, _) => return self.outcome("EPRT", path, other).map(|_| ()),
                }
            }
        };
        let port = format!("PORT {}", data_channel::port_argument(v4));
        let result = tokio::time::timeout(
            self.timeout,
            self.ftp.custom_command(port, &[Status::CommandOk]),
        )
        .await;
        self.outcome("PORT", path, result).map(|_| ())
    }

    fn connection_err(&self, command: &'static str, path: &str, reason: String) -> FtpsError {
        FtpsError::Connection {
            server: self.server.clone(),
            command,
            path: path.to_string(),
            reason,
        }
    }

    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.ftp.quit()).await;
    }
}

/// What to try when a passive data connection cannot be opened.
const FIREWALL_HINT: &str = "; a firewall between ferrysync and the server may block the server's passive ports: have them opened, or try remote.data_mode: active";

/// What to try when the server cannot connect to ferrysync in active mode.
const ACTIVE_HINT: &str = "; active mode needs the server to reach this address and port: allow inbound connections (remote.active_ports narrows the ports to open), or use remote.data_mode: passive";

/// Where a failed PASV data connection went and why (for the error), and what to try.
fn passive_failure_text(
    announced: SocketAddr,
    target: SocketAddr,
    control_peer: std::net::IpAddr,
    policy: PassiveAddress,
) -> (String, String) {
    let same = |a: std::net::IpAddr, b: std::net::IpAddr| a.to_canonical() == b.to_canonical();
    if !same(target.ip(), announced.ip()) {
        return (
            format!(
                " (the server's PASV reply named {}, replaced by the control connection's address: remote.passive_address: {})",
                announced.ip(),
                policy_name(policy)
            ),
            if data_channel::is_unroutable(announced.ip()) {
                FIREWALL_HINT.to_string()
            } else {
                format!("{FIREWALL_HINT}; if this server's data connections are served by another host, set remote.passive_address: server")
            },
        );
    }
    let source = " (the address in the server's PASV reply)".to_string();
    if same(announced.ip(), control_peer) {
        return (source, FIREWALL_HINT.to_string());
    }
    // passive_address: server, and the reply names another address.
    let hint = if data_channel::is_unroutable(announced.ip()) {
        format!(
            "; {} is a private or unroutable address, as a server behind NAT announces it: set remote.passive_address: auto to use the control connection's address {control_peer}",
            announced.ip()
        )
    } else {
        format!(
            "; if the server is behind NAT, set remote.passive_address: auto to use the control connection's address {control_peer}{FIREWALL_HINT}"
        )
    };
    (source, hint)
}

fn policy_name(p: PassiveAddress) -> &'static str {
    match p {
        PassiveAddress::Auto => "auto",
        PassiveAddress::Control => "control",
        PassiveAddress::Server => "server",
    }
}

/// Makes passive data connections EPSV (PASV once the server refuses it) through
/// [`passive_connector`]; returns the record of each attempt the connector keeps.
fn with_passive_builder(
    mut ftp: FtpStream,
    control_peer: SocketAddr,
    policy: PassiveAddress,
    tls: &TlsContext,
    server: &str,
) -> (FtpStream, Arc<Mutex<PassiveAttempt>>) {
    ftp.set_mode(Mode::ExtendedPassive);
    let attempt = Arc::new(Mutex::new(PassiveAttempt::default()));
    let ftp = ftp.passive_stream_builder(passive_connector(
        control_peer,
        policy,
        attempt.clone(),
        tls.passive_substitution_note(),
        server.to_string(),
    ));
    (ftp, attempt)
}

/// The stream builder of passive data connections: connects where [`data_channel::passive_target`]
/// says, records the attempt for errors, and logs a substituted address once per run.
fn passive_connector(
    control_peer: SocketAddr,
    policy: PassiveAddress,
    attempt: Arc<Mutex<PassiveAttempt>>,
    noted: Arc<AtomicBool>,
    server: String,
) -> impl Fn(
    SocketAddr,
) -> Pin<
    Box<dyn std::future::Future<Output = Result<tokio::net::TcpStream, FtpError>> + Send + Sync>,
> + Send
       + Sync
       + 'static {
    move |announced: SocketAddr| {
        let ip = data_channel::passive_target(announced.ip(), control_peer.ip(), policy);
        let target = SocketAddr::new(ip, announced.port());
        if ip.to_canonical() != announced.ip().to_canonical() {
            if noted.swap(true, Ordering::Relaxed) {
                tracing::debug!(%server, "PASV named {}, connecting to {target}", announced.ip());
            } else {
                tracing::info!(
                    %server,
                    "the server's PASV reply names {}, not the control connection's address; connecting to {} instead, with the reply's port (remote.passive_address: {}; `server` would use the reply's address)",
                    announced.ip(),
                    control_peer.ip(),
                    policy_name(policy)
                );
            }
        }
        if let Ok(mut a) = attempt.lock() {
            *a = PassiveAttempt {
                announced: Some(announced),
                target: Some(target),
                connected: false,
            };
        }
        let attempt = attempt.clone();
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(target)
                .await
                .map_err(FtpError::ConnectionError)?;
            let _ = tcp.set_nodelay(true);
            if let Ok(mut a) = attempt.lock() {
                a.connected = true;
            }
            Ok(tcp)
        })
    }
}

/// Closes an active data connection and reads the server's verdict on the transfer, as
/// suppaftp's `TransferStream::finish` does for passive ones: close_notify first; after an
/// upload over TLS, wait for the server's close (unread TLS 1.3 tickets would otherwise make
/// the OS reset the connection and the server report a failed upload); then the reply.
async fn finish_active(
    ftp: &mut FtpStream,
    mut socket: AsyncDataStream<FlushingTlsStream>,
    upload: bool,
) -> Result<(), FtpError> {
    let shutdown = socket.shutdown().await;
    if shutdown.is_ok() && upload && matches!(socket, AsyncDataStream::Ssl(_)) {
        let mut buf = [0u8; 1024];
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
        })
        .await;
    }
    drop(socket);
    let reply = ftp.read_response_in(TRANSFER_COMPLETE).await.map(|_| ());
    if upload {
        shutdown.map_err(FtpError::ConnectionError)?;
    }
    reply
}

/// A listing whose data connection failed while it was read (see
/// [`FlushingTlsStream`](crate::remote::tls::FlushingTlsStream) for one cut without
/// close_notify): a connection error, so transient, with the server's verdict on the transfer
/// where it reported a failure.
fn listing_read_error(
    server: &str,
    command: &'static str,
    dir: &str,
    e: &std::io::Error,
    verdict: Option<FtpsError>,
) -> FtpsError {
    let verdict = match verdict {
        Some(FtpsError::Reply { reply, .. }) => format!(" (the server replied `{reply}`)"),
        _ => String::new(),
    };
    FtpsError::Connection {
        server: server.to_string(),
        command,
        path: dir.to_string(),
        reason: format!("reading the listing failed: {e}{verdict}"),
    }
}

/// The commands whose reply the audit record keeps (see `state/audit.rs`): the reply that
/// confirmed a file's change, as the server worded it.
impl Session {
    /// RNFR + RNTO; returns the server's reply to RNTO (e.g. `250 Rename successful.`).
    pub(crate) async fn rename_replied(
        &mut self,
        from: &str,
        to: &str,
    ) -> Result<String, FtpsError> {
        let (rnfr, rnto) = (format!("RNFR {from}"), format!("RNTO {to}"));
        self.step("RNFR/RNTO", to, |f| {
            Box::pin(async move {
                f.custom_command(rnfr, &[Status::RequestFilePending])
                    .await?;
                // Some non-compliant servers reply 200 instead of 250 (as suppaftp allows).
                f.custom_command(rnto, &[Status::RequestedFileActionOk, Status::CommandOk])
                    .await
            })
        })
        .await
        .map(|r| reply_text(&r))
    }

    /// DELE; returns the server's reply (e.g. `250 Delete operation successful.`).
    pub(crate) async fn delete_file_replied(&mut self, path: &str) -> Result<String, FtpsError> {
        let dele = format!("DELE {path}");
        self.step("DELE", path, |f| {
            Box::pin(async move {
                f.custom_command(dele, &[Status::RequestedFileActionOk, Status::CommandOk])
                    .await
            })
        })
        .await
        .map(|r| reply_text(&r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passive_failures_say_which_address_and_what_to_set() {
        let sock = |s: &str| s.parse::<SocketAddr>().unwrap();
        let peer: std::net::IpAddr = "203.0.114.5".parse().unwrap();
        // passive_address: server, PASV naming a private address: suggest auto.
        let (source, hint) = passive_failure_text(
            sock("10.0.0.5:50001"),
            sock("10.0.0.5:50001"),
            peer,
            PassiveAddress::Server,
        );
        assert!(source.contains("PASV reply"), "{source}");
        assert!(
            hint.contains("10.0.0.5 is a private or unroutable address"),
            "{hint}"
        );
        assert!(hint.contains("passive_address: auto"), "{hint}");
        // passive_address: server, a routable address elsewhere: NAT is possible, so auto is
        // suggested too.
        let (_, hint) = passive_failure_text(
            sock("198.51.101.9:50001"),
            sock("198.51.101.9:50001"),
            peer,
            PassiveAddress::Server,
        );
        assert!(hint.contains("passive_address: auto"), "{hint}");
        assert!(hint.contains("passive ports"), "{hint}");
        // Substituted already (auto): the firewall is the suspect, or a separate data host.
        let (source, hint) = passive_failure_text(
            sock("198.51.101.9:50001"),
            sock("203.0.114.5:50001"),
            peer,
            PassiveAddress::Auto,
        );
        assert!(source.contains("named 198.51.101.9, replaced"), "{source}");
        assert!(hint.contains("passive ports"), "{hint}");
        assert!(hint.contains("passive_address: server"), "{hint}");
        // Substituted a private address (NAT): another data host is not the likely story.
        let (_, hint) = passive_failure_text(
            sock("10.0.0.5:50001"),
            sock("203.0.114.5:50001"),
            peer,
            PassiveAddress::Auto,
        );
        assert_eq!(hint, FIREWALL_HINT);
        // The reply named the control connection's own address: only the firewall is left.
        let (_, hint) = passive_failure_text(
            sock("203.0.114.5:50001"),
            sock("203.0.114.5:50001"),
            peer,
            PassiveAddress::Auto,
        );
        assert_eq!(hint, FIREWALL_HINT);
    }

    /// A connection to the in-process server serving `dir/server`, as `listing` asks.
    async fn loopback_session(dir: &std::path::Path, listing: &str) -> Session {
        let server = crate::loopback::start(crate::loopback::LoopbackOptions {
            root: dir.join("server"),
            cert_dir: dir.join("tls"),
            user: "u".into(),
            password: "p".into(),
            port: None,
            tls: true,
        })
        .await
        .unwrap();
        let yaml = format!(
            "local: {}\nremote:\n  host: 127.0.0.1\n  port: {}\n  path: /\n  user: u\n  password: p\n  listing: {listing}\n  tls:\n    ca_file: {}\n",
            dir.join("local").display(),
            server.port,
            server.cert_pem_path.display()
        );
        let job = crate::config::parse_job(&dir.join("t.yaml"), &yaml).unwrap();
        let tls = crate::remote::tls::TlsContext::new(&job.remote.tls).unwrap();
        Session::connect(&job.remote, &tls).await.unwrap()
    }

    #[tokio::test]
    async fn listings_are_read_over_passive_data_connections() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("server/sub")).unwrap();
        std::fs::write(dir.path().join("server/sub/a b.txt"), b"12345").unwrap();
        for (listing, mlsd) in [("auto", true), ("list", false)] {
            let mut session = loopback_session(dir.path(), listing).await;
            let (lines, is_mlsd) = session.list_dir("/sub").await.unwrap();
            assert_eq!(is_mlsd, mlsd);
            let names: Vec<String> = lines
                .iter()
                .filter_map(|l| crate::remote::listing::parse_line(l, mlsd))
                .map(|e| e.name)
                .collect();
            assert_eq!(names, vec!["a b.txt".to_string()], "{lines:?}");
            // The control connection is in step: the next command gets its own reply.
            assert_eq!(session.size("/sub/a b.txt").await.unwrap(), 5);
            session.quit().await;
        }
    }

    #[tokio::test]
    async fn a_listing_past_the_jobs_entry_cap_is_a_permanent_error_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("server/many")).unwrap();
        for i in 0..5 {
            std::fs::write(dir.path().join(format!("server/many/f{i}")), b"x").unwrap();
        }
        for listing in ["auto", "list"] {
            // The job's remote section, with the cap below the directory's 5 entries.
            let remote = format!("{listing}\n  max_listing_entries: 4");
            let mut session = loopback_session(dir.path(), &remote).await;
            let e = session.list_dir("/many").await.unwrap_err();
            assert!(matches!(e, FtpsError::Listing { .. }), "{e:?}");
            assert!(!e.is_transient(), "{e}");
            let text = e.to_string();
            assert!(
                text.contains(" /many: the listing has more entries than 4, the cap remote.max_listing_entries sets"),
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn a_listing_cut_without_close_notify_is_a_transient_connection_error() {
        let (_control, mut data) =
            crate::remote::tls::test_support::cut_connections(b"-rw-r--r-- 1 u g 5 Jan").await;
        let e =
            match read_listing_lines(&mut data, &ListingCaps::default(), Duration::from_secs(10))
                .await
            {
                Err(ReadListingError::Io(e)) => e,
                other => panic!("{other:?}"),
            };
        let verdict = FtpsError::Reply {
            server: "u@h:21".into(),
            command: "LIST",
            path: "/in".into(),
            code: 426,
            reply: "426 Failure reading network stream.".into(),
        };
        let e = listing_read_error("u@h:21", "LIST", "/in", &e, Some(verdict));
        assert!(e.is_transient(), "{e:?}");
        assert!(matches!(e, FtpsError::Connection { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "u@h:21: LIST /in: reading the listing failed: the server closed the data connection without TLS close_notify, so the transfer may be truncated (the server replied `426 Failure reading network stream.`)"
        );
        assert!(!e.to_string().contains("invalid syntax"), "{e}");
    }

    #[tokio::test]
    async fn a_listed_name_that_is_not_utf8_is_refused_not_renamed() {
        for (raw, mlsd) in [
            (
                &b"-rw-r--r-- 1 u g 5 Jan 01 12:00 caf\xe9.txt\r\n"[..],
                false,
            ),
            (
                &b"type=file;size=5;modify=20201019151930; caf\xe9.txt\r\n"[..],
                true,
            ),
        ] {
            let lines = read_listing_lines(raw, &ListingCaps::default(), Duration::from_secs(1))
                .await
                .unwrap();
            let entry = crate::remote::listing::parse_line(&lines[0], mlsd).unwrap();
            let e = crate::model::snapshot::check_remote_name("/in", &entry.name).unwrap_err();
            assert!(e.reason.contains("not valid UTF-8 on the server"), "{e}");
        }
    }

    mod fuzz {
        //! Fuzz targets (proptest): a listing's bytes and a PASV reply's address come from the
        //! server.

        use proptest::prelude::*;

        use super::super::*;
        use crate::remote::listing::parse_line;

        /// A plain FTP server on 127.0.0.1 for one client: greets with `greeting`, then answers
        /// the first command with `reply` and closes. Returns its port.
        async fn one_reply_server(greeting: Vec<u8>, reply: Vec<u8>) -> u16 {
            use tokio::io::AsyncBufReadExt;
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = l.local_addr().unwrap().port();
            tokio::spawn(async move {
                let Ok((tcp, _)) = l.accept().await else {
                    return;
                };
                let mut s = tokio::io::BufReader::new(tcp);
                let _ = s.get_mut().write_all(&greeting).await;
                let mut line = String::new();
                // A greeting without a line end leaves the client waiting: answer after a moment.
                let _ =
                    tokio::time::timeout(Duration::from_millis(100), s.read_line(&mut line)).await;
                let _ = s.get_mut().write_all(&reply).await;
                let _ = s.get_mut().shutdown().await;
            });
            port
        }

        /// suppaftp reads the greeting and the reply to EPSV or PASV; ferrysync's connector
        /// then picks the address. Whatever the server sends: no panic, an answer within the
        /// timeout, and a data connection only ever to the control connection's peer.
        fn passive_reply(
            greeting: Vec<u8>,
            reply: Vec<u8>,
            extended: bool,
        ) -> Result<(), TestCaseError> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let targets: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
            let seen = targets.clone();
            rt.block_on(async move {
                let port = one_reply_server(greeting, reply).await;
                let run = async {
                    let ftp = suppaftp::tokio::AsyncFtpStream::connect(("127.0.0.1", port)).await?;
                    let peer: SocketAddr = ([127, 0, 0, 1], port).into();
                    let mut ftp = ftp.passive_stream_builder(move |announced: SocketAddr| {
                        let ip = data_channel::passive_target(
                            announced.ip(),
                            peer.ip(),
                            PassiveAddress::Auto,
                        );
                        seen.lock()
                            .unwrap()
                            .push(SocketAddr::new(ip, announced.port()));
                        Box::pin(async {
                            Err(FtpError::ConnectionError(
                                std::io::ErrorKind::ConnectionRefused.into(),
                            ))
                        })
                    });
                    ftp.set_mode(if extended {
                        Mode::ExtendedPassive
                    } else {
                        Mode::Passive
                    });
                    ftp.list(None).await
                };
                tokio::time::timeout(Duration::from_secs(10), run).await
            })
            .map_err(|_| TestCaseError::fail("no answer within 10 s"))?
            .ok();
            for t in targets.lock().unwrap().iter() {
                prop_assert_eq!(t.ip(), std::net::IpAddr::from([127, 0, 0, 1]));
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(crate::fuzz_config(64))]

            #[test]
            fn any_bytes_as_a_greeting_or_a_passive_reply(
                greeting in prop_oneof![Just(b"220 hi\r\n".to_vec()), proptest::collection::vec(any::<u8>(), 0..300)],
                reply in proptest::collection::vec(any::<u8>(), 0..300), extended in any::<bool>(),
            ) {
                passive_reply(greeting, reply, extended)?;
            }
        }

        proptest! {
            #![proptest_config(crate::fuzz_config(128))]

            #[test]
            fn hostile_pasv_and_epsv_replies(
                nums in proptest::collection::vec("[0-9]{1,6}", 0..8), code in "(227|229|2[0-9][0-9]|[0-9]{1,4})",
                sep in "[-,|() ]{1,3}", multi in any::<bool>(), tail in "[ -~]{0,20}",
            ) {
                let body = nums.join(&sep);
                let dash = if multi { "-" } else { " " };
                let reply = format!("{code}{dash}Entering Passive Mode ({body}){tail}\r\n{code} ({body})\r\n(|||{body}|)\r\n");
                passive_reply(b"220 hi\r\n".to_vec(), reply.clone().into_bytes(), true)?;
                passive_reply(b"220 hi\r\n".to_vec(), reply.into_bytes(), false)?;
            }
        }

        proptest! {
            #![proptest_config(crate::fuzz_config(512))]

            /// Any bytes as a listing: lines without a line break, each parsed without a panic,
            /// and every name the parser returns either refused or a single safe component.
            #[test]
            fn any_bytes_as_a_listing(bytes in proptest::collection::vec(
                prop_oneof![any::<u8>(), Just(b'\n'), Just(b'\r'), Just(b' '), Just(b'/')], 0..600),
                mlsd in any::<bool>()) {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap();
                let lines = rt
                    .block_on(read_listing_lines(
                        &bytes[..],
                        &crate::config::ListingCaps::default(),
                        Duration::from_secs(1),
                    ))
                    .unwrap();
                for line in lines {
                    prop_assert!(!line.contains('\n') && !line.is_empty());
                    if let Some(e) = parse_line(&line, mlsd) {
                        if crate::model::snapshot::check_remote_name("/d", &e.name).is_ok() {
                            prop_assert!(!e.name.contains(['/', '\\', '\0', '\r', '\n']));
                            prop_assert!(e.name != "." && e.name != "..");
                        }
                    }
                }
            }

            /// Whatever address a PASV reply names, `auto` and `control` connect to the control
            /// connection's peer (no FTP bounce), and `server` to the address named.
            #[test]
            fn a_pasv_address_never_picks_the_data_host_under_auto(
                octets in any::<[u8; 4]>(), port in any::<u16>(), peer in any::<std::net::IpAddr>(),
            ) {
                let named = std::net::IpAddr::from(octets);
                for policy in [PassiveAddress::Auto, PassiveAddress::Control] {
                    prop_assert_eq!(data_channel::passive_target(named, peer, policy), peer);
                }
                prop_assert_eq!(data_channel::passive_target(named, peer, PassiveAddress::Server), named);
                let _ = data_channel::is_unroutable(named);
                let v4 = std::net::SocketAddrV4::new(octets.into(), port);
                let arg = data_channel::port_argument(v4);
                prop_assert_eq!(arg.split(',').count(), 6);
            }
        }
    }
}
