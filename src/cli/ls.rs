//! `ferrysync ls JOB [PATH]`: list a folder of a job's remote side (names, sizes, times), over
//! a connection made as a run makes it. PATH is relative to the job's remote folder and may not
//! leave it.

use super::{runtime, shown, CmdResult, Failure, JobsArg, SECRETS};
use ferrysync::remote::RemoteEntry;

/// List a folder on a job's server (PATH relative to the job's remote folder).
#[derive(Debug, clap::Args)]
pub struct LsCmd {
    /// The job's name (its file name without .yaml).
    job: String,
    /// A folder below the job's remote folder (default: the job's remote folder itself).
    path: Option<String>,
    #[command(flatten)]
    jobs: JobsArg,
}

impl LsCmd {
    pub fn execute(self) -> CmdResult {
        let job = ferrysync::config::find_job(&self.jobs.dir, &self.job)?;
        SECRETS.add_job(&job);
        let path =
            ferrysync::remote::path_within(&job.remote.path, self.path.as_deref().unwrap_or(""))
                .map_err(Failure::config)?;
        let listing = runtime()?
            .block_on(ferrysync::remote::list_folder(&job.remote, &path))
            .map_err(|e| Failure::run(format!("job {}: {e}", job.name)))?;
        println!(
            "{} ({}, {} entries)",
            shown(&listing.path),
            listing.command,
            listing.total
        );
        for line in entry_lines(&listing.entries) {
            println!("{}", SECRETS.redact(&line));
        }
        Ok(())
    }
}

/// One line per entry: kind, size, time as listed, name; the columns fit their values.
pub fn entry_lines(entries: &[RemoteEntry]) -> Vec<String> {
    let sizes: Vec<String> = entries
        .iter()
        .map(|e| match e.kind {
            "dir" => "-".to_string(),
            _ => e.size.to_string(),
        })
        .collect();
    let size_width = sizes.iter().map(String::len).max().unwrap_or(0);
    let time_width = entries.iter().map(|e| e.modified.len()).max().unwrap_or(0);
    entries
        .iter()
        .zip(&sizes)
        .map(|(e, size)| {
            format!(
                "  {:<4} {size:>size_width$}  {:<time_width$}  {}{}",
                e.kind,
                e.modified,
                shown(&e.name),
                if e.kind == "dir" { "/" } else { "" }
            )
        })
        .collect()
}
