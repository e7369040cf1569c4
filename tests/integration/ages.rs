//! `min_age:` / `max_age:` (issue 14, item 3): a push leaves alone the local files outside the
//! age limits, and in mirror mode a file left alone by age never deletes or overwrites its
//! remote copy.

use std::time::{Duration, SystemTime};

use crate::harness::{Sandbox, Server};

/// Sets a local file's modification time to `ago` before now.
fn age_local(s: &Sandbox, rel: &str, ago: Duration) {
    let f = std::fs::File::options()
        .write(true)
        .open(s.local.join(rel))
        .unwrap();
    f.set_modified(SystemTime::now() - ago).unwrap();
}

#[test]
fn ages_min_age_pushes_only_old_files() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "agesmin");
    server.mkdirs(&s.remote_root());
    s.write_local("old.csv", b"old");
    s.write_local("new.csv", b"new");
    age_local(&s, "old.csv", Duration::from_secs(7200));
    s.job("j", "min_age: 1h\n");
    let run = s.sync("j");
    eprintln!("{}{}", run.stdout, run.stderr);
    run.expect_code(0);
    assert_eq!(
        std::fs::read(s.remote_root().join("old.csv")).unwrap(),
        b"old"
    );
    assert!(
        !s.remote_root().join("new.csv").exists(),
        "a file younger than min_age is not uploaded"
    );
}

#[test]
fn ages_max_age_in_mirror_mode_neither_uploads_nor_deletes_old_files() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "agesmax");
    server.mkdirs(&s.remote_root());
    s.put_remote("old.csv", b"remote copy");
    s.write_local("old.csv", b"old local");
    s.write_local("new.csv", b"new");
    age_local(&s, "old.csv", Duration::from_secs(7200));
    s.job("j", "mode: mirror\nmax_age: 1h\n");
    let run = s.sync("j");
    eprintln!("{}{}", run.stdout, run.stderr);
    run.expect_code(0);
    assert_eq!(
        std::fs::read(s.remote_root().join("old.csv")).unwrap(),
        b"remote copy",
        "a file older than max_age is neither uploaded nor its remote copy deleted"
    );
    assert_eq!(
        std::fs::read(s.remote_root().join("new.csv")).unwrap(),
        b"new"
    );
}
