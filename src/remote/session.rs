//! FTPS connections: TLS set-up and verification, login, the server's features, and the
//! commands the rest of ferrysync needs, each with a timeout and an error that names the
//! server, the command, the path and the server's reply.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use suppaftp::tokio::{AsyncDataStream, AsyncTlsConnector};
use suppaftp::types::Response;
use suppaftp::{FtpError, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{DataMode, ListingCaps, PassiveAddress, Remote, Security};
use crate::remote::connect::{Control, Dialer, FtpStream};
use crate::remote::data_channel::{self, DataTransfer};
use crate::remote::digest::{digest_in_reply, DigestAlgorithm, DigestCommand};
use crate::remote::error::{map_err, reply_text, timeout_err, FtpsError};
use crate::remote::features::{
    check_listing_complete, listing_limit, sha256_in_reply, Features, Sha256Command,
};
use crate::remote::listing_read::{read_listing_lines, ReadListingError};
use crate::remote::passive::{self, DataOpenError, OpenedAhead, PassiveAttempt};
use crate::remote::pipelined::{self, Pipelined};
use crate::remote::tls::{ControlProgress, FlushingTlsStream, TlsConnector, TlsContext};
use futures_util::FutureExt;

/// The replies that end a successful transfer.
const TRANSFER_COMPLETE: &[Status] =
    &[Status::ClosingDataConnection, Status::RequestedFileActionOk];

/// The data connection of a STOR, RETR or listing, passive or active, opened by ferrysync (see
/// [`crate::remote::passive`] and [`data_channel`]). Read or write it, then close it with
/// [`Session::finish`].
pub use crate::remote::data_channel::DataTransfer as DataStream;

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
    /// A replaced PASV address was logged once this run.
    passive_noted: Arc<AtomicBool>,
    /// Over TLS, where command lines are written ahead of their replies (see
    /// [`Session::pipelined`]); `None` on plain FTP, which sends one command at a time.
    ahead: Option<Arc<ControlProgress>>,
    /// Run-wide: the server takes commands sent together concurrently, so none are.
    one_at_a_time: Arc<AtomicBool>,
    /// The next passive data connection, asked for (EPSV) in the flight of an earlier
    /// transfer's last commands and opening since.
    opened_ahead: Option<OpenedAhead>,
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
        Session::connect_telling(remote, tls, None).await
    }

    /// [`Session::connect`], telling `secured` once the control connection is set up (TLS,
    /// PBSZ 0 and PROT P answered) and the login on its way (sent with PROT P where commands
    /// are written ahead), before the server has checked the password.
    pub async fn connect_telling(
        remote: &Remote,
        tls: &TlsContext,
        secured: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Result<Session, FtpsError> {
        let dialer = Dialer::new(remote);
        let addr = dialer.resolve().await?;
        // Over TLS, commands whose order is fixed go out together (see `pipelined`), unless
        // this run found the server takes them concurrently; the login's with PROT P.
        let one_at_a_time = tls.one_command_at_a_time();
        let pipelined = remote.security != Security::None && !one_at_a_time.load(Ordering::Relaxed);
        let flight = pipelined.then(|| dialer.login_flight()).transpose()?;
        let Control {
            mut ftp,
            resumption,
            data_tls,
        } = dialer.open(addr, tls, flight.as_deref()).await?;
        let progress = data_tls.as_ref().map(TlsConnector::control_progress);
        let ahead = progress.clone().filter(|_| pipelined);
        if let Some(tell) = secured {
            let _ = tell.send(());
        }
        dialer.login_ahead(&mut ftp, ahead.as_deref()).await?;
        let control_local = dialer.keep_alive(&ftp).await?;
        let (features, feat_rtt) = dialer.features_ahead(&mut ftp, ahead.as_deref()).await?;
        // The fastest reply of the login over TLS (PBSZ 0, PROT P with USER and PASS), or
        // FEAT's.
        let rtt = progress
            .and_then(|p| p.measured_rtt())
            .map_or(feat_rtt, |r| r.min(feat_rtt));
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
            passive_attempt: Arc::new(Mutex::new(PassiveAttempt::default())),
            passive_noted: tls.passive_substitution_note(),
            ahead,
            one_at_a_time,
            opened_ahead: None,
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
        // A data connection opened ahead already holds its ticket.
        self.opened_ahead.is_none() && self.resumption.as_ref().is_some_and(|r| r.exhausted())
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
        self.list_dir_with(dir, true).await
    }

    /// [`Session::list_dir`] of a directory that may well not be there (a remote root before
    /// the first run, an archive folder): CWD alone, then EPSV. A refused CWD sent with its
    /// EPSV leaves the server a passive port open that nothing connects to; libunftp then now
    /// and again hands the next listing's data to that port, and the listing waits until it
    /// times out (seen in 1 run of 15 of the archive tests).
    pub async fn list_dir_if_there(&mut self, dir: &str) -> Result<(Vec<String>, bool), FtpsError> {
        self.list_dir_with(dir, false).await
    }

    async fn list_dir_with(
        &mut self,
        dir: &str,
        epsv_with_cwd: bool,
    ) -> Result<(Vec<String>, bool), FtpsError> {
        // CWD first and list without an argument: some servers (vsftpd) glob a LIST argument,
        // so a directory named `[x]` or `a*` would list the wrong thing.
        // In passive mode the EPSV goes out with the CWD, in one flight.
        let mut cwd = vec![Pipelined::new(
            "CWD",
            dir,
            format!("CWD {dir}"),
            &[Status::CommandOk, Status::RequestedFileActionOk],
        )];
        if epsv_with_cwd && self.opens_ahead() {
            cwd.push(Pipelined::epsv());
        }
        let mut replies = self.pipelined(cwd).await?.into_iter();
        if let Some(cwd) = replies.next() {
            cwd?;
        }
        if let Some(epsv) = replies.next() {
            self.open_ahead(epsv);
        }
        let mlsd = self.features.mlsd;
        // A listing never resumes: an offset left by a failed transfer is dropped here.
        self.restart = None;
        let command = if mlsd { "MLSD" } else { "LIST" };
        let mut stream = if self.data_mode == DataMode::Active {
            self.open_active(command, dir, command.to_string(), false, None)
                .await?
        } else {
            self.open_passive(command, dir, command.to_string(), false, None)
                .await?
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

    fn attempt(&self) -> PassiveAttempt {
        self.passive_attempt.lock().map(|a| *a).unwrap_or_default()
    }

    /// A passive data connection that could not be opened: the address it went to, and why
    /// that address (see [`data_channel::passive_target`]).
    fn passive_failure(&self, command: &'static str, path: &str, failure: String) -> FtpsError {
        let attempt = self.attempt();
        let (Some(announced), Some(target)) = (attempt.announced, attempt.target) else {
            return self.connection_err(command, path, failure);
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
        self.connection_err(
            command,
            path,
            format!("cannot open the data connection to {target}{source}: {failure}{hint}"),
        )
    }

    // ---- commands written ahead of their replies

    /// Sends `commands` in one flight and reads their replies: one round trip for all of them.
    /// Only for commands whose order is fixed and which the server takes one after the other
    /// whatever the replies, with success replies that tell them apart (see
    /// [`pipelined::attribute`]): each reply is still checked, a failed command is its entry's
    /// error, and a later command may then fail too, as RNTO does after a refused RNFR. Plain
    /// FTP sends them one at a time.
    ///
    /// The outer error is the control connection's: a timeout, a closed connection, a reply
    /// that does not parse. The connection is out of step then, as after any failed command.
    pub(crate) async fn pipelined(
        &mut self,
        commands: Vec<Pipelined>,
    ) -> Result<Vec<Result<Response, FtpsError>>, FtpsError> {
        self.read_abandoned_transfer_reply().await?;
        let mut lines = Vec::new();
        for c in &commands {
            lines.extend_from_slice(&c.encoded().map_err(|e| self.err(c.name, &c.path, e))?);
        }
        let Some(ahead) = &self.ahead else {
            return self.pipelined_one_at_a_time(&commands).await;
        };
        ahead.write_ahead(&lines);
        let mut replies = Vec::with_capacity(commands.len());
        for c in &commands {
            let read =
                tokio::time::timeout(self.timeout, self.ftp.read_response_in(c.expect)).await;
            replies.push(self.reply_of(c, read)?.unwrap_or_else(|r| r));
        }
        let expects: Vec<&[Status]> = commands.iter().map(|c| c.expect).collect();
        let (attributed, reordered) = pipelined::attribute(&expects, replies);
        if reordered {
            // A server that answers out of order works on commands concurrently (libunftp),
            // and such a server also took an RNTO before its RNFR was done, or answered
            // neither (its RNFR task and the RNTO waited for each other): one command at a
            // time from now on, for the whole run.
            tracing::info!(server = %self.server, "the server answered commands sent together out of order (matched by their reply codes); sending it one command at a time from now on");
            self.ahead = None;
            self.one_at_a_time.store(true, Ordering::Relaxed);
        }
        Ok(attributed
            .into_iter()
            .zip(&commands)
            .map(|(r, c)| r.map_err(|r| self.refused(c, r)))
            .collect())
    }

    /// The commands of a batch one at a time, each after the reply to the one before.
    async fn pipelined_one_at_a_time(
        &mut self,
        commands: &[Pipelined],
    ) -> Result<Vec<Result<Response, FtpsError>>, FtpsError> {
        let mut replies = Vec::with_capacity(commands.len());
        for c in commands {
            let sent = tokio::time::timeout(
                self.timeout,
                self.ftp.custom_command(c.line.clone(), c.expect),
            )
            .await;
            replies.push(self.reply_of(c, sent)?.map_err(|r| self.refused(c, r)));
        }
        Ok(replies)
    }

    /// One reply of [`Session::pipelined`], as read: `Ok` a reply the command expects, `Err`
    /// another; the outer error is the connection's (a timeout, a closed connection).
    fn reply_of(
        &self,
        c: &Pipelined,
        read: Result<Result<Response, FtpError>, tokio::time::error::Elapsed>,
    ) -> Result<Result<Response, Response>, FtpsError> {
        match read {
            Ok(Err(FtpError::UnexpectedResponse(r))) => Ok(Err(r)),
            other => self.outcome(c.name, &c.path, other).map(Ok),
        }
    }

    /// The error of a command the server refused with `reply`.
    fn refused(&self, c: &Pipelined, reply: Response) -> FtpsError {
        self.err(c.name, &c.path, FtpError::UnexpectedResponse(reply))
    }

    /// Whether the next data connection can be asked for ahead, in the flight of the commands
    /// before it: passive mode over TLS (commands written ahead) with EPSV, none already
    /// opening, and, under TLS 1.3, a ticket for it to resume.
    pub(crate) fn opens_ahead(&self) -> bool {
        self.ahead.is_some()
            && self.data_mode != DataMode::Active
            && !self.epsv_refused
            && self.opened_ahead.is_none()
            && !self.data_resumption_exhausted()
    }

    /// Starts opening the data connection of an EPSV reply read by [`Session::pipelined`]. A
    /// refused or unreadable EPSV is left to the data command, which asks again.
    pub(crate) fn open_ahead(&mut self, epsv: Result<Response, FtpsError>) {
        let text = epsv.ok().and_then(|r| r.as_string().ok());
        self.opened_ahead = text.and_then(|text| self.connect_epsv(&text));
    }

    /// Starts connecting to the port an EPSV reply names, on the control connection's peer
    /// (RFC 2428: EPSV names no address); `None` if it names no port.
    fn connect_epsv(&self, reply: &str) -> Option<OpenedAhead> {
        let port = passive::epsv_port(reply)?;
        let target = SocketAddr::new(self.control_peer.ip(), port);
        Some(self.start_connecting(target, target))
    }

    /// Starts connecting to `target` for a passive data connection announced as `announced`.
    fn start_connecting(&self, announced: SocketAddr, target: SocketAddr) -> OpenedAhead {
        if let Ok(mut a) = self.passive_attempt.lock() {
            *a = PassiveAttempt {
                announced: Some(announced),
                target: Some(target),
                connected: false,
            };
        }
        OpenedAhead::start(
            target,
            self.data_tls.clone(),
            self.tls_domain.clone(),
            self.passive_attempt.clone(),
        )
    }

    /// EPSV, or PASV once the server refused EPSV (any 5xx: vsftpd's cmds_denied says `550
    /// Permission denied.`, others `500`/`502`): where the data connection goes, which starts
    /// opening at once.
    async fn enter_passive(
        &mut self,
        command: &'static str,
        path: &str,
    ) -> Result<OpenedAhead, FtpsError> {
        if !self.epsv_refused {
            let reply = tokio::time::timeout(
                self.timeout,
                self.ftp
                    .custom_command("EPSV", &[Status::ExtendedPassiveMode]),
            )
            .await;
            match reply {
                Ok(Err(FtpError::UnexpectedResponse(r)))
                    if (500..600).contains(&r.status.code()) =>
                {
                    tracing::info!(server = %self.server, "EPSV refused (`{}`), using PASV", reply_text(&r));
                    self.epsv_refused = true;
                }
                other => {
                    let r = self.outcome(command, path, other)?;
                    let text = r.as_string().unwrap_or_default();
                    return self.connect_epsv(&text).ok_or_else(|| {
                        self.connection_err(
                            command,
                            path,
                            format!("the server's EPSV reply `{}` names no port", text.trim()),
                        )
                    });
                }
            }
        }
        let reply = tokio::time::timeout(
            self.timeout,
            self.ftp.custom_command("PASV", &[Status::PassiveMode]),
        )
        .await;
        let r = self.outcome(command, path, reply)?;
        let text = r.as_string().unwrap_or_default();
        let announced = passive::pasv_address(&text).ok_or_else(|| {
            self.connection_err(
                command,
                path,
                format!("the server's PASV reply `{}` names no address", text.trim()),
            )
        })?;
        let announced = SocketAddr::V4(announced);
        let ip = data_channel::passive_target(
            announced.ip(),
            self.control_peer.ip(),
            self.passive_address,
        );
        let target = SocketAddr::new(ip, announced.port());
        if ip.to_canonical() != announced.ip().to_canonical() {
            passive::note_substitution(
                &self.passive_noted,
                &self.server,
                announced,
                target,
                policy_name(self.passive_address),
            );
        }
        Ok(self.start_connecting(announced, target))
    }

    /// Opens a passive data connection for `line` (`STOR path`, `RETR path`, `MLSD`): the one
    /// opened ahead if there is one, else EPSV (PASV); then REST and the command, while the
    /// TCP and TLS handshakes run; then the connection, once the server took it.
    async fn open_passive(
        &mut self,
        command: &'static str,
        path: &str,
        line: String,
        upload: bool,
        restart: Option<u64>,
    ) -> Result<DataTransfer, FtpsError> {
        self.read_abandoned_transfer_reply().await?;
        let connecting = match self.opened_ahead.take().filter(OpenedAhead::fresh) {
            Some(c) => c,
            None => self.enter_passive(command, path).await?,
        };
        if let Some(offset) = restart {
            self.rest(path, offset).await?;
        }
        let mut connecting = connecting;
        // The command's reply, or the connection's failure if that comes first: a server
        // (vsftpd) answers the command only once the connection arrived, after its own timeout.
        let (started, opened) = {
            let started = tokio::time::timeout(
                self.timeout,
                self.ftp
                    .custom_command(line, &[Status::AboutToSend, Status::AlreadyOpen]),
            );
            tokio::pin!(started);
            tokio::select! {
                biased;
                started = &mut started => (Some(started), None),
                opened = connecting.join() => match opened {
                    Err(DataOpenError::Connect(e)) => (None, Some(Err(DataOpenError::Connect(e)))),
                    opened => (Some(started.await), Some(opened)),
                },
            }
        };
        // From here on the server owes a reply, whatever happens to the connection.
        let pending = self.active_reply_pending.clone();
        let Some(started) = started else {
            pending.store(true, Ordering::Release);
            let failure = match opened {
                Some(Err(DataOpenError::Connect(e))) => e.to_string(),
                _ => "the data connection failed".to_string(),
            };
            return Err(self.passive_failure(command, path, failure));
        };
        // Refused: the connection opening is dropped (its task aborted), no reply is owed.
        self.outcome(command, path, started)?;
        let opened = match opened {
            Some(opened) => Some(opened),
            None => connecting.connected(self.timeout).await,
        };
        let socket = match opened {
            Some(Ok(socket)) => Ok(socket),
            Some(Err(DataOpenError::Connect(e))) => {
                Err(self.passive_failure(command, path, e.to_string()))
            }
            Some(Err(DataOpenError::Tls(why))) => Err(self.connection_err(
                command,
                path,
                format!("TLS handshake on the data connection failed: {why}"),
            )),
            None if self.attempt().connected => Err(self.connection_err(
                command,
                path,
                format!(
                    "TLS handshake on the data connection failed: timed out after {}s",
                    self.timeout.as_secs()
                ),
            )),
            None => Err(self.passive_failure(
                command,
                path,
                format!("timed out after {}s", self.timeout.as_secs()),
            )),
        };
        let socket = socket.inspect_err(|_| pending.store(true, Ordering::Release))?;
        Ok(DataTransfer {
            socket: Some(socket),
            upload,
            reply_pending: pending,
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
        let cmd = mfmt_line(path, unix_secs);
        self.step("MFMT", path, |f| {
            Box::pin(async move { f.custom_command(cmd, &[Status::File]).await.map(|_| ()) })
        })
        .await
    }

    /// What follows a STOR to `path`, in one flight: SIZE (where `size` and the server offers
    /// it; `None` otherwise) and the next data connection's EPSV (see [`Session::opens_ahead`]).
    pub(crate) async fn size_after_store(
        &mut self,
        path: &str,
        size: bool,
    ) -> Result<Option<u64>, FtpsError> {
        let size = size && self.features.size;
        let mut batch = Vec::new();
        if size {
            batch.push(Pipelined::new(
                "SIZE",
                path,
                format!("SIZE {path}"),
                &[Status::File],
            ));
        }
        if self.opens_ahead() {
            batch.push(Pipelined::epsv());
        }
        let mut replies = self.pipelined(batch).await?.into_iter();
        let stored = match size {
            false => None,
            true => {
                let reply = replies
                    .next()
                    .ok_or_else(|| self.connection_err("SIZE", path, "no reply".into()))??;
                let text = reply.as_string().unwrap_or_default();
                let parsed = size_in_reply(&text).ok_or_else(|| FtpsError::Reply {
                    server: self.server.clone(),
                    command: "SIZE",
                    path: path.to_string(),
                    code: reply.status.code(),
                    reply: format!("no size in the reply `{}`", text.trim()),
                });
                Some(parsed)
            }
        };
        if let Some(epsv) = replies.next() {
            self.open_ahead(epsv);
        }
        stored.transpose()
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
            return self
                .open_active("STOR", path, format!("STOR {path}"), true, restart)
                .await;
        }
        self.open_passive("STOR", path, format!("STOR {path}"), true, restart)
            .await
    }

    /// Opens a RETR of `path`; read the bytes, then [`Session::finish`].
    pub async fn retrieve(&mut self, path: &str) -> Result<DataStream, FtpsError> {
        let restart = self.restart.take();
        if self.data_mode == DataMode::Active {
            return self
                .open_active("RETR", path, format!("RETR {path}"), false, restart)
                .await;
        }
        self.open_passive("RETR", path, format!("RETR {path}"), false, restart)
            .await
    }

    /// Closes a data connection (close_notify, then the server's 226).
    pub async fn finish(
        &mut self,
        command: &'static str,
        path: &str,
        stream: DataStream,
    ) -> Result<(), FtpsError> {
        let mut transfer = stream;
        let Some(socket) = transfer.take_socket() else {
            return Ok(());
        };
        let result = tokio::time::timeout(
            self.timeout,
            finish_transfer(&mut self.ftp, socket, transfer.upload),
        )
        .await;
        if result.is_err() {
            // The reply may still come: the next command reads it first.
            self.active_reply_pending.store(true, Ordering::Release);
        }
        let finished = self.outcome(command, path, result);
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
    ) -> Result<DataTransfer, FtpsError> {
        self.read_abandoned_transfer_reply().await?;
        let (listener, listening) = self.listen(command, path)?;
        self.announce_listener(path, listening).await?;
        if let Some(offset) = restart {
            self.rest(path, offset).await?;
        }
        self.start_active(command, path, line, listening).await?;
        // From here on the server owes a completion reply, whatever happens to the connection.
        let pending = self.active_reply_pending.clone();
        let connected = match self.accept_server(command, path, listener, listening).await {
            Ok(tcp) => self.data_handshake(command, path, tcp).await,
            Err(e) => Err(e),
        };
        let socket = connected.inspect_err(|_| pending.store(true, Ordering::Release))?;
        Ok(DataTransfer {
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
    async fn rest(&mut self, path: &str, offset: u64) -> Result<(), FtpsError> {
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
        if let Some(ahead) = &self.ahead {
            // Over TLS: QUIT goes out and the connection closes without waiting for the 221.
            // Nothing depends on it (every transfer was committed and checked before), and
            // the wait was one more round trip at the end of every run.
            ahead.write_ahead(b"QUIT\r\n");
            // One poll of a read writes the queued line out; the reply is not waited for.
            let _ = self.ftp.read_response_in(&[]).now_or_never();
            return;
        }
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

/// The MFMT line setting `path`'s time to `unix_secs` (UTC, whole seconds).
fn mfmt_line(path: &str, unix_secs: i64) -> String {
    let stamp = chrono::DateTime::from_timestamp(unix_secs, 0)
        .map(|t| t.format("%Y%m%d%H%M%S").to_string())
        .unwrap_or_else(|| "19700101000000".to_string());
    format!("MFMT {stamp} {path}")
}

/// The size in a SIZE reply (`213 4096`).
fn size_in_reply(text: &str) -> Option<u64> {
    let mut words = text.split_whitespace();
    (words.next()? == "213").then_some(())?;
    words.next()?.parse().ok()
}

/// Closes a data connection and reads the server's verdict on the transfer: close_notify first; after an
/// upload over TLS, wait for the server's close (unread TLS 1.3 tickets would otherwise make
/// the OS reset the connection and the server report a failed upload); then the reply.
async fn finish_transfer(
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
    /// RNFR/RNTO; returns the server's reply to RNTO (e.g. `250 Rename successful.`).
    pub(crate) async fn rename_replied(
        &mut self,
        from: &str,
        to: &str,
    ) -> Result<String, FtpsError> {
        self.rename_dated(from, to, None)
            .await
            .map(|(reply, _)| reply)
    }

    /// RNFR/RNTO, after MFMT to `mtime` (whole seconds since the epoch, where given and offered)
    /// on `from`, all in one flight: a rename keeps the time. Returns the server's reply to
    /// RNTO, and MFMT's outcome where it was sent.
    pub(crate) async fn rename_dated(
        &mut self,
        from: &str,
        to: &str,
        mtime: Option<i64>,
    ) -> Result<(String, Option<Result<(), FtpsError>>), FtpsError> {
        let mut batch = Vec::new();
        let mtime = mtime.filter(|_| self.features.mfmt);
        if let Some(secs) = mtime {
            batch.push(Pipelined::new(
                "MFMT",
                from,
                mfmt_line(from, secs),
                &[Status::File],
            ));
        }
        // A refused RNFR makes the server refuse the RNTO too (503).
        batch.push(Pipelined::new(
            "RNFR",
            from,
            format!("RNFR {from}"),
            &[Status::RequestFilePending],
        ));
        // Some non-compliant servers reply 200 instead of 250 (as suppaftp allows).
        batch.push(Pipelined::new(
            "RNTO",
            to,
            format!("RNTO {to}"),
            &[Status::RequestedFileActionOk, Status::CommandOk],
        ));
        let sent_together = self.ahead.is_some();
        let mut replies = self.pipelined(batch.clone()).await?.into_iter();
        let mut dated = mtime.and_then(|_| replies.next()).map(|r| r.map(|_| ()));
        let (Some(rnfr), Some(mut rnto)) = (replies.next(), replies.next()) else {
            return Err(self.connection_err("RNFR", from, "no reply".to_string()));
        };
        rnfr?;
        if rnto.is_err() && sent_together {
            // RNFR accepted and RNTO refused: a server that takes commands concurrently
            // (libunftp) may have taken the RNTO while the RNFR was still being checked. Once
            // more, one command at a time; if that works, this server gets no more batches.
            let again = self
                .pipelined_one_at_a_time(&batch[batch.len() - 2..])
                .await?;
            if let [Ok(_), Ok(_)] = &again[..] {
                tracing::info!(server = %self.server, "the server took commands sent together concurrently (RNTO before its RNFR was done); sending it one command at a time from now on");
                self.ahead = None;
                self.one_at_a_time.store(true, Ordering::Relaxed);
                if matches!(dated, Some(Err(_))) {
                    // MFMT may have come after the rename too: on the final name now.
                    if let Some(secs) = mtime {
                        dated = Some(self.set_mtime(to, secs).await);
                    }
                }
            }
            rnto = again.into_iter().nth(1).unwrap_or(rnto);
        }
        Ok((reply_text(&rnto?), dated))
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

        /// suppaftp reads the greeting and the reply to EPSV or PASV; ferrysync parses the
        /// reply (see [`passive`]) and picks the address. Whatever the server sends: no panic, an answer within the
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
                    let mut ftp = ftp;
                    let (line, code) = if extended {
                        ("EPSV", Status::ExtendedPassiveMode)
                    } else {
                        ("PASV", Status::PassiveMode)
                    };
                    let reply = ftp.custom_command(line, &[code]).await?;
                    let text = reply.as_string().unwrap_or_default();
                    let announced = if extended {
                        passive::epsv_port(&text).map(|p| SocketAddr::new(peer.ip(), p))
                    } else {
                        passive::pasv_address(&text).map(SocketAddr::V4)
                    };
                    if let Some(announced) = announced {
                        let ip = data_channel::passive_target(
                            announced.ip(),
                            peer.ip(),
                            PassiveAddress::Auto,
                        );
                        seen.lock()
                            .unwrap()
                            .push(SocketAddr::new(ip, announced.port()));
                    }
                    Ok::<_, FtpError>(())
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
