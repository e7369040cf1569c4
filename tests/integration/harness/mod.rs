//! The fluent harness of the integration tests: a real FTPS server (the in-process loopback
//! server, or vsftpd started by tests/servers/vsftpd.sh), a sandbox with a local tree, job files
//! and a ledger, and helpers to run the `ferrysync` binary and inspect both sides
//! independently of it (the server's files are read from its disk, or fetched with curl).

#![allow(dead_code)]

pub mod agent;
pub mod fault_proxy;
pub mod hostile;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

/// Runs each scenario (a `fn NAME(server: &Server)` in the calling module) once per server
/// kind, as `MODULE::KIND::NAME` tests: the in-process loopback server, vsftpd (explicit and
/// implicit), ProFTPD (explicit and implicit) and Pure-FTPd; `only [KIND ...]` names fewer. A
/// real server's test skips itself when its server is not running, unless tests/run.sh requires
/// them all ([`REQUIRE_SERVERS`]).
macro_rules! against_servers {
    (only [$($kind:ident)*] $($name:ident),* $(,)?) => {
        against_servers!(@kinds [$($kind)*] [$($name)*]);
    };
    ($($name:ident),* $(,)?) => {
        against_servers!(
            @kinds [loopback vsftpd vsftpd_implicit proftpd proftpd_implicit pureftpd] [$($name)*]
        );
    };
    (@kinds [$($kind:ident)*] $names:tt) => {
        $( against_servers!(@kind $kind $names); )*
    };
    (@kind $kind:ident [$($name:ident)*]) => {
        mod $kind {
            $(
                #[test]
                fn $name() {
                    if let Some(s) = crate::harness::Server::of_kind(stringify!($kind)) {
                        super::$name(&s);
                    }
                }
            )*
        }
    };
}

/// The switch tests/run.sh sets: every server a test asks for must be there (and so must what
/// else the suite needs, such as a tmpfs mount), and a missing one fails the test instead of
/// skipping it.
pub const REQUIRE_SERVERS: &str = "FERRYSYNC_REQUIRE_SERVERS";

/// The switch's first name, from when it covered vsftpd alone; still honoured, so a CI
/// configuration that sets it keeps failing on a missing server.
const REQUIRE_SERVERS_OLD_NAME: &str = "FERRYSYNC_REQUIRE_VSFTPD";

/// Whether [`REQUIRE_SERVERS`] (or its old name) is set to 1.
pub fn servers_required() -> bool {
    [REQUIRE_SERVERS, REQUIRE_SERVERS_OLD_NAME]
        .iter()
        .any(|v| std::env::var(v).as_deref() == Ok("1"))
}

/// Something a test needs is missing: under [`REQUIRE_SERVERS`] the test fails with `why`;
/// otherwise it is skipped, said once on stderr, and the caller returns.
#[track_caller]
pub fn missing(why: &str) {
    assert!(!servers_required(), "{REQUIRE_SERVERS}=1 but {why}");
    eprintln!("skipped: {why}");
}

/// Where a test's FTPS server comes from.
pub struct Server {
    pub kind: &'static str,
    /// `explicit` or `implicit`.
    pub security: &'static str,
    pub port: u16,
    pub user: String,
    pub password_file: PathBuf,
    pub ca: PathBuf,
    /// The directory on disk that the server shows as `/`.
    pub root: PathBuf,
    /// Keeps the loopback server's runtime (and temp dir) alive.
    _runtime: Option<tokio::runtime::Runtime>,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// The server of one kind, by the name `against_servers!` gives it (None: not running).
    pub fn of_kind(kind: &str) -> Option<Server> {
        match kind {
            "loopback" => Some(Server::loopback()),
            "vsftpd" => Server::vsftpd(),
            "vsftpd_implicit" => Server::vsftpd_implicit(),
            "proftpd" => Server::proftpd(),
            "proftpd_implicit" => Server::proftpd_implicit(),
            "pureftpd" => Server::pureftpd(),
            other => panic!("no server kind `{other}`"),
        }
    }

    /// The in-process FTPS server (libunftp), explicit TLS, a fresh certificate.
    pub fn loopback() -> Server {
        Self::loopback_with(true, ferrysync::loopback::DEFAULT_PASSIVE_PORTS)
    }

    /// The loopback server with its data connections on `passive_ports`.
    pub fn loopback_on(passive_ports: std::ops::RangeInclusive<u16>) -> Server {
        Self::loopback_with(true, passive_ports)
    }

    /// A loopback server speaking plain FTP only.
    pub fn loopback_plain() -> Server {
        Self::loopback_with(false, ferrysync::loopback::DEFAULT_PASSIVE_PORTS)
    }

    fn loopback_with(tls: bool, passive_ports: std::ops::RangeInclusive<u16>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let root = dir.path().join("root");
        let password = "loopback-secret-123".to_string();
        let server = rt
            .block_on(ferrysync::loopback::start_with_passive_ports(
                ferrysync::loopback::LoopbackOptions {
                    root: root.clone(),
                    cert_dir: dir.path().join("tls"),
                    user: "tester".into(),
                    password: password.clone(),
                    port: None,
                    tls,
                },
                passive_ports,
            ))
            .unwrap();
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, &password).unwrap();
        Server {
            kind: "loopback",
            security: "explicit",
            port: server.port,
            user: "tester".into(),
            password_file,
            ca: server.cert_pem_path.clone(),
            root,
            _runtime: Some(rt),
            _dir: Some(dir),
        }
    }

    /// vsftpd as started by tests/servers/vsftpd.sh (`source DIR/env`). Like every accessor of
    /// a server that tests/servers/*.sh start: `None`, said on stderr, when its variables are
    /// not set, so a plain `cargo test` skips the test; under FERRYSYNC_REQUIRE_SERVERS=1
    /// (tests/run.sh) a panic naming the variable, so a missing server fails the suite.
    pub fn vsftpd() -> Option<Server> {
        Self::from_env("FERRYSYNC_VSFTPD", "explicit")
    }

    /// ProFTPD (mod_tls, MLSD, HASH) as started by tests/servers/proftpd.sh.
    pub fn proftpd() -> Option<Server> {
        let mut s = Self::from_env("FERRYSYNC_PROFTPD", "explicit")?;
        s.kind = "proftpd";
        Some(s)
    }

    /// ProFTPD offering TLS 1.2 and 1.3 (`PROFTPD_TLS_PROTOCOLS="TLSv1.2 TLSv1.3"`,
    /// `PROFTPD_ENV_PREFIX=FERRYSYNC_PROFTPD13`).
    pub fn proftpd_tls13() -> Option<Server> {
        let mut s = Self::from_env("FERRYSYNC_PROFTPD13", "explicit")?;
        s.kind = "proftpd";
        Some(s)
    }

    /// ProFTPD with implicit FTPS (`PROFTPD_IMPLICIT=YES`,
    /// `PROFTPD_ENV_PREFIX=FERRYSYNC_PROFTPD_IMPLICIT`).
    pub fn proftpd_implicit() -> Option<Server> {
        let mut s = Self::from_env("FERRYSYNC_PROFTPD_IMPLICIT", "implicit")?;
        s.kind = "proftpd";
        Some(s)
    }

    /// Pure-FTPd (TLS required on control and data connections, MLSD, MFMT, no HASH) as
    /// started by tests/servers/pureftpd.sh.
    pub fn pureftpd() -> Option<Server> {
        let mut s = Self::from_env("FERRYSYNC_PUREFTPD", "explicit")?;
        s.kind = "pureftpd";
        Some(s)
    }

    /// vsftpd requiring a client certificate (`VSFTPD_CLIENT_CERT=YES`,
    /// `VSFTPD_ENV_PREFIX=FERRYSYNC_VSFTPD_CERT`); its `client.pem`/`client.key` sit beside `ca`.
    pub fn vsftpd_client_cert() -> Option<Server> {
        Self::from_env("FERRYSYNC_VSFTPD_CERT", "explicit")
    }

    /// vsftpd allowing two connections per client (`VSFTPD_MAX_PER_IP=2`,
    /// `VSFTPD_ENV_PREFIX=FERRYSYNC_VSFTPD_LIMITED`).
    pub fn vsftpd_limited() -> Option<Server> {
        Self::from_env("FERRYSYNC_VSFTPD_LIMITED", "explicit")
    }

    /// vsftpd as a write-only drop folder: RNFR, RNTO, SIZE and RETR refused
    /// (`VSFTPD_CMDS_DENIED`, `VSFTPD_ENV_PREFIX=FERRYSYNC_VSFTPD_DROP`).
    pub fn vsftpd_drop_folder() -> Option<Server> {
        Self::from_env("FERRYSYNC_VSFTPD_DROP", "explicit")
    }

    /// vsftpd with implicit FTPS (`VSFTPD_IMPLICIT=YES VSFTPD_ENV_PREFIX=FERRYSYNC_VSFTPD_IMPLICIT`).
    pub fn vsftpd_implicit() -> Option<Server> {
        Self::from_env("FERRYSYNC_VSFTPD_IMPLICIT", "implicit")
    }

    /// vsftpd as a server behind NAT: EPSV refused and PASV naming an address its data ports
    /// are not on (`VSFTPD_CMDS_DENIED=EPSV VSFTPD_PASV_ADDRESS=127.0.0.200`,
    /// `VSFTPD_ENV_PREFIX=FERRYSYNC_VSFTPD_NAT`).
    pub fn vsftpd_nat() -> Option<Server> {
        Self::from_env("FERRYSYNC_VSFTPD_NAT", "explicit")
    }

    /// The server whose tests/servers/*.sh wrote `{prefix}_{PORT,USER,PASSWORD_FILE,CA,ROOT}`
    /// into the environment; see [`Server::vsftpd`] for what happens when they are missing.
    fn from_env(prefix: &str, security: &'static str) -> Option<Server> {
        let var = |k: &str| std::env::var(format!("{prefix}_{k}")).ok();
        let Some(port) = var("PORT") else {
            missing(&format!(
                "{prefix}_PORT is not set: its server is not running \
                 (bash tests/servers/NAME.sh start DIR; source DIR/env; tests/run.sh starts them all)"
            ));
            return None;
        };
        let required = |k: &str| {
            var(k).unwrap_or_else(|| {
                panic!("{prefix}_PORT is set but {prefix}_{k} is not: source the server's DIR/env")
            })
        };
        Some(Server {
            kind: "vsftpd",
            security,
            port: port
                .parse()
                .unwrap_or_else(|_| panic!("{prefix}_PORT={port:?} is not a port number")),
            user: required("USER"),
            password_file: required("PASSWORD_FILE").into(),
            ca: required("CA").into(),
            root: required("ROOT").into(),
            _runtime: None,
            _dir: None,
        })
    }

    pub fn password(&self) -> String {
        std::fs::read_to_string(&self.password_file)
            .unwrap()
            .trim()
            .to_string()
    }

    /// Creates `path` (relative to the server root) and its parents, owned like the root, so
    /// the server's user can change it.
    pub fn put(&self, rel: &str, content: &[u8]) {
        let p = self.root.join(rel);
        self.mkdirs(p.parent().unwrap());
        std::fs::write(&p, content).unwrap();
        self.chown(&p);
    }

    pub fn mkdirs(&self, dir: &Path) {
        let mut missing = Vec::new();
        let mut d = dir.to_path_buf();
        while !d.exists() {
            missing.push(d.clone());
            d = d.parent().unwrap().to_path_buf();
        }
        for m in missing.iter().rev() {
            std::fs::create_dir(m).unwrap();
            self.chown(m);
        }
    }

    fn chown(&self, p: &Path) {
        let meta = std::fs::metadata(&self.root).unwrap();
        let _ = std::os::unix::fs::chown(p, Some(meta.uid()), Some(meta.gid()));
    }
}

/// vsftpd's protocol log, as tests/servers/vsftpd.sh exports it with the server's port.
pub fn vsftpd_log() -> PathBuf {
    std::env::var("FERRYSYNC_VSFTPD_LOG")
        .expect("vsftpd.sh exports FERRYSYNC_VSFTPD_LOG with FERRYSYNC_VSFTPD_PORT")
        .into()
}

/// The FTP commands vsftpd logged (`log_ftp_protocol=YES`) after byte `from` of its log, as
/// (session pid, command) pairs.
pub fn vsftpd_commands(log: &Path, from: u64) -> Vec<(String, String)> {
    let text = std::fs::read(log).unwrap();
    let text = String::from_utf8_lossy(&text[from as usize..]).to_string();
    text.lines()
        .filter_map(|l| {
            let pid = l.split("[pid ").nth(1)?.split(']').next()?.to_string();
            let cmd = l.split("FTP command: Client \"127.0.0.1\", \"").nth(1)?;
            Some((pid, cmd.strip_suffix('"')?.to_string()))
        })
        .collect()
}

/// One file or directory of a tree, for comparing trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File(blake3::Hash, u64),
}

/// Reads a tree from disk: relative path -> node. Temporary files are included, so a
/// leftover `.name.ferrysync-part` shows up as a difference.
pub fn read_tree(root: &Path) -> BTreeMap<String, Node> {
    fn walk(root: &Path, rel: &str, out: &mut BTreeMap<String, Node>) {
        let Ok(rd) = std::fs::read_dir(root.join(rel)) else {
            return;
        };
        for e in rd {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().to_string();
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                out.insert(child.clone(), Node::Dir);
                walk(root, &child, out);
            } else {
                let bytes = std::fs::read(e.path()).unwrap();
                out.insert(child, Node::File(blake3::hash(&bytes), bytes.len() as u64));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A test's own local tree, job directory, ledger and remote directory.
pub struct Sandbox<'a> {
    pub server: &'a Server,
    pub dir: tempfile::TempDir,
    pub local: PathBuf,
    pub jobs: PathBuf,
    pub state: PathBuf,
    /// The remote directory of the job, e.g. `/t-3-push`.
    pub remote_dir: String,
}

/// The result of one `ferrysync` invocation.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }
    pub fn text(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(self.code, code, "{}", self.text());
        self
    }
    #[track_caller]
    pub fn expect_output(&self, needle: &str) -> &Run {
        assert!(
            self.stdout.contains(needle) || self.stderr.contains(needle),
            "expected {needle:?} in the output:\n{}",
            self.text()
        );
        self
    }
}

impl<'a> Sandbox<'a> {
    pub fn new(server: &'a Server, name: &str) -> Sandbox<'a> {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("local");
        let jobs = dir.path().join("jobs");
        std::fs::create_dir_all(&local).unwrap();
        std::fs::create_dir_all(&jobs).unwrap();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let remote_dir = format!("/t-{}-{n}-{name}", std::process::id());
        Sandbox {
            server,
            state: dir.path().join("state/ledger.db"),
            dir,
            local,
            jobs,
            remote_dir,
        }
    }

    /// A second sandbox (its own local tree, jobs and ledger) on the same remote directory as
    /// `other`: to pull back what `other` pushed.
    pub fn sharing_remote_of(other: &Sandbox<'a>, name: &str) -> Sandbox<'a> {
        let mut s = Sandbox::new(other.server, name);
        s.remote_dir = other.remote_dir.clone();
        s
    }

    /// The job file text for this sandbox, with `extra` YAML lines appended.
    pub fn job_yaml(&self, extra: &str) -> String {
        format!(
            "local: {local}\nremote:\n  host: 127.0.0.1\n  port: {port}\n  security: {security}\n  path: {path}\n  user: {user}\n  password_file: {pw}\n  tls:\n    ca_file: {ca}\n{extra}",
            local = self.local.display(),
            port = self.server.port,
            security = self.server.security,
            path = self.remote_dir,
            user = self.server.user,
            pw = self.server.password_file.display(),
            ca = self.server.ca.display(),
        )
    }

    /// Writes `jobs/NAME.yaml` from raw text.
    ///
    /// A pull job whose test sets neither `settle:` nor a ready marker gets `settle: 0` here,
    /// the one place that does it: pulls default to `settle: 1m` and wait for new files within
    /// the run, so every pull test would otherwise wait a minute per new file. The tests of
    /// settling (tests/integration/settle.rs) and of markers set their own.
    pub fn write_job(&self, name: &str, text: &str) -> &Self {
        let sets_its_own = ["settle:", "ready_marker:", "batch_marker:"]
            .iter()
            .any(|k| text.contains(k));
        let text = if text.contains("direction: pull") && !sets_its_own {
            let sep = if text.ends_with('\n') { "" } else { "\n" };
            format!("{text}{sep}settle: 0\n")
        } else {
            text.to_string()
        };
        std::fs::write(self.jobs.join(format!("{name}.yaml")), text).unwrap();
        self
    }

    /// Writes `jobs/NAME.yaml` for this sandbox with `extra` options.
    pub fn job(&self, name: &str, extra: &str) -> &Self {
        self.write_job(name, &self.job_yaml(extra))
    }

    pub fn ferrysync(&self, args: &[&str]) -> Run {
        self.ferrysync_with_env(args, &[])
    }

    /// `ferrysync ARGS` with more environment variables (`FERRYSYNC_LOG`, say).
    pub fn ferrysync_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let out = Command::new(env!("CARGO_BIN_EXE_ferrysync"))
            .args(args)
            .env("FERRYSYNC_JOBS", &self.jobs)
            .env("FERRYSYNC_STATE", &self.state)
            .env_remove("FERRYSYNC_LOG")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        Run::from(out)
    }

    pub fn sync(&self, job: &str) -> Run {
        self.ferrysync(&["sync", job])
    }

    /// The latest run of `job` as text, for assertion messages.
    pub fn text_of_last_run(&self, job: &str) -> String {
        self.ferrysync(&["history", job, "--limit", "1", "--json"])
            .stdout
    }

    /// The latest run of `job` from `history --json`.
    pub fn last_run(&self, job: &str) -> Value {
        let run = self.ferrysync(&["history", job, "--limit", "1", "--json"]);
        run.expect_code(0);
        let v: Value = serde_json::from_str(&run.stdout).unwrap();
        v[0].clone()
    }

    /// (files_up, files_down, files_deleted, files_failed) of the latest run.
    pub fn counts(&self, job: &str) -> (u64, u64, u64, u64) {
        let r = self.last_run(job);
        let n = |k: &str| r[k].as_u64().unwrap();
        (
            n("files_up"),
            n("files_down"),
            n("files_deleted"),
            n("files_failed"),
        )
    }

    pub fn write_local(&self, rel: &str, content: &[u8]) {
        let p = self.local.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    /// The job's remote directory on the server's disk.
    pub fn remote_root(&self) -> PathBuf {
        self.server
            .root
            .join(self.remote_dir.trim_start_matches('/'))
    }

    pub fn local_tree(&self) -> BTreeMap<String, Node> {
        read_tree(&self.local)
    }

    pub fn remote_tree(&self) -> BTreeMap<String, Node> {
        read_tree(&self.remote_root())
    }

    /// Puts a file into the job's remote directory (as the server's user).
    pub fn put_remote(&self, rel: &str, content: &[u8]) {
        self.server.put(
            &format!("{}/{rel}", self.remote_dir.trim_start_matches('/')),
            content,
        );
    }

    /// Fetches a remote file with curl over FTPS, a client independent of ferrysync.
    pub fn curl_get(&self, rel: &str) -> Vec<u8> {
        // ftps:// is implicit TLS in curl; ftp:// with --ssl-reqd is AUTH TLS.
        let scheme = if self.server.security == "implicit" {
            "ftps"
        } else {
            "ftp"
        };
        let url = format!(
            "{scheme}://localhost:{}{}/{}",
            self.server.port,
            self.remote_dir,
            rel.split('/')
                .map(percent_encode)
                .collect::<Vec<_>>()
                .join("/")
        );
        let out = Command::new("curl")
            .args(["--silent", "--show-error", "--ssl-reqd", "--cacert"])
            .arg(&self.server.ca)
            .arg("--user")
            .arg(format!("{}:{}", self.server.user, self.server.password()))
            .arg(&url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `size` bytes (a multiple of 1 MiB) that are not all alike, so a misplaced block changes the
/// hash; returns their BLAKE3.
pub fn write_patterned_file(path: &Path, size: u64) -> blake3::Hash {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut hasher = blake3::Hasher::new();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut block = vec![0u8; 1 << 20];
    for i in 0..(size >> 20) {
        for (k, b) in block.iter_mut().enumerate() {
            *b = ((k as u64).wrapping_mul(2654435761) >> 7) as u8 ^ i as u8;
        }
        std::io::Write::write_all(&mut f, &block).unwrap();
        hasher.update(&block);
    }
    std::io::Write::flush(&mut f).unwrap();
    hasher.finalize()
}

/// The BLAKE3 of a file on disk.
pub fn hash_file(path: &Path) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(std::fs::File::open(path).unwrap())
        .unwrap();
    hasher.finalize()
}

/// One 1 GiB file for the whole test binary (written once, then hard-linked into each test's
/// local tree): path and BLAKE3. Its directory, in the temp dir (TMPDIR), is removed when the
/// test binary exits; tests/run.sh points TMPDIR into its work directory, so even a killed
/// binary leaves nothing behind there.
pub fn gib_file() -> &'static (PathBuf, blake3::Hash) {
    static FILE: std::sync::OnceLock<(PathBuf, blake3::Hash)> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("ferrysync-gib")
            .tempdir()
            .unwrap()
            .keep();
        remove_at_exit(dir.clone());
        let path = dir.join("1GiB.bin");
        let hash = write_patterned_file(&path, 1 << 30);
        (path, hash)
    })
}

/// Removes `dir` when the test binary exits. A directory shared by several tests is held by a
/// static, and statics are never dropped, so a `TempDir` there would outlive the run; libc's
/// `atexit` runs after the test harness returns from `main`, or calls `exit` on failures.
fn remove_at_exit(dir: PathBuf) {
    static DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    static REGISTER: std::sync::Once = std::sync::Once::new();
    extern "C" fn remove_dirs() {
        let dirs = DIRS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for dir in dirs.iter() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    extern "C" {
        fn atexit(callback: extern "C" fn()) -> std::os::raw::c_int;
    }
    REGISTER.call_once(|| {
        // SAFETY: `atexit` is the C library's (std links it); `remove_dirs` is a plain function
        // that takes no arguments, does not unwind (it swallows every error) and lives as long
        // as the process.
        let rc = unsafe { atexit(remove_dirs) };
        assert_eq!(rc, 0, "atexit could not register the temp dir cleanup");
    });
    DIRS.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(dir);
}

/// A tree of `files` files spread over nested directories, with empty files, an empty
/// directory, names with spaces and UTF-8, and binary content (CR, LF, NUL bytes).
pub fn populate(root: &Path, files: usize) {
    for i in 0..files {
        let dir = match i % 5 {
            0 => String::new(),
            1 => format!("dir {}", i % 7),
            2 => format!("dir {}/sub-{}", i % 7, i % 3),
            3 => format!("données/ünïcode {}", i % 4),
            _ => format!("a/b/c/d/e/f/g/h{}", i % 2),
        };
        let name = if i % 11 == 0 {
            format!("file {i}.bin")
        } else {
            format!("f{i}.dat")
        };
        let content: Vec<u8> = if i % 13 == 0 {
            Vec::new()
        } else {
            (0..(i * 37 % 4096 + 1))
                .map(|k| ((k * 31 + i) % 256) as u8)
                .collect()
        };
        let p = root.join(&dir).join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    std::fs::create_dir_all(root.join("empty dir/nested empty")).unwrap();
}
