//! `ferrysync status --prometheus` after real runs: the counters and gauges agree with what
//! the runs did (and with `history --json`), a failing job shows its streak, `--prometheus-file`
//! writes the same, and `promtool check metrics` (FERRYSYNC_PROMTOOL, set by tests/run.sh)
//! accepts the text.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::harness::fault_proxy::{loopback_behind_proxy, Conn, Dir, Fault};
use crate::harness::{missing, Sandbox, Server};

against_servers!(runs_of_every_outcome_show_in_the_metrics);

/// `name{labels}` -> value, of every sample line of `status --prometheus`.
fn scrape(s: &Sandbox) -> (String, BTreeMap<String, f64>) {
    let run = s.ferrysync(&["status", "--prometheus"]);
    run.expect_code(0);
    let samples = run
        .stdout
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample: {l:?}"));
            let value = value
                .parse()
                .unwrap_or_else(|_| panic!("not a value: {l:?}"));
            (series.to_string(), value)
        })
        .collect();
    (run.stdout, samples)
}

/// The value of `series`, which must be there.
#[track_caller]
fn value(samples: &BTreeMap<String, f64>, text: &str, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// The sum of `field` over every run `history --json` shows of `job`.
fn history_sum(s: &Sandbox, job: &str, field: &str) -> u64 {
    let run = s.ferrysync(&["history", job, "--limit", "100", "--json"]);
    run.expect_code(0);
    let runs: Value = serde_json::from_str(&run.stdout).unwrap();
    runs.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r[field]
                .as_u64()
                .unwrap_or_else(|| panic!("no {field} in {r}"))
        })
        .sum()
}

/// Runs `promtool check metrics` on `text`, where the suite provides promtool.
fn promtool_accepts(text: &str) {
    let Ok(promtool) = std::env::var("FERRYSYNC_PROMTOOL") else {
        missing("FERRYSYNC_PROMTOOL is not set (tests/run.sh sets it: tests/servers/promtool.sh)");
        return;
    };
    let mut child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{promtool}: {e}"));
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A push, a pull of what it pushed and a job that fails twice, then a second push: every
/// number `status --prometheus` gives is checked against the files and the history.
fn runs_of_every_outcome_show_in_the_metrics(server: &Server) {
    let s = Sandbox::new(server, "metrics");
    let started = chrono::Utc::now().timestamp();
    let sizes = [0usize, 1, 1000, 70_000];
    for (i, n) in sizes.iter().enumerate() {
        s.write_local(&format!("d{i}/f{i}.bin"), &vec![b'x'; *n]);
    }
    let bytes: usize = sizes.iter().sum();
    s.job("up", "");
    s.sync("up").expect_code(0);

    let pulled = s.dir.path().join("pulled");
    let down = s.job_yaml("direction: pull\n").replace(
        &format!("local: {}", s.local.display()),
        &format!("local: {}", pulled.display()),
    );
    s.write_job("down", &down);
    s.sync("down").expect_code(0);

    // A pull from a remote folder that does not exist fails as a whole, every time.
    let broken = s
        .job_yaml("direction: pull\n")
        .replace(
            &format!("path: {}", s.remote_dir),
            &format!("path: {}-missing", s.remote_dir),
        )
        .replace(
            &format!("local: {}", s.local.display()),
            &format!("local: {}", s.dir.path().join("broken").display()),
        );
    s.write_job("broken", &broken);
    s.sync("broken").expect_code(1);
    s.sync("broken").expect_code(1);

    let (text, m) = scrape(&s);
    let v = |series: &str| value(&m, &text, series);
    let now = chrono::Utc::now().timestamp() as f64;
    assert_eq!(
        v(r#"ferrysync_job_files_total{job="up",direction="push",outcome="transferred"}"#),
        4.0
    );
    assert_eq!(
        v(r#"ferrysync_job_bytes_total{job="up",direction="push",outcome="transferred"}"#),
        bytes as f64
    );
    assert_eq!(
        v(r#"ferrysync_job_files_total{job="down",direction="pull",outcome="transferred"}"#),
        4.0
    );
    assert_eq!(
        v(r#"ferrysync_job_bytes_total{job="down",direction="pull",outcome="transferred"}"#),
        bytes as f64
    );
    for job in ["up", "down"] {
        let last = v(&format!(
            "ferrysync_job_last_success_timestamp_seconds{{job=\"{job}\"}}"
        ));
        assert!(
            (started as f64..=now).contains(&last),
            "{job}: {last} not in {started}..{now}"
        );
        assert_eq!(
            v(&format!(
                "ferrysync_job_runs_total{{job=\"{job}\",outcome=\"ok\"}}"
            )),
            1.0
        );
        assert_eq!(
            v(&format!(
                "ferrysync_job_consecutive_failures{{job=\"{job}\"}}"
            )),
            0.0
        );
        assert_eq!(v(&format!("ferrysync_job_running{{job=\"{job}\"}}")), 0.0);
        for (metric, field) in [("retries", "retries"), ("tls_fallbacks", "tls_fallbacks")] {
            assert_eq!(
                v(&format!("ferrysync_job_{metric}_total{{job=\"{job}\"}}")),
                history_sum(&s, job, field) as f64,
                "{metric} of {job}"
            );
        }
    }
    assert_eq!(
        v(r#"ferrysync_job_consecutive_failures{job="broken"}"#),
        2.0
    );
    assert_eq!(
        v(r#"ferrysync_job_runs_total{job="broken",outcome="failed"}"#),
        2.0
    );
    assert_eq!(
        v(r#"ferrysync_job_last_success_timestamp_seconds{job="broken"}"#),
        0.0
    );
    assert!(v(r#"ferrysync_job_last_run_timestamp_seconds{job="broken"}"#) >= started as f64);
    assert_eq!(
        v(r#"ferrysync_job_files_total{job="broken",direction="pull",outcome="transferred"}"#),
        0.0
    );
    promtool_accepts(&text);

    // One more file: the counters go up by what the second run did, and no further.
    s.write_local("d1/new.bin", b"12345");
    s.sync("up").expect_code(0);
    let (text, m) = scrape(&s);
    let v = |series: &str| value(&m, &text, series);
    assert_eq!(
        v(r#"ferrysync_job_files_total{job="up",direction="push",outcome="transferred"}"#),
        5.0
    );
    assert_eq!(
        v(r#"ferrysync_job_bytes_total{job="up",direction="push",outcome="transferred"}"#),
        (bytes + 5) as f64
    );
    assert_eq!(v(r#"ferrysync_job_runs_total{job="up",outcome="ok"}"#), 2.0);
    // The server's certificate, as the runs met it: the test CA's leaves are valid for years.
    let expiry =
        v(r#"ferrysync_tls_certificate_expiry_timestamp_seconds{job="up",certificate="server"}"#);
    assert!(expiry > started as f64 + 86_400.0, "{text}");

    // --prometheus-file: the same samples, in a file the collector can read.
    let prom = s.dir.path().join("textfile/ferrysync.prom");
    std::fs::create_dir_all(prom.parent().unwrap()).unwrap();
    s.ferrysync(&["status", "--prometheus-file", prom.to_str().unwrap()])
        .expect_code(0);
    let written = std::fs::read_to_string(&prom).unwrap();
    let mut from_file: Vec<&str> = written.lines().collect();
    let mut from_stdout: Vec<&str> = text.lines().collect();
    from_file.sort();
    from_stdout.sort();
    assert_eq!(from_file, from_stdout);
    promtool_accepts(&written);
}

/// A data connection cut mid-upload is retried: the run records the retry and the counter
/// shows it.
#[test]
fn a_retried_transfer_is_counted() {
    let (server, proxy) = loopback_behind_proxy();
    let s = Sandbox::new(&server, "metrics-retry");
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    s.write_local("big.bin", &data);
    s.write_job("j", &proxy.job_yaml(&s, "retries: 3\ntransfers: 1\n"));
    proxy.set_data_fault(Fault::cut(Conn::First, 1 << 20).dir(Dir::ToServer));
    let run = s.sync("j");
    assert!(
        proxy.wait_fired(1, Duration::from_secs(5)),
        "{}",
        run.text()
    );
    run.expect_code(0);
    let (text, m) = scrape(&s);
    assert_eq!(history_sum(&s, "j", "retries"), 1, "{}", run.text());
    assert_eq!(
        value(&m, &text, r#"ferrysync_job_retries_total{job="j"}"#),
        1.0
    );
    assert_eq!(
        value(
            &m,
            &text,
            r#"ferrysync_job_files_total{job="j",direction="push",outcome="transferred"}"#
        ),
        1.0
    );
}

/// ProFTPD with TLS 1.3: once the control session's tickets are used up, the run's new
/// connections move to TLS 1.2 (see "TLS session reuse and TLS 1.3" in the README); the
/// run records that fall-back once, and the counter shows it.
#[test]
fn a_fall_back_to_tls_1_2_is_counted() {
    let Some(server) = Server::proftpd_tls13() else {
        return;
    };
    let s = Sandbox::new(&server, "metrics-tls13");
    for i in 0..12 {
        s.write_local(&format!("f{i}"), format!("{i}").as_bytes());
    }
    s.job("j", "transfers: 2\n");
    s.sync("j").expect_code(0);
    let (text, m) = scrape(&s);
    assert_eq!(history_sum(&s, "j", "tls_fallbacks"), 1);
    assert_eq!(
        value(&m, &text, r#"ferrysync_job_tls_fallbacks_total{job="j"}"#),
        1.0
    );
    promtool_accepts(&text);
}
