//! The side a run writes to: the server for a push, the local folder for a pull. The run makes
//! directories, deletes files and directories and removes leftover temporary files there
//! without asking which side it is; the transfers themselves (`transfer`) are the one place
//! where push and pull differ in kind.

use std::path::{Path, PathBuf};

use crate::config::Job;
use crate::model::paths::{local_path, remote_path};
use crate::model::policy::Direction;
use crate::remote::error::FtpsError;
use crate::remote::session::Session;

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

    fn session(&mut self) -> Result<(&mut Session, &str), DestinationError> {
        match self {
            Destination::Server {
                root,
                session: Some(s),
            } => Ok((&mut **s, *root)),
            _ => Err(DestinationError::NoConnection),
        }
    }

    fn local(root: &Path, rel: &str) -> PathBuf {
        local_path(root, rel)
    }

    /// Creates the directory `rel` (its parent exists: the plan orders parents first).
    pub(crate) async fn make_dir(&mut self, rel: &str) -> Result<(), DestinationError> {
        if let Destination::Folder { root } = self {
            return std::fs::create_dir_all(Self::local(root, rel)).map_err(|source| {
                DestinationError::Local {
                    action: "create local directory",
                    source,
                }
            });
        }
        let (session, root) = self.session()?;
        Ok(session.mkdir(&remote_path(root, rel)).await?)
    }

    /// Deletes the file `rel`.
    pub(crate) async fn delete_file(&mut self, rel: &str) -> Result<(), DestinationError> {
        if let Destination::Folder { root } = self {
            return std::fs::remove_file(Self::local(root, rel)).map_err(|source| {
                DestinationError::Local {
                    action: "delete local file",
                    source,
                }
            });
        }
        let (session, root) = self.session()?;
        Ok(session.delete_file(&remote_path(root, rel)).await?)
    }

    /// Removes the directory `rel`, which must be empty.
    pub(crate) async fn remove_dir(&mut self, rel: &str) -> Result<(), DestinationError> {
        if let Destination::Folder { root } = self {
            return std::fs::remove_dir(Self::local(root, rel)).map_err(|source| {
                DestinationError::Local {
                    action: "delete local directory",
                    source,
                }
            });
        }
        let (session, root) = self.session()?;
        Ok(session.remove_dir(&remote_path(root, rel)).await?)
    }
}
