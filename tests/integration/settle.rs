//! `settle:` (issue 14, item 1): a pull never takes a remote file the partner is still
//! uploading. A writer appends to a remote file while pulls run one after another; the local
//! file must never appear under its final name until it is complete and was seen unchanged for
//! `settle`. Against the in-process server the writer appends on the server's disk; against the
//! real servers it is a second FTPS session (curl's STOR, fed slowly through a pipe).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{Sandbox, Server};

/// How the partner writes the file.
#[derive(Clone, Copy)]
enum Writer {
    /// Appends on the server's disk.
    Disk,
    /// Uploads through its own FTPS session (curl), a chunk at a time.
    Ftps,
}

const CHUNKS: usize = 12;
const CHUNK: usize = 4096;
const PAUSE: Duration = Duration::from_millis(300);

fn chunk(i: usize) -> Vec<u8> {
    (0..CHUNK).map(|j| ((i * 31 + j) % 251) as u8).collect()
}

fn full_content() -> Vec<u8> {
    (0..CHUNKS).flat_map(chunk).collect()
}

/// Starts the writer; `done` turns true once the file is complete on the server.
fn start_writer(s: &Sandbox, how: Writer, name: &str, done: Arc<AtomicBool>) {
    match how {
        Writer::Disk => {
            let path = s.remote_root().join(name);
            s.put_remote(name, &chunk(0));
            std::thread::spawn(move || {
                for i in 1..CHUNKS {
                    std::thread::sleep(PAUSE);
                    let mut f = std::fs::OpenOptions::new()
                        .append(true)
                        .open(&path)
                        .unwrap();
                    f.write_all(&chunk(i)).unwrap();
                }
                done.store(true, Ordering::SeqCst);
            });
        }
        Writer::Ftps => {
            let scheme = if s.server.security == "implicit" {
                "ftps"
            } else {
                "ftp"
            };
            let url = format!(
                "{scheme}://localhost:{}{}/{name}",
                s.server.port, s.remote_dir
            );
            let mut curl = Command::new("curl")
                .args(["--silent", "--show-error", "--ssl-reqd", "--cacert"])
                .arg(&s.server.ca)
                .arg("--user")
                .arg(format!("{}:{}", s.server.user, s.server.password()))
                .args(["-T", "-"])
                .arg(&url)
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = curl.stdin.take().unwrap();
            std::thread::spawn(move || {
                for i in 0..CHUNKS {
                    stdin.write_all(&chunk(i)).unwrap();
                    stdin.flush().unwrap();
                    std::thread::sleep(PAUSE);
                }
                drop(stdin);
                let status = curl.wait().unwrap();
                assert!(status.success(), "curl upload: {status}");
                done.store(true, Ordering::SeqCst);
            });
        }
    }
}

/// Pulls again and again while `incoming.csv` grows: it never appears locally until it is
/// whole, the runs meanwhile report it as waiting to settle (not failed), and once it stops
/// growing a run after `settle` takes it.
fn a_growing_file_is_never_taken_half_written(server: &Server, how: Writer) {
    let s = Sandbox::new(server, "settle");
    server.mkdirs(&s.remote_root());
    s.job("j", "direction: pull\nsettle: 2s\n");
    let full = full_content();
    let local = s.local.join("incoming.csv");
    let done = Arc::new(AtomicBool::new(false));
    start_writer(&s, how, "incoming.csv", Arc::clone(&done));

    let check = |when: &str| {
        if let Ok(got) = std::fs::read(&local) {
            assert!(
                got == full,
                "{when}: incoming.csv appeared with {} of {} bytes",
                got.len(),
                full.len()
            );
        }
    };
    let mut waited = 0;
    let started = Instant::now();
    while !done.load(Ordering::SeqCst) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the writer hangs"
        );
        let run = s.sync("j");
        run.expect_code(0);
        if run.stdout.contains("waiting to settle") {
            waited += 1;
        }
        check("while the partner writes");
        assert!(
            !run.stdout.contains("failed:"),
            "a waiting file is not a failure:\n{}",
            run.text()
        );
    }
    assert!(waited > 0, "no run reported the file as waiting to settle");
    let dry = s.ferrysync(&["sync", "j", "--dry-run"]);
    dry.expect_code(0);
    check("after a dry run");

    // Stable from now on: taken by a run at least `settle` after the last change.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !local.exists() {
        assert!(Instant::now() < deadline, "never taken once stable");
        std::thread::sleep(Duration::from_millis(500));
        s.sync("j").expect_code(0);
        check("after the partner finished");
    }
    assert_eq!(std::fs::read(&local).unwrap(), full);
    assert_eq!(s.last_run("j")["files_down"].as_u64(), Some(1));
    assert_eq!(s.last_run("j")["files_waiting"].as_u64(), Some(0));
    no_temporary_files(&s.local);
}

fn no_temporary_files(dir: &Path) {
    let names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, ["incoming.csv"], "{names:?}");
}

#[test]
fn settle_loopback_a_growing_file_is_never_taken_half_written() {
    a_growing_file_is_never_taken_half_written(&Server::loopback(), Writer::Disk);
}

#[test]
fn settle_vsftpd_a_partner_upload_in_progress_is_never_taken() {
    if let Some(s) = Server::vsftpd() {
        a_growing_file_is_never_taken_half_written(&s, Writer::Ftps);
    }
}

#[test]
fn settle_proftpd_a_partner_upload_in_progress_is_never_taken() {
    if let Some(s) = Server::proftpd() {
        a_growing_file_is_never_taken_half_written(&s, Writer::Ftps);
    }
}

/// `sync --dry-run` shows a file that would wait, and the summary counts it; neither is a
/// failure, and a dry run remembers no sighting (the next real run starts the interval).
#[test]
fn settle_dry_run_shows_waiting_files() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "settledry");
    server.mkdirs(&s.remote_root());
    s.put_remote("a.csv", b"0123456789");
    s.job("j", "direction: pull\nsettle: 1s\n");
    let dry = s.ferrysync(&["sync", "j", "--dry-run"]);
    dry.expect_code(0)
        .expect_output("waiting  a.csv (10 B): waiting to settle");
    let run = s.sync("j");
    run.expect_code(0).expect_output("1 waiting to settle");
    eprintln!("{}{}", dry.stdout, run.stdout);
    assert!(!s.local.join("a.csv").exists());
    assert_eq!(s.last_run("j")["files_waiting"].as_u64(), Some(1));
    std::thread::sleep(Duration::from_millis(1100));
    let taken = s.sync("j");
    taken.expect_code(0).expect_output("1 downloaded");
    eprintln!("{}", taken.stdout);
    assert_eq!(std::fs::read(s.local.join("a.csv")).unwrap(), b"0123456789");
}
