//! Folder watches for `watch: true` (inotify through `notify`, recursive, directories created
//! later included) and `watch: poll` (notify's poll watcher, for NFS/SMB mounts where inotify
//! sees nothing).
//!
//! Events are not runs. A burst of changes is debounced and coalesced into one "fire": the
//! watch waits until the folder has been quiet for the job's `debounce`, then until every
//! changed file's size and mtime have been stable for that long (a file still being written is
//! not taken half-way), bounded by [`max_settle`]. A fire names the paths that changed, so the
//! run can look at those only (see [`crate::model::scope`]); when it cannot name them all (the
//! kernel's event queue overflowed, notify's rescan flag, or more than [`MAX_TRACKED`] paths)
//! it says so, and the run compares everything.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{Event, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::config::Job;

/// Changed paths remembered per fire; beyond this only the quiet period counts.
const MAX_TRACKED: usize = 50_000;

/// How long a watch retries when the folder cannot be watched (missing, unreadable).
const RETRY: Duration = Duration::from_secs(10);

/// Why a watch fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fire {
    /// Relevant events seen since the last fire.
    pub events: u64,
    /// The event queue overflowed or the watcher asked for a rescan.
    pub rescan: bool,
    /// Every path (absolute, under the job's folder) that changed, unless some changes went
    /// unnamed (a rescan, or too many paths to track): then `None`, and only a full run will do.
    pub changed: Option<Vec<PathBuf>>,
}

/// The longest a fire waits for files to settle before it goes ahead anyway.
pub fn max_settle(debounce: Duration) -> Duration {
    (debounce * 30).max(Duration::from_secs(60))
}

enum AnyWatcher {
    Native(notify::RecommendedWatcher),
    Poll(notify::PollWatcher),
}

impl AnyWatcher {
    fn watch(&mut self, path: &Path) -> notify::Result<()> {
        match self {
            AnyWatcher::Native(w) => w.watch(path, RecursiveMode::Recursive),
            AnyWatcher::Poll(w) => w.watch(path, RecursiveMode::Recursive),
        }
    }
}

type Events = mpsc::UnboundedReceiver<notify::Result<Event>>;

fn start(job: &Job) -> notify::Result<(AnyWatcher, Events)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = move |e: notify::Result<Event>| {
        let _ = tx.send(e);
    };
    let mut w = match job.watch_poll {
        Some(interval) => AnyWatcher::Poll(notify::PollWatcher::new(
            handler,
            notify::Config::default().with_poll_interval(interval),
        )?),
        None => AnyWatcher::Native(notify::RecommendedWatcher::new(
            handler,
            notify::Config::default(),
        )?),
    };
    w.watch(&job.local)?;
    Ok((w, rx))
}

/// Whether an event kind can mean a change to sync (reads and opens cannot).
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Whether a changed path concerns the job: inside its folder and not filtered out.
fn relevant(job: &Job, path: &Path) -> bool {
    let Ok(rel) = path.strip_prefix(&job.local) else {
        return false;
    };
    let Some(rel) = rel.to_str() else {
        // Not UTF-8: the scan reports it; a run shows the user why.
        return true;
    };
    if rel.is_empty() {
        return true;
    }
    if job.filter.excludes(rel) {
        return false;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => job.filter.includes_file(rel),
        // Directories, deleted paths (file or directory, unknown), anything else.
        _ => true,
    }
}

/// Size and mtime of each changed path that is still a file.
type Sample = BTreeMap<PathBuf, Option<(u64, SystemTime)>>;

fn sample(paths: &HashSet<PathBuf>) -> Sample {
    paths
        .iter()
        .map(|p| {
            let stat = std::fs::symlink_metadata(p)
                .ok()
                .filter(|m| m.is_file())
                .and_then(|m| Some((m.len(), m.modified().ok()?)));
            (p.clone(), stat)
        })
        .collect()
}

/// Every file of `s` was last modified at least `quiet` before `now`.
fn settled(s: &Sample, now: SystemTime, quiet: Duration) -> bool {
    s.values().all(|stat| match stat {
        None => true,
        Some((_, mtime)) => now
            .duration_since(*mtime)
            .map(|age| age >= quiet)
            .unwrap_or(false),
    })
}

/// What one burst of events left behind.
#[derive(Default)]
struct Burst {
    events: u64,
    rescan: bool,
    paths: HashSet<PathBuf>,
    overflow: bool,
}

impl Burst {
    /// Takes in one event; returns whether it counts.
    fn add(&mut self, job: &Job, event: notify::Result<Event>) -> bool {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                // A failed watch (e.g. fs.inotify.max_user_watches reached) may miss changes:
                // say so and sync anyway.
                tracing::warn!(job = %job.name, "watch: {e}; the next run rescans everything (consider `watch: poll` or raising fs.inotify.max_user_watches)");
                self.rescan = true;
                self.events += 1;
                return true;
            }
        };
        if event.need_rescan() {
            tracing::warn!(job = %job.name, "watch: the event queue overflowed; the next run rescans everything");
            self.rescan = true;
            self.events += 1;
            return true;
        }
        if !is_change(&event.kind) {
            return false;
        }
        let mut counted = false;
        for p in event.paths.into_iter().filter(|p| relevant(job, p)) {
            counted = true;
            if self.paths.len() < MAX_TRACKED {
                self.paths.insert(p);
            } else {
                self.overflow = true;
            }
        }
        if counted {
            self.events += 1;
        }
        counted
    }
}

/// Watches `job.local` until `stop` turns true, calling `fire` once per settled burst of
/// changes. `fire` returns false when nobody listens any more, which ends the watch too.
pub async fn watch_job(
    job: &Job,
    mut stop: watch::Receiver<bool>,
    mut fire: impl FnMut(Fire) -> bool,
) {
    let how = match job.watch_poll {
        Some(p) => format!("polling every {}", humantime::format_duration(p)),
        None => "inotify".to_string(),
    };
    let (_watcher, mut events) = loop {
        match start(job) {
            Ok(w) => break w,
            Err(e) => {
                tracing::warn!(job = %job.name, local = %job.local.display(), "cannot watch the folder: {e}; retrying in {}s", RETRY.as_secs());
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    };
    tracing::info!(job = %job.name, local = %job.local.display(), debounce = %humantime::format_duration(job.debounce), "watching ({how})");
    let quiet = job.debounce;
    loop {
        // Idle until something relevant happens.
        let mut burst = Burst::default();
        loop {
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return,
                e = events.recv() => match e {
                    None => return,
                    Some(e) => if burst.add(job, e) { break },
                },
            }
        }
        let first = Instant::now();
        let bound = max_settle(quiet);
        let mut previous: Option<Sample> = None;
        loop {
            // 1. Quiet: no relevant event for `debounce` (or the bound is reached).
            let limit = tokio::time::Instant::from_std(first + bound);
            let mut deadline = (tokio::time::Instant::now() + quiet).min(limit);
            loop {
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => return,
                    e = events.recv() => match e {
                        None => return,
                        Some(e) => {
                            let mut changed = burst.add(job, e);
                            // Drain what is queued without waiting, so a large burst is cheap.
                            while let Ok(e) = events.try_recv() {
                                changed |= burst.add(job, e);
                            }
                            if changed {
                                deadline = (tokio::time::Instant::now() + quiet).min(limit);
                            }
                        }
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            if first.elapsed() >= bound {
                tracing::warn!(job = %job.name, "files kept changing for {}; syncing anyway", humantime::format_duration(bound));
                break;
            }
            if burst.overflow || burst.paths.is_empty() {
                break;
            }
            // 2. Settled: every changed file unchanged for `debounce` (by its mtime, or by two
            //    samples `debounce` apart when the mtime says nothing, e.g. in the future).
            let paths = burst.paths.clone();
            let now_sample = match tokio::task::spawn_blocking(move || sample(&paths)).await {
                Ok(s) => s,
                Err(_) => break,
            };
            if settled(&now_sample, SystemTime::now(), quiet)
                || previous.as_ref() == Some(&now_sample)
            {
                break;
            }
            tracing::debug!(job = %job.name, "files still changing; waiting {}", humantime::format_duration(quiet));
            previous = Some(now_sample);
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(quiet) => {}
            }
        }
        tracing::debug!(job = %job.name, events = burst.events, paths = burst.paths.len(), rescan = burst.rescan, "watch fired");
        let complete = !burst.rescan && !burst.overflow;
        if !fire(Fire {
            events: burst.events,
            rescan: burst.rescan,
            changed: complete.then(|| burst.paths.into_iter().collect()),
        }) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_needs_every_file_quiet_for_the_debounce() {
        let now = SystemTime::now();
        let mut s = Sample::new();
        s.insert("/gone".into(), None);
        s.insert("/old".into(), Some((3, now - Duration::from_secs(5))));
        assert!(settled(&s, now, Duration::from_secs(2)));
        s.insert("/fresh".into(), Some((3, now - Duration::from_millis(500))));
        assert!(!settled(&s, now, Duration::from_secs(2)));
        s.insert("/fresh".into(), Some((3, now + Duration::from_secs(60))));
        assert!(
            !settled(&s, now, Duration::from_secs(2)),
            "a future mtime is not settled"
        );
    }

    #[test]
    fn reads_are_not_changes() {
        assert!(!is_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(is_change(&EventKind::Create(
            notify::event::CreateKind::File
        )));
        assert!(is_change(&EventKind::Other));
    }

    #[test]
    fn the_settle_bound_is_generous_but_finite() {
        assert_eq!(max_settle(Duration::from_secs(1)), Duration::from_secs(60));
        assert_eq!(
            max_settle(Duration::from_secs(10)),
            Duration::from_secs(300)
        );
    }
}
