//! A TCP fault-injection proxy between `ferrysync` and a test's FTPS server, to prove that
//! dropped and stalled control and data connections are survived (or reported).
//!
//! The control connection is TLS, so the proxy cannot read or rewrite PASV/EPSV replies. It
//! does not need to: ferrysync uses EPSV, whose reply carries only a port, and the client opens
//! the data connection to the control connection's peer address. So the proxy listens on an
//! address of its own in 127.0.0.0/8 (127.0.0.2, or the next free one), for the control
//! connection on a free port and on *every* port of the server's passive range, and forwards
//! each connection to the same port on 127.0.0.1, from 127.0.0.1 (so vsftpd's check that data
//! and control connections come from one address passes). Jobs then connect to the proxy's
//! address with `tls.pin_sha256` (the test certificates name 127.0.0.1/localhost only, and a
//! pin skips the name check): see [`FaultProxy::job_yaml`].
//!
//! Faults ([`Fault`]) are set while the proxy runs, per kind of connection: cut (FIN, or RST),
//! or stall (for a while, or until [`FaultProxy::resume_stalled`]) a connection once it has
//! forwarded some bytes. Counters say how many bytes and connections went through.
//!
//! The proxy runs on a tokio runtime of its own, so plain `#[test]` functions can use it;
//! dropping the [`FaultProxy`] closes its listeners and every connection through it.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Sandbox, Server};

/// Bytes read from one side before they are written to the other.
const BUF_SIZE: usize = 128 * 1024;
/// An accepted connection whose upstream cannot be reached within this is closed.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Ports of each loopback server started by [`loopback_behind_proxy`].
const LOOPBACK_BLOCK: u16 = 100;
/// Where those blocks are taken from: below Linux's ephemeral ports (32768-60999) and below
/// the default loopback range (30000-39999) and vsftpd's (40000-40099).
const LOOPBACK_BLOCKS_START: u16 = 20000;
const LOOPBACK_BLOCKS: u16 = 100;

/// The two kinds of connection the proxy forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Control,
    Data,
}

/// Which connections of a kind a [`Fault`] applies to. Connections are numbered from 0 in the
/// order the proxy accepted them, per kind, since the proxy started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conn {
    /// The n-th connection.
    Nth(usize),
    /// The first connection that reaches the threshold; the fault fires once.
    First,
    /// Every connection that reaches the threshold.
    Every,
}

/// Which bytes of a connection count towards a [`Fault`]'s threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Both directions, added together.
    Both,
    /// Client -> server only (an upload's data, the client's commands).
    ToServer,
    /// Server -> client only (a download's data, the server's replies).
    ToClient,
}

/// What happens to a connection when its fault fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Close both sides (FIN; the kernel sends RST instead where unread data is pending).
    Cut,
    /// Close both sides with SO_LINGER 0: an immediate TCP RST.
    Reset,
    /// Forward nothing more in either direction for this long (`None`: until
    /// [`FaultProxy::resume_stalled`], or until the proxy is dropped). Reading stops too, so
    /// the peers see their TCP windows fill, as with a stuck network path.
    Stall(Option<Duration>),
}

/// A fault: `action` on the connections `conn` selects, once exactly `after` bytes (counted
/// per `dir`) have been forwarded on one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub conn: Conn,
    pub dir: Dir,
    pub after: u64,
    pub action: Action,
}

impl Fault {
    pub fn cut(conn: Conn, after: u64) -> Fault {
        Fault {
            conn,
            dir: Dir::Both,
            after,
            action: Action::Cut,
        }
    }
    pub fn reset(conn: Conn, after: u64) -> Fault {
        Fault {
            action: Action::Reset,
            ..Fault::cut(conn, after)
        }
    }
    pub fn stall(conn: Conn, after: u64, duration: Duration) -> Fault {
        Fault {
            action: Action::Stall(Some(duration)),
            ..Fault::cut(conn, after)
        }
    }
    pub fn stall_forever(conn: Conn, after: u64) -> Fault {
        Fault {
            action: Action::Stall(None),
            ..Fault::cut(conn, after)
        }
    }
    /// Counts only the bytes of `dir` (default: both directions).
    pub fn dir(self, dir: Dir) -> Fault {
        Fault { dir, ..self }
    }
}

/// A fault that fired (or a cut ordered with `cut_*_now`), with the bytes the connection had
/// forwarded by then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fired {
    pub kind: Kind,
    pub ordinal: usize,
    pub action: Action,
    pub to_server: u64,
    pub to_client: u64,
}

/// What a connection's two pumps do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Run,
    Stall(Option<Instant>),
    Cut { rst: bool },
}

struct Slot {
    fault: Fault,
    generation: u64,
    spent: bool,
}

#[derive(Default)]
struct Faults {
    data: Option<Slot>,
    control: Option<Slot>,
    generation: u64,
}

impl Faults {
    fn slot(&mut self, kind: Kind) -> &mut Option<Slot> {
        match kind {
            Kind::Data => &mut self.data,
            Kind::Control => &mut self.control,
        }
    }
}

#[derive(Default)]
struct Counter {
    to_server: AtomicU64,
    to_client: AtomicU64,
    connections: AtomicUsize,
}

#[derive(Default)]
struct Shared {
    faults: Mutex<Faults>,
    fired: Mutex<Vec<Fired>>,
    fired_cv: Condvar,
    data: Counter,
    control: Counter,
    /// Open connections: id -> (kind, the connection), for `cut_*_now` and `resume_stalled`.
    live: Mutex<HashMap<u64, (Kind, Arc<ConnState>)>>,
    next_id: AtomicU64,
    /// Each piece of a control connection's replies waits this long (ms) before it is passed
    /// on: a round trip of about that much, for the client to measure.
    reply_delay_ms: AtomicU64,
    /// Runs of the client's bytes on control connections with no reply in between.
    control_flights: AtomicU64,
}

impl Shared {
    fn counter(&self, kind: Kind) -> &Counter {
        match kind {
            Kind::Data => &self.data,
            Kind::Control => &self.control,
        }
    }

    fn record(&self, fired: Fired) {
        self.fired.lock().unwrap().push(fired);
        self.fired_cv.notify_all();
    }
}

#[derive(Default)]
struct ConnBytes {
    to_server: u64,
    to_client: u64,
    /// The generation of the fault that fired on this connection.
    fired: Option<u64>,
}

/// One proxied connection.
struct ConnState {
    kind: Kind,
    ordinal: usize,
    bytes: Mutex<ConnBytes>,
    mode: watch::Sender<Mode>,
    /// The last bytes forwarded on this connection came from the server (or none yet): the
    /// client's next bytes start a new flight (see [`FaultProxy::control_flights`]).
    server_spoke_last: AtomicBool,
}

impl ConnState {
    /// How many of the next `n` bytes towards `to_server`/client may be forwarded before the
    /// fault of this connection's kind fires (and which action then), counting them as sent.
    fn admit(&self, shared: &Shared, to_server: bool, n: usize) -> (usize, Option<Action>) {
        let mut faults = shared.faults.lock().unwrap();
        let mut bytes = self.bytes.lock().unwrap();
        let (mut allow, mut fire) = (n, None);
        if let Some(slot) = faults.slot(self.kind) {
            let f = slot.fault;
            let applies = !slot.spent
                && bytes.fired != Some(slot.generation)
                && match f.conn {
                    Conn::Nth(k) => k == self.ordinal,
                    Conn::First | Conn::Every => true,
                }
                && match f.dir {
                    Dir::Both => true,
                    Dir::ToServer => to_server,
                    Dir::ToClient => !to_server,
                };
            if applies {
                let counted = match f.dir {
                    Dir::Both => bytes.to_server + bytes.to_client,
                    Dir::ToServer => bytes.to_server,
                    Dir::ToClient => bytes.to_client,
                };
                let left = f.after.saturating_sub(counted);
                if n as u64 >= left {
                    allow = left as usize;
                    fire = Some(f.action);
                    bytes.fired = Some(slot.generation);
                    slot.spent = f.conn != Conn::Every;
                }
            }
        }
        if to_server {
            bytes.to_server += allow as u64;
        } else {
            bytes.to_client += allow as u64;
        }
        (allow, fire)
    }

    fn apply(&self, shared: &Shared, action: Action) {
        let mode = match action {
            Action::Cut => Mode::Cut { rst: false },
            Action::Reset => Mode::Cut { rst: true },
            Action::Stall(d) => Mode::Stall(d.map(|d| Instant::now() + d)),
        };
        self.mode.send_replace(mode);
        let bytes = self.bytes.lock().unwrap();
        shared.record(Fired {
            kind: self.kind,
            ordinal: self.ordinal,
            action,
            to_server: bytes.to_server,
            to_client: bytes.to_client,
        });
    }
}

/// Removes a connection from [`Shared::live`] however its task ends.
struct LiveGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if let Ok(mut live) = self.shared.live.lock() {
            live.remove(&self.id);
        }
    }
}

/// Returns once the connection may forward bytes (never, once it is cut: the connection's
/// task then drops this pump).
async fn wait_running(rx: &mut watch::Receiver<Mode>) {
    loop {
        let mode = *rx.borrow_and_update();
        match mode {
            Mode::Run => return,
            Mode::Stall(Some(until)) if Instant::now() >= until => return,
            Mode::Stall(Some(until)) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = rx.changed() => {}
                }
            }
            Mode::Stall(None) | Mode::Cut { .. } => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

/// Copies one direction until EOF (then half-closes the other side) or an error.
async fn pump(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    conn: &ConnState,
    shared: &Shared,
    to_server: bool,
) -> std::io::Result<()> {
    let mut rx = conn.mode.subscribe();
    let counter = shared.counter(conn.kind);
    let total = if to_server {
        &counter.to_server
    } else {
        &counter.to_client
    };
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        wait_running(&mut rx).await;
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        if conn.kind == Kind::Control {
            if !to_server {
                conn.server_spoke_last.store(true, Ordering::SeqCst);
            } else if conn.server_spoke_last.swap(false, Ordering::SeqCst) {
                shared.control_flights.fetch_add(1, Ordering::SeqCst);
            }
        }
        let delay = shared.reply_delay_ms.load(Ordering::Relaxed);
        if delay > 0 && !to_server && conn.kind == Kind::Control {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let mut off = 0;
        while off < n {
            wait_running(&mut rx).await;
            let (allow, fire) = conn.admit(shared, to_server, n - off);
            to.write_all(&buf[off..off + allow]).await?;
            total.fetch_add(allow as u64, Ordering::Relaxed);
            off += allow;
            if let Some(action) = fire {
                conn.apply(shared, action);
            }
        }
    }
}

/// Forwards between `client` and `upstream` until both sides closed, one failed, or a cut.
async fn serve(
    mut client: TcpStream,
    mut upstream: TcpStream,
    conn: Arc<ConnState>,
    shared: Arc<Shared>,
) {
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let mut mode_rx = conn.mode.subscribe();
    let rst = {
        let (cr, cw) = client.split();
        let (sr, sw) = upstream.split();
        let up = pump(cr, sw, &conn, &shared, true);
        let down = pump(sr, cw, &conn, &shared, false);
        let cut = async {
            let cut = mode_rx
                .wait_for(|m| matches!(m, Mode::Cut { .. }))
                .await
                .map(|m| *m == Mode::Cut { rst: true });
            match cut {
                Ok(rst) => rst,
                // The sender lives in `conn`, so this does not happen.
                Err(_) => std::future::pending().await,
            }
        };
        tokio::pin!(up, down, cut);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                r = &mut up, if !up_done => {
                    up_done = true;
                    if r.is_err() { break false; }
                }
                r = &mut down, if !down_done => {
                    down_done = true;
                    if r.is_err() { break false; }
                }
                rst = &mut cut => break rst,
            }
            if up_done && down_done {
                break false;
            }
        }
    };
    if rst {
        let _ = client.set_zero_linger();
        let _ = upstream.set_zero_linger();
    }
    // Dropping both streams closes them.
}

/// Connects to `to` from 127.0.0.1.
async fn connect_upstream(to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, socket.connect(to)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        )),
    }
}

async fn accept_loop(listener: TcpListener, kind: Kind, upstream: SocketAddr, shared: Arc<Shared>) {
    loop {
        let client = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                // E.g. EMFILE: do not spin; the client's connect waits in the backlog.
                eprintln!("fault proxy: accept on {upstream:?} ({kind:?}): {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ordinal = shared
            .counter(kind)
            .connections
            .fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        tokio::spawn(async move {
            let up = match connect_upstream(upstream).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("fault proxy: {kind:?} connection #{ordinal}: cannot connect to {upstream}: {e}");
                    return;
                }
            };
            let conn = Arc::new(ConnState {
                kind,
                ordinal,
                bytes: Mutex::default(),
                mode: watch::Sender::new(Mode::Run),
                server_spoke_last: AtomicBool::new(true),
            });
            let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
            shared.live.lock().unwrap().insert(id, (kind, conn.clone()));
            let _guard = LiveGuard {
                shared: shared.clone(),
                id,
            };
            serve(client, up, conn, shared.clone()).await;
        });
    }
}

fn listen(ip: Ipv4Addr, port: u16) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // Lets a new proxy listen where connections of an earlier one linger in TIME_WAIT; two
    // listeners on one address and port still conflict.
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::V4(SocketAddrV4::new(ip, port)))?;
    socket.listen(128)
}

/// A running proxy; see the module's documentation.
pub struct FaultProxy {
    ip: Ipv4Addr,
    port: u16,
    upstream_port: u16,
    passive_ports: RangeInclusive<u16>,
    pin: Option<String>,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// A proxy for the server whose control port is 127.0.0.1:`upstream_port` and whose data
    /// connections use `passive_ports` (every port of it gets a listener: keep it small).
    pub fn start(upstream_port: u16, passive_ports: RangeInclusive<u16>) -> FaultProxy {
        assert!(
            passive_ports.clone().count() <= 1000,
            "a fault proxy listens on every passive port: {passive_ports:?} is too many"
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .unwrap();
        let _enter = runtime.enter();
        // 127.0.0.2 unless a proxy (of this or another process) holds one of the ports there.
        let (ip, listeners) = (2..=120u8)
            .find_map(|last| {
                let ip = Ipv4Addr::new(127, 0, 0, last);
                let mut listeners = vec![(listen(ip, 0).ok()?, Kind::Control, upstream_port)];
                for p in passive_ports.clone() {
                    listeners.push((listen(ip, p).ok()?, Kind::Data, p));
                }
                Some((ip, listeners))
            })
            .unwrap_or_else(|| {
                panic!("fault proxy: no address in 127.0.0.2-127.0.0.120 has ports {passive_ports:?} free")
            });
        let port = listeners[0].0.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let tasks = listeners
            .into_iter()
            .map(|(l, kind, to)| {
                let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, to));
                runtime.spawn(accept_loop(l, kind, upstream, shared.clone()))
            })
            .collect();
        drop(_enter);
        FaultProxy {
            ip,
            port,
            upstream_port,
            passive_ports,
            pin: None,
            shared,
            tasks,
            runtime: Some(runtime),
        }
    }

    /// A proxy in front of `server`, whose passive ports are `passive_ports`, that knows the
    /// pin of the server's certificate (for [`FaultProxy::job_yaml`]).
    pub fn for_server(server: &Server, passive_ports: RangeInclusive<u16>) -> FaultProxy {
        let mut proxy = FaultProxy::start(server.port, passive_ports);
        proxy.pin = Some(pin_sha256(server));
        proxy
    }

    /// A proxy in front of vsftpd as tests/servers/vsftpd.sh starts it (passive ports
    /// `VSFTPD_PASV_MIN`-`VSFTPD_PASV_MAX` if set, else 40000-40099).
    pub fn for_vsftpd(server: &Server) -> FaultProxy {
        let env = |k: &str, d: u16| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        let range = env("VSFTPD_PASV_MIN", 40000)..=env("VSFTPD_PASV_MAX", 40099);
        FaultProxy::for_server(server, range)
    }

    /// The address jobs connect to (the control listener).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.ip, self.port))
    }
    pub fn host(&self) -> String {
        self.ip.to_string()
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn passive_ports(&self) -> RangeInclusive<u16> {
        self.passive_ports.clone()
    }

    /// The `tls.pin_sha256` of the server's certificate (proxies made by `for_server`).
    pub fn pin(&self) -> &str {
        self.pin
            .as_deref()
            .expect("FaultProxy::start knows no server: use FaultProxy::for_server")
    }

    /// `s.job_yaml(extra)`, connecting through this proxy and pinning the server's
    /// certificate instead of trusting its CA.
    pub fn job_yaml(&self, s: &Sandbox, extra: &str) -> String {
        let yaml = s.job_yaml(extra);
        let direct = format!("  host: 127.0.0.1\n  port: {}\n", self.upstream_port);
        let ca = format!("    ca_file: {}\n", s.server.ca.display());
        assert!(
            yaml.contains(&direct) && yaml.contains(&ca),
            "unexpected job file:\n{yaml}"
        );
        yaml.replace(
            &direct,
            &format!("  host: {}\n  port: {}\n", self.ip, self.port),
        )
        .replace(&ca, &format!("    pin_sha256: \"{}\"\n", self.pin()))
    }

    /// Sets the fault of data connections (replacing any earlier one).
    pub fn set_data_fault(&self, fault: Fault) {
        self.set_fault(Kind::Data, Some(fault));
    }
    /// Sets the fault of control connections (replacing any earlier one).
    pub fn set_control_fault(&self, fault: Fault) {
        self.set_fault(Kind::Control, Some(fault));
    }
    /// Delays every reply on control connections by `delay`: a link with that round trip, as
    /// far as the client can measure it.
    pub fn set_control_reply_delay(&self, delay: Duration) {
        self.shared
            .reply_delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }
    /// Removes both faults. Connections already cut or stalled stay so (see `resume_stalled`).
    pub fn clear_faults(&self) {
        self.set_fault(Kind::Data, None);
        self.set_fault(Kind::Control, None);
    }

    fn set_fault(&self, kind: Kind, fault: Option<Fault>) {
        let mut faults = self.shared.faults.lock().unwrap();
        faults.generation += 1;
        let generation = faults.generation;
        *faults.slot(kind) = fault.map(|fault| Slot {
            fault,
            generation,
            spent: false,
        });
    }

    /// Cuts every open control connection now (with RST if `rst`); returns how many.
    pub fn cut_control_now(&self, rst: bool) -> usize {
        self.cut_now(Kind::Control, rst)
    }
    /// Cuts every open data connection now (with RST if `rst`); returns how many.
    pub fn cut_data_now(&self, rst: bool) -> usize {
        self.cut_now(Kind::Data, rst)
    }

    fn cut_now(&self, kind: Kind, rst: bool) -> usize {
        let conns: Vec<Arc<ConnState>> = self
            .shared
            .live
            .lock()
            .unwrap()
            .values()
            .filter(|(k, _)| *k == kind)
            .map(|(_, c)| c.clone())
            .collect();
        let action = if rst { Action::Reset } else { Action::Cut };
        for c in &conns {
            c.apply(&self.shared, action);
        }
        conns.len()
    }

    /// Lets every stalled connection forward again.
    pub fn resume_stalled(&self) {
        for (_, c) in self.shared.live.lock().unwrap().values() {
            c.mode.send_if_modified(|m| {
                let stalled = matches!(m, Mode::Stall(_));
                if stalled {
                    *m = Mode::Run;
                }
                stalled
            });
        }
    }

    /// Bytes forwarded client -> server on data connections (an upload's TLS records).
    pub fn data_bytes_to_server(&self) -> u64 {
        self.shared.data.to_server.load(Ordering::Relaxed)
    }
    /// Bytes forwarded server -> client on data connections.
    pub fn data_bytes_to_client(&self) -> u64 {
        self.shared.data.to_client.load(Ordering::Relaxed)
    }
    pub fn control_bytes_to_server(&self) -> u64 {
        self.shared.control.to_server.load(Ordering::Relaxed)
    }
    pub fn control_bytes_to_client(&self) -> u64 {
        self.shared.control.to_client.load(Ordering::Relaxed)
    }
    /// Data connections accepted so far (the next one's ordinal).
    pub fn data_connections(&self) -> usize {
        self.shared.data.connections.load(Ordering::SeqCst)
    }
    /// Control connections accepted so far (the next one's ordinal).
    pub fn control_connections(&self) -> usize {
        self.shared.control.connections.load(Ordering::SeqCst)
    }
    /// The client's flights on control connections: runs of its bytes with no reply from the
    /// server in between, so each is one round trip it waited for (commands written together
    /// make one flight).
    pub fn control_flights(&self) -> u64 {
        self.shared.control_flights.load(Ordering::SeqCst)
    }
    /// Sets the byte counters to 0 (connection ordinals keep counting).
    pub fn reset_byte_counters(&self) {
        for c in [&self.shared.data, &self.shared.control] {
            c.to_server.store(0, Ordering::Relaxed);
            c.to_client.store(0, Ordering::Relaxed);
        }
    }

    /// The faults that fired so far, in order.
    pub fn fired(&self) -> Vec<Fired> {
        self.shared.fired.lock().unwrap().clone()
    }

    /// Waits until at least `n` faults fired in all (true), or `timeout` passed (false).
    pub fn wait_fired(&self, n: usize, timeout: Duration) -> bool {
        let fired = self.shared.fired.lock().unwrap();
        let (fired, _) = self
            .shared
            .fired_cv
            .wait_timeout_while(fired, timeout, |f| f.len() < n)
            .unwrap();
        fired.len() >= n
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(rt) = self.runtime.take() {
            // Drops every task, and with them every listener and connection.
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// The `tls.pin_sha256` of `server`'s certificate: the loopback server's self-signed
/// `cert.pem` (its `ca`), or vsftpd's `server.pem` beside its `ca.pem`.
pub fn pin_sha256(server: &Server) -> String {
    // vsftpd's and ProFTPD's certificate is server.pem beside the CA; the in-process server's
    // is the CA file itself.
    let beside = server.ca.with_file_name("server.pem");
    let path = if beside.exists() {
        beside
    } else {
        server.ca.clone()
    };
    let pem = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let der = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap_or_else(|| panic!("{}: no certificate", path.display()))
        .unwrap();
    ferrysync::remote::fingerprint(&der).to_string()
}

static LOOPBACK_PROXIES: AtomicUsize = AtomicUsize::new(0);

/// An in-process loopback server (explicit FTPS) on a passive range of its own (a block of
/// [`LOOPBACK_BLOCK`] ports from 20000, different for each call), and a proxy in front of it.
pub fn loopback_behind_proxy() -> (Server, FaultProxy) {
    let n = LOOPBACK_PROXIES.fetch_add(1, Ordering::SeqCst) as u32;
    let block =
        ((std::process::id() % LOOPBACK_BLOCKS as u32 + n * 7) % LOOPBACK_BLOCKS as u32) as u16;
    let first = LOOPBACK_BLOCKS_START + block * LOOPBACK_BLOCK;
    let range = first..=first + LOOPBACK_BLOCK - 1;

    let server = Server::loopback_on(range.clone());
    let mut proxy = FaultProxy::start(server.port, range);
    proxy.pin = Some(pin_sha256(&server));
    (server, proxy)
}
