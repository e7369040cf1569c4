//! `ferrysync test JOB` and `ferrysync ls JOB [PATH]` (issue 13 item 6) against every server
//! kind: the TLS version, the certificate's expiry, whether the data connection resumed the
//! control connection's TLS session, the remote folder's first entries, and the NAT server's
//! PASV address replaced by the control connection's.

use serde_json::Value;

use crate::harness::{Sandbox, Server};

/// Servers that refuse a data connection that does not resume the control session
/// (vsftpd's `require_ssl_reuse=YES`, ProFTPD's default), so their data connections must resume.
fn requires_reuse(server: &Server) -> bool {
    matches!(server.kind, "vsftpd" | "proftpd")
}

/// A sandbox whose remote folder holds `a.csv` (5 bytes), `b.bin` and `sub/x.bin`.
fn populated<'a>(server: &'a Server, name: &str) -> Sandbox<'a> {
    let s = Sandbox::new(server, name);
    s.put_remote("a.csv", b"hello");
    s.put_remote("b.bin", &[7u8; 1234]);
    s.put_remote("sub/x.bin", b"x");
    s.job("j", "direction: pull\n");
    s
}

fn test_and_ls(server: &Server) {
    let s = populated(server, "probe");
    let password = server.password();

    let run = s.ferrysync(&["test", "j"]);
    run.expect_code(0)
        .expect_output(&format!(
            "server:       {}@127.0.0.1:{}",
            server.user, server.port
        ))
        .expect_output(&format!("connected to: 127.0.0.1:{}", server.port))
        .expect_output("TLS:          TLS 1.")
        .expect_output(&format!(
            "verified by:  tls.ca_file {}",
            server.ca.display()
        ))
        .expect_output("certificate 0: ")
        .expect_output(" days left)")
        .expect_output("login:        ok")
        .expect_output("FEAT:         ")
        .expect_output("data TLS:     TLS 1.")
        .expect_output(&format!("listing:      {} (", s.remote_dir))
        .expect_output("3 entries")
        .expect_output("result:       ok");
    if requires_reuse(server) {
        run.expect_output("resumed the control connection's TLS session (session reuse works)");
    }
    let entry = |text: &str, kind: &str, size: &str, name: &str| {
        assert!(
            text.lines().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.first() == Some(&kind) && w.get(1) == Some(&size) && w.last() == Some(&name)
            }),
            "no `{kind} {size} .. {name}` line in:\n{text}"
        );
    };
    entry(&run.stdout, "file", "5", "a.csv");
    entry(&run.stdout, "file", "1234", "b.bin");
    entry(&run.stdout, "dir", "-", "sub/");
    assert!(!run.text().contains(&password), "{}", run.text());
    // A multi-line greeting (Pure-FTPd's) is shown line by line, not as one escaped line.
    assert!(!run.stdout.contains("\\r\\n"), "{}", run.stdout);

    let json = s.ferrysync(&["test", "j", "--json"]);
    json.expect_code(0);
    let v: Value = serde_json::from_str(&json.stdout).unwrap();
    assert!(
        v["tls"]["version"].as_str().unwrap().starts_with("TLS 1."),
        "{v}"
    );
    assert!(
        v["certificates"][0]["days_left"].as_i64().unwrap() > 0,
        "{v}"
    );
    assert!(
        v["certificates"][0]["not_after"]
            .as_str()
            .unwrap()
            .ends_with('Z'),
        "{v}"
    );
    assert_eq!(v["logged_in"], true, "{v}");
    assert_eq!(v["listing"]["total"], 3, "{v}");
    assert_eq!(v["listing"]["entries"][0]["name"], "a.csv", "{v}");
    assert_eq!(v["error"], Value::Null, "{v}");
    if requires_reuse(server) {
        assert_eq!(v["data"]["tls"]["resumed"], true, "{v}");
    }
    assert!(!json.stdout.contains(&password));

    let ls = s.ferrysync(&["ls", "j"]);
    ls.expect_code(0).expect_output("3 entries");
    entry(&ls.stdout, "file", "1234", "b.bin");
    let sub = s.ferrysync(&["ls", "j", "sub"]);
    sub.expect_code(0)
        .expect_output(&format!("{}/sub (", s.remote_dir));
    entry(&sub.stdout, "file", "1", "x.bin");
    s.ferrysync(&["ls", "j", "sub/../.."])
        .expect_code(2)
        .expect_output("leaves the job's remote folder");
    s.ferrysync(&["ls", "j", "nosuch"])
        .expect_code(1)
        .expect_output("CWD");
    s.ferrysync(&["test", "nosuch"]).expect_code(2);
    s.ferrysync(&["ls", "nosuch"]).expect_code(2);
}

/// A wrong password: the test gets as far as TLS, shows it, and fails (exit 1) with the error
/// a sync gives, never printing the password.
fn test_with_a_wrong_password(server: &Server) {
    let s = Sandbox::new(server, "probe-badpw");
    let bad = s.dir.path().join("bad-password");
    std::fs::write(&bad, "not-the-password-7c1e").unwrap();
    s.write_job(
        "j",
        &s.job_yaml("").replace(
            &server.password_file.display().to_string(),
            &bad.display().to_string(),
        ),
    );
    let run = s.ferrysync(&["test", "j"]);
    run.expect_code(1)
        .expect_output("TLS:          TLS 1.")
        .expect_output("certificate 0: ")
        .expect_output("login as")
        .expect_output("result:       failed\n");
    assert_eq!(
        run.text().matches("login as").count(),
        1,
        "the error once: {}",
        run.text()
    );
    assert!(
        !run.text().contains("not-the-password-7c1e"),
        "{}",
        run.text()
    );
    s.ferrysync(&["ls", "j"])
        .expect_code(1)
        .expect_output("login as");
}

against_servers!(test_and_ls, test_with_a_wrong_password);

/// The NAT vsftpd refuses EPSV and names 127.0.0.200 in PASV: `test` says PASV was used and
/// that the reply's address was replaced by the control connection's.
#[test]
fn test_reports_a_pasv_address_replaced_by_the_control_peer() {
    let Some(server) = Server::vsftpd_nat() else {
        return;
    };
    let s = populated(&server, "probe-nat");
    let run = s.ferrysync(&["test", "j"]);
    run.expect_code(0)
        .expect_output("passive, PASV (the server refused EPSV): the reply named 127.0.0.200:")
        .expect_output("that address was ignored in favour of the control connection's: connected to 127.0.0.1:")
        .expect_output("(remote.passive_address: auto)")
        .expect_output("resumed the control connection's TLS session");
    let v: Value = serde_json::from_str(&s.ferrysync(&["test", "j", "--json"]).stdout).unwrap();
    assert_eq!(v["data"]["command"], "PASV", "{v}");
    assert_eq!(v["data"]["announced_address_replaced"], true, "{v}");
    assert!(
        v["data"]["announced"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.200:"),
        "{v}"
    );
    assert!(
        v["data"]["connected_to"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{v}"
    );
    s.ferrysync(&["ls", "j"])
        .expect_code(0)
        .expect_output("a.csv");
}
