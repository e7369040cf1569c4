//! The scenarios every server must pass (push, pull, wrong credentials, untrusted
//! certificates, max_delete, dry runs, binary files, a 1 GiB file, a kill mid-transfer), each
//! run once per server kind: the in-process loopback server, vsftpd (explicit and implicit),
//! ProFTPD (explicit and implicit) and Pure-FTPd.

use crate::harness::{self, populate, Node, Sandbox, Server};
use crate::resume::{kill_during_download_then_resume, kill_during_upload_then_resume};

against_servers!(
    push_tree_then_nothing_then_one_change_then_deletes,
    pull_tree_then_nothing_then_one_change_then_deletes,
    wrong_password_changes_nothing,
    wrong_pin_changes_nothing,
    untrusted_certificate_changes_nothing,
    max_delete_refuses_before_any_change,
    an_emptied_push_source_changes_nothing,
    an_emptied_pull_source_changes_nothing,
    without_max_delete_at_most_half_is_deleted,
    dry_run_changes_nothing,
    binary_files_survive_byte_for_byte,
    one_gib_file_push_then_pull,
    kill_during_upload_then_resume,
    kill_during_download_then_resume,
    push_and_pull_are_recorded_file_by_file,
);

pub use crate::audit::push_and_pull_are_recorded_file_by_file;

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
    // The audit record of that run: the file, its BLAKE3, and the server's own reply.
    let file = only_file_of_last_run(&s, "mirror");
    assert_eq!(file["path"], "dir 1/f1.dat");
    assert_eq!(file["action"], "uploaded");
    assert_eq!(
        file["blake3"],
        blake3::hash(b"changed content").to_hex().as_str()
    );
    let reply = file["server_reply"].as_str().unwrap_or("");
    eprintln!(
        "{}: the record holds the server's reply `{reply}`",
        server.port
    );
    assert!(
        reply.starts_with("250 ") && reply.len() > 4,
        "the server's reply to the rename is not in the record: {file}"
    );

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
    let file = only_file_of_last_run(&s, "mirror");
    assert_eq!(
        (&file["path"], &file["action"]),
        (&"f10.dat".into(), &"deleted".into())
    );
    assert!(
        file["server_reply"]
            .as_str()
            .unwrap_or("")
            .starts_with("250 "),
        "the server's reply to DELE is not in the record: {file}"
    );
    s.ferrysync(&["audit", "verify"])
        .expect_code(0)
        .expect_output("mirror: intact");
    assert_eq!(s.remote_tree(), s.local_tree());
}

/// The one file the latest run of `job` changed, from `history --files --json`.
fn only_file_of_last_run(s: &Sandbox, job: &str) -> serde_json::Value {
    let run = s.ferrysync(&["history", job, "--limit", "1", "--files", "--json"]);
    run.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let files = v[0]["files"].as_array().cloned().unwrap_or_default();
    assert_eq!(files.len(), 1, "{}", run.stdout);
    files[0].clone()
}

pub fn pull_tree_then_nothing_then_one_change_then_deletes(server: &Server) {
    let s = Sandbox::new(server, "pull");
    let source = tempfile::tempdir().unwrap();
    populate(source.path(), 1000);
    for (rel, node) in harness::read_tree(source.path()) {
        match node {
            Node::Dir => server.mkdirs(&s.remote_root().join(&rel)),
            Node::File(..) => s.put_remote(&rel, &std::fs::read(source.path().join(&rel)).unwrap()),
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
    let good = ferrysync::remote::fingerprint(&der).to_string();
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

/// A push job whose local folder is suddenly empty (an unmounted disk) must not empty the
/// partner's server; once the job says so, it may.
pub fn an_emptied_push_source_changes_nothing(server: &Server) {
    let s = Sandbox::new(server, "emptypush");
    for i in 0..20 {
        s.write_local(&format!("d/f{i}"), format!("{i}").as_bytes());
    }
    s.job("j", "");
    s.sync("j").expect_code(0);
    // The mount point is there, empty.
    std::fs::remove_dir_all(s.local.join("d")).unwrap();
    let before = s.remote_tree();
    s.sync("j")
        .expect_code(1)
        .expect_output("job j: refusing to delete 20 of 20 files")
        .expect_output("lists no file")
        .expect_output("allow_empty_source: true");
    assert_eq!(s.remote_tree(), before, "a refused plan changes nothing");
    s.ferrysync(&["status", "j"]).expect_output("failing");
    s.job(
        "j",
        "allow_empty_source: true
",
    );
    s.sync("j").expect_code(0);
    assert_eq!(s.counts("j"), (0, 0, 20, 0));
    assert!(s.remote_tree().keys().all(|k| !k.contains("f1")));
}

/// A pull job whose server lists the folder as empty must not delete the local copies.
pub fn an_emptied_pull_source_changes_nothing(server: &Server) {
    let s = Sandbox::new(server, "emptypull");
    server.mkdirs(&s.remote_root());
    for i in 0..12 {
        s.put_remote(&format!("f{i}.csv"), format!("{i}").as_bytes());
    }
    s.job(
        "j",
        "direction: pull
",
    );
    s.sync("j").expect_code(0);
    assert_eq!(s.counts("j"), (0, 12, 0, 0));
    for i in 0..12 {
        std::fs::remove_file(s.remote_root().join(format!("f{i}.csv"))).unwrap();
    }
    let before = s.local_tree();
    s.sync("j")
        .expect_code(1)
        .expect_output("refusing to delete 12 of 12 files")
        .expect_output("allow_empty_source: true");
    assert_eq!(s.local_tree(), before, "the local copies stay");
    s.ferrysync(&["sync", "j", "--dry-run"])
        .expect_code(1)
        .expect_output("refusing to delete 12 of 12 files");
    assert_eq!(s.local_tree(), before);
}

/// Without max_delete, a run may delete half of the destination's files (and always 10).
pub fn without_max_delete_at_most_half_is_deleted(server: &Server) {
    let s = Sandbox::new(server, "halfdel");
    for i in 0..40 {
        s.write_local(&format!("f{i}"), format!("{i}").as_bytes());
    }
    s.job("j", "");
    s.sync("j").expect_code(0);
    for i in 0..25 {
        std::fs::remove_file(s.local.join(format!("f{i}"))).unwrap();
    }
    let before = s.remote_tree();
    s.sync("j")
        .expect_code(1)
        .expect_output("refusing to delete 25 of 40 files")
        .expect_output("max_delete");
    assert_eq!(s.remote_tree(), before);
    s.job(
        "j",
        "max_delete: 100%
",
    );
    s.sync("j").expect_code(0);
    assert_eq!(s.counts("j"), (0, 0, 25, 0));
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
