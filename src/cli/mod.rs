//! The command line: one clap subcommand per module, parsed once, each returning an exit code.
//! Exit codes: 0 success, 1 the sync ran and something failed, 2 bad usage or configuration.

mod audit;
mod check;
mod completions;
mod demo;
mod history;
mod logging;
mod ls;
mod progress;
mod run;
mod schema;
mod status;
mod sync;
mod test;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use logging::LogFormat;
pub use logging::SECRETS;

/// The exit statuses of the contract (README, "Commands"), numbered here and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: the command did what it was asked.
    Success,
    /// 1: the sync (or other work) ran and something failed.
    RunFailed,
    /// 2: bad usage or configuration; nothing ran.
    BadUsage,
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> ExitCode {
        ExitCode::from(match status {
            ExitStatus::Success => 0,
            ExitStatus::RunFailed => 1,
            ExitStatus::BadUsage => 2,
        })
    }
}

/// A command that did not succeed: what to print, and the exit status.
#[derive(Debug)]
pub struct Failure {
    pub status: ExitStatus,
    pub message: String,
}

impl Failure {
    /// Bad usage or configuration.
    pub fn config(message: impl std::fmt::Display) -> Failure {
        Failure {
            status: ExitStatus::BadUsage,
            message: message.to_string(),
        }
    }
    /// The work ran and failed, and the command has already printed why (the summary of a
    /// sync): exit 1 without a second copy of the error.
    pub fn run_already_shown() -> Failure {
        Failure {
            status: ExitStatus::RunFailed,
            message: String::new(),
        }
    }
    /// The work ran and failed.
    pub fn run(message: impl std::fmt::Display) -> Failure {
        Failure {
            status: ExitStatus::RunFailed,
            message: message.to_string(),
        }
    }
}

impl From<ferrysync::state::LedgerError> for Failure {
    fn from(e: ferrysync::state::LedgerError) -> Self {
        Failure::run(e)
    }
}

impl From<ferrysync::config::ConfigError> for Failure {
    fn from(e: ferrysync::config::ConfigError) -> Self {
        Failure::config(e)
    }
}

/// What every command returns; `Ok` exits 0.
pub type CmdResult = Result<(), Failure>;

#[derive(Debug, Parser)]
#[command(
    name = "ferrysync",
    version,
    about = "Unattended, scheduled directory sync over FTPS"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// More logging (-v: info, -vv: debug). FERRYSYNC_LOG takes a full filter.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// `--jobs DIR`
#[derive(Debug, Clone, clap::Args)]
pub struct JobsArg {
    /// Directory of job files.
    #[arg(long = "jobs", env = "FERRYSYNC_JOBS", default_value = "./jobs")]
    pub dir: PathBuf,
}

/// `--state PATH`
#[derive(Debug, Clone, clap::Args)]
pub struct StateArg {
    /// The ledger (SQLite) file.
    #[arg(
        long = "state",
        env = "FERRYSYNC_STATE",
        default_value = "./state/ferrysync.db"
    )]
    pub path: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    Run(run::RunCmd),
    Sync(sync::SyncCmd),
    Status(status::StatusCmd),
    History(history::HistoryCmd),
    Check(check::CheckCmd),
    Demo(demo::DemoCmd),
    Schema(schema::SchemaCmd),
    #[command(hide = true)]
    Completions(completions::CompletionsCmd),
    #[command(hide = true)]
    Manpage(completions::ManpageCmd),
    Audit(audit::AuditCmd),
    Test(test::TestCmd),
    Ls(ls::LsCmd),
}

fn init_logging(format: LogFormat, verbose: u8, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("FERRYSYNC_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| {
            let level = match verbose {
                0 => default,
                1 => "info",
                _ => "debug",
            };
            EnvFilter::new(format!(
                "ferrysync={level},libunftp=error,unftp_sbe_fs=error,warn"
            ))
        });
    // Under systemd the journal stamps every line itself (JOURNAL_STREAM is set for services
    // whose stderr goes to the journal): no second timestamp.
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    use std::io::IsTerminal;
    let ansi = logging::colours(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
        journal,
    );
    use tracing_subscriber::util::SubscriberInitExt;
    logging::subscriber(
        format,
        filter,
        journal,
        ansi,
        progress::ClearingStderr,
        &SECRETS,
    )
    .init();
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Run(_) | Command::Demo(_) => "info",
        _ => "warn",
    };
    init_logging(cli.log_format, cli.verbose, default_level);
    let result = match cli.command {
        Command::Run(c) => c.execute(),
        Command::Sync(c) => c.execute(),
        Command::Status(c) => c.execute(),
        Command::History(c) => c.execute(),
        Command::Check(c) => c.execute(),
        Command::Demo(c) => c.execute(),
        Command::Schema(c) => c.execute(),
        Command::Completions(c) => c.execute(),
        Command::Manpage(c) => c.execute(),
        Command::Audit(c) => c.execute(),
        Command::Test(c) => c.execute(),
        Command::Ls(c) => c.execute(),
    };
    match result {
        Ok(()) => ExitStatus::Success.into(),
        Err(f) => {
            // An empty message: the command has already shown the error (once is enough).
            if !f.message.is_empty() {
                eprintln!("ferrysync: {}", shown(SECRETS.redact(&f.message)));
            }
            f.status.into()
        }
    }
}

/// `x` as human output shows it: control characters escaped ([`escape_controls`]), since
/// paths, errors and server replies come from untrusted sides. JSON output does not use this.
pub fn shown(x: impl std::fmt::Display) -> String {
    escape_controls(&x.to_string()).into_owned()
}

/// A tokio runtime for one command.
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::run(format!("cannot start the async runtime: {e}")))
}

pub use ferrysync::state::iso_time;
use ferrysync::sync::escape_controls;
