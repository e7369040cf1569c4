//! Data safety against what the server, the network and other local users can do, through the
//! binary: no password in any log, no write through a local symbolic link, no widened
//! permissions, no forged output lines.

use std::os::unix::fs::PermissionsExt;

use crate::harness::{Sandbox, Server};

fn password_never_logged(server: &Server) {
    let s = Sandbox::new(server, "nolog");
    s.write_local("a.txt", b"a");
    s.job("j", "");
    let password = server.password();
    assert!(password.len() >= 6, "a password worth looking for");
    for (filter, format) in [
        ("trace", "text"),
        ("trace", "json"),
        ("suppaftp=trace,ferrysync=trace", "text"),
        ("suppaftp=trace", "json"),
    ] {
        s.write_local("a.txt", format!("{filter}{format}").as_bytes());
        let run = s.ferrysync_with_env(
            &["--log-format", format, "sync", "j"],
            &[("FERRYSYNC_LOG", filter)],
        );
        run.expect_code(0);
        assert!(
            run.stderr.contains("USER"),
            "{filter} {format}: the control commands are logged at trace:\n{}",
            run.text()
        );
        assert!(
            !run.stderr.contains(&password) && !run.stdout.contains(&password),
            "{filter} {format}: the password reached the output:\n{}",
            run.text()
        );
    }
}

#[test]
fn the_password_never_reaches_the_log_loopback() {
    password_never_logged(&Server::loopback());
}

#[test]
fn the_password_never_reaches_the_log_vsftpd() {
    if let Some(server) = Server::vsftpd() {
        password_never_logged(&server);
    }
}

/// A local directory replaced by a link between two pulls: the second pull writes nothing
/// outside the job's folder.
#[test]
fn a_pull_never_writes_through_a_local_link() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "pulllink");
    server.mkdirs(&s.remote_root());
    s.put_remote("d/a.txt", b"first");
    s.job("j", "direction: pull\n");
    s.sync("j").expect_code(0);
    assert_eq!(std::fs::read(s.local.join("d/a.txt")).unwrap(), b"first");

    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("a.txt"), b"secret, not the server's").unwrap();
    std::fs::remove_dir_all(s.local.join("d")).unwrap();
    std::os::unix::fs::symlink(outside.path(), s.local.join("d")).unwrap();
    s.put_remote("d/a.txt", b"the server's new content");
    s.put_remote("d/b.txt", b"a new file");
    s.sync("j");
    assert_eq!(
        std::fs::read(outside.path().join("a.txt")).unwrap(),
        b"secret, not the server's",
        "a file outside the job's folder was written through a link"
    );
    assert!(
        !outside.path().join("b.txt").exists(),
        "a file was created outside the job's folder"
    );
    let leftovers: Vec<_> = std::fs::read_dir(outside.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}

/// A pulled file the user restricted to 0600 stays 0600 when the server updates it.
#[test]
fn a_pulled_update_keeps_the_files_mode() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "pullmode");
    server.mkdirs(&s.remote_root());
    s.put_remote("pay.csv", b"v1");
    s.job("j", "direction: pull\n");
    s.sync("j").expect_code(0);
    let local = s.local.join("pay.csv");
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o600)).unwrap();
    s.put_remote("pay.csv", b"version two");
    s.sync("j").expect_code(0);
    assert_eq!(std::fs::read(&local).unwrap(), b"version two");
    let mode = std::fs::metadata(&local).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600, "the update widened the file's permissions");
}

/// A local name with a line break cannot forge a line of `sync --dry-run`'s output.
#[test]
fn a_name_cannot_forge_output_lines() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "forge");
    s.write_local("x\nFORGED: all files sent\r\u{1b}[2J.txt", b"x");
    s.job("j", "");
    let run = s.ferrysync(&["sync", "j", "--dry-run"]);
    run.expect_code(0);
    for line in run.stdout.lines().chain(run.stderr.lines()) {
        assert!(
            !line.starts_with("FORGED"),
            "a forged line:\n{}",
            run.text()
        );
        assert!(
            !line.contains('\r') && !line.contains('\u{1b}'),
            "{}",
            run.text()
        );
    }
    run.expect_output("FORGED");
}
