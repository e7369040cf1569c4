//! A latency-emulating TCP proxy for the benchmark (tests/bench/latency.sh; issue 16): the
//! kernels here have no netem, so a real link's round trip is emulated in user space.
//!
//! It listens on a second loopback address (127.0.0.2..9) on an FTP server's control port and
//! its whole passive port range and forwards every connection to the same port on 127.0.0.1.
//! FTPS works through it because EPSV replies carry only a port (and vsftpd's `pasv_address`
//! can name the proxy's address for clients that use PASV).
//!
//! What it emulates, per direction of every connection:
//! - propagation delay: each chunk is stamped when it is read and written out RTT/2 later by a
//!   separate writer task, while reading goes on: a FIFO delay line, not a stop-and-wait relay,
//!   so it adds latency without capping throughput (the queue is bounded only by `--queue-mib`
//!   as a guard against memory use, far above what a fast loopback moves in one RTT);
//! - the TCP handshake: the client's connect() completes on loopback at once (a user-space proxy
//!   cannot delay the kernel's SYN-ACK), so the proxy opens the server side 1.5 RTT after the
//!   accept and holds the client's bytes until then; a server-first greeting reaches the client
//!   2 RTT after its connect and the client's first bytes reach the server no sooner than 1.5 RTT,
//!   as on a real link. What it cannot emulate: a client that waits for connect() before sending
//!   on *another* connection saves up to 1 RTT per connection here;
//! - an optional bandwidth cap (`--rate 200mbit`): one pacer per direction shared by all
//!   connections (the link), applied as the bytes enter the delay line, so the reader stops
//!   reading when the link is busy and TCP's flow control backs the sender off (no bufferbloat);
//! - an optional trace (`--trace FILE`, tab-separated): connection open/close, and every chunk
//!   with the time it was read and the time it is delivered. Control-connection chunks that are
//!   plain text (before AUTH TLS) carry their FTP lines (PASS masked); after AUTH TLS the
//!   dialogue is encrypted and the trace has its sizes and timing only, which is enough to
//!   count round trips (tests/bench/trace_summary.py).
//!
//! ```text
//! cargo run --example latency_proxy -- --listen 127.0.0.2 --control-port 2400 \
//!     --ports 46000-46099 --rtt-ms 20 [--rate 200mbit] [--trace trace.tsv]
//! ```

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Latency-emulating TCP proxy for the FTPS benchmark")]
struct Args {
    /// Address to listen on (a second loopback address, e.g. 127.0.0.2).
    #[arg(long)]
    listen: Ipv4Addr,
    /// Address to forward to, on the same port.
    #[arg(long, default_value = "127.0.0.1")]
    target: Ipv4Addr,
    /// The server's control port (its connections are traced as `ctrl`).
    #[arg(long)]
    control_port: u16,
    /// Further ports to forward: the passive range, e.g. 46000-46099 (comma-separated list).
    #[arg(long, default_value = "")]
    ports: String,
    /// Round-trip time to add, in milliseconds (half on each direction).
    #[arg(long, default_value_t = 0.0)]
    rtt_ms: f64,
    /// Bandwidth cap per direction, shared by all connections: 200mbit, 25MB, 10MiB (per second).
    #[arg(long)]
    rate: Option<String>,
    /// Write a trace of connections and chunks to this file.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Largest number of bytes queued in one direction of one connection.
    #[arg(long, default_value_t = 64)]
    queue_mib: usize,
}

/// Parses `200mbit`, `1gbit`, `25MB`, `10MiB`, `500kbit`, `1000000` (bytes) into bytes per second.
fn parse_rate(text: &str) -> anyhow::Result<f64> {
    let lower = text.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let value: f64 = number
        .parse()
        .with_context(|| format!("bad rate '{text}': no number"))?;
    let factor = match unit.trim_end_matches("/s").trim_end_matches("ps") {
        "" | "b" => 1.0,
        "kbit" => 1e3 / 8.0,
        "mbit" => 1e6 / 8.0,
        "gbit" => 1e9 / 8.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("bad rate '{text}': unknown unit '{other}'"),
    };
    if value <= 0.0 {
        bail!("bad rate '{text}': must be above zero");
    }
    Ok(value * factor)
}

/// Parses `46000-46099,47000` into ports.
fn parse_ports(text: &str) -> anyhow::Result<Vec<u16>> {
    let mut ports = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let first: u16 = a.parse().with_context(|| format!("bad port '{a}'"))?;
                let last: u16 = b.parse().with_context(|| format!("bad port '{b}'"))?;
                if first > last {
                    bail!("bad port range '{part}'");
                }
                ports.extend(first..=last);
            }
            None => ports.push(part.parse().with_context(|| format!("bad port '{part}'"))?),
        }
    }
    Ok(ports)
}

/// The link's serialisation: a chunk of N bytes occupies the link for N / rate seconds, after
/// the chunks before it. Up to `burst` of idle time is credited, as a token bucket would.
#[derive(Debug)]
struct Pacer {
    bytes_per_sec: f64,
    burst: Duration,
    next_free: Option<Instant>,
}

impl Pacer {
    fn new(bytes_per_sec: f64) -> Self {
        Pacer {
            bytes_per_sec,
            burst: Duration::from_millis(2),
            next_free: None,
        }
    }

    /// Books `bytes` on the link at `now`; returns when they have left it (never before `now`).
    fn reserve(&mut self, now: Instant, bytes: usize) -> Instant {
        let floor = now.checked_sub(self.burst).unwrap_or(now);
        let start = match self.next_free {
            Some(free) if free > floor => free,
            _ => floor,
        };
        let done = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec);
        self.next_free = Some(done);
        done.max(now)
    }
}

/// When a chunk read at `left_link` (after the pacer) is due at the other end: RTT/2 later, and
/// for the client's bytes never before the emulated handshake would let them arrive.
fn due_at(left_link: Instant, one_way: Duration, not_before: Instant) -> Instant {
    (left_link + one_way).max(not_before)
}

/// When the writer should wake for a chunk due at `due`, or None to write it at once. tokio's
/// timer rounds every deadline up to its next millisecond tick, which would add 0-1 ms to every
/// chunk (2 ms per round trip at 0 ms RTT, where no sleep is needed at all); aiming half a tick
/// early makes the error -0.5..+0.5 ms, zero on average.
fn wake_at(due: Instant, now: Instant) -> Option<Instant> {
    let half_tick = Duration::from_micros(500);
    (due > now + half_tick).then(|| due - half_tick)
}

/// Masks the password of a `PASS` line for the trace.
fn trace_text(line: &str) -> String {
    if line.len() >= 4 && line[..4].eq_ignore_ascii_case("PASS") {
        "PASS ****".to_string()
    } else {
        line.replace('\t', " ")
    }
}

/// The FTP lines of a chunk if it is plain text ending in CRLF (before AUTH TLS), else None.
fn plain_lines(chunk: &[u8]) -> Option<Vec<String>> {
    if !chunk.ends_with(b"\r\n")
        || chunk
            .iter()
            .any(|&b| !(b == b'\r' || b == b'\n' || (0x20..0x7f).contains(&b)))
    {
        return None;
    }
    let text = std::str::from_utf8(chunk).ok()?;
    Some(
        text.split("\r\n")
            .filter(|l| !l.is_empty())
            .map(trace_text)
            .collect(),
    )
}

/// Trace lines go to one writer task; a closed trace just stops tracing.
#[derive(Clone)]
struct Trace {
    start: Instant,
    sink: Option<mpsc::UnboundedSender<String>>,
}

impl Trace {
    fn ms(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.start).as_secs_f64() * 1e3
    }
    fn emit(&self, line: String) {
        if let Some(sink) = &self.sink {
            let _ = sink.send(line);
        }
    }
    fn enabled(&self) -> bool {
        self.sink.is_some()
    }
}

/// What one direction carries: a chunk with the time it is due, or the end of the stream.
enum Piece {
    Data(Vec<u8>, OwnedSemaphorePermit),
    Eof,
}

struct Link {
    one_way: Duration,
    handshake: Duration,
    up: Option<Arc<Mutex<Pacer>>>,
    down: Option<Arc<Mutex<Pacer>>>,
    queue_bytes: usize,
    trace: Trace,
    control_port: u16,
    next_id: AtomicU64,
}

#[derive(Clone, Copy)]
enum Direction {
    ClientToServer,
    ServerToClient,
}

impl Direction {
    fn tag(self) -> &'static str {
        match self {
            Direction::ClientToServer => "c>s",
            Direction::ServerToClient => "s>c",
        }
    }
}

struct Pipe {
    link: Arc<Link>,
    id: u64,
    kind: &'static str,
    direction: Direction,
    not_before: Instant,
}

impl Pipe {
    /// Reads `from` into the delay line and writes each chunk to `to` when it is due. `to` may
    /// still be opening (the server side of a new connection): what the client sends before
    /// then is read, and stamped, at once, as the kernel would have sent it.
    async fn run(
        self,
        mut from: OwnedReadHalf,
        to: impl std::future::Future<Output = Option<OwnedWriteHalf>> + Send + 'static,
    ) {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Piece)>();
        let queue = Arc::new(Semaphore::new(self.link.queue_bytes));
        let writer = tokio::spawn(async move {
            let Some(mut to) = to.await else {
                return;
            };
            while let Some((due, piece)) = rx.recv().await {
                if let Some(wake) = wake_at(due, Instant::now()) {
                    tokio::time::sleep_until(wake).await;
                }
                match piece {
                    Piece::Data(bytes, permit) => {
                        if to.write_all(&bytes).await.is_err() {
                            break;
                        }
                        drop(permit);
                    }
                    Piece::Eof => {
                        let _ = to.shutdown().await;
                        break;
                    }
                }
            }
        });
        let pacer = match self.direction {
            Direction::ClientToServer => self.link.up.clone(),
            Direction::ServerToClient => self.link.down.clone(),
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => 0,
                Ok(n) => n,
            };
            let read_at = Instant::now();
            if n == 0 {
                let due = due_at(read_at, self.link.one_way, self.not_before);
                self.trace_chunk(read_at, due, 0, None);
                let _ = tx.send((due, Piece::Eof));
                break;
            }
            let Ok(permit) = queue.clone().acquire_many_owned(n as u32).await else {
                break;
            };
            let mut left = read_at;
            if let Some(pacer) = &pacer {
                let booked = match pacer.lock() {
                    Ok(mut p) => p.reserve(read_at, n),
                    Err(_) => read_at,
                };
                tokio::time::sleep_until(booked).await;
                left = booked;
            }
            let due = due_at(left, self.link.one_way, self.not_before);
            self.trace_chunk(read_at, due, n, Some(&buf[..n]));
            if tx
                .send((due, Piece::Data(buf[..n].to_vec(), permit)))
                .is_err()
            {
                break;
            }
        }
        let _ = writer.await;
    }

    fn trace_chunk(&self, read_at: Instant, due: Instant, n: usize, bytes: Option<&[u8]>) {
        let trace = &self.link.trace;
        if !trace.enabled() {
            return;
        }
        let text = match (bytes, self.kind) {
            (None, _) => "eof".to_string(),
            (Some(b), "ctrl") => plain_lines(b)
                .map(|lines| lines.join(" | "))
                .unwrap_or_else(|| "[tls]".to_string()),
            _ => String::new(),
        };
        trace.emit(format!(
            "{:.3}\t{:.3}\t{}\t{}\t{}\t{}\t{}",
            trace.ms(read_at),
            trace.ms(due),
            self.id,
            self.kind,
            self.direction.tag(),
            n,
            text
        ));
    }
}

async fn serve_connection(link: Arc<Link>, client: TcpStream, port: u16, target: SocketAddr) {
    let accepted = Instant::now();
    let id = link.next_id.fetch_add(1, Ordering::Relaxed);
    let kind = if port == link.control_port {
        "ctrl"
    } else {
        "data"
    };
    let trace = link.trace.clone();
    trace.emit(format!(
        "{:.3}\t{:.3}\t{id}\t{kind}\topen\t{port}\t",
        trace.ms(accepted),
        trace.ms(accepted)
    ));
    // The server side opens when the emulated handshake has reached it (SYN at RTT/2, the ACK
    // with the client's first bytes at 1.5 RTT). The client's bytes are read from the start:
    // a client that writes before its connect() would have returned on a real link (a TLS
    // ClientHello right after it) has them at the server at 1.5 RTT, not later.
    let server_open = accepted + link.handshake;
    let _ = client.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_write_tx, server_write_rx) = tokio::sync::oneshot::channel::<OwnedWriteHalf>();
    let up = Pipe {
        link: link.clone(),
        id,
        kind,
        direction: Direction::ClientToServer,
        not_before: server_open,
    };
    let down = Pipe {
        link: link.clone(),
        id,
        kind,
        direction: Direction::ServerToClient,
        not_before: server_open,
    };
    let up = tokio::spawn(up.run(client_read, async move { server_write_rx.await.ok() }));
    tokio::time::sleep_until(server_open).await;
    let server = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("latency_proxy: connect to {target}: {e}");
            up.abort();
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let (server_read, server_write) = server.into_split();
    let _ = server_write_tx.send(server_write);
    down.run(server_read, async move { Some(client_write) })
        .await;
    let _ = up.await;
    let closed = Instant::now();
    trace.emit(format!(
        "{:.3}\t{:.3}\t{id}\t{kind}\tclose\t{port}\t",
        trace.ms(closed),
        trace.ms(closed)
    ));
}

async fn listen(link: Arc<Link>, listener: TcpListener, port: u16, target: Ipv4Addr) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                let link = link.clone();
                tokio::spawn(serve_connection(
                    link,
                    client,
                    port,
                    SocketAddr::from((target, port)),
                ));
            }
            Err(e) => {
                eprintln!("latency_proxy: accept on port {port}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut ports = vec![args.control_port];
    ports.extend(parse_ports(&args.ports)?);
    let rate = args.rate.as_deref().map(parse_rate).transpose()?;
    let start = Instant::now();
    let sink = match &args.trace {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating trace {}", path.display()))?;
            let (tx, mut rx) = mpsc::unbounded_channel::<String>();
            std::thread::spawn(move || {
                let mut out = std::io::BufWriter::new(file);
                let _ = writeln!(out, "read_ms\tdue_ms\tconn\tkind\tevent\tbytes\ttext");
                while let Some(line) = rx.blocking_recv() {
                    let _ = writeln!(out, "{line}");
                    if rx.is_empty() {
                        let _ = out.flush();
                    }
                }
            });
            Some(tx)
        }
        None => None,
    };
    let rtt = Duration::from_secs_f64(args.rtt_ms.max(0.0) / 1e3);
    let link = Arc::new(Link {
        one_way: rtt / 2,
        handshake: rtt + rtt / 2,
        up: rate.map(|r| Arc::new(Mutex::new(Pacer::new(r)))),
        down: rate.map(|r| Arc::new(Mutex::new(Pacer::new(r)))),
        queue_bytes: args.queue_mib.max(1) * 1024 * 1024,
        trace: Trace { start, sink },
        control_port: args.control_port,
        next_id: AtomicU64::new(1),
    });
    let mut tasks = Vec::new();
    for port in ports {
        let listener = TcpListener::bind((args.listen, port))
            .await
            .with_context(|| format!("listening on {}:{port}", args.listen))?;
        tasks.push(tokio::spawn(listen(
            link.clone(),
            listener,
            port,
            args.target,
        )));
    }
    eprintln!(
        "latency_proxy: {} -> {}, {} ports, RTT {} ms, rate {}",
        args.listen,
        args.target,
        tasks.len(),
        args.rtt_ms,
        args.rate.as_deref().unwrap_or("unlimited")
    );
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_in_bits_and_bytes() {
        assert_eq!(parse_rate("200mbit").ok(), Some(25e6));
        assert_eq!(parse_rate("8kbit").ok(), Some(1000.0));
        assert_eq!(parse_rate("10MiB").ok(), Some(10.0 * 1024.0 * 1024.0));
        assert_eq!(parse_rate("25MB/s").ok(), Some(25e6));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0mbit").is_err());
        assert!(parse_rate("3furlongs").is_err());
    }

    #[test]
    fn ports_parse_as_ranges_and_lists() {
        assert_eq!(
            parse_ports("46000-46002,47000").ok(),
            Some(vec![46000, 46001, 46002, 47000])
        );
        assert_eq!(parse_ports("").ok(), Some(vec![]));
        assert!(parse_ports("46002-46000").is_err());
    }

    #[test]
    fn the_pacer_spaces_chunks_at_the_rate() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(1_000_000.0); // 1 MB/s: 1,000 bytes per millisecond
        pacer.burst = Duration::ZERO;
        // Ten chunks read at once leave the link one after another, 1 ms apart.
        let leaves: Vec<_> = (0..10).map(|_| pacer.reserve(t0, 1000)).collect();
        for (i, at) in leaves.iter().enumerate() {
            assert_eq!(at.duration_since(t0), Duration::from_millis(i as u64 + 1));
        }
        // After the link has been idle, a chunk leaves at its own pace again, not in the past.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(pacer.reserve(later, 1000), later + Duration::from_millis(1));
    }

    #[test]
    fn the_pacer_holds_the_rate_over_many_chunks_with_burst_credit() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(25e6); // 200 Mbit/s
        let mut at = t0;
        let mut last = t0;
        // 1 GB offered in 64 KiB chunks as fast as the pacer lets them through.
        let chunks = 1_000_000_000 / 65536;
        for _ in 0..chunks {
            last = pacer.reserve(at, 65536);
            at = last;
        }
        let secs = last.duration_since(t0).as_secs_f64();
        let expected = (chunks * 65536) as f64 / 25e6;
        assert!(
            (secs - expected).abs() / expected < 0.001,
            "{secs} s against {expected} s"
        );
    }

    #[test]
    fn the_delay_line_delays_each_chunk_from_its_own_read_time() {
        // Not stop-and-wait: chunks read 1 ms apart are due 1 ms apart, each one RTT/2 later,
        // however many are queued; so a 20 ms RTT adds 10 ms, not 10 ms per chunk.
        let t0 = Instant::now();
        let one_way = Duration::from_millis(10);
        for i in 0..100u64 {
            let read = t0 + Duration::from_millis(i);
            assert_eq!(due_at(read, one_way, t0), read + one_way);
        }
        // The client's first bytes wait for the emulated handshake (1.5 RTT after the accept).
        let handshake_done = t0 + Duration::from_millis(30);
        assert_eq!(due_at(t0, one_way, handshake_done), handshake_done);
        assert_eq!(
            due_at(t0 + Duration::from_millis(25), one_way, handshake_done),
            t0 + Duration::from_millis(35)
        );
    }

    #[test]
    fn a_chunk_already_due_is_written_without_a_timer() {
        let now = Instant::now();
        assert_eq!(wake_at(now, now), None);
        assert_eq!(wake_at(now + Duration::from_micros(400), now), None);
        let due = now + Duration::from_millis(10);
        assert_eq!(wake_at(due, now), Some(due - Duration::from_micros(500)));
    }

    #[test]
    fn plain_control_lines_are_traced_with_the_password_masked() {
        assert_eq!(
            plain_lines(b"USER bob\r\nPASS hunter2\r\n"),
            Some(vec!["USER bob".to_string(), "PASS ****".to_string()])
        );
        assert_eq!(plain_lines(b"\x16\x03\x01\x02\x00"), None);
        assert_eq!(plain_lines(b"partial line"), None);
    }

    /// A round trip through the proxy takes at least the RTT, and bytes arrive complete and in
    /// order even when they are queued faster than they are due.
    #[tokio::test]
    async fn bytes_arrive_in_order_and_a_round_trip_takes_the_rtt() -> anyhow::Result<()> {
        let server = TcpListener::bind("127.0.0.1:0").await?;
        let port = server.local_addr()?.port();
        // An echo server.
        tokio::spawn(async move {
            if let Ok((mut s, _)) = server.accept().await {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let rtt = Duration::from_millis(40);
        let link = Arc::new(Link {
            one_way: rtt / 2,
            handshake: rtt + rtt / 2,
            up: None,
            down: None,
            queue_bytes: 1 << 20,
            trace: Trace {
                start: Instant::now(),
                sink: None,
            },
            control_port: 0,
            next_id: AtomicU64::new(1),
        });
        let front = TcpListener::bind("127.0.0.1:0").await?;
        let front_addr = front.local_addr()?;
        tokio::spawn(async move {
            if let Ok((client, _)) = front.accept().await {
                serve_connection(link, client, port, SocketAddr::from(([127, 0, 0, 1], port)))
                    .await;
            }
        });
        let mut client = TcpStream::connect(front_addr).await?;
        let started = Instant::now();
        client.write_all(b"ping").await?;
        let mut four = [0u8; 4];
        client.read_exact(&mut four).await?;
        // The handshake (1.5 RTT) and one way back (0.5 RTT).
        assert!(started.elapsed() >= rtt * 2, "{:?}", started.elapsed());
        assert_eq!(&four, b"ping");
        let second = Instant::now();
        client.write_all(b"pong").await?;
        client.read_exact(&mut four).await?;
        assert!(second.elapsed() >= rtt, "{:?}", second.elapsed());
        // 4 MiB (more than the 1 MiB queue) comes back whole and in order.
        let data: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let (mut r, mut w) = client.into_split();
        let sent = data.clone();
        let send = tokio::spawn(async move { w.write_all(&sent).await.map(|_| w) });
        let mut back = vec![0u8; data.len()];
        r.read_exact(&mut back).await?;
        send.await??;
        assert!(back == data, "echoed bytes differ");
        Ok(())
    }
}
