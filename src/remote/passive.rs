//! Passive data connections opened by ferrysync rather than by suppaftp, so that their set-up
//! overlaps the control dialogue: the reply to EPSV (or PASV) is parsed here, and the TCP
//! connection and its TLS handshake start at once, in a task of their own, while the transfer
//! command is still on its way (the server takes the connection, then reads the ClientHello
//! that waited in its socket). A session may also ask for the next transfer's EPSV in the same
//! flight as the previous transfer's last commands ([`OpenedAhead`]): the data connection is
//! then ready, or nearly, when the next STOR or RETR goes out.
//!
//! Over a 50 ms link this takes a file from about 8.5 round trips to 4 (see docs/PERFORMANCE.md).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use suppaftp::tokio::{AsyncDataStream as SocketStream, AsyncTlsConnector};

use crate::remote::tls::{FlushingTlsStream, TlsConnector};

/// How long a data connection opened ahead stays usable. Servers keep the passive port open
/// until the next data command, but a connection that waited long in their backlog is not
/// worth the risk: a fresh EPSV costs one round trip.
pub(crate) const OPENED_AHEAD_FOR: Duration = Duration::from_secs(10);

/// Where the current passive data connection was announced, where it went, and whether its TCP
/// connection opened; read after a failure to say which address failed and why.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PassiveAttempt {
    pub(crate) announced: Option<SocketAddr>,
    pub(crate) target: Option<SocketAddr>,
    pub(crate) connected: bool,
}

/// Why a passive data connection could not be opened.
#[derive(Debug)]
pub(crate) enum DataOpenError {
    /// The TCP connection to the announced port failed.
    Connect(std::io::Error),
    /// The TLS handshake on it failed.
    Tls(String),
}

/// A passive data connection being opened (TCP, then TLS over FTPS) in a task of its own. The
/// task is aborted when this is dropped unused.
pub(crate) struct OpenedAhead {
    task: tokio::task::JoinHandle<Result<SocketStream<FlushingTlsStream>, DataOpenError>>,
    since: Instant,
}

impl OpenedAhead {
    /// Starts connecting to `target`; over FTPS the handshake follows on the same task, as the
    /// TLS client resuming the control connection's session (`tls` shares its cache).
    pub(crate) fn start(
        target: SocketAddr,
        tls: Option<TlsConnector>,
        domain: String,
        attempt: Arc<Mutex<PassiveAttempt>>,
    ) -> OpenedAhead {
        let task = tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(target)
                .await
                .map_err(DataOpenError::Connect)?;
            let _ = tcp.set_nodelay(true);
            if let Ok(mut a) = attempt.lock() {
                a.connected = true;
            }
            match tls {
                None => Ok(SocketStream::Tcp(tcp)),
                Some(connector) => connector
                    .connect(&domain, tcp)
                    .await
                    .map(|s| SocketStream::Ssl(Box::new(s)))
                    .map_err(|e| DataOpenError::Tls(e.to_string())),
            }
        });
        OpenedAhead {
            task,
            since: Instant::now(),
        }
    }

    /// Whether it was started recently enough to be used (see [`OPENED_AHEAD_FOR`]).
    pub(crate) fn fresh(&self) -> bool {
        self.since.elapsed() < OPENED_AHEAD_FOR
    }

    /// The connection, once opened (or its failure). Cancel-safe: polled again, it goes on
    /// waiting.
    pub(crate) async fn join(&mut self) -> Result<SocketStream<FlushingTlsStream>, DataOpenError> {
        match (&mut self.task).await {
            Ok(result) => result,
            Err(join) => Err(DataOpenError::Connect(std::io::Error::other(
                join.to_string(),
            ))),
        }
    }

    /// Waits up to `timeout` for the connection; `None` when it took longer.
    pub(crate) async fn connected(
        mut self,
        timeout: Duration,
    ) -> Option<Result<SocketStream<FlushingTlsStream>, DataOpenError>> {
        tokio::time::timeout(timeout, self.join()).await.ok()
    }
}

impl Drop for OpenedAhead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The port of an EPSV reply (RFC 2428: `229 Entering Extended Passive Mode (|||6446|)`; the
/// delimiter may be any printable character).
pub(crate) fn epsv_port(reply: &str) -> Option<u16> {
    let open = reply.find('(')?;
    let inner = &reply[open + 1..];
    let close = inner.find(')')?;
    let inner = &inner[..close];
    let d = inner.chars().next()?;
    let mut parts = inner.split(d);
    // `|||port|` splits into "", "", "", "port", "".
    let (a, b, c, port, end) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if !(a.is_empty() && b.is_empty() && c.is_empty() && end.is_empty()) || parts.next().is_some() {
        return None;
    }
    port.parse().ok().filter(|p| *p > 0)
}

/// The address of a PASV reply (`227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)`; some servers
/// leave out the parentheses): the first six comma-separated numbers of the reply.
pub(crate) fn pasv_address(reply: &str) -> Option<SocketAddrV4> {
    let text = reply.get(3..).unwrap_or("");
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let numbers: Vec<u8> = text[start..]
        .split(|c: char| !c.is_ascii_digit() && c != ',')
        .next()?
        .split(',')
        .map(|n| n.parse::<u8>())
        .collect::<Result<_, _>>()
        .ok()?;
    let [h1, h2, h3, h4, p1, p2] = numbers[..] else {
        return None;
    };
    let port = u16::from(p1) << 8 | u16::from(p2);
    (port > 0).then(|| SocketAddrV4::new(Ipv4Addr::new(h1, h2, h3, h4), port))
}

/// Logs, once per run (`noted`), that a PASV reply's address was replaced.
pub(crate) fn note_substitution(
    noted: &AtomicBool,
    server: &str,
    announced: SocketAddr,
    target: SocketAddr,
    policy: &str,
) {
    if noted.swap(true, Ordering::Relaxed) {
        tracing::debug!(%server, "PASV named {}, connecting to {target}", announced.ip());
    } else {
        tracing::info!(
            %server,
            "the server's PASV reply names {}, not the control connection's address; connecting to {} instead, with the reply's port (remote.passive_address: {policy}; `server` would use the reply's address)",
            announced.ip(),
            target.ip(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epsv_replies() {
        assert_eq!(
            epsv_port("229 Entering Extended Passive Mode (|||6446|)"),
            Some(6446)
        );
        assert_eq!(epsv_port("229 EPSV ok (!!!50000!)"), Some(50000));
        assert_eq!(
            epsv_port("229 Entering Extended Passive Mode (|||0|)"),
            None
        );
        assert_eq!(epsv_port("229 (|||70000|)"), None);
        assert_eq!(epsv_port("229 (||1.2.3.4|6446|)"), None);
        assert_eq!(epsv_port("229 Entering Extended Passive Mode"), None);
        assert_eq!(epsv_port("229 (|||12|"), None);
    }

    #[test]
    fn pasv_replies() {
        let a = |s: &str| pasv_address(s).map(|a| a.to_string());
        assert_eq!(
            a("227 Entering Passive Mode (127,0,0,1,179,176)").as_deref(),
            Some("127.0.0.1:46000")
        );
        assert_eq!(
            a("227 Entering Passive Mode 10,0,0,2,4,1").as_deref(),
            Some("10.0.0.2:1025")
        );
        assert_eq!(a("227 Entering Passive Mode (127,0,0,1,0,0)"), None);
        assert_eq!(a("227 Entering Passive Mode (127,0,0,1,300,1)"), None);
        assert_eq!(a("227 Entering Passive Mode (127,0,0,1,4)"), None);
        assert_eq!(a("227 Entering Passive Mode"), None);
    }
}
