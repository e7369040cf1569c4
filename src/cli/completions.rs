//! `ferrysync completions SHELL` and `ferrysync manpage`: shell completions and the man page,
//! generated from the clap definitions of this binary, so that they always describe the commands
//! and flags it has. The Debian package ships their output (packaging/build-deb.sh generates
//! them from the release binary); both commands are hidden from `--help`.

use std::io::Write;

use clap::CommandFactory;
use clap_mangen::roff::{roman, Roff};

use super::{Cli, CmdResult, Failure};

/// Print the completion script of a shell.
#[derive(Debug, clap::Args)]
pub struct CompletionsCmd {
    /// The shell: bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
}

impl CompletionsCmd {
    pub fn execute(self) -> CmdResult {
        let mut script = Vec::new();
        clap_complete::generate(self.shell, &mut Cli::command(), "ferrysync", &mut script);
        write_stdout(&script)
    }
}

/// Print the man page (roff; `man -l -` reads it).
#[derive(Debug, clap::Args)]
pub struct ManpageCmd {}

impl ManpageCmd {
    pub fn execute(self) -> CmdResult {
        write_stdout(&man_page()?)
    }
}

/// stdout, where a reader that went away (`| head`) is not an error.
pub fn write_stdout(bytes: &[u8]) -> CmdResult {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure::run(format!("cannot write to stdout: {e}")))
        }
        _ => Ok(()),
    }
}

/// ferrysync(1): the top-level synopsis and options, then one subsection per command with its
/// synopsis and options (one page, rather than a page per command), then exit status,
/// environment and files.
pub fn man_page() -> Result<Vec<u8>, Failure> {
    let fail = |e: std::io::Error| Failure::run(format!("cannot render the man page: {e}"));
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out).map_err(fail)?;
    man.render_name_section(&mut out).map_err(fail)?;
    man.render_synopsis_section(&mut out).map_err(fail)?;
    man.render_description_section(&mut out).map_err(fail)?;
    man.render_options_section(&mut out).map_err(fail)?;

    let mut commands = Roff::default();
    commands.control("SH", ["COMMANDS"]);
    out.extend(commands.render().into_bytes());
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("ferrysync {}", sub.get_name());
        // The global options (--log-format, -v) and --help are in OPTIONS above: once is enough.
        let mut sub = sub.clone().bin_name(&name).mut_args(|a| {
            if a.is_global_set() || a.get_id() == "help" {
                a.hide(true)
            } else {
                a
            }
        });
        let usage = sub.render_usage().to_string();
        let mut section = Roff::default();
        section.control("SS", [name.as_str()]);
        section.text([roman(usage.trim_start_matches("Usage: "))]);
        if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
            section.control("PP", []);
            section.text([roman(about.to_string())]);
        }
        out.extend(section.render().into_bytes());
        // The command's options, under its subsection rather than a section of their own.
        if sub.get_arguments().any(|a| !a.is_hide_set()) {
            let mut options = Vec::new();
            clap_mangen::Man::new(sub)
                .render_options_section(&mut options)
                .map_err(fail)?;
            let options = String::from_utf8_lossy(&options).replacen(".SH OPTIONS\n", "", 1);
            out.extend(options.into_bytes());
        }
    }

    let mut tail = Roff::default();
    tail.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in [
        ("0", "Success."),
        (
            "1",
            "The sync ran and something failed (a path, the connection, the login, the certificate, deletes refused by max_delete).",
        ),
        (
            "2",
            "Bad usage or bad configuration, reported as file:line:col: reason.",
        ),
    ] {
        tail.control("TP", []).text([roman(code)]).text([roman(meaning)]);
    }
    tail.control("SH", ["ENVIRONMENT"]);
    for (name, meaning) in [
        (
            "FERRYSYNC_JOBS",
            "The jobs directory when --jobs is not given (default ./jobs).",
        ),
        (
            "FERRYSYNC_STATE",
            "The ledger when --state is not given (default ./state/ferrysync.db).",
        ),
        (
            "FERRYSYNC_LOG",
            "A full tracing filter for the log on stderr, such as debug.",
        ),
        (
            "NO_COLOR",
            "Set to anything but the empty string: no colours in the log, even on a terminal.",
        ),
    ] {
        tail.control("TP", [])
            .text([roman(name)])
            .text([roman(meaning)]);
    }
    tail.control("SH", ["FILES"]);
    for (file, meaning) in [
        (
            "/etc/ferrysync/jobs/*.yaml",
            "Job files of the packaged service, one job per file.",
        ),
        (
            "/var/lib/ferrysync/ferrysync.db",
            "The packaged service's ledger.",
        ),
        (
            "/usr/share/ferrysync/job.schema.json",
            "The JSON Schema of job files (ferrysync schema prints it).",
        ),
    ] {
        tail.control("TP", [])
            .text([roman(file)])
            .text([roman(meaning)]);
    }
    tail.control("SH", ["SEE ALSO"]);
    tail.text([roman(
        "/usr/share/doc/ferrysync/README.md: commands, every job-file key, and how the agent behaves.",
    )]);
    out.extend(tail.render().into_bytes());
    man.render_version_section(&mut out).map_err(fail)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_man_page_covers_every_visible_command_and_its_options() {
        let page = String::from_utf8(man_page().unwrap()).unwrap();
        assert!(page.contains("\n.TH ferrysync 1 "), "{page}");
        for section in ["NAME", "SYNOPSIS", "COMMANDS", "EXIT STATUS", "ENVIRONMENT"] {
            assert!(
                page.contains(&format!(".SH \"{section}\""))
                    || page.contains(&format!(".SH {section}\n")),
                "{section}:\n{page}"
            );
        }
        let cmd = Cli::command();
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            assert!(
                page.contains(&format!(".SS \"ferrysync {}\"", sub.get_name())),
                "{}:\n{page}",
                sub.get_name()
            );
        }
        for flag in [
            "dry\\-run",
            "\\-\\-jobs",
            "\\-\\-state",
            "\\-\\-json",
            "\\-\\-log\\-format",
        ] {
            assert!(page.contains(flag), "{flag}:\n{page}");
        }
        assert!(
            !page.contains("completions") && !page.contains("manpage"),
            "hidden commands shown"
        );
    }

    #[test]
    fn completions_name_the_commands_and_their_flags() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "ferrysync", &mut script);
            let script = String::from_utf8(script).unwrap();
            for word in [
                "sync",
                "status",
                "history",
                "check",
                "demo",
                "dry-run",
                "log-format",
            ] {
                assert!(script.contains(word), "{shell}: {word}");
            }
        }
    }
}
