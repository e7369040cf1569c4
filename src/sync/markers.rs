//! After a pull with ready markers (`ready_marker:`, `batch_marker:`): the markers whose files
//! were all pulled and recorded are deleted on the server (`marker_after_pull: delete`, the
//! default), so that none is left to release the partner's next batch while it is being
//! written. Which markers go is decided in [`crate::model::marker::markers_to_delete`]; a
//! marker that cannot be deleted is a warning, never a failed run (its files are safely here).

use std::collections::BTreeSet;

use crate::config::Job;
use crate::model::marker::markers_to_delete;
use crate::model::paths::remote_path;
use crate::remote::session::Session;
use crate::remote::tls::TlsContext;
use crate::sync::report::RunReport;

/// Deletes the markers of `present` that release no file left pending by this run (failed or
/// still changing). Returns the connection, if one is left.
pub(crate) async fn after_pull(
    job: &Job,
    tls: &TlsContext,
    mut session: Option<Session>,
    present: &[String],
    report: &mut RunReport,
) -> Option<Session> {
    let Some(rule) = &job.markers else {
        return session;
    };
    let pending: BTreeSet<String> = report
        .failures
        .iter()
        .map(|f| f.path.clone())
        .chain(report.changing.iter().cloned())
        .collect();
    let doomed = markers_to_delete(rule, present, &pending, |owner| {
        job.filter.includes_file(owner)
    });
    if doomed.is_empty() {
        return session;
    }
    if session.is_none() {
        match Session::connect(&job.remote, tls).await {
            Ok(s) => session = Some(s),
            Err(e) => {
                tracing::warn!(
                    markers = doomed.len(),
                    "cannot connect to delete the ready markers of the files pulled; the next run deletes them: {e}"
                );
                return None;
            }
        }
    }
    let s = session.as_mut()?;
    for marker in doomed {
        let path = remote_path(&job.remote.path, &marker);
        match s.delete_file(&path).await {
            Ok(()) => tracing::info!(path = %marker, "deleted the ready marker of files pulled"),
            Err(e) => tracing::warn!(
                path = %marker,
                "cannot delete the ready marker of files pulled (it would release the partner's next files before they are complete): {e}"
            ),
        }
    }
    session
}
