//! TLS for FTPS: the client configuration (trust store, CA file, pins, client certificates),
//! and the stream type every control and data connection uses.
//!
//! Every connection gets a TLS client configuration of its own. The session cache lives in that
//! configuration, and servers such as vsftpd (`require_ssl_reuse=YES`) accept a data connection
//! only if it resumes the TLS session of *its own* control connection: a cache shared by several
//! parallel connections would hand one connection's session to another's data channel.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::Digest;
use suppaftp::tokio::{AsyncTlsConnector, TokioTlsStream};
use suppaftp::{FtpError, FtpResult};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::{Fingerprint, TlsOptions};

/// TLS material loaded once per run; [`TlsContext::connector`] makes a fresh client
/// configuration (and so a fresh session cache) for each connection.
pub struct TlsContext {
    provider: Arc<CryptoProvider>,
    verifier: Arc<dyn ServerCertVerifier>,
    /// `tls.client_cert` with `tls.client_key` (see [`client_certified_key`]).
    client_auth: Option<Arc<CertifiedKey>>,
    /// Offer TLS 1.2 only: from `tls.max_version: "1.2"`, or set during a run by
    /// [`TlsContext::fall_back_to_tls12`].
    tls12_only: Arc<AtomicBool>,
    /// Some connection of this run negotiated TLS 1.3.
    used_tls13: Arc<AtomicBool>,
    /// The server completed a transfer on a TLS 1.3 data connection that did not resume the
    /// control session: it does not require session reuse (see [`Resumption`]).
    unresumed_accepted: Arc<AtomicBool>,
    /// A PASV address was replaced by the control connection's during this run (see
    /// [`TlsContext::passive_substitution_note`]). The context is the one object every
    /// connection of a run shares, so this run-wide note lives here too.
    passive_substitution_noted: Arc<AtomicBool>,
    /// The server took commands sent together concurrently rather than one after the other
    /// (see [`TlsContext::one_command_at_a_time`]).
    one_command_at_a_time: Arc<AtomicBool>,
    /// The key exchange group the server chose, for every connection of the run (see
    /// [`TicketCountingStore`]).
    kx_hint: Arc<std::sync::Mutex<Option<rustls::NamedGroup>>>,
    /// How the server's certificate is verified, for `ferrysync test`.
    verification: Verification,
    /// The handshakes of this context's connections, kept only once
    /// [`TlsContext::record_handshakes`] asked for them (`ferrysync test`).
    handshakes: Arc<HandshakeLog>,
}

/// How a server's certificate is verified (the job's `tls:` settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// The system's trust store.
    SystemRoots,
    /// `tls.ca_file`.
    CaFile(std::path::PathBuf),
    /// `tls.pin_sha256`: exactly these certificates, whoever issued them.
    Pin,
    /// `tls.insecure_skip_verify: true`.
    None,
}

/// A certificate's subject and the end of its validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateDates {
    pub subject: String,
    /// Unix seconds.
    pub not_after: i64,
}

impl CertificateDates {
    /// From a DER certificate; `None` if it cannot be parsed.
    pub fn of(der: &[u8]) -> Option<CertificateDates> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        Some(CertificateDates {
            subject: cert.subject().to_string(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }
}

/// What one TLS handshake negotiated (see [`TlsContext::record_handshakes`]).
#[derive(Debug, Clone)]
pub struct HandshakeFacts {
    /// A data connection's handshake (the first of a connector is its control connection's).
    pub data_connection: bool,
    /// `TLS 1.2`, `TLS 1.3`.
    pub version: String,
    /// The IANA name of the suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher_suite: String,
    /// The handshake resumed an earlier session (a data connection resuming the control
    /// connection's, as servers with `require_ssl_reuse` demand).
    pub resumed: bool,
    /// The server's certificate chain (DER, leaf first) as it sent it; empty when resumed.
    pub peer_certificates: Vec<Vec<u8>>,
}

/// The handshakes recorded for `ferrysync test`: off (and empty) in runs, so a long-running
/// agent keeps nothing.
#[derive(Debug, Default)]
struct HandshakeLog {
    on: AtomicBool,
    entries: std::sync::Mutex<Vec<HandshakeFacts>>,
    /// The leaf certificate (DER) of the first full handshake, kept in every run: its expiry
    /// goes to the ledger (`certificate_expiring` alerts, metrics).
    first_leaf: std::sync::OnceLock<Vec<u8>>,
}

impl HandshakeLog {
    fn add(&self, conn: &rustls::ClientConnection, data_connection: bool) {
        if self.first_leaf.get().is_none() {
            if let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) {
                let _ = self.first_leaf.set(leaf.as_ref().to_vec());
            }
        }
        if !self.on.load(Ordering::Relaxed) {
            return;
        }
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_string(),
            Some(v) => format!("{v:?}"),
            None => "unknown".to_string(),
        };
        let cipher_suite = conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .map(str::to_string)
            .unwrap_or_else(|| "unknown".to_string());
        let facts = HandshakeFacts {
            data_connection,
            version,
            cipher_suite,
            resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            peer_certificates: conn
                .peer_certificates()
                .map(|c| c.iter().map(|d| d.as_ref().to_vec()).collect())
                .unwrap_or_default(),
        };
        if let Ok(mut e) = self.entries.lock() {
            e.push(facts);
        }
    }
}

impl TlsContext {
    pub fn new(opts: &TlsOptions) -> Result<TlsContext, String> {
        let mut provider = rustls::crypto::ring::default_provider();
        if aes_is_accelerated() {
            provider.cipher_suites.retain(|s| !is_chacha20(s.suite()));
        }
        // The key share of the first ClientHello is for the first group. P-256 is the one
        // every TLS 1.3 server must take (RFC 8446, 9.1); X25519 first made vsftpd, which
        // takes only P-256, answer with a HelloRetryRequest: one more round trip per login.
        provider
            .kx_groups
            .sort_by_key(|g| g.name() != rustls::NamedGroup::secp256r1);
        let provider = Arc::new(provider);
        let algs = provider.signature_verification_algorithms;
        let verification = if opts.insecure_skip_verify {
            Verification::None
        } else if !opts.pins.is_empty() {
            Verification::Pin
        } else if let Some(ca) = &opts.ca_file {
            Verification::CaFile(ca.clone())
        } else {
            Verification::SystemRoots
        };
        let verifier: Arc<dyn ServerCertVerifier> = if opts.insecure_skip_verify {
            Arc::new(PinnedCertificate { pins: None, algs })
        } else if !opts.pins.is_empty() {
            Arc::new(PinnedCertificate {
                pins: Some(opts.pins.clone()),
                algs,
            })
        } else {
            let mut roots = RootCertStore::empty();
            match &opts.ca_file {
                Some(ca) => {
                    let certs = read_certs(ca)?;
                    for c in certs {
                        roots
                            .add(c)
                            .map_err(|e| format!("tls.ca_file {}: {e}", ca.display()))?;
                    }
                }
                None => {
                    let found = rustls_native_certs::load_native_certs();
                    for c in found.certs {
                        let _ = roots.add(c);
                    }
                    if roots.is_empty() {
                        return Err("the system trust store is empty (install ca-certificates) and no tls.ca_file or tls.pin_sha256 is set".into());
                    }
                }
            }
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| format!("TLS verifier: {e}"))?
        };
        let client_auth = match (&opts.client_cert, &opts.client_key) {
            (Some(cert_path), Some(key_path)) => {
                let certs = read_certs(cert_path)?;
                let pem = std::fs::read(key_path)
                    .map_err(|e| format!("tls.client_key {}: {e}", key_path.display()))?;
                let key = rustls_pemfile::private_key(&mut pem.as_slice())
                    .map_err(|e| format!("tls.client_key {}: {e}", key_path.display()))?
                    .ok_or_else(|| {
                        format!(
                            "tls.client_key {}: no private key in the file",
                            key_path.display()
                        )
                    })?;
                Some(client_certified_key(
                    certs, key, &provider, cert_path, key_path,
                )?)
            }
            _ => None,
        };
        Ok(TlsContext {
            provider,
            verifier,
            client_auth,
            tls12_only: Arc::new(AtomicBool::new(opts.tls12_only)),
            used_tls13: Arc::new(AtomicBool::new(false)),
            unresumed_accepted: Arc::new(AtomicBool::new(false)),
            passive_substitution_noted: Arc::new(AtomicBool::new(false)),
            one_command_at_a_time: Arc::new(AtomicBool::new(false)),
            kx_hint: Arc::default(),
            verification,
            handshakes: Arc::new(HandshakeLog::default()),
        })
    }

    /// The subject and expiry of the server's certificate, as the first handshake of this
    /// context's connections met it (`None` before one succeeded).
    pub fn server_certificate(&self) -> Option<CertificateDates> {
        self.handshakes
            .first_leaf
            .get()
            .and_then(|der| CertificateDates::of(der))
    }

    /// The subject and expiry of `tls.client_cert`, if the job has one.
    pub fn client_certificate(&self) -> Option<CertificateDates> {
        self.client_auth
            .as_ref()
            .and_then(|k| k.cert.first())
            .and_then(|der| CertificateDates::of(der))
    }

    /// How this context verifies servers' certificates.
    pub fn verification(&self) -> &Verification {
        &self.verification
    }

    /// From now on, keep what each handshake of this context's connections negotiated (see
    /// [`TlsContext::handshakes`]): for `ferrysync test`, never in runs.
    pub fn record_handshakes(&self) {
        self.handshakes.on.store(true, Ordering::Relaxed);
    }

    /// The handshakes recorded since [`TlsContext::record_handshakes`], in order.
    pub fn handshakes(&self) -> Vec<HandshakeFacts> {
        self.handshakes
            .entries
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// The run's flag "a PASV address was replaced": the substitution is logged at info once
    /// per run, not once per data connection.
    pub(crate) fn passive_substitution_note(&self) -> Arc<AtomicBool> {
        self.passive_substitution_noted.clone()
    }

    /// The run's flag "send this server one command at a time": set once the server was seen
    /// to take commands sent together concurrently (libunftp refuses an RNTO that arrives while
    /// its RNFR is still being checked), so the run's later connections do not pipeline.
    pub(crate) fn one_command_at_a_time(&self) -> Arc<AtomicBool> {
        self.one_command_at_a_time.clone()
    }

    /// A connector with a fresh client configuration: one per FTP connection.
    pub fn connector(&self) -> Result<TlsConnector, String> {
        let versions: &[&rustls::SupportedProtocolVersion] =
            if self.tls12_only.load(Ordering::Relaxed) {
                &[&rustls::version::TLS12]
            } else {
                rustls::DEFAULT_VERSIONS
            };
        let builder = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| format!("TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(self.verifier.clone());
        let mut config = match &self.client_auth {
            Some(certified) => builder.with_client_cert_resolver(Arc::new(
                rustls::sign::SingleCertAndKey::from(certified.clone()),
            )),
            None => builder.with_no_client_auth(),
        };
        let store = Arc::new(TicketCountingStore::new(self.kx_hint.clone()));
        config.resumption = rustls::client::Resumption::store(store.clone());
        Ok(TlsConnector {
            inner: tokio_rustls::TlsConnector::from(Arc::new(config)),
            used_tls13: self.used_tls13.clone(),
            resumption: Arc::new(Resumption {
                store,
                first_was_tls13: std::sync::OnceLock::new(),
                unresumed_pending: AtomicBool::new(false),
                unresumed_accepted: self.unresumed_accepted.clone(),
            }),
            control: Arc::new(ControlProgress::default()),
            handshakes: self.handshakes.clone(),
        })
    }

    /// Offers only TLS 1.2 to the run's new connections, before any transfer fails: called
    /// when a TLS 1.3 control session has no ticket left for its next data connection (see
    /// [`Resumption`]). Returns true if this call made the switch.
    pub(crate) fn switch_to_tls12(&self) -> bool {
        !self.tls12_only.swap(true, Ordering::Relaxed)
    }

    /// A data connection was refused with 425. With TLS 1.3 that is what servers such as
    /// ProFTPD answer to a data connection that could not resume the control session (see
    /// [`Resumption`], which normally sees it coming); this is the safety net for a server
    /// that drops tickets ferrysync still counts. Returns true if this call switched the run's
    /// new connections to TLS 1.2.
    pub(crate) fn fall_back_to_tls12(&self) -> bool {
        self.used_tls13.load(Ordering::Relaxed) && !self.tls12_only.swap(true, Ordering::Relaxed)
    }
}

/// Whether this CPU encrypts AES-GCM in hardware (AES-NI and carry-less multiply on x86-64,
/// the crypto extensions on aarch64).
///
/// Then ferrysync offers no ChaCha20-Poly1305 suite. Servers choose the cipher, and some
/// prefer ChaCha20 under TLS 1.2 (Pure-FTPd 1.0.50 picks ECDHE-RSA-CHACHA20-POLY1305): a
/// profile of a 200 MiB upload to it spent 39% of all CPU time in ChaCha20, which is about
/// half as fast as AES-GCM where AES has hardware support. AES-GCM is as strong, and every
/// TLS 1.2 server with ECDHE offers it (TLS 1.3 servers must), so nothing is lost in
/// security or reach. Without hardware AES, ChaCha20 is the faster one and stays offered.
fn aes_is_accelerated() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

fn is_chacha20(suite: rustls::CipherSuite) -> bool {
    matches!(
        suite,
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
            | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
    )
}

/// The client certificate and its key, as rustls sends them.
///
/// rustls's `with_client_auth_cert` parses the certificate with webpki to check that it
/// matches the key, and webpki refuses X.509 version 1 certificates (`UnsupportedCertVersion`),
/// which older CA scripts (`openssl x509 -req` without extensions) still issue and OpenSSL
/// servers accept: such a job failed before anything was sent. Here the certificate and key are
/// paired without that parse: a key that evidently belongs to another certificate is still
/// refused locally, and a certificate webpki cannot read is sent as it is, for the server to
/// decide (a server that refuses it answers with a TLS alert, reported as such).
fn client_certified_key(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
    cert_path: &std::path::Path,
    key_path: &std::path::Path,
) -> Result<Arc<CertifiedKey>, String> {
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("tls.client_key {}: {e}", key_path.display()))?;
    let certified = CertifiedKey::new(certs, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(format!(
                "tls.client_key {} is not the key of tls.client_cert {}",
                key_path.display(),
                cert_path.display()
            ));
        }
        Err(e) => tracing::debug!(
            "tls.client_cert {}: not checked against the key ({e}); sent as it is",
            cert_path.display()
        ),
    }
    Ok(Arc::new(certified))
}

fn read_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(certs)
}

/// SHA-256 of a DER certificate, as `tls.pin_sha256` spells it.
pub fn fingerprint(cert: &[u8]) -> Fingerprint {
    Fingerprint(sha2::Sha256::digest(cert).into())
}

/// `tls.pin_sha256` (accept exactly the pinned certificates, whoever signed them) and
/// `tls.insecure_skip_verify` (accept any, `pins: None`). The handshake signature is checked
/// either way, so the peer holds the certificate's key.
#[derive(Debug)]
struct PinnedCertificate {
    pins: Option<Vec<Fingerprint>>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(pins) = &self.pins else {
            return Ok(ServerCertVerified::assertion());
        };
        let got = fingerprint(end_entity);
        if pins.contains(&got) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server certificate's SHA-256 {got} matches no tls.pin_sha256"
            )))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Opens TLS on control and data connections (suppaftp keeps it for the data connections).
/// A clone shares the configuration and so the session cache: active-mode data connections
/// use a clone of their control connection's connector to resume its session.
#[derive(Clone)]
pub struct TlsConnector {
    inner: tokio_rustls::TlsConnector,
    used_tls13: Arc<AtomicBool>,
    resumption: Arc<Resumption>,
    control: Arc<ControlProgress>,
    handshakes: Arc<HandshakeLog>,
}

impl TlsConnector {
    /// What this connection's data connections can resume; read it before handing the
    /// connector to suppaftp.
    pub(crate) fn resumption(&self) -> Arc<Resumption> {
        self.resumption.clone()
    }

    /// How far the control connection got over TLS; read it before handing the connector to
    /// suppaftp.
    pub(crate) fn control_progress(&self) -> Arc<ControlProgress> {
        self.control.clone()
    }
}

/// How far a control connection got after its TLS handshake: whether the handshake completed,
/// and how many command lines went out over TLS since.
///
/// suppaftp's `into_secure` sends AUTH TLS, shakes hands, then sends PBSZ 0 and PROT P, and a
/// refusal of any of the three comes back as the same bare "unexpected reply". This tells them
/// apart: no handshake yet means AUTH TLS was refused; after it, one line sent means PBSZ 0,
/// two mean PROT P.
///
/// It also carries the control connection's commands written ahead (see
/// [`ControlProgress::write_ahead`]): suppaftp sends one command and reads its reply, so a batch
/// of commands whose order is fixed goes out through here, in one flight, and the session then
/// reads their replies in order with suppaftp's `read_response_in`.
#[derive(Debug, Default)]
pub struct ControlProgress {
    secured: AtomicBool,
    lines: std::sync::atomic::AtomicUsize,
    /// Command lines queued by [`ControlProgress::write_ahead`], not yet taken by the stream.
    ahead: std::sync::Mutex<Vec<u8>>,
    /// Command lines that go out right after PROT P (see
    /// [`ControlProgress::write_after_protection`]).
    after_protection: std::sync::Mutex<Vec<u8>>,
    /// The round trip as the login saw it (see [`ControlProgress::measured_rtt`]).
    rtt: std::sync::Mutex<RttSamples>,
}

/// Round-trip samples of a control connection's login: from each write after the TLS
/// handshake to the next reply bytes read.
#[derive(Debug, Default)]
struct RttSamples {
    /// No more samples: the login is over.
    done: bool,
    /// When the first line not yet answered went out.
    sent: Option<std::time::Instant>,
    fastest: Option<Duration>,
}

impl ControlProgress {
    /// `None` before the TLS handshake completed; then the command lines sent over TLS.
    pub(crate) fn lines_after_handshake(&self) -> Option<usize> {
        self.secured
            .load(Ordering::Acquire)
            .then(|| self.lines.load(Ordering::Acquire))
    }

    fn handshake_done(&self) {
        self.secured.store(true, Ordering::Release);
    }

    /// Queues complete command lines (CRLF-terminated, checked by the caller) for the control
    /// connection. They go out before anything else is written or read on it, so the next read
    /// of a reply sends them first: the caller then reads one reply per line, in order.
    pub(crate) fn write_ahead(&self, lines: &[u8]) {
        // Traced as suppaftp traces the commands it sends, under its target, so that
        // `FERRYSYNC_LOG=suppaftp=trace` still shows the whole dialogue; the password masked.
        for line in String::from_utf8_lossy(lines).split("\r\n") {
            match line.get(..5) {
                _ if line.is_empty() => {}
                Some(p) if p.eq_ignore_ascii_case("PASS ") => {
                    tracing::trace!(target: "suppaftp", "CC OUT: PASS ****")
                }
                _ => tracing::trace!(target: "suppaftp", "CC OUT: {line}"),
            }
        }
        if let Ok(mut ahead) = self.ahead.lock() {
            ahead.extend_from_slice(lines);
        }
    }

    /// Queues complete command lines to go out in the flight of PROT P, the last command
    /// suppaftp's `into_secure` sends (after AUTH TLS, the handshake and PBSZ 0): the login
    /// then costs one round trip less per command that joins it. The caller reads one reply
    /// per line once `into_secure` has returned; if PROT P never went out (`into_secure` failed
    /// before it), [`ControlProgress::take_after_protection`] gives them back unsent.
    pub(crate) fn write_after_protection(&self, lines: &[u8]) {
        if let Ok(mut after) = self.after_protection.lock() {
            after.extend_from_slice(lines);
        }
    }

    /// The lines of [`ControlProgress::write_after_protection`] that did not go out.
    pub(crate) fn take_after_protection(&self) -> Vec<u8> {
        self.after_protection
            .lock()
            .map(|mut a| std::mem::take(&mut *a))
            .unwrap_or_default()
    }

    /// The fastest reply of the login, from a line written after the TLS handshake to the
    /// first bytes of its reply (PBSZ 0 and PROT P are answered without work, unlike PASS);
    /// ends the sampling, so later commands, whose replies may have been read ahead, do not
    /// count. `None` before any reply over TLS.
    pub(crate) fn measured_rtt(&self) -> Option<Duration> {
        let mut rtt = self.rtt.lock().ok()?;
        rtt.done = true;
        rtt.fastest
    }

    /// Reply bytes arrived on the control connection.
    fn read_some(&self) {
        if let Ok(mut rtt) = self.rtt.lock() {
            if let Some(sent) = rtt.sent.take() {
                let took = sent.elapsed();
                rtt.fastest = Some(rtt.fastest.map_or(took, |f| f.min(took)));
            }
        }
    }

    /// Takes the queued lines out.
    fn take_ahead(&self) -> Vec<u8> {
        self.ahead
            .lock()
            .map(|mut a| std::mem::take(&mut *a))
            .unwrap_or_default()
    }

    /// Puts back the part of taken lines that the socket did not accept yet, ahead of any
    /// queued since.
    fn put_back_ahead(&self, rest: &[u8]) {
        if let Ok(mut ahead) = self.ahead.lock() {
            ahead.splice(0..0, rest.iter().copied());
        }
    }

    /// Counts the complete lines in bytes written to the control connection; once the second
    /// after the handshake (PROT P) is out, queues the lines that wait for it.
    fn wrote(&self, bytes: &[u8]) {
        let n = bytes.iter().filter(|b| **b == b'\n').count();
        if n == 0 || !self.secured.load(Ordering::Acquire) {
            return;
        }
        let before = self.lines.fetch_add(n, Ordering::AcqRel);
        if let Ok(mut rtt) = self.rtt.lock() {
            if !rtt.done && rtt.sent.is_none() {
                rtt.sent = Some(std::time::Instant::now());
            }
        }
        if before < 2 && before + n >= 2 {
            let after = self.take_after_protection();
            if !after.is_empty() {
                self.write_ahead(&after);
            }
        }
    }
}

/// Whether one FTP connection's data connections can still resume its TLS session.
///
/// Servers that require session reuse (vsftpd `require_ssl_reuse`, ProFTPD) refuse a data
/// connection that does a full handshake. Under TLS 1.2 one session ID can be resumed any
/// number of times. Under TLS 1.3 each resumption spends a single-use ticket (rustls never
/// copies one), the control handshake brings two, and a data connection brings a new one only
/// if the server writes on it: measured with ProFTPD 1.3.8, a listing or a download returns a
/// ticket, an upload returns none. So a run of uploads empties the store, and the third upload
/// would be refused with `425 Unable to build data connection`. Counting the tickets lets the
/// caller see that coming and reconnect with TLS 1.2 before a transfer fails.
///
/// Many servers (Pure-FTPd, libunftp) require no reuse, and some issue no TLS 1.3 tickets at
/// all: there the count is zero from the start, and reconnecting with TLS 1.2 would only cost
/// a login. So once the server has completed a transfer on a TLS 1.3 data connection that did
/// a full handshake, the run knows it accepts them, and no count is ever "exhausted" again.
#[derive(Debug)]
pub struct Resumption {
    store: Arc<TicketCountingStore>,
    /// The protocol of the connection's first handshake: the control connection's.
    first_was_tls13: std::sync::OnceLock<bool>,
    /// The last data connection was TLS 1.3 and did not resume: if its transfer completes,
    /// the server does not require reuse.
    unresumed_pending: AtomicBool,
    /// Run-wide (shared with the [`TlsContext`]): the server accepts such data connections.
    unresumed_accepted: Arc<AtomicBool>,
}

impl Resumption {
    /// A TLS 1.3 control connection with no ticket left, on a server not known to accept data
    /// connections without one: its next data connection may be refused.
    pub(crate) fn exhausted(&self) -> bool {
        self.first_was_tls13.get() == Some(&true)
            && self.store.tls13_tickets.load(Ordering::Relaxed) == 0
            && !self.unresumed_accepted.load(Ordering::Relaxed)
    }

    /// The server completed the transfer of the last data connection (its 226 arrived).
    pub(crate) fn data_transfer_completed(&self) {
        if self.unresumed_pending.swap(false, Ordering::Relaxed)
            && !self.unresumed_accepted.swap(true, Ordering::Relaxed)
        {
            tracing::debug!("the server accepts TLS 1.3 data connections that do not resume the control session");
        }
    }
}

/// rustls's in-memory session cache, counting the TLS 1.3 tickets it holds. One per FTP
/// connection, so one server name: the count is that server's.
///
/// The key exchange group the server chose is shared by the run's connections, though: a
/// server that takes only P-256 (vsftpd sets it) answers rustls's X25519 key share with a
/// HelloRetryRequest, one more round trip per login, and rustls's own hint lives in the cache
/// of one connection.
#[derive(Debug)]
struct TicketCountingStore {
    inner: rustls::client::ClientSessionMemoryCache,
    tls13_tickets: std::sync::atomic::AtomicUsize,
    kx_hint: Arc<std::sync::Mutex<Option<rustls::NamedGroup>>>,
}

/// rustls keeps at most this many TLS 1.3 tickets per server, dropping the oldest.
const MAX_TLS13_TICKETS: usize = 8;

impl TicketCountingStore {
    fn new(kx_hint: Arc<std::sync::Mutex<Option<rustls::NamedGroup>>>) -> Self {
        TicketCountingStore {
            inner: rustls::client::ClientSessionMemoryCache::new(16),
            tls13_tickets: std::sync::atomic::AtomicUsize::new(0),
            kx_hint,
        }
    }
}

impl rustls::client::ClientSessionStore for TicketCountingStore {
    fn set_kx_hint(&self, name: ServerName<'static>, group: rustls::NamedGroup) {
        if let Ok(mut hint) = self.kx_hint.lock() {
            *hint = Some(group);
        }
        self.inner.set_kx_hint(name, group)
    }
    fn kx_hint(&self, name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner
            .kx_hint(name)
            .or_else(|| self.kx_hint.lock().ok().and_then(|h| *h))
    }
    fn set_tls12_session(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(name, value)
    }
    fn tls12_session(
        &self,
        name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.inner.remove_tls12_session(name)
    }
    fn insert_tls13_ticket(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.inner.insert_tls13_ticket(name, value);
        let _ = self
            .tls13_tickets
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some((n + 1).min(MAX_TLS13_TICKETS))
            });
    }
    fn take_tls13_ticket(
        &self,
        name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        let ticket = self.inner.take_tls13_ticket(name);
        let _ = self
            .tls13_tickets
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(if ticket.is_some() {
                    n.saturating_sub(1)
                } else {
                    0
                })
            });
        ticket
    }
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConnector")
    }
}

#[async_trait::async_trait]
impl AsyncTlsConnector for TlsConnector {
    type Stream = FlushingTlsStream;

    async fn connect(&self, domain: &str, stream: TcpStream) -> FtpResult<FlushingTlsStream> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| FtpError::SecureError(format!("server name {domain}: {e}")))?;
        // No Nagle delay: a handshake's last flight, or a command right after it, would
        // otherwise wait for the peer's delayed ACK (40 ms on Linux), once per connection.
        let _ = stream.set_nodelay(true);
        let inner = self
            .inner
            .connect(name, stream)
            .await
            .map_err(|e| FtpError::SecureError(e.to_string()))?;
        let tls13 = inner.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
        tracing::debug!(
            version = ?inner.get_ref().1.protocol_version(),
            suite = ?inner.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()),
            "TLS handshake done"
        );
        if tls13 {
            self.used_tls13.store(true, Ordering::Relaxed);
        }
        let data_connection = self.resumption.first_was_tls13.set(tls13).is_err();
        self.handshakes.add(inner.get_ref().1, data_connection);
        if !data_connection {
            self.control.handshake_done();
        }
        if data_connection {
            let resumed =
                inner.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            self.resumption
                .unresumed_pending
                .store(tls13 && !resumed, Ordering::Relaxed);
        }
        Ok(FlushingTlsStream {
            inner,
            unflushed: false,
            closing: None,
            shut: false,
            control: (!data_connection).then(|| self.control.clone()),
        })
    }
}

/// A TLS stream whose writes reach the socket without an explicit flush.
///
/// suppaftp writes each command with `write_all` and never flushes. tokio-rustls accepts the
/// bytes into its TLS buffer and returns success even when the socket was not writable at that
/// moment, so a command can sit in the buffer while both sides wait for each other: seen as a
/// LIST that vsftpd never received, under parallel load. Here every write is followed by a
/// flush, and a flush that could not finish is retried on the next read or write, whose waker
/// then also wakes on writability.
///
/// It also ends reading only at the TCP end of stream (see [`FlushingTlsStream::poll_tcp_eof`]).
#[derive(Debug)]
pub struct FlushingTlsStream {
    inner: tokio_rustls::client::TlsStream<TcpStream>,
    unflushed: bool,
    /// The peer's close_notify arrived: answering it, then waiting for the peer's FIN, until
    /// this deadline.
    closing: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Our close_notify and FIN are sent (or could not be).
    shut: bool,
    /// The control connection's progress (see [`ControlProgress`]); `None` on data connections.
    control: Option<Arc<ControlProgress>>,
}

/// How long to wait, after the peer's close_notify, for the peer's FIN (see
/// [`FlushingTlsStream::poll_tcp_eof`]); a server that keeps the TCP connection open after its
/// close_notify costs this once per data connection.
const FIN_AFTER_CLOSE_NOTIFY: Duration = Duration::from_millis(200);

impl FlushingTlsStream {
    /// Writes the control connection's queued lines (see [`ControlProgress::write_ahead`]) and
    /// flushes them; `Pending` while the socket takes no more (the rest stays queued, in order).
    fn poll_write_ahead(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let Some(control) = &self.control else {
            return Poll::Ready(Ok(()));
        };
        loop {
            let lines = control.take_ahead();
            if lines.is_empty() {
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &lines) {
                Poll::Ready(Ok(n)) => {
                    control.wrote(&lines[..n]);
                    self.unflushed = true;
                    control.put_back_ahead(&lines[n..]);
                    if n == 0 {
                        return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    control.put_back_ahead(&lines);
                    return Poll::Pending;
                }
            }
        }
        self.poll_pending_flush(cx)
    }

    fn poll_pending_flush(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.unflushed {
            match Pin::new(&mut self.inner).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for FlushingTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        // Pending here only registers interest in writability; reading goes on regardless.
        // Lines written ahead go out first: the reply about to be read may be to one of them.
        if let Poll::Ready(Err(e)) = this.poll_write_ahead(cx) {
            return Poll::Ready(Err(e));
        }
        if let Poll::Ready(Err(e)) = this.poll_pending_flush(cx) {
            return Poll::Ready(Err(e));
        }
        if this.closing.is_some() {
            return this.poll_tcp_eof(cx);
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        match read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                // Acknowledge what arrived at once (see [`quick_ack`]).
                quick_ack(this.inner.get_ref().0);
                if let Some(control) = &this.control {
                    control.read_some();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(())) if buf.remaining() > 0 => {
                // The TLS stream ended with the peer's close_notify.
                this.closing = Some(Box::pin(tokio::time::sleep(FIN_AFTER_CLOSE_NOTIFY)));
                this.poll_tcp_eof(cx)
            }
            Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Poll::Ready(Err(this.cut_without_close_notify()))
            }
            other => other,
        }
    }
}

/// What a data connection that ends without close_notify is reported as.
pub(crate) const DATA_CUT: &str = "the server closed the data connection without TLS close_notify, so the transfer may be truncated";
/// The same on the control connection.
const CONTROL_CUT: &str = "the server closed the control connection without TLS close_notify";

impl FlushingTlsStream {
    /// The TCP connection ended without the peer's close_notify. rustls reports that as
    /// `UnexpectedEof` with a link to its manual; on a data connection it means the bytes read
    /// may not be all the server meant to send (a cut connection, a middlebox, a crashed
    /// server process), so the error says so. The kind stays `UnexpectedEof`, and callers keep
    /// treating it as a connection failure (transient).
    fn cut_without_close_notify(&self) -> std::io::Error {
        let what = if self.control.is_some() {
            CONTROL_CUT
        } else {
            DATA_CUT
        };
        std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what)
    }
}

impl FlushingTlsStream {
    /// After the peer's close_notify, answers with ours (and our FIN), reads the raw TCP
    /// stream until the peer's FIN (or the deadline), discarding anything after the
    /// close_notify, and only then reports the end.
    ///
    /// Some servers close a data connection only after the client's close_notify (vsftpd after
    /// a listing waits for it), hence the answer before the wait.
    /// Closing the socket right after close_notify races the FIN that follows it: a FIN that
    /// arrived as the socket was being closed was left unacknowledged, and the server sent it
    /// again only after its 200 ms retransmission timeout. vsftpd closes data
    /// connections with SO_LINGER and sends the transfer's 226 only once its FIN is
    /// acknowledged, so each such race stalled a transfer for 200 ms: 16 to 32 times in a push
    /// of 2,000 small files (counted with `nstat` TcpRetransSegs, seen in a capture as the
    /// server's FIN sent twice, 206 ms apart). Reading the FIN with the socket still open lets
    /// the kernel acknowledge it at once.
    fn poll_tcp_eof(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.shut {
            // A second shutdown by the caller then finds nothing left to send.
            if Pin::new(&mut self.inner).poll_shutdown(cx).is_ready() {
                self.shut = true;
            }
        }
        let mut scratch = [0u8; 512];
        loop {
            let mut rb = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner.get_mut().0).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => continue,
                // The FIN, or a reset: the TLS stream had ended either way.
                Poll::Ready(_) if self.shut => return Poll::Ready(Ok(())),
                // Nothing yet, or the end before our own close_notify is out: wait for that,
                // or for the deadline.
                _ => break,
            }
        }
        match self.closing.as_mut().map(|d| d.as_mut().poll(cx)) {
            Some(Poll::Pending) => Poll::Pending,
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// Asks the kernel to acknowledge received data now rather than up to 40 ms later. Servers
/// that do not disable Nagle's algorithm (Pure-FTPd) hold back a small write while an earlier
/// one is unacknowledged: a listing's last bytes or close_notify, a 226 after the 150 of a
/// short transfer. Linux delays that ACK when it expects to piggyback it on a reply, so every
/// small transfer waited 40 ms (seen in a capture: ACK of the listing 40.2 ms after it, the
/// server's close_notify 19 µs after that ACK). 2,000 files of 4 KiB to Pure-FTPd: 2.2-2.4 s
/// without, 1.5-1.75 s with; no difference on vsftpd. Not permanent in Linux: set after each
/// read.
fn quick_ack(tcp: &TcpStream) {
    #[cfg(target_os = "linux")]
    {
        let _ = socket2::SockRef::from(tcp).set_tcp_quickack(true);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = tcp;
}

impl AsyncWrite for FlushingTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        // Lines written ahead were queued first, so they go first.
        match this.poll_write_ahead(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        if let Poll::Ready(Err(e)) = this.poll_pending_flush(cx) {
            return Poll::Ready(Err(e));
        }
        let n = match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        this.unflushed = true;
        if let Some(control) = &this.control {
            control.wrote(&buf[..n]);
            // Lines this write released (see `write_after_protection`) join its flush. A
            // socket that takes no more keeps them queued; an error shows on the next read.
            let _ = this.poll_write_ahead(cx);
        }
        if let Poll::Ready(Err(e)) = this.poll_pending_flush(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.unflushed = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl TokioTlsStream for FlushingTlsStream {
    type InnerStream = tokio_rustls::client::TlsStream<TcpStream>;

    fn tcp_stream(self) -> FtpResult<TcpStream> {
        Ok(self.inner.into_inner().0)
    }

    fn get_ref(&self) -> &TcpStream {
        self.inner.get_ref().0
    }

    fn mut_ref(&mut self) -> &mut Self::InnerStream {
        &mut self.inner
    }
}

/// A TLS peer that ends connections without close_notify, for the unit tests here and in
/// `session.rs` (a TLS server, not an FTP one: no FTP is spoken).
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use tokio::io::AsyncWriteExt;

    pub(crate) fn insecure_context() -> TlsContext {
        TlsContext::new(&TlsOptions {
            tls12_only: false,
            ca_file: None,
            pins: Vec::new(),
            insecure_skip_verify: true,
            client_cert: None,
            client_key: None,
        })
        .unwrap()
    }

    /// Listens on 127.0.0.1; on each connection, shakes hands, writes `payload`, and closes
    /// the TCP connection (FIN) without sending close_notify.
    async fn cutting_server(payload: &'static [u8]) -> std::net::SocketAddr {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key.into())
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut tls = acceptor.accept(tcp).await.unwrap();
                    tls.write_all(payload).await.unwrap();
                    tls.flush().await.unwrap();
                    let (mut tcp, _) = tls.into_inner();
                    let _ = tcp.shutdown().await;
                });
            }
        });
        addr
    }

    /// A control connection and a data connection (the connector's first and second) to a
    /// server that writes `payload` on each and cuts both without close_notify.
    pub(crate) async fn cut_connections(
        payload: &'static [u8],
    ) -> (FlushingTlsStream, FlushingTlsStream) {
        let addr = cutting_server(payload).await;
        let connector = insecure_context().connector().unwrap();
        let control = TcpStream::connect(addr).await.unwrap();
        let control = connector.connect("localhost", control).await.unwrap();
        let data = TcpStream::connect(addr).await.unwrap();
        let data = connector.connect("localhost", data).await.unwrap();
        (control, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use tokio::io::AsyncReadExt;

    /// Reads until an error or the end; returns the bytes and the error.
    async fn read_all(s: &mut FlushingTlsStream) -> (Vec<u8>, Option<std::io::Error>) {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return (got, None),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return (got, Some(e)),
            }
        }
    }

    #[tokio::test]
    async fn a_connection_cut_without_close_notify_says_so() {
        let (mut control, mut data) = test_support::cut_connections(b"-rw-r--r-- 1 u g").await;
        let (got, e) = read_all(&mut data).await;
        assert_eq!(got, b"-rw-r--r-- 1 u g");
        let e = e.expect("a cut data connection is an error, not an end");
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        assert_eq!(
            e.to_string(),
            "the server closed the data connection without TLS close_notify, so the transfer may be truncated"
        );
        let (_, e) = read_all(&mut control).await;
        assert_eq!(
            e.unwrap().to_string(),
            "the server closed the control connection without TLS close_notify"
        );
    }

    #[test]
    fn chacha20_is_offered_only_without_hardware_aes() {
        let ctx = TlsContext::new(&TlsOptions {
            tls12_only: false,
            ca_file: None,
            pins: Vec::new(),
            insecure_skip_verify: true,
            client_cert: None,
            client_key: None,
        })
        .unwrap();
        let suites: Vec<_> = ctx
            .provider
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert!(suites.contains(&rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
        assert!(suites.contains(&rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384));
        assert_eq!(
            suites.iter().any(|s| is_chacha20(*s)),
            !aes_is_accelerated(),
            "{suites:?}"
        );
    }

    /// A self-signed X.509 version 1 client certificate and its key, as older CA scripts make
    /// them (`openssl x509 -req` without extensions; rcgen cannot make v1). `None` when the
    /// openssl binary is absent.
    fn openssl_v1_client_cert(dir: &std::path::Path) -> Option<(PathBuf, PathBuf)> {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let run = |args: &[&str]| {
            std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
        };
        match run(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "key.pem",
        ]) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("skipped: no openssl binary to make an X.509 v1 certificate with");
                return None;
            }
            r => assert!(r.unwrap().status.success()),
        }
        let out = run(&[
            "req",
            "-new",
            "-key",
            "key.pem",
            "-subj",
            "/CN=ferrysync-client",
            "-out",
            "req.csr",
        ])
        .unwrap();
        assert!(out.status.success(), "{out:?}");
        let out = run(&[
            "x509", "-req", "-in", "req.csr", "-signkey", "key.pem", "-days", "30", "-out",
            "cert.pem",
        ])
        .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = run(&["x509", "-in", "cert.pem", "-noout", "-text"]).unwrap();
        assert!(
            String::from_utf8_lossy(&text.stdout).contains("Version: 1 (0x0)"),
            "not a v1 certificate: {text:?}"
        );
        Some((cert, key))
    }

    fn client_options(cert: &std::path::Path, key: &std::path::Path) -> TlsOptions {
        TlsOptions {
            tls12_only: false,
            ca_file: None,
            pins: Vec::new(),
            insecure_skip_verify: true,
            client_cert: Some(cert.to_path_buf()),
            client_key: Some(key.to_path_buf()),
        }
    }

    #[test]
    fn a_version_1_client_certificate_is_not_refused_locally() {
        let dir = tempfile::tempdir().unwrap();
        let Some((cert, key)) = openssl_v1_client_cert(dir.path()) else {
            return;
        };
        // What rustls's with_client_auth_cert does refuses it: webpki cannot parse v1.
        let provider = rustls::crypto::ring::default_provider();
        let der = read_certs(&cert).unwrap();
        let key_der = rustls_pemfile::private_key(&mut std::fs::read(&key).unwrap().as_slice())
            .unwrap()
            .unwrap();
        let webpki = CertifiedKey::from_der(der, key_der, &provider).unwrap_err();
        assert!(
            format!("{webpki:?}").contains("UnsupportedCertVersion"),
            "{webpki:?}"
        );
        // ferrysync builds its configuration anyway.
        let ctx = TlsContext::new(&client_options(&cert, &key)).unwrap();
        ctx.connector().unwrap();
    }

    /// Accepts any client certificate and records it: a stand-in for an OpenSSL server that
    /// accepts v1 certificates (rustls's own verifier would refuse them as webpki does).
    #[derive(Debug, Default)]
    struct RecordingClientVerifier {
        seen: std::sync::Mutex<Option<Vec<u8>>>,
    }

    impl rustls::server::danger::ClientCertVerifier for RecordingClientVerifier {
        fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
            &[]
        }
        fn verify_client_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _now: UnixTime,
        ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
            *self.seen.lock().unwrap() = Some(end_entity.to_vec());
            Ok(rustls::server::danger::ClientCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    #[tokio::test]
    async fn a_version_1_client_certificate_is_sent_to_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let Some((cert, key)) = openssl_v1_client_cert(dir.path()) else {
            return;
        };
        let server_cert =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let server_key =
            rustls::pki_types::PrivatePkcs8KeyDer::from(server_cert.key_pair.serialize_der());
        let verifier = Arc::new(RecordingClientVerifier::default());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(vec![server_cert.cert.der().clone()], server_key.into())
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = acceptor.accept(tcp).await.unwrap();
            tls.get_ref().1.peer_certificates().map(|c| c[0].to_vec())
        });
        let ctx = TlsContext::new(&client_options(&cert, &key)).unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        ctx.connector()
            .unwrap()
            .connect("localhost", tcp)
            .await
            .unwrap();
        let presented = server
            .await
            .unwrap()
            .expect("no client certificate presented");
        let v1 = read_certs(&cert).unwrap()[0].to_vec();
        assert_eq!(presented, v1);
        assert_eq!(verifier.seen.lock().unwrap().as_deref(), Some(&v1[..]));
    }

    #[test]
    fn a_client_key_of_another_certificate_is_refused_locally() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["client".to_string()]).unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, other.serialize_pem()).unwrap();
        let e = TlsContext::new(&client_options(&cert_path, &key_path))
            .err()
            .unwrap();
        assert!(e.contains("is not the key of tls.client_cert"), "{e}");
        // Its own key is fine.
        std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
        assert!(TlsContext::new(&client_options(&cert_path, &key_path)).is_ok());
    }

    #[test]
    fn the_first_key_share_is_p256_which_every_tls13_server_takes() {
        let groups = &test_support::insecure_context().provider.kx_groups;
        assert_eq!(groups[0].name(), rustls::NamedGroup::secp256r1);
        assert!(groups
            .iter()
            .any(|g| g.name() == rustls::NamedGroup::X25519));
    }

    #[test]
    fn control_progress_counts_lines_after_the_handshake() {
        let p = ControlProgress::default();
        assert_eq!(p.lines_after_handshake(), None);
        p.handshake_done();
        assert_eq!(p.lines_after_handshake(), Some(0));
        // A command may go out in pieces; only complete lines count.
        p.wrote(b"PBSZ");
        p.wrote(b" 0\r\n");
        assert_eq!(p.lines_after_handshake(), Some(1));
        p.wrote(b"PROT P\r\n");
        assert_eq!(p.lines_after_handshake(), Some(2));
    }

    #[test]
    fn lines_after_protection_go_out_with_prot_p_and_only_then() {
        let p = ControlProgress::default();
        p.write_after_protection(b"USER u\r\nPASS p\r\n");
        p.handshake_done();
        p.wrote(b"PBSZ 0\r\n");
        assert!(p.take_ahead().is_empty(), "not with PBSZ 0");
        p.wrote(b"PROT ");
        assert!(p.take_ahead().is_empty(), "not before the line is whole");
        p.wrote(b"P\r\n");
        assert_eq!(p.take_ahead(), b"USER u\r\nPASS p\r\n");
        assert!(p.take_after_protection().is_empty());
        // Never twice.
        p.wrote(b"USER u\r\n");
        assert!(p.take_ahead().is_empty());
        // Not released when PROT P never went out: given back.
        let q = ControlProgress::default();
        q.write_after_protection(b"FEAT\r\n");
        q.handshake_done();
        q.wrote(b"PBSZ 0\r\n");
        assert_eq!(q.take_after_protection(), b"FEAT\r\n");
    }

    #[test]
    fn the_login_round_trip_is_the_fastest_write_to_reply_and_stops_with_the_login() {
        let p = ControlProgress::default();
        p.handshake_done();
        assert_eq!(p.measured_rtt(), None);
        let p = ControlProgress::default();
        p.handshake_done();
        p.wrote(b"PBSZ 0\r\n");
        std::thread::sleep(Duration::from_millis(30));
        p.read_some();
        p.wrote(b"PROT P\r\n");
        std::thread::sleep(Duration::from_millis(5));
        p.read_some();
        // A reply read with nothing written since is no sample.
        p.read_some();
        let rtt = p.measured_rtt().unwrap();
        assert!(
            rtt >= Duration::from_millis(5) && rtt < Duration::from_millis(30),
            "{rtt:?}"
        );
        // After the login, nothing more counts.
        p.wrote(b"NOOP\r\n");
        p.read_some();
        assert_eq!(p.measured_rtt(), Some(rtt));
    }

    #[test]
    fn fingerprint_formats_like_openssl() {
        let f = fingerprint(b"abc");
        assert_eq!(
            f.to_string(),
            "ba:78:16:bf:8f:01:cf:ea:41:41:40:de:5d:ae:22:23:b0:03:61:a3:96:17:7a:9c:b4:10:ff:61:f2:00:15:ad"
        );
        assert_eq!(Fingerprint::parse(&f.to_string()).unwrap(), f);
    }
}
