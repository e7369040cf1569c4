//! Prompt stops (issue 13, item 1): SIGTERM or Ctrl-C while `sync` or the agent connects to a
//! server that never greets, during the backoff between retries, or during a stalled upload,
//! ends the run within about 2 s, records it `interrupted`, and a second signal exits at once.
//! And wrong settings that fail fast with a hint (item 2): the wrong `security:` against the
//! real servers, a refused connection, an unknown host.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::fault_proxy::{loopback_behind_proxy, Conn, Fault};
use crate::harness::{Sandbox, Server};

/// A TCP listener on 127.0.0.1 that accepts every connection and then either holds it open
/// without a word (`greeting: None`, a server that never greets) or sends `greeting` and
/// closes it. Counts the connections it accepted.
struct RawServer {
    port: u16,
    accepted: Arc<AtomicUsize>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RawServer {
    fn start(greeting: Option<&'static [u8]>) -> RawServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let (count, end) = (accepted.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !end.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut tcp, _)) => {
                        count.fetch_add(1, Ordering::SeqCst);
                        match greeting {
                            Some(text) => {
                                let _ = tcp.write_all(text);
                            }
                            None => held.push(tcp),
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        RawServer {
            port,
            accepted,
            done,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A job directory and ledger of a test's own, for a server that is not a [`Server`].
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
        std::fs::create_dir_all(dir.path().join("local")).unwrap();
        Scratch { dir }
    }
    fn jobs(&self) -> PathBuf {
        self.dir.path().join("jobs")
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("state/ledger.db")
    }
    /// `jobs/j.yaml` for `host:port`, with `extra` lines at the top level.
    fn job(&self, host: &str, port: u16, extra: &str) {
        let yaml = format!(
            "local: {}\nremote:\n  host: {host}\n  port: {port}\n  path: /in\n  user: u\n  password: not-used-9\n  timeout: 10s\n{extra}",
            self.dir.path().join("local").display()
        );
        std::fs::write(self.jobs().join("j.yaml"), yaml).unwrap();
    }
    fn ferrysync(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_ferrysync"))
            .args(args)
            .env("FERRYSYNC_JOBS", self.jobs())
            .env("FERRYSYNC_STATE", self.state())
            .env_remove("FERRYSYNC_LOG")
            .output()
            .unwrap()
    }
}

/// A `ferrysync` process whose stderr is collected.
struct Process {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Process {
    fn spawn(jobs: &Path, state: &Path, args: &[&str]) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferrysync"))
            .args(args)
            .env("FERRYSYNC_JOBS", jobs)
            .env("FERRYSYNC_STATE", state)
            .env("FERRYSYNC_LOG", "ferrysync=info,warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        for out in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    sink.lock().unwrap().push(line);
                }
            });
        }
        Process { child, log }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the exit; panics after `within`. Returns the status and how long it took.
    #[track_caller]
    fn wait_exit(&mut self, within: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(50));
                return (status, start.elapsed());
            }
            assert!(
                start.elapsed() < within,
                "no exit within {within:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[track_caller]
fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The runs of job `j`, newest first.
fn runs(jobs: &Path, state: &Path) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrysync"))
        .args(["history", "j", "--json"])
        .env("FERRYSYNC_JOBS", jobs)
        .env("FERRYSYNC_STATE", state)
        .output()
        .unwrap();
    serde_json::from_str::<Value>(&String::from_utf8_lossy(&out.stdout))
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn sigterm_while_sync_waits_for_a_greeting_stops_it_at_once() {
    let server = RawServer::start(None);
    let s = Scratch::new();
    s.job("127.0.0.1", server.port, "retries: 3\n");
    let mut p = Process::spawn(&s.jobs(), &s.state(), &["sync", "j"]);
    wait_until("a connection", Duration::from_secs(20), || {
        server.accepted() > 0
    });
    std::thread::sleep(Duration::from_millis(300));
    p.signal("TERM");
    let (status, took) = p.wait_exit(Duration::from_secs(30));
    let log = p.log_text();
    assert!(took < Duration::from_secs(3), "took {took:?}:\n{log}");
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("j: interrupted (the next run resumes)"),
        "{log}"
    );
    let runs = runs(&s.jobs(), &s.state());
    assert_eq!(runs[0]["outcome"], "interrupted", "{runs:?}");
    eprintln!("sync, SIGTERM while waiting for the greeting: exit {status} after {took:?}");
}

#[test]
fn sigterm_during_the_backoff_between_retries_stops_sync_at_once() {
    // Every connection is told "421, try later": transient, so retried with backoff
    // (about 1 s, 2 s, 4 s, 8 s).
    let server = RawServer::start(Some(b"421 Too busy, try later\r\n"));
    let s = Scratch::new();
    s.job(
        "127.0.0.1",
        server.port,
        "retries:\n  attempts: 6\n  max_delay: 60s\n",
    );
    let mut p = Process::spawn(&s.jobs(), &s.state(), &["sync", "j"]);
    // The third attempt is followed by a backoff of about 4 s.
    wait_until("three attempts", Duration::from_secs(30), || {
        server.accepted() >= 3
    });
    std::thread::sleep(Duration::from_millis(300));
    p.signal("TERM");
    let (status, took) = p.wait_exit(Duration::from_secs(60));
    let log = p.log_text();
    assert!(took < Duration::from_secs(2), "took {took:?}:\n{log}");
    assert_eq!(status.code(), Some(1), "{log}");
    assert_eq!(server.accepted(), 3, "no attempt after the stop:\n{log}");
    assert_eq!(runs(&s.jobs(), &s.state())[0]["outcome"], "interrupted");
}

#[test]
fn sigterm_stops_the_agent_at_once_while_a_run_waits_for_a_greeting() {
    let server = RawServer::start(None);
    let s = Scratch::new();
    // A pull job with `poll` lists the remote at start-up.
    s.job(
        "127.0.0.1",
        server.port,
        "direction: pull\npoll: 1h\nretries: 3\n",
    );
    let mut p = Process::spawn(&s.jobs(), &s.state(), &["run", "--stop-timeout", "60s"]);
    wait_until("a connection", Duration::from_secs(20), || {
        server.accepted() > 0
    });
    std::thread::sleep(Duration::from_millis(300));
    p.signal("TERM");
    let (status, took) = p.wait_exit(Duration::from_secs(90));
    let log = p.log_text();
    assert!(took < Duration::from_secs(3), "took {took:?}:\n{log}");
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("clean=true"), "{log}");
    let status = s.ferrysync(&["status", "j", "--json"]);
    let v: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_ne!(v["jobs"][0]["state"], "running", "{v}");
    assert_eq!(runs(&s.jobs(), &s.state())[0]["outcome"], "interrupted");
    eprintln!("agent, SIGTERM while a run waits for the greeting: exit after {took:?}");
}

/// A 32 MiB upload whose data connection the fault proxy stalls for good at 1 MiB (with a
/// 60 s timeout, the run would wait a minute).
fn stalled_upload<'a>(
    server: &'a Server,
    proxy: &crate::harness::fault_proxy::FaultProxy,
) -> Sandbox<'a> {
    let s = Sandbox::new(server, "stop-stall");
    let data: Vec<u8> = (0..(32u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 9) as u8)
        .collect();
    s.write_local("blob.bin", &data);
    let yaml = proxy.job_yaml(&s, "").replace(
        "  security: explicit\n",
        "  security: explicit\n  timeout: 60s\n",
    );
    s.write_job("j", &yaml);
    proxy.set_data_fault(Fault::stall_forever(Conn::First, 1 << 20));
    s
}

#[test]
fn sigterm_during_a_stalled_upload_cuts_it_off_after_the_grace_and_the_next_run_resumes() {
    let (server, proxy) = loopback_behind_proxy();
    let s = stalled_upload(&server, &proxy);
    let mut p = Process::spawn(&s.jobs, &s.state, &["sync", "j", "--quiet"]);
    assert!(
        proxy.wait_fired(1, Duration::from_secs(60)),
        "the stall did not happen"
    );
    // Until the socket buffers are full and the upload waits on its write.
    std::thread::sleep(Duration::from_millis(2500));
    p.signal("TERM");
    let (status, took) = p.wait_exit(Duration::from_secs(90));
    let log = p.log_text();
    assert!(took < Duration::from_secs(4), "took {took:?}:\n{log}");
    assert_eq!(status.code(), Some(1), "{log}");
    assert_eq!(s.last_run("j")["outcome"], "interrupted");
    assert!(
        !s.remote_root().join("blob.bin").exists(),
        "nothing is renamed into place half-done"
    );
    proxy.clear_faults();
    proxy.resume_stalled();
    s.sync("j").expect_code(0);
    assert_eq!(
        std::fs::read(s.remote_root().join("blob.bin")).unwrap(),
        std::fs::read(s.local.join("blob.bin")).unwrap()
    );
}

#[test]
fn a_second_signal_exits_at_once_and_records_the_run_interrupted() {
    let (server, proxy) = loopback_behind_proxy();
    let s = stalled_upload(&server, &proxy);
    let mut p = Process::spawn(&s.jobs, &s.state, &["sync", "j", "--quiet"]);
    assert!(
        proxy.wait_fired(1, Duration::from_secs(60)),
        "the stall did not happen"
    );
    // Until the socket buffers are full and the upload waits on its write.
    std::thread::sleep(Duration::from_millis(2500));
    p.signal("TERM");
    // Within the 2 s the stalled transfer is given to reach a checkpoint.
    std::thread::sleep(Duration::from_millis(400));
    p.signal("INT");
    let (status, took) = p.wait_exit(Duration::from_secs(90));
    let log = p.log_text();
    assert!(took < Duration::from_secs(1), "took {took:?}:\n{log}");
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(log.contains("second SIGINT: exiting now"), "{log}");
    assert_eq!(s.last_run("j")["outcome"], "interrupted");
    eprintln!("sync, SIGTERM then SIGINT during a stalled upload: exit {status} {took:?} after the second");
}

/// `ferrysync sync j` with the job as `s` has it but `security: wrong`: must fail within a few
/// seconds, at the first attempt, with `hint`. Returns the output and the time it took.
fn wrong_security(server: &Server, wrong: &str, hint: &str) {
    let s = Sandbox::new(server, "wrong-security");
    let right = format!("  security: {}\n", server.security);
    let yaml = s.job_yaml("retries: 5\n");
    assert!(yaml.contains(&right), "{yaml}");
    s.write_job(
        "j",
        &yaml.replace(&right, &format!("  security: {wrong}\n")),
    );
    let started = Instant::now();
    let run = s.ferrysync_with_env(&["sync", "j"], &[("FERRYSYNC_LOG", "ferrysync=info,warn")]);
    let took = started.elapsed();
    run.expect_code(1).expect_output(hint);
    assert!(
        run.stdout.contains(&format!("127.0.0.1:{}", server.port)),
        "{}",
        run.text()
    );
    assert!(!run.stderr.contains("retrying"), "{}", run.text());
    assert!(
        took < Duration::from_secs(10),
        "took {took:?}: {}",
        run.text()
    );
    eprintln!(
        "[{} {}] security: {wrong}: exit {} in {took:.1?}:\n{}{}",
        server.kind, server.security, run.code, run.stdout, run.stderr
    );
}

const SET_IMPLICIT: &str = "this port speaks implicit TLS: set `security: implicit`";
const SET_EXPLICIT: &str = "set `security: explicit`";

#[test]
fn wrong_security_implicit_against_the_loopback_server() {
    wrong_security(&Server::loopback(), "implicit", SET_EXPLICIT);
}

#[test]
fn wrong_security_implicit_against_vsftpd() {
    if let Some(server) = Server::vsftpd() {
        wrong_security(&server, "implicit", SET_EXPLICIT);
    }
}

#[test]
fn wrong_security_explicit_against_vsftpd_implicit() {
    if let Some(server) = Server::vsftpd_implicit() {
        wrong_security(&server, "explicit", SET_IMPLICIT);
    }
}

#[test]
fn wrong_security_implicit_against_proftpd() {
    if let Some(server) = Server::proftpd() {
        wrong_security(&server, "implicit", SET_EXPLICIT);
    }
}

#[test]
fn wrong_security_explicit_against_proftpd_implicit() {
    if let Some(server) = Server::proftpd_implicit() {
        wrong_security(&server, "explicit", SET_IMPLICIT);
    }
}

#[test]
fn wrong_security_implicit_against_pureftpd() {
    if let Some(server) = Server::pureftpd() {
        wrong_security(&server, "implicit", SET_EXPLICIT);
    }
}

#[test]
fn a_refused_connection_fails_at_once_naming_host_and_port_without_retries() {
    // A port nothing listens on: bound, then closed again.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = Scratch::new();
    s.job("127.0.0.1", port, "retries: 5\n");
    let started = Instant::now();
    let out = s.ferrysync(&["sync", "j"]);
    let took = started.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("connection refused by 127.0.0.1:{port}"))
            && text.contains("check remote.host and remote.port"),
        "{text}"
    );
    assert!(!text.contains("retrying"), "{text}");
    assert!(took < Duration::from_secs(2), "took {took:?}: {text}");
}

#[test]
fn an_unknown_host_fails_at_once_without_retries() {
    let s = Scratch::new();
    s.job("nosuch.invalid", 21, "retries: 5\n");
    let started = Instant::now();
    let out = s.ferrysync(&["sync", "j"]);
    let took = started.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("unknown host `nosuch.invalid`") && text.contains("check remote.host"),
        "{text}"
    );
    assert!(!text.contains("retrying"), "{text}");
    assert!(took < Duration::from_secs(5), "took {took:?}: {text}");
}

#[test]
fn the_agents_stop_timeout_cuts_a_stalled_run_off_and_records_it_interrupted() {
    let (server, proxy) = loopback_behind_proxy();
    let s = stalled_upload(&server, &proxy);
    // The start-up run of a watched job uploads the file, into the stall.
    let yaml = std::fs::read_to_string(s.jobs.join("j.yaml")).unwrap();
    s.write_job("j", &format!("{yaml}watch: true\n"));
    // A stop timeout shorter than the 2 s a stalled transfer is given.
    let mut p = Process::spawn(&s.jobs, &s.state, &["run", "--stop-timeout", "1s"]);
    assert!(
        proxy.wait_fired(1, Duration::from_secs(60)),
        "the stall did not happen"
    );
    std::thread::sleep(Duration::from_millis(2500));
    p.signal("TERM");
    let (status, took) = p.wait_exit(Duration::from_secs(90));
    let log = p.log_text();
    assert!(took < Duration::from_secs(3), "took {took:?}:\n{log}");
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("clean=false"), "{log}");
    assert_eq!(s.last_run("j")["outcome"], "interrupted", "{log}");
    assert!(!s.remote_root().join("blob.bin").exists());
}
