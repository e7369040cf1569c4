//! Output polish (issue 13, item 7): each error printed once, no escape sequences in a
//! redirected log, an unknown job named with the jobs that exist, `demo` from any directory,
//! the progress line on a terminal, and the generated completions, man page and job schema.

use std::time::Duration;

use crate::harness::fault_proxy::{loopback_behind_proxy, Conn, Dir, Fault};
use crate::harness::{Run, Sandbox, Server};

/// How often `needle` occurs in what the run printed, stdout and stderr together.
fn occurrences(run: &Run, needle: &str) -> usize {
    run.stdout.matches(needle).count() + run.stderr.matches(needle).count()
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn a_failed_connection_is_printed_once() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "polish-refused");
    s.write_local("a.txt", b"a");
    let yaml = s.job_yaml("retries: 1\n").replace(
        &format!("port: {}", server.port),
        &format!("port: {}", closed_port()),
    );
    s.write_job("j", &yaml);
    let run = s.sync("j");
    run.expect_code(1).expect_output("FAILED");
    assert_eq!(occurrences(&run, "refused"), 1, "{}", run.text());
}

#[test]
fn a_failed_path_is_printed_once() {
    let (server, proxy) = loopback_behind_proxy();
    let s = Sandbox::new(&server, "polish-path");
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    s.write_local("dir/big.bin", &data);
    s.write_job("j", &proxy.job_yaml(&s, "retries: 1\ntransfers: 1\n"));
    proxy.set_data_fault(Fault::cut(Conn::First, 1 << 20).dir(Dir::ToServer));
    let run = s.sync("j");
    assert!(
        proxy.wait_fired(1, Duration::from_secs(5)),
        "{}",
        run.text()
    );
    run.expect_code(1).expect_output("failed: dir/big.bin: ");
    assert_eq!(occurrences(&run, "dir/big.bin"), 1, "{}", run.text());
}

#[test]
fn a_redirected_log_has_no_escape_sequences() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "polish-ansi");
    s.write_local("a.txt", b"a");
    // An inline password: a warning on stderr in every run, so there is a log line to look at.
    let password = std::fs::read_to_string(&server.password_file).unwrap();
    let yaml = s.job_yaml("").replace(
        &format!("password_file: {}", server.password_file.display()),
        &format!("password: {:?}", password.trim()),
    );
    s.write_job("j", &yaml);
    for env in [
        &[][..],
        &[("NO_COLOR", "")][..],
        &[("TERM", "xterm-256color")][..],
    ] {
        let run = s.ferrysync_with_env(&["sync", "j", "-vv"], env);
        run.expect_code(0);
        assert!(run.stderr.contains("WARN"), "{}", run.text());
        assert!(!run.stderr.contains('\u{1b}'), "{env:?}: {:?}", run.stderr);
        assert!(!run.stdout.contains('\u{1b}'), "{env:?}: {:?}", run.stdout);
    }
}

#[test]
fn sync_of_an_unknown_job_names_the_jobs_that_exist() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "polish-nosuch");
    s.job("nightly", "").job("hourly", "");
    let run = s.sync("nosuch");
    run.expect_code(2);
    assert_eq!(
        run.stderr.trim(),
        format!(
            "ferrysync: no job named `nosuch` in {}; the jobs there: hourly, nightly",
            s.jobs.display()
        ),
        "{}",
        run.text()
    );
    assert!(!run.stderr.contains(":1:1"), "{}", run.text());
}
