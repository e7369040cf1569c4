//! The bare-client ceiling of the benchmark (tests/bench/compare.sh): one file up or down over
//! explicit FTPS with nothing around the transfer loop (no scan, hash, ledger, temporary name,
//! rename or MFMT), so the harness can show what a server and the client stack (suppaftp +
//! rustls + tokio) reach by themselves, and how much of that ferrysync keeps.
//!
//! It uses ferrysync's own TLS connector (`ferrysync::tls`), because servers that require TLS
//! session reuse on data connections (vsftpd `require_ssl_reuse=YES`, ProFTPD) refuse a data
//! connection that does not resume its control connection's session, and that connector keeps
//! one session cache per connection.
//!
//! ```text
//! cargo run --release --example bare_client -- --port 2121 --user u --password-file pw \
//!     --ca-file ca.pem up local.bin /remote/path.bin
//! cargo run --release --example bare_client -- ... down /remote/path.bin
//! ```
//! Prints one line: `bytes seconds MiB/s`, the seconds from the TCP connect to the transfer's
//! 226. An upload's file is read into memory before the clock starts, and a download's bytes
//! are counted and dropped, so the figure is the network, TLS and server alone: the ceiling.
//! Exits 1 with the error on failure.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use ferrysync::config::TlsOptions;
use ferrysync::remote::FtpStream;
use ferrysync::remote::TlsContext;
use suppaftp::types::FileType;
use suppaftp::Mode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The write size of the loop: the size the issue's bare-client measurements used.
const CHUNK: usize = 256 * 1024;

#[derive(Parser)]
#[command(about = "One FTPS transfer with 256 KiB writes and nothing else; prints MiB/s")]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long)]
    port: u16,
    #[arg(long)]
    user: String,
    /// A file holding the password (no newline needed).
    #[arg(long)]
    password_file: PathBuf,
    /// The CA that signed the server's certificate.
    #[arg(long)]
    ca_file: PathBuf,
    /// Offer TLS 1.2 only.
    #[arg(long)]
    tls12: bool,
    #[command(subcommand)]
    direction: Direction,
}

#[derive(Subcommand)]
enum Direction {
    /// STOR the local file to the remote path.
    Up { local: PathBuf, remote: String },
    /// RETR the remote path, counting the bytes.
    Down { remote: String },
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match run(&args).await {
        Ok((bytes, secs)) => {
            println!(
                "{bytes} {secs:.3} {:.1}",
                bytes as f64 / 1_048_576.0 / secs.max(1e-9)
            );
        }
        Err(e) => {
            eprintln!("bare_client: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Logs in, moves the file, logs out; returns the bytes moved and the seconds from the TCP
/// connect to the transfer's 226.
async fn run(args: &Args) -> anyhow::Result<(u64, f64)> {
    let password = std::fs::read_to_string(&args.password_file)
        .with_context(|| format!("reading {}", args.password_file.display()))?;
    let tls = TlsContext::new(&TlsOptions {
        tls12_only: args.tls12,
        ca_file: Some(args.ca_file.clone()),
        pins: Vec::new(),
        insecure_skip_verify: false,
        client_cert: None,
        client_key: None,
    })
    .map_err(anyhow::Error::msg)?;
    let connector = tls.connector().map_err(anyhow::Error::msg)?;
    let upload = match &args.direction {
        Direction::Up { local, .. } => {
            std::fs::read(local).with_context(|| format!("reading {}", local.display()))?
        }
        Direction::Down { .. } => Vec::new(),
    };

    let started = Instant::now();
    let tcp = tokio::net::TcpStream::connect((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("connecting to {}:{}", args.host, args.port))?;
    let plain = FtpStream::connect_with_stream(tcp).await?;
    let mut ftp = plain.into_secure(connector, &args.host).await?;
    ftp.login(args.user.as_str(), password.trim_end_matches('\n'))
        .await?;
    ftp.transfer_type(FileType::Binary).await?;
    ftp.set_mode(Mode::ExtendedPassive);

    let mut downloaded = 0u64;
    match &args.direction {
        Direction::Up { remote, .. } => {
            let mut stream = ftp.put_with_stream(remote).await?;
            for chunk in upload.chunks(CHUNK) {
                stream.write_all(chunk).await?;
            }
            stream.finish().await?;
        }
        Direction::Down { remote, .. } => {
            let mut stream = ftp.retr_as_stream(remote).await?;
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                downloaded += n as u64;
            }
            stream.finish().await?;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = ftp.quit().await;
    let bytes = match &args.direction {
        Direction::Up { .. } => upload.len() as u64,
        Direction::Down { .. } => downloaded,
    };
    if bytes == 0 {
        bail!("no bytes moved");
    }
    Ok((bytes, secs))
}
