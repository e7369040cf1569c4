//! `ferrysync check`: validate every job file, exit 2 on the first bad one.

use super::{CmdResult, JobsArg, SECRETS};

/// Validate the job files in --jobs.
#[derive(Debug, clap::Args)]
pub struct CheckCmd {
    #[command(flatten)]
    jobs: JobsArg,
}

impl CheckCmd {
    pub fn execute(self) -> CmdResult {
        let jobs = ferrysync::config::load_jobs(&self.jobs.dir)?;
        jobs.iter().for_each(|j| SECRETS.add_job(j));
        if jobs.is_empty() {
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
        Ok(())
    }
}
