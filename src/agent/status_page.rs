//! The status page of the agent's listener, rendered on the server as plain HTML: `/` (every
//! job: state, last and next run, live progress, last errors) and `/jobs/{name}` (one job and
//! its recent runs with the files each moved, from the audit record). The page works without
//! JavaScript; `page/status.js` (same origin, no inline script: the CSP forbids it) polls
//! `/api/status` once a second and redraws the jobs with the same markup.
//!
//! Job names, paths, errors and server replies are hostile input (a partner names the files):
//! every one goes through [`text`], which makes control characters visible (as `status` does)
//! and escapes HTML, and into URLs through [`url_segment`]. Nothing here offers an action.

use std::fmt::Write;
use std::path::Path;

use super::status_doc::{job_statuses, JobStatus, StatusDoc};
use crate::state::{iso_time, AuditFilter, AuditRecord, Ledger, LedgerError, Outcome, RunRecord};
use crate::sync::{escape_controls, human_bytes};

/// The page's script: polls `/api/status` and redraws (served as `/static/status.js`).
pub const SCRIPT: &str = include_str!("page/status.js");
/// The page's style sheet (`/static/status.css`).
pub const STYLE: &str = include_str!("page/status.css");
/// The page's icon (`/static/icon.svg`, also `/favicon.ico`).
pub const ICON: &str = include_str!("page/icon.svg");

/// Runs listed on a job's page.
const RUNS_SHOWN: usize = 20;
/// Files listed per run on a job's page; the rest are counted.
const FILES_SHOWN: usize = 100;
/// Failed paths listed under a job; the rest are counted.
const FAILURES_SHOWN: usize = 5;

/// `x` for HTML text or a quoted attribute: control characters made visible (as `status`
/// shows them), then `&<>"'` escaped.
pub fn text(x: &str) -> String {
    let x = escape_controls(x);
    let mut out = String::with_capacity(x.len());
    for c in x.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `x` as one path segment of a URL: every byte but the unreserved ones percent-encoded.
pub fn url_segment(x: &str) -> String {
    x.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A duration in seconds as people read it: `45 s`, `3 min 12 s`, `2 h 5 min`.
fn duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// The whole page around `content`.
fn page(title: &str, kind: &str, state: &str, now: i64, content: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n\
         <link rel=\"icon\" href=\"/static/icon.svg\" type=\"image/svg+xml\">\n\
         <link rel=\"stylesheet\" href=\"/static/status.css\">\n\
         <script src=\"/static/status.js\" defer></script>\n</head>\n\
         <body data-page=\"{kind}\" data-now=\"{now}\">\n<header>\n\
         <h1><a href=\"/\">ferrysync</a> <span class=\"sub\">{title}</span></h1>\n\
         <p class=\"meta\">Ledger <code>{state}</code> · <span id=\"updated\">as of {iso}</span> · \
         <span id=\"live\">static page: reload to refresh</span></p>\n</header>\n<main>\n{content}</main>\n\
         <footer>Read-only view. <a href=\"/api/status\">/api/status</a> is the document \
         <code>ferrysync status --json</code> prints.</footer>\n</body>\n</html>\n",
        title = text(title),
        state = text(state),
        iso = iso_time(now),
    )
}

/// `/`: every job.
pub fn index(doc: &StatusDoc, now: i64) -> String {
    let mut jobs = String::new();
    if doc.jobs.is_empty() {
        jobs.push_str("<p class=\"empty\">No job has run yet.</p>\n");
    }
    for j in &doc.jobs {
        job_card(&mut jobs, j, now, true);
    }
    page(
        "status",
        "index",
        &doc.state,
        now,
        &format!("<section id=\"jobs\" aria-live=\"polite\">\n{jobs}</section>\n"),
    )
}

/// A page for a job the ledger does not know.
pub fn no_such_job(name: &str) -> String {
    page(
        "no such job",
        "missing",
        "",
        crate::state::now_unix(),
        &format!(
            "<p class=\"empty\">The ledger has no job <code>{}</code>. <a href=\"/\">All jobs</a></p>\n",
            text(name)
        ),
    )
}

/// A page for any other path.
pub fn not_found() -> String {
    page(
        "not found",
        "missing",
        "",
        crate::state::now_unix(),
        "<p class=\"empty\">Nothing here. <a href=\"/\">All jobs</a></p>\n",
    )
}

/// One job: its state, facts, live progress and errors (the markup `status.js` redraws).
fn job_card(out: &mut String, j: &JobStatus, now: i64, link: bool) {
    let outcome = j
        .last_run
        .as_ref()
        .map_or("none".to_string(), |r| r.outcome.to_string());
    let name = if link {
        format!(
            "<a href=\"/jobs/{}\">{}</a>",
            url_segment(&j.name),
            text(&j.name)
        )
    } else {
        text(&j.name)
    };
    let _ = write!(
        out,
        "<article class=\"job\" data-job=\"{}\" data-state=\"{state}\" data-outcome=\"{outcome}\">\n\
         <h2>{name} <span class=\"badge state-{state}\">{state}</span></h2>\n<dl class=\"facts\">\n",
        text(&j.name),
        state = j.state,
    );
    let mut fact = |label: &str, class: &str, value: String| {
        let _ = writeln!(
            out,
            "<div><dt>{label}</dt><dd class=\"{class}\">{value}</dd></div>"
        );
    };
    if !j.direction.is_empty() {
        fact(
            "Direction",
            "direction",
            format!(
                "{}: <code>{}</code> → <code>{}</code>",
                text(&j.direction),
                text(&j.local),
                text(&j.remote)
            ),
        );
    }
    fact(
        "Last run",
        "last-run",
        match &j.last_run {
            Some(r) => {
                let took = match r.ended_at {
                    Some(end) => format!("took {}", duration(end - r.started_at)),
                    None => format!("for {}", duration(now - r.started_at)),
                };
                format!(
                    "{} · <span class=\"outcome outcome-{o}\">{o}</span> · {} · {took}",
                    iso_time(r.started_at),
                    text(&r.trigger),
                    o = r.outcome,
                )
            }
            None => "never".into(),
        },
    );
    fact(
        "Next run",
        "next-run",
        j.next_run.as_deref().map_or_else(
            || match &j.schedule {
                Some(_) => "none".to_string(),
                None => "on change or poll only (no schedule)".to_string(),
            },
            text,
        ),
    );
    fact(
        "Last success",
        "last-success",
        j.last_success.as_deref().map_or("never".into(), text),
    );
    fact(
        "Failures in a row",
        "failures-in-a-row",
        j.consecutive_failures.to_string(),
    );
    fact("Files in sync", "synced", j.synced_files.to_string());
    // A running run's counts are known when it ends; its progress shows below meanwhile.
    if let Some(r) = j
        .last_run
        .as_ref()
        .filter(|r| r.outcome != Outcome::Running)
    {
        fact("Last run moved", "moved", moved(r));
    }
    out.push_str("</dl>\n");
    if let Some(r) = j
        .last_run
        .as_ref()
        .filter(|r| r.outcome == Outcome::Running)
    {
        progress(out, r, now);
    }
    errors(out, j);
    out.push_str("</article>\n");
}

/// The counts of a run: files (and bytes) up, down, deleted, failed.
fn moved(r: &RunRecord) -> String {
    let c = &r.counts;
    let mut parts = vec![
        format!("{} up ({})", c.files_up, human_bytes(c.bytes_up)),
        format!("{} down ({})", c.files_down, human_bytes(c.bytes_down)),
        format!("{} deleted", c.files_deleted),
        format!("{} failed", c.files_failed),
    ];
    if c.files_adopted > 0 {
        parts.push(format!("{} adopted", c.files_adopted));
    }
    if c.files_waiting > 0 {
        parts.push(format!("{} waiting", c.files_waiting));
    }
    parts.join(" · ")
}

/// A running run's progress: files and bytes, rate and ETA (averaged since the run started;
/// the script measures over the last seconds instead), files in flight.
fn progress(out: &mut String, r: &RunRecord, now: i64) {
    out.push_str("<div class=\"progress\">\n");
    let Some(p) = &r.progress else {
        out.push_str(
            "<p class=\"progress-text\">Connecting and comparing both sides…</p>\n</div>\n",
        );
        return;
    };
    let (value, max) = if p.bytes_total > 0 {
        (p.bytes_done.min(p.bytes_total), p.bytes_total)
    } else {
        (p.files_done.min(p.files_total), p.files_total.max(1))
    };
    let percent = value * 100 / max;
    let elapsed = (now - r.started_at).max(1) as u64;
    let rate = p.bytes_done / elapsed;
    let eta = match rate {
        0 => "ETA unknown".to_string(),
        rate => format!(
            "ETA {}",
            duration((p.bytes_total.saturating_sub(p.bytes_done) / rate) as i64)
        ),
    };
    let _ = writeln!(
        out,
        "<progress value=\"{value}\" max=\"{max}\">{percent}%</progress>\n\
         <p class=\"progress-text\"><span class=\"files\">{} / {} files</span> · \
         <span class=\"bytes\">{} / {}</span> · <span class=\"rate\">{}/s</span> · \
         <span class=\"eta\">{eta}</span></p>",
        p.files_done,
        p.files_total,
        human_bytes(p.bytes_done),
        human_bytes(p.bytes_total),
        human_bytes(rate),
    );
    if !p.current.is_empty() {
        out.push_str("<p class=\"in-flight-label\">In flight:</p>\n<ul class=\"in-flight\">\n");
        for f in &p.current {
            let _ = writeln!(out, "<li><code>{}</code></li>", text(f));
        }
        out.push_str("</ul>\n");
    }
    out.push_str("</div>\n");
}

/// The job's last error, invalid job files, and the last run's failed paths.
fn errors(out: &mut String, j: &JobStatus) {
    let failures = j.last_run.as_ref().map_or(&[][..], |r| &r.failures[..]);
    if j.last_error.is_none() && j.config_errors.is_empty() && failures.is_empty() {
        return;
    }
    out.push_str("<div class=\"errors\">\n");
    if let Some(e) = &j.last_error {
        let _ = writeln!(
            out,
            "<p class=\"last-error\"><strong>Last error:</strong> <span>{}</span></p>",
            text(e)
        );
    }
    if !j.config_errors.is_empty() {
        let note = match j.state {
            "invalid" => "Invalid job file, not running:",
            _ => "Invalid job file, its last valid version keeps running:",
        };
        let _ = writeln!(out, "<p>{note}</p>\n<ul class=\"config-errors\">");
        for e in &j.config_errors {
            let _ = writeln!(out, "<li>{}</li>", text(e));
        }
        out.push_str("</ul>\n");
    }
    if !failures.is_empty() {
        out.push_str("<p>Failed in the last run:</p>\n<ul class=\"failures\">\n");
        for f in failures.iter().take(FAILURES_SHOWN) {
            let _ = writeln!(
                out,
                "<li><code>{}</code>: {}</li>",
                text(&f.path),
                text(&f.error)
            );
        }
        let all = j
            .last_run
            .as_ref()
            .map_or(0, |r| r.counts.files_failed as usize)
            .max(failures.len());
        if all > FAILURES_SHOWN {
            let _ = writeln!(out, "<li>and {} more</li>", all - FAILURES_SHOWN);
        }
        out.push_str("</ul>\n");
    }
    out.push_str("</div>\n");
}

/// The files of one run, as far as a page shows them.
struct RunFiles {
    shown: Vec<AuditRecord>,
    more: u64,
}

/// `/jobs/{name}`: the job and its recent runs with their files.
pub struct JobPage {
    state: String,
    job: JobStatus,
    runs: Vec<(RunRecord, RunFiles)>,
}

impl JobPage {
    /// The page of job `name` from the ledger at `state`; `None` if the ledger has no such job.
    pub fn read(state: &Path, name: &str) -> Result<Option<JobPage>, LedgerError> {
        let Some(ledger) = Ledger::open_read_only(state)? else {
            return Ok(None);
        };
        let Some(job) = job_statuses(&ledger, Some(name))?.into_iter().next() else {
            return Ok(None);
        };
        let mut runs = Vec::new();
        for run in ledger.runs(name, RUNS_SHOWN)? {
            let mut files = RunFiles {
                shown: Vec::new(),
                more: 0,
            };
            ledger.audit_rows(
                &AuditFilter {
                    job: Some(name),
                    run_id: Some(run.id),
                    ..Default::default()
                },
                |row| match files.shown.len() < FILES_SHOWN {
                    true => files.shown.push(row),
                    false => files.more += 1,
                },
            )?;
            runs.push((run, files));
        }
        Ok(Some(JobPage {
            state: state.display().to_string(),
            job,
            runs,
        }))
    }

    pub fn render(&self, now: i64) -> String {
        let mut content = String::from("<section id=\"jobs\" aria-live=\"polite\">\n");
        job_card(&mut content, &self.job, now, false);
        content.push_str("</section>\n<section id=\"runs\">\n<h2>Recent runs</h2>\n");
        if self.runs.is_empty() {
            content.push_str("<p class=\"empty\">No run yet.</p>\n");
        }
        for (run, files) in &self.runs {
            self.run(&mut content, run, files, now);
        }
        content.push_str("</section>\n");
        page(&self.job.name, "job", &self.state, now, &content)
    }

    fn run(&self, out: &mut String, r: &RunRecord, files: &RunFiles, now: i64) {
        let ended = match r.ended_at {
            Some(end) => format!(
                "ended {} (took {})",
                iso_time(end),
                duration(end - r.started_at)
            ),
            None => format!("running for {}", duration(now - r.started_at)),
        };
        let _ = writeln!(
            out,
            "<article class=\"run\" data-run=\"{id}\" data-outcome=\"{o}\">\n\
             <h3>Run {id} <span class=\"outcome outcome-{o}\">{o}</span></h3>\n\
             <p class=\"run-meta\">{trigger} · started {started} · {ended}<br>{moved}</p>",
            id = r.id,
            o = r.outcome,
            trigger = text(&r.trigger),
            started = iso_time(r.started_at),
            moved = moved(r),
        );
        if let Some(e) = &r.error {
            let _ = writeln!(out, "<p class=\"run-error\">{}</p>", text(e));
        }
        if files.shown.is_empty() {
            out.push_str("<p class=\"no-files\">No file changed.</p>\n");
        } else {
            out.push_str(
                "<table class=\"files\">\n<thead><tr><th>Action</th><th>Size</th><th>Path</th>\
                 <th>Server reply</th><th>At</th></tr></thead>\n<tbody>\n",
            );
            for f in &files.shown {
                let _ = writeln!(
                    out,
                    "<tr class=\"action-{action}\"><td>{action}</td><td class=\"num\">{size}</td>\
                     <td><code>{path}</code></td><td>{reply}</td><td>{at}</td></tr>",
                    action = text(&f.action),
                    size = human_bytes(f.bytes),
                    path = text(&f.path),
                    reply = text(f.server_reply.as_deref().unwrap_or("")),
                    at = iso_time(f.at),
                );
            }
            out.push_str("</tbody>\n</table>\n");
        }
        if files.more > 0 {
            let _ = writeln!(
                out,
                "<p class=\"more\">and {} more files: <code>ferrysync history {} --run {}</code></p>",
                files.more,
                text(&self.job.name),
                r.id
            );
        }
        out.push_str("</article>\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ledger::{PathFailure, RunProgress};
    use crate::state::RunCounts;

    const HOSTILE: &str = "<script>alert(1)</script>\"' onmouseover=x \u{1b}[2J\u{202e}gpj.exe";

    fn hostile_job() -> JobStatus {
        let mut j = JobStatus::invalid(HOSTILE);
        j.state = "running";
        j.direction = "push".into();
        j.local = format!("/srv/{HOSTILE}");
        j.remote = format!("host:21/{HOSTILE}");
        j.last_error = Some(format!("550 {HOSTILE}"));
        j.config_errors = vec![format!("{HOSTILE}.yaml:1:1: bad")];
        j.last_run = Some(RunRecord {
            id: 3,
            job: HOSTILE.into(),
            trigger: HOSTILE.into(),
            started_at: 1_000,
            ended_at: None,
            outcome: Outcome::Running,
            counts: RunCounts::default(),
            error: Some(HOSTILE.into()),
            failures: vec![PathFailure {
                path: HOSTILE.into(),
                error: HOSTILE.into(),
            }],
            progress: Some(RunProgress {
                files_done: 1,
                files_total: 4,
                bytes_done: 1 << 20,
                bytes_total: 4 << 20,
                current: vec![HOSTILE.into()],
            }),
        });
        j
    }

    /// Every `<` in `html` opens one of the tags the page itself writes.
    fn assert_no_injected_markup(html: &str) {
        assert!(!html.contains("<script>"), "{html}");
        // The quotes before it are escaped: no attribute can be closed and a handler opened.
        assert!(!html.contains("\" onmouseover"), "{html}");
        assert!(!html.contains("' onmouseover"), "{html}");
        assert!(!html.contains('\u{1b}'), "{html}");
        assert!(!html.contains('\u{202e}'), "{html}");
        for tag in html.split('<').skip(1) {
            let name: String = tag
                .trim_start_matches('/')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '!')
                .collect();
            assert!(
                [
                    "!DOCTYPE", "html", "head", "meta", "title", "link", "script", "body",
                    "header", "h1", "h2", "h3", "a", "span", "p", "code", "main", "footer",
                    "section", "article", "dl", "div", "dt", "dd", "progress", "ul", "li",
                    "strong", "br", "table", "thead", "tbody", "tr", "th", "td",
                ]
                .contains(&name.as_str()),
                "unexpected tag <{tag:.40}"
            );
        }
    }

    #[test]
    fn hostile_names_are_escaped_everywhere() {
        let doc = StatusDoc {
            state: format!("/var/lib/{HOSTILE}"),
            jobs: vec![hostile_job()],
        };
        let html = index(&doc, 1_010);
        assert_no_injected_markup(&html);
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39; onmouseover=x \\e[2J\\u{202e}gpj.exe"),
            "{html}"
        );
        // The link to the job's page: the name percent-encoded.
        assert!(
            html.contains("href=\"/jobs/%3Cscript%3Ealert%281%29"),
            "{html}"
        );
        let page = JobPage {
            state: "s".into(),
            job: hostile_job(),
            runs: vec![(
                hostile_job().last_run.unwrap(),
                RunFiles {
                    shown: vec![AuditRecord {
                        seq: 1,
                        run_id: Some(3),
                        job: HOSTILE.into(),
                        path: HOSTILE.into(),
                        action: "uploaded".into(),
                        bytes: 5,
                        blake3: None,
                        server_reply: Some(HOSTILE.into()),
                        at: 1_005,
                        prev: String::new(),
                        hash: String::new(),
                    }],
                    more: 2,
                },
            )],
        };
        let html = page.render(1_010);
        assert_no_injected_markup(&html);
        assert!(html.contains("and 2 more files"), "{html}");
        assert!(no_such_job(HOSTILE).contains("&lt;script&gt;"));
        assert_no_injected_markup(&no_such_job(HOSTILE));
    }

    #[test]
    fn a_running_job_shows_progress_rate_and_eta() {
        let html = index(
            &StatusDoc {
                state: "s".into(),
                jobs: vec![hostile_job()],
            },
            1_010,
        );
        // 1 MiB in 10 s: 102.4 KiB/s, 3 MiB left: 30 s.
        assert!(
            html.contains("<span class=\"files\">1 / 4 files</span>"),
            "{html}"
        );
        assert!(html.contains("1.0 MiB / 4.0 MiB"), "{html}");
        assert!(
            html.contains("<span class=\"rate\">102.4 KiB/s</span>"),
            "{html}"
        );
        assert!(
            html.contains("<span class=\"eta\">ETA 30 s</span>"),
            "{html}"
        );
        assert!(html.contains("<progress value=\"1048576\" max=\"4194304\">25%</progress>"));
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration(-3), "0 s");
        assert_eq!(duration(59), "59 s");
        assert_eq!(duration(192), "3 min 12 s");
        assert_eq!(duration(7500), "2 h 5 min");
    }
}
