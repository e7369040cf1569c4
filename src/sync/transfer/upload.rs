//! An upload, step by step: the resume decision, streaming the file to the temporary name,
//! verification, and the commit (rename into place).

use tokio::io::AsyncWriteExt;

use super::file_io::{opened_as_scanned, sha256_of, FileReader, NotAsScanned, ReadToEnd};
use super::{buffer_len, timed, Checkpoints, TransferContext, TransferError, Transferred};
use crate::config::Job;
use crate::model::paths::{local_path, remote_path};
use crate::model::plan::SyncedEntry;
use crate::model::policy::Direction;
use crate::model::snapshot::{temp_rel, Entry};
use crate::remote::session::Session;
use crate::state::ledger::JournalEntry;

/// Where the bytes of one upload come from and go to.
struct UploadPaths<'a> {
    rel: &'a str,
    /// The name the bytes are written to, relative to the job's roots (as the journal has it).
    temp: String,
    /// On the server: the target, and the name the bytes are written to.
    final_path: String,
    temp_path: String,
    /// The source (for errors: it is opened beneath `root`, see [`opened_as_scanned`]).
    local: std::path::PathBuf,
    root: std::path::PathBuf,
}

impl<'a> UploadPaths<'a> {
    fn new(job: &Job, rel: &'a str) -> Self {
        let final_path = remote_path(&job.remote.path, rel);
        // Without a temporary name the bytes go straight to the final name.
        let temp = if job.upload.temp_name {
            temp_rel(rel)
        } else {
            rel.to_string()
        };
        let temp_path = remote_path(&job.remote.path, &temp);
        let local = local_path(&job.local, rel);
        UploadPaths {
            rel,
            temp,
            final_path,
            temp_path,
            local,
            root: job.local.clone(),
        }
    }

    /// A failed read of the source; a source that is not the file the scan saw is a failed
    /// verification instead (nothing was sent: the next run sends what is there then).
    fn read_err(&self, source: std::io::Error) -> TransferError {
        if let Some(not) = source
            .get_ref()
            .and_then(|e| e.downcast_ref::<NotAsScanned>())
        {
            return TransferError::Verify(format!(
                "{}: the local file is not the one the scan saw ({not}); it was not sent, and the next run sends it as it is then",
                self.rel
            ));
        }
        self.local_err("read", source)
    }

    fn local_err(&self, action: &'static str, source: std::io::Error) -> TransferError {
        TransferError::Local {
            path: self.local.display().to_string(),
            action,
            source,
        }
    }
}

/// Uploads `rel`; returns what the ledger must record once the caller commits it.
pub(crate) async fn upload(
    session: &mut Session,
    ctx: &TransferContext<'_>,
    rel: &str,
    source: &Entry,
) -> Result<Transferred, TransferError> {
    let job = ctx.job;
    let paths = UploadPaths::new(job, rel);
    let offset = resume_offset(session, ctx, &paths, source).await?;
    let (sent, read) = stream_file(session, ctx, &paths, source, offset).await?;

    let total = offset + sent;
    let hash = read.hasher.finalize();
    if !as_scanned(source, &read, hash) || total != source.size {
        return Err(discard(
            session,
            &paths,
            format!("{rel}: the local file changed while it was being uploaded; it will be sent again by the next run"),
        )
        .await);
    }
    verify_on_server(session, job, &paths, &read.file, offset, total).await?;
    let reply = commit(session, job, &paths, source.mtime).await?;
    Ok(Transferred {
        entry: SyncedEntry {
            size: total,
            mtime: source.mtime,
            hash,
            remote_size: total,
            remote_mtime: None,
        },
        bytes_moved: sent,
        reply,
    })
}

/// The resume decision: the bytes the server already holds of this same transfer of this same
/// file (from its SIZE), or 0 after journaling a fresh transfer.
async fn resume_offset(
    session: &mut Session,
    ctx: &TransferContext<'_>,
    paths: &UploadPaths<'_>,
    source: &Entry,
) -> Result<u64, TransferError> {
    let job = ctx.job;
    // Resume only the same transfer of the same unchanged file, from what the server holds.
    let journal = ctx.journal_entry(paths.rel, source.size)?;
    let same = journal.as_ref().is_some_and(|j| {
        j.direction == Direction::Push.to_string()
            && j.temp_name == paths.temp
            && j.size == source.size
            && j.mtime == source.mtime
            // A hash on both sides must agree; a file the scan did not hash is known by size and
            // mtime, and the server's hash check (where offered) covers the joined bytes.
            && (j.hash.is_none() || source.hash.is_none() || j.hash == source.hash)
    });
    let mut offset = 0;
    if same && job.upload.temp_name && job.upload.verify {
        if let Ok(on_server) = session.size(&paths.temp_path).await {
            if on_server <= source.size {
                offset = on_server;
            }
        }
    } else {
        ctx.journal_begin(&JournalEntry {
            path: paths.rel.to_string(),
            direction: Direction::Push.to_string(),
            temp_name: paths.temp.clone(),
            size: source.size,
            mtime: source.mtime,
            hash: source.hash,
            offset: 0,
        })?;
    }
    Ok(offset)
}

/// Streams the file of `size` bytes from `offset` to the temporary name (or, when the server
/// already holds every byte, only reads it); returns the bytes sent and what the reader saw.
async fn stream_file(
    session: &mut Session,
    ctx: &TransferContext<'_>,
    paths: &UploadPaths<'_>,
    source: &Entry,
    offset: u64,
) -> Result<(u64, ReadToEnd), TransferError> {
    if offset > 0 {
        tracing::info!(path = paths.rel, offset, "resuming upload");
    }
    let size = source.size;
    let open = {
        let (root, rel, scanned) = (paths.root.clone(), paths.rel.to_string(), source.clone());
        move || opened_as_scanned(&root, &rel, &scanned)
    };
    let mut reader = FileReader::start(open, offset, buffer_len(size.saturating_sub(offset)));
    let sent = if offset < size || size == 0 {
        send(session, ctx, paths, &mut reader, offset).await?
    } else {
        drain(paths, &mut reader).await?;
        0
    };
    let read = reader.finish().await.map_err(|e| paths.read_err(e))?;
    Ok((sent, read))
}

/// Sends what `reader` reads (REST `offset` + STOR), with checkpoints, stopping at one if asked
/// to; returns the bytes sent.
async fn send(
    session: &mut Session,
    ctx: &TransferContext<'_>,
    paths: &UploadPaths<'_>,
    reader: &mut FileReader,
    offset: u64,
) -> Result<u64, TransferError> {
    let temp_path = &paths.temp_path;
    let mut sent = 0u64;
    // The first buffer (or the open's error) before the data connection: a file that
    // cannot be read costs no STOR.
    let mut next = reader.next().await;
    if offset > 0 {
        session.restart_at(temp_path, offset).await?;
    }
    if let Some(Err(e)) = next {
        return Err(paths.read_err(e));
    }
    let mut stream = match session.store(temp_path).await {
        Err(e) if ctx.job.upload.temp_name && crate::sync::error::refuses_creation(&e) => {
            return Err(TransferError::TempNameRefused(e))
        }
        other => other?,
    };
    let mut checkpoints = Checkpoints::new(offset);
    while let Some(read) = next {
        let buf = read.map_err(|e| paths.read_err(e))?;
        let n = buf.len() as u64;
        match ctx.bandwidth {
            None => timed(session, "STOR", temp_path, stream.write_all(&buf)).await?,
            // Limited: in pieces of at most the bucket's depth, each waiting for its turn.
            Some(limit) => {
                for piece in buf.chunks(limit.piece_len(buf.len())) {
                    limit.take(piece.len()).await;
                    timed(session, "STOR", temp_path, stream.write_all(piece)).await?;
                }
            }
        }
        reader.recycle(buf);
        sent += n;
        ctx.counter.add(n);
        if checkpoints.due(offset + sent) {
            ctx.checkpoint(paths.rel, offset + sent)?;
            if ctx.stop_requested() {
                // The server keeps what it received; the next run resumes from its SIZE.
                drop(stream);
                return Err(TransferError::Interrupted(paths.rel.to_string()));
            }
        }
        next = reader.next().await;
    }
    session.finish("STOR", temp_path, stream).await?;
    Ok(sent)
}

/// Nothing left to send (the server already holds every byte): drains the reader so its hash
/// covers the whole file.
async fn drain(paths: &UploadPaths<'_>, reader: &mut FileReader) -> Result<(), TransferError> {
    while let Some(read) = reader.next().await {
        let buf = read.map_err(|e| paths.read_err(e))?;
        reader.recycle(buf);
    }
    Ok(())
}

/// Whether the bytes sent (`hash`) are the file the plan saw: the same content where the scan
/// hashed it; otherwise (a file the scan left to the transfer, settled for seconds) the same
/// size and mtime after the last read, which any write since the scan would have moved.
fn as_scanned(source: &Entry, read: &ReadToEnd, hash: blake3::Hash) -> bool {
    match source.hash {
        Some(scanned) => scanned == hash,
        None => read.size == source.size && read.mtime == source.mtime,
    }
}

/// Deletes the temporary file of a failed verification; returns the error saying why.
async fn discard(session: &mut Session, paths: &UploadPaths<'_>, why: String) -> TransferError {
    let _ = session.delete_file(&paths.temp_path).await;
    TransferError::Verify(why)
}

/// Checks what the server holds under the temporary name, where the job asks for it: its SIZE
/// and, after a resume, its SHA-256; discards it where either differs. The SIZE goes out with
/// the next transfer's EPSV (see `Session::size_after_store`).
async fn verify_on_server(
    session: &mut Session,
    job: &Job,
    paths: &UploadPaths<'_>,
    local: &std::fs::File,
    offset: u64,
    total: u64,
) -> Result<(), TransferError> {
    let rel = paths.rel;
    let stored = session
        .size_after_store(&paths.temp_path, job.upload.verify)
        .await?;
    if let Some(remote_size) = stored {
        if remote_size != total {
            return Err(discard(
                session,
                paths,
                format!("{rel}: the server stored {remote_size} bytes of {total}; the upload was discarded"),
            )
            .await);
        }
    }
    if offset > 0 && session.features.sha256.is_some() && job.upload.verify {
        // A resumed upload joined two sessions' bytes on the server: where the server can hash
        // a file, compare its SHA-256 with the local file's before the rename.
        let local_sha = sha256_of(local)
            .await
            .map_err(|e| paths.local_err("read", e))?;
        if let Some(remote_sha) = session.remote_sha256(&paths.temp_path).await? {
            if remote_sha != local_sha {
                return Err(discard(
                    session,
                    paths,
                    format!("{rel}: the server's SHA-256 of the resumed upload differs from the local file; the upload was discarded and starts over next time"),
                )
                .await);
            }
        }
    }
    Ok(())
}

/// Puts the verified upload in place and sets its mtime where the server can (MFMT; a failure
/// there is only a warning). With a temporary name, MFMT, RNFR and RNTO go out in one flight,
/// MFMT on the temporary name, whose time the rename keeps: a refused rename never leaves this
/// file's time on another file under the final name. Returns the server's reply to the rename,
/// for the audit record.
async fn commit(
    session: &mut Session,
    job: &Job,
    paths: &UploadPaths<'_>,
    mtime: i64,
) -> Result<Option<String>, TransferError> {
    let secs = mtime.div_euclid(1_000_000_000);
    let (reply, dated) = if job.upload.temp_name {
        let (reply, dated) = session
            .rename_dated(&paths.temp_path, &paths.final_path, Some(secs))
            .await?;
        (Some(reply), dated)
    } else if session.features.mfmt {
        (None, Some(session.set_mtime(&paths.final_path, secs).await))
    } else {
        (None, None)
    };
    if let Some(Err(e)) = dated {
        tracing::warn!("cannot preserve the modification time: {e}");
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::snapshot::{system_time_ns, temp_name};
    use crate::sync::transfer::test_support::loopback_job;
    use crate::sync::transfer::ByteCounter;
    use std::path::Path;
    use std::time::Duration;

    /// The file as a scan that did not hash it saw it (see [`crate::model::plan::local_hash`]).
    fn unhashed_entry(path: &Path) -> Entry {
        let meta = std::fs::metadata(path).unwrap();
        Entry {
            kind: crate::model::snapshot::Kind::File,
            size: meta.len(),
            mtime: system_time_ns(meta.modified().unwrap()),
            hash: None,
            id: None,
        }
    }

    #[tokio::test]
    async fn an_unhashed_file_written_after_the_scan_is_not_uploaded() {
        let dir = tempfile::tempdir().unwrap();
        let (job, mut session, ledger) = loopback_job(dir.path()).await;
        let local = dir.path().join("local/a.csv");
        std::fs::write(&local, b"old content").unwrap();
        let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        let f = std::fs::File::options().write(true).open(&local).unwrap();
        f.set_modified(an_hour_ago).unwrap();
        let scanned = unhashed_entry(&local);
        // Rewritten after the scan, with the same size: only the mtime tells.
        std::fs::write(&local, b"new content").unwrap();
        let counter = ByteCounter::default();
        let ctx = TransferContext {
            job: &job,
            ledger: &ledger,
            counter: &counter,
            stop: None,
            bandwidth: None,
        };
        let err = upload(&mut session, &ctx, "a.csv", &scanned)
            .await
            .unwrap_err();
        assert!(matches!(err, TransferError::Verify(_)), "{err}");
        let server_root = dir.path().join("server");
        assert!(
            !server_root.join("a.csv").exists(),
            "a changed file went live"
        );
        assert!(!server_root.join(temp_name("a.csv")).exists());

        // As the next scan sees it: sent, and recorded with the hash of the bytes sent.
        let rescanned = unhashed_entry(&local);
        let done = upload(&mut session, &ctx, "a.csv", &rescanned)
            .await
            .unwrap();
        assert_eq!(done.entry.hash, blake3::hash(b"new content"));
        assert_eq!(
            std::fs::read(server_root.join("a.csv")).unwrap(),
            b"new content"
        );
    }

    #[tokio::test]
    async fn an_upload_resumes_from_what_the_server_holds_of_the_journaled_transfer() {
        let dir = tempfile::tempdir().unwrap();
        let (job, mut session, ledger) = loopback_job(dir.path()).await;
        let data: Vec<u8> = (0..3usize << 20).map(|i| (i * 31 % 251) as u8).collect();
        let local = dir.path().join("local/big.bin");
        std::fs::write(&local, &data).unwrap();
        let source = unhashed_entry(&local);
        // An earlier attempt of the same transfer left 1 MiB + 5 bytes on the server.
        let kept = (1 << 20) + 5;
        let server_root = dir.path().join("server");
        std::fs::write(server_root.join(temp_name("big.bin")), &data[..kept]).unwrap();
        ledger
            .lock()
            .journal_begin(
                &job.name,
                &JournalEntry {
                    path: "big.bin".into(),
                    direction: Direction::Push.to_string(),
                    temp_name: temp_rel("big.bin"),
                    size: source.size,
                    mtime: source.mtime,
                    hash: None,
                    offset: 0,
                },
            )
            .unwrap();
        let counter = ByteCounter::default();
        let ctx = TransferContext {
            job: &job,
            ledger: &ledger,
            counter: &counter,
            stop: None,
            bandwidth: None,
        };
        let done = upload(&mut session, &ctx, "big.bin", &source)
            .await
            .unwrap();
        assert_eq!(done.bytes_moved, (data.len() - kept) as u64);
        assert_eq!(done.entry.hash, blake3::hash(&data));
        assert_eq!(std::fs::read(server_root.join("big.bin")).unwrap(), data);
        assert!(!server_root.join(temp_name("big.bin")).exists());
    }

    /// The file as the local scan sees it (device and inode included).
    fn scanned(root: &Path, rel: &str) -> Entry {
        let s = crate::sync::scan::scan_local_dir(
            root,
            "",
            &crate::config::PathFilter::all(),
            &crate::model::plan::LedgerView::new(),
        );
        s.snapshot[rel].clone()
    }

    #[tokio::test]
    async fn a_file_swapped_after_the_scan_is_not_sent_even_with_the_same_size_and_mtime() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let (job, mut session, ledger) = loopback_job(dir.path()).await;
        let root = dir.path().join("local");
        let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        let write_at = |path: &Path, bytes: &[u8]| {
            std::fs::write(path, bytes).unwrap();
            let f = std::fs::File::options().write(true).open(path).unwrap();
            f.set_modified(an_hour_ago).unwrap();
        };
        let secret = dir.path().join("secret");
        write_at(&secret, b"the secret");
        let counter = ByteCounter::default();
        let ctx = TransferContext {
            job: &job,
            ledger: &ledger,
            counter: &counter,
            stop: None,
            bandwidth: None,
        };
        let server_root = dir.path().join("server");
        // Swapped for a link to the secret, or (renamed over it) for another regular file,
        // each with the size and mtime the scan saw.
        for (rel, swap) in [("linked.csv", true), ("renamed.csv", false)] {
            let path = root.join(rel);
            write_at(&path, b"job's data");
            let source = scanned(&root, rel);
            assert!(source.hash.is_none() && source.id.is_some());
            if swap {
                std::fs::remove_file(&path).unwrap();
                symlink(&secret, &path).unwrap();
            } else {
                // Made while the scanned file still holds its inode number.
                let other = dir.path().join("other");
                write_at(&other, b"the secret");
                std::fs::rename(&other, &path).unwrap();
            }
            let err = upload(&mut session, &ctx, rel, &source).await.unwrap_err();
            // A link fails the open (O_NOFOLLOW) and names the link; another file fails the
            // check of the descriptor against the scan.
            let expected = if swap {
                matches!(&err, TransferError::Local { .. })
                    && err.to_string().contains("is a symbolic link")
            } else {
                matches!(&err, TransferError::Verify(_))
                    && err.to_string().contains("not the one the scan saw")
            };
            assert!(expected, "{rel}: {err}");
            assert!(!err.is_transient(), "{err}");
            assert!(err.to_string().contains(rel), "{err}");
            assert!(!server_root.join(rel).exists(), "{rel} was sent");
            assert!(
                !server_root.join(temp_name(rel)).exists(),
                "{rel}: bytes sent"
            );
        }
        assert_eq!(counter.get(), 0, "bytes of a swapped file were sent");
        // The scan itself never takes a link for a file.
        assert!(!crate::sync::scan::scan_local_dir(
            &root,
            "",
            &crate::config::PathFilter::all(),
            &crate::model::plan::LedgerView::new(),
        )
        .snapshot
        .contains_key("linked.csv"));
    }
}
