//! One run of a job at a time, across processes: an advisory lock (flock) on a file next to the
//! ledger, `<ledger dir>/locks/<job>.lock`, holding the owner's pid and start time so the
//! second process can say who holds it. The kernel drops the lock when its holder dies, even
//! by `kill -9`, so a crash never leaves a job locked.
//!
//! That lock is per ledger: the same job run with two `--state` paths would run twice at once,
//! on the same temporary files (and each run removes the temporary files its own journal does
//! not know). So a run also locks its local folder ([`RootLock`]): an flock on the folder's own
//! descriptor. No file is needed, so nothing appears in the folder for a scan to skip, a push
//! to upload or a pull mirror to delete, and a push job's read-only folder can be locked too.
//! The lock belongs to the directory itself, not to a spelling of its path: symbolic links,
//! bind mounts and relative paths to the same folder all meet the same lock. Two jobs sharing
//! one local folder take turns for the same reason: a pull's cleanup would remove the other's
//! temporary files. The holder is found in `/proc/locks`, since the lock has no file to hold a
//! note.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// A held job lock, on the ledger's side and on the local folder's; dropping it releases both.
#[derive(Debug)]
pub struct JobLock {
    _file: File,
    _root: Option<RootLock>,
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
    /// Another run holds the job's local folder (a run of this job with another ledger, or a
    /// job with the same local folder).
    #[error("job {job} is not run now: its local folder {} is locked by {holder}: a run of this job with another --state ledger, or of another job with the same local folder; one run per local folder at a time", root.display())]
    RootHeld {
        job: String,
        holder: String,
        root: PathBuf,
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
    /// Takes the lock of `job` for the ledger at `state`, then the lock of its local folder
    /// `root` (see [`RootLock::acquire`]), without waiting.
    pub fn acquire(state: &Path, job: &str, root: &Path) -> Result<JobLock, LockError> {
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
            crate::state::clock::iso_time(crate::state::clock::now_unix())
        );
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        file.write_all(me.as_bytes()).map_err(io)?;
        let root = RootLock::acquire(root, job)?;
        Ok(JobLock {
            _file: file,
            _root: root,
        })
    }
}

/// A held lock on a job's local folder; dropping it releases the lock. See the module's docs.
#[derive(Debug)]
struct RootLock {
    _dir: File,
}

impl RootLock {
    /// Takes the lock of the local folder `root` for `job`, without waiting. `Ok(None)`: there
    /// is no folder to lock yet (a push fails on that anyway; a pull's folder is created before
    /// this is called, except in a dry run, which writes nothing), or the file system cannot
    /// lock a directory (some network file systems), which is logged: the lock next to the
    /// ledger still keeps one run per job and ledger.
    fn acquire(root: &Path, job: &str) -> Result<Option<RootLock>, LockError> {
        use std::os::unix::fs::OpenOptionsExt;
        // O_DIRECTORY: a FIFO put in the folder's place would block an open for reading.
        let opened = File::options()
            .read(true)
            .custom_flags(rustix::fs::OFlags::DIRECTORY.bits() as i32)
            .open(root);
        let dir = match opened {
            Ok(dir) => dir,
            // No folder (or not a folder): the run's check of its local folder says so.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(None)
            }
            Err(source) => {
                return Err(LockError::Io {
                    job: job.to_string(),
                    path: root.to_path_buf(),
                    source,
                })
            }
        };
        match dir.try_lock() {
            Ok(()) => Ok(Some(RootLock { _dir: dir })),
            Err(TryLockError::WouldBlock) => Err(LockError::RootHeld {
                job: job.to_string(),
                holder: flock_holder(&dir).unwrap_or_else(|| "another process".to_string()),
                root: root.to_path_buf(),
            }),
            Err(TryLockError::Error(e)) => {
                tracing::warn!(
                    job,
                    folder = %root.display(),
                    "cannot lock the local folder ({e}); only the lock next to the ledger keeps runs of this job apart"
                );
                Ok(None)
            }
        }
    }
}

/// Who holds an flock on `file`: `pid N (command)`, from `/proc/locks` (whose lines read
/// `1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF`, the device as hex major:minor, and
/// `1: -> FLOCK ...` for a waiter). `None` where that cannot be told.
fn flock_holder(file: &File) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().ok()?;
    let dev = meta.dev();
    // glibc's gnu_dev_major and gnu_dev_minor.
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let pid = locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&"FLOCK") {
            return None;
        }
        let mut id = fields.get(5)?.split(':');
        let (maj, min, ino) = (id.next()?, id.next()?, id.next()?);
        let same = u64::from_str_radix(maj, 16).ok()? == major
            && u64::from_str_radix(min, 16).ok()? == minor
            && ino.parse::<u64>().ok()? == meta.ino();
        same.then(|| fields[4].to_string())
    })?;
    let command = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let command = command.trim();
    Some(if command.is_empty() {
        format!("pid {pid}")
    } else {
        format!("pid {pid} ({})", command.escape_debug())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_told_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("ledger.db");
        let first = JobLock::acquire(&state, "j", &dir.path().join("j")).unwrap();
        let e = JobLock::acquire(&state, "j", &dir.path().join("j")).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        assert!(JobLock::acquire(&state, "other", &dir.path().join("other")).is_ok());
        drop(first);
        assert!(JobLock::acquire(&state, "j", &dir.path().join("j")).is_ok());
    }

    #[test]
    fn one_local_folder_is_run_once_whatever_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("local");
        std::fs::create_dir(&root).unwrap();
        // The same job with two --state paths: the second is refused, by the folder's lock.
        let first = JobLock::acquire(&dir.path().join("a/ledger.db"), "j", &root).unwrap();
        let e = JobLock::acquire(&dir.path().join("b/ledger.db"), "j", &root).unwrap_err();
        assert!(matches!(e, LockError::RootHeld { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "job j is not run now: its local folder {} is locked by pid {} (",
                root.display(),
                std::process::id()
            )),
            "{text}"
        );
        // Another spelling of the same folder meets the same lock.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&root, &link).unwrap();
        assert!(RootLock::acquire(&link, "other").is_err());
        assert!(RootLock::acquire(&dir.path().join("local/../local"), "j").is_err());
        drop(first);
        let again = JobLock::acquire(&dir.path().join("b/ledger.db"), "j", &root).unwrap();
        assert!(again._root.is_some());
        // No folder yet: nothing to lock.
        assert!(RootLock::acquire(&dir.path().join("missing"), "j")
            .unwrap()
            .is_none());
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(RootLock::acquire(&file, "j").unwrap().is_none());
        // Nothing was written into the folder.
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
    }
}
