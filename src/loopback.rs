//! An embedded FTPS server on 127.0.0.1 (libunftp over a local folder) with a throw-away
//! certificate: what `ferrysync demo` syncs against, and what the integration tests use so that
//! `cargo test` needs nothing installed. It is a real FTPS server: AUTH TLS, PBSZ/PROT,
//! password login, passive and active (PORT) data connections over TLS.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libunftp::options::FtpsRequired;
use unftp_core::auth::{AuthenticationError, Authenticator, Credentials, Principal};

/// A certificate for `localhost` and `127.0.0.1`, made fresh for each server.
pub struct ThrowAwayCert {
    pub cert_pem: String,
    pub key_pem: String,
}

pub(crate) fn make_cert() -> anyhow::Result<ThrowAwayCert> {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let certified = rcgen::generate_simple_self_signed(names)?;
    Ok(ThrowAwayCert {
        cert_pem: certified.cert.pem(),
        key_pem: certified.key_pair.serialize_pem(),
    })
}

#[derive(Debug)]
struct PasswordCheck {
    user: String,
    password: String,
}

#[async_trait::async_trait]
impl Authenticator for PasswordCheck {
    async fn authenticate(
        &self,
        username: &str,
        creds: &Credentials,
    ) -> Result<Principal, AuthenticationError> {
        if username != self.user {
            return Err(AuthenticationError::BadUser);
        }
        match &creds.password {
            Some(p) if *p == self.password => Ok(Principal {
                username: username.to_string(),
            }),
            _ => Err(AuthenticationError::BadPassword),
        }
    }
}

/// Settings of a loopback server.
pub struct LoopbackOptions {
    /// The folder served as `/`.
    pub root: PathBuf,
    /// Where `cert.pem` and `key.pem` are written.
    pub cert_dir: PathBuf,
    pub user: String,
    pub password: String,
    /// `None` picks a free port.
    pub port: Option<u16>,
    /// `false` serves plain FTP only (to test that ferrysync refuses it).
    pub tls: bool,
}

/// A running server; dropping the runtime that runs it stops it.
pub struct LoopbackServer {
    pub port: u16,
    pub cert_pem_path: PathBuf,
    pub cert: ThrowAwayCert,
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The ports [`start`] opens passive (data) connections on.
pub const DEFAULT_PASSIVE_PORTS: RangeInclusive<u16> = 30000..=39999;

/// Starts a server on the current tokio runtime and returns once it accepts connections.
pub async fn start(opts: LoopbackOptions) -> anyhow::Result<LoopbackServer> {
    start_with_passive_ports(opts, DEFAULT_PASSIVE_PORTS).await
}

/// [`start`], with passive (data) connections on `passive_ports` instead of
/// [`DEFAULT_PASSIVE_PORTS`] (the tests' fault proxy listens on every port of the range).
pub async fn start_with_passive_ports(
    opts: LoopbackOptions,
    passive_ports: RangeInclusive<u16>,
) -> anyhow::Result<LoopbackServer> {
    std::fs::create_dir_all(&opts.root)?;
    std::fs::create_dir_all(&opts.cert_dir)?;
    let cert = make_cert()?;
    let cert_path = opts.cert_dir.join("cert.pem");
    let key_path = opts.cert_dir.join("key.pem");
    std::fs::write(&cert_path, &cert.cert_pem)?;
    write_private(&key_path, &cert.key_pem)?;
    let port = match opts.port {
        Some(p) => p,
        None => free_port()?,
    };
    // Fails here, with an error, if the root cannot be opened; the per-connection copies
    // below can then only fail if the folder is removed while the server runs.
    unftp_sbe_fs::Filesystem::new(opts.root.clone())?;
    let root = opts.root.clone();
    let auth = Arc::new(PasswordCheck {
        user: opts.user.clone(),
        password: opts.password.clone(),
    });
    let mut builder = libunftp::ServerBuilder::with_authenticator(
        Box::new(move || {
            unftp_sbe_fs::Filesystem::new(root.clone()).expect("the server root exists")
        }),
        auth,
    )
    .greeting("ferrysync loopback FTPS server")
    .passive_ports(passive_ports)
    // PORT too (libunftp has no EPRT), so active mode can be tried without a firewall.
    .active_passive_mode(libunftp::options::ActivePassiveMode::ActiveAndPassive)
    .idle_session_timeout(600);
    if opts.tls {
        builder = builder
            .ftps(cert_path.clone(), key_path.clone())
            .ftps_required(FtpsRequired::All, FtpsRequired::All);
    }
    let server = builder.build()?;
    let addr = format!("127.0.0.1:{port}");
    tokio::spawn(async move {
        if let Err(e) = server.listen(addr).await {
            tracing::error!("loopback FTPS server stopped: {e}");
        }
    });
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(LoopbackServer {
                port,
                cert_pem_path: cert_path,
                cert,
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    anyhow::bail!("the loopback FTPS server did not start on 127.0.0.1:{port}")
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content.as_bytes())
}
