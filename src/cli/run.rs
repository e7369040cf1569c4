//! `ferrysync run`: the agent, until SIGTERM or SIGINT; SIGHUP re-reads the job files.

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use super::sync::StopSignals;
use super::{runtime, CmdResult, Failure, JobsArg, StateArg, SECRETS};
use ferrysync::agent::{
    spawn_listener, Agent, AgentOptions, BearerToken, ListenOptions, DEFAULT_MAX_RUNS,
};
use ferrysync::state::{Ledger, SharedLedger};

/// Run the agent: schedules, watches and polls until SIGTERM (SIGHUP reloads the job files).
///
/// SIGTERM or SIGINT: no new run starts, and runs in progress stop within about 2 s
/// (connecting, listing and retries at once; files in flight at their next checkpoint), each
/// recorded `interrupted` and resumed by the next run; then the agent exits 0. A run that has
/// not stopped after --stop-timeout is cut off and recorded `interrupted` too. A second
/// SIGTERM or SIGINT exits at once, with 143 (SIGTERM) or 130 (SIGINT).
#[derive(Debug, clap::Args)]
pub struct RunCmd {
    #[command(flatten)]
    jobs: JobsArg,
    #[command(flatten)]
    state: StateArg,
    /// Jobs that may run at the same time (one run per job at a time in any case).
    #[arg(long, env = "FERRYSYNC_MAX_RUNS", default_value_t = DEFAULT_MAX_RUNS as u16,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    max_runs: u16,
    /// On SIGTERM, how long runs in progress may take to stop before they are cut off (recorded
    /// `interrupted`) and the agent exits.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    stop_timeout: Duration,
    /// Serve the read-only status page, /api/status (the `status --json` document) and
    /// /metrics over HTTP on this IP:PORT, e.g. 127.0.0.1:9464. Off by default. An address
    /// other than loopback needs --listen-token-file.
    #[arg(long, value_name = "IP:PORT")]
    listen: Option<std::net::SocketAddr>,
    /// A file holding the bearer token every request to --listen must then carry
    /// (`Authorization: Bearer TOKEN`); required to listen on an address other than loopback.
    #[arg(long, value_name = "FILE", requires = "listen")]
    listen_token_file: Option<std::path::PathBuf>,
}

impl RunCmd {
    pub fn execute(self) -> CmdResult {
        // Only an unreadable jobs directory stops the agent here; each invalid file is
        // reported by the agent, which starts every valid job.
        std::fs::read_dir(&self.jobs.dir).map_err(|e| {
            Failure::config(format!(
                "{}:1:1: cannot read the jobs directory: {e}",
                self.jobs.dir.display()
            ))
        })?;
        register_secrets(&self.jobs.dir);
        let listen_opts = self.listen_options()?;
        let ledger = SharedLedger::new(Ledger::open(&self.state.path)?);
        let rt = runtime()?;
        let result = rt.block_on(async move {
            let listen = |kind: SignalKind, name: &str| {
                signal(kind).map_err(|e| Failure::run(format!("cannot watch {name}: {e}")))
            };
            let mut stops = StopSignals::listen()?;
            let mut hup = listen(SignalKind::hangup(), "SIGHUP")?;
            tracing::info!(jobs = %self.jobs.dir.display(), state = %self.state.path.display(), "ferrysync agent starting");
            let mut agent = Agent::start_dir(
                ledger,
                AgentOptions {
                    jobs_dir: self.jobs.dir.clone(),
                    max_runs: usize::from(self.max_runs),
                },
            )?;
            tracing::info!(jobs = %agent.job_names().join(" "), "agent ready");
            let (stop_listener, listener_stop) = tokio::sync::watch::channel(false);
            let listener = listen_opts.map(|opts| spawn_listener(opts, listener_stop));
            let signal = loop {
                tokio::select! {
                    (name, _) = stops.next() => break name,
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP: reloading job files from {}", self.jobs.dir.display());
                        register_secrets(&self.jobs.dir);
                        agent.reload();
                    }
                }
            };
            tracing::info!(
                "{signal}: stopping; runs in progress stop at their next wait or checkpoint (cut off after {}); a second SIGTERM or SIGINT exits at once",
                humantime::format_duration(self.stop_timeout)
            );
            tokio::select! {
                clean = agent.shutdown(self.stop_timeout) => tracing::info!(clean, "stopped"),
                _ = stops.exit_on_next() => {}
            }
            if let Some(listener) = listener {
                let _ = stop_listener.send(true);
                let _ = tokio::time::timeout(Duration::from_secs(1), listener).await;
            }
            Ok(())
        });
        // Blocking work still going (a scan of a huge tree) must not hold the exit.
        rt.shutdown_timeout(Duration::from_secs(2));
        result
    }
}

impl RunCmd {
    /// The listener's settings, checked before anything starts: an address other than
    /// loopback without a token, or an unreadable token file, is bad usage (exit 2).
    fn listen_options(&self) -> Result<Option<ListenOptions>, Failure> {
        let Some(addr) = self.listen else {
            return Ok(None);
        };
        let token = match &self.listen_token_file {
            Some(file) => {
                let token = BearerToken::read(file).map_err(Failure::config)?;
                SECRETS.add(token.secret());
                Some(token)
            }
            None => None,
        };
        ListenOptions::new(addr, token, self.state.path.clone())
            .map(Some)
            .map_err(Failure::config)
    }
}

/// Before the agent re-reads the job files (SIGHUP), the passwords they now hold join the
/// redaction registry, so that no run of a reloaded job connects before its password is known
/// to the log writer. A file that does not load is skipped here: the agent reports it.
fn register_secrets(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for p in entries.filter_map(Result::ok).map(|e| e.path()) {
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext == "yaml" || ext == "yml" {
            if let Ok(job) = ferrysync::config::load_job(&p) {
                SECRETS.add_job(&job);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sighup_registers_the_passwords_of_the_job_files_as_they_now_are() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "reloaded-9f3e-secret\n").unwrap();
        std::fs::write(
            dir.path().join("new.yaml"),
            format!(
                "local: /srv/out\nremote:\n  host: ftp.example\n  user: u\n  password_file: {}\n",
                pw.display()
            ),
        )
        .unwrap();
        std::fs::write(dir.path().join("broken.yaml"), "local: [\n").unwrap();
        assert!(SECRETS
            .redact("x reloaded-9f3e-secret")
            .contains("reloaded-9f3e"));
        register_secrets(dir.path());
        assert_eq!(SECRETS.redact("x reloaded-9f3e-secret y"), "x *** y");
    }
}
