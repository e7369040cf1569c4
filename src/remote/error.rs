//! The errors of the FTPS client: [`FtpsError`], which names the server, the command, the path
//! and the server's reply, and the mappings from suppaftp's errors and from timeouts into it.

use std::time::Duration;

use suppaftp::FtpError;

#[derive(Debug, thiserror::Error)]
pub enum FtpsError {
    #[error("{server}: {reason}")]
    Setup { server: String, reason: String },
    #[error("cannot connect to {server}: {source}")]
    Connect {
        server: String,
        #[source]
        source: std::io::Error,
    },
    /// Nothing listens at the address (TCP RST): a wrong `host:` or `port:`, or a server that
    /// is down. Not retried: the next run (the agent's next trigger) tries again.
    #[error("cannot connect to {server}: connection refused by {addr} (nothing listens there): check remote.host and remote.port")]
    Refused { server: String, addr: String },
    /// The host name does not resolve (the resolver says it does not exist).
    #[error("cannot connect to {server}: unknown host `{host}` ({reason}): check remote.host")]
    UnknownHost {
        server: String,
        host: String,
        reason: String,
    },
    /// The port speaks another kind of FTPS than the job's `security:` (`found` says what was
    /// seen, with the server's greeting where there was one; `hint` what to set).
    #[error("{server}: {found}: {hint}")]
    WrongSecurity {
        server: String,
        found: String,
        hint: &'static str,
    },
    #[error("{server}: TLS handshake failed: {reason}{hint}")]
    Tls {
        server: String,
        reason: String,
        hint: &'static str,
    },
    #[error("{server} does not offer FTPS: AUTH TLS was answered `{reply}`; ferrysync never falls back to plain FTP (use security: implicit if the server speaks TLS from the first byte)")]
    NoTls { server: String, reply: String },
    /// The server refused PBSZ 0 or PROT P (`command`) after the TLS handshake.
    #[error("{server}: TLS is up, but the server refused `{command}`: `{reply}`; without it the data connections would not be encrypted, and ferrysync never transfers in the clear")]
    Protection {
        server: String,
        command: &'static str,
        code: u32,
        reply: String,
    },
    #[error("{server}: login as `{user}` refused: {reply}")]
    Login {
        server: String,
        user: String,
        reply: String,
    },
    #[error("{server}: {command} {path}: server replied `{reply}`")]
    Reply {
        server: String,
        command: &'static str,
        path: String,
        code: u32,
        reply: String,
    },
    #[error("{server}: {command} {path}: timed out after {secs}s")]
    Timeout {
        server: String,
        command: &'static str,
        path: String,
        secs: u64,
    },
    #[error("{server}: {command} {path}: {reason}")]
    Connection {
        server: String,
        command: &'static str,
        path: String,
        reason: String,
    },
    /// A listing passed one of the job's caps (`remote.max_listing_*`); `reason` says which
    /// and the key that raises it.
    #[error("{server}: {command} {path}: {reason}")]
    Listing {
        server: String,
        command: &'static str,
        path: String,
        reason: String,
    },
}

impl FtpsError {
    /// Whether trying again later may succeed: connections reset, dropped or timed out, a
    /// host name the resolver could not look up for now, and 4xx replies (421 too many
    /// connections, 425/426 data connection trouble, 450/451). Permanent, so not retried: a
    /// refused connection, an unknown host, the wrong `security:`, login, certificate and TLS
    /// failures, 5xx replies, and a listing past the job's caps.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            FtpsError::Refused { .. }
            | FtpsError::UnknownHost { .. }
            | FtpsError::WrongSecurity { .. } => false,
            FtpsError::Connect { .. }
            | FtpsError::Connection { .. }
            | FtpsError::Timeout { .. } => true,
            FtpsError::Reply { code, .. } | FtpsError::Protection { code, .. } => {
                (400..500).contains(code)
            }
            FtpsError::Setup { .. }
            | FtpsError::Tls { .. }
            | FtpsError::NoTls { .. }
            | FtpsError::Login { .. }
            // The same listing passes the same cap again: only a change to the job helps.
            | FtpsError::Listing { .. } => false,
        }
    }

    /// The server's reply code, if the error is a reply.
    pub(crate) fn code(&self) -> Option<u32> {
        match self {
            FtpsError::Reply { code, .. } | FtpsError::Protection { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The text of a server reply, with its code in front.
pub(super) fn reply_text(r: &suppaftp::types::Response) -> String {
    let body = String::from_utf8_lossy(&r.body);
    let body = body.trim();
    let code = r.status.code().to_string();
    if body.starts_with(&code) {
        body.to_string()
    } else {
        format!("{code} {body}")
    }
}

pub(super) fn timeout_err(
    server: &str,
    command: &'static str,
    path: &str,
    d: Duration,
) -> FtpsError {
    FtpsError::Timeout {
        server: server.to_string(),
        command,
        path: path.to_string(),
        secs: d.as_secs(),
    }
}

pub(super) fn map_err(server: &str, command: &'static str, path: &str, e: FtpError) -> FtpsError {
    match e {
        FtpError::UnexpectedResponse(r) => FtpsError::Reply {
            server: server.to_string(),
            command,
            path: path.to_string(),
            code: r.status.code(),
            reply: reply_text(&r),
        },
        other => FtpsError::Connection {
            server: server.to_string(),
            command,
            path: path.to_string(),
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use suppaftp::Status;

    #[test]
    fn reply_text_keeps_the_code() {
        let r =
            suppaftp::types::Response::new(Status::FileUnavailable, b"550 No such file".to_vec());
        assert_eq!(reply_text(&r), "550 No such file");
        let r = suppaftp::types::Response::new(Status::FileUnavailable, b"No such file".to_vec());
        assert_eq!(reply_text(&r), "550 No such file");
    }
}
