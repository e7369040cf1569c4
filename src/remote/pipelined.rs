//! Commands written ahead of their replies (see [`Session::pipelined`](super::Session::pipelined)):
//! each command's line, checked to be exactly one line, and the replies that mean success.
//!
//! suppaftp sends one command and waits for its reply, and offers no way to send several; over
//! a 50 ms link each wait is 50 ms. The control connection's TLS stream is ferrysync's own
//! ([`FlushingTlsStream`](super::tls::FlushingTlsStream)), so the lines are queued on it and go
//! out in one flight, and suppaftp's public `read_response_in` then reads the replies in order.

use suppaftp::types::Response;
use suppaftp::{FtpError, Status};

/// One command of a batch.
#[derive(Debug, Clone)]
pub(crate) struct Pipelined {
    /// The command, for errors (`SIZE`, `RNFR`).
    pub(crate) name: &'static str,
    /// The path it is about, for errors.
    pub(crate) path: String,
    /// The line sent, without its CRLF.
    pub(crate) line: String,
    /// The replies that mean success.
    pub(crate) expect: &'static [Status],
}

impl Pipelined {
    pub(crate) fn new(
        name: &'static str,
        path: &str,
        line: String,
        expect: &'static [Status],
    ) -> Pipelined {
        Pipelined {
            name,
            path: path.to_string(),
            line,
            expect,
        }
    }

    /// EPSV, asking for the next data connection.
    pub(crate) fn epsv() -> Pipelined {
        Pipelined::new(
            "EPSV",
            "",
            "EPSV".to_string(),
            &[Status::ExtendedPassiveMode],
        )
    }

    /// The line as sent: UTF-8 with CRLF, Telnet's IAC byte doubled (as suppaftp does). A line
    /// with CR, LF or NUL inside is refused, as suppaftp refuses it: a file named
    /// `a\r\nDELE b` must not become two commands.
    pub(crate) fn encoded(&self) -> Result<Vec<u8>, FtpError> {
        if self.line.contains(['\r', '\n', '\0']) {
            return Err(FtpError::ConnectionError(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "FTP command must not contain CR, LF or NUL",
            )));
        }
        let mut out = Vec::with_capacity(self.line.len() + 2);
        for b in self.line.bytes() {
            out.push(b);
            if b == 0xFF {
                out.push(b);
            }
        }
        out.extend_from_slice(b"\r\n");
        Ok(out)
    }
}

/// Matches the replies to commands sent together (`expects`: each command's success replies)
/// to their commands: `Ok` a success, `Err` a refusal. Returns whether the server answered out
/// of order.
///
/// Servers answer in order as RFC 959 says (vsftpd, ProFTPD, Pure-FTPd), but some answer a
/// command that needs their storage after the next one that does not: libunftp replies to EPSV
/// at once and to a CWD, SIZE or MFMT when its storage task ends. So a success reply goes to the
/// one command whose success replies hold its code (the batches are built so no code is shared:
/// SIZE 213 and EPSV 229; MFMT 213, RNFR 350 and RNTO 250; CWD 250 and EPSV 229), and the rest,
/// refusals, go to the commands left, in order. A wrongly matched refusal can only make a
/// command fail that might not have: no success is ever taken from another command's reply.
pub(crate) fn attribute(
    expects: &[&[Status]],
    replies: Vec<Response>,
) -> (Vec<Result<Response, Response>>, bool) {
    if replies.len() == expects.len()
        && replies
            .iter()
            .zip(expects)
            .all(|(r, e)| e.contains(&r.status))
    {
        return (replies.into_iter().map(Ok).collect(), false);
    }
    let mut out: Vec<Option<Result<Response, Response>>> = vec![None; expects.len()];
    let mut refusals = Vec::new();
    let mut reordered = false;
    for (arrived, reply) in replies.into_iter().enumerate() {
        let mut wants =
            (0..expects.len()).filter(|&i| out[i].is_none() && expects[i].contains(&reply.status));
        match (wants.next(), wants.next()) {
            (Some(i), None) => {
                reordered |= i != arrived;
                out[i] = Some(Ok(reply));
            }
            _ => refusals.push(reply),
        }
    }
    let mut refusals = refusals.into_iter();
    let attributed = out
        .into_iter()
        .map(|slot| match slot {
            Some(r) => r,
            None => Err(refusals
                .next()
                .unwrap_or_else(|| Response::new(Status::Unknown, Vec::new()))),
        })
        .collect();
    (attributed, reordered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_line() {
        let c = |line: &str| Pipelined::new("SIZE", "p", line.to_string(), &[Status::File]);
        assert_eq!(c("SIZE /a b").encoded().unwrap(), b"SIZE /a b\r\n");
        assert!(c("SIZE /a\r\nDELE /b").encoded().is_err());
        assert!(c("SIZE /a\nDELE /b").encoded().is_err());
        assert!(c("SIZE /a\rb").encoded().is_err());
        assert!(c("SIZE /a\0b").encoded().is_err());
        assert_eq!(c("SIZE /é").encoded().unwrap(), "SIZE /é\r\n".as_bytes());
    }
}

#[cfg(test)]
mod attribution {
    use super::*;

    fn reply(code: u32) -> Response {
        Response::new(Status::from(code), format!("{code} text").into_bytes())
    }

    fn codes(v: &[Result<Response, Response>]) -> Vec<Result<u32, u32>> {
        v.iter()
            .map(|r| match r {
                Ok(r) => Ok(r.status.code()),
                Err(r) => Err(r.status.code()),
            })
            .collect()
    }

    const SIZE: &[Status] = &[Status::File];
    const EPSV: &[Status] = &[Status::ExtendedPassiveMode];
    const RNFR: &[Status] = &[Status::RequestFilePending];
    const RNTO: &[Status] = &[Status::RequestedFileActionOk, Status::CommandOk];

    #[test]
    fn in_order_replies_go_to_their_commands() {
        let (r, reordered) = attribute(&[SIZE, EPSV], vec![reply(213), reply(229)]);
        assert_eq!(codes(&r), [Ok(213), Ok(229)]);
        assert!(!reordered);
        let (r, _) = attribute(&[RNFR, RNTO], vec![reply(550), reply(503)]);
        assert_eq!(codes(&r), [Err(550), Err(503)]);
        let (r, reordered) = attribute(
            &[SIZE, RNFR, RNTO],
            vec![reply(550), reply(350), reply(250)],
        );
        assert_eq!(codes(&r), [Err(550), Ok(350), Ok(250)]);
        assert!(!reordered);
    }

    #[test]
    fn out_of_order_successes_are_matched_by_code() {
        let (r, reordered) = attribute(&[SIZE, EPSV], vec![reply(229), reply(213)]);
        assert_eq!(codes(&r), [Ok(213), Ok(229)]);
        assert!(reordered);
        let (r, _) = attribute(
            &[SIZE, RNFR, RNTO],
            vec![reply(350), reply(250), reply(213)],
        );
        assert_eq!(codes(&r), [Ok(213), Ok(350), Ok(250)]);
    }

    #[test]
    fn a_refusal_never_becomes_a_success() {
        // SIZE refused, its 550 after EPSV's 229.
        let (r, _) = attribute(&[SIZE, EPSV], vec![reply(229), reply(550)]);
        assert_eq!(codes(&r), [Err(550), Ok(229)]);
        // RNFR refused: RNTO's 503 is not a success either way.
        let (r, _) = attribute(
            &[SIZE, RNFR, RNTO],
            vec![reply(213), reply(503), reply(550)],
        );
        assert_eq!(codes(&r), [Ok(213), Err(503), Err(550)]);
        // A missing reply is a refusal.
        let (r, _) = attribute(&[SIZE, EPSV], vec![reply(229)]);
        assert_eq!(codes(&r), [Err(0), Ok(229)]);
    }
}
