//! The agent's optional HTTP listener (`ferrysync run --listen ADDR`): the read-only status
//! page (`/`, `/jobs/{name}`, rendered by `status_page.rs`), `/api/status` (exactly the
//! `status --json` document, built by `status_doc.rs`) and `/metrics`. This module owns the
//! address and token rules, the routes, their security headers, and the accept loop.
//!
//! What it promises:
//! - Read-only: GET and HEAD only (any other method is 405), and no route changes anything.
//!   Every read opens a read-only ledger connection of its own, as `ferrysync status` does,
//!   so a request never waits for the lock the runs write through.
//! - Loopback by default: any other address needs a bearer token (read from a file at start,
//!   compared in constant time); with a token set, every route requires it. Without a token,
//!   requests must name a loopback host (`Host: localhost:9464`, `127.0.0.1`, `[::1]`), so a
//!   web page elsewhere cannot read the status through DNS rebinding.
//! - It never stops the agent: a bind that fails is logged and retried, a connection's error is
//!   logged at debug level, at most [`MAX_CONNECTIONS`] connections are served at once (more are
//!   closed at once), and each has a deadline for its request headers and for its whole life.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use super::status_doc::StatusDoc;
use super::status_page;

/// Connections served at the same time; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 64;
/// Ledger reads (page renders) at the same time; more wait their turn.
const MAX_READS: usize = 4;
/// A client has this long to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest one connection is kept (a page polling once a second reconnects after this).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// How long a failed bind waits before it is tried again.
const REBIND_AFTER: Duration = Duration::from_secs(30);

/// The Content-Security-Policy of every response: scripts, styles, images and requests from
/// this listener only; no frames, forms, plugins or base URL changes.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// Why the listener's settings were refused (the agent does not start: exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "--listen {addr}: {ip} is not a loopback address; serving the status beyond this machine \
         requires a bearer token: --listen-token-file FILE (or listen on 127.0.0.1 or [::1])"
    )]
    TokenRequired { addr: SocketAddr, ip: IpAddr },
    #[error("--listen-token-file {}: cannot read the token: {source}", path.display())]
    TokenUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--listen-token-file {}: {reason}", path.display())]
    TokenInvalid { path: PathBuf, reason: &'static str },
}

/// The bearer token every request must carry (`Authorization: Bearer TOKEN`).
pub struct BearerToken {
    secret: String,
    /// SHA-256 of the token: what requests are compared against, so that the comparison takes
    /// the same time whatever the length and content of the guess.
    digest: [u8; 32],
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(***)")
    }
}

impl BearerToken {
    /// Shortest token accepted: a guessable one is no protection.
    pub const MIN_LEN: usize = 16;

    /// The token in `path`: its text with surrounding white space removed (a final newline).
    pub fn read(path: &Path) -> Result<BearerToken, ListenError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ListenError::TokenUnreadable {
                path: path.to_path_buf(),
                source,
            })?;
        let invalid = |reason| ListenError::TokenInvalid {
            path: path.to_path_buf(),
            reason,
        };
        let token = text.trim();
        if token.is_empty() {
            return Err(invalid("the file is empty"));
        }
        if token.len() < Self::MIN_LEN {
            return Err(invalid("the token is shorter than 16 characters"));
        }
        // A header value carries visible ASCII only (RFC 9110 token68 is narrower still).
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "the token must be one word of visible ASCII characters (no spaces)",
            ));
        }
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    "--listen-token-file {}: other users may read the token (mode {:o}); chmod 600 it",
                    path.display(),
                    meta.permissions().mode() & 0o777
                );
            }
        }
        Ok(BearerToken::new(token))
    }

    fn new(token: &str) -> BearerToken {
        BearerToken {
            secret: token.to_string(),
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// The token's text, for the log writer's redaction list.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Whether `headers` carry this token as `Authorization: Bearer TOKEN`.
    fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return false;
        };
        let value = value.as_bytes();
        let (scheme, given) = value.split_at(value.len().min(7));
        let given: [u8; 32] = Sha256::digest(given).into();
        scheme.eq_ignore_ascii_case(b"bearer ") & constant_time_eq(&given, &self.digest)
    }
}

/// Whether `a` and `b` are equal, looking at every byte whatever the first difference.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Where and how the listener serves.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    pub addr: SocketAddr,
    pub token: Option<Arc<BearerToken>>,
    /// The ledger, as `--state` named it (`/api/status` shows this path, as `status` does).
    pub state: PathBuf,
}

impl ListenOptions {
    /// The listener's settings, refused if `addr` is not a loopback address and there is no
    /// token (0.0.0.0 and [::] are not loopback: they are every address).
    pub fn new(
        addr: SocketAddr,
        token: Option<BearerToken>,
        state: PathBuf,
    ) -> Result<ListenOptions, ListenError> {
        if token.is_none() && !addr.ip().is_loopback() {
            return Err(ListenError::TokenRequired {
                addr,
                ip: addr.ip(),
            });
        }
        Ok(ListenOptions {
            addr,
            token: token.map(Arc::new),
            state,
        })
    }
}

/// What every request handler shares.
#[derive(Clone)]
struct App {
    state: Arc<PathBuf>,
    token: Option<Arc<BearerToken>>,
    reads: Arc<Semaphore>,
}

/// Starts the listener on the agent's runtime; it serves until `stop` turns true. Errors are
/// logged, never returned: the agent runs on whatever happens here.
pub fn spawn_listener(opts: ListenOptions, stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(listen_loop(opts, stop))
}

async fn listen_loop(opts: ListenOptions, mut stop: watch::Receiver<bool>) {
    let app = App {
        state: Arc::new(opts.state.clone()),
        token: opts.token.clone(),
        reads: Arc::new(Semaphore::new(MAX_READS)),
    };
    let router = router(app);
    loop {
        match TcpListener::bind(opts.addr).await {
            Ok(listener) => {
                let guard = if opts.token.is_some() {
                    "bearer token required"
                } else {
                    "loopback only, no token"
                };
                tracing::info!(addr = %opts.addr, "status page listening on http://{} ({guard})", opts.addr);
                if serve(listener, router.clone(), &mut stop).await {
                    return;
                }
            }
            Err(e) => {
                tracing::error!(addr = %opts.addr, "status page: cannot listen on {}: {e}; the agent runs on without it and tries again in {}s", opts.addr, REBIND_AFTER.as_secs());
            }
        }
        tokio::select! {
            _ = super::stopped(&mut stop) => return,
            _ = tokio::time::sleep(REBIND_AFTER) => {}
        }
    }
}

/// Accepts connections on `listener` until `stop` (true) or an accept error that persists
/// (false: the caller binds again). Each connection is served on a task of its own.
async fn serve(listener: TcpListener, router: Router, stop: &mut watch::Receiver<bool>) -> bool {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut tasks = tokio::task::JoinSet::new();
    let mut accept_errors = 0u32;
    let stopped = loop {
        let accepted = tokio::select! {
            _ = super::stopped(stop) => break true,
            accepted = listener.accept() => accepted,
        };
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(a) => {
                accept_errors = 0;
                a
            }
            Err(e) => {
                // Out of file descriptors, say: wait, and give up on this socket if it lasts.
                accept_errors += 1;
                tracing::warn!("status page: accept failed: {e}");
                if accept_errors >= 10 {
                    break false;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "status page: {MAX_CONNECTIONS} connections already; closing this one");
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            // Past its lifetime a connection is dropped (the page reconnects).
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                tracing::debug!(%peer, "status page: connection: {e}");
            }
        });
    };
    // Read-only pages: connections still open are simply closed.
    tasks.shutdown().await;
    stopped
}

/// The routes, with the token, host and method rules and the security headers on every one.
fn router(app: App) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/jobs/{name}", get(job_page))
        .route("/api/status", get(api_status))
        .route("/metrics", get(metrics))
        .route("/static/status.js", get(script))
        .route("/static/status.css", get(style))
        .route("/static/icon.svg", get(icon))
        .route("/favicon.ico", get(icon))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

/// The text of `/metrics`: every job's metrics from the ledger at `state` (read-only; only
/// `ferrysync_build_info` before the first run made one), as `status --prometheus` writes it.
fn metrics_text(state: &Path) -> Result<String, String> {
    let ledger = crate::state::Ledger::open_read_only(state).map_err(|e| e.to_string())?;
    crate::agent::metrics::ledger_metrics_text(ledger.as_ref()).map_err(|e| e.to_string())
}

/// Before any route: the token (if set) or a loopback `Host`, and GET/HEAD only; after it,
/// the security headers.
async fn guard(State(app): State<App>, request: Request, next: Next) -> Response {
    let refused = match &app.token {
        Some(token) if !token.admits(request.headers()) => Some(unauthorized()),
        Some(_) => None,
        None => (!loopback_host(request.headers())).then(|| {
            plain(
                StatusCode::FORBIDDEN,
                "this listener answers only requests addressed to a loopback name \
                 (localhost, 127.0.0.1, [::1]); set --listen-token-file to serve other names\n",
            )
        }),
    };
    let not_read_only =
        (request.method() != Method::GET && request.method() != Method::HEAD).then(|| {
            let mut r = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "read-only: only GET and HEAD\n",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        });
    let mut response = match refused.or(not_read_only) {
        Some(r) => r,
        None => next.run(request).await,
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            header::HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn unauthorized() -> Response {
    let mut r = plain(
        StatusCode::UNAUTHORIZED,
        "a bearer token is required: Authorization: Bearer TOKEN\n",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"ferrysync\""),
    );
    r
}

/// Whether the request's `Host` names this machine's loopback (or is absent, as in HTTP/1.0).
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((ip, "")) => ip,
            Some((ip, port)) if port.strip_prefix(':').is_some_and(is_port) => ip,
            _ => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        },
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A port number's digits.
fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

fn html(status: StatusCode, page: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page,
    )
        .into_response()
}

/// Runs `read` (blocking: SQLite) on the blocking pool, at most [`MAX_READS`] at a time; a
/// failure is logged and answered 500 with its message.
async fn read_ledger(
    app: &App,
    read: impl FnOnce(&Path) -> Result<Response, String> + Send + 'static,
) -> Response {
    let Ok(_permit) = app.reads.acquire().await else {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    };
    let state = app.state.clone();
    let result = tokio::task::spawn_blocking(move || read(&state)).await;
    let error = match result {
        Ok(Ok(response)) => return response,
        Ok(Err(e)) => e,
        Err(e) => format!("the request's task failed: {e}"),
    };
    tracing::warn!("status page: {error}");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}\n", crate::sync::escape_controls(&error)),
    )
        .into_response()
}

async fn index(State(app): State<App>) -> Response {
    read_ledger(&app, |state| {
        let doc = StatusDoc::read(state).map_err(|e| e.to_string())?;
        Ok(html(
            StatusCode::OK,
            status_page::index(&doc, crate::state::now_unix()),
        ))
    })
    .await
}

async fn job_page(State(app): State<App>, UrlPath(name): UrlPath<String>) -> Response {
    read_ledger(&app, move |state| {
        let page = status_page::JobPage::read(state, &name).map_err(|e| e.to_string())?;
        Ok(match page {
            Some(page) => html(StatusCode::OK, page.render(crate::state::now_unix())),
            None => html(StatusCode::NOT_FOUND, status_page::no_such_job(&name)),
        })
    })
    .await
}

async fn api_status(State(app): State<App>) -> Response {
    read_ledger(&app, |state| {
        let doc = StatusDoc::read(state).map_err(|e| e.to_string())?;
        let text = doc.to_json().map_err(|e| e.to_string())?;
        Ok((
            [(header::CONTENT_TYPE, "application/json")],
            format!("{text}\n"),
        )
            .into_response())
    })
    .await
}

async fn metrics(State(app): State<App>) -> Response {
    read_ledger(&app, |state| {
        let text = metrics_text(state)?;
        Ok((
            [(
                header::CONTENT_TYPE,
                crate::agent::metrics::PROMETHEUS_CONTENT_TYPE,
            )],
            text,
        )
            .into_response())
    })
    .await
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        status_page::SCRIPT,
    )
        .into_response()
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        status_page::STYLE,
    )
        .into_response()
}

async fn icon() -> Response {
    ([(header::CONTENT_TYPE, "image/svg+xml")], status_page::ICON).into_response()
}

async fn not_found() -> Response {
    html(StatusCode::NOT_FOUND, status_page::not_found())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn only_loopback_names_pass_without_a_token() {
        for ok in [
            "localhost",
            "localhost:9464",
            "LOCALHOST:1",
            "127.0.0.1:9464",
            "127.1.2.3",
            "[::1]:9464",
            "[::1]",
        ] {
            assert!(loopback_host(&headers(&[("host", ok)])), "{ok}");
        }
        for bad in [
            "evil.example:9464",
            "localhost.evil.example",
            "10.0.0.1:9464",
            "[::2]:1",
            "localhost:",
            "localhost:x",
            "[::1]x",
            "0.0.0.0:9464",
        ] {
            assert!(!loopback_host(&headers(&[("host", bad)])), "{bad}");
        }
        assert!(loopback_host(&HeaderMap::new()), "HTTP/1.0 sends no Host");
    }

    #[test]
    fn the_token_must_match_exactly() {
        let token = BearerToken::new("s3cret-token-0123456789");
        assert!(token.admits(&headers(&[(
            "authorization",
            "Bearer s3cret-token-0123456789"
        )])));
        assert!(token.admits(&headers(&[(
            "authorization",
            "bearer s3cret-token-0123456789"
        )])));
        for bad in [
            "Bearer s3cret-token-012345678",
            "Bearer s3cret-token-01234567890",
            "Basic s3cret-token-0123456789",
            "Bearer  s3cret-token-0123456789",
            "s3cret-token-0123456789",
            "Bearer",
            "",
        ] {
            assert!(!token.admits(&headers(&[("authorization", bad)])), "{bad}");
        }
        assert!(!token.admits(&HeaderMap::new()));
        assert_eq!(format!("{token:?}"), "BearerToken(***)");
    }

    #[test]
    fn token_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "abcdefghijklmnopqrstuvwxyz\n").unwrap();
        assert_eq!(
            BearerToken::read(&file).unwrap().secret(),
            "abcdefghijklmnopqrstuvwxyz"
        );
        for (text, why) in [
            ("\n", "empty"),
            ("short", "shorter"),
            ("two words here, long enough", "one word"),
        ] {
            std::fs::write(&file, text).unwrap();
            let e = BearerToken::read(&file).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        let missing = BearerToken::read(&dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().contains("cannot read"), "{missing}");
    }

    #[test]
    fn addresses_other_than_loopback_need_a_token() {
        let state = PathBuf::from("state.db");
        for ok in ["127.0.0.1:9464", "[::1]:9464", "127.0.0.2:1"] {
            assert!(ListenOptions::new(ok.parse().unwrap(), None, state.clone()).is_ok());
        }
        for bad in ["0.0.0.0:9464", "[::]:9464", "192.168.1.5:9464"] {
            let e = ListenOptions::new(bad.parse().unwrap(), None, state.clone()).unwrap_err();
            assert!(e.to_string().contains("--listen-token-file"), "{e}");
            let token = BearerToken::new("0123456789abcdef");
            assert!(ListenOptions::new(bad.parse().unwrap(), Some(token), state.clone()).is_ok());
        }
    }
}
