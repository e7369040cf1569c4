//! `bandwidth:` (issue 16, item 4): one limit for all of a job's connections together. Six
//! files of 1 MiB on four connections at 2 MiB/s take about three seconds, each way, where a
//! limit per connection (or none) would take well under one; and every file arrives whole.
//! Whether the limit holds within 5% over 30 s is a measurement, `tests/bench/bandwidth.sh`.

use std::time::{Duration, Instant};

use crate::harness::{hash_file, write_patterned_file, Sandbox, Server};

against_servers!(
    only [loopback vsftpd proftpd pureftpd]
    bandwidth_a_push_keeps_to_the_limit_across_its_connections,
    bandwidth_a_pull_keeps_to_the_limit_across_its_connections,
);

const FILES: usize = 6;
const LIMIT: &str = "transfers: 4\nbandwidth: 2MiB/s\n";
/// 6 MiB at 2 MiB/s is 3 s; the bucket starts full (100 ms of bytes), so at least 2.9 s, and
/// some slack for the clock's granularity.
const AT_LEAST: Duration = Duration::from_millis(2600);
/// Log-in, listing and the debug build's TLS take well under a second on loopback; a limit
/// that strangles the transfer (the rate counted twice, say) takes far longer.
const AT_MOST: Duration = Duration::from_secs(12);

fn check_elapsed(took: Duration) {
    assert!(
        took >= AT_LEAST,
        "6 MiB at 2 MiB/s took {took:?}: the limit is not shared by the connections, or not applied"
    );
    assert!(took <= AT_MOST, "6 MiB at 2 MiB/s took {took:?}");
}

fn bandwidth_a_push_keeps_to_the_limit_across_its_connections(server: &Server) {
    let s = Sandbox::new(server, "bwpush");
    server.mkdirs(&s.remote_root());
    let hashes: Vec<_> = (0..FILES)
        .map(|i| write_patterned_file(&s.local.join(format!("f{i}.bin")), 1 << 20))
        .collect();
    s.job("j", LIMIT);
    let start = Instant::now();
    let run = s.sync("j");
    let took = start.elapsed();
    eprintln!("{}{}", run.stdout, run.stderr);
    run.expect_code(0);
    for (i, hash) in hashes.iter().enumerate() {
        assert_eq!(
            hash_file(&s.remote_root().join(format!("f{i}.bin"))),
            *hash,
            "f{i}.bin"
        );
    }
    check_elapsed(took);
}

fn bandwidth_a_pull_keeps_to_the_limit_across_its_connections(server: &Server) {
    let s = Sandbox::new(server, "bwpull");
    server.mkdirs(&s.remote_root());
    let scratch = tempfile::tempdir().unwrap();
    let mut hashes = Vec::new();
    for i in 0..FILES {
        let p = scratch.path().join("f.bin");
        hashes.push(write_patterned_file(&p, 1 << 20));
        s.put_remote(&format!("f{i}.bin"), &std::fs::read(&p).unwrap());
    }
    s.job("j", &format!("direction: pull\n{LIMIT}"));
    let start = Instant::now();
    let run = s.sync("j");
    let took = start.elapsed();
    eprintln!("{}{}", run.stdout, run.stderr);
    run.expect_code(0);
    for (i, hash) in hashes.iter().enumerate() {
        assert_eq!(
            hash_file(&s.local.join(format!("f{i}.bin"))),
            *hash,
            "f{i}.bin"
        );
    }
    check_elapsed(took);
}

/// A limit only on the other direction leaves a push alone (the up/down split is honoured).
#[test]
fn bandwidth_a_download_limit_does_not_slow_a_push() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "bwsplit");
    server.mkdirs(&s.remote_root());
    for i in 0..FILES {
        write_patterned_file(&s.local.join(format!("f{i}.bin")), 1 << 20);
    }
    s.job(
        "j",
        "transfers: 4\nbandwidth:\n  up: off\n  down: 64KiB/s\n",
    );
    let start = Instant::now();
    let run = s.sync("j");
    let took = start.elapsed();
    eprintln!("{}{}", run.stdout, run.stderr);
    run.expect_code(0);
    assert!(
        took < AT_LEAST,
        "a push under a download limit took {took:?}"
    );
}
