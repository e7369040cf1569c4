//! Adoption (issue 13, item 4): a job whose state file was lost, or whose destination already
//! holds a copy made by another tool (lftp), records the files that are the same on both sides
//! as synced without sending them again, and reports, without overwriting, those that differ
//! or that no evidence shows to be the same. Against the in-process server (times and the
//! remote bytes as evidence) and the real servers (ProFTPD's HASH, vsftpd's MDTM and RETR).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::harness::{populate, write_patterned_file, Node, Sandbox, Server};

against_servers!(
    only [loopback vsftpd proftpd pureftpd]
    adopt_a_push_after_the_state_file_is_lost,
    adopt_a_pull_after_the_state_file_is_lost,
    adopt_never_overwrites_a_file_that_differs,
);

/// The files of a tree (no directories).
fn files(tree: &BTreeMap<String, Node>) -> u64 {
    tree.values()
        .filter(|n| matches!(n, Node::File(..)))
        .count() as u64
}

/// Each file's inode and mtime under `root`: a file sent again gets another (a new temporary
/// file renamed over it).
fn stamps(root: &Path) -> BTreeMap<String, (u64, i64, i64)> {
    fn walk(root: &Path, rel: &str, out: &mut BTreeMap<String, (u64, i64, i64)>) {
        let Ok(rd) = std::fs::read_dir(root.join(rel)) else {
            return;
        };
        for e in rd {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().to_string();
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                walk(root, &child, out);
            } else {
                out.insert(child, (meta.ino(), meta.mtime(), meta.mtime_nsec()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

/// The tree of the lftp tests: 120 small files and three of 32 MiB, 96.2 MiB in all.
fn populate_for_lftp(root: &Path) {
    populate(root, 120);
    for k in 0..3 {
        write_patterned_file(&root.join(format!("large/big-{k}.bin")), 32 << 20);
    }
}

/// The bytes of the files of a tree.
fn bytes(tree: &BTreeMap<String, Node>) -> u64 {
    tree.values()
        .map(|n| match n {
            Node::File(_, len) => *len,
            Node::Dir => 0,
        })
        .sum()
}

/// Loses the sandbox's state: the ledger, its WAL and the lock files, as a disk swap or a
/// moved state directory would.
fn lose_state(s: &Sandbox) {
    let dir = s.state.parent().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

fn last_run(s: &Sandbox, job: &str) -> Value {
    s.last_run(job)
}

fn synced_files(s: &Sandbox, job: &str) -> u64 {
    let run = s.ferrysync(&["status", job, "--json"]);
    run.expect_code(0);
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    v["jobs"][0]["synced_files"].as_u64().unwrap()
}

/// Asserts that the latest run of `job` sent nothing and adopted `n` files, that the summary
/// line says so, and that the ledger holds `n` files.
#[track_caller]
fn assert_adopted(s: &Sandbox, job: &str, run: &crate::harness::Run, n: u64) {
    println!("{}", run.stdout);
    run.expect_code(0).expect_output(&format!(
        "(0 uploaded, 0 B; 0 downloaded, 0 B; 0 deleted; 0 failed; {n} adopted)"
    ));
    assert_eq!(s.counts(job), (0, 0, 0, 0), "{}", s.text_of_last_run(job));
    assert_eq!(last_run(s, job)["files_adopted"].as_u64(), Some(n));
    assert_eq!(synced_files(s, job), n);
}

pub fn adopt_a_push_after_the_state_file_is_lost(server: &Server) {
    let s = Sandbox::new(server, "adopt-push");
    populate(&s.local, 60);
    s.job("push", "direction: push\nmode: mirror\n");
    s.sync("push").expect_code(0);
    let n = files(&s.local_tree());
    assert_eq!(s.counts("push"), (n, 0, 0, 0));
    let before = stamps(&s.remote_root());

    lose_state(&s);
    let run = s.sync("push");
    assert_adopted(&s, "push", &run, n);
    assert_eq!(
        stamps(&s.remote_root()),
        before,
        "a remote file was written again"
    );
    assert_eq!(s.remote_tree(), s.local_tree());

    // The ledger is whole again: the next run has nothing to do, and changes are sent.
    let run = s.sync("push");
    run.expect_code(0)
        .expect_output("(0 uploaded, 0 B; 0 downloaded, 0 B; 0 deleted; 0 failed)");
    s.write_local("f1.dat", b"changed after adoption");
    s.sync("push").expect_code(0);
    assert_eq!(s.counts("push"), (1, 0, 0, 0));
    assert_eq!(s.remote_tree(), s.local_tree());
}

pub fn adopt_a_pull_after_the_state_file_is_lost(server: &Server) {
    let source = Sandbox::new(server, "adopt-pull-src");
    populate(&source.local, 60);
    source.job("push", "direction: push\n");
    source.sync("push").expect_code(0);

    let s = Sandbox::sharing_remote_of(&source, "adopt-pull");
    s.job("pull", "direction: pull\nmode: mirror\n");
    s.sync("pull").expect_code(0);
    let n = files(&s.local_tree());
    assert_eq!(s.counts("pull"), (0, n, 0, 0));
    let before = stamps(&s.local);

    lose_state(&s);
    let run = s.sync("pull");
    assert_adopted(&s, "pull", &run, n);
    assert_eq!(stamps(&s.local), before, "a local file was written again");
    assert_eq!(s.local_tree(), source.local_tree());
}

pub fn adopt_never_overwrites_a_file_that_differs(server: &Server) {
    let s = Sandbox::new(server, "adopt-differs");
    populate(&s.local, 30);
    s.job("push", "direction: push\nmode: mirror\n");
    s.sync("push").expect_code(0);
    let n = files(&s.local_tree());
    let remote_before = s.remote_tree();

    lose_state(&s);
    // The same size with other bytes (and a time an hour on, so that no time can match), and
    // another size.
    let same_size = s.local.join("f5.dat");
    let len = std::fs::metadata(&same_size).unwrap().len() as usize;
    std::fs::write(&same_size, vec![b'x'; len]).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&same_size)
        .unwrap()
        .set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(3600))
        .unwrap();
    s.write_local("f10.dat", b"another size altogether");

    let run = s.sync("push");
    println!("{}", run.stdout);
    run.expect_code(1)
        .expect_output("f5.dat: both sides hold this file and the ledger has no record of it")
        .expect_output("f10.dat: both sides hold this file and the ledger has no record of it: the local file has 23 bytes")
        .expect_output("the remote copy was not overwritten: remove it to have it sent again, or set `adopt: recopy`")
        .expect_output(&format!("; 2 failed; {} adopted)", n - 2));
    assert_eq!(
        s.remote_tree(),
        remote_before,
        "a differing file was overwritten"
    );
    assert_eq!(synced_files(&s, "push"), n - 2);

    // The operator's choice: `adopt: recopy` sends them.
    s.job("push", "direction: push\nmode: mirror\nadopt: recopy\n");
    s.sync("push").expect_code(0);
    assert_eq!(s.counts("push"), (2, 0, 0, 0));
    assert_eq!(s.remote_tree(), s.local_tree());
}

/// Runs `lftp` against `server` (explicit FTPS, verified against the suite's CA) with
/// `commands` after the login. TLS 1.2: lftp 4.9.2 (GnuTLS) closes TLS 1.3 data connections
/// in a way vsftpd's `strict_ssl_read_eof` takes for a cut upload now and then (426, then a
/// reconnect 15 s later: a 120-file mirror took minutes); at TLS 1.2 every upload passes.
fn lftp(server: &Server, commands: &str) {
    let script = format!(
        "set ssl:ca-file {ca}; set ftp:ssl-force true; set ftp:ssl-protect-data true; \
         set ssl:priority NORMAL:-VERS-TLS1.3; \
         set ssl:check-hostname yes; set cmd:fail-exit true; set net:max-retries 1; \
         set net:timeout 20; open --env-password -u {user} ftp://localhost:{port}; {commands}",
        ca = server.ca.display(),
        user = server.user,
        port = server.port,
    );
    let out = Command::new("lftp")
        .args(["-c", &script])
        .env("LFTP_PASSWORD", server.password())
        .output()
        .expect("lftp is installed by tests/run.sh");
    assert!(
        out.status.success(),
        "lftp {commands}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ferrysync sync JOB` with the debug log, which names each adopted file's evidence.
fn sync_logging_evidence(s: &Sandbox, job: &str) -> crate::harness::Run {
    s.ferrysync_with_env(&["sync", job], &[("FERRYSYNC_LOG", "ferrysync=debug")])
}

/// Every one of the `n` files was adopted on `evidence`.
#[track_caller]
fn assert_evidence(run: &crate::harness::Run, evidence: &str, n: u64) {
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .chain(run.stdout.lines())
        .filter(|l| l.contains("adoption"))
        .collect();
    let on_evidence = lines.iter().filter(|l| l.contains(evidence)).count() as u64;
    assert_eq!(on_evidence, n, "{evidence:?} in:\n{}", lines.join("\n"));
}

/// A server tree uploaded by `lftp mirror -R`, then a ferrysync push job with a fresh state
/// file: every file is adopted, none uploaded, none written again on the server.
/// `evidence`: how every file must have been known the same (the debug log's words).
fn push_adopts_a_tree_made_by_lftp(server: &Server, evidence: &str) {
    let s = Sandbox::new(server, "adopt-lftp-push");
    populate_for_lftp(&s.local);
    let n = files(&s.local_tree());
    println!("lftp made {n} files, {} bytes", bytes(&s.local_tree()));
    lftp(
        server,
        &format!("mirror -R {} {}", s.local.display(), s.remote_dir),
    );
    assert_eq!(s.remote_tree(), s.local_tree(), "lftp's copy");
    let before = stamps(&s.remote_root());

    s.job("push", "direction: push\nmode: mirror\n");
    let run = sync_logging_evidence(&s, "push");
    assert_adopted(&s, "push", &run, n);
    assert_evidence(&run, evidence, n);
    assert_eq!(stamps(&s.remote_root()), before, "ferrysync re-uploaded");
}

/// A local folder made by `lftp mirror` from the server, then a ferrysync pull job with a fresh
/// state file: every file is adopted, none downloaded, none written again locally.
fn pull_adopts_a_folder_made_by_lftp(server: &Server, evidence: &str) {
    let source = Sandbox::new(server, "adopt-lftp-src");
    populate_for_lftp(&source.local);
    source.job("push", "direction: push\n");
    source.sync("push").expect_code(0);

    let s = Sandbox::sharing_remote_of(&source, "adopt-lftp-pull");
    lftp(
        server,
        &format!("mirror {} {}", s.remote_dir, s.local.display()),
    );
    assert_eq!(s.local_tree(), source.local_tree(), "lftp's copy");
    let n = files(&s.local_tree());
    println!("lftp made {n} files, {} bytes", bytes(&s.local_tree()));
    let before = stamps(&s.local);

    s.job("pull", "direction: pull\nmode: mirror\n");
    let run = sync_logging_evidence(&s, "pull");
    assert_adopted(&s, "pull", &run, n);
    assert_evidence(&run, evidence, n);
    assert_eq!(stamps(&s.local), before, "ferrysync re-downloaded");
}

#[test]
fn adopt_lftp_push_on_vsftpd() {
    if let Some(s) = Server::vsftpd() {
        // No MFMT: lftp's copies carry the upload's time, so the bytes are read back.
        push_adopts_a_tree_made_by_lftp(&s, "the remote bytes, read and hashed, match");
    }
}

#[test]
fn adopt_lftp_push_on_proftpd_with_hash() {
    if let Some(s) = Server::proftpd() {
        push_adopts_a_tree_made_by_lftp(&s, "the server's SHA-256 matches");
    }
}

#[test]
fn adopt_lftp_pull_on_vsftpd() {
    if let Some(s) = Server::vsftpd() {
        // lftp keeps the server's times on the local copies; MDTM gives them exact.
        pull_adopts_a_folder_made_by_lftp(&s, "same size and modification time to the second");
    }
}

#[test]
fn adopt_lftp_pull_on_proftpd_with_hash() {
    if let Some(s) = Server::proftpd() {
        pull_adopts_a_folder_made_by_lftp(&s, "the server's SHA-256 matches");
    }
}
