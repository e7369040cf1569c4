//! Notifications (issue 15, item 1) against the in-process FTPS server: a webhook receiver in
//! the test (a plain TCP listener on 127.0.0.1 that reads HTTP requests; the FTP side is the
//! real one) checks the payload, the HMAC signature and that no secret is in the body; an exec
//! target writes its stdin to a file in the sandbox; a webhook that is down is retried without
//! failing the sync; a hanging command is killed at its timeout; a short-lived client
//! certificate alerts once; an `expect:` deadline that passes without files alerts `late`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::harness::{Sandbox, Server};

against_servers!(a_run_records_the_server_certificates_expiry);

const HOOK_SECRET: &str = "hook-secret-7d1e-never-in-a-body";

/// One HTTP request as the receiver read it.
#[derive(Debug, Clone)]
struct Request {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A webhook receiver on 127.0.0.1: answers 200 to every POST and keeps the requests.
struct Receiver {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Receiver {
    fn start() -> Receiver {
        Self::on(TcpListener::bind("127.0.0.1:0").unwrap())
    }

    fn on(listener: TcpListener) -> Receiver {
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let sink = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { break };
                if let Some(r) = read_request(conn) {
                    sink.lock().unwrap().push(r);
                }
            }
        });
        Receiver { port, requests }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    fn events(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| r.json()["event"].as_str().unwrap().to_string())
            .collect()
    }
}

fn read_request(conn: TcpStream) -> Option<Request> {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    read_request_from(conn)
}

fn read_request_from<S: Read + Write>(conn: S) -> Option<Request> {
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    assert!(line.starts_with("POST "), "{line}");
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())?;
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    let mut conn = reader.into_inner();
    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
    Some(Request { headers, body })
}

/// An HTTPS receiver with a fresh self-signed certificate for 127.0.0.1 (returned as PEM).
fn https_receiver() -> (Receiver, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let sink = requests.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let tls = rustls::StreamOwned::new(
                rustls::ServerConnection::new(config.clone()).unwrap(),
                conn,
            );
            // A client that refuses the certificate ends the handshake: no request.
            if let Some(r) = read_request_from(tls) {
                sink.lock().unwrap().push(r);
            }
        }
    });
    (Receiver { port, requests }, cert.cert.pem())
}

fn hook_yaml(s: &Sandbox, port: u16, events: &str) -> String {
    let secret = s.dir.path().join("hook.secret");
    std::fs::write(&secret, format!("{HOOK_SECRET}\n")).unwrap();
    format!(
        "notify:\n  events: {events}\n  webhook:\n    url: http://127.0.0.1:{port}/hooks/ferrysync\n    secret_file: {}\n    timeout: 3s\n",
        secret.display()
    )
}

/// The receiver's check: HMAC-SHA256 of `TIMESTAMP.BODY` under the shared secret.
fn assert_signed(r: &Request) {
    let ts = r.header("X-Ferrysync-Timestamp").expect("timestamp header");
    let sig = r.header("X-Ferrysync-Signature").expect("signature header");
    let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(sig, format!("sha256={want}"));
    let age = ferrysync::state::now_unix() - ts.parse::<i64>().unwrap();
    assert!((0..120).contains(&age), "timestamp {ts} is {age}s old");
    assert_eq!(
        r.header("X-Ferrysync-Event"),
        r.json()["event"].as_str(),
        "event header"
    );
}

fn assert_no_secret(text: &str, server: &Server) {
    assert!(
        !text.contains(HOOK_SECRET),
        "the webhook secret leaked:\n{text}"
    );
    assert!(
        !text.contains(&server.password()),
        "the FTP password leaked:\n{text}"
    );
}

#[test]
fn a_failing_job_alerts_once_signed_and_recovers_once() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "notify-hook");
    let hook = Receiver::start();
    // A push whose local folder is missing fails as a whole, run after run.
    let missing = s.dir.path().join("not-mounted");
    let yaml = s
        .job_yaml(&hook_yaml(&s, hook.port, "[failure, recovery]"))
        .replace(
            &format!("local: {}", s.local.display()),
            &format!("local: {}", missing.display()),
        );
    s.write_job("nightly", &yaml);
    for _ in 0..3 {
        s.sync("nightly").expect_code(1);
    }
    assert_eq!(hook.events(), ["failure"], "one alert for three failures");
    let alert = &hook.requests()[0];
    assert_signed(alert);
    assert_no_secret(&String::from_utf8_lossy(&alert.body), &server);
    let p = alert.json();
    assert_eq!(p["version"], 1);
    assert_eq!(p["job"], "nightly");
    assert_eq!(p["run"]["outcome"], "failed");
    assert_eq!(p["run"]["trigger"], "manual");
    assert!(p["run"]["id"].as_i64().is_some(), "{p}");
    assert!(
        p["run"]["error"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{p}"
    );
    assert!(
        p["message"]
            .as_str()
            .unwrap()
            .starts_with("job nightly failed: "),
        "{p}"
    );
    assert!(
        p["remote"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{p}"
    );
    assert!(p["previous_state"].is_null(), "{p}");
    // Fixed: one recovery, then nothing more while it stays fine.
    std::fs::create_dir_all(&missing).unwrap();
    std::fs::write(missing.join("a.csv"), b"1,2\n").unwrap();
    s.sync("nightly").expect_code(0);
    s.sync("nightly").expect_code(0);
    assert_eq!(hook.events(), ["failure", "recovery"]);
    let recovery = &hook.requests()[1];
    assert_signed(recovery);
    let p = recovery.json();
    assert_eq!(p["previous_state"], "failing");
    assert_eq!(p["run"]["outcome"], "ok");
    assert_eq!(p["run"]["files_up"], 1);
    // Saved for the README and the report.
    if let Ok(dir) = std::env::var("FERRYSYNC_NOTIFY_SAMPLE") {
        std::fs::write(Path::new(&dir).join("failure.json"), &alert.body).unwrap();
        std::fs::write(Path::new(&dir).join("recovery.json"), &recovery.body).unwrap();
    }
}

#[test]
fn an_exec_target_gets_the_payload_on_stdin_and_no_secret_in_its_environment() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "notify-exec");
    let out = s.dir.path().join("alerts");
    std::fs::create_dir_all(&out).unwrap();
    // The test's own script: stdin to a file, the environment to another.
    let script = s.dir.path().join("alert.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat > {out}/payload.json\nenv > {out}/env.txt\n",
            out = out.display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    let yaml = s
        .job_yaml(&format!(
            "notify:\n  events: [success]\n  exec: [{}]\n",
            script.display()
        ))
        .replace(
            &format!("password_file: {}", server.password_file.display()),
            "password_env: FERRYSYNC_TEST_NOTIFY_PW",
        );
    s.write_job("outbox", &yaml);
    s.write_local("x.txt", b"x");
    let password = server.password();
    s.ferrysync_with_env(
        &["sync", "outbox"],
        &[("FERRYSYNC_TEST_NOTIFY_PW", password.as_str())],
    )
    .expect_code(0);
    let payload = std::fs::read_to_string(out.join("payload.json")).unwrap();
    let p: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(p["event"], "success");
    assert_eq!(p["run"]["files_up"], 1);
    let env = std::fs::read_to_string(out.join("env.txt")).unwrap();
    assert!(env.contains("FERRYSYNC_JOB=outbox"), "{env}");
    assert!(env.contains("FERRYSYNC_EVENT=success"), "{env}");
    assert!(env.contains("FERRYSYNC_OUTCOME=ok"), "{env}");
    assert!(env.contains("FERRYSYNC_RUN_ID="), "{env}");
    assert!(!env.contains("FERRYSYNC_TEST_NOTIFY_PW"), "{env}");
    assert!(!env.contains("FERRYSYNC_STATE"), "{env}");
    assert_no_secret(&payload, &server);
    assert_no_secret(&env, &server);
}

#[test]
fn a_webhook_that_is_down_does_not_fail_the_sync_and_is_retried() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "notify-down");
    // A port nothing listens on yet; the receiver comes up after the first attempt failed.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    s.job("outbox", &hook_yaml(&s, port, "[success]"));
    s.write_local("x.txt", b"x");
    let late_receiver = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(2500));
        Receiver::on(TcpListener::bind(("127.0.0.1", port)).unwrap())
    });
    let started = Instant::now();
    let run = s.sync("outbox");
    run.expect_code(0).expect_output("attempt 1 of 4 failed");
    let hook = late_receiver.join().unwrap();
    assert_eq!(hook.events(), ["success"], "{}", run.text());
    assert_signed(&hook.requests()[0]);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_no_secret(&run.text(), &server);
    assert!(
        !run.text().contains("/hooks/ferrysync"),
        "the URL's path is not logged:\n{}",
        run.text()
    );
}

#[test]
fn a_hanging_exec_target_is_killed_at_its_timeout_with_what_it_started() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "notify-hang");
    let pids = s.dir.path().join("pids");
    let yaml = s.job_yaml(&format!(
        "notify:\n  events: [success]\n  exec_timeout: 1s\n  exec: [sh, -c, 'sleep 60 & echo $! >> {}; wait']\n",
        pids.display()
    ));
    s.write_job("outbox", &yaml);
    s.write_local("x.txt", b"x");
    let started = Instant::now();
    let run = s.sync("outbox");
    run.expect_code(0)
        .expect_output("was killed after its timeout of 1s");
    // `sync` waits for its notifications a bounded time, then exits.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let pids = std::fs::read_to_string(&pids).unwrap();
    assert!(pids.lines().count() >= 2, "retried: {pids}");
    for pid in pids.lines() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie its (killed) parent left to init for a moment.
        assert!(
            stat.is_empty() || stat.contains(") Z "),
            "sleep {pid} still runs: {stat}"
        );
    }
}

/// A client certificate and key valid for `days` more days, made with rcgen.
fn short_lived_client_cert(dir: &Path, days: i64) -> (std::path::PathBuf, std::path::PathBuf) {
    use chrono::Datelike;
    let end = chrono::Utc::now() + chrono::Duration::days(days);
    let mut params = rcgen::CertificateParams::new(vec!["client.example".to_string()]).unwrap();
    params.not_after = rcgen::date_time_ymd(end.year(), end.month() as u8, end.day() as u8);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ferrysync test client");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (dir.join("client.pem"), dir.join("client.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

#[test]
fn an_expiring_client_certificate_alerts_once() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "notify-cert");
    let (cert, key) = short_lived_client_cert(s.dir.path(), 5);
    let alerts = s.dir.path().join("alerts.jsonl");
    let yaml = s
        .job_yaml(&format!(
            "notify:\n  exec: [sh, -c, 'cat >> {}; echo >> {}']\n",
            alerts.display(),
            alerts.display()
        ))
        .replace(
            "  tls:\n",
            &format!(
                "  tls:\n    client_cert: {}\n    client_key: {}\n",
                cert.display(),
                key.display()
            ),
        );
    s.write_job("outbox", &yaml);
    s.write_local("x.txt", b"x");
    s.sync("outbox").expect_code(0);
    s.sync("outbox").expect_code(0);
    let text = std::fs::read_to_string(&alerts).unwrap_or_default();
    let payloads: Vec<Value> = serde_json::Deserializer::from_str(&text)
        .into_iter::<Value>()
        .map(Result::unwrap)
        .collect();
    assert_eq!(payloads.len(), 1, "once, not every run:\n{text}");
    let p = &payloads[0];
    assert_eq!(p["event"], "certificate_expiring");
    assert_eq!(p["certificate"]["which"], "client");
    assert!(
        p["certificate"]["subject"]
            .as_str()
            .unwrap()
            .contains("ferrysync test client"),
        "{p}"
    );
    let left = p["certificate"]["days_left"].as_i64().unwrap();
    assert!((3..=5).contains(&left), "{p}");
    // The ledger keeps both certificates' expiry (the server's is rcgen's default, far off).
    let ledger = ferrysync::state::Ledger::open(&s.state).unwrap();
    let certs = ledger.certificates("outbox").unwrap();
    let which: Vec<&str> = certs.iter().map(|c| c.which.as_str()).collect();
    assert_eq!(which, ["server", "client"]);
    assert!(certs[0].not_after > ferrysync::state::now_unix() + 365 * 86_400);
}

#[test]
fn a_missed_expect_deadline_alerts_late_once() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "notify-late");
    // Two pull jobs on the same remote folder holding one file: `enough` expects one new file
    // a minute, `short` five. Both pull at start-up (poll), before the next minute's deadline.
    s.put_remote("one.csv", b"1\n");
    let alerts = s.dir.path().join("alerts");
    std::fs::create_dir_all(&alerts).unwrap();
    for (name, expected) in [("enough", 1), ("short", 5)] {
        let local = s.dir.path().join(name);
        let yaml = s
            .job_yaml(&format!(
                "direction: pull\npoll: 1h\nnotify:\n  exec: [sh, -c, 'cat >> {dir}/{name}.json']\nexpect:\n  new_files: {expected}\n  by: \"* * * * *\"\n",
                dir = alerts.display()
            ))
            .replace(&format!("local: {}", s.local.display()), &format!("local: {}", local.display()));
        s.write_job(name, &yaml);
    }
    // Start at least 30 s before a minute's end, so the start-up pulls finish before the
    // deadline even on a loaded machine.
    let into_minute = ferrysync::state::now_unix() % 60;
    if into_minute > 30 {
        std::thread::sleep(Duration::from_secs(61 - into_minute as u64));
    }
    let mut agent = Command::new(env!("CARGO_BIN_EXE_ferrysync"))
        .args(["run", "--stop-timeout", "5s"])
        .env("FERRYSYNC_JOBS", &s.jobs)
        .env("FERRYSYNC_STATE", &s.state)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let short = alerts.join("short.json");
    let pulled = |name: &str| s.dir.path().join(name).join("one.csv").exists();
    let deadline = Instant::now() + Duration::from_secs(75);
    while !(pulled("enough") && pulled("short")) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let pulled_by = ferrysync::state::now_unix();
    while !short.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let a second alert for the same deadline show itself, if there were one.
    std::thread::sleep(Duration::from_secs(2));
    let _ = Command::new("kill").arg(agent.id().to_string()).status();
    let _ = agent.wait();
    let text = std::fs::read_to_string(&short).expect("a late alert for `short`");
    let payloads: Vec<Value> = serde_json::Deserializer::from_str(&text)
        .into_iter::<Value>()
        .map(Result::unwrap)
        .collect();
    assert_eq!(payloads.len(), 1, "{text}");
    let p = &payloads[0];
    assert_eq!(p["event"], "late");
    assert_eq!(p["expect"]["expected_files"], 5);
    assert_eq!(
        p["expect"]["downloaded_files"], 1,
        "pulled by {pulled_by}: {p}"
    );
    assert!(
        p["expect"]["deadline"].as_str().unwrap().ends_with(":00Z"),
        "{p}"
    );
    assert!(
        !alerts.join("enough.json").exists(),
        "a met deadline does not alert"
    );
}

#[test]
fn an_https_webhook_is_verified_against_its_ca_file_or_the_system_roots() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "notify-https");
    let (hook, ca_pem) = https_receiver();
    let ca = s.dir.path().join("hook-ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let https = |ca_line: &str| {
        hook_yaml(&s, hook.port, "[success]")
            .replace("http://127.0.0.1", "https://127.0.0.1")
            .replace("    timeout: 3s\n", &format!("    timeout: 3s\n{ca_line}"))
    };
    s.job(
        "trusted",
        &https(&format!("    ca_file: {}\n", ca.display())),
    );
    s.write_local("a.txt", b"a");
    s.sync("trusted").expect_code(0);
    assert_eq!(hook.events(), ["success"]);
    assert_signed(&hook.requests()[0]);
    // The system's roots do not know the receiver's certificate: refused, logged, and the
    // sync still succeeds.
    let other = Sandbox::new(&server, "notify-https-untrusted");
    other.job("untrusted", &https(""));
    other.write_local("b.txt", b"b");
    let run = other.sync("untrusted");
    run.expect_code(0).expect_output("attempt 1 of 4 failed");
    assert!(
        run.text().to_lowercase().contains("certificate"),
        "{}",
        run.text()
    );
    assert_eq!(hook.events(), ["success"], "nothing reached the receiver");
}

/// Every server kind: a run records the not-after of the certificate the server presented.
fn a_run_records_the_server_certificates_expiry(server: &Server) {
    let s = Sandbox::new(server, "notify-cert-seen");
    s.job("seen", "");
    s.write_local("a.txt", b"a");
    s.sync("seen").expect_code(0);
    let ledger = ferrysync::state::Ledger::open(&s.state).unwrap();
    let certs = ledger.certificates("seen").unwrap();
    assert_eq!(certs.len(), 1, "{certs:?}");
    assert_eq!(certs[0].which, "server");
    // The real servers' certificate is issued by the suite's CA (server.pem beside ca.pem);
    // the loopback server's is self-signed (its `ca`).
    let leaf = server.ca.with_file_name("server.pem");
    let pem = std::fs::read(if leaf.exists() { &leaf } else { &server.ca }).unwrap();
    let expected: Vec<i64> = rustls_pemfile::certs(&mut pem.as_slice())
        .map(|c| {
            let der = c.unwrap();
            ferrysync::remote::CertificateDates::of(der.as_ref())
                .unwrap()
                .not_after
        })
        .collect();
    assert!(
        expected.contains(&certs[0].not_after),
        "{certs:?} not among {expected:?}"
    );
    assert!(certs[0].not_after > ferrysync::state::now_unix());
}
