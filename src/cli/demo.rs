//! `ferrysync demo`: a real end-to-end sync on 127.0.0.1 with no set-up, from any directory. In
//! one folder of its own (`--dir`, by default `$XDG_STATE_HOME/ferrysync/demo`, that is
//! `~/.local/state/ferrysync/demo`) it writes the example job (`jobs/example.yaml`, built into
//! the binary), sample files, a throw-away password and certificate, starts the embedded FTPS
//! server on 127.0.0.1:2121, runs the job against it, and prints the result and `status`. It
//! reads nothing from the current directory and writes nowhere else, so a second run (which
//! transfers nothing) finds the first one's ledger.

use std::path::{Path, PathBuf};

use super::{runtime, shown, CmdResult, Failure, StateArg, SECRETS};
use ferrysync::loopback::{self, LoopbackOptions};
use ferrysync::state::{Ledger, Outcome, SharedLedger};
use ferrysync::sync::{run_job, RunOptions};

/// The demo job, as shipped in jobs/example.yaml: its relative paths (`../demo/...`) hold in the
/// demo folder, whose `jobs/` it is written to.
const EXAMPLE_JOB: &str = include_str!("../../jobs/example.yaml");

/// Run the example job against an embedded loopback FTPS server, in a folder of its own.
#[derive(Debug, clap::Args)]
pub struct DemoCmd {
    /// The folder the demo writes to (its job, sample files, server files and ledger);
    /// default: $XDG_STATE_HOME/ferrysync/demo, or ~/.local/state/ferrysync/demo.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Port of the embedded server on 127.0.0.1.
    #[arg(long, default_value_t = 2121)]
    port: u16,
}

/// The demo's folder when `--dir` is not given: the XDG state directory (an absolute
/// `$XDG_STATE_HOME`, else `$HOME/.local/state`), so it never depends on the current directory.
fn default_dir(xdg_state_home: Option<PathBuf>, home: Option<PathBuf>) -> Option<PathBuf> {
    let state = xdg_state_home.filter(|p| p.is_absolute()).or_else(|| {
        home.filter(|p| p.is_absolute())
            .map(|h| h.join(".local/state"))
    })?;
    Some(state.join("ferrysync/demo"))
}

fn sample_tree(root: &Path) -> std::io::Result<()> {
    let files: [(&str, &[u8]); 5] = [
        (
            "invoices/2026-11/invoice 0001.csv",
            b"id;amount\n1;100.00\n",
        ),
        (
            "invoices/2026-11/invoice 0002.csv",
            b"id;amount\n2;250.50\n",
        ),
        (
            "reports/überblick.txt",
            "Übersicht für November\n".as_bytes(),
        ),
        ("reports/empty.txt", b""),
        (
            "README.txt",
            b"Files placed here are mirrored to the demo server.\n",
        ),
    ];
    for (rel, content) in files {
        let p = root.join(rel);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if !p.exists() {
            std::fs::write(&p, content)?;
        }
    }
    std::fs::create_dir_all(root.join("archive/empty folder"))?;
    let big = root.join("data/blob.bin");
    if !big.exists() {
        std::fs::create_dir_all(root.join("data"))?;
        // 4 MiB of bytes that a text-mode transfer would corrupt.
        let bytes: Vec<u8> = (0..4u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(&big, bytes)?;
    }
    Ok(())
}

fn list_tree(root: &Path, rel: &str, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(root.join(rel)) else {
        return;
    };
    let mut names: Vec<_> = rd.filter_map(Result::ok).collect();
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let name = e.file_name().to_string_lossy().to_string();
        let child = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        match e.metadata() {
            Ok(m) if m.is_dir() => {
                out.push(format!("  {}/", shown(&child)));
                list_tree(root, &child, out);
            }
            Ok(m) => out.push(format!("  {} ({} bytes)", shown(&child), m.len())),
            Err(_) => {}
        }
    }
}

impl DemoCmd {
    pub fn execute(self) -> CmdResult {
        let dir = match self.dir.clone().or_else(|| {
            default_dir(
                std::env::var_os("XDG_STATE_HOME").map(PathBuf::from),
                std::env::var_os("HOME").map(PathBuf::from),
            )
        }) {
            Some(dir) => dir,
            None => {
                return Err(Failure::config(
                    "demo: neither $XDG_STATE_HOME nor $HOME names a folder to write to; pass --dir DIR",
                ))
            }
        };
        // Absolute, so that what it prints holds from any directory.
        let dir = if dir.is_absolute() {
            dir
        } else {
            std::env::current_dir()
                .map_err(|e| Failure::run(format!("demo: cannot read the current directory: {e}")))?
                .join(dir)
        };
        let jobs_dir = dir.join("jobs");
        let demo = dir.join("demo");
        let state = StateArg {
            path: dir.join("state/ferrysync.db"),
        };
        println!(
            "demo: writing to {} (the job in jobs/, sample files in demo/outbound, the server's files in demo/server-root, the ledger in state/)",
            dir.display()
        );
        let job_file = jobs_dir.join("example.yaml");
        std::fs::create_dir_all(&jobs_dir)
            .and_then(|()| std::fs::write(&job_file, EXAMPLE_JOB))
            .map_err(|e| Failure::run(format!("cannot write {}: {e}", job_file.display())))?;
        let outbound = demo.join("outbound");
        let server_root = demo.join("server-root");
        sample_tree(&outbound).map_err(|e| {
            Failure::run(format!(
                "cannot write sample files in {}: {e}",
                outbound.display()
            ))
        })?;
        let password_file = demo.join("password");
        if !password_file.exists() {
            let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
            let password = blake3::hash(seed.as_bytes()).to_hex()[..24].to_string();
            loopback::write_private(&password_file, &password)
                .map_err(|e| Failure::run(format!("{}: {e}", password_file.display())))?;
        }
        let password = std::fs::read_to_string(&password_file)
            .map_err(|e| Failure::run(format!("{}: {e}", password_file.display())))?;
        SECRETS.add(password.trim());

        let rt = runtime()?;
        rt.block_on(async {
            let server = loopback::start(LoopbackOptions {
                root: server_root.clone(),
                cert_dir: demo.join("server-tls"),
                user: "demo".into(),
                password: password.trim().to_string(),
                port: Some(self.port),
                tls: true,
            })
            .await
            .map_err(|e| Failure::run(format!("cannot start the demo server on 127.0.0.1:{} (--port picks another): {e}", self.port)))?;
            // The job trusts exactly this server's throw-away certificate.
            std::fs::write(demo.join("ca.pem"), &server.cert.cert_pem)
                .map_err(|e| Failure::run(format!("cannot write {}: {e}", demo.join("ca.pem").display())))?;
            println!("demo: FTPS server on 127.0.0.1:{} serving {}", server.port, server_root.display());

            // The job file names port 2121; another --port is the one change made to it.
            let mut job = ferrysync::config::load_job(&job_file)?;
            job.remote.port = server.port;
            SECRETS.add_job(&job);
            let ledger = SharedLedger::new(Ledger::open(&state.path)?);
            let opts = RunOptions {
                trigger: "demo".into(),
                dry_run: false,
                progress: super::progress::on_terminal(),
                stop: None,
                scope: None,
            };
            let report = run_job(&job, &ledger, &opts).await;
            println!("{}", SECRETS.redact(&report.summary()));
            let mut tree = Vec::new();
            list_tree(&server_root, "", &mut tree);
            println!("demo: the server now holds:\n{}", tree.join("\n"));
            println!("demo: run it again to see nothing transferred; `ferrysync status --state {}` shows the ledger", state.path.display());
            match report.outcome {
                Outcome::Ok => Ok(()),
                _ => Err(Failure::run("the demo sync did not complete")),
            }
        })?;
        drop(rt);
        super::status::StatusCmd::for_demo(state).execute()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_folder_is_the_xdg_state_directory() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(
            default_dir(p("/x/state"), p("/home/u")),
            p("/x/state/ferrysync/demo")
        );
        assert_eq!(
            default_dir(None, p("/home/u")),
            p("/home/u/.local/state/ferrysync/demo")
        );
        // A relative XDG_STATE_HOME is invalid (XDG Base Directory spec): ignored.
        assert_eq!(
            default_dir(p("rel"), p("/home/u")),
            p("/home/u/.local/state/ferrysync/demo")
        );
        assert_eq!(default_dir(None, p("")), None);
        assert_eq!(default_dir(None, None), None);
    }
}
