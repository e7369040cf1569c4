//! Ready markers (issue 14, item 1, "a trigger file decides instead"): a pull takes a remote
//! file only once the partner's marker says it is complete. `ready_marker: "{name}.done"`
//! releases one file; `batch_marker: "_READY"` releases the files of its folder. Markers are
//! never downloaded, and are deleted on the server after their files were pulled
//! (`marker_after_pull: delete`, the default) or kept (`keep`). Against the in-process server,
//! vsftpd (LIST) and ProFTPD (MLSD); the files are put on the server's disk as a partner's
//! upload would leave them.

use crate::harness::{Sandbox, Server};

fn exists_remote(s: &Sandbox, rel: &str) -> bool {
    s.remote_root().join(rel).exists()
}

/// A file without its marker waits (not failed, not taken); once the marker appears the next
/// run takes it and deletes the marker; the marker itself never lands locally.
fn a_file_is_taken_once_its_marker_exists(server: &Server) {
    let s = Sandbox::new(server, "marker");
    server.mkdirs(&s.remote_root());
    s.put_remote("a.csv", b"a,1\n");
    s.put_remote("b.csv", b"b,2\n");
    s.put_remote("b.csv.done", b"");
    s.job("j", "direction: pull\nready_marker: \"{name}.done\"\n");

    let dry = s.ferrysync(&["sync", "j", "--dry-run"]);
    dry.expect_code(0)
        .expect_output("waiting  a.csv (4 B): waiting for its ready marker a.csv.done");
    let first = s.sync("j");
    eprintln!("{}{}", dry.stdout, first.stdout);
    first
        .expect_code(0)
        .expect_output("1 downloaded")
        .expect_output("1 waiting for a ready marker");
    assert_eq!(std::fs::read(s.local.join("b.csv")).unwrap(), b"b,2\n");
    assert!(!s.local.join("a.csv").exists(), "taken without its marker");
    assert!(!s.local.join("b.csv.done").exists(), "a marker is no data");
    assert!(
        !exists_remote(&s, "b.csv.done"),
        "the marker was not deleted"
    );
    assert!(exists_remote(&s, "a.csv") && exists_remote(&s, "b.csv"));
    assert_eq!(s.last_run("j")["files_waiting"].as_u64(), Some(1));

    // The partner finishes a.csv and drops its marker.
    s.put_remote("a.csv", b"a,1\na,2\n");
    s.put_remote("a.csv.done", b"");
    let second = s.sync("j");
    eprintln!("{}", second.stdout);
    second.expect_code(0).expect_output("1 downloaded");
    assert_eq!(std::fs::read(s.local.join("a.csv")).unwrap(), b"a,1\na,2\n");
    assert!(!exists_remote(&s, "a.csv.done"));
    let mut names: Vec<String> = std::fs::read_dir(&s.local)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["a.csv", "b.csv"]);
}

/// The files of a folder wait for its batch marker; once `_READY` is there one run takes them
/// all. With `marker_after_pull: keep` the marker stays on the server (and is never
/// downloaded); with the default it is deleted after the batch was pulled.
fn a_batch_is_taken_once_its_marker_exists(server: &Server) {
    let s = Sandbox::new(server, "batch");
    server.mkdirs(&s.remote_root());
    s.put_remote("out/1.csv", b"one\n");
    s.put_remote("out/2.csv", b"two\n");
    s.job(
        "j",
        "direction: pull\nbatch_marker: _READY\nmarker_after_pull: keep\n",
    );
    let first = s.sync("j");
    eprintln!("{}", first.stdout);
    first
        .expect_code(0)
        .expect_output("0 downloaded")
        .expect_output("2 waiting for a ready marker");
    assert!(!s.local.join("out/1.csv").exists() && !s.local.join("out/2.csv").exists());

    s.put_remote("out/_READY", b"");
    let second = s.sync("j");
    eprintln!("{}", second.stdout);
    second.expect_code(0).expect_output("2 downloaded");
    assert_eq!(std::fs::read(s.local.join("out/1.csv")).unwrap(), b"one\n");
    assert_eq!(std::fs::read(s.local.join("out/2.csv")).unwrap(), b"two\n");
    assert!(!s.local.join("out/_READY").exists(), "a marker is no data");
    assert!(exists_remote(&s, "out/_READY"), "kept, as configured");

    // The next batch, with the default: the marker goes once the batch is pulled.
    s.put_remote("out/3.csv", b"three\n");
    s.job("j", "direction: pull\nbatch_marker: _READY\n");
    let third = s.sync("j");
    eprintln!("{}", third.stdout);
    third.expect_code(0).expect_output("1 downloaded");
    assert_eq!(
        std::fs::read(s.local.join("out/3.csv")).unwrap(),
        b"three\n"
    );
    assert!(!exists_remote(&s, "out/_READY"), "deleted by default");
    // No marker now: a new file waits for the next one.
    s.put_remote("out/4.csv", b"four\n");
    s.sync("j")
        .expect_code(0)
        .expect_output("1 waiting for a ready marker");
    assert!(!s.local.join("out/4.csv").exists());
}

against_servers!(only [loopback vsftpd proftpd]
    a_file_is_taken_once_its_marker_exists,
    a_batch_is_taken_once_its_marker_exists,
);
