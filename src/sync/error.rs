//! Why a run failed as a whole, typed to the end: the agent and the command line can still tell
//! a failure that the next attempt may not meet (a dropped connection, a 4xx reply) from one
//! that needs a person (a wrong password, a refused plan, an unreadable folder).

use crate::model::plan::PlanError;
use crate::remote::error::FtpsError;
use crate::state::ledger::LedgerError;
use crate::state::lock::LockError;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The server or the connection to it: a failed connect, login, listing or command.
    #[error(transparent)]
    Remote(#[from] FtpsError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Another run of the job holds its lock.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The job's TLS settings cannot be used (an unreadable CA file or client key).
    #[error("job {job}: {reason}")]
    Tls { job: String, reason: String },
    /// The plan refused to run (too many deletes): nothing was changed.
    #[error("job {job}: {source}")]
    Plan {
        job: String,
        #[source]
        source: PlanError,
    },
    /// The job's local folder: missing, unreadable or not creatable (the text names it).
    #[error("{0}")]
    LocalRoot(String),
    /// The job's remote directory does not exist (a pull has nothing to read).
    #[error("remote directory {path} does not exist on {server}")]
    RemoteRootMissing { path: String, server: String },
    /// The remote directory of a push could not be created.
    #[error("cannot create remote directory {path}: {source}")]
    RemoteRoot {
        path: String,
        #[source]
        source: FtpsError,
    },
    /// A task of the run ended without an answer (it panicked).
    #[error("{0}: a task of the run stopped unexpectedly")]
    Task(&'static str),
    /// Every connection to the server was lost before the run could go on.
    #[error("no connection to the server could be kept")]
    NoConnection,
}

/// A refused plan as the run reports it: with the job's name, and the source's location
/// where the refusal names it.
pub(crate) fn plan_refused(job: &crate::config::Job, source: PlanError) -> RunError {
    let root = match job.direction {
        crate::model::policy::Direction::Push => job.local.display().to_string(),
        crate::model::policy::Direction::Pull => {
            format!("{} on {}", job.remote.path, job.remote.host)
        }
    };
    RunError::Plan {
        job: job.name.clone(),
        source: source.naming_source(root),
    }
}

impl RunError {
    /// Whether trying the same run again later may succeed without anyone changing anything:
    /// the server's and the network's transient failures (see [`FtpsError::is_transient`]).
    pub fn is_transient(&self) -> bool {
        match self {
            RunError::Remote(e) | RunError::RemoteRoot { source: e, .. } => e.is_transient(),
            // The other run ends in time.
            RunError::Lock(LockError::Held { .. } | LockError::RootHeld { .. }) => true,
            _ => false,
        }
    }

    /// The server's reply code, where the failure is a reply.
    pub fn code(&self) -> Option<u32> {
        match self {
            RunError::Remote(e) => e.code(),
            _ => None,
        }
    }
}
