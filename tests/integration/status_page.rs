//! `ferrysync run --listen`: the read-only status page, `/api/status` and their guards, against
//! the agent as a process and the in-process loopback server; and the page in a real browser
//! (Debian's chromium, driven by tests/browser/status_page.py through Selenium).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::harness::agent::Agent;
use super::harness::fault_proxy::{loopback_behind_proxy, Conn, Fault};
use super::harness::{missing, Sandbox, Server};

/// A file name that is markup if a page forgets to escape it.
const HOSTILE_FILE: &str = "<img src=x onerror=alert(1)>\"'&.csv";
/// A job file name that is markup (an invalid job name: the agent records it as invalid).
const HOSTILE_JOB: &str = "<script>alert(2)<\\script>";

/// `ferrysync run ARGS` on the sandbox.
fn start_agent(s: &Sandbox, args: &[&str]) -> Agent {
    let mut all = vec!["--stop-timeout", "10s"];
    all.extend_from_slice(args);
    Agent::start(s, &all, "ferrysync=info,warn")
}

/// Starts the agent listening on a free loopback port, and waits until it listens.
fn listening(s: &Sandbox, extra_args: &[&str]) -> (Agent, SocketAddr) {
    let addr = free_port();
    let listen = addr.to_string();
    let mut args = vec!["--listen", listen.as_str()];
    args.extend_from_slice(extra_args);
    let agent = start_agent(s, &args);
    agent.wait_log("status page listening on", Duration::from_secs(20));
    (agent, addr)
}

/// A loopback port nobody listens on now.
fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// One HTTP/1.1 reply.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `METHOD path` on `addr` with `headers` (a Host naming `addr` unless given), one request per
/// connection: a plain HTTP/1.1 exchange, read to the server's close.
fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if method != "GET" && method != "HEAD" {
        request.push_str("Content-Length: 0\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    http(addr, "GET", path, &[])
}

/// A sandbox whose job `good` has run once (one hostile file name uploaded), and which holds
/// a job file with a hostile name (invalid).
fn synced_sandbox(server: &Server) -> Sandbox<'_> {
    let s = Sandbox::new(server, "page");
    s.write_local("a.csv", b"alpha");
    s.write_local(HOSTILE_FILE, b"hostile");
    s.job("good", "direction: push\n");
    s.sync("good").expect_code(0);
    std::fs::write(s.jobs.join(format!("{HOSTILE_JOB}.yaml")), "local: [\n").unwrap();
    s
}

#[test]
fn the_listener_serves_the_page_and_api_read_only() {
    let server = Server::loopback();
    let s = synced_sandbox(&server);
    let (agent, addr) = listening(&s, &[]);
    let csp = "default-src 'none'";
    for (path, kind) in [
        ("/", "text/html"),
        ("/jobs/good", "text/html"),
        ("/api/status", "application/json"),
        ("/static/status.js", "text/javascript"),
        ("/static/status.css", "text/css"),
        ("/static/icon.svg", "image/svg+xml"),
        ("/favicon.ico", "image/svg+xml"),
    ] {
        let r = get(addr, path);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert!(r.header("content-type").unwrap().starts_with(kind), "{r:?}");
        assert!(r
            .header("content-security-policy")
            .unwrap()
            .starts_with(csp));
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        let head = http(addr, "HEAD", path, &[]);
        assert_eq!(head.status, 200, "HEAD {path}: {head:?}");
        assert_eq!(head.body, "", "HEAD {path}");
    }
    let page = get(addr, "/");
    assert!(page.body.contains("data-job=\"good\""), "{}", page.body);
    assert!(page
        .body
        .contains("<script src=\"/static/status.js\" defer></script>"));
    assert!(
        !page.body.contains("<script>"),
        "no inline script: {}",
        page.body
    );
    let job = get(addr, "/jobs/good");
    assert!(job.body.contains("<td>uploaded</td>"), "{}", job.body);
    // Not there: 404, a page of its own, headers too.
    for path in ["/jobs/nosuch", "/nothing", "/api/status/x"] {
        let r = get(addr, path);
        assert_eq!(r.status, 404, "{path}: {r:?}");
        assert!(r.header("content-security-policy").is_some(), "{r:?}");
    }
    // The metrics `status --prometheus` prints (series within a family come in hash order).
    let m = get(addr, "/metrics");
    assert_eq!(m.status, 200, "{m:?}");
    assert!(m
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    assert!(
        m.body
            .contains("ferrysync_job_runs_total{job=\"good\",outcome=\"ok\"} 1\n"),
        "{}",
        m.body
    );
    let printed = s.ferrysync(&["status", "--prometheus"]);
    printed.expect_code(0);
    let sorted = |t: &str| {
        let mut l: Vec<String> = t.lines().map(str::to_string).collect();
        l.sort();
        l
    };
    assert_eq!(sorted(&m.body), sorted(&printed.stdout));
    // Read-only: anything but GET and HEAD is 405 on every route.
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        for path in ["/", "/api/status", "/jobs/good", "/metrics"] {
            let r = http(addr, method, path, &[]);
            assert_eq!(r.status, 405, "{method} {path}: {r:?}");
            assert_eq!(r.header("allow"), Some("GET, HEAD"), "{r:?}");
        }
    }
    // A request naming another host (DNS rebinding) is refused without a token.
    for host in ["evil.example", "evil.example:80", "10.0.0.1"] {
        let r = http(addr, "GET", "/api/status", &[("Host", host)]);
        assert_eq!(r.status, 403, "Host {host}: {r:?}");
    }
    assert_eq!(
        http(
            addr,
            "GET",
            "/",
            &[("Host", &format!("localhost:{}", addr.port()))]
        )
        .status,
        200
    );
    let log = agent.terminate(Duration::from_secs(20));
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn api_status_is_exactly_the_status_json_document() {
    let server = Server::loopback();
    let s = synced_sandbox(&server);
    let (agent, addr) = listening(&s, &[]);
    // The agent records the invalid job file at start: both read the same ledger.
    let api = get(addr, "/api/status");
    let cli = s.ferrysync(&["status", "--json"]);
    cli.expect_code(0);
    assert_eq!(api.status, 200);
    assert_eq!(api.body, cli.stdout, "the same text, byte for byte");
    let doc: Value = serde_json::from_str(&api.body).unwrap();
    let names: Vec<&str> = doc["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [HOSTILE_JOB, "good"], "{doc:#}");
    assert_eq!(doc["jobs"][0]["state"], "invalid");
    assert_eq!(doc["jobs"][1]["last_run"]["files_up"], 2);
    agent.terminate(Duration::from_secs(20));
}

#[test]
fn hostile_names_are_escaped_on_the_page() {
    let server = Server::loopback();
    let s = synced_sandbox(&server);
    let (agent, addr) = listening(&s, &[]);
    let index = get(addr, "/").body;
    let job = get(addr, "/jobs/good").body;
    for (page, raw, escaped) in [
        (
            &index,
            HOSTILE_JOB,
            "&lt;script&gt;alert(2)&lt;\\script&gt;".to_string(),
        ),
        (
            &job,
            HOSTILE_FILE,
            "&lt;img src=x onerror=alert(1)&gt;&quot;&#39;&amp;.csv".to_string(),
        ),
    ] {
        assert!(!page.contains(raw), "raw {raw:?} in the page:\n{page}");
        assert!(page.contains(&escaped), "no {escaped:?} in:\n{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("<script>"), "{page}");
    }
    // The hostile job's own page: its name comes from the URL, percent-decoded.
    let hostile = get(addr, "/jobs/%3Cscript%3Ealert(2)%3C%5Cscript%3E");
    assert_eq!(hostile.status, 200, "{hostile:?}");
    assert!(!hostile.body.contains("<script>"), "{}", hostile.body);
    let nosuch = get(addr, "/jobs/%3Cb%3Enosuch");
    assert_eq!(nosuch.status, 404);
    assert!(nosuch.body.contains("&lt;b&gt;nosuch"), "{}", nosuch.body);
    agent.terminate(Duration::from_secs(20));
}

#[test]
fn an_address_other_than_loopback_needs_a_token() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "page-bind");
    s.job("good", "direction: push\n");
    let empty = s.dir.path().join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let empty = empty.display().to_string();
    let refused = |args: &[&str], why: &str| {
        let (code, log) =
            start_agent(&s, args).exit_within(Duration::from_secs(20), "refusing to start");
        assert_eq!(code, Some(2), "{args:?}:\n{log}");
        assert!(log.contains(why), "{args:?}: no {why:?} in:\n{log}");
    };
    for addr in ["0.0.0.0:9464", "[::]:9464", "192.0.2.1:9464"] {
        refused(
            &["--listen", addr],
            "is not a loopback address; serving the status beyond this machine requires a \
             bearer token: --listen-token-file FILE",
        );
    }
    // A token file that is empty or cannot be read: refused too, before anything runs.
    refused(
        &["--listen", "0.0.0.0:9464", "--listen-token-file", &empty],
        "the file is empty",
    );
    refused(
        &[
            "--listen",
            "127.0.0.1:9464",
            "--listen-token-file",
            "/nonexistent/token",
        ],
        "cannot read the token",
    );
    // A token without a listener is a usage error.
    refused(&["--listen-token-file", &empty], "--listen");
    assert!(
        !s.state.exists(),
        "nothing ran, not even the ledger's creation"
    );
}

#[test]
fn with_a_token_every_route_requires_it() {
    let server = Server::loopback();
    let s = synced_sandbox(&server);
    let token = "t0ken-5f1e9a3c77d2b4e8";
    let file = s.dir.path().join("token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let file = file.display().to_string();
    // Every address, served to a client on loopback: the token decides, not the Host.
    let port = free_port().port();
    let listen = format!("0.0.0.0:{port}");
    let agent = start_agent(&s, &["--listen", &listen, "--listen-token-file", &file]);
    agent.wait_log("bearer token required", Duration::from_secs(20));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let bearer = format!("Bearer {token}");
    for path in [
        "/",
        "/api/status",
        "/jobs/good",
        "/static/status.js",
        "/nothing",
    ] {
        for wrong in [
            None,
            Some("Bearer t0ken-5f1e9a3c77d2b4e"),
            Some("Bearer t0ken-5f1e9a3c77d2b4e88"),
            Some("Basic dTpw"),
        ] {
            let headers: Vec<(&str, &str)> =
                wrong.map(|w| ("Authorization", w)).into_iter().collect();
            let r = http(addr, "GET", path, &headers);
            assert_eq!(r.status, 401, "{path} with {wrong:?}: {r:?}");
            assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
            assert!(!r.body.contains("good"), "{r:?}");
        }
        let r = http(
            addr,
            "GET",
            path,
            &[("Authorization", &bearer), ("Host", "status.example.com")],
        );
        let expected = if path == "/nothing" { 404 } else { 200 };
        assert_eq!(r.status, expected, "{path} with the token: {r:?}");
    }
    let post = http(addr, "POST", "/api/status", &[("Authorization", &bearer)]);
    assert_eq!(post.status, 405, "{post:?}");
    let log = agent.terminate(Duration::from_secs(20));
    assert!(!log.contains(token), "the token is never logged:\n{log}");
}

#[test]
fn a_port_in_use_is_logged_and_the_agent_runs_on() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "page-busy");
    s.write_local("a.csv", b"alpha");
    s.job("good", "direction: push\nwatch: true\n");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let agent = start_agent(&s, &["--listen", &listen]);
    agent.wait_log("status page: cannot listen on", Duration::from_secs(20));
    // The job's start-up run still happens.
    let target = s.remote_root().join("a.csv");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read(&target).ok().as_deref() != Some(&b"alpha"[..]) {
        assert!(
            Instant::now() < deadline,
            "no upload:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(taken);
    agent.terminate(Duration::from_secs(20));
}

/// The page in Debian's chromium (see tests/browser/status_page.py): a job going idle ->
/// running with progress -> ok, a failing job's error, the files of a run, no console errors.
/// Saves a screenshot into the sandbox, or to $FERRYSYNC_STATUS_PAGE_SCREENSHOT.
#[test]
fn the_status_page_in_chromium() {
    let python = Path::new("/usr/bin/python3");
    for needed in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        if !Path::new(needed).exists() {
            return missing(&format!(
                "{needed} is not installed (apt-get install chromium chromium-driver python3-selenium)"
            ));
        }
    }
    let selenium = Command::new(python)
        .args(["-c", "import selenium"])
        .status()
        .is_ok_and(|s| s.success());
    if !selenium {
        return missing("python3-selenium is not installed (apt-get install python3-selenium)");
    }
    let (server, proxy) = loopback_behind_proxy();
    let s = Sandbox::new(&server, "browser");
    s.write_local("seed.txt", b"the start-up run moves this one");
    // Every data connection through the proxy pauses 400 ms after 16 KiB: a batch of 30 files
    // of 64 KiB on two connections takes about 6 s, long enough to be watched running.
    proxy.set_data_fault(Fault::stall(
        Conn::Every,
        16 * 1024,
        Duration::from_millis(400),
    ));
    s.write_job(
        "good",
        &proxy.job_yaml(
            &s,
            "direction: push\nwatch: true\ndebounce: 500ms\ntransfers: 2\n",
        ),
    );
    let bad_local = s.dir.path().join("bad-local");
    std::fs::create_dir_all(&bad_local).unwrap();
    let wrong_password = s.dir.path().join("wrong-password");
    std::fs::write(&wrong_password, "not-the-password").unwrap();
    let bad = s
        .job_yaml("direction: push\nwatch: true\nretries:\n  attempts: 1\n")
        .replace(
            &format!("local: {}\n", s.local.display()),
            &format!("local: {}\n", bad_local.display()),
        )
        .replace(
            &server.password_file.display().to_string(),
            &wrong_password.display().to_string(),
        );
    s.write_job("bad", &bad);
    const FILES: usize = 30;
    let batch = s.dir.path().join("batch");
    for i in 0..FILES {
        let name = match i {
            // Markup in a file name: shown as text, or the browser logs a failed load.
            0 => "<img src=x onerror=console.error(1)>.dat".to_string(),
            i => format!("f{i:02}.dat"),
        };
        let content: Vec<u8> = (0..64 * 1024).map(|k| ((k * 7 + i) % 251) as u8).collect();
        std::fs::create_dir_all(&batch).unwrap();
        std::fs::write(batch.join(name), content).unwrap();
    }
    let (agent, addr) = listening(&s, &[]);
    let screenshot = std::env::var("FERRYSYNC_STATUS_PAGE_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| s.dir.path().join("status-page.png"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/status_page.py");
    let out = Command::new(python)
        .arg(&script)
        .args(["--url", &format!("http://{addr}/")])
        .args(["--good", "good", "--bad", "bad"])
        .arg("--release")
        .arg(&batch)
        .arg(s.local.join("batch"))
        .args(["--files", &FILES.to_string()])
        .arg("--screenshot")
        .arg(&screenshot)
        .arg("--job-screenshot")
        .arg(screenshot.with_file_name("status-page-job.png"))
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{report}");
    assert!(
        out.status.success(),
        "the browser test failed:\n{report}\nagent log:\n{}",
        agent.log_text()
    );
    assert!(
        screenshot.exists(),
        "no screenshot at {}",
        screenshot.display()
    );
    let log = agent.terminate(Duration::from_secs(20));
    // The page was served the whole time: every batch file is on the server.
    let remote = s.remote_root().join("batch");
    assert_eq!(std::fs::read_dir(&remote).unwrap().count(), FILES, "{log}");
}
