//! Integration tests: the `ferrysync` binary against real FTPS servers on 127.0.0.1. Every
//! scenario runs against the in-process loopback server, and against vsftpd (explicit and
//! implicit), ProFTPD (explicit and implicit) and Pure-FTPd when tests/servers/*.sh have
//! started them (tests/run.sh does, and sets FERRYSYNC_REQUIRE_VSFTPD=1 so none can be
//! skipped there). No test mocks the FTP protocol.

mod agent;
mod harness;
mod nat;
mod resume;

use harness::{populate, Node, Sandbox, Server};

/// Runs each scenario once per server kind.
macro_rules! against_servers {
    ($($name:ident),* $(,)?) => {
        mod loopback {
            $( #[test] fn $name() { super::scenarios::$name(&super::Server::loopback()); } )*
        }
        mod vsftpd {
            $( #[test] fn $name() { if let Some(s) = super::Server::vsftpd() { super::scenarios::$name(&s); } } )*
        }
        mod proftpd {
            $( #[test] fn $name() { if let Some(s) = super::Server::proftpd() { super::scenarios::$name(&s); } } )*
        }
        mod proftpd_implicit {
            $( #[test] fn $name() { if let Some(s) = super::Server::proftpd_implicit() { super::scenarios::$name(&s); } } )*
        }
        mod pureftpd {
            $( #[test] fn $name() { if let Some(s) = super::Server::pureftpd() { super::scenarios::$name(&s); } } )*
        }
        mod vsftpd_implicit {
            $( #[test] fn $name() { if let Some(s) = super::Server::vsftpd_implicit() { super::scenarios::$name(&s); } } )*
        }
    };
}

against_servers!(
    push_tree_then_nothing_then_one_change_then_deletes,
    pull_tree_then_nothing_then_one_change_then_deletes,
    wrong_password_changes_nothing,
    wrong_pin_changes_nothing,
    untrusted_certificate_changes_nothing,
    max_delete_refuses_before_any_change,
    dry_run_changes_nothing,
    binary_files_survive_byte_for_byte,
    one_gib_file_push_then_pull,
    kill_during_upload_then_resume,
    kill_during_download_then_resume,
);

mod scenarios {
    use super::*;
    pub use crate::resume::{kill_during_download_then_resume, kill_during_upload_then_resume};

    fn without_remote_temp_files(s: &Sandbox) {
        let leftovers: Vec<String> = s
            .remote_tree()
            .keys()
            .filter(|k| k.ends_with(".ferrysync-part"))
            .cloned()
            .collect();
        assert!(
            leftovers.is_empty(),
            "temporary files left on the server: {leftovers:?}"
        );
    }

    pub fn push_tree_then_nothing_then_one_change_then_deletes(server: &Server) {
        let s = Sandbox::new(server, "push");
        populate(&s.local, 1000);
        s.job("mirror", "direction: push\nmode: mirror\ntransfers: 4\n");
        let files = s
            .local_tree()
            .values()
            .filter(|n| matches!(n, Node::File(..)))
            .count() as u64;
        assert_eq!(files, 1000);

        // 1. The first run sends the whole tree, empty files and directories included.
        s.sync("mirror").expect_code(0);
        assert_eq!(s.remote_tree(), s.local_tree());
        assert_eq!(s.counts("mirror"), (1000, 0, 0, 0));
        without_remote_temp_files(&s);

        // 2. Nothing changed: nothing is sent.
        s.sync("mirror").expect_code(0);
        assert_eq!(s.counts("mirror"), (0, 0, 0, 0));

        // 3. One modified file: exactly one upload, checked with an independent client.
        s.write_local("dir 1/f1.dat", b"changed content");
        s.sync("mirror").expect_code(0);
        assert_eq!(s.counts("mirror"), (1, 0, 0, 0));
        assert_eq!(s.curl_get("dir 1/f1.dat"), b"changed content");
        assert_eq!(s.remote_tree(), s.local_tree());

        // 4. A touched file with the same content is recorded, not sent.
        let p = s.local.join("f5.dat");
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(60))
            .unwrap();
        s.sync("mirror").expect_code(0);
        assert_eq!(s.counts("mirror"), (0, 0, 0, 0));

        // 5. A deleted file: copy mode keeps the remote one, mirror mode deletes it.
        std::fs::remove_file(s.local.join("f10.dat")).unwrap();
        s.job("mirror", "direction: push\nmode: copy\n");
        s.sync("mirror").expect_code(0);
        assert_eq!(s.counts("mirror"), (0, 0, 0, 0));
        assert!(s.remote_root().join("f10.dat").exists());
        s.job("mirror", "direction: push\nmode: mirror\n");
        s.sync("mirror").expect_code(0);
        assert_eq!(s.counts("mirror"), (0, 0, 1, 0));
        assert!(!s.remote_root().join("f10.dat").exists());
        assert_eq!(s.remote_tree(), s.local_tree());
    }

    pub fn pull_tree_then_nothing_then_one_change_then_deletes(server: &Server) {
        let s = Sandbox::new(server, "pull");
        let source = tempfile::tempdir().unwrap();
        populate(source.path(), 1000);
        for (rel, node) in harness::read_tree(source.path()) {
            match node {
                Node::Dir => server.mkdirs(&s.remote_root().join(&rel)),
                Node::File(..) => {
                    s.put_remote(&rel, &std::fs::read(source.path().join(&rel)).unwrap())
                }
            }
        }
        server.mkdirs(&s.remote_root());
        s.job("mirror", "direction: pull\nmode: mirror\ntransfers: 3\n");

        s.sync("mirror").expect_code(0);
        assert_eq!(s.local_tree(), s.remote_tree());
        assert_eq!(s.counts("mirror"), (0, 1000, 0, 0));

        s.sync("mirror").expect_code(0);
        assert_eq!(s.counts("mirror"), (0, 0, 0, 0));

        // A changed remote file (new size, so even minute-precise listings see it).
        s.put_remote("dir 2/sub-2/f2.dat", b"new remote content");
        s.sync("mirror").expect_code(0);
        assert_eq!(s.counts("mirror"), (0, 1, 0, 0));
        assert_eq!(
            std::fs::read(s.local.join("dir 2/sub-2/f2.dat")).unwrap(),
            b"new remote content"
        );

        std::fs::remove_file(s.remote_root().join("f15.dat")).unwrap();
        s.job("mirror", "direction: pull\nmode: copy\n");
        s.sync("mirror").expect_code(0);
        assert_eq!(s.counts("mirror"), (0, 0, 0, 0));
        assert!(s.local.join("f15.dat").exists());
        s.job("mirror", "direction: pull\nmode: mirror\n");
        s.sync("mirror").expect_code(0);
        assert_eq!(s.counts("mirror"), (0, 0, 1, 0));
        assert!(!s.local.join("f15.dat").exists());
        assert_eq!(s.local_tree(), s.remote_tree());
    }

    pub fn wrong_password_changes_nothing(server: &Server) {
        let s = Sandbox::new(server, "badpw");
        s.write_local("a.txt", b"a");
        let bad = s.dir.path().join("bad-password");
        std::fs::write(&bad, "not-the-password").unwrap();
        let yaml = s.job_yaml("").replace(
            &server.password_file.display().to_string(),
            &bad.display().to_string(),
        );
        s.write_job("j", &yaml);
        let run = s.sync("j");
        run.expect_code(1).expect_output("login as");
        assert!(
            !run.stdout.contains("not-the-password") && !run.stderr.contains("not-the-password"),
            "password leaked:\n{}",
            run.text()
        );
        assert!(!s.remote_root().exists());
        let status = s.ferrysync(&["status", "--json"]);
        assert!(!status.stdout.contains("not-the-password"));
        assert!(
            status.stdout.contains("\"outcome\": \"failed\""),
            "{}",
            status.text()
        );
        let v: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
        assert_eq!(v["jobs"][0]["state"], "failing");
        assert_eq!(v["jobs"][0]["consecutive_failures"], 1);
        assert!(v["jobs"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("login as"));
    }

    pub fn wrong_pin_changes_nothing(server: &Server) {
        let s = Sandbox::new(server, "badpin");
        s.write_local("a.txt", b"a");
        let pin = ["00"; 32].join(":");
        s.job(
            "j",
            &format!("    pin_sha256: \"{pin}\"\n").replace("    pin", "    pin"),
        );
        // The pin goes under remote.tls, after ca_file.
        let yaml = s
            .job_yaml("")
            .replace("  tls:\n", &format!("  tls:\n    pin_sha256: \"{pin}\"\n"));
        s.write_job("j", &yaml);
        s.sync("j")
            .expect_code(1)
            .expect_output("matches no tls.pin_sha256");
        assert!(!s.remote_root().exists());

        // The right pin (of the server's certificate) works.
        let pem = std::fs::read(&server.ca).unwrap();
        let der = rustls_pemfile_certs(&pem);
        let good = ferrysync::tls::fingerprint(&der).to_string();
        if server.kind == "loopback" {
            let yaml = s.job_yaml("").replace(
                &format!("    ca_file: {}\n", server.ca.display()),
                &format!("    pin_sha256: \"{good}\"\n"),
            );
            s.write_job("j", &yaml);
            s.sync("j").expect_code(0);
            assert!(s.remote_root().join("a.txt").exists());
        }
    }

    fn rustls_pemfile_certs(pem: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(pem);
        let body: String = text
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        base64_decode(&body)
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0);
        for c in s.bytes().filter(|c| *c != b'=') {
            let v = T.iter().position(|t| *t == c).unwrap() as u32;
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        out
    }

    pub fn untrusted_certificate_changes_nothing(server: &Server) {
        let s = Sandbox::new(server, "untrusted");
        s.write_local("a.txt", b"a");
        // No ca_file: the system trust store does not know the test CA.
        let yaml = s.job_yaml("").replace(
            &format!("  tls:\n    ca_file: {}\n", server.ca.display()),
            "",
        );
        s.write_job("j", &yaml);
        s.sync("j")
            .expect_code(1)
            .expect_output("UnknownIssuer")
            .expect_output("tls.ca_file");
        assert!(!s.remote_root().exists());
    }

    pub fn max_delete_refuses_before_any_change(server: &Server) {
        let s = Sandbox::new(server, "maxdel");
        for i in 0..10 {
            s.write_local(&format!("f{i}"), format!("{i}").as_bytes());
        }
        s.job("j", "max_delete: 30%\n");
        s.sync("j").expect_code(0);
        for i in 0..5 {
            std::fs::remove_file(s.local.join(format!("f{i}"))).unwrap();
        }
        s.write_local("new", b"n");
        let before = s.remote_tree();
        s.sync("j")
            .expect_code(1)
            .expect_output("refusing to delete 5 of 10 files");
        assert_eq!(
            s.remote_tree(),
            before,
            "nothing may change when deletes are refused"
        );
        s.job("j", "max_delete: 5\n");
        s.sync("j").expect_code(0);
        assert_eq!(s.remote_tree(), s.local_tree());
    }

    pub fn dry_run_changes_nothing(server: &Server) {
        let s = Sandbox::new(server, "dry");
        s.write_local("x/a.txt", b"a");
        s.job("j", "");
        let run = s.ferrysync(&["sync", "j", "--dry-run"]);
        run.expect_code(0)
            .expect_output("upload   x/a.txt")
            .expect_output("nothing was changed");
        assert!(!s.remote_root().join("x").exists());
        let hist = s.ferrysync(&["history", "j", "--json"]);
        assert_eq!(
            hist.stdout.trim(),
            "[]",
            "a dry run leaves no trace in the ledger"
        );
    }

    pub fn binary_files_survive_byte_for_byte(server: &Server) {
        let s = Sandbox::new(server, "binary");
        let mut data = Vec::new();
        for i in 0..(3 << 20) {
            data.push(match i % 7 {
                0 => b'\r',
                1 => b'\n',
                2 => 0,
                _ => (i * 131 % 251) as u8,
            });
        }
        s.write_local("bin/data.bin", &data);
        s.job("up", "");
        s.sync("up").expect_code(0);
        assert_eq!(s.curl_get("bin/data.bin"), data);
        let back = Sandbox::sharing_remote_of(&s, "binary-back");
        back.job("down", "direction: pull\n");
        back.sync("down").expect_code(0);
        assert_eq!(
            std::fs::read(back.local.join("bin/data.bin")).unwrap(),
            data
        );
    }

    /// A 1 GiB file up, then down into another tree: both copies hash like the source, and
    /// the server's copy (read from its disk) too.
    pub fn one_gib_file_push_then_pull(server: &Server) {
        let (source, hash) = harness::gib_file();
        let s = Sandbox::new(server, "gib");
        std::fs::create_dir_all(s.local.join("big")).unwrap();
        std::fs::hard_link(source, s.local.join("big/1 GiB.bin")).unwrap();
        s.job("up", "transfers: 2\n");
        s.sync("up").expect_code(0);
        assert_eq!(s.counts("up"), (1, 0, 0, 0));
        let remote = s.remote_root().join("big/1 GiB.bin");
        assert_eq!(harness::hash_file(&remote), *hash);

        let back = Sandbox::sharing_remote_of(&s, "gib-back");
        back.job("down", "direction: pull\n");
        back.sync("down").expect_code(0);
        assert_eq!(back.counts("down"), (0, 1, 0, 0));
        assert_eq!(harness::hash_file(&back.local.join("big/1 GiB.bin")), *hash);
        // Two more GiB per server would add up: give the disk back now.
        let _ = std::fs::remove_file(&remote);
        let _ = std::fs::remove_file(back.local.join("big/1 GiB.bin"));
    }
}

// ---- scenarios that need a particular server ----

/// A write-only drop folder refuses RNFR/RNTO, SIZE and RETR: the default upload fails with
/// the server's reply and leaves no file under its final name; with `upload.temp_name: false`
/// and `upload.verify: none` the files arrive, with a warning that says what is given up.
#[test]
fn a_write_only_drop_folder_needs_and_accepts_the_quirk_options() {
    let Some(server) = Server::vsftpd_drop_folder() else {
        return;
    };
    let s = Sandbox::new(&server, "drop");
    populate(&s.local, 10);
    s.job("strict", "");
    s.sync("strict").expect_code(1).expect_output("550");
    let finals: Vec<String> = s
        .remote_tree()
        .into_iter()
        .filter(|(k, n)| matches!(n, harness::Node::File(..)) && !k.ends_with(".ferrysync-part"))
        .map(|(k, _)| k)
        .collect();
    assert!(
        finals.is_empty(),
        "files under their final names: {finals:?}"
    );

    let quirks = Sandbox::new(&server, "drop-ok");
    populate(&quirks.local, 10);
    quirks.job("j", "upload:\n  temp_name: false\n  verify: none\n");
    quirks
        .sync("j")
        .expect_code(0)
        .expect_output("upload.temp_name: false");
    assert_eq!(quirks.remote_tree(), quirks.local_tree());
}

/// A server that allows two connections per client answers the third and fourth with 421:
/// the run goes on with two connections instead of failing.
#[test]
fn too_many_connections_lowers_the_parallelism() {
    let Some(server) = Server::vsftpd_limited() else {
        return;
    };
    let s = Sandbox::new(&server, "limited");
    populate(&s.local, 60);
    s.job("j", "transfers: 4\n");
    s.sync("j")
        .expect_code(0)
        .expect_output("going on with fewer");
    assert_eq!(s.remote_tree(), s.local_tree());
}

/// A wide tree (300 directories) is listed on several connections at once, each directory
/// once, and those connections then carry the transfers: vsftpd's protocol log shows LISTs
/// from more than one session in a re-run.
#[test]
fn a_wide_tree_is_listed_on_several_connections() {
    let Some(server) = Server::vsftpd() else {
        return;
    };
    let log = harness::vsftpd_log();
    let log = log.as_path();
    let s = Sandbox::new(&server, "wide");
    // Wide enough that listing alone takes longer than logging in more connections, even on
    // loopback (20 directories do not: see scan::worth_more_connections).
    for d in 0..300 {
        s.write_local(&format!("d{d:03}/f.dat"), format!("{d}").as_bytes());
    }
    s.job("j", "transfers: 4\n");
    s.sync("j").expect_code(0);
    let from = std::fs::metadata(log).unwrap().len();
    s.write_local("d299/f.dat", b"changed");
    s.sync("j").expect_code(0);
    assert_eq!(s.counts("j"), (1, 0, 0, 0));
    // Other tests use the same vsftpd: only sessions that went into this sandbox count.
    let commands = harness::vsftpd_commands(log, from);
    let ours: std::collections::BTreeSet<&str> = commands
        .iter()
        .filter(|(_, c)| c.starts_with(&format!("CWD {}", s.remote_dir)))
        .map(|(pid, _)| pid.as_str())
        .collect();
    let lists: Vec<&(String, String)> = commands
        .iter()
        .filter(|(pid, c)| c == "LIST" && ours.contains(pid.as_str()))
        .collect();
    assert_eq!(lists.len(), 301, "every directory once: {lists:?}");
    let sessions: std::collections::BTreeSet<&str> =
        lists.iter().map(|(pid, _)| pid.as_str()).collect();
    assert!(sessions.len() > 1, "one connection listed everything");
    assert_eq!(s.remote_tree(), s.local_tree());
}

/// vsftpd with `require_cert=YES` and `validate_cert=YES`: without a client certificate the
/// handshake is refused with a clear, permanent error (no retries); with the one the test CA
/// signed, the push works.
#[test]
fn client_certificate_authentication_with_vsftpd() {
    let Some(server) = Server::vsftpd_client_cert() else {
        return;
    };
    let s = Sandbox::new(&server, "clientcert");
    populate(&s.local, 20);
    s.job("nocert", "");
    let started = std::time::Instant::now();
    s.sync("nocert")
        .expect_code(1)
        .expect_output("requires a client certificate");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "a refused certificate was retried"
    );
    assert!(!s.remote_root().exists());

    let certs = format!(
        "  tls:\n    client_cert: {}\n    client_key: {}\n",
        server.ca.with_file_name("client.pem").display(),
        server.ca.with_file_name("client.key").display()
    );
    s.write_job("cert", &s.job_yaml("").replace("  tls:\n", &certs));
    s.sync("cert").expect_code(0);
    assert_eq!(s.remote_tree(), s.local_tree());
}

/// ProFTPD with TLS 1.3 refuses a data connection that cannot resume the control session (425),
/// and uploads bring no new tickets, so the control connection's two run out. ferrysync counts
/// them and reconnects with TLS 1.2 before that happens: no transfer is refused or retried.
/// With `tls.max_version: "1.2"` it starts there.
#[test]
fn proftpd_with_tls13_falls_back_to_tls12() {
    let Some(server) = Server::proftpd_tls13() else {
        return;
    };
    let s = Sandbox::new(&server, "tls13");
    for i in 0..40 {
        s.write_local(&format!("d/f{i}"), format!("{i}").as_bytes());
    }
    s.job("j", "transfers: 2\n");
    let run = s.sync("j");
    run.expect_code(0);
    // The used-up tickets are seen before the server refuses anything: no 425, no retry.
    assert!(
        !run.stderr.contains("425") && !run.stderr.contains("retrying"),
        "{}",
        run.text()
    );
    assert_eq!(s.remote_tree(), s.local_tree());
    assert_eq!(s.counts("j"), (40, 0, 0, 0));

    let capped = Sandbox::new(&server, "tls12");
    populate(&capped.local, 40);
    let yaml = capped
        .job_yaml("transfers: 2\n")
        .replace("  tls:\n", "  tls:\n    max_version: \"1.2\"\n");
    capped.write_job("j", &yaml);
    let run = capped.sync("j");
    run.expect_code(0);
    assert!(!run.stderr.contains("425"), "{}", run.text());
    assert_eq!(capped.remote_tree(), capped.local_tree());
}

/// ProFTPD listing LIST times in UTC+3 (tests/run.sh starts it so), or `None`, said why.
fn proftpd_listing_in_utc_plus_3() -> Option<Server> {
    let server = Server::proftpd()?;
    if std::env::var("FERRYSYNC_PROFTPD_LIST_TZ").as_deref() != Ok("<+03>-3") {
        eprintln!("skipped: ProFTPD was not started with PROFTPD_LIST_TZ=<+03>-3");
        return None;
    }
    Some(server)
}

/// `secs` after the Unix epoch.
fn at(secs: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64)
}

/// An hour ago, at second 17 of its minute: recent enough for LIST to show the minute.
fn an_hour_ago() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    now - 3600 - now % 60 + 17
}

/// The modification time of the local copy of `rel`.
fn local_mtime(s: &Sandbox, rel: &str) -> std::time::SystemTime {
    std::fs::metadata(s.local.join(rel))
        .unwrap()
        .modified()
        .unwrap()
}

/// Sets the modification time of the server's copy of `rel`.
fn set_remote_mtime(s: &Sandbox, rel: &str, secs: i64) {
    std::fs::File::options()
        .write(true)
        .open(s.remote_root().join(rel))
        .unwrap()
        .set_modified(at(secs))
        .unwrap();
}

/// ProFTPD as tests/run.sh starts it (`PROFTPD_LIST_TZ="<+03>-3"`) lists times in UTC+3, as
/// many servers do, while its MDTM and MLSD speak UTC. With `listing: list` ferrysync reads
/// LIST, learns the offset from one file's MDTM, and gives pulled files their exact times; a
/// re-run sees no change, also for a file old enough to be listed with only its year, and a
/// same-size change a minute later is still seen.
#[test]
fn list_with_server_local_times_keeps_exact_mtimes() {
    let Some(server) = proftpd_listing_in_utc_plus_3() else {
        return;
    };
    let s = Sandbox::new(&server, "listtz");
    let set_remote_mtime = |rel: &str, secs: i64| set_remote_mtime(&s, rel, secs);
    let recent = an_hour_ago();
    let old = 1_709_287_207; // 2024-03-01 10:00:07 UTC
    s.put_remote("recent.txt", b"recent");
    s.put_remote("sub dir/old \u{fc}.txt", b"old");
    set_remote_mtime("recent.txt", recent);
    set_remote_mtime("sub dir/old \u{fc}.txt", old);
    s.job("j", "  listing: list\ndirection: pull\n");
    s.sync("j").expect_code(0);
    assert_eq!(s.counts("j"), (0, 2, 0, 0));
    let mtime = |rel: &str| local_mtime(&s, rel);
    assert_eq!(mtime("recent.txt"), at(recent));
    assert_eq!(mtime("sub dir/old \u{fc}.txt"), at(old));

    s.sync("j").expect_code(0);
    assert_eq!(s.counts("j"), (0, 0, 0, 0), "{}", s.text_of_last_run("j"));

    s.put_remote("recent.txt", b"RECENT");
    set_remote_mtime("recent.txt", recent + 120);
    s.sync("j").expect_code(0);
    assert_eq!(s.counts("j"), (0, 1, 0, 0));
    assert_eq!(
        std::fs::read(s.local.join("recent.txt")).unwrap(),
        b"RECENT"
    );
    assert_eq!(mtime("recent.txt"), at(recent + 120));
}

/// The walk lists the root first; there the only file is older than six months (LIST shows its
/// day, in the server's zone, UTC+3), and it was modified at 22:30 UTC, already the next day
/// there. The offset is learnt only from the recent file in the subdirectory listed later, so
/// the root must wait for it: read as UTC, the old file's day would not contain its time, and it
/// would get a wrong mtime and look changed in every run.
#[test]
fn list_times_wait_for_the_offset_learnt_in_a_later_directory() {
    let Some(server) = proftpd_listing_in_utc_plus_3() else {
        return;
    };
    let s = Sandbox::new(&server, "listtzlater");
    let set_remote_mtime = |rel: &str, secs: i64| set_remote_mtime(&s, rel, secs);
    let recent = an_hour_ago();
    let late_evening = 1_709_332_207; // 2024-03-01 22:30:07 UTC, 2024-03-02 01:30 in UTC+3
    s.put_remote("old.txt", b"old");
    s.put_remote("sub/recent.txt", b"recent");
    set_remote_mtime("old.txt", late_evening);
    set_remote_mtime("sub/recent.txt", recent);
    s.job("j", "  listing: list\ndirection: pull\ntransfers: 1\n");
    s.sync("j").expect_code(0);
    assert_eq!(s.counts("j"), (0, 2, 0, 0));
    let mtime = |rel: &str| local_mtime(&s, rel);
    assert_eq!(mtime("old.txt"), at(late_evening));
    assert_eq!(mtime("sub/recent.txt"), at(recent));
    s.sync("j").expect_code(0);
    assert_eq!(s.counts("j"), (0, 0, 0, 0), "{}", s.text_of_last_run("j"));
}

#[test]
fn implicit_ftps_push_and_pull_with_vsftpd() {
    let Some(server) = Server::vsftpd_implicit() else {
        return;
    };
    let s = Sandbox::new(&server, "implicit");
    populate(&s.local, 50);
    s.job("up", "");
    s.sync("up").expect_code(0);
    assert_eq!(s.remote_tree(), s.local_tree());
    s.sync("up").expect_code(0);
    assert_eq!(s.counts("up"), (0, 0, 0, 0));
    let back = Sandbox::sharing_remote_of(&s, "implicit-back");
    back.job("down", "direction: pull\n");
    back.sync("down").expect_code(0);
    assert_eq!(back.local_tree(), s.local_tree());
}

#[test]
fn a_server_without_tls_is_refused() {
    let server = Server::loopback_plain();
    let s = Sandbox::new(&server, "plain");
    s.write_local("a", b"a");
    s.job("j", "");
    s.sync("j")
        .expect_code(1)
        .expect_output("does not offer FTPS")
        .expect_output("never falls back");
    assert!(!s.remote_root().exists());
}

#[test]
fn plaintext_needs_opt_in_and_then_works() {
    let server = Server::loopback_plain();
    let s = Sandbox::new(&server, "plain-ok");
    s.write_local("a", b"a");
    let yaml = s
        .job_yaml("")
        .replace("  security: explicit\n", "  security: none\n");
    s.write_job("j", &yaml);
    s.sync("j").expect_code(2).expect_output("allow_plaintext");
    s.write_job(
        "j",
        &yaml.replace(
            "  security: none\n",
            "  security: none\n  allow_plaintext: true\n",
        ),
    );
    s.sync("j").expect_code(0);
    assert_eq!(s.remote_tree(), s.local_tree());
}

#[test]
fn hostile_remote_names_are_refused_and_the_rest_syncs() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "hostile");
    s.put_remote("good.txt", b"good");
    s.put_remote("evil\\..\\..\\x", b"evil");
    s.job("j", "direction: pull\n");
    s.sync("j")
        .expect_code(1)
        .expect_output("refusing remote entry")
        .expect_output("path separator");
    assert_eq!(std::fs::read(s.local.join("good.txt")).unwrap(), b"good");
    let local: Vec<String> = s.local_tree().into_keys().collect();
    assert_eq!(local, ["good.txt"]);
}

#[test]
fn check_reports_file_line_and_column() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "check");
    // Lines of the generated part of a job file; the options under test follow it.
    let base = s.job_yaml("").lines().count();
    s.job(
        "good",
        "schedule: \"*/15 * * * 1-5\"\ntimezone: Europe/Amsterdam\n",
    );
    s.ferrysync(&["check"])
        .expect_code(0)
        .expect_output("ok   good");
    s.job("bad", "schedule: \"*/15 * * * 1-5\"\ntransfer: 4\n");
    let run = s.ferrysync(&["check"]);
    run.expect_code(2)
        .expect_output(&format!(
            "{}:{}:1:",
            s.jobs.join("bad.yaml").display(),
            base + 2
        ))
        .expect_output("transfer");
    s.job("bad", "schedule: \"99 * * * *\"\n");
    s.ferrysync(&["check"])
        .expect_code(2)
        .expect_output(&format!("bad.yaml:{}:1:", base + 1));
    s.write_job("bad", "local: [unclosed\n");
    s.ferrysync(&["check"])
        .expect_code(2)
        .expect_output("bad.yaml:");
    // `sync` of a bad job is a configuration error too.
    s.ferrysync(&["sync", "bad"]).expect_code(2);
}

#[test]
fn status_json_has_the_documented_fields() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "status");
    s.write_local("a", b"abc");
    s.job("j", "schedule: \"0 3 * * *\"\ntimezone: UTC\n");
    s.sync("j").expect_code(0);
    let run = s.ferrysync(&["status", "--json"]);
    run.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let job = &v["jobs"][0];
    for key in [
        "name",
        "state",
        "consecutive_failures",
        "last_error",
        "direction",
        "local",
        "remote",
        "schedule",
        "timezone",
        "next_run",
        "last_success",
        "synced_files",
        "last_run",
    ] {
        assert!(
            job.get(key).is_some(),
            "status --json lacks {key}: {}",
            run.stdout
        );
    }
    assert_eq!(job["synced_files"], 1);
    assert!(job["next_run"].as_str().unwrap().ends_with("T03:00:00Z"));
    let last = &job["last_run"];
    for key in [
        "id",
        "trigger",
        "started_at",
        "ended_at",
        "outcome",
        "files_up",
        "bytes_up",
        "files_down",
        "bytes_down",
        "files_deleted",
        "files_failed",
        "error",
        "failures",
    ] {
        assert!(last.get(key).is_some(), "last_run lacks {key}");
    }
    assert_eq!(last["outcome"], "ok");
    assert_eq!(last["bytes_up"], 3);
    s.ferrysync(&["status", "nosuchjob"]).expect_code(2);
}

// ---- the harness's fault proxy, proved against the binary and the loopback server ----

mod fault_proxy_selftest {
    use std::path::Path;
    use std::time::Duration;

    use super::harness::fault_proxy::{loopback_behind_proxy, Conn, Dir, Fault};
    use super::harness::Sandbox;

    const SIZE: usize = 8 << 20;

    /// SIZE bytes that TLS cannot shrink (xorshift).
    fn big_file() -> Vec<u8> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..SIZE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    }

    /// Whatever is under `path` on the server is the whole file, or nothing is.
    #[track_caller]
    fn no_half_file(path: &Path, data: &[u8]) {
        if let Ok(got) = std::fs::read(path) {
            assert!(
                got == data,
                "{} holds {} of {} bytes (or other bytes) under its final name",
                path.display(),
                got.len(),
                data.len()
            );
        }
    }

    #[test]
    fn a_push_through_the_proxy_without_faults_succeeds() {
        let (server, proxy) = loopback_behind_proxy();
        let s = Sandbox::new(&server, "proxy-ok");
        let data = big_file();
        s.write_local("big.bin", &data);
        s.write_job("j", &proxy.job_yaml(&s, ""));
        s.sync("j").expect_code(0);
        assert_eq!(
            std::fs::read(s.remote_root().join("big.bin")).unwrap(),
            data
        );
        assert!(
            proxy.data_bytes_to_server() >= SIZE as u64,
            "only {} data bytes went through the proxy",
            proxy.data_bytes_to_server()
        );
        assert!(proxy.control_connections() >= 1 && proxy.data_connections() >= 1);
        assert!(proxy.fired().is_empty());
    }

    /// Today the run reports the path as failed; with retries it may succeed. Either way no
    /// half file appears under the final name, and a run without faults completes it.
    #[test]
    fn a_data_connection_cut_halfway_leaves_no_half_file() {
        let (server, proxy) = loopback_behind_proxy();
        let s = Sandbox::new(&server, "proxy-cut-data");
        let data = big_file();
        s.write_local("dir/big.bin", &data);
        s.write_job("j", &proxy.job_yaml(&s, ""));
        proxy.set_data_fault(Fault::cut(Conn::First, SIZE as u64 / 2).dir(Dir::ToServer));
        let run = s.sync("j");
        assert!(
            proxy.wait_fired(1, Duration::from_secs(5)),
            "the fault never fired:\n{}",
            run.text()
        );
        eprintln!("{}", run.text());
        let target = s.remote_root().join("dir/big.bin");
        if run.code != 0 {
            run.expect_code(1).expect_output("failed: dir/big.bin: ");
        }
        no_half_file(&target, &data);

        proxy.clear_faults();
        s.sync("j").expect_code(0);
        assert_eq!(std::fs::read(&target).unwrap(), data);
    }

    /// The control connection is cut while the data connection is busy (stalled for a moment
    /// so the cut lands mid-upload): a clear error, and nothing under the final name.
    #[test]
    fn a_control_connection_cut_mid_upload_is_reported() {
        let (server, proxy) = loopback_behind_proxy();
        let s = Sandbox::new(&server, "proxy-cut-control");
        let data = big_file();
        s.write_local("big.bin", &data);
        s.write_job("j", &proxy.job_yaml(&s, "transfers: 1\n"));
        proxy.set_data_fault(
            Fault::stall(Conn::First, SIZE as u64 / 4, Duration::from_millis(500))
                .dir(Dir::ToServer),
        );
        let (run, fired, cut) = std::thread::scope(|scope| {
            let sync = scope.spawn(|| s.sync("j"));
            let fired = proxy.wait_fired(1, Duration::from_secs(10));
            let cut = if fired {
                proxy.cut_control_now(false)
            } else {
                0
            };
            (sync.join().unwrap(), fired, cut)
        });
        assert!(
            fired && cut >= 1,
            "fired {fired}, cut {cut}:\n{}",
            run.text()
        );
        eprintln!("{}", run.text());
        let target = s.remote_root().join("big.bin");
        if run.code != 0 {
            run.expect_code(1).expect_output("failed: big.bin: ");
        }
        no_half_file(&target, &data);

        proxy.clear_faults();
        s.sync("j").expect_code(0);
        assert_eq!(std::fs::read(&target).unwrap(), data);
    }
}

/// `status` and `history` only read the ledger: another user with read access to it gets the
/// same answer, and a missing ledger is "nothing has run yet", not an error or a new file.
#[test]
fn status_works_for_a_reader_without_write_access() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::loopback();
    let s = Sandbox::new(&server, "reader");
    s.write_local("a", b"abc");
    s.job("j", "");
    let empty = s.ferrysync(&["status", "--json"]);
    empty.expect_code(0);
    assert!(!s.state.exists(), "status created a ledger");
    s.sync("j").expect_code(0);

    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if !is_root {
        eprintln!("skipped the other-user part: not root");
        return;
    }
    let state_dir = s.state.parent().unwrap();
    for dir in [s.dir.path(), state_dir] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for f in std::fs::read_dir(state_dir).unwrap() {
        let f = f.unwrap().path();
        if f.is_file() {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let out = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(env!("CARGO_BIN_EXE_ferrysync"))
        .args(["status", "j", "--json", "--state"])
        .arg(&s.state)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "status as nobody: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"outcome\": \"ok\""), "{stdout}");
}

/// Pure-FTPd offers MLSD and MFMT but no HASH, and lists dot files in MLSD (its LIST hides
/// them without `-a` unless the server runs with DisplayDotFiles). A push keeps each file's
/// modification time on the server (MFMT, read as UTC), dot files included, and a pull from
/// the same remote directory brings the dot files back, so the remote scan saw them.
#[test]
fn pureftpd_keeps_modification_times_and_dot_files() {
    let Some(server) = Server::pureftpd() else {
        return;
    };
    let s = Sandbox::new(&server, "pure-mtime");
    s.write_local(".env", b"SECRET=not-really\n");
    s.write_local("conf/.hidden/.rc", b"rc");
    s.write_local("plain.txt", b"plain");
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_262_304_000); // 2010-01-01
    for rel in [".env", "conf/.hidden/.rc", "plain.txt"] {
        std::fs::File::options()
            .write(true)
            .open(s.local.join(rel))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    s.job("up", "");
    s.sync("up").expect_code(0);
    assert_eq!(s.remote_tree(), s.local_tree());
    for rel in [".env", "conf/.hidden/.rc", "plain.txt"] {
        let remote = std::fs::metadata(s.remote_root().join(rel))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(
            remote, old,
            "{rel}: modification time not kept on the server"
        );
    }
    s.sync("up").expect_code(0);
    assert_eq!(s.counts("up"), (0, 0, 0, 0));

    let back = Sandbox::sharing_remote_of(&s, "pure-mtime-back");
    back.job("down", "direction: pull\n");
    back.sync("down").expect_code(0);
    assert_eq!(back.local_tree(), s.local_tree());
    assert_eq!(back.counts("down"), (0, 3, 0, 0));
}

/// Pure-FTPd stops a listing at 10000 entries by default (`LimitRecursion`) and says so only in
/// the transfer's final `226 Output truncated to 10000 matches`. A directory that big must not
/// look like one whose other files were deleted: the run fails, says why, and changes nothing
/// (a pull mirror would otherwise delete local copies of the files left out). Just below the
/// limit the listing is whole and the run works.
#[test]
fn pureftpd_listing_cut_short_fails_the_run_and_deletes_nothing() {
    let Some(server) = Server::pureftpd() else {
        return;
    };
    let s = Sandbox::new(&server, "pure-limit");
    // 9990 files and `.` and `..`: 9992 entries, under the limit.
    for i in 1..=9990 {
        s.put_remote(&format!("n{i:05}"), b"");
    }
    s.job(
        "j",
        "direction: pull\nmode: mirror\ninclude: [\"n0000*\"]\n",
    );
    s.sync("j").expect_code(0);
    assert_eq!(s.counts("j"), (0, 9, 0, 0));
    let before = s.local_tree();

    for i in 9991..=10050 {
        s.put_remote(&format!("n{i:05}"), b"");
    }
    s.sync("j")
        .expect_code(1)
        .expect_output("stopped at 10000 entries")
        .expect_output("LimitRecursion");
    assert_eq!(
        s.local_tree(),
        before,
        "a cut-short listing changed the local tree"
    );
    let _ = std::fs::remove_dir_all(s.remote_root());
}
