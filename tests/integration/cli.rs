//! The command line's contract (README "Commands"): `check` reports file:line:col, the fields
//! of `status --json`, and `status` for a reader who cannot write to the ledger.

use crate::harness::{Sandbox, Server};

#[test]
fn check_reports_file_line_and_column() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "check");
    // Lines of the generated part of a job file; the options under test follow it.
    let base = s.job_yaml("").lines().count();
    s.job(
        "good",
        "schedule: \"*/15 * * * 1-5\"\ntimezone: Europe/Amsterdam\n",
    );
    s.ferrysync(&["check"])
        .expect_code(0)
        .expect_output("ok   good");
    s.job("bad", "schedule: \"*/15 * * * 1-5\"\ntransfer: 4\n");
    let run = s.ferrysync(&["check"]);
    run.expect_code(2)
        .expect_output(&format!(
            "{}:{}:1:",
            s.jobs.join("bad.yaml").display(),
            base + 2
        ))
        .expect_output("transfer");
    s.job("bad", "schedule: \"99 * * * *\"\n");
    s.ferrysync(&["check"])
        .expect_code(2)
        .expect_output(&format!("bad.yaml:{}:1:", base + 1));
    s.write_job("bad", "local: [unclosed\n");
    s.ferrysync(&["check"])
        .expect_code(2)
        .expect_output("bad.yaml:");
    // `sync` of a bad job is a configuration error too.
    s.ferrysync(&["sync", "bad"]).expect_code(2);
}

#[test]
fn status_json_has_the_documented_fields() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "status");
    s.write_local("a", b"abc");
    s.job("j", "schedule: \"0 3 * * *\"\ntimezone: UTC\n");
    s.sync("j").expect_code(0);
    let run = s.ferrysync(&["status", "--json"]);
    run.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let job = &v["jobs"][0];
    for key in [
        "name",
        "state",
        "consecutive_failures",
        "last_error",
        "direction",
        "local",
        "remote",
        "schedule",
        "timezone",
        "next_run",
        "last_success",
        "synced_files",
        "last_run",
    ] {
        assert!(
            job.get(key).is_some(),
            "status --json lacks {key}: {}",
            run.stdout
        );
    }
    assert_eq!(job["synced_files"], 1);
    assert!(job["next_run"].as_str().unwrap().ends_with("T03:00:00Z"));
    let last = &job["last_run"];
    for key in [
        "id",
        "trigger",
        "started_at",
        "ended_at",
        "outcome",
        "files_up",
        "bytes_up",
        "files_down",
        "bytes_down",
        "files_deleted",
        "files_failed",
        "error",
        "failures",
    ] {
        assert!(last.get(key).is_some(), "last_run lacks {key}");
    }
    assert_eq!(last["outcome"], "ok");
    assert_eq!(last["bytes_up"], 3);
    s.ferrysync(&["status", "nosuchjob"]).expect_code(2);
}

/// `status` and `history` only read the ledger: another user with read access to it gets the
/// same answer, and a missing ledger is "nothing has run yet", not an error or a new file.
#[test]
fn status_works_for_a_reader_without_write_access() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::loopback();
    let s = Sandbox::new(&server, "reader");
    s.write_local("a", b"abc");
    s.job("j", "");
    let empty = s.ferrysync(&["status", "--json"]);
    empty.expect_code(0);
    assert!(!s.state.exists(), "status created a ledger");
    s.sync("j").expect_code(0);

    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if !is_root {
        eprintln!("skipped the other-user part: not root");
        return;
    }
    let state_dir = s.state.parent().unwrap();
    for dir in [s.dir.path(), state_dir] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for f in std::fs::read_dir(state_dir).unwrap() {
        let f = f.unwrap().path();
        if f.is_file() {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let out = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(env!("CARGO_BIN_EXE_ferrysync"))
        .args(["status", "j", "--json", "--state"])
        .arg(&s.state)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "status as nobody: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"outcome\": \"ok\""), "{stdout}");
}
