//! `ferrysync check`: validate every job file; each bad one is reported (`file:line:col:
//! reason` on stderr), and any bad one makes the exit status 2.

use super::{shown, CmdResult, Failure, JobsArg, SECRETS};

/// Validate the job files in --jobs.
#[derive(Debug, clap::Args)]
pub struct CheckCmd {
    #[command(flatten)]
    jobs: JobsArg,
}

impl CheckCmd {
    pub fn execute(self) -> CmdResult {
        let files = ferrysync::config::load_job_dir(&self.jobs.dir)?;
        let total = files.len();
        let mut jobs = Vec::new();
        let mut bad = 0;
        for f in files {
            match f.job {
                Ok(job) => {
                    SECRETS.add_job(&job);
                    jobs.push(job);
                }
                Err(e) => {
                    bad += 1;
                    eprintln!("{}", shown(SECRETS.redact(&e.to_string())));
                }
            }
        }
        if total == 0 {
            println!("{}: no job files (*.yaml)", self.jobs.dir.display());
        }
        for job in &jobs {
            let trigger = match (&job.schedule, job.watch, job.poll) {
                (None, false, None) => "manual only".to_string(),
                (s, w, p) => {
                    let mut parts = Vec::new();
                    if let Some(s) = s {
                        parts.push(format!("schedule {}", s.expr));
                    }
                    if w {
                        parts.push("watch".to_string());
                    }
                    if let Some(p) = p {
                        parts.push(format!("poll {}", humantime::format_duration(p)));
                    }
                    parts.join(", ")
                }
            };
            println!(
                "ok   {} ({} {} {}:{}{}, {trigger})",
                job.name,
                job.direction,
                job.local.display(),
                job.remote.host,
                job.remote.port,
                job.remote.path
            );
            for w in &job.warnings {
                println!("     warning: {w}");
            }
        }
        if bad > 0 {
            return Err(Failure::config(format!(
                "{bad} of {total} job files in {} are invalid",
                self.jobs.dir.display()
            )));
        }
        Ok(())
    }
}
