//! `initial_files: skip` (issue 14, item 3): a job sends only the files that appear after its
//! first run, decided by what the ledger knows of each path, never by a file's time: a file
//! copied in with a time older than every pre-existing file is still sent, and a pre-existing
//! file is sent once it changes.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::harness::{Sandbox, Server};

against_servers!(
    only [loopback vsftpd proftpd pureftpd]
    initial_files_skip_pushes_only_files_that_appear_later,
    initial_files_skip_pulls_only_files_that_appear_later,
);

/// Sets a file's modification time to `ago` before now.
fn age(path: &Path, ago: Duration) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - ago).unwrap();
}

const YEARS: Duration = Duration::from_secs(5 * 365 * 86_400);

fn initial_files_skip_pushes_only_files_that_appear_later(server: &Server) {
    let s = Sandbox::new(server, "initpush");
    server.mkdirs(&s.remote_root());
    s.write_local("old.csv", b"old");
    s.write_local("2020/archive.csv", b"archived");
    s.job("j", "initial_files: skip\n");

    // A dry run shows what would be left alone and takes no baseline.
    let dry = s.ferrysync(&["sync", "j", "--dry-run"]);
    dry.expect_code(0);

    let first = s.sync("j");
    eprintln!("{}{}", first.stdout, first.stderr);
    first
        .expect_code(0)
        .expect_output("2 there before the job began, left alone");
    assert!(
        s.remote_tree().is_empty(),
        "the first run sends nothing, not even the directory of a file left alone: {:?}",
        s.remote_tree()
    );

    // New, with a time older than any file that was there: sent all the same.
    s.write_local("late.csv", b"late but new");
    age(&s.local.join("late.csv"), YEARS);
    let second = s.sync("j");
    second.expect_code(0);
    assert_eq!(
        std::fs::read(s.remote_root().join("late.csv")).unwrap(),
        b"late but new"
    );
    assert!(!s.remote_root().join("old.csv").exists());
    assert_eq!(s.counts("j").0, 1);

    // A pre-existing file that changes is new content: sent.
    s.write_local("old.csv", b"old, changed");
    let third = s.sync("j");
    third.expect_code(0);
    assert_eq!(
        std::fs::read(s.remote_root().join("old.csv")).unwrap(),
        b"old, changed"
    );
    assert!(!s.remote_root().join("2020").exists());
    assert_eq!(s.counts("j").0, 1);
}

fn initial_files_skip_pulls_only_files_that_appear_later(server: &Server) {
    let s = Sandbox::new(server, "initpull");
    server.mkdirs(&s.remote_root());
    s.put_remote("outbox-1.csv", b"one");
    s.put_remote("outbox-2.csv", b"two");
    s.job("j", "direction: pull\nmode: copy\ninitial_files: skip\n");

    let first = s.sync("j");
    eprintln!("{}{}", first.stdout, first.stderr);
    first
        .expect_code(0)
        .expect_output("2 there before the job began, left alone");
    assert!(s.local_tree().is_empty(), "{:?}", s.local_tree());

    // A file the partner copies in with an old time is new to the job: taken.
    s.put_remote("copied-in.csv", b"copied in");
    age(&s.remote_root().join("copied-in.csv"), YEARS);
    let second = s.sync("j");
    eprintln!("{}{}", second.stdout, second.stderr);
    second.expect_code(0);
    assert_eq!(
        std::fs::read(s.local.join("copied-in.csv")).unwrap(),
        b"copied in"
    );
    assert!(!s.local.join("outbox-1.csv").exists());
    assert_eq!(s.counts("j").1, 1);
    // Nothing left to do: nothing sent again.
    s.sync("j").expect_code(0);
    assert_eq!(s.counts("j").1, 0);
}

#[test]
fn initial_files_skip_a_dry_run_takes_no_baseline() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "initdry");
    server.mkdirs(&s.remote_root());
    s.write_local("a.csv", b"a");
    s.job("j", "initial_files: skip\n");
    s.ferrysync(&["sync", "j", "--dry-run"])
        .expect_code(0)
        .expect_output("1 there before the job began, left alone");
    // Written after the dry run but before the first real run: there before the job began.
    s.write_local("b.csv", b"b");
    s.sync("j")
        .expect_code(0)
        .expect_output("2 there before the job began, left alone");
    assert!(s.remote_tree().is_empty());
}

#[test]
fn initial_files_defaults_to_transfer() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "initdefault");
    server.mkdirs(&s.remote_root());
    s.write_local("a.csv", b"a");
    s.job("j", "");
    s.sync("j").expect_code(0);
    assert_eq!(std::fs::read(s.remote_root().join("a.csv")).unwrap(), b"a");
}
