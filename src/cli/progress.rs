//! The progress line of `sync` and `demo`: one line on stderr, redrawn in place, only when
//! stderr is a terminal (a redirected log gets the summary alone).

use std::io::IsTerminal;
use std::sync::Arc;

use ferrysync::sync::{human_bytes, ProgressObserver, TransferProgress};

/// An observer that draws the progress line, or `None` when stderr is not a terminal.
pub fn on_terminal() -> Option<ProgressObserver> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    Some(ProgressObserver(Arc::new(|p: &TransferProgress<'_>| {
        let line = format!(
            "\r{}: {}/{} files, {} of {}    ",
            super::shown(p.job),
            p.files_done,
            p.files_total,
            human_bytes(p.bytes_done),
            human_bytes(p.bytes_total)
        );
        if p.finished {
            eprintln!("{line}");
        } else {
            eprint!("{line}");
        }
    })))
}
