//! What the last run measured of the link to a job's server: the round trip at login and how
//! long the first connection took to log in. A re-run reads them before it connects, so that a
//! wide tree over a slow link is listed on several connections from the first moment (see
//! `sync/walk.rs`, `ConnectionsAhead`), not once the first login has measured the link again.

use std::time::Duration;

use rusqlite::params;

use crate::state::ledger::{Ledger, LedgerError};

/// The link as a run measured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkFacts {
    pub rtt: Duration,
    pub login: Duration,
}

impl Ledger {
    /// Keeps what this run measured of the job's link (the job's row must exist: every run
    /// registers its job first).
    pub(crate) fn record_link(&self, job: &str, link: LinkFacts) -> Result<(), LedgerError> {
        let us = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        self.execute(
            "UPDATE jobs SET rtt_us = ?2, login_us = ?3 WHERE name = ?1",
            params![job, us(link.rtt), us(link.login)],
        )
        .map(|_| ())
    }

    /// What the latest run measured of the job's link, if any run did.
    pub(crate) fn last_link(&self, job: &str) -> Result<Option<LinkFacts>, LedgerError> {
        let rows: Vec<(Option<i64>, Option<i64>)> = self.query_rows(
            "SELECT rtt_us, login_us FROM jobs WHERE name = ?1",
            [job],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let us = |n: i64| Duration::from_micros(u64::try_from(n).unwrap_or(0));
        Ok(match rows.first() {
            Some((Some(rtt), Some(login))) => Some(LinkFacts {
                rtt: us(*rtt),
                login: us(*login),
            }),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ledger::JobRecord;

    #[test]
    fn the_last_runs_link_is_kept_per_job() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("l.db")).unwrap();
        assert_eq!(l.last_link("j").unwrap(), None);
        l.upsert_job(&JobRecord {
            name: "j".into(),
            direction: "push".into(),
            local: "/l".into(),
            remote: "r".into(),
            schedule: None,
            timezone: None,
        })
        .unwrap();
        assert_eq!(l.last_link("j").unwrap(), None);
        let link = LinkFacts {
            rtt: Duration::from_millis(50),
            login: Duration::from_millis(480),
        };
        l.record_link("j", link).unwrap();
        assert_eq!(l.last_link("j").unwrap(), Some(link));
        assert_eq!(l.last_link("other").unwrap(), None);
    }
}
