//! TLS and its absence: implicit FTPS, client certificates, ProFTPD's TLS 1.3 session reuse,
//! a server without TLS and the opt-in to plain FTP.

use crate::harness::{populate, Sandbox, Server};

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
