//! `ferrysync run` as a process: started on a sandbox's jobs and ledger, its log collected line
//! by line for the test to wait on, stopped with a signal; killed if a test fails before that.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Sandbox;

/// A running `ferrysync run`.
pub struct Agent {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    /// `ferrysync run ARGS` on the sandbox's jobs and ledger, logging at `log_filter`.
    pub fn start(s: &Sandbox, args: &[&str], log_filter: &str) -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferrysync"))
            .arg("run")
            .args(args)
            .env("FERRYSYNC_JOBS", &s.jobs)
            .env("FERRYSYNC_STATE", &s.state)
            .env("FERRYSYNC_LOG", log_filter)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Agent { child, log }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits for a log line containing `needle`.
    #[track_caller]
    pub fn wait_log(&self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "no `{needle}` in the agent's log within {within:?}:\n{}",
            self.log_text()
        );
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the agent to exit: its exit code and log; the test fails if it still runs
    /// after `within` (`what` says what was expected of it).
    #[track_caller]
    pub fn exit_within(mut self, within: Duration, what: &str) -> (Option<i32>, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return (status.code(), self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the agent still runs after {within:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM; the agent must exit 0 within `within`. Returns its log.
    #[track_caller]
    pub fn terminate(self, within: Duration) -> String {
        self.signal("TERM");
        let (code, log) = self.exit_within(within, "SIGTERM");
        assert_eq!(code, Some(0), "exit after SIGTERM\n{log}");
        log
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
