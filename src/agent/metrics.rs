//! The Prometheus metrics of every job, in the text exposition format (0.0.4): what
//! `ferrysync status --prometheus` prints for node_exporter's textfile collector, and what the
//! agent's listener serves. Everything comes from the ledger (the totals of `state/totals.rs`),
//! so the numbers are the same whichever process asks, and survive restarts.
//!
//! Following Prometheus' guidance for batch jobs: per job, when it last succeeded and last ran,
//! how long the last run took, whether one runs now and how many in a row failed; counters of
//! files and bytes (by direction and outcome), runs, retries and TLS fall-backs. The only
//! labels are the job, and closed sets (direction, outcome, certificate): no per-file label,
//! so the number of series stays a small multiple of the number of jobs. A fresh job has every
//! counter at 0, so `rate()` and `increase()` see its first run.

use std::io::Write as _;
use std::path::Path;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::state::{JobTotals, Ledger, LedgerError};

/// The `Content-Type` of what [`prometheus_text`] returns, for an HTTP listener.
pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Which side of a job's TLS a certificate is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateSide {
    /// The server's certificate, as a run last saw it.
    Server,
    /// The job's client certificate (`tls.client_cert`).
    Client,
}

impl CertificateSide {
    fn label(self) -> &'static str {
        match self {
            CertificateSide::Server => "server",
            CertificateSide::Client => "client",
        }
    }
}

/// When one certificate of a job expires (its not-after date), for
/// `ferrysync_tls_certificate_expiry_timestamp_seconds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateExpiry {
    pub job: String,
    pub certificate: CertificateSide,
    /// Unix seconds.
    pub not_after: i64,
}

/// Why the metrics could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("cannot encode the metrics: {0}")]
    Encode(#[from] std::fmt::Error),
    #[error("cannot write the metrics to {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FileLabels {
    job: String,
    direction: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    job: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    job: String,
    certificate: &'static str,
}

/// A gauge per job.
type JobGauge = Family<JobLabels, Gauge>;

/// The metric families, registered once per rendering.
#[derive(Default)]
struct Families {
    last_success: JobGauge,
    last_run: JobGauge,
    last_duration: JobGauge,
    running: JobGauge,
    consecutive_failures: JobGauge,
    run_done_files: JobGauge,
    run_planned_files: JobGauge,
    run_done_bytes: JobGauge,
    run_planned_bytes: JobGauge,
    files: Family<FileLabels, Counter>,
    bytes: Family<FileLabels, Counter>,
    runs: Family<OutcomeLabels, Counter>,
    retries: Family<JobLabels, Counter>,
    tls_fallbacks: Family<JobLabels, Counter>,
}

/// Every job's metrics as [`prometheus_text`] writes them, with the certificates' expiry the
/// ledger holds (recorded by each run, see `sync/notify.rs`): what `status --prometheus` and
/// the agent's `/metrics` serve.
pub fn ledger_metrics_text(ledger: Option<&Ledger>) -> Result<String, MetricsError> {
    let certificates = match ledger {
        Some(l) => l
            .all_certificates()?
            .into_iter()
            .filter_map(|c| {
                let certificate = match c.which.as_str() {
                    "server" => CertificateSide::Server,
                    "client" => CertificateSide::Client,
                    _ => return None,
                };
                Some(CertificateExpiry {
                    job: c.job,
                    certificate,
                    not_after: c.not_after,
                })
            })
            .collect(),
        None => Vec::new(),
    };
    prometheus_text(ledger, &certificates)
}

/// Every job's metrics, and `ferrysync_build_info`, as Prometheus text. `ledger`: `None` when
/// there is none yet (nothing has run). `certificates`: the not-after dates known of the jobs'
/// certificates; none, and the family is left out.
pub fn prometheus_text(
    ledger: Option<&Ledger>,
    certificates: &[CertificateExpiry],
) -> Result<String, MetricsError> {
    let totals = match ledger {
        Some(l) => l.job_totals()?,
        None => Vec::new(),
    };
    let mut registry = Registry::default();
    registry.register(
        "ferrysync_build",
        "The ferrysync version that wrote these metrics",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    if !totals.is_empty() {
        let f = Families::default();
        for t in &totals {
            f.add(t);
        }
        f.register(&mut registry);
    }
    if !certificates.is_empty() {
        let expiry = Family::<CertificateLabels, Gauge>::default();
        for c in certificates {
            expiry
                .get_or_create(&CertificateLabels {
                    job: c.job.clone(),
                    certificate: c.certificate.label(),
                })
                .set(c.not_after);
        }
        registry.register(
            "ferrysync_tls_certificate_expiry_timestamp_seconds",
            "When the certificate expires (its not-after date), in Unix seconds",
            expiry,
        );
    }
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

/// Writes `text` to `path` for node_exporter's textfile collector: into a temporary file in
/// the same directory, made readable by all (the collector runs as another user), then
/// renamed over `path`, so the collector never reads a half-written file, and a failure
/// leaves the previous file in place and no temporary file behind.
pub fn write_prometheus_file(path: &Path, text: &str) -> Result<(), MetricsError> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |source| MetricsError::Write {
        path: path.display().to_string(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // The collector reads only `*.prom` files: the temporary name ends otherwise.
    let mut tmp = tempfile::Builder::new()
        .prefix(".ferrysync-metrics.")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(fail)?;
    tmp.write_all(text.as_bytes()).map_err(fail)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(fail)?;
    tmp.as_file().sync_all().map_err(fail)?;
    tmp.persist(path).map_err(|e| fail(e.error))?;
    Ok(())
}

impl Families {
    /// The series of one job.
    fn add(&self, t: &JobTotals) {
        let job = || JobLabels { job: t.job.clone() };
        let gauge = |family: &JobGauge, v: i64| {
            family.get_or_create(&job()).set(v);
        };
        gauge(&self.last_success, t.last_success.unwrap_or(0));
        gauge(&self.last_run, t.last_run.unwrap_or(0));
        gauge(&self.last_duration, t.last_run_duration.unwrap_or(0));
        gauge(&self.running, i64::from(t.running));
        gauge(&self.consecutive_failures, clamp(t.consecutive_failures));
        let p = t.progress.clone().unwrap_or_default();
        gauge(&self.run_done_files, clamp(p.files_done));
        gauge(&self.run_planned_files, clamp(p.files_total));
        gauge(&self.run_done_bytes, clamp(p.bytes_done));
        gauge(&self.run_planned_bytes, clamp(p.bytes_total));

        // Files and bytes: the job's own direction always (0 for a fresh job); the other only
        // where its history has some (a job whose direction was changed).
        let own = if t.direction == "pull" {
            "pull"
        } else {
            "push"
        };
        let count = |family: &Family<FileLabels, Counter>, direction, outcome, n: u64| {
            if n > 0 || direction == own {
                family
                    .get_or_create(&FileLabels {
                        job: t.job.clone(),
                        direction,
                        outcome,
                    })
                    .inc_by(n);
            }
        };
        count(&self.files, "push", "transferred", t.files_up);
        count(&self.files, "pull", "transferred", t.files_down);
        count(&self.bytes, "push", "transferred", t.bytes_up);
        count(&self.bytes, "pull", "transferred", t.bytes_down);
        count(&self.files, own, "failed", t.files_failed);
        count(&self.files, own, "deleted", t.files_deleted);
        count(&self.files, own, "adopted", t.files_adopted);
        for (outcome, n) in [
            ("ok", t.runs_ok),
            ("partial", t.runs_partial),
            ("failed", t.runs_failed),
            ("interrupted", t.runs_interrupted),
        ] {
            self.runs
                .get_or_create(&OutcomeLabels {
                    job: t.job.clone(),
                    outcome,
                })
                .inc_by(n);
        }
        self.retries.get_or_create(&job()).inc_by(t.retries);
        self.tls_fallbacks
            .get_or_create(&job())
            .inc_by(t.tls_fallbacks);
    }

    fn register(self, r: &mut Registry) {
        r.register(
            "ferrysync_job_last_success_timestamp_seconds",
            "When the job's latest successful run ended, in Unix seconds (0: never)",
            self.last_success,
        );
        r.register(
            "ferrysync_job_last_run_timestamp_seconds",
            "When the job's latest finished run ended, whatever its outcome, in Unix seconds (0: never)",
            self.last_run,
        );
        r.register(
            "ferrysync_job_last_run_duration_seconds",
            "How long the job's latest finished run took",
            self.last_duration,
        );
        r.register(
            "ferrysync_job_running",
            "1 while a run of the job is in progress",
            self.running,
        );
        r.register(
            "ferrysync_job_consecutive_failures",
            "Runs in a row that ended failed or partial since the job's latest success",
            self.consecutive_failures,
        );
        r.register(
            "ferrysync_job_run_done_files",
            "Files the running run has transferred so far (0 when none runs)",
            self.run_done_files,
        );
        r.register(
            "ferrysync_job_run_planned_files",
            "Files the running run plans to transfer (0 when none runs)",
            self.run_planned_files,
        );
        r.register(
            "ferrysync_job_run_done_bytes",
            "Bytes the running run has transferred so far (0 when none runs)",
            self.run_done_bytes,
        );
        r.register(
            "ferrysync_job_run_planned_bytes",
            "Bytes the running run plans to transfer (0 when none runs)",
            self.run_planned_bytes,
        );
        r.register(
            "ferrysync_job_files",
            "Files by direction (push: uploaded, pull: downloaded) and outcome (transferred, failed, deleted on the destination, adopted without a transfer), over every finished run",
            self.files,
        );
        r.register(
            "ferrysync_job_bytes",
            "Bytes transferred by direction, over every finished run",
            self.bytes,
        );
        r.register(
            "ferrysync_job_runs",
            "Finished runs by outcome (ok includes polls that found nothing to do)",
            self.runs,
        );
        r.register(
            "ferrysync_job_retries",
            "Attempts made again after a transient failure (connection, listing, transfer)",
            self.retries,
        );
        r.register(
            "ferrysync_job_tls_fallbacks",
            "Runs whose new connections moved from TLS 1.3 to TLS 1.2 (the server's session reuse ran out of TLS 1.3 tickets, or it refused a TLS 1.3 data connection with 425)",
            self.tls_fallbacks,
        );
    }
}

/// A count as a gauge's value.
fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ledger::{JobRecord, Outcome, RunCounts, RunProgress};
    use std::collections::BTreeMap;

    /// `name{labels}` -> value, of every sample line.
    fn samples(text: &str) -> BTreeMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap();
                (series.to_string(), value.parse().unwrap())
            })
            .collect()
    }

    fn job(l: &Ledger, name: &str, direction: &str) {
        l.upsert_job(&JobRecord {
            name: name.into(),
            direction: direction.into(),
            local: "/l".into(),
            remote: "h:21/r".into(),
            schedule: None,
            timezone: None,
        })
        .unwrap();
    }

    fn run(l: &Ledger, name: &str, outcome: Outcome, counts: RunCounts) {
        let id = l.begin_run(name, "manual").unwrap();
        l.finish_run(id, outcome, &counts, None, &[]).unwrap();
    }

    /// The ledger of the tests: `ok` (two good runs), `failing` (ok, then failed twice),
    /// `running` (a run in progress) and `fresh` (known, never run).
    fn ledger(dir: &Path) -> Ledger {
        let l = Ledger::open(&dir.join("state.db")).unwrap();
        job(&l, "ok", "push");
        run(
            &l,
            "ok",
            Outcome::Ok,
            RunCounts {
                files_up: 3,
                bytes_up: 3000,
                files_deleted: 1,
                retries: 2,
                tls_fallbacks: 1,
                ..RunCounts::default()
            },
        );
        run(
            &l,
            "ok",
            Outcome::Ok,
            RunCounts {
                files_up: 1,
                bytes_up: 5,
                files_adopted: 4,
                retries: 1,
                ..RunCounts::default()
            },
        );
        job(&l, "failing", "pull");
        run(
            &l,
            "failing",
            Outcome::Ok,
            RunCounts {
                files_down: 2,
                bytes_down: 20,
                ..RunCounts::default()
            },
        );
        for _ in 0..2 {
            run(
                &l,
                "failing",
                Outcome::Failed,
                RunCounts {
                    files_failed: 1,
                    retries: 4,
                    ..RunCounts::default()
                },
            );
        }
        job(&l, "running", "push");
        let id = l.begin_run("running", "schedule").unwrap();
        l.set_progress(
            id,
            &RunProgress {
                files_done: 2,
                files_total: 5,
                bytes_done: 200,
                bytes_total: 500,
                current: vec!["a.csv".into()],
            },
        )
        .unwrap();
        job(&l, "fresh", "pull");
        l
    }

    #[test]
    fn each_job_has_its_gauges_and_counters_from_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(dir.path());
        let text = prometheus_text(Some(&l), &[]).unwrap();
        let s = samples(&text);
        let v = |k: &str| *s.get(k).unwrap_or_else(|| panic!("no {k} in\n{text}"));
        assert_eq!(
            v(&format!(
                "ferrysync_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )),
            1.0
        );

        // ok: two successes, counters summed over both runs.
        assert_eq!(
            v("ferrysync_job_files_total{job=\"ok\",direction=\"push\",outcome=\"transferred\"}"),
            4.0
        );
        assert_eq!(
            v("ferrysync_job_bytes_total{job=\"ok\",direction=\"push\",outcome=\"transferred\"}"),
            3005.0
        );
        assert_eq!(
            v("ferrysync_job_files_total{job=\"ok\",direction=\"push\",outcome=\"deleted\"}"),
            1.0
        );
        assert_eq!(
            v("ferrysync_job_files_total{job=\"ok\",direction=\"push\",outcome=\"adopted\"}"),
            4.0
        );
        assert_eq!(
            v("ferrysync_job_files_total{job=\"ok\",direction=\"push\",outcome=\"failed\"}"),
            0.0
        );
        assert_eq!(v("ferrysync_job_retries_total{job=\"ok\"}"), 3.0);
        assert_eq!(v("ferrysync_job_tls_fallbacks_total{job=\"ok\"}"), 1.0);
        assert_eq!(
            v("ferrysync_job_runs_total{job=\"ok\",outcome=\"ok\"}"),
            2.0
        );
        assert!(v("ferrysync_job_last_success_timestamp_seconds{job=\"ok\"}") > 1.7e9);
        assert_eq!(
            v("ferrysync_job_last_run_timestamp_seconds{job=\"ok\"}"),
            v("ferrysync_job_last_success_timestamp_seconds{job=\"ok\"}")
        );
        assert_eq!(v("ferrysync_job_consecutive_failures{job=\"ok\"}"), 0.0);
        assert_eq!(v("ferrysync_job_running{job=\"ok\"}"), 0.0);
        // No push series for a pull job that never pushed; its own direction's are there.
        assert!(
            !s.keys()
                .any(|k| k.contains("job=\"ok\",direction=\"pull\"")),
            "{text}"
        );

        // failing: two failures in a row after a success.
        assert_eq!(
            v("ferrysync_job_consecutive_failures{job=\"failing\"}"),
            2.0
        );
        assert_eq!(
            v("ferrysync_job_runs_total{job=\"failing\",outcome=\"failed\"}"),
            2.0
        );
        assert_eq!(
            v("ferrysync_job_runs_total{job=\"failing\",outcome=\"ok\"}"),
            1.0
        );
        assert_eq!(
            v("ferrysync_job_files_total{job=\"failing\",direction=\"pull\",outcome=\"failed\"}"),
            2.0
        );
        assert_eq!(v("ferrysync_job_files_total{job=\"failing\",direction=\"pull\",outcome=\"transferred\"}"), 2.0);
        assert_eq!(v("ferrysync_job_bytes_total{job=\"failing\",direction=\"pull\",outcome=\"transferred\"}"), 20.0);
        assert_eq!(v("ferrysync_job_retries_total{job=\"failing\"}"), 8.0);
        assert!(
            v("ferrysync_job_last_run_timestamp_seconds{job=\"failing\"}")
                >= v("ferrysync_job_last_success_timestamp_seconds{job=\"failing\"}")
        );

        // running: its progress, and no finished run yet.
        assert_eq!(v("ferrysync_job_running{job=\"running\"}"), 1.0);
        assert_eq!(v("ferrysync_job_run_done_files{job=\"running\"}"), 2.0);
        assert_eq!(v("ferrysync_job_run_planned_files{job=\"running\"}"), 5.0);
        assert_eq!(v("ferrysync_job_run_done_bytes{job=\"running\"}"), 200.0);
        assert_eq!(v("ferrysync_job_run_planned_bytes{job=\"running\"}"), 500.0);
        assert_eq!(
            v("ferrysync_job_last_run_timestamp_seconds{job=\"running\"}"),
            0.0
        );
        assert_eq!(
            v("ferrysync_job_runs_total{job=\"running\",outcome=\"ok\"}"),
            0.0
        );

        // fresh: every series there, at 0, so rate() sees the first run.
        let fresh: Vec<(&String, &f64)> = s
            .iter()
            .filter(|(k, _)| k.contains("job=\"fresh\""))
            .collect();
        // 9 gauges; files by 4 outcomes, bytes; runs by 4 outcomes; retries, fall-backs.
        assert_eq!(fresh.len(), 9 + 4 + 1 + 4 + 2, "{fresh:#?}");
        assert!(fresh.iter().all(|(_, v)| **v == 0.0), "{fresh:#?}");
        assert!(s.contains_key(
            "ferrysync_job_files_total{job=\"fresh\",direction=\"pull\",outcome=\"transferred\"}"
        ));

        // Counters are typed counters with their `_total` name; no certificate family without input.
        assert!(
            text.contains("# TYPE ferrysync_job_files_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE ferrysync_job_running gauge\n"),
            "{text}"
        );
        assert!(!text.contains("certificate"), "{text}");
    }

    #[test]
    fn counters_never_go_down_when_an_idle_poll_is_folded_and_a_poll_ends_a_failing_streak() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = ledger(dir.path());
        let before = samples(&prometheus_text(Some(&l), &[]).unwrap());
        // A poll of the failing job that found nothing to do: a success, folded away.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let id = l.begin_run("failing", "poll").unwrap();
        l.finish_run(id, Outcome::Ok, &RunCounts::default(), None, &[])
            .unwrap();
        assert!(l.fold_idle_poll("failing").unwrap());
        // A poll that needed a retry is no idle poll: its row, and its count, stay.
        let id = l.begin_run("ok", "poll").unwrap();
        let retried = RunCounts {
            retries: 1,
            ..RunCounts::default()
        };
        l.finish_run(id, Outcome::Ok, &retried, None, &[]).unwrap();
        assert!(!l.fold_idle_poll("ok").unwrap());
        let text = prometheus_text(Some(&l), &[]).unwrap();
        let after = samples(&text);
        for (k, v) in &before {
            if k.contains("_total{") {
                assert!(after[k] >= *v, "{k} went down: {v} -> {}", after[k]);
            }
        }
        assert_eq!(
            after["ferrysync_job_runs_total{job=\"failing\",outcome=\"ok\"}"],
            2.0
        );
        assert_eq!(after["ferrysync_job_retries_total{job=\"ok\"}"], 4.0);
        assert_eq!(
            after["ferrysync_job_consecutive_failures{job=\"failing\"}"],
            0.0
        );
        assert!(
            after["ferrysync_job_last_success_timestamp_seconds{job=\"failing\"}"]
                > before["ferrysync_job_last_success_timestamp_seconds{job=\"failing\"}"]
        );
    }

    #[test]
    fn odd_job_names_are_escaped_in_labels() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("state.db")).unwrap();
        let odd = "we\"ird\\job\nname} 1\nferrysync_forged 2";
        job(&l, odd, "push");
        run(&l, odd, Outcome::Failed, RunCounts::default());
        let certs = [CertificateExpiry {
            job: odd.into(),
            certificate: CertificateSide::Client,
            not_after: 1_900_000_000,
        }];
        let text = prometheus_text(Some(&l), &certs).unwrap();
        let escaped = r#"job="we\"ird\\job\nname} 1\nferrysync_forged 2""#;
        assert!(
            text.contains(&format!(
                "ferrysync_job_consecutive_failures{{{escaped}}} 1\n"
            )),
            "{text}"
        );
        assert!(
            !text.lines().any(|l| l.starts_with("ferrysync_forged")),
            "{text}"
        );
        assert!(!text.lines().any(|l| l.starts_with("name}")), "{text}");
        assert!(
            text.contains(&format!(
                "ferrysync_tls_certificate_expiry_timestamp_seconds{{{escaped},certificate=\"client\"}} 1900000000\n"
            )),
            "{text}"
        );
    }

    #[test]
    fn without_a_ledger_only_the_build_is_described() {
        let text = prometheus_text(None, &[]).unwrap();
        assert_eq!(samples(&text).len(), 1, "{text}");
        assert!(text.contains("ferrysync_build_info{version="), "{text}");
    }

    #[test]
    fn the_textfile_is_replaced_whole_and_readable_by_the_collector() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferrysync.prom");
        std::fs::write(&path, "old\n").unwrap();
        write_prometheus_file(&path, "new 1\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new 1\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            ["ferrysync.prom"],
            "a temporary file was left behind"
        );
        // A directory that does not exist: an error naming the path, nothing written.
        let err = write_prometheus_file(&dir.path().join("no/such.prom"), "x 1\n").unwrap_err();
        assert!(err.to_string().contains("no/such.prom"), "{err}");
    }
}
