//! The agent behind `ferrysync run`: triggers each job on its cron schedule (in the job's time
//! zone), on local changes (`watch`), and on its poll interval; one run per job at a time,
//! at most `max_runs` jobs at once; reloads job files on SIGHUP; on SIGTERM stops every run
//! promptly (see [`Agent::shutdown`]), each recorded `interrupted`.
//!
//! Every job has one runner task that owns its runs, fed by trigger tasks (cron, watch, poll)
//! through a channel. Triggers that arrive while a run is in progress wait in the channel and
//! are coalesced into exactly one follow-up run.
//!
//! Schedules and DST: a schedule names wall-clock times in the job's zone, and each wall-clock
//! time fires at most once. A time that does not exist (the hour skipped when clocks spring
//! forward) fires at the moment the clocks jump, i.e. 02:30 fires at 03:00 (several skipped
//! times fire once, together). A time that exists twice (the hour repeated when clocks fall
//! back) fires on its first occurrence only. See [`next_fire`].
//!
//! `ferrysync run --listen` adds a read-only HTTP listener (`http.rs`): the status page
//! (`status_page.rs`) and `/api/status`, the `status --json` document (`status_doc.rs`).
//!
//! May import: every layer below it (`model`, `config`, `state`, `remote`, `sync`).

pub(crate) mod folder_watch;
pub(crate) mod metrics;

pub use metrics::{
    ledger_metrics_text, prometheus_text, write_prometheus_file, CertificateExpiry,
    CertificateSide, MetricsError, PROMETHEUS_CONTENT_TYPE,
};
pub(crate) mod http;
pub(crate) mod status_doc;
pub(crate) mod status_page;

pub use http::{spawn_listener, BearerToken, ListenError, ListenOptions};
pub use status_doc::{job_statuses, next_run, with_invalid_files, JobStatus, StatusDoc};

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Utc};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::config::{load_job_dir, ConfigError, Job, JobFile, Schedule};
use crate::model::policy::Direction;
use crate::model::scope::Scope;
use crate::state::ledger::{JobFileError, JobRecord};
use crate::state::ledger::{Outcome, RunCounts};
use crate::state::SharedLedger;
use crate::sync::notify::Notifier;
use crate::sync::options::RunOptions;
use crate::sync::run::run_job;

/// The default number of jobs that may run at the same time.
pub const DEFAULT_MAX_RUNS: usize = 4;

/// How long `ferrysync sync` and a stopping agent wait for their notifications (a webhook
/// that is down is given up on then; its failure is logged).
pub const NOTIFY_GRACE: Duration = Duration::from_secs(10);

/// The longest a cron task sleeps before looking at the wall clock again (suspend, clock steps).
const CLOCK_CHECK: Duration = Duration::from_secs(30);

/// The next time `schedule` fires strictly after `after`, in `tz` (the machine's zone if none),
/// following the DST rule in the module documentation.
pub fn next_fire(
    schedule: &Schedule,
    tz: Option<chrono_tz::Tz>,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    match tz {
        Some(tz) => next_fire_in(schedule, &tz, after),
        None => next_fire_in(schedule, &chrono::Local, after),
    }
}

fn next_fire_in<Z: TimeZone>(
    schedule: &Schedule,
    tz: &Z,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    // Search wall-clock times with croner on naive times (presented as UTC, which has no DST),
    // then map each to an instant in the zone ourselves.
    let mut wall = after.with_timezone(tz).naive_local();
    for _ in 0..1000 {
        wall = schedule
            .cron
            .find_next_occurrence(&Utc.from_utc_datetime(&wall), false)
            .ok()?
            .naive_utc();
        let instant = match tz.from_local_datetime(&wall) {
            LocalResult::Single(t) => t.with_timezone(&Utc),
            // The repeated hour: the first occurrence; the second is skipped below.
            LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
            // The skipped hour: the end of the gap.
            LocalResult::None => end_of_gap(tz, wall)?,
        };
        if instant > after {
            return Some(instant);
        }
    }
    None
}

/// The first valid instant after a wall-clock time that does not exist in `tz`: the moment
/// the clocks jump (gaps start and end on whole minutes in every zone in use).
fn end_of_gap<Z: TimeZone>(tz: &Z, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    (1..=24 * 60).find_map(|m| {
        tz.from_local_datetime(&(wall + chrono::Duration::minutes(m)))
            .earliest()
            .map(|t| t.with_timezone(&Utc))
    })
}

/// `catch_up`: the first scheduled time after the job's last run, if it has already passed.
pub(crate) fn missed_fire(
    schedule: &Schedule,
    tz: Option<chrono_tz::Tz>,
    last_run: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    next_fire(schedule, tz, last_run).filter(|t| *t <= now)
}

/// What starts a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Trigger {
    Poll,
    Watch,
    /// A watched job's first run: changes made while nobody watched.
    Startup,
    Schedule,
    CatchUp,
}

impl Trigger {
    /// The run's `trigger` in the history.
    pub fn label(self) -> &'static str {
        match self {
            Trigger::Poll => "poll",
            Trigger::Watch => "watch",
            Trigger::Startup => "startup",
            Trigger::Schedule => "schedule",
            Trigger::CatchUp => "catch_up",
        }
    }
}

/// What a runner is asked to do: a run, and how much of the tree it must look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub trigger: Trigger,
    /// The changed paths a watch named (an incremental run); `None`: a full run.
    pub scope: Option<Scope>,
}

impl From<Trigger> for Request {
    fn from(trigger: Trigger) -> Request {
        Request {
            trigger,
            scope: None,
        }
    }
}

impl Request {
    /// One run serving both requests: the stronger trigger names it, and it is incremental
    /// only if both were (over the union of their paths).
    pub fn coalesce(self, other: Request) -> Request {
        let scope = match (&self.scope, &other.scope) {
            (Some(a), Some(b)) => a.union(b),
            _ => None,
        };
        Request {
            trigger: self.trigger.max(other.trigger),
            scope,
        }
    }
}

/// The scope of a watch's changed paths (absolute, under `root`), if they can make one.
fn changed_scope(root: &Path, changed: &[PathBuf]) -> Option<Scope> {
    let rel: Option<Vec<&str>> = changed
        .iter()
        .map(|p| p.strip_prefix(root).ok()?.to_str())
        .collect();
    Scope::of_changed(rel?)
}

/// Settings of the agent as a whole.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The jobs directory, re-read by [`Agent::reload`].
    pub jobs_dir: PathBuf,
    /// Jobs that may run at the same time.
    pub max_runs: usize,
}

/// The tasks of one started job.
struct JobTasks {
    /// The job file's text when it was started, to see whether a reload changed it.
    source: String,
    stop: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
}

/// The running agent.
pub struct Agent {
    ledger: SharedLedger,
    opts: AgentOptions,
    limit: Arc<Semaphore>,
    jobs: BTreeMap<String, JobTasks>,
    /// One lock per job name, kept across reloads: an old version of a job finishing its run
    /// and the new version never run at the same time.
    run_locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// One lock per local folder: jobs that share a folder take turns here, rather than the
    /// later one being refused by the folder's lock (`state/lock.rs`) and its trigger lost.
    /// Always taken after the job's own lock, and held by no one who waits for a job's lock,
    /// so the two kinds cannot deadlock.
    folder_locks: HashMap<std::path::PathBuf, Arc<tokio::sync::Mutex<()>>>,
    /// Tasks of removed or replaced jobs, finishing their in-flight runs.
    retired: Vec<JoinHandle<()>>,
    /// Sends alerts on tasks of their own (`notify:`), never holding up a run.
    notifier: Notifier,
}

/// Waits until `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

impl Agent {
    /// Starts `jobs` (already validated); `catch_up` jobs whose scheduled time passed while the
    /// agent was down run once now.
    pub fn start(jobs: Vec<Job>, ledger: SharedLedger, opts: AgentOptions) -> Agent {
        let mut agent = Agent {
            ledger,
            limit: Arc::new(Semaphore::new(opts.max_runs.max(1))),
            opts,
            jobs: BTreeMap::new(),
            run_locks: HashMap::new(),
            folder_locks: HashMap::new(),
            retired: Vec::new(),
            notifier: Notifier::new(),
        };
        for job in jobs {
            let source = std::fs::read_to_string(&job.file).unwrap_or_default();
            agent.start_job(job, source, true);
        }
        agent
    }

    /// Names of the started jobs.
    pub fn job_names(&self) -> Vec<String> {
        self.jobs.keys().cloned().collect()
    }

    fn start_job(&mut self, job: Job, source: String, at_startup: bool) {
        let name = job.name.clone();
        if let Err(e) = self.ledger.lock().upsert_job(&JobRecord::of(&job)) {
            tracing::error!(job = %name, "cannot record the job in the ledger: {e}");
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let (tx, rx) = mpsc::unbounded_channel::<Request>();
        let job = Arc::new(job);
        let mut handles = Vec::new();
        let mut triggers = Vec::new();

        if let Some(schedule) = job.schedule.clone() {
            triggers.push(format!("schedule {}", schedule.expr));
            if job.catch_up && at_startup {
                self.catch_up(&job, &schedule, &tx);
            }
            handles.push(tokio::spawn(cron_task(
                job.clone(),
                schedule,
                tx.clone(),
                stop_rx.clone(),
            )));
        }
        if job.watch {
            triggers.push("watch".into());
            // What changed while nobody watched is only found by a full run.
            let _ = tx.send(Trigger::Startup.into());
            let (job, tx, stop) = (job.clone(), tx.clone(), stop_rx.clone());
            handles.push(tokio::spawn(async move {
                crate::agent::folder_watch::watch_job(&job, stop, |fire| {
                    let scope = fire
                        .changed
                        .as_deref()
                        .and_then(|changed| changed_scope(&job.local, changed));
                    tracing::info!(job = %job.name, events = fire.events, rescan = fire.rescan, roots = scope.as_ref().map(Scope::len), "local changes settled");
                    tx.send(Request {
                        trigger: Trigger::Watch,
                        scope,
                    })
                    .is_ok()
                })
                .await
            }));
        }
        if let (Some(every), None) = (job.poll, job.watch_poll) {
            triggers.push(format!("poll {}", humantime::format_duration(every)));
            handles.push(tokio::spawn(poll_task(
                job.clone(),
                every,
                tx.clone(),
                stop_rx.clone(),
            )));
        }
        if let Some(expect) = job.expect.clone() {
            // A deadline is checked whether or not the job has triggers of its own (its files
            // may come from `ferrysync sync` under cron).
            handles.push(tokio::spawn(expect_task(
                job.clone(),
                expect,
                self.ledger.clone(),
                self.notifier.clone(),
                stop_rx.clone(),
            )));
        }
        drop(tx);
        if triggers.is_empty() {
            tracing::info!(job = %name, "no schedule, watch or poll: runs only through `ferrysync sync`");
        } else {
            tracing::info!(job = %name, triggers = %triggers.join(", "), "job started");
            let run_lock = self.run_locks.entry(name.clone()).or_default().clone();
            // The folder as the kernel's lock sees it: other spellings of it meet here too.
            let folder = std::fs::canonicalize(&job.local).unwrap_or_else(|_| job.local.clone());
            let folder_lock = self.folder_locks.entry(folder).or_default().clone();
            handles.push(tokio::spawn(runner(
                job,
                self.ledger.clone(),
                rx,
                self.limit.clone(),
                (run_lock, folder_lock),
                stop_rx,
                self.notifier.clone(),
            )));
        }
        self.jobs.insert(
            name,
            JobTasks {
                source,
                stop: stop_tx,
                handles,
            },
        );
    }

    fn catch_up(&self, job: &Job, schedule: &Schedule, tx: &mpsc::UnboundedSender<Request>) {
        let last = match self.ledger.lock().runs(&job.name, 1) {
            Ok(runs) => runs.first().map(|r| r.started_at),
            Err(e) => {
                tracing::error!(job = %job.name, "catch_up: cannot read the history: {e}");
                return;
            }
        };
        let Some(last) = last.and_then(|t| DateTime::from_timestamp(t, 0)) else {
            tracing::info!(job = %job.name, "catch_up: the job has never run; nothing to catch up");
            return;
        };
        if let Some(missed) = missed_fire(schedule, job.timezone, last, Utc::now()) {
            tracing::info!(job = %job.name, missed = %missed.to_rfc3339(), "catch_up: a scheduled run was missed while the agent was down; running it now");
            let _ = tx.send(Trigger::CatchUp.into());
        }
    }

    fn stop_job(&mut self, name: &str) {
        if let Some(t) = self.jobs.remove(name) {
            let _ = t.stop.send(true);
            self.retired.extend(t.handles);
        }
        self.retired.retain(|h| !h.is_finished());
    }

    /// Starts an agent on the job files of `opts.jobs_dir`: every valid job starts, and each
    /// invalid file is logged with its `file:line:col` and recorded for `status` (state
    /// `invalid`). An agent with no valid job keeps running, so that a fixed file and a SIGHUP
    /// start it; only a jobs directory that cannot be read is an error.
    pub fn start_dir(ledger: SharedLedger, opts: AgentOptions) -> Result<Agent, ConfigError> {
        let files = load_job_dir(&opts.jobs_dir)?;
        let mut agent = Agent::start(Vec::new(), ledger, opts);
        agent.apply(files, true);
        if agent.jobs.is_empty() {
            tracing::error!(dir = %agent.opts.jobs_dir.display(), "no valid job to start; the agent waits for a fixed job file and SIGHUP");
        }
        Ok(agent)
    }

    /// Re-reads the jobs directory: new files start, changed files restart (an in-flight run of
    /// the old version finishes first), removed files stop. An invalid file is reported and the
    /// previous version of its job, if any, keeps running.
    pub fn reload(&mut self) {
        let dir = self.opts.jobs_dir.clone();
        match load_job_dir(&dir) {
            Ok(files) => self.apply(files, false),
            Err(e) => {
                tracing::error!(dir = %dir.display(), "reload: {e}; nothing changed");
            }
        }
    }

    /// Brings the started jobs in line with `files` (see [`Agent::reload`]) and records the
    /// invalid files in the ledger for `status`.
    fn apply(&mut self, files: Vec<JobFile>, at_startup: bool) {
        let what = if at_startup { "start" } else { "reload" };
        let seen: std::collections::BTreeSet<String> =
            files.iter().map(|f| f.name.clone()).collect();
        let (mut started, mut restarted, mut kept_old) = (0, 0, 0);
        let mut invalid = Vec::new();
        for f in files {
            let name = f.name;
            let source = f.source.unwrap_or_default();
            match f.job {
                Ok(job) => {
                    if self.jobs.get(&name).is_some_and(|t| t.source == source) {
                        continue;
                    }
                    if self.jobs.contains_key(&name) {
                        self.stop_job(&name);
                        restarted += 1;
                    } else {
                        started += 1;
                    }
                    self.start_job(job, source, at_startup);
                }
                Err(e) => {
                    let kept_previous = self.jobs.contains_key(&name);
                    if kept_previous {
                        kept_old += 1;
                        tracing::error!(
                            "{what}: {e}; the previous version of job `{name}` keeps running"
                        );
                    } else {
                        tracing::error!("{what}: {e}; job `{name}` not started");
                    }
                    invalid.push(JobFileError {
                        file: f.file.display().to_string(),
                        job: name,
                        error: e.to_string(),
                        kept_previous,
                    });
                }
            }
        }
        let removed: Vec<String> = self
            .jobs
            .keys()
            .filter(|n| !seen.contains(*n))
            .cloned()
            .collect();
        for name in &removed {
            tracing::info!(job = %name, "reload: job file removed; stopping the job");
            self.stop_job(name);
        }
        if let Err(e) = self.ledger.lock().set_job_file_errors(&invalid) {
            tracing::error!("cannot record the invalid job files in the ledger: {e}");
        }
        tracing::info!(
            started,
            restarted,
            stopped = removed.len(),
            kept_old,
            invalid = invalid.len(),
            "jobs {}",
            if at_startup { "loaded" } else { "reloaded" }
        );
    }

    /// Stops triggering and asks every run in progress to stop (each wait of a run races the
    /// stop: connecting, listing and backoff end at once, a transfer at its next checkpoint);
    /// waits at most `grace` for them, then cuts off what is left and records those runs
    /// `interrupted`. Returns whether every run stopped by itself.
    pub async fn shutdown(mut self, grace: Duration) -> bool {
        let names: Vec<String> = self.jobs.keys().cloned().collect();
        for n in names {
            self.stop_job(&n);
        }
        let handles = std::mem::take(&mut self.retired);
        let aborts: Vec<_> = handles.iter().map(JoinHandle::abort_handle).collect();
        let stopped = tokio::time::timeout(grace, futures_join(handles)).await;
        // Alerts of the last runs go out before the agent exits, for a few seconds at most.
        self.notifier.wait(NOTIFY_GRACE).await;
        match stopped {
            Ok(()) => true,
            Err(_) => {
                tracing::warn!(
                    "runs still in progress after {}s; cutting them off (recorded as interrupted; the next run resumes their transfers)",
                    grace.as_secs()
                );
                // Aborted, a run's future is dropped, which records it `interrupted`; runs
                // that do not let go at once are recorded here.
                aborts.iter().for_each(tokio::task::AbortHandle::abort);
                tokio::time::sleep(Duration::from_millis(100)).await;
                crate::sync::interrupt_runs_in_progress();
                false
            }
        }
    }
}

async fn futures_join(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

/// The runs of one job, one at a time; triggers that arrive during a run make one more run.
async fn runner(
    job: Arc<Job>,
    ledger: SharedLedger,
    mut rx: mpsc::UnboundedReceiver<Request>,
    limit: Arc<Semaphore>,
    (run_lock, folder_lock): (Arc<tokio::sync::Mutex<()>>, Arc<tokio::sync::Mutex<()>>),
    mut stop: watch::Receiver<bool>,
    notifier: Notifier,
) {
    // An incremental run trusts that everything outside its scope was in sync after the run
    // before it; after a run that did not end `ok` (or before the first), the next run looks
    // at everything.
    let mut previous_ok = false;
    loop {
        let first = tokio::select! {
            biased;
            _ = stopped(&mut stop) => return,
            t = rx.recv() => match t {
                Some(t) => t,
                None => return,
            },
        };
        let _slot = tokio::select! {
            biased;
            _ = stopped(&mut stop) => return,
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let _one = tokio::select! {
            biased;
            _ = stopped(&mut stop) => return,
            g = run_lock.clone().lock_owned() => g,
        };
        let _folder = tokio::select! {
            biased;
            _ = stopped(&mut stop) => return,
            g = folder_lock.clone().lock_owned() => g,
        };
        // Everything that arrived until now is served by this run.
        let mut request = first;
        while let Ok(r) = rx.try_recv() {
            request = request.coalesce(r);
        }
        let trigger = request.trigger;
        let opts = RunOptions {
            trigger: trigger.label().to_string(),
            dry_run: false,
            progress: None,
            // SIGTERM: every wait of the run ends, files in flight stop at their next
            // checkpoint, the run is recorded as interrupted, and the next start resumes them.
            stop: Some(stop.clone()),
            scope: request.scope.filter(|_| previous_ok),
        };
        let report = run_job(&job, &ledger, &opts).await;
        notifier.after_run(&job, &ledger, &report, trigger.label());
        previous_ok = report.outcome == Outcome::Ok;
        let idle = report.outcome == Outcome::Ok
            && report.counts == RunCounts::default()
            && report.failures.is_empty();
        if trigger == Trigger::Poll && idle {
            match ledger.lock().fold_idle_poll(&job.name) {
                Ok(_) => tracing::debug!(job = %job.name, "poll: nothing changed"),
                Err(e) => tracing::warn!(job = %job.name, "poll: cannot fold the idle run: {e}"),
            }
        } else if report.outcome == Outcome::Ok {
            tracing::info!(job = %job.name, trigger = trigger.label(), "{}", report.summary());
        } else {
            tracing::warn!(job = %job.name, trigger = trigger.label(), "{}", report.summary());
        }
    }
}

/// Sends a `schedule` trigger at each fire time of the job's schedule.
async fn cron_task(
    job: Arc<Job>,
    schedule: Schedule,
    tx: mpsc::UnboundedSender<Request>,
    mut stop: watch::Receiver<bool>,
) {
    let mut after = Utc::now();
    loop {
        let Some(when) = next_fire(&schedule, job.timezone, after) else {
            tracing::warn!(job = %job.name, schedule = %schedule.expr, "the schedule never fires again");
            return;
        };
        tracing::debug!(job = %job.name, next = %when.to_rfc3339(), "next scheduled run");
        // Sleep in slices and look at the wall clock each time: the monotonic clock that
        // timers use stands still while the machine is suspended.
        loop {
            let now = Utc::now();
            if now >= when {
                break;
            }
            let wait = (when - now)
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(CLOCK_CHECK);
            tokio::select! {
                biased;
                _ = stopped(&mut stop) => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if tx.send(Trigger::Schedule.into()).is_err() {
            return;
        }
        // Times missed by a clock step or a suspend fire once, not once each.
        after = when.max(Utc::now());
    }
}

/// Sleeps until the wall clock reaches `when`, in slices (the monotonic clock that timers use
/// stands still while the machine is suspended). False if `stop` came first.
async fn sleep_until_wall(when: DateTime<Utc>, stop: &mut watch::Receiver<bool>) -> bool {
    loop {
        let now = Utc::now();
        if now >= when {
            return true;
        }
        let wait = (when - now)
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(CLOCK_CHECK);
        tokio::select! {
            biased;
            _ = stopped(stop) => return false,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The latest time `schedule` fired strictly before `before` (looked for within the last
/// year), in `tz`.
pub(crate) fn previous_fire(
    schedule: &Schedule,
    tz: Option<chrono_tz::Tz>,
    before: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    // The smallest window that holds a fire bounds the search by the fires in it.
    for days in [1.0 / 24.0, 1.0, 8.0, 32.0, 366.0] {
        let from = before - chrono::Duration::seconds((days * 86_400.0) as i64);
        let mut last = None;
        let mut t = from - chrono::Duration::seconds(1);
        while let Some(next) = next_fire(schedule, tz, t).filter(|n| *n < before) {
            last = Some(next);
            t = next;
        }
        if last.is_some() {
            return last;
        }
    }
    None
}

/// `expect:`: at each deadline, counts the files the job downloaded since the previous one
/// (the audit record) and alerts `late` if fewer than expected arrived; once per deadline.
async fn expect_task(
    job: Arc<Job>,
    expect: crate::config::Expect,
    ledger: SharedLedger,
    notifier: Notifier,
    mut stop: watch::Receiver<bool>,
) {
    let mut after = Utc::now();
    loop {
        let Some(deadline) = next_fire(&expect.by, job.timezone, after) else {
            tracing::warn!(job = %job.name, by = %expect.by.expr, "expect: the deadline never comes again");
            return;
        };
        tracing::debug!(job = %job.name, deadline = %deadline.to_rfc3339(), "expect: next deadline");
        if !sleep_until_wall(deadline, &mut stop).await {
            return;
        }
        let since = previous_fire(&expect.by, job.timezone, deadline)
            .unwrap_or(deadline - chrono::Duration::days(366));
        let counted = ledger.lock().files_downloaded_between(
            &job.name,
            since.timestamp(),
            deadline.timestamp(),
        );
        match counted {
            Ok(n) if n >= expect.new_files => {
                tracing::info!(job = %job.name, files = n, "expect: deadline met");
            }
            Ok(n) => notifier.late(
                &job,
                crate::model::notify::ExpectFacts {
                    deadline: crate::state::iso_time(deadline.timestamp()),
                    since: crate::state::iso_time(since.timestamp()),
                    expected_files: expect.new_files,
                    downloaded_files: n,
                },
            ),
            Err(e) => {
                tracing::error!(job = %job.name, "expect: cannot count the downloaded files: {e}")
            }
        }
        after = deadline.max(Utc::now());
    }
}

/// Sends a `poll` trigger at start-up and then every `every`.
async fn poll_task(
    job: Arc<Job>,
    every: Duration,
    tx: mpsc::UnboundedSender<Request>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if job.direction == Direction::Push {
        // A push job's `poll` is a plain interval; pull jobs look at the remote at once.
        tick.tick().await;
    }
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => return,
            _ = tick.tick() => {}
        }
        if tx.send(Trigger::Poll.into()).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    /// Every fire time in [from, to).
    fn fires(expr: &str, tz: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let s = Schedule::parse(expr).unwrap();
        let tz: chrono_tz::Tz = tz.parse().unwrap();
        let mut out = Vec::new();
        let mut after = from - chrono::Duration::seconds(1);
        while let Some(t) = next_fire(&s, Some(tz), after) {
            if t >= to {
                break;
            }
            out.push(t);
            after = t;
        }
        out
    }

    #[test]
    fn weekdays_follow_crontab_numbering() {
        // 2026-11-28 is a Saturday: `1-5` (Monday to Friday) next fires on Monday the 30th.
        let s = Schedule::parse("0 9 * * 1-5").unwrap();
        let after = utc(2026, 11, 28, 12, 0);
        let next = next_fire(&s, Some(chrono_tz::UTC), after).unwrap();
        assert_eq!(next, utc(2026, 11, 30, 9, 0));
    }

    #[test]
    fn schedules_run_in_the_job_time_zone() {
        let s = Schedule::parse("30 2 * * *").unwrap();
        let tz: chrono_tz::Tz = "Europe/Amsterdam".parse().unwrap();
        // 02:30 in Amsterdam in winter (UTC+1) is 01:30 UTC.
        assert_eq!(
            next_fire(&s, Some(tz), utc(2026, 11, 28, 12, 0)).unwrap(),
            utc(2026, 11, 29, 1, 30)
        );
    }

    #[test]
    fn shorthands() {
        let after = utc(2026, 5, 4, 10, 17);
        let hourly = Schedule::parse("@hourly").unwrap();
        assert_eq!(
            next_fire(&hourly, Some(chrono_tz::UTC), after).unwrap(),
            utc(2026, 5, 4, 11, 0)
        );
        let daily = Schedule::parse("@daily").unwrap();
        let tz: chrono_tz::Tz = "Europe/Amsterdam".parse().unwrap();
        // Midnight in Amsterdam in summer (UTC+2) is 22:00 UTC the day before.
        assert_eq!(
            next_fire(&daily, Some(tz), after).unwrap(),
            utc(2026, 5, 4, 22, 0)
        );
    }

    #[test]
    fn spring_forward_a_skipped_time_fires_once_when_the_clocks_jump() {
        // 2026-03-29, Amsterdam: 02:00 CET becomes 03:00 CEST (01:00 UTC); 02:30 never exists.
        let day = (utc(2026, 3, 28, 23, 0), utc(2026, 3, 29, 22, 0));
        assert_eq!(
            fires("30 2 * * *", "Europe/Amsterdam", day.0, day.1),
            vec![utc(2026, 3, 29, 1, 0)]
        );
        // The days around it are untouched: 01:30 UTC (CET) before, 00:30 UTC (CEST) after.
        assert_eq!(
            fires(
                "30 2 * * *",
                "Europe/Amsterdam",
                utc(2026, 3, 27, 23, 0),
                day.0
            ),
            vec![utc(2026, 3, 28, 1, 30)]
        );
        assert_eq!(
            fires(
                "30 2 * * *",
                "Europe/Amsterdam",
                day.1,
                utc(2026, 3, 30, 22, 0)
            ),
            vec![utc(2026, 3, 30, 0, 30)]
        );
        // Every quarter hour: 02:00..02:45 collapse into one fire at 03:00 CEST.
        let q = fires(
            "*/15 * * * *",
            "Europe/Amsterdam",
            utc(2026, 3, 29, 0, 30),
            utc(2026, 3, 29, 1, 31),
        );
        assert_eq!(
            q,
            vec![
                utc(2026, 3, 29, 0, 30),
                utc(2026, 3, 29, 0, 45),
                utc(2026, 3, 29, 1, 0),
                utc(2026, 3, 29, 1, 15),
                utc(2026, 3, 29, 1, 30),
            ]
        );
        // Another zone, another date: New York, 2026-03-08, 02:00 EST -> 03:00 EDT (07:00 UTC).
        assert_eq!(
            fires(
                "30 2 * * *",
                "America/New_York",
                utc(2026, 3, 8, 5, 0),
                utc(2026, 3, 9, 5, 0)
            ),
            vec![utc(2026, 3, 8, 7, 0)]
        );
    }

    #[test]
    fn fall_back_a_repeated_time_fires_once_on_its_first_occurrence() {
        // 2026-10-25, Amsterdam: 03:00 CEST becomes 02:00 CET; 02:30 happens at 00:30 UTC
        // (CEST) and again at 01:30 UTC (CET). It fires at the first only.
        let day = (utc(2026, 10, 24, 22, 0), utc(2026, 10, 25, 23, 0));
        assert_eq!(
            fires("30 2 * * *", "Europe/Amsterdam", day.0, day.1),
            vec![utc(2026, 10, 25, 0, 30)]
        );
        // Asked from inside the repeated hour (a run that went on past 02:00 CET), the
        // answer is tomorrow, never a time in the past.
        let s = Schedule::parse("30 2 * * *").unwrap();
        let tz: chrono_tz::Tz = "Europe/Amsterdam".parse().unwrap();
        let inside = utc(2026, 10, 25, 1, 10); // 02:10 CET, second pass
        assert_eq!(
            next_fire(&s, Some(tz), inside).unwrap(),
            utc(2026, 10, 26, 1, 30)
        );
        // Hourly: 02:00 fires once (CEST), then 03:00 CET; 24 fires in the 25-hour day.
        let h = fires("0 * * * *", "Europe/Amsterdam", day.0, day.1);
        assert_eq!(h.len(), 24, "{h:?}");
        assert!(h.contains(&utc(2026, 10, 25, 0, 0)));
        assert!(!h.contains(&utc(2026, 10, 25, 1, 0)));
        assert!(h.contains(&utc(2026, 10, 25, 2, 0)));
        // New York, 2026-11-01: 01:30 happens at 05:30 UTC (EDT) and 06:30 UTC (EST).
        assert_eq!(
            fires(
                "30 1 * * *",
                "America/New_York",
                utc(2026, 11, 1, 4, 0),
                utc(2026, 11, 2, 4, 0)
            ),
            vec![utc(2026, 11, 1, 5, 30)]
        );
    }

    #[test]
    fn fires_are_strictly_increasing_through_a_year() {
        let all = fires(
            "*/30 * * * *",
            "Europe/Amsterdam",
            utc(2026, 1, 1, 0, 0),
            utc(2027, 1, 1, 0, 0),
        );
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        // Each wall-clock time once: 365 days * 48, except in spring, where 02:00, 02:30 and
        // 03:00 are one fire at 03:00 CEST. The repeated autumn hour adds nothing.
        assert_eq!(all.len(), 365 * 48 - 2);
    }

    #[test]
    fn catch_up_finds_a_time_missed_since_the_last_run() {
        let s = Schedule::parse("0 6 * * *").unwrap();
        let tz = Some(chrono_tz::UTC);
        // Last run yesterday 06:00; the agent comes back today at 09:00: 06:00 was missed.
        let last = utc(2026, 5, 3, 6, 0);
        assert_eq!(
            missed_fire(&s, tz, last, utc(2026, 5, 4, 9, 0)),
            Some(utc(2026, 5, 4, 6, 0))
        );
        // Back at 05:00: nothing missed yet.
        assert_eq!(missed_fire(&s, tz, last, utc(2026, 5, 4, 5, 0)), None);
    }

    #[test]
    fn the_previous_deadline_is_the_fire_before() {
        let weekdays = Schedule::parse("0 7 * * 1-5").unwrap();
        let tz = Some(chrono_tz::UTC);
        // Monday 2026-11-30 07:00: the previous deadline is Friday 07:00.
        assert_eq!(
            previous_fire(&weekdays, tz, utc(2026, 11, 30, 7, 0)),
            Some(utc(2026, 11, 27, 7, 0))
        );
        let minutely = Schedule::parse("* * * * *").unwrap();
        assert_eq!(
            previous_fire(&minutely, tz, utc(2026, 11, 30, 7, 0)),
            Some(utc(2026, 11, 30, 6, 59))
        );
        let yearly = Schedule::parse("0 0 1 1 *").unwrap();
        assert_eq!(
            previous_fire(&yearly, tz, utc(2026, 11, 30, 7, 0)),
            Some(utc(2026, 1, 1, 0, 0))
        );
    }

    #[test]
    fn the_strongest_trigger_names_a_coalesced_run() {
        assert_eq!(Trigger::Poll.max(Trigger::Watch), Trigger::Watch);
        assert_eq!(Trigger::Schedule.max(Trigger::Poll), Trigger::Schedule);
        assert_eq!(Trigger::CatchUp.label(), "catch_up");
    }

    #[test]
    fn coalesced_requests_stay_incremental_only_if_all_were() {
        let watch = |paths: &[&str]| Request {
            trigger: Trigger::Watch,
            scope: Scope::of_changed(paths.iter().copied()),
        };
        let both = watch(&["a/x"]).coalesce(watch(&["a", "b"]));
        assert_eq!(both.trigger, Trigger::Watch);
        assert_eq!(both.scope.unwrap().roots().collect::<Vec<_>>(), ["a", "b"]);
        let with_poll = watch(&["a"]).coalesce(Trigger::Poll.into());
        assert_eq!(with_poll, Trigger::Watch.into(), "a poll needs a full run");
        let overflowed = watch(&["a"]).coalesce(Request {
            trigger: Trigger::Watch,
            scope: None,
        });
        assert_eq!(overflowed.scope, None);
    }

    #[test]
    fn changed_paths_become_a_scope_relative_to_the_folder() {
        let root = Path::new("/srv/out");
        let s = changed_scope(
            root,
            &[root.join("d/a.csv"), root.join("d/b.csv"), root.join("e")],
        )
        .unwrap();
        assert_eq!(s.roots().collect::<Vec<_>>(), ["d/a.csv", "d/b.csv", "e"]);
        assert_eq!(changed_scope(root, &[root.to_path_buf()]), None);
        assert_eq!(changed_scope(root, &[PathBuf::from("/elsewhere/x")]), None);
    }
}
