//! `ferrysync test JOB [--json]`: connect as a run of the job would and say what the connection
//! met: the address, TLS (version, suite, the certificate chain with expiry, how it was
//! verified, and whether a data connection resumed the control connection's session), the
//! login, FEAT, the remote folder's first entries, and how the data connection was opened.

use super::{runtime, shown, CmdResult, Failure, JobsArg, SECRETS};
use ferrysync::remote::Probe;

/// Entries of the remote folder `test` shows.
const ENTRIES_SHOWN: usize = 10;

/// Test a job's connection: TLS, certificate, login, FEAT, passive mode, the remote folder.
#[derive(Debug, clap::Args)]
pub struct TestCmd {
    /// The job's name (its file name without .yaml).
    job: String,
    /// One JSON document instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    jobs: JobsArg,
}

impl TestCmd {
    pub fn execute(self) -> CmdResult {
        let job = ferrysync::config::find_job(&self.jobs.dir, &self.job)?;
        SECRETS.add_job(&job);
        let probe = runtime()?.block_on(ferrysync::remote::probe(&job.remote, ENTRIES_SHOWN));
        if self.json {
            let text = serde_json::to_string_pretty(&probe).map_err(Failure::run)?;
            println!("{}", SECRETS.redact(&text));
        } else {
            for line in lines(&probe) {
                println!("{}", SECRETS.redact(&line));
            }
        }
        match &probe.error {
            None => Ok(()),
            Some(e) => Err(Failure::run(format!(
                "job {}: the connection test failed: {e}",
                job.name
            ))),
        }
    }
}

/// The text form: one `key: value` line per fact, as far as the test got.
fn lines(p: &Probe) -> Vec<String> {
    let mut out = vec![format!(
        "server:       {} ({})",
        shown(&p.server),
        security(p)
    )];
    if let Some(a) = &p.address {
        out.push(format!("connected to: {a}"));
    }
    for (i, g) in p.greeting.iter().enumerate() {
        let key = if i == 0 { "greeting:" } else { "" };
        out.push(format!("{key:<13} {}", shown(g)));
    }
    if let Some(t) = &p.tls {
        out.push(format!("TLS:          {}, {}", t.version, t.cipher_suite));
    }
    if let Some(v) = &p.verification {
        out.push(format!("verified by:  {}", shown(v)));
    }
    for (i, c) in p.certificates.iter().enumerate() {
        out.push(format!(
            "certificate {i}: {}; issuer {}; expires {} ({})",
            shown(&c.subject),
            shown(&c.issuer),
            c.not_after,
            days(c.days_left)
        ));
    }
    if p.logged_in {
        out.push("login:        ok".to_string());
    }
    if !p.features.is_empty() {
        out.push(format!(
            "FEAT:         {}",
            p.features.iter().map(shown).collect::<Vec<_>>().join(", ")
        ));
    }
    if let Some(d) = &p.data {
        out.push(format!("data:         {}", data_line(d)));
        if let Some(t) = &d.tls {
            out.push(format!(
                "data TLS:     {}, {}; {}",
                t.version,
                t.cipher_suite,
                match (t.resumed, p.listing.is_some()) {
                    (true, _) => "resumed the control connection's TLS session (session reuse works)",
                    (false, true) => "did NOT resume the control connection's TLS session (a full handshake, which this server accepted; servers that require session reuse refuse it)",
                    (false, false) => "did NOT resume the control connection's TLS session (a full handshake; servers that require session reuse refuse it)",
                }
            ));
        }
    }
    if let Some(l) = &p.listing {
        out.push(format!(
            "listing:      {} ({}, {} entries{})",
            shown(&l.path),
            l.command,
            l.total,
            if l.total > l.entries.len() {
                format!(", the first {} by name", l.entries.len())
            } else {
                String::new()
            }
        ));
        out.extend(super::ls::entry_lines(&l.entries));
    }
    match &p.error {
        None => out.push("result:       ok".to_string()),
        // The error itself is printed once, on stderr, as every command's error is.
        Some(_) => out.push("result:       failed".to_string()),
    }
    out
}

fn security(p: &Probe) -> &'static str {
    match p.security {
        "explicit" => "explicit FTPS: AUTH TLS",
        "implicit" => "implicit FTPS: TLS from the first byte",
        _ => "plain FTP: security: none",
    }
}

fn days(left: i64) -> String {
    match left {
        n if n < 0 => format!("EXPIRED {} days ago", -n),
        1 => "1 day left".to_string(),
        n => format!("{n} days left"),
    }
}

fn data_line(d: &ferrysync::remote::DataSummary) -> String {
    let to = d.connected_to.as_deref().unwrap_or("(not connected)");
    match d.command {
        "EPSV" => format!("passive, EPSV: connected to {to} (the control connection's address, the reply's port)"),
        "PASV" if d.announced_address_replaced => format!(
            "passive, PASV (the server refused EPSV): the reply named {}; that address was ignored in favour of the control connection's: connected to {to} (remote.passive_address: {})",
            d.announced.as_deref().unwrap_or("-"),
            d.passive_address
        ),
        "PASV" => format!("passive, PASV (the server refused EPSV): the reply named {}; connected to {to}", d.announced.as_deref().unwrap_or("-")),
        other => format!("active, {other}: the server connected to ferrysync"),
    }
}
