//! Fewer round trips per file (issue 16, item 2): after a STOR, SIZE goes out with the next
//! transfer's EPSV, and MFMT, RNFR and RNTO go out together, so a small file costs three waits
//! on the control connection (SIZE+EPSV, MFMT+RNFR+RNTO, STOR) where it cost five or six. Counted
//! as the client's flights through the fault proxy; the files, their content and their times
//! are checked too, since the rename still waits for the size to match.

use std::time::{Duration, SystemTime};

use crate::harness::fault_proxy::FaultProxy;
use crate::harness::{Sandbox, Server};

const FILES: u64 = 40;

/// Pushes `FILES` small files through `proxy` with one connection; returns the control
/// flights the run took.
fn flights_of_a_push(server: &Server, proxy: &FaultProxy, name: &str) -> u64 {
    let s = Sandbox::new(server, name);
    s.server.mkdirs(&s.remote_root());
    let day_ago = SystemTime::now() - Duration::from_secs(86_400);
    for i in 0..FILES {
        let rel = format!("f{i}.csv");
        s.write_local(&rel, format!("file {i}\n").as_bytes());
        let f = std::fs::File::options()
            .write(true)
            .open(s.local.join(&rel))
            .unwrap();
        f.set_modified(day_ago).unwrap();
    }
    s.write_job("j", &proxy.job_yaml(&s, "transfers: 1\n"));
    let before = proxy.control_flights();
    let run = s.sync("j");
    eprintln!("{}", run.text());
    run.expect_code(0);
    let flights = proxy.control_flights() - before;
    assert_eq!(s.remote_tree(), s.local_tree(), "{name}");
    if server.kind != "vsftpd" {
        // MFMT (ProFTPD) was set on the temporary name, and the rename kept it.
        let remote = std::fs::metadata(s.remote_root().join("f7.csv"))
            .and_then(|m| m.modified())
            .unwrap();
        let off = remote
            .duration_since(day_ago)
            .unwrap_or_else(|e| e.duration());
        assert!(
            off < Duration::from_secs(2),
            "{name}: remote mtime off by {off:?}"
        );
    }
    eprintln!("{name}: {flights} control flights for {FILES} files");
    flights
}

/// Login, the listings and the directory take a few flights whatever the count of files; one
/// command at a time, each file alone took 5 (vsftpd) or 6 (with MFMT).
fn assert_three_per_file(flights: u64) {
    assert!(
        flights <= 3 * FILES + 25,
        "{flights} control flights for {FILES} files: more than 3 per file"
    );
}

#[test]
fn a_small_file_costs_three_control_round_trips_on_vsftpd() {
    let Some(server) = Server::vsftpd() else {
        return;
    };
    let proxy = FaultProxy::for_vsftpd(&server);
    assert_three_per_file(flights_of_a_push(&server, &proxy, "flights-vsftpd"));
}

#[test]
fn a_small_file_costs_three_control_round_trips_on_proftpd_with_its_mtime() {
    let Some(server) = Server::proftpd() else {
        return;
    };
    let env = |k: &str, d: u16| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let range = env("PROFTPD_PASV_MIN", 40200)..=env("PROFTPD_PASV_MAX", 40299);
    let proxy = FaultProxy::for_server(&server, range);
    assert_three_per_file(flights_of_a_push(&server, &proxy, "flights-proftpd"));
}
