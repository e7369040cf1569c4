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

/// `ferrysync ARGS` for sandbox `s` on a pseudo-terminal (util-linux `script`), as a person at a
/// terminal runs it: what the terminal received, stdout and stderr together.
fn on_a_terminal(s: &Sandbox, args: &str, env: &[(&str, &str)]) -> String {
    let bin = env!("CARGO_BIN_EXE_ferrysync");
    let out = std::process::Command::new("script")
        .args(["-qfec", &format!("{bin} {args}"), "/dev/null"])
        .env("FERRYSYNC_JOBS", &s.jobs)
        .env("FERRYSYNC_STATE", &s.state)
        .env_remove("FERRYSYNC_LOG")
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("util-linux `script` runs");
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn the_progress_line_shows_rate_time_left_and_the_file_on_a_terminal() {
    let (server, proxy) = loopback_behind_proxy();
    let s = Sandbox::new(&server, "polish-progress");
    // Larger than the socket buffers between ferrysync and the stalled proxy can hold, so
    // that bytes remain to be sent while it stalls.
    let data: Vec<u8> = (0..32u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    s.write_local("dir/slow.bin", &data);
    s.write_job("j", &proxy.job_yaml(&s, "transfers: 1\n"));
    // The upload stalls for a while after its first MiB: several progress lines meanwhile.
    proxy.set_data_fault(
        Fault::stall(Conn::First, 1 << 20, Duration::from_millis(1500)).dir(Dir::ToServer),
    );
    let screen = on_a_terminal(&s, "sync j", &[("COLUMNS", "160")]);
    let lines: Vec<&str> = screen.split(['\r', '\n']).collect();
    let drawn = lines
        .iter()
        .find(|l| {
            l.contains("j: 0/1 files") && l.contains("/s, ") && l.contains(" left  dir/slow.bin")
        })
        .unwrap_or_else(|| panic!("no progress line with rate, time left and file:\n{screen:?}"));
    assert!(drawn.chars().count() < 160, "{drawn}");
    assert!(
        screen.contains("j: 1/1 files, 32.0 MiB of 32.0 MiB in "),
        "no final line:\n{screen:?}"
    );
    assert!(
        screen.contains("j: ok (1 uploaded, 32.0 MiB;"),
        "{screen:?}"
    );
    // Redirected, the same run shows no progress line at all.
    proxy.clear_faults();
    s.write_local("dir/slow.bin", b"changed");
    let run = s.sync("j");
    run.expect_code(0);
    assert!(!run.stderr.contains("files,"), "{}", run.text());
}

#[test]
fn colours_on_a_terminal_and_not_with_no_color() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "polish-colour");
    s.write_local("a.txt", b"a");
    let password = std::fs::read_to_string(&server.password_file).unwrap();
    let yaml = s.job_yaml("").replace(
        &format!("password_file: {}", server.password_file.display()),
        &format!("password: {:?}", password.trim()),
    );
    s.write_job("j", &yaml);
    let coloured = on_a_terminal(&s, "sync j", &[]);
    assert!(coloured.contains("WARN"), "{coloured:?}");
    assert!(coloured.contains("\u{1b}["), "{coloured:?}");
    for no_color in ["1", "yes"] {
        // Something to transfer: a progress line too.
        s.write_local(&format!("{no_color}.txt"), b"b");
        let plain = on_a_terminal(&s, "sync j", &[("NO_COLOR", no_color)]);
        assert!(plain.contains("WARN"), "{plain:?}");
        assert!(plain.contains("j: 1/1 files"), "{plain:?}");
        assert!(!plain.contains('\u{1b}'), "NO_COLOR={no_color}: {plain:?}");
    }
}

#[test]
fn demo_runs_from_any_directory_and_says_where_it_writes() {
    let home = tempfile::tempdir().unwrap();
    let port = closed_port().to_string();
    let demo = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferrysync"))
            .arg("demo")
            .args(args)
            .current_dir("/")
            .env("HOME", home.path())
            .env_remove("XDG_STATE_HOME")
            .env("FERRYSYNC_JOBS", "/nonexistent/jobs")
            .env("FERRYSYNC_STATE", "/nonexistent/state.db")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let dir = home.path().join(".local/state/ferrysync/demo");
    let (code, out) = demo(&["--port", &port]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("demo: writing to {}", dir.display())),
        "{out}"
    );
    assert!(out.contains("example: ok (6 uploaded"), "{out}");
    assert_eq!(
        std::fs::read(dir.join("demo/server-root/inbound/reports/überblick.txt")).unwrap(),
        "Übersicht für November\n".as_bytes()
    );
    assert!(dir.join("state/ferrysync.db").is_file());
    // Again: nothing to transfer, the same ledger.
    let (code, out) = demo(&["--port", &port]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("example: ok (0 uploaded"), "{out}");
    // An explicit folder, relative to the current directory.
    let other = tempfile::tempdir().unwrap();
    let (code, out) = demo(&[
        "--port",
        &port,
        "--dir",
        &other.path().join("d").display().to_string(),
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(other.path().join("d/jobs/example.yaml").is_file(), "{out}");
}
