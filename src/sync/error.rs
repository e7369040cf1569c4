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

/// Whether a STOR's refusal says the file may not be created: 553, or 550 naming permissions.
/// (A 550 for a missing directory is not.)
pub(crate) fn refuses_creation(e: &FtpsError) -> bool {
    match (e.code(), e) {
        (Some(553), _) => true,
        (Some(550), FtpsError::Reply { reply, .. }) => {
            let reply = reply.to_ascii_lowercase();
            reply.contains("permission") || reply.contains("prohibited")
        }
        _ => false,
    }
}

/// What to change when the server refuses to create an upload's temporary file
/// (`.NAME.ferrysync-part`): the reply tells a read-only directory from a server that forbids
/// dot files where it can; otherwise both causes are named, permissions first (the common one,
/// and the one `upload.temp_name: false` would not cure).
pub(crate) fn temp_name_refused_hint(e: &FtpsError) -> &'static str {
    let reply = match e {
        FtpsError::Reply { reply, .. } => reply.to_ascii_lowercase(),
        _ => String::new(),
    };
    if reply.contains("prohibited") || reply.contains("dot file") || reply.contains("dotfile") {
        "the server forbids file names that start with a dot, such as the temporary name .NAME.ferrysync-part: set upload.temp_name: false"
    } else if reply.contains("permission denied") {
        "the server's user may not create files in this directory: check the directory's permissions on the server (or the server's write settings)"
    } else {
        "the server refused to create the temporary file .NAME.ferrysync-part: first check that the server's user may write to this directory (a read-only directory gives this reply); if it may, the server forbids names that start with a dot: set upload.temp_name: false"
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u32, text: &str) -> FtpsError {
        FtpsError::Reply {
            server: "u@h:21".into(),
            command: "STOR",
            path: "/in/.a.ferrysync-part".into(),
            code,
            reply: text.into(),
        }
    }

    #[test]
    fn a_refused_temporary_name_names_permissions_first_unless_the_reply_says_dot_files() {
        // vsftpd, read-only directory and dot files alike.
        let e = reply(553, "553 Could not create file.");
        assert!(refuses_creation(&e));
        let hint = temp_name_refused_hint(&e);
        let (perm, dot) = (
            hint.find("may write").unwrap(),
            hint.find("temp_name").unwrap(),
        );
        assert!(perm < dot, "{hint}");
        // ProFTPD, read-only directory: permissions only.
        let e = reply(550, "550 .a.ferrysync-part: Permission denied");
        assert!(refuses_creation(&e));
        assert!(!temp_name_refused_hint(&e).contains("temp_name"));
        // Pure-FTPd's ProhibitDotFilesWrite.
        let e = reply(553, "553 Prohibited file name: .a.ferrysync-part");
        assert!(temp_name_refused_hint(&e).contains("set upload.temp_name: false"));
        // A missing directory is not about the name.
        assert!(!refuses_creation(&reply(
            550,
            "550 No such file or directory"
        )));
    }
}
