//! A hostile FTPS server for the tests (issue 12): a raw tokio listener with tokio-rustls and a
//! throw-away rcgen certificate, speaking just enough FTP (explicit AUTH TLS, FEAT with MLSD,
//! EPSV/PASV, MLSD/LIST, SIZE, MDTM, REST, RETR, STOR, RNFR/RNTO, DELE, MKD, RMD) over a folder
//! on disk, to misbehave the ways real servers and attackers do: see [`Misbehaviour`].
//!
//! It is a real server over real sockets, not a mock of ferrysync's code. Every loop is
//! bounded: it ends when the client disconnects, after [`MAX_ENDLESS`] bytes or after
//! [`MAX_SECS`], and the whole server stops with the runtime its [`Server`] holds.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use super::Server;

/// How the server misbehaves; [`Misbehaviour::None`] is a well-behaved server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Misbehaviour {
    #[default]
    None,
    /// The first RETR ends cleanly after half the file; a later `REST n` is answered 350, and
    /// the RETR that follows sends from byte 0.
    IgnoreRest,
    /// RETR sends the file and then these many more bytes.
    ExtraBytes(usize),
    /// RETR leaves out the file's last bytes, then closes cleanly and says 226.
    FewerBytes(usize),
    /// RETR sends bytes until the client goes away (or [`MAX_ENDLESS`]).
    EndlessRetr,
    /// The listing goes on and on: valid MLSD lines, one after another.
    EndlessListing,
    /// The listing is one line that never ends.
    EndlessLine,
    /// The listing stops after this many lines, halfway through the next, with close_notify
    /// and 226: to the client a clean, complete transfer.
    ListingCutWithCloseNotify(usize),
    /// The same cut, but the TCP connection is closed without close_notify (226 all the same).
    ListingCutWithoutCloseNotify(usize),
    /// EPSV is refused (502) and PASV names this address, with the port of a listener on
    /// 127.0.0.1 (a decoy listens on the named address too and counts connections).
    PasvThirdParty(Ipv4Addr),
    /// The listing adds entries named `../x`, `a/b`, `..`, and names with ESC, CR and LF.
    HostileNames,
    /// The first this many control connections answer AUTH TLS with 234, then write a plain
    /// text reply where the TLS handshake belongs and close (a server out of step).
    PlainAfterAuthTls(usize),
}

/// The most an endless stream sends, and the longest any transfer lasts.
pub const MAX_ENDLESS: u64 = 256 << 20;
pub const MAX_SECS: u64 = 60;

/// The names [`Misbehaviour::HostileNames`] lists (as MLSD files of 5 bytes).
pub const HOSTILE_NAMES: &[&str] = &[
    "../x",
    "a/b",
    "..",
    "esc\u{1b}[31mred",
    "cr\rname",
    "lf\nname",
];

/// What the server saw, for the tests to check.
#[derive(Default)]
pub struct Seen {
    /// Every command line (PASS shown as `PASS ***`).
    pub commands: Mutex<Vec<String>>,
    /// Bytes written on data connections, in all.
    pub data_bytes: AtomicU64,
    /// Connections the decoy of [`Misbehaviour::PasvThirdParty`] accepted.
    pub decoy_connections: AtomicUsize,
    retrs: AtomicUsize,
    /// Control connections that reached AUTH TLS.
    auth_tls: AtomicUsize,
    /// The misbehaviour now in force ([`Seen::set`] changes it between runs).
    how: Mutex<Misbehaviour>,
}

impl Seen {
    /// Misbehaves as `how` from the next command on (e.g. after a first, honest run).
    pub fn set(&self, how: Misbehaviour) {
        *self.how.lock().unwrap() = how;
    }

    fn how(&self) -> Misbehaviour {
        self.how.lock().unwrap().clone()
    }

    pub fn commands(&self) -> Vec<String> {
        self.commands.lock().unwrap().clone()
    }
}

struct Shared {
    root: PathBuf,
    password: String,
    tls: TlsAcceptor,
    seen: Arc<Seen>,
}

impl Server {
    /// A hostile server on 127.0.0.1 (explicit FTPS) misbehaving as `how`, serving a fresh
    /// folder ([`Server::root`]); returns what it sees as well.
    pub fn hostile(how: Misbehaviour) -> (Server, Arc<Seen>) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, certified.cert.pem()).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()),
        );
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
        let password = "hostile-secret-123".to_string();
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, &password).unwrap();
        let seen = Arc::new(Seen::default());
        seen.set(how);
        let shared = Arc::new(Shared {
            root: root.clone(),
            password,
            tls: TlsAcceptor::from(Arc::new(config)),
            seen: seen.clone(),
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        rt.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let limit = Duration::from_secs(MAX_SECS * 4);
                    let _ = tokio::time::timeout(limit, control(tcp, shared)).await;
                });
            }
        });
        let server = Server {
            kind: "hostile",
            security: "explicit",
            port,
            user: "tester".into(),
            password_file,
            ca,
            root,
            _runtime: Some(rt),
            _dir: Some(dir),
        };
        (server, seen)
    }
}

async fn reply<S: AsyncWrite + Unpin>(s: &mut S, text: &str) -> std::io::Result<()> {
    s.write_all(format!("{text}\r\n").as_bytes()).await?;
    s.flush().await
}

/// One control connection: plain until AUTH TLS, then TLS until QUIT or the client leaves.
async fn control(tcp: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let mut plain = BufReader::new(tcp);
    reply(plain.get_mut(), "220 hostile test server").await?;
    loop {
        let mut line = String::new();
        if plain.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        shared.note(line.trim_end());
        if line.to_ascii_uppercase().starts_with("AUTH TLS") {
            reply(plain.get_mut(), "234 AUTH TLS ok").await?;
            let nth = shared.seen.auth_tls.fetch_add(1, Ordering::SeqCst);
            if let Misbehaviour::PlainAfterAuthTls(n) = shared.seen.how() {
                if nth < n {
                    reply(plain.get_mut(), "500 out of step").await?;
                    // Read the client's handshake until it gives up: closing with its bytes
                    // unread would reset the connection and could drop the reply before the
                    // client reads it.
                    let mut sink = [0u8; 4096];
                    let drain = async {
                        while plain.read(&mut sink).await? > 0 {}
                        Ok::<(), std::io::Error>(())
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
                    return Ok(());
                }
            }
            break;
        }
        reply(plain.get_mut(), "530 AUTH TLS first").await?;
    }
    let tls = shared.tls.accept(plain.into_inner()).await?;
    let mut conn = Conn {
        s: BufReader::new(tls),
        shared: shared.clone(),
        cwd: "/".into(),
        passive: None,
        rest: 0,
        rnfr: None,
    };
    conn.serve().await
}

impl Shared {
    fn note(&self, line: &str) {
        let line = if line.to_ascii_uppercase().starts_with("PASS") {
            "PASS ***".to_string()
        } else {
            line.to_string()
        };
        self.seen.commands.lock().unwrap().push(line);
    }
}

struct Conn<S> {
    s: BufReader<S>,
    shared: Arc<Shared>,
    cwd: String,
    passive: Option<TcpListener>,
    rest: u64,
    rnfr: Option<PathBuf>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    async fn say(&mut self, text: &str) -> std::io::Result<()> {
        reply(self.s.get_mut(), text).await
    }

    /// The file or folder on disk for a path the client named (absolute or relative to the
    /// current directory).
    fn disk(&self, arg: &str) -> PathBuf {
        let full = if arg.starts_with('/') {
            arg.to_string()
        } else {
            format!("{}/{arg}", self.cwd.trim_end_matches('/'))
        };
        let rel: Vec<&str> = full
            .split('/')
            .filter(|c| !c.is_empty() && *c != "." && *c != "..")
            .collect();
        self.shared.root.join(rel.join("/"))
    }

    async fn serve(&mut self) -> std::io::Result<()> {
        loop {
            let mut line = String::new();
            if self.s.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            self.shared.note(&line);
            let (cmd, arg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            let cmd = cmd.to_ascii_uppercase();
            let how = self.shared.seen.how();
            match cmd.as_str() {
                "USER" => self.say("331 password please").await?,
                "PASS" if arg == self.shared.password => self.say("230 logged in").await?,
                "PASS" => self.say("530 wrong password").await?,
                "FEAT" => {
                    self.say("211-Features:\r\n MLSD\r\n SIZE\r\n MDTM\r\n UTF8\r\n EPSV\r\n PASV\r\n REST STREAM\r\n211 End")
                        .await?
                }
                "SYST" => self.say("215 UNIX Type: L8").await?,
                "PWD" => {
                    let text = format!("257 \"{}\"", self.cwd);
                    self.say(&text).await?
                }
                "TYPE" | "OPTS" | "PBSZ" | "PROT" | "NOOP" | "MODE" | "STRU" => {
                    self.say("200 ok").await?
                }
                "CWD" => {
                    if self.disk(arg).is_dir() {
                        self.cwd = self.disk(arg).strip_prefix(&self.shared.root).map_or(
                            "/".to_string(),
                            |p| format!("/{}", p.display()),
                        );
                        self.say("250 ok").await?
                    } else {
                        self.say("550 no such directory").await?
                    }
                }
                "EPSV" if matches!(how, Misbehaviour::PasvThirdParty(_)) => {
                    self.say("502 EPSV not here").await?
                }
                "EPSV" => {
                    let l = TcpListener::bind("127.0.0.1:0").await?;
                    let text = format!(
                        "229 Entering Extended Passive Mode (|||{}|)",
                        l.local_addr()?.port()
                    );
                    self.passive = Some(l);
                    self.say(&text).await?
                }
                "PASV" => {
                    let l = TcpListener::bind("127.0.0.1:0").await?;
                    let port = l.local_addr()?.port();
                    let named = match how {
                        Misbehaviour::PasvThirdParty(ip) => {
                            self.decoy(SocketAddr::new(ip.into(), port));
                            ip
                        }
                        _ => Ipv4Addr::LOCALHOST,
                    };
                    let [a, b, c, d] = named.octets();
                    let text = format!(
                        "227 Entering Passive Mode ({a},{b},{c},{d},{},{})",
                        port >> 8,
                        port & 0xff
                    );
                    self.passive = Some(l);
                    self.say(&text).await?
                }
                "REST" => {
                    self.rest = arg.parse().unwrap_or(0);
                    self.say("350 restarting").await?
                }
                "SIZE" => match std::fs::metadata(self.disk(arg)) {
                    Ok(m) if m.is_file() => self.say(&format!("213 {}", m.len())).await?,
                    _ => self.say("550 no such file").await?,
                },
                "MDTM" => match std::fs::metadata(self.disk(arg)) {
                    Ok(m) => self.say(&format!("213 {}", stamp(&m))).await?,
                    _ => self.say("550 no such file").await?,
                },
                "MLSD" | "LIST" => {
                    let dir = if arg.is_empty() || arg.starts_with('-') {
                        self.disk(".")
                    } else {
                        self.disk(arg)
                    };
                    let body = listing(&dir, cmd == "MLSD", &how);
                    self.data(|data, shared| Box::pin(send_listing(data, shared, body)))
                        .await?
                }
                "RETR" => {
                    let bytes = std::fs::read(self.disk(arg));
                    let rest = std::mem::take(&mut self.rest);
                    match bytes {
                        Ok(bytes) => {
                            self.data(move |data, shared| {
                                Box::pin(send_file(data, shared, bytes, rest))
                            })
                            .await?
                        }
                        Err(_) => self.say("550 no such file").await?,
                    }
                }
                "STOR" => {
                    let path = self.disk(arg);
                    let rest = std::mem::take(&mut self.rest);
                    self.data(move |data, _| Box::pin(receive_file(data, path, rest)))
                        .await?
                }
                "RNFR" => {
                    self.rnfr = Some(self.disk(arg));
                    self.say("350 ready for RNTO").await?
                }
                "RNTO" => match self.rnfr.take().map(|from| std::fs::rename(from, self.disk(arg))) {
                    Some(Ok(())) => self.say("250 renamed").await?,
                    _ => self.say("550 cannot rename").await?,
                },
                "DELE" => match std::fs::remove_file(self.disk(arg)) {
                    Ok(()) => self.say("250 deleted").await?,
                    Err(_) => self.say("550 cannot delete").await?,
                },
                "MKD" => match std::fs::create_dir(self.disk(arg)) {
                    Ok(()) => self.say(&format!("257 \"{arg}\" created")).await?,
                    Err(_) => self.say("550 cannot create").await?,
                },
                "RMD" => match std::fs::remove_dir(self.disk(arg)) {
                    Ok(()) => self.say("250 removed").await?,
                    Err(_) => self.say("550 cannot remove").await?,
                },
                "QUIT" => {
                    self.say("221 bye").await?;
                    return Ok(());
                }
                _ => self.say("502 not implemented").await?,
            }
        }
    }

    /// A listener on the address a third-party PASV reply names, counting who connects.
    fn decoy(&self, addr: SocketAddr) {
        let seen = self.shared.seen.clone();
        if let Ok(std_listener) = std::net::TcpListener::bind(addr) {
            std_listener.set_nonblocking(true).unwrap();
            let l = TcpListener::from_std(std_listener).unwrap();
            tokio::spawn(async move {
                let wait = Duration::from_secs(MAX_SECS);
                while let Ok(Ok(_)) = tokio::time::timeout(wait, l.accept()).await {
                    seen.decoy_connections.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    }

    /// 150, accept the data connection (TLS), run `transfer` on it, then 226 (or 426 when the
    /// transfer failed on the server's side).
    async fn data<F>(&mut self, transfer: F) -> std::io::Result<()>
    where
        F: FnOnce(
            tokio_rustls::server::TlsStream<TcpStream>,
            Arc<Shared>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>,
        >,
    {
        let Some(listener) = self.passive.take() else {
            return self.say("425 use EPSV or PASV first").await;
        };
        self.say("150 opening data connection").await?;
        let wait = Duration::from_secs(10);
        let accepted = tokio::time::timeout(wait, async {
            let (tcp, _) = listener.accept().await?;
            self.shared.tls.accept(tcp).await
        })
        .await;
        let Ok(Ok(data)) = accepted else {
            return self.say("425 no data connection").await;
        };
        let limit = Duration::from_secs(MAX_SECS);
        match tokio::time::timeout(limit, transfer(data, self.shared.clone())).await {
            Ok(Ok(())) => self.say("226 transfer complete").await,
            _ => self.say("426 transfer aborted").await,
        }
    }
}

/// `YYYYMMDDHHMMSS` (UTC) of a file's mtime.
fn stamp(m: &std::fs::Metadata) -> String {
    let t: chrono::DateTime<chrono::Utc> = m.modified().unwrap().into();
    t.format("%Y%m%d%H%M%S").to_string()
}

/// The listing of `dir` as MLSD facts or `ls -l` lines, with the hostile names added.
fn listing(dir: &Path, mlsd: bool, how: &Misbehaviour) -> Vec<u8> {
    let mut entries: Vec<(String, bool, u64, String)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            let name = e.file_name().to_string_lossy().to_string();
            entries.push((name, m.is_dir(), m.len(), stamp(&m)));
        }
    }
    entries.sort();
    if *how == Misbehaviour::HostileNames {
        for name in HOSTILE_NAMES {
            entries.push((name.to_string(), false, 5, "20260101120000".into()));
        }
    }
    let mut out = String::new();
    for (name, is_dir, size, stamp) in entries {
        if mlsd {
            let kind = if is_dir { "dir" } else { "file" };
            out.push_str(&format!(
                "type={kind};size={size};modify={stamp}; {name}\r\n"
            ));
        } else {
            let mode = if is_dir { "drwxr-xr-x" } else { "-rw-r--r--" };
            out.push_str(&format!("{mode} 1 u g {size} Jan  1 12:00 {name}\r\n"));
        }
    }
    out.into_bytes()
}

/// Writes all of `bytes`, counting them.
async fn put(
    data: &mut tokio_rustls::server::TlsStream<TcpStream>,
    shared: &Shared,
    bytes: &[u8],
) -> std::io::Result<()> {
    data.write_all(bytes).await?;
    shared
        .seen
        .data_bytes
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    Ok(())
}

/// Sends bytes of `line` (repeated) until the client leaves or [`MAX_ENDLESS`] bytes went.
async fn endless(
    data: &mut tokio_rustls::server::TlsStream<TcpStream>,
    shared: &Shared,
    chunk: &[u8],
) -> std::io::Result<()> {
    let mut sent = 0u64;
    while sent < MAX_ENDLESS {
        put(data, shared, chunk).await?;
        sent += chunk.len() as u64;
    }
    data.shutdown().await
}

async fn send_listing(
    mut data: tokio_rustls::server::TlsStream<TcpStream>,
    shared: Arc<Shared>,
    body: Vec<u8>,
) -> std::io::Result<()> {
    let how = shared.seen.how();
    match how {
        Misbehaviour::EndlessListing => {
            let chunk: String = (0..1000)
                .map(|i| format!("type=file;size=1;modify=20260101120000; endless-{i}\r\n"))
                .collect();
            endless(&mut data, &shared, chunk.as_bytes()).await
        }
        Misbehaviour::EndlessLine => {
            put(
                &mut data,
                &shared,
                b"type=file;size=1;modify=20260101120000; ",
            )
            .await?;
            endless(&mut data, &shared, &[b'x'; 64 * 1024]).await
        }
        Misbehaviour::ListingCutWithCloseNotify(keep)
        | Misbehaviour::ListingCutWithoutCloseNotify(keep) => {
            // `keep` whole lines, then half of the next one.
            let mut end = 0;
            for _ in 0..keep {
                match body[end..].iter().position(|b| *b == b'\n') {
                    Some(i) => end += i + 1,
                    None => end = body.len(),
                }
            }
            let next = body[end..]
                .iter()
                .position(|b| *b == b'\n')
                .unwrap_or(body.len() - end);
            put(&mut data, &shared, &body[..end + next / 2]).await?;
            data.flush().await?;
            if matches!(how, Misbehaviour::ListingCutWithCloseNotify(_)) {
                data.shutdown().await
            } else {
                // The TCP connection closes under TLS: no close_notify.
                let (mut tcp, _) = data.into_inner();
                tcp.shutdown().await
            }
        }
        _ => {
            put(&mut data, &shared, &body).await?;
            data.shutdown().await
        }
    }
}

async fn send_file(
    mut data: tokio_rustls::server::TlsStream<TcpStream>,
    shared: Arc<Shared>,
    bytes: Vec<u8>,
    rest: u64,
) -> std::io::Result<()> {
    let first = shared.seen.retrs.fetch_add(1, Ordering::SeqCst) == 0;
    let from = (rest as usize).min(bytes.len());
    match shared.seen.how() {
        Misbehaviour::IgnoreRest if first => {
            put(&mut data, &shared, &bytes[..bytes.len() / 2]).await?
        }
        Misbehaviour::IgnoreRest => put(&mut data, &shared, &bytes).await?,
        Misbehaviour::ExtraBytes(n) => {
            put(&mut data, &shared, &bytes[from..]).await?;
            put(&mut data, &shared, &vec![b'!'; n]).await?;
        }
        Misbehaviour::FewerBytes(n) => {
            let end = bytes.len().saturating_sub(n).max(from);
            put(&mut data, &shared, &bytes[from..end]).await?
        }
        Misbehaviour::EndlessRetr => {
            put(&mut data, &shared, &bytes[from..]).await?;
            return endless(&mut data, &shared, &[b'~'; 64 * 1024]).await;
        }
        _ => put(&mut data, &shared, &bytes[from..]).await?,
    }
    data.shutdown().await
}

async fn receive_file(
    mut data: tokio_rustls::server::TlsStream<TcpStream>,
    path: PathBuf,
    rest: u64,
) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    (&mut data)
        .take(MAX_ENDLESS)
        .read_to_end(&mut bytes)
        .await?;
    let mut old = if rest > 0 {
        std::fs::read(&path).unwrap_or_default()
    } else {
        Vec::new()
    };
    old.truncate(rest as usize);
    old.extend_from_slice(&bytes);
    std::fs::write(&path, old)?;
    data.shutdown().await
}
