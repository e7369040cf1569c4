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
        // A bad `_defaults.yaml` is every job's error: said once.
        let mut said = std::collections::HashSet::new();
        for f in files {
            match f.job {
                Ok(job) => {
                    SECRETS.add_job(&job);
                    jobs.push(job);
                }
                Err(e) => {
                    bad += 1;
                    let text = shown(SECRETS.redact(&e.to_string()));
                    if said.insert(text.clone()) {
                        eprintln!("{text}");
                    }
                }
            }
        }
        if let Ok(defaults) = ferrysync::config::load_defaults(&self.jobs.dir) {
            if let (Some(file), Some(n)) = (&defaults.file, &defaults.notify) {
                println!(
                    "ok   {} (defaults: notify {})",
                    file.display(),
                    notify_targets(n)
                );
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
            if let Some(n) = &job.notify {
                println!("     notify {}", notify_targets(n));
            }
            if let Some(e) = &job.expect {
                println!("     expect {} new files by `{}`", e.new_files, e.by.expr);
            }
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

/// Where a job's alerts go and which events they carry, for `check`: the webhook by its origin
/// only (a URL's path is often a token), the command by its program.
fn notify_targets(n: &ferrysync::config::Notify) -> String {
    let mut parts = Vec::new();
    if let Some(e) = &n.exec {
        parts.push(format!(
            "exec {}",
            e.argv.first().map(String::as_str).unwrap_or("")
        ));
    }
    if let Some(w) = &n.webhook {
        let origin = w.url.split('/').take(3).collect::<Vec<_>>().join("/");
        parts.push(format!("webhook {origin}"));
    }
    let events: Vec<&str> = n.events.iter().map(|e| e.as_str()).collect();
    format!("{} on {}", parts.join(" and "), events.join(", "))
}
