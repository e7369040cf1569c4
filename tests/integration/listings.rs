//! How remote directories are read: a wide tree listed on several connections, LIST times in
//! the server's zone, dot files in MLSD and times kept with MFMT on Pure-FTPd, a listing the
//! server cut short, and hostile names in a listing.

use crate::harness::{self, Sandbox, Server};

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

/// ProFTPD listing LIST times in UTC+3 (tests/run.sh starts it so), or `None`, said why
/// (a panic under FERRYSYNC_REQUIRE_SERVERS=1).
fn proftpd_listing_in_utc_plus_3() -> Option<Server> {
    let server = Server::proftpd()?;
    if std::env::var("FERRYSYNC_PROFTPD_LIST_TZ").as_deref() != Ok("<+03>-3") {
        harness::missing(
            "FERRYSYNC_PROFTPD_LIST_TZ is not <+03>-3 (start ProFTPD with PROFTPD_LIST_TZ=\"<+03>-3\")",
        );
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
