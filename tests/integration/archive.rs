//! `after_transfer: delete | archive` (issue 14, item 2): a source file is deleted or moved
//! into the archive only once its copy is verified and recorded; a crash between the two is
//! completed by the next run; a name already in the archive gets a number; a source that was
//! not delivered (failed, conflicting, excluded) or changed since is never moved.

use std::time::{Duration, SystemTime};

use crate::harness::{Node, Sandbox, Server};

/// `archive/YYYY/MM` for today, as the job's template `archive/{yyyy}/{mm}/` expands it (the
/// tests pin `timezone: UTC`).
fn month_dir(prefix: &str) -> String {
    let now = chrono::Utc::now();
    format!("{prefix}/{}", now.format("%Y/%m"))
}

fn files(tree: &std::collections::BTreeMap<String, Node>) -> Vec<String> {
    tree.iter()
        .filter(|(_, n)| !matches!(n, Node::Dir))
        .map(|(p, _)| p.clone())
        .collect()
}

const ARCHIVE: &str =
    "after_transfer: archive\narchive_to: \"archive/{yyyy}/{mm}/\"\ntimezone: UTC\n";

/// An inbox push with a local archive and retention: delivered files move into the archive
/// (subfolders kept), the archive is never itself uploaded, nothing is deleted on the server,
/// and the history counts what was archived.
fn push_archives_locally(server: &Server) {
    let s = Sandbox::new(server, "arch-push");
    server.mkdirs(&s.remote_root());
    s.write_local("a.csv", b"alpha");
    s.write_local("d/b.csv", b"bravo");
    s.put_remote("partner-kept.csv", b"not ours");
    s.job("j", &format!("{ARCHIVE}archive_retention: 90d\n"));
    let run = s.sync("j");
    run.expect_code(0).expect_output("2 sources archived");
    let month = month_dir("archive");
    assert_eq!(
        std::fs::read(s.remote_root().join("a.csv")).unwrap(),
        b"alpha"
    );
    assert_eq!(
        std::fs::read(s.remote_root().join("d/b.csv")).unwrap(),
        b"bravo"
    );
    assert_eq!(
        files(&s.local_tree()),
        [format!("{month}/a.csv"), format!("{month}/d/b.csv")],
        "{}",
        run.text()
    );
    assert_eq!(
        std::fs::read(s.local.join(format!("{month}/a.csv"))).unwrap(),
        b"alpha"
    );
    assert!(
        !s.remote_root().join("archive").exists(),
        "the archive is not a source"
    );
    assert!(
        s.remote_root().join("partner-kept.csv").exists(),
        "copy mode: no deletes"
    );
    let last = s.last_run("j");
    assert_eq!(last["files_archived"], 2, "{last}");
    assert_eq!(last["files_up"], 2, "{last}");
    // A second run has nothing to do: the archive stays, nothing is sent again, the fresh
    // archive is within its retention.
    s.sync("j").expect_code(0);
    let last = s.last_run("j");
    assert_eq!(
        (last["files_up"].as_u64(), last["files_archived"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(s.local.join(format!("{month}/d/b.csv")).exists());
    // The audit record says what became of each source.
    let audit = s.ferrysync(&["audit", "export", "--job", "j", "--format", "jsonl"]);
    assert!(audit.stdout.contains("archived"), "{}", audit.text());
}

/// An outbox pull with the archive on the server: each downloaded file is moved (RNFR/RNTO)
/// into the archive folder below the job's remote folder, the archive is not pulled, and a
/// second delivery of the same name lands next to the first with a number.
fn pull_archives_on_the_server(server: &Server) {
    let s = Sandbox::new(server, "arch-pull");
    s.put_remote("a.csv", b"alpha");
    s.put_remote("sub/b.csv", b"bravo");
    s.job("j", &format!("direction: pull\n{ARCHIVE}"));
    let run = s.sync("j");
    run.expect_code(0).expect_output("2 sources archived");
    let month = month_dir("archive");
    assert_eq!(std::fs::read(s.local.join("a.csv")).unwrap(), b"alpha");
    assert_eq!(std::fs::read(s.local.join("sub/b.csv")).unwrap(), b"bravo");
    assert_eq!(
        files(&s.remote_tree()),
        [format!("{month}/a.csv"), format!("{month}/sub/b.csv")],
        "{}",
        run.text()
    );
    assert!(
        !s.local.join("archive").exists(),
        "the archive is not pulled"
    );
    // The partner drops a new a.csv: it is delivered over our last delivery, and archived
    // next to the first one instead of over it.
    s.put_remote("a.csv", b"alpha, second edition");
    let run = s.sync("j");
    run.expect_code(0).expect_output("1 sources archived");
    assert_eq!(
        std::fs::read(s.local.join("a.csv")).unwrap(),
        b"alpha, second edition"
    );
    let archived = s.remote_root().join(&month);
    assert_eq!(std::fs::read(archived.join("a.csv")).unwrap(), b"alpha");
    assert_eq!(
        std::fs::read(archived.join("a.1.csv")).unwrap(),
        b"alpha, second edition"
    );
}

/// An absolute remote archive (outside the job's folder; for a chrooted vsftpd user, relative
/// to the FTP root).
fn pull_archives_to_an_absolute_remote_folder(server: &Server) {
    let s = Sandbox::new(server, "arch-abs");
    s.put_remote("a.csv", b"alpha");
    let archive = format!("{}-archive", s.remote_dir);
    s.job(
        "j",
        &format!("direction: pull\nafter_transfer: archive\narchive_to: \"{archive}/{{job}}/\"\n"),
    );
    s.sync("j")
        .expect_code(0)
        .expect_output("1 sources archived");
    let on_disk = server
        .root
        .join(archive.trim_start_matches('/'))
        .join("j/a.csv");
    assert_eq!(std::fs::read(on_disk).unwrap(), b"alpha");
    assert!(!s.remote_root().join("a.csv").exists());
}

/// `after_transfer: delete`, both ways: the source goes once delivered, the copy stays.
fn delete_after_transfer_both_ways(server: &Server) {
    let s = Sandbox::new(server, "del-push");
    server.mkdirs(&s.remote_root());
    s.write_local("a.csv", b"alpha");
    s.job("j", "after_transfer: delete\n");
    s.sync("j")
        .expect_code(0)
        .expect_output("1 sources deleted");
    assert_eq!(
        std::fs::read(s.remote_root().join("a.csv")).unwrap(),
        b"alpha"
    );
    assert!(!s.local.join("a.csv").exists());
    // The next run neither deletes the delivered copy nor complains.
    s.sync("j").expect_code(0);
    assert!(s.remote_root().join("a.csv").exists());
    assert_eq!(s.last_run("j")["files_source_deleted"], 0);

    let p = Sandbox::new(server, "del-pull");
    p.put_remote("b.csv", b"bravo");
    p.job("j", "direction: pull\nafter_transfer: delete\n");
    p.sync("j")
        .expect_code(0)
        .expect_output("1 sources deleted");
    assert_eq!(std::fs::read(p.local.join("b.csv")).unwrap(), b"bravo");
    assert!(!p.remote_root().join("b.csv").exists());
    assert_eq!(p.last_run("j")["files_source_deleted"], 1);
}

against_servers!(
    push_archives_locally,
    pull_archives_on_the_server,
    pull_archives_to_an_absolute_remote_folder,
    delete_after_transfer_both_ways,
    kill_between_transfer_and_archive,
    a_source_changed_before_its_archive_is_kept,
);

/// kill -9 between the commit of the transfer and the archive step: the intent is in the
/// ledger with the commit, and the next run archives the file without sending it again.
fn kill_between_transfer_and_archive(server: &Server) {
    for pull in [false, true] {
        let s = Sandbox::new(
            server,
            if pull {
                "kill-arch-pull"
            } else {
                "kill-arch-push"
            },
        );
        if pull {
            s.put_remote("a.csv", b"alpha");
            s.job("j", &format!("direction: pull\n{ARCHIVE}"));
        } else {
            server.mkdirs(&s.remote_root());
            s.write_local("a.csv", b"alpha");
            s.job("j", ARCHIVE);
        }
        let killed = s.ferrysync_with_env(
            &["sync", "j"],
            &[("FERRYSYNC_TEST_KILL_BEFORE_AFTER_TRANSFER", "1")],
        );
        assert_eq!(killed.code, -1, "killed by a signal: {}", killed.text());
        let (source, dest) = if pull {
            (s.remote_root(), s.local.clone())
        } else {
            (s.local.clone(), s.remote_root())
        };
        assert_eq!(std::fs::read(dest.join("a.csv")).unwrap(), b"alpha");
        assert!(
            source.join("a.csv").exists(),
            "not archived before the kill"
        );
        let run = s.sync("j");
        run.expect_code(0).expect_output("1 sources archived");
        let last = s.last_run("j");
        assert_eq!(
            (last["files_up"].as_u64(), last["files_down"].as_u64()),
            (Some(0), Some(0)),
            "not sent again: {last}"
        );
        assert!(!source.join("a.csv").exists());
        assert_eq!(
            std::fs::read(source.join(month_dir("archive")).join("a.csv")).unwrap(),
            b"alpha"
        );
    }
}

/// A source that changed after its transfer (before the archive step, here cut short by a
/// kill) is kept, not archived: `min_age` keeps the new version from being sent at once, so
/// the old intent meets a different file.
fn a_source_changed_before_its_archive_is_kept(server: &Server) {
    let s = Sandbox::new(server, "changed-arch");
    server.mkdirs(&s.remote_root());
    s.write_local("a.csv", b"delivered");
    let f = std::fs::File::options()
        .write(true)
        .open(s.local.join("a.csv"))
        .unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
    drop(f);
    s.job("j", &format!("{ARCHIVE}min_age: 1h\n"));
    let killed = s.ferrysync_with_env(
        &["sync", "j"],
        &[("FERRYSYNC_TEST_KILL_BEFORE_AFTER_TRANSFER", "1")],
    );
    assert_eq!(killed.code, -1, "{}", killed.text());
    s.write_local("a.csv", b"rewritten since");
    let run = s.sync("j");
    run.expect_code(0);
    assert_eq!(
        std::fs::read(s.local.join("a.csv")).unwrap(),
        b"rewritten since",
        "kept: {}",
        run.text()
    );
    assert!(!s.local.join("archive").exists(), "nothing archived");
    assert_eq!(s.last_run("j")["files_archived"], 0);
    assert_eq!(
        std::fs::read(s.remote_root().join("a.csv")).unwrap(),
        b"delivered"
    );
}

/// Only delivered sources move: a file whose upload could not be made (its remote name is a
/// directory: a conflict), an excluded file, and a file in the archive folder itself stay.
#[test]
fn archive_only_delivered_sources_move() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "only-delivered");
    server.mkdirs(&s.remote_root().join("clash.csv"));
    s.write_local("ok.csv", b"ok");
    s.write_local("clash.csv", b"clash");
    s.write_local("skip.tmp", b"skip");
    s.write_local("archive/old.csv", b"already archived");
    s.job("j", &format!("{ARCHIVE}exclude: \"*.tmp\"\n"));
    let run = s.sync("j");
    run.expect_code(1);
    assert_eq!(
        files(&s.local_tree()),
        [
            format!("{}/ok.csv", month_dir("archive")),
            "archive/old.csv".to_string(),
            "clash.csv".into(),
            "skip.tmp".into(),
        ],
        "{}",
        run.text()
    );
    assert!(!s.remote_root().join("archive").exists());
    assert!(!s.remote_root().join("skip.tmp").exists());
}

/// A download that fails its verification (the server sends fewer bytes than it listed) is
/// never renamed into place, and its remote source is neither deleted nor archived.
#[test]
fn archive_a_failed_download_keeps_its_source() {
    use crate::harness::hostile::Misbehaviour;
    let (server, seen) = Server::hostile(Misbehaviour::FewerBytes(3));
    let s = Sandbox::new(&server, "fail-verify");
    server.put(
        &format!("{}/a.bin", s.remote_dir.trim_start_matches('/')),
        &[7u8; 4096],
    );
    s.job("j", "direction: pull\nafter_transfer: delete\nretries: 1\n");
    let run = s.sync("j");
    run.expect_code(1);
    assert!(!s.local.join("a.bin").exists(), "{}", run.text());
    let commands = seen.commands();
    assert!(
        !commands
            .iter()
            .any(|c| c.starts_with("DELE") || c.starts_with("RNFR")),
        "the source was touched: {commands:?}"
    );
    assert!(s.remote_root().join("a.bin").exists());
}
