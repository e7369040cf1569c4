//! `ferrysync schema`: print the JSON Schema of job files, for editors (see the README's "Job
//! files": yaml-language-server reads it from a `# yaml-language-server: $schema=...` comment).

use super::{CmdResult, Failure};

/// Print the JSON Schema of job files (for editors; see the README).
#[derive(Debug, clap::Args)]
pub struct SchemaCmd {}

impl SchemaCmd {
    pub fn execute(self) -> CmdResult {
        let text = serde_json::to_string_pretty(&ferrysync::config::job_schema())
            .map_err(|e| Failure::run(format!("cannot print the schema: {e}")))?;
        super::completions::write_stdout(format!("{text}\n").as_bytes())
    }
}
