//! Firewalls and NAT: `remote.passive_address` against a vsftpd that refuses EPSV and names an
//! address in PASV that its data ports are not on (as a server behind NAT names its private
//! address), and `remote.data_mode: active` against vsftpd (EPRT) and the loopback server
//! (which has no EPRT: PORT).

use std::time::{Duration, Instant};

use crate::harness::{populate, Sandbox, Server};

/// The PASV address of the NAT test server (tests/run.sh, `VSFTPD_PASV_ADDRESS`): loopback, so
/// nothing leaves the machine, yet not the control connection's 127.0.0.1, where the data ports
/// are, nor one the fault proxy listens on (127.0.0.2-120). (TEST-NET-1's 192.0.2.1 can be a
/// real gateway, as on the machine this was written on.)
const NAT_PASV_ADDRESS: &str = "127.0.0.200";

/// Local ports for the active-mode listeners of the vsftpd test.
const ACTIVE_PORTS: std::ops::RangeInclusive<u16> = 40980..=40999;

/// The lines of a remote option block, indented under `remote:`.
fn remote_opts(opts: &[&str]) -> String {
    opts.iter().map(|o| format!("  {o}\n")).collect()
}

/// `job_yaml` ends inside `remote.tls`; these keys go under `remote:` itself.
fn job_with_remote_opts(s: &Sandbox, top: &str, opts: &[&str]) -> String {
    let base = s.job_yaml("");
    let (head, tls) = base.split_at(base.find("  tls:\n").unwrap());
    format!("{head}{}{tls}{top}", remote_opts(opts))
}

#[test]
fn passive_address_auto_and_control_reach_a_server_behind_nat() {
    let Some(server) = Server::vsftpd_nat() else {
        return;
    };
    for policy in ["auto", "control"] {
        let up = Sandbox::new(&server, &format!("nat-{policy}"));
        populate(&up.local, 40);
        up.write_job(
            "up",
            &job_with_remote_opts(
                &up,
                "direction: push\n",
                &[&format!("passive_address: {policy}")],
            ),
        );
        let pushed = up.ferrysync(&["-v", "sync", "up"]);
        pushed.expect_code(0);
        assert_eq!(up.remote_tree(), up.local_tree(), "{policy}");
        // EPSV was refused and PASV used; the substitution is logged once per run.
        pushed.expect_output("EPSV refused");
        let noted = pushed
            .stderr
            .matches("not the control connection's address; connecting to")
            .count();
        assert_eq!(noted, 1, "{policy}: {}", pushed.text());
        assert!(
            pushed.stderr.contains(NAT_PASV_ADDRESS),
            "{}",
            pushed.text()
        );

        let down = Sandbox::sharing_remote_of(&up, &format!("nat-{policy}-back"));
        let job = job_with_remote_opts(
            &down,
            "direction: pull\n",
            &[&format!("passive_address: {policy}")],
        );
        down.write_job("down", &job);
        down.sync("down").expect_code(0);
        assert_eq!(down.local_tree(), up.local_tree(), "{policy}");
    }
}

#[test]
fn passive_address_server_fails_naming_the_address_and_the_option() {
    let Some(server) = Server::vsftpd_nat() else {
        return;
    };
    let s = Sandbox::new(&server, "nat-server");
    s.write_local("a.txt", b"never sent");
    s.write_job(
        "up",
        &job_with_remote_opts(
            &s,
            "direction: push\nretries: 1\n",
            &["passive_address: server", "timeout: 3s"],
        ),
    );
    let started = Instant::now();
    let run = s.sync("up");
    run.expect_code(1);
    run.expect_output(&format!(
        "cannot open the data connection to {NAT_PASV_ADDRESS}:"
    ));
    run.expect_output("the address in the server's PASV reply");
    run.expect_output("set remote.passive_address: auto");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(!s.remote_root().join("a.txt").exists());
}

/// The EPRT commands in a vsftpd protocol log (`log_ftp_protocol=YES`), as (address, port).
fn eprt_commands(log: &str) -> Vec<(String, u16)> {
    log.lines()
        .filter_map(|l| l.split("\"EPRT |1|").nth(1))
        .filter_map(|rest| {
            let mut parts = rest.split('|');
            let ip = parts.next()?.to_string();
            let port = parts.next()?.parse().ok()?;
            Some((ip, port))
        })
        .collect()
}

#[test]
fn active_mode_push_and_pull_with_vsftpd_over_eprt() {
    let Some(server) = Server::vsftpd() else {
        return;
    };
    let log = crate::harness::vsftpd_log();
    let ports = format!(
        "active_ports: {}-{}",
        ACTIVE_PORTS.start(),
        ACTIVE_PORTS.end()
    );
    let s = Sandbox::new(&server, "active");
    populate(&s.local, 40);
    s.write_job(
        "up",
        &job_with_remote_opts(&s, "direction: push\n", &["data_mode: active", &ports]),
    );
    s.sync("up").expect_code(0);
    assert_eq!(s.remote_tree(), s.local_tree());
    assert_eq!(s.counts("up").0, 40);

    let back = Sandbox::sharing_remote_of(&s, "active-back");
    let job = job_with_remote_opts(&back, "direction: pull\n", &["data_mode: active", &ports]);
    back.write_job("down", &job);
    back.sync("down").expect_code(0);
    assert_eq!(back.local_tree(), s.local_tree());

    // The server connected back to the listeners named in EPRT, all inside active_ports (the
    // other active-mode test against this server uses them too).
    let eprt = eprt_commands(&std::fs::read_to_string(log).unwrap());
    assert!(eprt.len() >= 80, "{} EPRT commands", eprt.len());
    for (ip, port) in eprt {
        assert_eq!(ip, "127.0.0.1");
        assert!(ACTIVE_PORTS.contains(&port), "EPRT port {port}");
    }
}

#[test]
fn active_mode_with_the_loopback_server_falls_back_to_port() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "active-port");
    populate(&s.local, 40);
    s.write_job(
        "up",
        &job_with_remote_opts(&s, "direction: push\n", &["data_mode: active"]),
    );
    let run = s.ferrysync(&["-v", "sync", "up"]);
    run.expect_code(0);
    run.expect_output("EPRT refused");
    run.expect_output("using PORT");
    assert_eq!(s.remote_tree(), s.local_tree());

    let back = Sandbox::sharing_remote_of(&s, "active-port-back");
    let job = job_with_remote_opts(&back, "direction: pull\n", &["data_mode: active"]);
    back.write_job("down", &job);
    back.ferrysync(&["-v", "sync", "down"])
        .expect_code(0)
        .expect_output("using PORT");
    assert_eq!(back.local_tree(), s.local_tree());
}

/// Through one [`Session`](ferrysync::remote::Session) made from the sandbox's job with `opts`:
/// a download resumed at an offset (REST) returns exactly the file's tail, and a download
/// dropped half-way does not put the control connection out of step.
fn rest_and_an_abandoned_download(server: &Server, name: &str, opts: &[&str]) {
    use tokio::io::AsyncReadExt;
    let s = Sandbox::new(server, name);
    let content: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    s.put_remote("f.bin", &content);
    let text = job_with_remote_opts(&s, "", opts);
    let job = ferrysync::config::parse_job(&s.jobs.join("j.yaml"), &text).unwrap();
    let path = format!("{}/f.bin", s.remote_dir);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tls = ferrysync::remote::TlsContext::new(&job.remote.tls).unwrap();
        let mut session = ferrysync::remote::Session::connect(&job.remote, &tls)
            .await
            .unwrap();
        // The first data command of the connection: on the NAT server EPSV is refused here
        // and the REST offset must survive the switch to PASV.
        session.restart_at(&path, 100_000).await.unwrap();
        let mut stream = session.retrieve(&path).await.unwrap();
        let mut tail = Vec::new();
        stream.read_to_end(&mut tail).await.unwrap();
        session.finish("RETR", &path, stream).await.unwrap();
        assert!(tail == content[100_000..], "{name}: {} bytes", tail.len());

        let mut stream = session.retrieve(&path).await.unwrap();
        let mut first = [0u8; 1000];
        stream.read_exact(&mut first).await.unwrap();
        drop(stream);
        assert_eq!(session.size(&path).await.unwrap(), content.len() as u64);
        let mut stream = session.retrieve(&path).await.unwrap();
        let mut whole = Vec::new();
        stream.read_to_end(&mut whole).await.unwrap();
        session.finish("RETR", &path, stream).await.unwrap();
        assert!(whole == content, "{name}");
        session.quit().await;
    });
}

#[test]
fn rest_offsets_and_abandoned_transfers_in_every_data_mode() {
    rest_and_an_abandoned_download(
        &Server::loopback(),
        "rest-loopback-active",
        &["data_mode: active"],
    );
    if let Some(server) = Server::vsftpd() {
        // active_ports as in the EPRT test, which checks every EPRT in this server's log.
        let ports = format!(
            "active_ports: {}-{}",
            ACTIVE_PORTS.start(),
            ACTIVE_PORTS.end()
        );
        rest_and_an_abandoned_download(
            &server,
            "rest-vsftpd-active",
            &["data_mode: active", &ports],
        );
    }
    if let Some(server) = Server::vsftpd_implicit() {
        rest_and_an_abandoned_download(&server, "rest-implicit-active", &["data_mode: active"]);
    }
    if let Some(server) = Server::vsftpd_nat() {
        rest_and_an_abandoned_download(&server, "rest-vsftpd-nat", &[]);
    }
}
