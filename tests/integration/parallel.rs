//! `transfers: auto` (issue 16, item 3): the connections of a run follow the round trip
//! measured at login: four on loopback, as many as `max_transfers` allows once each reply
//! takes milliseconds; a fixed `transfers:` is kept whatever the link.

use std::time::Duration;

use crate::harness::fault_proxy::{loopback_behind_proxy, FaultProxy};
use crate::harness::Sandbox;

/// Pushes 40 small files through `proxy` with the job options `extra`; returns the control
/// connections the run opened.
fn connections_for_a_push(s: &Sandbox, proxy: &FaultProxy, extra: &str) -> usize {
    s.server.mkdirs(&s.remote_root());
    for i in 0..40 {
        s.write_local(&format!("d{}/f{i}.csv", i % 4), &[b'x'; 512]);
    }
    s.write_job("j", &proxy.job_yaml(s, extra));
    let before = proxy.control_connections();
    let run = s.ferrysync_with_env(&["sync", "j"], &[("FERRYSYNC_LOG", "info")]);
    eprintln!("{}{}", run.stdout, run.stderr);
    run.expect_code(0);
    assert_eq!(s.counts("j").0, 40);
    proxy.control_connections() - before
}

#[test]
fn transfers_auto_keeps_four_connections_on_loopback() {
    let (server, proxy) = loopback_behind_proxy();
    let s = Sandbox::new(&server, "autolo");
    let n = connections_for_a_push(&s, &proxy, "");
    // Four, or one or two more when a loaded machine slows the replies measured at login.
    assert!((2..=6).contains(&n), "{n} connections on loopback");
}

#[test]
fn transfers_auto_opens_more_connections_when_replies_take_longer() {
    let (server, proxy) = loopback_behind_proxy();
    proxy.set_control_reply_delay(Duration::from_millis(10));
    let s = Sandbox::new(&server, "autowan");
    let n = connections_for_a_push(&s, &proxy, "max_transfers: 10\n");
    assert_eq!(n, 10, "a 10 ms round trip takes the ceiling");
}

#[test]
fn transfers_fixed_is_kept_whatever_the_round_trip() {
    let (server, proxy) = loopback_behind_proxy();
    proxy.set_control_reply_delay(Duration::from_millis(10));
    let s = Sandbox::new(&server, "autofixed");
    let n = connections_for_a_push(&s, &proxy, "transfers: 3\n");
    assert_eq!(n, 3);
}

/// A re-run of a wide tree over a link the last run measured as slow opens the listing's extra
/// connections beside the first, before its login ends (the log says so); the first run, which
/// knows neither the tree nor the link, and a re-run on loopback do not.
#[test]
fn a_rerun_over_a_slow_link_opens_the_listings_connections_beside_the_first() {
    let (server, proxy) = loopback_behind_proxy();
    let beside = "opened beside the first";
    let run_logged = |s: &Sandbox| {
        let run = s.ferrysync_with_env(&["sync", "j"], &[("FERRYSYNC_LOG", "ferrysync=debug")]);
        run.expect_code(0);
        run.stderr.clone()
    };
    let wide = |s: &Sandbox| {
        s.server.mkdirs(&s.remote_root());
        for i in 0..40 {
            s.write_local(&format!("d{}/f{i}.csv", i % 20), &[b'x'; 64]);
        }
        s.write_job("j", &proxy.job_yaml(s, ""));
    };

    let lan = Sandbox::new(&server, "beside-lan");
    wide(&lan);
    assert!(!run_logged(&lan).contains(beside), "first run");
    assert!(!run_logged(&lan).contains(beside), "a re-run on loopback");

    proxy.set_control_reply_delay(Duration::from_millis(20));
    let wan = Sandbox::new(&server, "beside-wan");
    wide(&wan);
    assert!(!run_logged(&wan).contains(beside), "first run");
    let again = run_logged(&wan);
    assert!(again.contains(beside), "a re-run over 20 ms:\n{again}");
    assert_eq!(wan.counts("j").0, 0, "nothing changed, nothing sent");
}
