//! Reading a directory listing off its data connection: line by line, under the job's
//! [`ListingCaps`].
//!
//! The listing is the server's, so it is untrusted input. Read whole into memory, a server that
//! keeps a LIST or MLSD data connection streaming (or sends one line without a newline) drove
//! the process past 6 GiB in 12 s. Here nothing is read past the first cap the listing passes:
//! memory holds at most the lines kept (each at most `max_line` bytes, at most `max_entries` of
//! them, all of them within `max_bytes`), one line being assembled, and one read buffer.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::config::ListingCaps;

/// The size of the read buffer in front of the data connection.
const READ_BUFFER: usize = 64 * 1024;

/// The cap of [`ListingCaps`] a listing passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListingCap {
    Line,
    Entries,
    Bytes,
}

impl ListingCap {
    /// What the listing did, which cap stopped it, and the job-file key that raises it.
    pub(crate) fn explain(self, caps: &ListingCaps) -> String {
        let (what, key, value) = match self {
            ListingCap::Line => (
                "a line of the listing is longer than",
                "max_listing_line",
                format!("{} bytes", caps.max_line),
            ),
            ListingCap::Entries => (
                "the listing has more entries than",
                "max_listing_entries",
                format!("{}", caps.max_entries),
            ),
            ListingCap::Bytes => (
                "the listing is larger than",
                "max_listing_bytes",
                format!("{} bytes", caps.max_bytes),
            ),
        };
        format!(
            "{what} {value}, the cap remote.{key} sets, so the rest was not read and nothing was \
             changed; a server that really lists this much needs a larger remote.{key} in the \
             job file, any other is broken or hostile"
        )
    }
}

/// Why a listing could not be read to its end.
#[derive(Debug)]
pub(crate) enum ReadListingError {
    /// The data connection failed, or one read took longer than the timeout (kind `TimedOut`).
    Io(std::io::Error),
    /// The listing passed a cap; the data connection was read no further.
    Cap(ListingCap),
}

/// Reads a listing's lines as they arrive: split at LF, CR dropped, empty lines skipped,
/// decoded as lossy UTF-8 (a name that is not valid UTF-8 then carries U+FFFD, which
/// [`check_remote_name`](crate::model::snapshot::check_remote_name) refuses). Each read may
/// take up to `timeout`. Stops at the first cap passed, with nothing read beyond the read
/// buffer that revealed it.
pub(crate) async fn read_listing_lines<R: AsyncRead + Unpin>(
    stream: R,
    caps: &ListingCaps,
    timeout: Duration,
) -> Result<Vec<String>, ReadListingError> {
    let mut reader = BufReader::with_capacity(READ_BUFFER, stream);
    let mut lines = Vec::new();
    // The line being assembled, never longer than the cap plus a CR.
    let mut line: Vec<u8> = Vec::new();
    let mut total: u64 = 0;
    loop {
        let buf = match tokio::time::timeout(timeout, reader.fill_buf()).await {
            Err(_) => return Err(ReadListingError::Io(std::io::ErrorKind::TimedOut.into())),
            Ok(Err(e)) => return Err(ReadListingError::Io(e)),
            Ok(Ok(buf)) => buf,
        };
        if buf.is_empty() {
            // The end: a last line may lack its line break.
            end_line(&mut line, &mut lines, caps)?;
            return Ok(lines);
        }
        let newline = buf.iter().position(|b| *b == b'\n');
        let used = newline.map_or(buf.len(), |i| i + 1);
        total = total.saturating_add(used as u64);
        if total > caps.max_bytes {
            return Err(ReadListingError::Cap(ListingCap::Bytes));
        }
        let part = &buf[..newline.unwrap_or(buf.len())];
        // One more byte than the cap for the CR of a CRLF line, which end_line drops.
        if line.len() + part.len() > caps.max_line.saturating_add(1) {
            return Err(ReadListingError::Cap(ListingCap::Line));
        }
        line.extend_from_slice(part);
        reader.consume(used);
        if newline.is_some() {
            end_line(&mut line, &mut lines, caps)?;
        }
    }
}

/// Ends the line assembled in `line`: kept if not empty and within the caps, then cleared.
fn end_line(
    line: &mut Vec<u8>,
    lines: &mut Vec<String>,
    caps: &ListingCaps,
) -> Result<(), ReadListingError> {
    let body = line.strip_suffix(b"\r").unwrap_or(line);
    if body.len() > caps.max_line {
        return Err(ReadListingError::Cap(ListingCap::Line));
    }
    if !body.is_empty() {
        if lines.len() >= caps.max_entries {
            return Err(ReadListingError::Cap(ListingCap::Entries));
        }
        lines.push(String::from_utf8_lossy(body).into_owned());
    }
    line.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;

    use super::*;

    /// An endless data connection: `pattern` over and over, counting the bytes handed out.
    struct Endless {
        pattern: &'static [u8],
        at: usize,
        served: u64,
    }

    impl Endless {
        fn new(pattern: &'static [u8]) -> Endless {
            Endless {
                pattern,
                at: 0,
                served: 0,
            }
        }
    }

    impl AsyncRead for Endless {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let me = self.get_mut();
            while buf.remaining() > 0 {
                let rest = &me.pattern[me.at..];
                let n = rest.len().min(buf.remaining());
                buf.put_slice(&rest[..n]);
                me.at = (me.at + n) % me.pattern.len();
                me.served += n as u64;
            }
            Poll::Ready(Ok(()))
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    fn caps(max_entries: usize, max_line: usize, max_bytes: u64) -> ListingCaps {
        ListingCaps {
            max_entries,
            max_line,
            max_bytes,
        }
    }

    #[tokio::test]
    async fn lines_split_like_suppaftp() {
        let caps = ListingCaps::default();
        let read = |raw: &'static [u8]| read_listing_lines(raw, &caps, SECOND);
        assert_eq!(
            read(b"a b\r\n\r\nc\nd\xff\r\n").await.unwrap(),
            vec!["a b".to_string(), "c".to_string(), "d\u{fffd}".to_string()]
        );
        assert_eq!(read(b"last without newline").await.unwrap().len(), 1);
        assert!(read(b"").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_endless_line_stops_at_the_line_cap_without_buffering_it() {
        let mut stream = Endless::new(b"a");
        let caps = caps(1_000_000, 8192, 512 << 20);
        let e = read_listing_lines(&mut stream, &caps, SECOND)
            .await
            .unwrap_err();
        assert!(
            matches!(e, ReadListingError::Cap(ListingCap::Line)),
            "{e:?}"
        );
        // Read no further than the cap and the buffer that passed it.
        assert!(
            stream.served <= (8192 + READ_BUFFER) as u64,
            "{}",
            stream.served
        );
    }

    #[tokio::test]
    async fn endless_entries_stop_at_the_entry_cap() {
        let mut stream = Endless::new(b"type=file;size=1;modify=20240101000000; f\r\n");
        let caps = caps(1000, 8192, 512 << 20);
        let e = read_listing_lines(&mut stream, &caps, SECOND)
            .await
            .unwrap_err();
        assert!(
            matches!(e, ReadListingError::Cap(ListingCap::Entries)),
            "{e:?}"
        );
        assert!(
            stream.served <= 1001 * 43 + READ_BUFFER as u64,
            "{}",
            stream.served
        );
        // Exactly the cap is allowed.
        let listing: &[u8] = b"a\nb\nc\n";
        assert_eq!(
            read_listing_lines(listing, &caps_entries(3), SECOND)
                .await
                .unwrap()
                .len(),
            3
        );
        let e = read_listing_lines(listing, &caps_entries(2), SECOND)
            .await
            .unwrap_err();
        assert!(
            matches!(e, ReadListingError::Cap(ListingCap::Entries)),
            "{e:?}"
        );
    }

    fn caps_entries(max_entries: usize) -> ListingCaps {
        ListingCaps {
            max_entries,
            ..ListingCaps::default()
        }
    }

    #[tokio::test]
    async fn endless_empty_lines_stop_at_the_byte_cap() {
        // Empty lines are no entries, and one is never long: only the byte cap ends this.
        let mut stream = Endless::new(b"\r\n");
        let caps = caps(1_000_000, 8192, 1 << 20);
        let e = read_listing_lines(&mut stream, &caps, SECOND)
            .await
            .unwrap_err();
        assert!(
            matches!(e, ReadListingError::Cap(ListingCap::Bytes)),
            "{e:?}"
        );
        assert!(
            stream.served <= (1 << 20) + READ_BUFFER as u64,
            "{}",
            stream.served
        );
    }

    #[tokio::test]
    async fn a_line_at_the_cap_passes_and_one_byte_more_does_not() {
        let caps = caps(10, 256, 1 << 20);
        let at_cap = format!("{}\r\n", "x".repeat(256));
        let lines = read_listing_lines(at_cap.as_bytes(), &caps, SECOND)
            .await
            .unwrap();
        assert_eq!(lines[0].len(), 256);
        let over = format!("{}\r\n", "x".repeat(257));
        let e = read_listing_lines(over.as_bytes(), &caps, SECOND)
            .await
            .unwrap_err();
        assert!(
            matches!(e, ReadListingError::Cap(ListingCap::Line)),
            "{e:?}"
        );
        // Without a final line break too.
        let e = read_listing_lines("x".repeat(300).as_bytes(), &caps, SECOND)
            .await
            .unwrap_err();
        assert!(
            matches!(e, ReadListingError::Cap(ListingCap::Line)),
            "{e:?}"
        );
    }

    #[test]
    fn the_explanation_names_the_cap_and_the_key() {
        let text = ListingCap::Entries.explain(&ListingCaps::default());
        assert!(text.contains("1000000"), "{text}");
        assert!(text.contains("remote.max_listing_entries"), "{text}");
        let text = ListingCap::Line.explain(&ListingCaps::default());
        assert!(text.contains("8192 bytes") && text.contains("remote.max_listing_line"));
    }
}
