//! `ferrysync demo`: a real end-to-end sync on 127.0.0.1 with no set-up. It writes sample files,
//! starts the embedded FTPS server with a throw-away certificate on 127.0.0.1:2121, runs
//! `jobs/example.yaml` against it, and prints the result and `status`.

use std::path::{Path, PathBuf};

use super::{runtime, shown, CmdResult, Failure, JobsArg, StateArg, SECRETS};
use ferrysync::loopback::{self, LoopbackOptions};
use ferrysync::state::{Ledger, Outcome, SharedLedger};
use ferrysync::sync::{run_job, RunOptions};

/// Run jobs/example.yaml against an embedded loopback FTPS server.
#[derive(Debug, clap::Args)]
pub struct DemoCmd {
    #[command(flatten)]
    jobs: JobsArg,
    #[command(flatten)]
    state: StateArg,
    /// The job to run.
    #[arg(long, default_value = "example")]
    job: String,
    /// Port of the embedded server (the example job uses 2121).
    #[arg(long, default_value_t = 2121)]
    port: u16,
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
        let jobs_dir = self.jobs.dir.clone();
        let base: PathBuf = jobs_dir
            .canonicalize()
            .map_err(|e| Failure::config(format!("--jobs {}: {e}", jobs_dir.display())))?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let demo = base.join("demo");
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
            SECRETS.add(password.trim());
        }
        let password = std::fs::read_to_string(&password_file)
            .map_err(|e| Failure::run(format!("{}: {e}", password_file.display())))?;

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
            .map_err(|e| Failure::run(format!("cannot start the demo server on 127.0.0.1:{}: {e}", self.port)))?;
            // The job trusts exactly this server's throw-away certificate.
            std::fs::write(demo.join("ca.pem"), &server.cert.cert_pem)
                .map_err(|e| Failure::run(format!("cannot write demo/ca.pem: {e}")))?;
            println!("demo: FTPS server on 127.0.0.1:{} serving {}", server.port, server_root.display());

            let job = ferrysync::config::find_job(&jobs_dir, &self.job)?;
            SECRETS.add_job(&job);
            let ledger = SharedLedger::new(Ledger::open(&self.state.path)?);
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
            println!("demo: run it again to see nothing transferred; `ferrysync status --state {}` shows the ledger", self.state.path.display());
            match report.outcome {
                Outcome::Ok => Ok(()),
                _ => Err(Failure::run("the demo sync did not complete")),
            }
        })?;
        drop(rt);
        super::status::StatusCmd::for_demo(self.state.clone()).execute()?;
        Ok(())
    }
}
