//! The side a run writes to: the server for a push, the local folder for a pull. The run makes
//! directories, deletes files and directories and removes leftover temporary files there
//! without asking which side it is; the transfers themselves (`transfer`) are the one place
//! where push and pull differ in kind.

use std::path::Path;

use crate::config::Job;
use crate::model::paths::remote_path;
use crate::model::policy::Direction;
use crate::remote::error::FtpsError;
use crate::remote::session::Session;
use crate::sync::transfer::beneath::Dir;

/// Why a change on the destination failed; its text goes to the run's failed paths.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DestinationError {
    #[error(transparent)]
    Remote(#[from] FtpsError),
    #[error("cannot {action}: {source}")]
    Local {
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no connection to the server")]
    NoConnection,
}

/// A job's destination, with the run's connection where the destination is the server.
pub(crate) enum Destination<'s> {
    /// A push: paths under the job's remote directory, through the run's connection if one
    /// is left (every connection can be lost during the transfers).
    Server {
        root: &'s str,
        session: Option<&'s mut Session>,
    },
    /// A pull: paths under the job's local folder.
    Folder { root: &'s Path },
}

impl<'s> Destination<'s> {
    /// The destination of `job`; `session` is used only for a push.
    pub(crate) fn of(job: &'s Job, session: Option<&'s mut Session>) -> Destination<'s> {
        match job.direction {
            Direction::Push => Destination::Server {
                root: &job.remote.path,
                session,
            },
            Direction::Pull => Destination::Folder { root: &job.local },
        }
    }

    /// Makes `change` at `rel`; returns the server's reply where the audit record keeps it
    /// (a remote delete's).
    async fn apply(
        &mut self,
        change: Change,
        rel: &str,
    ) -> Result<Option<String>, DestinationError> {
        match self {
            Destination::Folder { root } => {
                // Beneath the job's folder through no link (see `transfer::beneath`): a
                // directory replaced by a link since the scan fails, and is not followed.
                let (action, done) = match change {
                    Change::MakeDir => (
                        "create local directory",
                        Dir::make_all(root, rel).map(|_| ()),
                    ),
                    Change::DeleteFile => (
                        "delete local file",
                        Dir::parent_of(root, rel).and_then(|(d, name)| d.remove_file(name)),
                    ),
                    Change::RemoveDir => (
                        "delete local directory",
                        Dir::parent_of(root, rel).and_then(|(d, name)| d.remove_dir(name)),
                    ),
                };
                // The run files the error under `rel`; the error names the link it met.
                done.map(|()| None)
                    .map_err(|source| DestinationError::Local { action, source })
            }
            Destination::Server { root, session } => {
                let session = session.as_mut().ok_or(DestinationError::NoConnection)?;
                let path = remote_path(root, rel);
                Ok(match change {
                    Change::MakeDir => session.mkdir(&path).await.map(|()| None),
                    Change::DeleteFile => session.delete_file_replied(&path).await.map(Some),
                    Change::RemoveDir => session.remove_dir(&path).await.map(|()| None),
                }?)
            }
        }
    }

    /// Creates the directory `rel` (its parent exists: the plan orders parents first).
    pub(crate) async fn make_dir(&mut self, rel: &str) -> Result<(), DestinationError> {
        self.apply(Change::MakeDir, rel).await.map(|_| ())
    }

    /// Deletes the file `rel`; returns the server's reply (none for a local delete).
    pub(crate) async fn delete_file(
        &mut self,
        rel: &str,
    ) -> Result<Option<String>, DestinationError> {
        self.apply(Change::DeleteFile, rel).await
    }

    /// Removes the directory `rel`, which must be empty.
    pub(crate) async fn remove_dir(&mut self, rel: &str) -> Result<(), DestinationError> {
        self.apply(Change::RemoveDir, rel).await.map(|_| ())
    }
}

/// The changes a run makes on its destination besides transfers.
#[derive(Clone, Copy)]
enum Change {
    MakeDir,
    DeleteFile,
    RemoveDir,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[tokio::test]
    async fn a_pull_makes_and_deletes_nothing_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("local");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::create_dir_all(outside.join("keep")).unwrap();
        std::fs::write(outside.join("f"), b"not the job's").unwrap();
        // A directory of the job replaced by a link between runs.
        symlink(&outside, root.join("linked")).unwrap();
        let mut dest = Destination::Folder { root: &root };
        assert!(dest.make_dir("linked/new").await.is_err());
        assert!(!outside.join("new").exists());
        let e = dest.delete_file("linked/f").await.unwrap_err();
        assert!(e.to_string().contains("linked"), "{e}");
        assert!(outside.join("f").exists());
        assert!(dest.remove_dir("linked/keep").await.is_err());
        assert!(outside.join("keep").exists());
        // What is the job's own still works, parents included.
        dest.make_dir("d/e/f").await.unwrap();
        assert!(root.join("d/e/f").is_dir());
        dest.remove_dir("d/e/f").await.unwrap();
        std::fs::write(root.join("d/x"), b"x").unwrap();
        dest.delete_file("d/x").await.unwrap();
        assert!(!root.join("d/x").exists());
        // Deleting the link itself removes the link, not the folder it points to.
        dest.delete_file("linked").await.unwrap();
        assert!(outside.join("f").exists());
    }
}
