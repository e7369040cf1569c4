//! A job file as a whole: its name, the top-level keys, and the sections in order; and the
//! jobs directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::filter::PathFilter;
use super::notify::{self, load_defaults, Defaults, DEFAULTS_FILE};
use super::policy::{self, RetryPolicy, UploadOptions};
use super::raw::{RawJob, RawTransfers};
use super::remote::Remote;
use super::trigger::{self, Intervals, Schedule, Watch};
use super::{ConfigError, Ctx};
use crate::model::parallel::{Transfers, DEFAULT_MAX_TRANSFERS};
use crate::model::policy::{Direction, MaxDelete, SyncMode};

/// One validated job.
#[derive(Debug, Clone)]
pub struct Job {
    /// The file stem of the job file.
    pub name: String,
    pub file: PathBuf,
    pub local: PathBuf,
    pub remote: Remote,
    pub direction: Direction,
    pub mode: SyncMode,
    pub schedule: Option<Schedule>,
    pub timezone: Option<chrono_tz::Tz>,
    /// `watch: true` or `watch: poll`: the agent syncs soon after local changes.
    pub watch: bool,
    /// `watch: poll`: the local tree is polled at this interval (the job's `poll:`, default
    /// 30s) instead of watched with inotify; `poll:` then does not start runs by itself.
    pub watch_poll: Option<Duration>,
    pub debounce: Duration,
    pub poll: Option<Duration>,
    /// `catch_up: true`: a scheduled time missed while the agent was down runs at start-up.
    pub catch_up: bool,
    pub filter: PathFilter,
    /// `transfers:` / `max_transfers:` (see [`crate::model::parallel`]).
    pub transfers: Transfers,
    /// `None`: the default limit ([`crate::model::policy::default_max_delete`]).
    pub max_delete: Option<MaxDelete>,
    /// `allow_empty_source: true`: a mirror run whose source lists no file may delete the
    /// destination's files (refused otherwise: an unmounted disk looks just like that).
    pub allow_empty_source: bool,
    /// `adopt:`: a file both sides hold that the ledger does not know is adopted on evidence
    /// (the default) or sent again (see [`crate::model::plan::Adopt`]).
    pub adopt: crate::model::plan::Adopt,
    /// `initial_files: skip`: the files the source holds at the job's first run are left alone
    /// unless they change; only files that appear later are sent (see
    /// [`crate::model::baseline`]).
    pub initial_files: crate::model::baseline::InitialFiles,
    pub retries: RetryPolicy,
    pub upload: UploadOptions,
    /// `audit_retention:`: audit rows older than this are pruned after each run.
    pub audit_retention: Duration,
    /// `settle:` (pull jobs): a remote file is taken only once its size and time were seen
    /// unchanged this long apart (default a minute, see [`crate::model::settle`]); zero takes
    /// files as listed.
    pub settle: Duration,
    /// `min_age:` / `max_age:`: source files younger / older than these (by modification
    /// time) are left alone, neither sent nor a reason to delete (see [`crate::model::age`]).
    pub ages: crate::model::age::AgeLimits,
    /// `notify:` over the jobs directory's `_defaults.yaml`: where alerts go (`None`: nowhere).
    pub notify: Option<super::notify::Notify>,
    /// `expect:` (pull jobs): new files by a deadline, else a `late` alert.
    pub expect: Option<super::notify::Expect>,
    /// `bandwidth:`: limits on the payload of the job's data connections, all together, each
    /// direction a rate or a timetable in the job's zone (see [`crate::model::bandwidth`]).
    pub bandwidth: crate::model::bandwidth::Bandwidth,
    /// `ready_marker:` / `batch_marker:` / `marker_after_pull:` (pull jobs): a remote file is
    /// taken once the partner's marker says it is complete, instead of by `settle` (see
    /// [`crate::model::marker`]). `None`: no marker.
    pub markers: Option<crate::model::marker::MarkerRule>,
    /// `after_transfer:`, `archive_to:`, `archive_retention:`: what becomes of a source file
    /// once its copy is delivered (see [`crate::model::after`]).
    pub after: super::after::SourceAfter,
    /// Non-fatal remarks about the job (inline password, disabled verification), repeated in
    /// every run's log so they are never forgotten.
    pub warnings: Vec<String>,
}

/// Loads and validates one job file, with the defaults file of its folder.
pub fn load_job(file: &Path) -> Result<Job, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        line: 1,
        column: 1,
        reason: format!("cannot read job file: {e}"),
    })?;
    let dir = file.parent().unwrap_or(Path::new("."));
    let defaults = load_defaults(dir)?;
    parse_job_with(file, &text, &defaults)
}

/// Parses job text; `file` names the job and anchors relative paths. No defaults file.
pub fn parse_job(file: &Path, text: &str) -> Result<Job, ConfigError> {
    parse_job_with(file, text, &Defaults::default())
}

/// Parses job text over the jobs directory's defaults.
pub fn parse_job_with(file: &Path, text: &str, defaults: &Defaults) -> Result<Job, ConfigError> {
    let mut ctx = Ctx::new(file, text);
    let name = job_name(&ctx)?;
    let raw = raw_job(&ctx)?;
    let remote = Remote::from_raw(raw.remote, &mut ctx)?;
    let local = local(&raw.local, &ctx)?;
    let transfers = transfers(raw.transfers.as_ref(), raw.max_transfers, &ctx)?;
    let watch = Watch::from_raw(&raw.watch, raw.direction, &ctx)?;
    let mut filter = PathFilter::from_raw(raw.include, raw.exclude, &ctx)?;
    let schedule = Schedule::from_raw(raw.schedule.as_deref(), &ctx)?;
    let timezone = trigger::timezone(raw.timezone.as_deref(), &ctx)?;
    let intervals = Intervals::from_raw(raw.debounce.as_deref(), raw.poll.as_deref(), &ctx)?;
    let max_delete = policy::max_delete(raw.max_delete, &ctx)?;
    let retries = RetryPolicy::from_raw(raw.retries, &ctx)?;
    let upload = UploadOptions::from_raw(raw.upload, &mut ctx)?;
    let audit_retention = policy::audit_retention(raw.audit_retention.as_deref(), &ctx)?;
    let settle = policy::settle(raw.settle.as_deref(), raw.direction, &ctx)?;
    let ages = policy::age_limits(raw.min_age.as_deref(), raw.max_age.as_deref(), &ctx)?;
    let notify = notify::job_notify(raw.notify, defaults.notify.as_ref(), &mut ctx)?;
    let expect = notify::expect(raw.expect, raw.direction, notify.as_ref(), &ctx)?;
    let bandwidth = super::bandwidth::from_raw(raw.bandwidth, &ctx)?;
    let markers = policy::markers(
        raw.ready_marker.as_deref(),
        raw.batch_marker.as_deref(),
        raw.marker_after_pull,
        raw.direction,
        raw.settle.is_some(),
        &mut ctx,
    )?;
    filter.set_markers(markers.clone());
    let local_text = local.to_string_lossy();
    let (after, mode) = super::after::from_raw(
        super::after::RawAfter {
            action: raw.after_transfer,
            archive_to: raw.archive_to.as_deref(),
            retention: raw.archive_retention.as_deref(),
            mode: raw.mode,
            direction: raw.direction,
            source_root: match raw.direction {
                Direction::Push => &local_text,
                Direction::Pull => &remote.path,
            },
            upload_verified: upload.verify,
        },
        &ctx,
    )?;
    // An archive inside the source is never itself a source (nor, on the destination, a
    // folder the sync touches).
    if let Some(root) = after.archive_to.as_ref().and_then(|t| t.fixed_root()) {
        filter.leave_out(root);
    }
    // Only the first mistake in a file is reported; these two checks have always come last,
    // so they stay last and a file with several mistakes still gets the same error.
    intervals.check(&ctx)?;
    trigger::check_catch_up(raw.catch_up, schedule.as_ref(), &ctx)?;
    Ok(Job {
        name,
        file: file.to_path_buf(),
        local,
        remote,
        direction: raw.direction,
        mode,
        schedule,
        timezone,
        watch: watch.on,
        watch_poll: intervals.watch_poll(watch),
        debounce: intervals.debounce,
        poll: intervals.poll,
        catch_up: raw.catch_up,
        filter,
        transfers,
        max_delete,
        allow_empty_source: raw.allow_empty_source,
        adopt: raw.adopt,
        initial_files: raw.initial_files,
        retries,
        upload,
        audit_retention,
        settle,
        ages,
        notify,
        expect,
        bandwidth,
        markers,
        after,
        warnings: ctx.warnings,
    })
}

/// The job's name: the job file's stem, which logs, the ledger and the CLI use.
fn job_name(ctx: &Ctx) -> Result<String, ConfigError> {
    let name = ctx
        .file
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ctx.fail(&[], "the job file needs a UTF-8 name"))?
        .to_string();
    if Some(name.as_str()) == DEFAULTS_FILE.strip_suffix(".yaml") {
        return Err(ctx.fail(
            &[],
            format!("{DEFAULTS_FILE} holds the defaults of the jobs next to it, not a job"),
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(ctx.fail(
            &[],
            format!(
                "job name `{name}` (the file name) may use only letters, digits, `-`, `_` and `.`"
            ),
        ));
    }
    Ok(name)
}

/// The job text as serde reads it: shape, types and unknown keys, at serde_yaml's position.
fn raw_job(ctx: &Ctx) -> Result<RawJob, ConfigError> {
    if ctx.text.trim().is_empty() {
        return Err(ctx.fail(&[], "the job file is empty"));
    }
    serde_yaml::from_str(ctx.text).map_err(|e| ctx.yaml_error(&e))
}

/// `local:`, made absolute.
fn local(raw: &Path, ctx: &Ctx) -> Result<PathBuf, ConfigError> {
    if raw.as_os_str().is_empty() {
        return Err(ctx.fail(&["local"], "local is empty"));
    }
    Ok(ctx.resolve(raw))
}

/// `transfers:` and `max_transfers:`, the number of connections: `auto` by default (see
/// [`crate::model::parallel`]).
fn transfers(
    raw: Option<&RawTransfers>,
    max: Option<u16>,
    ctx: &Ctx,
) -> Result<Transfers, ConfigError> {
    let in_range = |key: &str, n: u64| {
        if (1..=64).contains(&n) {
            Ok(n as usize)
        } else {
            Err(ctx.fail(&[key], format!("{key}: {n} is outside 1..64")))
        }
    };
    let max = max
        .map(|m| in_range("max_transfers", u64::from(m)))
        .transpose()?;
    match raw {
        None | Some(RawTransfers::Auto) => Ok(Transfers::Auto {
            max: max.unwrap_or(DEFAULT_MAX_TRANSFERS),
        }),
        Some(RawTransfers::Count(_)) if max.is_some() => Err(ctx.fail(
            &["max_transfers"],
            "max_transfers is the ceiling of `transfers: auto`; with a fixed `transfers:` number, remove it",
        )),
        Some(RawTransfers::Count(n)) => in_range("transfers", u64::from(*n)).map(Transfers::Fixed),
    }
}

/// One file of a jobs directory, loaded or not: the agent starts the valid ones and reports
/// the others, `check` reports every one.
#[derive(Debug)]
pub struct JobFile {
    pub file: PathBuf,
    /// The job name the file would define (its stem, lossily decoded for a name that is not
    /// UTF-8), for reports and for keeping a previous version of the job running.
    pub name: String,
    /// The file's text, `None` if it could not be read (to see whether a reload changed it).
    pub source: Option<String>,
    pub job: Result<Job, ConfigError>,
}

/// Loads every `*.yaml`/`*.yml` file in `dir`, in name order, each on its own: one bad file
/// does not hide the others. Two files that define the same job name (`a.yaml`, `a.yml`) are
/// both reported, and neither is loaded: which one was meant is the operator's call. `Err` only
/// when the directory itself cannot be read.
pub fn load_job_dir(dir: &Path) -> Result<Vec<JobFile>, ConfigError> {
    let files = job_files(dir).map_err(|e| ConfigError {
        file: dir.to_path_buf(),
        line: 1,
        column: 1,
        reason: format!("cannot read the jobs directory: {e}"),
    })?;
    // A bad defaults file is every job's error (none runs without the alerts it asks for);
    // its text is part of each job's source, so a fixed defaults file restarts them on reload.
    let defaults = load_defaults(dir);
    let defaults_text = match &defaults {
        Ok(d) => d.text.clone(),
        Err(e) => e.to_string(),
    };
    let mut out: Vec<JobFile> = files
        .into_iter()
        .map(|file| {
            let name = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let source = std::fs::read_to_string(&file);
            let job = match (&source, &defaults) {
                (Ok(text), Ok(defaults)) => parse_job_with(&file, text, defaults),
                (Ok(_), Err(e)) => Err(ConfigError {
                    file: e.file.clone(),
                    line: e.line,
                    column: e.column,
                    reason: e.reason.clone(),
                }),
                (Err(e), _) => Err(ConfigError {
                    file: file.clone(),
                    line: 1,
                    column: 1,
                    reason: format!("cannot read job file: {e}"),
                }),
            };
            JobFile {
                name,
                source: source
                    .ok()
                    .map(|s| format!("{s}\n# {DEFAULTS_FILE}\n{defaults_text}")),
                job,
                file,
            }
        })
        .collect();
    for i in 0..out.len() {
        let others: Vec<String> = out
            .iter()
            .enumerate()
            .filter(|(k, f)| *k != i && f.name == out[i].name)
            .map(|(_, f)| f.file.display().to_string())
            .collect();
        if !others.is_empty() && out[i].job.is_ok() {
            out[i].job = Err(ConfigError {
                file: out[i].file.clone(),
                line: 1,
                column: 1,
                reason: format!(
                    "job `{}` is also defined by {}; neither file is loaded until one is renamed or removed",
                    out[i].name,
                    others.join(", ")
                ),
            });
        }
    }
    Ok(out)
}

/// Loads every job file in `dir` (see [`load_job_dir`]); the first bad file is the error.
pub fn load_jobs(dir: &Path) -> Result<Vec<Job>, ConfigError> {
    load_job_dir(dir)?.into_iter().map(|f| f.job).collect()
}

/// Finds the job file for `name` in `dir`. A name with no file is an error that lists the jobs
/// that do exist ([`unknown_job`]), and points at no line (a file that is not there has none).
pub fn find_job(dir: &Path, name: &str) -> Result<Job, ConfigError> {
    // A name is a file stem: `../x` or `a/b` would reach outside the jobs directory.
    let plain = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
    if plain {
        for ext in ["yaml", "yml"] {
            let f = dir.join(format!("{name}.{ext}"));
            if f.is_file() {
                return load_job(&f);
            }
        }
    }
    let place = dir.display().to_string();
    let reason = match job_names(dir) {
        Ok(known) => unknown_job(name, &known, &place),
        Err(e) => format!("no job named `{name}`: cannot read the jobs directory {place}: {e}"),
    };
    Err(ConfigError {
        file: dir.join(format!("{name}.yaml")),
        line: 0,
        column: 0,
        reason,
    })
}

/// The names of the jobs in `dir` (the stems of its job files), in name order.
pub fn job_names(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = job_files(dir)?
        .iter()
        .filter_map(|f| f.file_stem().and_then(|s| s.to_str()).map(str::to_string))
        .collect();
    names.dedup();
    Ok(names)
}

/// The one wording of "there is no job `name`" for every command that looks a job up (`sync`,
/// `status`, `history`, ...): it names where it looked and the jobs that exist there, so a typo
/// is fixed without a second command. `place` is the jobs directory or the ledger.
pub fn unknown_job(name: &str, known: &[String], place: &str) -> String {
    if known.is_empty() {
        return format!("no job named `{name}` in {place}, which holds no job");
    }
    const SHOWN: usize = 20;
    let mut list = known
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if known.len() > SHOWN {
        list.push_str(&format!(" and {} more", known.len() - SHOWN));
    }
    format!("no job named `{name}` in {place}; the jobs there: {list}")
}

/// The `*.yaml` and `*.yml` files of `dir`, in name order, but `_defaults.yaml`.
pub(crate) fn job_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        let defaults = p.file_name().is_some_and(|n| n == DEFAULTS_FILE);
        if (ext == "yaml" || ext == "yml") && !defaults && p.is_file() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{parse, GOOD};
    use crate::config::Security;

    #[test]
    fn minimal_job_gets_defaults() {
        let job = parse(GOOD).unwrap();
        assert_eq!(job.name, "acme");
        assert_eq!(job.remote.port, 21);
        assert_eq!(job.remote.security, Security::Explicit);
        assert_eq!(job.direction, Direction::Push);
        assert_eq!(job.mode, SyncMode::Mirror);
        assert_eq!(job.transfers, Transfers::Auto { max: 16 });
        assert_eq!(job.remote.path, "/");
        assert_eq!(job.warnings.len(), 1, "inline password warns");
    }

    #[test]
    fn min_age_and_max_age_are_durations_and_min_is_not_above_max() {
        use std::time::Duration;
        assert!(parse(GOOD).unwrap().ages.is_off());
        let job = parse(&format!("{GOOD}min_age: 10m\nmax_age: 30d\n")).unwrap();
        assert_eq!(job.ages.min_age, Some(Duration::from_secs(600)));
        assert_eq!(job.ages.max_age, Some(Duration::from_secs(30 * 86_400)));
        let e = parse(&format!("{GOOD}min_age: soon\n")).unwrap_err();
        assert!(e.reason.contains("min_age"), "{e}");
        assert!(e.line > 1, "points at the key: {e}");
        let e = parse(&format!("{GOOD}min_age: 2h\nmax_age: 1h\n")).unwrap_err();
        assert!(e.reason.contains("max_age"), "{e}");
    }

    #[test]
    fn markers_are_for_pull_jobs_and_name_a_file_beside_it() {
        use crate::model::marker::MarkerAfterPull;
        let pull = |extra: &str| parse(&format!("{GOOD}direction: pull\n{extra}"));
        assert!(pull("").unwrap().markers.is_none());
        let job = pull("ready_marker: \"{name}.done\"\nbatch_marker: _READY\n").unwrap();
        let m = job.markers.unwrap();
        assert!(m.is_marker("a/x.csv.done") && m.is_marker("_READY") && !m.is_marker("x.csv"));
        assert_eq!(
            m.after_pull,
            MarkerAfterPull::Delete,
            "deleting is the safe default"
        );
        assert!(job.filter.is_marker("x.done") && !job.filter.includes_file("x.done"));
        let keep = pull("batch_marker: _READY\nmarker_after_pull: keep\n").unwrap();
        assert_eq!(keep.markers.unwrap().after_pull, MarkerAfterPull::Keep);
        // A settle the file sets is not used, and said so.
        let both = pull("settle: 2m\nready_marker: \"{name}.ok\"\n").unwrap();
        assert!(
            both.warnings.iter().any(|w| w.contains("settle")),
            "{:?}",
            both.warnings
        );
        for (extra, key) in [
            ("ready_marker: done\n", "ready_marker"),
            ("ready_marker: \"{name}\"\n", "ready_marker"),
            ("batch_marker: a/_READY\n", "batch_marker"),
            ("marker_after_pull: keep\n", "marker_after_pull"),
            (
                "batch_marker: _READY\nmarker_after_pull: maybe\n",
                "marker_after_pull",
            ),
        ] {
            let e = pull(extra).unwrap_err();
            assert!(e.reason.contains(key), "{extra}: {e}");
            assert!(e.line > 1, "points at the key: {e}");
        }
        // Pull-only: a push job that sets one is refused, at the key.
        let e = parse(&format!("{GOOD}batch_marker: _READY\n")).unwrap_err();
        assert!(e.reason.contains("batch_marker: is for pull jobs"), "{e}");
        assert_eq!((e.line, e.column), (6, 1), "{e}");
    }

    #[test]
    fn settle_is_a_duration_for_pull_jobs_only() {
        use std::time::Duration;
        assert_eq!(parse(GOOD).unwrap().settle, Duration::ZERO);
        let default = parse(&format!("{GOOD}direction: pull\n")).unwrap();
        assert_eq!(
            default.settle,
            Duration::from_secs(60),
            "a run waits for what settles within it, so pulls settle by default"
        );
        let pull = |v: &str| parse(&format!("{GOOD}direction: pull\nsettle: {v}\n"));
        assert_eq!(pull("30s").unwrap().settle, Duration::from_secs(30));
        assert_eq!(pull("0").unwrap().settle, Duration::ZERO);
        for bad in ["soon", "2d"] {
            let e = pull(bad).unwrap_err();
            assert!(e.reason.contains("settle"), "{e}");
        }
        let e = parse(&format!("{GOOD}settle: 30s\n")).unwrap_err();
        assert!(e.reason.contains("pull jobs"), "{e}");
    }

    #[test]
    fn initial_files_defaults_to_transfer_and_takes_skip() {
        use crate::model::baseline::InitialFiles;
        assert_eq!(parse(GOOD).unwrap().initial_files, InitialFiles::Transfer);
        let job = parse(&format!("{GOOD}initial_files: skip\n")).unwrap();
        assert_eq!(job.initial_files, InitialFiles::Skip);
        let e = parse(&format!("{GOOD}initial_files: new\n")).unwrap_err();
        assert!(e.to_string().contains("initial_files"), "{e}");
    }

    #[test]
    fn adopt_defaults_to_evidence_and_takes_recopy() {
        use crate::model::plan::Adopt;
        assert_eq!(parse(GOOD).unwrap().adopt, Adopt::Evidence);
        let job = parse(&format!("{GOOD}adopt: recopy\n")).unwrap();
        assert_eq!(job.adopt, Adopt::Recopy);
        let e = parse(&format!("{GOOD}adopt: always\n")).unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        assert!(
            e.reason.contains("evidence") && e.reason.contains("recopy"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_is_reported_with_position() {
        let e = parse(&format!("{GOOD}colour: blue\n")).unwrap_err();
        assert_eq!((e.line, e.column), (6, 1), "{e}");
        assert!(e.reason.contains("colour"), "{e}");
        let e = parse("local: /x\nremote:\n  host: h\n  user: u\n  password: p\n  prot: 1\n")
            .unwrap_err();
        assert_eq!(e.line, 6, "{e}");
    }

    #[test]
    fn transfers_is_auto_by_default_a_number_or_auto_with_a_ceiling() {
        let t = |extra: &str| parse(&format!("{GOOD}{extra}")).map(|j| j.transfers);
        assert_eq!(t("transfers: 8\n").unwrap(), Transfers::Fixed(8));
        assert_eq!(t("transfers: auto\n").unwrap(), Transfers::Auto { max: 16 });
        assert_eq!(
            t("transfers: auto\nmax_transfers: 32\n").unwrap(),
            Transfers::Auto { max: 32 }
        );
        assert_eq!(t("max_transfers: 2\n").unwrap(), Transfers::Auto { max: 2 });
        for (bad, says) in [
            ("transfers: 0\n", "transfers: 0 is outside 1..64"),
            ("transfers: 65\n", "outside 1..64"),
            (
                "transfers: lots\n",
                "a number of connections like 4, or auto",
            ),
            ("max_transfers: 0\n", "max_transfers: 0 is outside"),
            (
                "transfers: 4\nmax_transfers: 8\n",
                "ceiling of `transfers: auto`",
            ),
        ] {
            let e = t(bad).unwrap_err();
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn wrong_type_and_missing_keys() {
        let e = parse(&format!("{GOOD}transfers: many\n")).unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        let e = parse("remote:\n  host: h\n  user: u\n  password: p\n").unwrap_err();
        assert!(e.reason.contains("local"), "{e}");
        let e = parse("local: /x\nremote:\n  user: u\n  password: p\n").unwrap_err();
        assert!(e.reason.contains("host"), "{e}");
    }

    #[test]
    fn a_jobs_dir_reports_every_bad_file_and_both_files_of_one_name() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("a.yaml", GOOD);
        write("b.yaml", "local: [\n");
        write("c.yaml", &format!("{GOOD}colour: blue\n"));
        write("d.yaml", GOOD);
        write("d.yml", GOOD);
        write("notes.txt", "not a job");
        let files = load_job_dir(dir.path()).unwrap();
        let names: Vec<(&str, bool)> = files
            .iter()
            .map(|f| (f.name.as_str(), f.job.is_ok()))
            .collect();
        assert_eq!(
            names,
            [
                ("a", true),
                ("b", false),
                ("c", false),
                ("d", false),
                ("d", false)
            ]
        );
        let c = files[2].job.as_ref().unwrap_err();
        assert_eq!((c.line, c.column), (6, 1), "{c}");
        for (i, other) in [(3, "d.yml"), (4, "d.yaml")] {
            let e = files[i].job.as_ref().unwrap_err().to_string();
            assert!(e.contains("job `d` is also defined by"), "{e}");
            assert!(e.contains(other), "{e}");
        }
        assert!(load_jobs(dir.path()).is_err());
        assert!(load_job_dir(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn relative_paths_are_anchored_at_the_job_file() {
        let job = parse(GOOD.replace("/srv/out", "../data").as_str()).unwrap();
        assert_eq!(job.local, PathBuf::from("/etc/jobs/../data"));
    }

    #[test]
    fn an_unknown_job_names_the_jobs_that_exist_and_no_position() {
        let dir = tempfile::tempdir().unwrap();
        let e = find_job(dir.path(), "nosuch").unwrap_err();
        let shown = e.to_string();
        assert!(shown.starts_with("no job named `nosuch` in "), "{shown}");
        assert!(shown.ends_with("which holds no job"), "{shown}");
        for name in ["zeta", "alpha", "mid"] {
            std::fs::write(dir.path().join(format!("{name}.yaml")), GOOD).unwrap();
        }
        std::fs::write(dir.path().join("other.yml"), GOOD).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let shown = find_job(dir.path(), "nosuch").unwrap_err().to_string();
        assert!(
            shown.ends_with("; the jobs there: alpha, mid, other, zeta"),
            "{shown}"
        );
        assert!(!shown.contains(":1:1"), "{shown}");
        assert!(!shown.contains("nosuch.yaml"), "{shown}");
        // A path is not a job name, even where it names a job file.
        let shown = find_job(dir.path(), "../x/alpha").unwrap_err().to_string();
        assert!(shown.starts_with("no job named `../x/alpha`"), "{shown}");
        assert_eq!(find_job(dir.path(), "other").unwrap().name, "other");
    }

    #[test]
    fn a_long_list_of_jobs_is_cut_with_a_count() {
        let known: Vec<String> = (0..25).map(|i| format!("j{i:02}")).collect();
        let shown = unknown_job("x", &known, "/etc/ferrysync/jobs");
        assert!(shown.contains("j00, j01"), "{shown}");
        assert!(shown.contains("j19 and 5 more"), "{shown}");
        assert!(!shown.contains("j20"), "{shown}");
    }

    #[test]
    fn an_error_in_a_file_still_shows_its_position() {
        let e = parse(&format!("{GOOD}colour: blue\n")).unwrap_err();
        assert!(
            e.to_string().starts_with("/etc/jobs/acme.yaml:6:1: "),
            "{e}"
        );
    }

    mod fuzz {
        //! Fuzz target (proptest): a job file is trusted, but typed by hand; whatever it holds,
        //! loading it returns a job or an error that points into the file, never a panic.

        use proptest::prelude::*;

        use crate::config::testing::{parse, GOOD};

        /// The error, if any, points at a line and column of the file (1-based; one past the
        /// last line for an error at the end).
        fn check(text: &str) -> Result<(), TestCaseError> {
            if let Err(e) = parse(text) {
                // YAML breaks lines at CR, NEL, LS and PS too, not only at LF.
                let lines = text
                    .chars()
                    .filter(|c| ['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'].contains(c))
                    .count()
                    + 1;
                prop_assert!(e.line >= 1 && e.line <= lines + 1, "{e} in {text:?}");
                prop_assert!(e.column >= 1, "{e} in {text:?}");
                prop_assert!(!e.reason.is_empty(), "{text:?}");
            }
            Ok(())
        }

        const KEYS: &[&str] = &[
            "local",
            "direction",
            "mode",
            "schedule",
            "timezone",
            "catch_up",
            "watch",
            "debounce",
            "poll",
            "include",
            "exclude",
            "transfers",
            "max_transfers",
            "max_delete",
            "allow_empty_source",
            "adopt",
            "initial_files",
            "upload",
            "retries",
            "audit_retention",
            "settle",
            "min_age",
            "max_age",
            "notify",
            "expect",
            "ready_marker",
            "batch_marker",
            "marker_after_pull",
            "remote",
        ];
        const REMOTE_KEYS: &[&str] = &[
            "host",
            "port",
            "security",
            "allow_plaintext",
            "path",
            "timeout",
            "listing",
            "list_time_offset",
            "data_mode",
            "passive_address",
            "active_ports",
            "user",
            "password_env",
            "tls",
        ];

        /// A value as a user might mistype it: scalars, lists, maps, YAML oddities.
        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>().prop_map(|s| format!("{s:?}")),
                "[ -~]{0,20}",
                "-?[0-9]{1,22}(%|s|ms|m|h)?",
                Just("[]".to_string()),
                Just("{}".to_string()),
                Just("~".to_string()),
                Just("&a [*a]".to_string()),
                Just("!!binary aGk=".to_string()),
                "\\[[ -~]{0,10}\\]",
                "(\\* ){4}\\*|@[a-z]{0,8}",
            ]
        }

        proptest! {
            #![proptest_config(crate::fuzz_config(512))]

            #[test]
            fn any_text_as_a_job_file(text in any::<String>()) {
                check(&text)?;
            }

            #[test]
            fn a_good_job_with_hostile_keys_and_values(
                top in proptest::collection::vec((proptest::sample::select(KEYS), value()), 0..4),
                remote in proptest::collection::vec((proptest::sample::select(REMOTE_KEYS), value()), 0..4),
            ) {
                let mut text = GOOD.to_string();
                for (k, v) in &remote {
                    text.push_str(&format!("  {k}: {v}\n"));
                }
                for (k, v) in &top {
                    text.push_str(&format!("{k}: {v}\n"));
                }
                check(&text)?;
            }

            #[test]
            fn a_good_job_cut_anywhere(cut in any::<proptest::sample::Index>(), junk in any::<String>()) {
                let text = format!("{GOOD}direction: pull\nmode: mirror\nretries:\n  attempts: 3\n");
                let at = cut.index(text.len() + 1);
                let mut at = at.min(text.len());
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                check(&format!("{}{junk}", &text[..at]))?;
            }
        }
    }
}
