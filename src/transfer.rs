//! Moving the bytes of one file, safely: an upload goes to a temporary name in the target's own
//! remote directory and is renamed into place only when complete and verified; a download goes
//! to a temporary file beside its target, is fsynced and then renamed. BLAKE3 is computed from
//! the bytes as they stream, never by reading the file a second time.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ftps::{FtpsError, Session, OP_TIMEOUT};
use crate::plan::SyncedEntry;
use crate::scan::{local_path, remote_path, system_time_ns};
use crate::snapshot::{temp_name, Entry};

const CHUNK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Ftps(#[from] FtpsError),
    #[error("{path}: {action}: {source}")]
    Local {
        path: String,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Verify(String),
}

impl TransferError {
    /// Whether the connection is in an unknown state and must be replaced before reuse.
    pub fn breaks_connection(&self) -> bool {
        matches!(
            self,
            TransferError::Ftps(FtpsError::Connection { .. } | FtpsError::Timeout { .. })
        )
    }
}

/// Bytes moved so far by all transfers of a run, for progress display.
#[derive(Debug, Default, Clone)]
pub struct ByteCounter(Arc<AtomicU64>);

impl ByteCounter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

fn split_parent(rel: &str) -> (&str, &str) {
    match rel.rfind('/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => ("", rel),
    }
}

async fn timed<T>(
    session: &Session,
    command: &'static str,
    path: &str,
    fut: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, TransferError> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Err(_) => Err(FtpsError::Timeout {
            server: session.server.clone(),
            command,
            path: path.to_string(),
            secs: OP_TIMEOUT.as_secs(),
        }
        .into()),
        Ok(Err(e)) => Err(FtpsError::Connection {
            server: session.server.clone(),
            command,
            path: path.to_string(),
            reason: e.to_string(),
        }
        .into()),
        Ok(Ok(v)) => Ok(v),
    }
}

/// Uploads `rel` from `local_root` to `remote_root`; returns the ledger record to write.
pub async fn upload(
    session: &mut Session,
    local_root: &Path,
    remote_root: &str,
    rel: &str,
    source: &Entry,
    counter: &ByteCounter,
) -> Result<SyncedEntry, TransferError> {
    let (parent, name) = split_parent(rel);
    let final_path = remote_path(remote_root, rel);
    let temp_path = remote_path(
        remote_root,
        &crate::snapshot::join(parent, &temp_name(name)),
    );
    let local = local_path(local_root, rel);
    let local_err = |action, source| TransferError::Local {
        path: local.display().to_string(),
        action,
        source,
    };
    let mut file = tokio::fs::File::open(&local)
        .await
        .map_err(|e| local_err("open", e))?;

    let mut stream = session.store(&temp_path).await?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| local_err("read", e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        timed(session, "STOR", &temp_path, stream.write_all(&buf[..n])).await?;
        sent += n as u64;
        counter.add(n as u64);
    }
    session.finish("STOR", &temp_path, stream).await?;

    let hash = hasher.finalize();
    if Some(hash) != source.hash || sent != source.size {
        let _ = session.delete_file(&temp_path).await;
        return Err(TransferError::Verify(format!(
            "{rel}: the local file changed while it was being uploaded; it will be sent again by the next run"
        )));
    }
    if session.features.size {
        let remote_size = session.size(&temp_path).await?;
        if remote_size != sent {
            let _ = session.delete_file(&temp_path).await;
            return Err(TransferError::Verify(format!(
                "{rel}: the server stored {remote_size} bytes of {sent}; the upload was discarded"
            )));
        }
    }
    session.rename(&temp_path, &final_path).await?;
    if session.features.mfmt {
        if let Err(e) = session
            .set_mtime(&final_path, source.mtime.div_euclid(1_000_000_000))
            .await
        {
            tracing::warn!("cannot preserve the modification time: {e}");
        }
    }
    Ok(SyncedEntry {
        size: sent,
        mtime: source.mtime,
        hash,
        remote_size: sent,
        remote_mtime: None,
    })
}

/// Downloads `rel` from `remote_root` into `local_root`; returns the ledger record to write.
pub async fn download(
    session: &mut Session,
    local_root: &Path,
    remote_root: &str,
    rel: &str,
    source: &Entry,
    counter: &ByteCounter,
) -> Result<SyncedEntry, TransferError> {
    let (parent, name) = split_parent(rel);
    let remote = remote_path(remote_root, rel);
    let final_path = local_path(local_root, rel);
    let temp_path = local_path(local_root, &crate::snapshot::join(parent, &temp_name(name)));
    let local_err = |action, source| TransferError::Local {
        path: final_path.display().to_string(),
        action,
        source,
    };

    let mut stream = session.retrieve(&remote).await?;
    let mut file = match tokio::fs::File::create(&temp_path).await {
        Ok(f) => f,
        Err(e) => {
            drop(stream);
            return Err(local_err("create a temporary file", e));
        }
    };
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut received = 0u64;
    loop {
        let n = timed(session, "RETR", &remote, stream.read(&mut buf)).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Err(e) = file.write_all(&buf[..n]).await {
            drop(stream);
            return Err(local_err("write", e));
        }
        received += n as u64;
        counter.add(n as u64);
    }
    session.finish("RETR", &remote, stream).await?;
    file.flush().await.map_err(|e| local_err("write", e))?;
    let file = file.into_std().await;
    let mtime = std::time::UNIX_EPOCH
        + std::time::Duration::from_nanos(u64::try_from(source.mtime).unwrap_or(0));
    let temp = temp_path.clone();
    let synced = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        file.set_modified(mtime)?;
        file.sync_all()
    })
    .await
    .map_err(|e| local_err("sync", std::io::Error::other(e)))?;
    synced.map_err(|e| local_err("sync", e))?;
    tokio::fs::rename(&temp, &final_path)
        .await
        .map_err(|e| local_err("rename into place", e))?;
    if let Some(dir) = final_path.parent() {
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    let meta = tokio::fs::metadata(&final_path)
        .await
        .map_err(|e| local_err("stat", e))?;
    Ok(SyncedEntry {
        size: received,
        mtime: meta.modified().map(system_time_ns).unwrap_or(source.mtime),
        hash: hasher.finalize(),
        remote_size: source.size,
        remote_mtime: Some(source.mtime),
    })
}
