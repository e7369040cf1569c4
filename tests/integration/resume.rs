//! Crash safety: `kill -9` of ferrysync in the middle of a 256 MiB upload or download, then a
//! new run. The file must end up identical (checked with an independent hash), the new run must
//! resume instead of starting over, no half file may ever be visible under the final name
//! (a watcher thread polls for it during the whole test), and the ledger must pass
//! `PRAGMA integrity_check` after the kill.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{hash_file, Sandbox, Server};

const SIZE: u64 = 256 << 20;

/// 256 MiB of bytes that are not all alike (so a misplaced block changes the hash).
pub fn write_big_file(path: &Path) -> blake3::Hash {
    crate::harness::write_patterned_file(path, SIZE)
}

/// Polls `final_path` until stopped: it may be absent or complete, never partial.
pub struct HalfFileWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<u64>>>,
}

impl HalfFileWatch {
    pub fn start(final_path: PathBuf, full_size: u64) -> HalfFileWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut bad = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                if let Ok(m) = std::fs::metadata(&final_path) {
                    if m.len() != full_size {
                        bad.push(m.len());
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            bad
        });
        HalfFileWatch {
            stop,
            thread: Some(thread),
        }
    }

    #[track_caller]
    pub fn assert_never_half(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let bad = self.thread.take().unwrap().join().unwrap();
        assert!(
            bad.is_empty(),
            "a partial file was visible under its final name, sizes {bad:?}"
        );
    }
}

fn spawn_sync(s: &Sandbox, job: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ferrysync"))
        .args(["sync", job, "--quiet"])
        .env("FERRYSYNC_JOBS", &s.jobs)
        .env("FERRYSYNC_STATE", &s.state)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits until `path` holds at least `bytes`, then kills `child` with SIGKILL; returns the
/// size of `path` once the kill is done.
fn kill_when_grown(child: &mut Child, path: &Path, bytes: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len >= bytes {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "ferrysync ended ({status}) before the kill point; {len} bytes in {}",
                path.display()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the transfer did not reach {bytes} bytes"
        );
        std::thread::sleep(Duration::from_millis(3));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300)); // let the server write what it received
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[track_caller]
fn assert_ledger_intact(s: &Sandbox) {
    let db = rusqlite::Connection::open(&s.state).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

fn temp_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.ferrysync-part"))
}

pub fn kill_during_upload_then_resume(server: &Server) {
    let s = Sandbox::new(server, "kill-up");
    let expected = write_big_file(&s.local.join("big/blob.bin"));
    s.job("up", "transfers: 1\n");
    // The directory exists on the server before the watch starts.
    server.mkdirs(&s.remote_root().join("big"));
    let final_path = s.remote_root().join("big/blob.bin");
    let watch = HalfFileWatch::start(final_path.clone(), SIZE);

    let mut child = spawn_sync(&s, "up");
    // While it runs, a second process is refused and told who holds the job.
    let temp = temp_of(&s.remote_root().join("big"), "blob.bin");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&temp).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the upload did not start");
        std::thread::sleep(Duration::from_millis(3));
    }
    s.sync("up")
        .expect_code(1)
        .expect_output("already running")
        .expect_output(&format!("pid {}", child.id()));
    let on_server = kill_when_grown(
        &mut child,
        &temp_of(&s.remote_root().join("big"), "blob.bin"),
        SIZE * 2 / 5,
    );
    assert!(
        !final_path.exists(),
        "the killed upload is visible under its final name"
    );
    assert_ledger_intact(&s);

    let started = Instant::now();
    s.sync("up").expect_code(0);
    let run = s.last_run("up");
    let resent = run["bytes_up"].as_u64().unwrap() + on_server;
    eprintln!(
        "[{}] kill -9 at {on_server} of {SIZE} bytes; the next run sent {} bytes in {:.2}s; {} bytes in all ({:.1}% re-sent)",
        server.kind,
        run["bytes_up"],
        started.elapsed().as_secs_f64(),
        resent,
        (resent as f64 - SIZE as f64) * 100.0 / SIZE as f64
    );
    watch.assert_never_half();
    assert_eq!(
        hash_file(&final_path),
        expected,
        "the resumed upload differs from the source"
    );
    assert!(
        resent < SIZE + SIZE / 10,
        "more than 10% was sent again: {resent} bytes for {SIZE}"
    );
    assert!(!temp_of(&s.remote_root().join("big"), "blob.bin").exists());
}

pub fn kill_during_download_then_resume(server: &Server) {
    let s = Sandbox::new(server, "kill-down");
    let source = tempfile::tempdir().unwrap();
    let expected = write_big_file(&source.path().join("blob.bin"));
    server.mkdirs(&s.remote_root().join("big"));
    std::fs::rename(
        source.path().join("blob.bin"),
        s.remote_root().join("big/blob.bin"),
    )
    .or_else(|_| {
        std::fs::copy(
            source.path().join("blob.bin"),
            s.remote_root().join("big/blob.bin"),
        )
        .map(|_| ())
    })
    .unwrap();
    s.job("down", "direction: pull\ntransfers: 1\n");
    std::fs::create_dir_all(s.local.join("big")).unwrap();
    let final_path = s.local.join("big/blob.bin");
    let watch = HalfFileWatch::start(final_path.clone(), SIZE);

    let mut child = spawn_sync(&s, "down");
    let on_disk = kill_when_grown(
        &mut child,
        &temp_of(&s.local.join("big"), "blob.bin"),
        SIZE / 2,
    );
    assert!(
        !final_path.exists(),
        "the killed download is visible under its final name"
    );
    assert_ledger_intact(&s);

    let started = Instant::now();
    s.sync("down").expect_code(0);
    let run = s.last_run("down");
    let total = run["bytes_down"].as_u64().unwrap() + on_disk;
    eprintln!(
        "[{}] kill -9 at {on_disk} of {SIZE} bytes; the next run fetched {} bytes in {:.2}s; {} bytes in all ({:.1}% re-sent)",
        server.kind,
        run["bytes_down"],
        started.elapsed().as_secs_f64(),
        total,
        (total as f64 - SIZE as f64) * 100.0 / SIZE as f64
    );
    watch.assert_never_half();
    assert_eq!(
        hash_file(&final_path),
        expected,
        "the resumed download differs from the source"
    );
    assert!(
        total < SIZE + SIZE / 10,
        "more than 10% was fetched again: {total} bytes for {SIZE}"
    );
    assert!(!temp_of(&s.local.join("big"), "blob.bin").exists());
}

/// A pull onto a full local disk (a small tmpfs): the file fails with the OS error, nothing
/// appears under its final name, the ledger does not record it, and once there is room the
/// next run resumes from the bytes kept instead of starting over. Needs root (mount); skipped
/// where mounting is not allowed.
#[test]
fn full_local_disk_keeps_the_partial_download_for_later() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "diskfull");
    let mount = s.dir.path().join("small-disk");
    std::fs::create_dir_all(&mount).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&mount)
        .status()
        .is_ok_and(|st| st.success());
    if !mounted {
        // tests/run.sh runs as root, where the mount must work.
        crate::harness::missing("cannot mount a tmpfs for this test (not root?)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount.clone());

    let big: Vec<u8> = (0..(10u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    s.put_remote("big.bin", &big);
    s.put_remote("a-small.txt", b"fits");
    let yaml = s.job_yaml("direction: pull\ntransfers: 1\n").replace(
        &format!("local: {}", s.local.display()),
        &format!("local: {}", mount.display()),
    );
    s.write_job("j", &yaml);

    s.sync("j")
        .expect_code(1)
        .expect_output("big.bin")
        .expect_output("No space left");
    assert!(
        !mount.join("big.bin").exists(),
        "a partial file under its final name"
    );
    assert_eq!(std::fs::read(mount.join("a-small.txt")).unwrap(), b"fits");
    let kept = std::fs::metadata(temp_of(&mount, "big.bin"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(kept > 0, "the partial download was not kept");
    let status = s.ferrysync(&["status", "j", "--json"]);
    assert!(
        status.stdout.contains("\"synced_files\": 1"),
        "{}",
        status.text()
    );

    // More room (tmpfs keeps its files on remount): the next run resumes.
    let grown = Command::new("mount")
        .args(["-o", "remount,size=32m"])
        .arg(&mount)
        .status()
        .unwrap();
    assert!(grown.success());
    s.sync("j").expect_code(0);
    assert_eq!(std::fs::read(mount.join("big.bin")).unwrap(), big);
    let fetched = s.last_run("j")["bytes_down"].as_u64().unwrap();
    assert!(
        fetched < big.len() as u64,
        "the download started over ({fetched} bytes fetched)"
    );
    assert!(!temp_of(&mount, "big.bin").exists());
}

/// A 256 MiB transfer whose data connection is cut at 40% and again at 80% of the file (via
/// the fault proxy): the same run retries, resumes from the bytes already on the destination,
/// and completes with identical bytes, having sent less than 10% twice.
fn cut_twice(server: &Server, proxy: &crate::harness::fault_proxy::FaultProxy, push: bool) {
    use crate::harness::fault_proxy::{Conn, Fault};
    let name = if push { "cut-up" } else { "cut-down" };
    let s = Sandbox::new(server, name);
    let expected;
    let (final_path, temp) = if push {
        expected = write_big_file(&s.local.join("big/blob.bin"));
        server.mkdirs(&s.remote_root().join("big"));
        let dir = s.remote_root().join("big");
        (dir.join("blob.bin"), temp_of(&dir, "blob.bin"))
    } else {
        let source = tempfile::tempdir().unwrap();
        expected = write_big_file(&source.path().join("blob.bin"));
        server.mkdirs(&s.remote_root().join("big"));
        std::fs::copy(
            source.path().join("blob.bin"),
            s.remote_root().join("big/blob.bin"),
        )
        .unwrap();
        std::fs::create_dir_all(s.local.join("big")).unwrap();
        let dir = s.local.join("big");
        (dir.join("blob.bin"), temp_of(&dir, "blob.bin"))
    };
    let extra = if push {
        "transfers: 1\n"
    } else {
        "direction: pull\ntransfers: 1\n"
    };
    s.write_job("j", &proxy.job_yaml(&s, extra));
    let watch = HalfFileWatch::start(final_path.clone(), SIZE);

    // Cut the first data connection that reaches 40% of the file; once that has fired, arm
    // the same cut again: the resumed connection starts near 40%, so it dies near 80%.
    let step = SIZE * 2 / 5;
    proxy.set_data_fault(Fault::cut(Conn::First, step));
    let started = Instant::now();
    let child = spawn_sync(&s, "j");
    assert!(
        proxy.wait_fired(1, Duration::from_secs(120)),
        "the first cut did not happen"
    );
    proxy.set_data_fault(Fault::cut(Conn::First, step));
    let out = child.wait_with_output().unwrap();
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "the run did not survive the cuts: {}",
        s.text_of_last_run("j")
    );
    assert_eq!(
        proxy.fired().len(),
        2,
        "both cuts must have happened: {:?}",
        proxy.fired()
    );
    let moved = if push {
        proxy.data_bytes_to_server()
    } else {
        proxy.data_bytes_to_client()
    };
    eprintln!(
        "[{}] {} 256 MiB cut at 40% and 80%: {moved} bytes through the data connections for {SIZE} ({:.1}% re-sent), {:.2}s",
        server.kind,
        if push { "upload" } else { "download" },
        (moved as f64 - SIZE as f64) * 100.0 / SIZE as f64,
        elapsed.as_secs_f64()
    );
    watch.assert_never_half();
    assert_eq!(hash_file(&final_path), expected);
    assert!(!temp.exists());
    assert!(
        moved < SIZE + SIZE / 10,
        "more than 10% was sent again: {moved} bytes for {SIZE}"
    );
}

mod cuts {
    use crate::harness::fault_proxy::{loopback_behind_proxy, FaultProxy};
    use crate::harness::Server;

    #[test]
    fn loopback_upload_cut_at_40_and_80_percent() {
        let (server, proxy) = loopback_behind_proxy();
        super::cut_twice(&server, &proxy, true);
    }
    #[test]
    fn loopback_download_cut_at_40_and_80_percent() {
        let (server, proxy) = loopback_behind_proxy();
        super::cut_twice(&server, &proxy, false);
    }
    #[test]
    fn vsftpd_upload_cut_at_40_and_80_percent() {
        if let Some(server) = Server::vsftpd() {
            let proxy = FaultProxy::for_vsftpd(&server);
            super::cut_twice(&server, &proxy, true);
        }
    }
    #[test]
    fn vsftpd_download_cut_at_40_and_80_percent() {
        if let Some(server) = Server::vsftpd() {
            let proxy = FaultProxy::for_vsftpd(&server);
            super::cut_twice(&server, &proxy, false);
        }
    }
}

/// A data connection that stops moving (the fault proxy stalls it for good at 50%): the
/// operation times out after `remote.timeout`, the same run reconnects and resumes, and the
/// file arrives whole.
fn stalled_data_connection_times_out_and_resumes(push: bool) {
    use crate::harness::fault_proxy::{loopback_behind_proxy, Conn, Fault};
    let (server, proxy) = loopback_behind_proxy();
    let s = Sandbox::new(&server, if push { "stall-up" } else { "stall-down" });
    let data: Vec<u8> = (0..(32u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 9) as u8)
        .collect();
    let final_path = if push {
        s.write_local("blob.bin", &data);
        s.remote_root().join("blob.bin")
    } else {
        s.put_remote("blob.bin", &data);
        s.local.join("blob.bin")
    };
    let extra = if push { "" } else { "direction: pull\n" };
    let yaml = proxy.job_yaml(&s, extra).replace(
        "  security: explicit\n",
        "  security: explicit\n  timeout: 2s\n",
    );
    s.write_job("j", &yaml);
    let watch = HalfFileWatch::start(final_path.clone(), data.len() as u64);
    proxy.set_data_fault(Fault::stall_forever(Conn::First, data.len() as u64 / 2));
    let started = Instant::now();
    let child = spawn_sync(&s, "j");
    assert!(
        proxy.wait_fired(1, Duration::from_secs(60)),
        "the stall did not happen"
    );
    // During the stall, `status` reads the ledger while the run holds it, and shows the
    // run's live progress.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = s.ferrysync(&["status", "j", "--json"]);
        out.expect_code(0);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        let job = &v["jobs"][0];
        let progress = &job["last_run"]["progress"];
        if progress["bytes_done"].as_u64().unwrap_or(0) > 0 {
            assert_eq!(job["state"], "running", "{}", out.stdout);
            assert_eq!(progress["files_total"], 1);
            assert_eq!(progress["bytes_total"].as_u64(), Some(data.len() as u64));
            assert_eq!(progress["current"][0], "blob.bin", "{}", out.stdout);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no live progress in status: {}",
            out.stdout
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", s.text_of_last_run("j"));
    let elapsed = started.elapsed();
    watch.assert_never_half();
    assert_eq!(proxy.fired().len(), 1, "{:?}", proxy.fired());
    assert_eq!(std::fs::read(&final_path).unwrap(), data);
    let moved = if push {
        proxy.data_bytes_to_server()
    } else {
        proxy.data_bytes_to_client()
    };
    assert!(
        moved < data.len() as u64 * 11 / 10,
        "{moved} bytes moved for {}",
        data.len()
    );
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
}

#[test]
fn stalled_upload_times_out_and_resumes() {
    stalled_data_connection_times_out_and_resumes(true);
}

#[test]
fn stalled_download_times_out_and_resumes() {
    stalled_data_connection_times_out_and_resumes(false);
}

/// ProFTPD offers HASH: a resumed upload is checked with the server's SHA-256 before the
/// rename. Bytes damaged on the server while no one watched (here: overwritten after the kill)
/// are caught, the temporary file is discarded, and the next run sends the file again whole.
#[test]
fn a_damaged_partial_upload_is_caught_by_the_server_hash() {
    let Some(server) = Server::proftpd() else {
        return;
    };
    let s = Sandbox::new(&server, "hash");
    let expected = write_big_file(&s.local.join("blob.bin"));
    s.job("up", "transfers: 1\n");
    server.mkdirs(&s.remote_root());
    let temp = temp_of(&s.remote_root(), "blob.bin");
    let final_path = s.remote_root().join("blob.bin");
    let mut child = spawn_sync(&s, "up");
    kill_when_grown(&mut child, &temp, SIZE / 4);
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::File::options().write(true).open(&temp).unwrap();
        f.seek(std::io::SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&[0u8; 4096]).unwrap();
    }

    s.sync("up")
        .expect_code(1)
        .expect_output("SHA-256")
        .expect_output("differs");
    assert!(
        !final_path.exists(),
        "a damaged file was renamed into place"
    );
    assert!(!temp.exists(), "the damaged temporary file was kept");
    let log = std::fs::read_to_string(std::env::var("FERRYSYNC_PROFTPD_LOG").unwrap()).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("HASH") && l.contains(".blob.bin.ferrysync-part")),
        "ProFTPD's log shows no HASH of the temporary file"
    );

    s.sync("up").expect_code(0);
    assert_eq!(hash_file(&final_path), expected);
}

/// SIGTERM to `ferrysync sync` during a 256 MiB upload: the transfer stops at its next
/// checkpoint, the run is recorded as interrupted (exit 1), nothing appears under the final
/// name, and the next run resumes instead of starting over.
#[test]
fn sigterm_stops_at_a_checkpoint_and_the_next_run_resumes() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "sigterm");
    let expected = write_big_file(&s.local.join("blob.bin"));
    s.job("up", "transfers: 1\n");
    server.mkdirs(&s.remote_root());
    let temp = temp_of(&s.remote_root(), "blob.bin");
    let final_path = s.remote_root().join("blob.bin");
    let child = spawn_sync(&s, "up");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&temp).map(|m| m.len()).unwrap_or(0) < SIZE / 10 {
        assert!(Instant::now() < deadline, "the upload did not start");
        std::thread::sleep(Duration::from_millis(2));
    }
    let sent_at = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        sent_at.elapsed() < Duration::from_secs(10),
        "SIGTERM took {:?}",
        sent_at.elapsed()
    );
    assert_eq!(out.status.code(), Some(1));
    let run = s.last_run("up");
    assert_eq!(run["outcome"], "interrupted", "{run}");
    assert!(!final_path.exists());
    assert_ledger_intact(&s);

    s.sync("up").expect_code(0);
    assert_eq!(hash_file(&final_path), expected);
    let sent = s.last_run("up")["bytes_up"].as_u64().unwrap();
    assert!(sent < SIZE, "the next run started over ({sent} bytes)");
}
