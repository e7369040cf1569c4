//! ferrysync against a hostile FTPS server (issue 12): `harness::hostile`, a small server
//! written for these tests, ignores REST, sends more or fewer bytes than listed, streams without
//! end, cuts listings with and without close_notify, names a third party in PASV and lists
//! hostile names. Each test says what must hold: nothing corrupt or unverified is committed,
//! nothing is deleted on a listing that may be cut, nothing is written outside the job's folder,
//! and every run ends within a bounded time.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::hostile::Misbehaviour;
use crate::harness::{Node, Run, Sandbox, Server};

/// Runs `ferrysync sync JOB`, killed after `limit` (then `None`): a hang is a failure the test
/// reports, not a test binary that never ends.
fn sync_within(s: &Sandbox, job: &str, limit: Duration) -> Option<(Run, Duration)> {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrysync"))
        .args(["sync", job])
        .env("FERRYSYNC_JOBS", &s.jobs)
        .env("FERRYSYNC_STATE", &s.state)
        .env_remove("FERRYSYNC_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while started.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            let run = Run {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).to_string(),
            };
            return Some((run, started.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A pull job (`extra` appended) against the hostile server, run once within 60 s.
fn pull(s: &Sandbox, extra: &str) -> Run {
    s.job("down", &format!("direction: pull\n{extra}"));
    let (run, _) = sync_within(s, "down", Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the pull did not end within 60 s"));
    run
}

/// No `.NAME.ferrysync-part` left in the local tree.
#[track_caller]
fn no_temporary_files(s: &Sandbox) {
    let tree = s.local_tree();
    assert!(
        tree.keys().all(|k| !k.contains(".ferrysync-part")),
        "{tree:?}"
    );
}

fn patterned(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn a_well_behaved_hostile_server_round_trips() {
    let (server, _seen) = Server::hostile(Misbehaviour::None);
    let up = Sandbox::new(&server, "honest");
    up.write_local("a.txt", b"hello");
    up.write_local("dir/b.bin", &patterned(70_000));
    up.job("up", "direction: push\n");
    up.sync("up").expect_code(0);
    assert_eq!(up.remote_tree(), up.local_tree());
    let down = Sandbox::sharing_remote_of(&up, "honest-back");
    pull(&down, "").expect_code(0);
    assert_eq!(down.local_tree(), up.local_tree());
}

/// A RETR that carries `how`'s wrong byte count: the file is not committed, the path is named
/// as failed, and the ledger does not record it.
fn a_wrong_length_is_not_committed(how: Misbehaviour, name: &str) {
    let (server, _seen) = Server::hostile(how.clone());
    let s = Sandbox::new(&server, name);
    s.put_remote("a.bin", &patterned(10_000));
    let run = pull(&s, "retries: 2\n");
    run.expect_code(1).expect_output("a.bin");
    assert!(!s.local.join("a.bin").exists(), "{how:?}: {}", run.text());
    // Too many bytes are discarded; too few stay in the temporary file for a resume (removed by
    // the next run when no journal entry accounts for them), never more than the file's size.
    for (name, node) in s.local_tree() {
        assert!(
            how == Misbehaviour::FewerBytes(10) && name == ".a.bin.ferrysync-part",
            "{how:?}: {name} left: {}",
            run.text()
        );
        assert!(matches!(node, Node::File(_, n) if n < 10_000), "{node:?}");
    }
    let (_, down, _, failed) = s.counts("down");
    assert_eq!(
        (down, failed),
        (0, 1),
        "{how:?}: {}",
        s.text_of_last_run("down")
    );
    // The next run still sees it as not synced: it tries again (and fails again).
    pull(&s, "retries: 1\n").expect_code(1);
}

#[test]
fn extra_bytes_on_retr_are_not_committed() {
    a_wrong_length_is_not_committed(Misbehaviour::ExtraBytes(10), "extra");
}

#[test]
fn fewer_bytes_on_retr_are_not_committed() {
    a_wrong_length_is_not_committed(Misbehaviour::FewerBytes(10), "fewer");
}

#[test]
fn a_server_that_ignores_rest_leaves_no_corrupt_file() {
    let (server, seen) = Server::hostile(Misbehaviour::IgnoreRest);
    let s = Sandbox::new(&server, "ignore-rest");
    // 2 MiB: journaled, so the retry after the first, short RETR resumes with REST.
    let content = patterned(2 << 20);
    s.put_remote("big.bin", &content);
    let run = pull(&s, "retries: 4\n");
    assert!(
        seen.commands().iter().any(|c| c.starts_with("REST ")),
        "no resume was tried: {}",
        run.text()
    );
    // Whatever the run did, the file under its final name is the server's file, byte for
    // byte, or absent (exit 1, the path named).
    match std::fs::read(s.local.join("big.bin")) {
        Ok(bytes) => {
            assert!(
                bytes == content,
                "a corrupt file was committed: {}",
                run.text()
            );
            run.expect_code(0);
        }
        Err(_) => {
            run.expect_code(1).expect_output("big.bin");
        }
    }
    no_temporary_files(&s);
}

#[test]
fn an_endless_retr_ends_the_transfer_with_a_bounded_file() {
    let (server, seen) = Server::hostile(Misbehaviour::EndlessRetr);
    let s = Sandbox::new(&server, "endless-retr");
    s.put_remote("a.bin", &patterned(1000));
    s.job("down", "direction: pull\nretries: 2\n");
    let (run, took) =
        sync_within(&s, "down", Duration::from_secs(30)).expect("the run did not end within 30 s");
    run.expect_code(1).expect_output("a.bin");
    assert!(!s.local.join("a.bin").exists(), "{}", run.text());
    no_temporary_files(&s);
    // ferrysync stops reading past the listed size: the server got rid of little.
    let sent = seen.data_bytes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(sent < 64 << 20, "the server sent {sent} bytes in {took:?}");
}

/// A listing without end: the run fails with an error within a bounded time, having read a
/// bounded amount.
fn an_endless_listing_fails_in_bounded_time(how: Misbehaviour, name: &str) {
    let (server, seen) = Server::hostile(how.clone());
    let s = Sandbox::new(&server, name);
    s.put_remote("a.txt", b"x");
    s.job("down", "direction: pull\nretries: 1\n");
    let result = sync_within(&s, "down", Duration::from_secs(30));
    let sent = seen.data_bytes.load(std::sync::atomic::Ordering::Relaxed);
    let (run, _) = result.unwrap_or_else(|| {
        panic!("{how:?}: the run did not end within 30 s ({sent} bytes of listing sent)")
    });
    run.expect_code(1);
    // A listing cap of any sensible size stops far below what the server would send.
    assert!(
        sent < 64 << 20,
        "{how:?}: {sent} bytes of listing read: {}",
        run.text()
    );
}

#[test]
fn an_endless_listing_fails_in_bounded_time_and_memory() {
    an_endless_listing_fails_in_bounded_time(Misbehaviour::EndlessListing, "endless-list");
}

#[test]
fn an_endless_listing_line_fails_in_bounded_time_and_memory() {
    an_endless_listing_fails_in_bounded_time(Misbehaviour::EndlessLine, "endless-line");
}

/// A pull mirror of 30 files, synced honestly once; then the listing is cut as `how` says.
/// Returns the second run; nothing local may have been deleted.
fn a_cut_listing_deletes_nothing(how: Misbehaviour, name: &str) -> Run {
    let (server, seen) = Server::hostile(Misbehaviour::None);
    let s = Sandbox::new(&server, name);
    for i in 0..30 {
        s.put_remote(&format!("f{i:02}.txt"), format!("file {i}").as_bytes());
    }
    pull(&s, "mode: mirror\n").expect_code(0);
    let before = s.local_tree();
    assert_eq!(before.len(), 30);
    seen.set(how.clone());
    let run = pull(&s, "mode: mirror\nretries: 1\n");
    run.expect_code(1);
    assert_eq!(
        s.local_tree(),
        before,
        "{how:?} deleted files: {}",
        run.text()
    );
    run
}

#[test]
fn a_listing_cut_with_close_notify_to_a_third_deletes_nothing() {
    // 10 of 30 lines and half of the 11th: clean TLS, 226. Only the default delete limit (half
    // of the destination) can tell, and does.
    let run =
        a_cut_listing_deletes_nothing(Misbehaviour::ListingCutWithCloseNotify(10), "cut-third");
    run.expect_output("refusing to delete");
}

#[test]
fn a_listing_cut_with_close_notify_before_any_line_deletes_nothing() {
    // Half of the first line: an empty source, refused as such.
    let run =
        a_cut_listing_deletes_nothing(Misbehaviour::ListingCutWithCloseNotify(0), "cut-empty");
    run.expect_output("refusing to delete");
}

#[test]
fn a_listing_cut_without_close_notify_says_so_and_deletes_nothing() {
    let run = a_cut_listing_deletes_nothing(
        Misbehaviour::ListingCutWithoutCloseNotify(25),
        "cut-no-notify",
    );
    run.expect_output("close_notify");
}

/// The PASV address of the third-party test: loopback, so nothing leaves the machine, yet not
/// 127.0.0.1 (where the data port is) nor an address of the fault proxy (127.0.0.2-120).
const THIRD_PARTY: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 209);

#[test]
fn a_pasv_reply_naming_a_third_party_is_not_followed_under_auto() {
    let (server, seen) = Server::hostile(Misbehaviour::PasvThirdParty(THIRD_PARTY));
    let s = Sandbox::new(&server, "third-party");
    s.put_remote("a.txt", b"from the control peer");
    let base = s.job_yaml("direction: pull\n");
    let (head, tls) = base.split_at(base.find("  tls:\n").unwrap());
    s.write_job("down", &format!("{head}  passive_address: auto\n{tls}"));
    let (run, _) = sync_within(&s, "down", Duration::from_secs(60)).expect("ended");
    run.expect_code(0);
    assert_eq!(
        std::fs::read(s.local.join("a.txt")).unwrap(),
        b"from the control peer"
    );
    let commands = seen.commands();
    assert!(commands.iter().any(|c| c == "EPSV"), "{commands:?}");
    assert!(commands.iter().any(|c| c == "PASV"), "{commands:?}");
    let decoy = seen
        .decoy_connections
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(decoy, 0, "ferrysync connected to {THIRD_PARTY}");
}

#[test]
fn hostile_names_are_refused_per_path_and_nothing_is_written_outside() {
    let (server, _seen) = Server::hostile(Misbehaviour::HostileNames);
    let s = Sandbox::new(&server, "names");
    s.put_remote("ok.txt", b"fine");
    // `../x` would land in the sandbox's folder, beside `local/`: watched from there.
    let outside_before = crate::harness::read_tree(s.dir.path());
    let run = pull(&s, "retries: 1\n");
    // The good file arrives; each hostile name is refused and reported, and none reaches a
    // local path. (A name with ESC is a legal file name: it is requested, shown escaped, and
    // fails here with 550; an LF splits the MLSD line into two names, `lf` and `name`.)
    let files: Vec<_> = s
        .local_tree()
        .into_iter()
        .filter(|(name, _)| !name.ends_with(".ferrysync-part"))
        .collect();
    assert_eq!(
        files,
        vec![("ok.txt".to_string(), Node::File(blake3::hash(b"fine"), 4))],
        "{}",
        run.text()
    );
    run.expect_code(1);
    for refused in [
        "refusing remote entry \"../x\"",
        "refusing remote entry \"a/b\"",
        "refusing remote entry \"..\"",
        "refusing remote entry \"cr\\rname\"",
    ] {
        run.expect_output(refused);
    }
    // The name with ESC is shown escaped, never raw (the log's own colours aside).
    assert!(!run.text().contains("esc\u{1b}[31mred"), "{}", run.text());
    run.expect_output("esc\\e[31mred");
    let outside_after = crate::harness::read_tree(s.dir.path());
    let new: Vec<_> = outside_after
        .keys()
        .filter(|k| !outside_before.contains_key(*k))
        .filter(|k| {
            !["local/", "state", "jobs/"]
                .iter()
                .any(|p| k.starts_with(p))
        })
        .collect();
    assert!(new.is_empty(), "written outside the job's folder: {new:?}");
}

#[test]
fn a_refused_retr_leaves_no_temporary_file() {
    let (server, _seen) = Server::hostile(Misbehaviour::HostileNames);
    let s = Sandbox::new(&server, "names-temp");
    s.put_remote("ok.txt", b"fine");
    let run = pull(&s, "retries: 1\n");
    no_temporary_files(&s);
    run.expect_code(1);
}

/// A server that accepts AUTH TLS and then sends plain text where the handshake belongs is out
/// of step, not misconfigured: the run connects again (with the job's retries) and succeeds,
/// instead of failing at once as it does for a certificate it cannot verify.
#[test]
fn plain_text_after_auth_tls_is_retried_on_a_new_connection() {
    let (server, seen) = Server::hostile(Misbehaviour::PlainAfterAuthTls(1));
    let s = Sandbox::new(&server, "outofstep");
    server.mkdirs(&s.remote_root());
    s.write_local("a.csv", b"after a retry");
    s.job("j", "");
    let run = s.ferrysync_with_env(&["sync", "j"], &[("FERRYSYNC_LOG", "warn")]);
    eprintln!("{}{}", run.stdout, run.stderr);
    run.expect_code(0).expect_output(
        "the server accepted AUTH TLS, then sent plain text where the TLS handshake belonged",
    );
    assert_eq!(
        std::fs::read(s.remote_root().join("a.csv")).unwrap(),
        b"after a retry"
    );
    let auths = seen
        .commands()
        .iter()
        .filter(|c| c.to_ascii_uppercase().starts_with("AUTH TLS"))
        .count();
    assert!(auths >= 2, "one AUTH TLS per connection: {auths}");
}
