//! `settle:` (issue 14, item 1): a pull never takes a remote file the partner is still
//! uploading. A writer appends to a remote file while a pull runs; the run waits within itself,
//! re-listing, and the local file must never appear under its final name until it is complete
//! and was seen unchanged for `settle`. Against the in-process server the writer appends on the server's disk; against the
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

/// Watches the local `incoming.csv` from another thread while the partner writes: records
/// every size it was seen with under its final name before the writer was done.
fn watch_local(
    local: std::path::PathBuf,
    done: Arc<AtomicBool>,
    over: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut early = Vec::new();
        while !over.load(Ordering::SeqCst) {
            let writing = !done.load(Ordering::SeqCst);
            if let Ok(meta) = std::fs::metadata(&local) {
                if writing {
                    early.push(meta.len());
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        early
    })
}

/// Waits until the writer's file is on the server (curl creates it when its STOR starts), so
/// that the run's listing sees it growing.
fn wait_for_remote(s: &Sandbox, name: &str) {
    let path = s.remote_root().join(name);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&path).map_or(true, |m| m.len() == 0) {
        assert!(
            Instant::now() < deadline,
            "the writer's file never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One pull started while the partner is still writing `incoming.csv`: the run waits within
/// itself, re-listing, and takes the file once it has stopped growing for `settle`, in that
/// one run. The local file never appears under its final name before the writer is done, and
/// what appears is the whole file.
fn one_run_takes_a_growing_file_once_it_settles(server: &Server) {
    let how = if server.kind == "loopback" {
        Writer::Disk
    } else {
        Writer::Ftps
    };
    let s = Sandbox::new(server, "settle");
    server.mkdirs(&s.remote_root());
    s.job("j", "direction: pull\nsettle: 2s\n");
    let full = full_content();
    let local = s.local.join("incoming.csv");
    let done = Arc::new(AtomicBool::new(false));
    let over = Arc::new(AtomicBool::new(false));
    start_writer(&s, how, "incoming.csv", Arc::clone(&done));
    wait_for_remote(&s, "incoming.csv");
    let watcher = watch_local(local.clone(), Arc::clone(&done), Arc::clone(&over));

    let started = Instant::now();
    let run = s.sync("j");
    let took = started.elapsed();
    over.store(true, Ordering::SeqCst);
    let early = watcher.join().unwrap();
    eprintln!(
        "{} (writer done: {})",
        run.stdout.trim(),
        done.load(Ordering::SeqCst)
    );
    run.expect_code(0).expect_output("1 downloaded");
    assert!(
        early.is_empty(),
        "incoming.csv appeared before the partner finished, with sizes {early:?}"
    );
    assert!(
        done.load(Ordering::SeqCst),
        "taken before the writer was done"
    );
    assert_eq!(std::fs::read(&local).unwrap(), full, "not the whole file");
    assert!(
        took >= Duration::from_secs(2),
        "taken after {took:?}, less than settle"
    );
    let last = s.last_run("j");
    assert_eq!(last["files_down"].as_u64(), Some(1), "{last}");
    assert_eq!(last["files_waiting"].as_u64(), Some(0), "{last}");
    no_temporary_files(&s.local);
}

against_servers!(only [loopback vsftpd proftpd] one_run_takes_a_growing_file_once_it_settles);

/// A file that keeps growing past the run's wait (five settle periods) is left for the next
/// run: reported waiting, not failed, and not taken.
#[test]
fn settle_a_file_growing_past_the_runs_wait_is_left_for_the_next_run() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "settlebound");
    server.mkdirs(&s.remote_root());
    s.job("j", "direction: pull\nsettle: 1s\n");
    let path = s.remote_root().join("endless.csv");
    s.put_remote("endless.csv", b"start\n");
    let over = Arc::new(AtomicBool::new(false));
    let writer = {
        let over = Arc::clone(&over);
        std::thread::spawn(move || {
            while !over.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(200));
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .unwrap();
                f.write_all(b"more\n").unwrap();
            }
        })
    };
    let started = Instant::now();
    let run = s.sync("j");
    let took = started.elapsed();
    over.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    eprintln!("{}", run.stdout.trim());
    run.expect_code(0).expect_output("1 waiting to settle");
    assert!(!s.local.join("endless.csv").exists());
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(15),
        "the run waited {took:?} (budget 5 s)"
    );
    assert_eq!(s.last_run("j")["outcome"], "ok");
}

/// SIGTERM while a run waits within itself for a file to settle: it stops at once, is recorded
/// `interrupted`, and takes nothing.
#[test]
fn settle_a_stop_during_the_wait_is_prompt() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "settlestop");
    server.mkdirs(&s.remote_root());
    s.put_remote("a.csv", b"0123456789");
    s.job("j", "direction: pull\nsettle: 30s\n");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrysync"))
        .args(["sync", "j"])
        .env("FERRYSYNC_JOBS", &s.jobs)
        .env("FERRYSYNC_STATE", &s.state)
        .env("FERRYSYNC_LOG", "ferrysync=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The run is in its wait once the ledger holds the file's sighting.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sightings(&s) == 0 {
        assert!(Instant::now() < deadline, "the run never started waiting");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let signalled = Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "no exit within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = signalled.elapsed();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "stopped after {took:?}: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    assert!(took < Duration::from_secs(2), "took {took:?}:\n{text}");
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("waiting within the run"), "{text}");
    assert_eq!(s.last_run("j")["outcome"], "interrupted");
    assert!(!s.local.join("a.csv").exists());
}

/// How many settle sightings the sandbox's ledger holds (read with SQLite directly, as any
/// other reader of the WAL database may).
fn sightings(s: &Sandbox) -> i64 {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(&s.state, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    conn.query_row("SELECT count(*) FROM settle_sightings", [], |r| r.get(0))
        .unwrap_or(0)
}

fn no_temporary_files(dir: &Path) {
    let names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, ["incoming.csv"], "{names:?}");
}

/// `sync --dry-run` shows a file that would wait and remembers no sighting; a real run then
/// waits within itself and takes the file once it stayed the same for `settle`.
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
    assert_eq!(sightings(&s), 0, "a dry run remembers nothing");
    let started = Instant::now();
    let taken = s.sync("j");
    let took = started.elapsed();
    eprintln!("{}{}", dry.stdout, taken.stdout);
    taken.expect_code(0).expect_output("1 downloaded");
    assert!(took >= Duration::from_secs(1), "taken after {took:?}");
    assert_eq!(std::fs::read(s.local.join("a.csv")).unwrap(), b"0123456789");
    assert_eq!(s.last_run("j")["files_waiting"].as_u64(), Some(0));
    assert_eq!(sightings(&s), 0, "a file taken needs no sighting");
}
