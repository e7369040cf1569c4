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
//! cargo run --release --example bare_client -- ... down /remote/path.bin local.bin
//! ```
//! Prints one line: `bytes seconds MiB/s`. Exits 1 with the error on failure.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use ferrysync::config::TlsOptions;
use ferrysync::ftps::FtpStream;
use ferrysync::tls::TlsContext;
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
    /// RETR the remote path into the local file.
    Down { remote: String, local: PathBuf },
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

/// Logs in, moves the file, logs out; returns the bytes moved and the seconds from the first
/// byte of the control connection to the transfer's 226 (what a sync tool's user waits for).
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

    let mut buf = vec![0u8; CHUNK];
    let mut bytes = 0u64;
    match &args.direction {
        Direction::Up { local, remote } => {
            let mut file = std::fs::File::open(local)
                .with_context(|| format!("opening {}", local.display()))?;
            let mut stream = ftp.put_with_stream(remote).await?;
            loop {
                // A page-cached read of 256 KiB takes microseconds: no blocking pool needed
                // for a one-task program.
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                stream.write_all(&buf[..n]).await?;
                bytes += n as u64;
            }
            stream.finish().await?;
        }
        Direction::Down { remote, local } => {
            let mut file = std::fs::File::create(local)
                .with_context(|| format!("creating {}", local.display()))?;
            let mut stream = ftp.retr_as_stream(remote).await?;
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                file.write_all(&buf[..n])?;
                bytes += n as u64;
            }
            stream.finish().await?;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    if bytes == 0 {
        bail!("no bytes moved");
    }
    let _ = ftp.quit().await;
    Ok((bytes, secs))
}
