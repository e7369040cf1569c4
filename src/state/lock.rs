//! One run of a job at a time, across processes: an advisory lock (flock) on a file next to the
//! ledger, `<ledger dir>/locks/<job>.lock`, holding the owner's pid and start time so the
//! second process can say who holds it. The kernel drops the lock when its holder dies, even
//! by `kill -9`, so a crash never leaves a job locked.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// A held job lock; dropping it releases the lock.
#[derive(Debug)]
pub struct JobLock {
    _file: File,
}

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("job {job} is already running: {holder} holds {path}")]
    Held {
        job: String,
        holder: String,
        path: PathBuf,
    },
    #[error("cannot lock job {job} ({path}): {source}")]
    Io {
        job: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl JobLock {
    /// Takes the lock of `job` for the ledger at `state`, without waiting.
    pub fn acquire(state: &Path, job: &str) -> Result<JobLock, LockError> {
        let dir = state
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join("locks");
        let path = dir.join(format!("{job}.lock"));
        let io = |source| LockError::Io {
            job: job.to_string(),
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(LockError::Held {
                    job: job.to_string(),
                    holder: if holder.is_empty() {
                        "another process".to_string()
                    } else {
                        holder.to_string()
                    },
                    path,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        let me = format!(
            "pid {} (started {})",
            std::process::id(),
            crate::state::ledger::iso_time(crate::state::ledger::now_unix())
        );
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        file.write_all(me.as_bytes()).map_err(io)?;
        Ok(JobLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_told_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("ledger.db");
        let first = JobLock::acquire(&state, "j").unwrap();
        let e = JobLock::acquire(&state, "j").unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        assert!(JobLock::acquire(&state, "other").is_ok());
        drop(first);
        assert!(JobLock::acquire(&state, "j").is_ok());
    }
}
