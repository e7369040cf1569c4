//! Data connections through firewalls and NAT: where a passive data connection goes
//! (`remote.passive_address`), and the client's side of active mode (`remote.data_mode:
//! active`): the listener, the EPRT and PORT arguments, and the accepted data stream.
//!
//! suppaftp's own active mode binds an ephemeral port and sends PORT for IPv4, with no fall-back
//! and no port range, so active mode is built here from its public pieces instead: EPRT/PORT,
//! REST and the transfer command go out as plain commands, the server's connection is accepted
//! here, and the TLS handshake on it uses a clone of the control connection's connector, whose
//! session cache holds the control session that servers such as vsftpd (`require_ssl_reuse`)
//! insist the data connection resumes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use suppaftp::tokio::AsyncDataStream as SocketStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;

use crate::config::PassiveAddress;
use crate::remote::tls::FlushingTlsStream;

/// Whether `ip` cannot be reached from outside its own network: private (RFC 1918, IPv6 unique
/// local), loopback, link-local, carrier-grade NAT (100.64.0.0/10), unspecified, documentation
/// (TEST-NET), benchmarking, IETF protocol, multicast, broadcast and reserved addresses.
/// A server behind NAT announces one of these in its PASV reply.
pub fn is_unroutable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_unroutable_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_unroutable_v4(v4),
            None => is_unroutable_v6(v6),
        },
    }
}

fn is_unroutable_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_documentation()
        || ip.is_multicast()
        || ip.is_broadcast()
        || a == 0 // "this network"
        || (a == 100 && (b & 0xc0) == 64) // carrier-grade NAT, 100.64.0.0/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments, 192.0.0.0/24
        || (a == 198 && (b & 0xfe) == 18) // benchmarking, 198.18.0.0/15
        || a >= 240 // reserved
}

fn is_unroutable_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local, fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local, fe80::/10
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation, 2001:db8::/32
}

/// Where a passive data connection goes, given the address in the server's PASV reply, the
/// control connection's peer and `remote.passive_address`.
///
/// `auto` (and `control`, the same) always connects to the control connection's peer and uses
/// only the port of the reply, as curl does by default since 7.74: a server behind NAT announces
/// a private address the client cannot reach, and a hostile or compromised server could name a
/// third host (FTP bounce), public or inside the client's network, and have ferrysync connect
/// there. Only `server` honours the address in the reply.
pub fn passive_target(pasv_ip: IpAddr, control_peer: IpAddr, policy: PassiveAddress) -> IpAddr {
    match policy {
        PassiveAddress::Server => pasv_ip,
        PassiveAddress::Auto | PassiveAddress::Control => control_peer,
    }
}

/// The argument of `EPRT` (RFC 2428) for a listener at `addr`: `|1|192.0.2.7|50001|`.
pub fn eprt_argument(addr: SocketAddr) -> String {
    let family = if addr.is_ipv4() { 1 } else { 2 };
    format!("|{family}|{}|{}|", addr.ip(), addr.port())
}

/// The argument of `PORT` (RFC 959) for a listener at `addr`: `192,0,2,7,195,81`.
pub fn port_argument(addr: SocketAddrV4) -> String {
    let [a, b, c, d] = addr.ip().octets();
    let port = addr.port();
    format!("{a},{b},{c},{d},{},{}", port >> 8, port & 0xff)
}

/// Listens for the server's data connection on `ip`: on a port of `ports` (tried from a random
/// one on, so parallel connections do not contend for the first), or on any free port.
pub fn bind_listener(
    ip: IpAddr,
    ports: Option<&RangeInclusive<u16>>,
) -> std::io::Result<TcpListener> {
    let Some(ports) = ports else {
        return listen_on(SocketAddr::new(ip, 0));
    };
    let (first, last) = (*ports.start(), *ports.end());
    let count = u32::from(last - first) + 1;
    let start = fastrand::u32(0..count);
    for i in 0..count {
        let port = first as u32 + (start + i) % count;
        let port = u16::try_from(port).unwrap_or(last);
        match listen_on(SocketAddr::new(ip, port)) {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("every port of remote.active_ports {first}-{last} is in use"),
    ))
}

/// A listener for one data connection. SO_REUSEADDR lets a port of a small `active_ports`
/// range serve again while an earlier data connection on it lingers in TIME_WAIT; a port another
/// listener holds is still refused (Linux allows one listener per address and port).
fn listen_on(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// The data connection of one transfer or listing, opened by ferrysync in either mode (accepted
/// from the server in active mode, connected to it in passive mode, see `passive.rs`) and
/// secured.
///
/// It must be closed with `Session::finish`, which reads the server's completion reply. One
/// dropped without it sets `reply_pending`, and the session reads that reply before its next
/// command, so the control connection stays in step.
pub struct DataTransfer {
    pub(crate) socket: Option<SocketStream<FlushingTlsStream>>,
    pub(crate) upload: bool,
    pub(crate) reply_pending: Arc<AtomicBool>,
}

impl DataTransfer {
    /// Takes the socket out for closing; the transfer's reply is then the closer's to read.
    pub(crate) fn take_socket(&mut self) -> Option<SocketStream<FlushingTlsStream>> {
        self.socket.take()
    }

    fn socket(&mut self) -> std::io::Result<&mut SocketStream<FlushingTlsStream>> {
        self.socket.as_mut().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "the data connection is closed",
            )
        })
    }
}

impl Drop for DataTransfer {
    fn drop(&mut self) {
        if self.socket.take().is_some() {
            self.reply_pending.store(true, Ordering::Release);
        }
    }
}

impl AsyncRead for DataTransfer {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut().socket() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for DataTransfer {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut().socket() {
            Ok(s) => Pin::new(s).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().socket() {
            Ok(s) => Pin::new(s).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().socket() {
            Ok(s) => Pin::new(s).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn unroutable_addresses() {
        for a in [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.1.10",
            "127.0.0.1",
            "127.0.0.2",
            "169.254.10.1",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "198.19.255.1",
            "192.0.0.8",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "2001:db8::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_unroutable(ip(a)), "{a} should count as unroutable");
        }
        for a in [
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "192.0.1.1",
            "198.17.0.1",
            "198.20.0.1",
            "11.0.0.1",
            "2a00:1450::1",
            "::ffff:8.8.4.4",
        ] {
            assert!(!is_unroutable(ip(a)), "{a} should count as routable");
        }
    }

    #[test]
    fn passive_target_by_policy() {
        use PassiveAddress::*;
        let public_server = ip("203.0.114.5"); // routable
        let nat_inside = ip("10.0.0.5");
        // A server behind NAT: auto and control use the control peer, server trusts PASV.
        assert_eq!(
            passive_target(nat_inside, public_server, Auto),
            public_server
        );
        assert_eq!(
            passive_target(nat_inside, public_server, Control),
            public_server
        );
        assert_eq!(
            passive_target(nat_inside, public_server, Server),
            nat_inside
        );
        // A routable third party (FTP bounce, or a separate data host): auto and control
        // ignore it; only server goes there.
        let third_party = ip("198.51.101.9");
        assert_eq!(
            passive_target(third_party, public_server, Auto),
            public_server
        );
        assert_eq!(
            passive_target(third_party, public_server, Control),
            public_server
        );
        assert_eq!(
            passive_target(third_party, public_server, Server),
            third_party
        );
        // A public server naming a host inside the client's network: never with auto.
        assert_eq!(
            passive_target(ip("192.168.0.9"), public_server, Auto),
            public_server
        );
        // A LAN server announcing its own address: the same address either way.
        assert_eq!(passive_target(nat_inside, nat_inside, Auto), nat_inside);
        // 0.0.0.0 (some servers' "the address you already use").
        assert_eq!(passive_target(ip("0.0.0.0"), nat_inside, Auto), nat_inside);
        // An IPv6 control connection: the PASV (IPv4) address is not used.
        assert_eq!(
            passive_target(ip("198.51.101.9"), ip("2a00:1450::1"), Auto),
            ip("2a00:1450::1")
        );
    }

    #[test]
    fn eprt_and_port_arguments() {
        assert_eq!(
            eprt_argument("192.0.2.7:50001".parse().unwrap()),
            "|1|192.0.2.7|50001|"
        );
        assert_eq!(
            eprt_argument("[2001:db8::7]:50001".parse().unwrap()),
            "|2|2001:db8::7|50001|"
        );
        assert_eq!(
            port_argument("192.0.2.7:50001".parse().unwrap()),
            "192,0,2,7,195,81"
        );
        assert_eq!(
            port_argument("10.0.0.1:21".parse().unwrap()),
            "10,0,0,1,0,21"
        );
    }

    #[tokio::test]
    async fn listeners_take_free_ports_of_the_range() {
        let lo = ip("127.0.0.1");
        let any = bind_listener(lo, None).unwrap();
        assert_ne!(any.local_addr().unwrap().port(), 0);
        // Find three consecutive free ports, then fill them.
        let base = loop {
            let probe = bind_listener(lo, None)
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if probe < 65000 {
                break probe;
            }
        };
        let range = base..=base + 2;
        let mut held = Vec::new();
        for _ in 0..3 {
            match bind_listener(lo, Some(&range)) {
                Ok(l) => {
                    let p = l.local_addr().unwrap().port();
                    assert!(range.contains(&p), "{p} outside {range:?}");
                    held.push(l);
                }
                // Another process took a port of the probe range meanwhile: nothing to check.
                Err(_) => return,
            }
        }
        let ports: std::collections::BTreeSet<u16> = held
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        assert_eq!(ports.len(), 3);
        let e = bind_listener(lo, Some(&range)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
        assert!(e.to_string().contains("active_ports"), "{e}");
    }
}
