//! ferrysync: unattended, scheduled directory sync over FTPS.
//!
//! The library is the pipeline, in layers that import only downward (the `layering` test below
//! reads every `use crate::` line and fails on one that points up):
//!
//! ```text
//! model   pure decisions and values: plan, snapshot, scope, relative paths, policy (no I/O)
//! config  job files: YAML -> validated Job
//! state   the SQLite ledger and the per-job run lock
//! remote  the FTPS client: session, TLS, data connections, listing parsers
//! sync    one run of one job: walk and scan, plan, transfer, record
//! agent   the long-running agent: schedules, watches, polls, reloads
//! ```
//!
//! The command line (`src/main.rs`, `src/cli/`) is the binary, above all of them.
//! [`loopback`], the embedded FTPS server of `ferrysync demo` and of the tests, stands outside
//! the pipeline and imports none of it.
//!
//! Inside a layer, submodules are private to the crate, so that rustc reports what nothing
//! uses; each layer's `mod.rs` re-exports what the binary, the tests and the examples use.

pub mod agent;
pub mod config;
pub mod loopback;
pub mod model;
pub mod remote;
pub mod state;
pub mod sync;

/// The proptest fuzz targets of the parsers that take untrusted bytes (listings, replies, job
/// files) run a few hundred cases in every `cargo test`; `FERRYSYNC_FUZZ_CASES=100000` runs
/// more, for a longer search.
#[cfg(test)]
pub(crate) fn fuzz_config(default_cases: u32) -> proptest::test_runner::Config {
    let cases = std::env::var("FERRYSYNC_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    proptest::test_runner::Config {
        cases,
        // Shrinking a long run's failure can take as long again: bounded too.
        max_shrink_iters: 2048,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}

#[cfg(test)]
mod layering {
    //! Imports go downward only: a module may use its own layer and the layers below it.

    const LAYERS: [&str; 6] = ["model", "config", "state", "remote", "sync", "agent"];

    fn rank(layer: &str) -> Option<usize> {
        LAYERS.iter().position(|l| *l == layer)
    }

    /// Every `crate::LAYER` path in `text` (use lines and inline paths alike).
    fn layers_used(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("");
            let mut rest = code;
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                out.push(name);
            }
        }
        out
    }

    fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn no_layer_imports_from_a_layer_above_it() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut upward = Vec::new();
        for layer in LAYERS {
            let mut files = Vec::new();
            rust_files(&src.join(layer), &mut files);
            assert!(!files.is_empty(), "no files in src/{layer}");
            for f in files {
                let text = std::fs::read_to_string(&f).unwrap();
                // Unit tests may reach anywhere (the loopback server included).
                let code = text.split("#[cfg(test)]").next().unwrap_or("");
                for used in layers_used(code) {
                    if used == "loopback" || rank(&used).is_some_and(|r| r > rank(layer).unwrap()) {
                        upward.push(format!("{} uses crate::{used}", f.display()));
                    }
                }
            }
        }
        let loopback = std::fs::read_to_string(src.join("loopback.rs")).unwrap();
        for used in layers_used(&loopback) {
            upward.push(format!("src/loopback.rs uses crate::{used}"));
        }
        assert!(
            upward.is_empty(),
            "imports that point up:\n{}",
            upward.join("\n")
        );
    }

    #[test]
    fn the_guard_sees_an_upward_import() {
        assert_eq!(
            layers_used("use crate::sync::run::X; // crate::agent\nlet a = crate::model::paths::join(\"\", \"\");"),
            ["sync", "model"]
        );
    }
}
