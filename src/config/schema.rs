//! The JSON Schema of a job file (`ferrysync schema`), for editors: yaml-language-server and
//! the like validate and complete job files with it.
//!
//! It is derived (schemars) from the same serde structs the parser reads ([`super::raw`]), so a
//! key added there is in the schema without anyone remembering to add it; `deny_unknown_fields`
//! becomes `additionalProperties: false`. The keys that take several forms have hand-written
//! visitors (see raw.rs), so their schemas are written here, next to the visitors' rules, and a
//! test compares the schema's verdict with the parser's for every key and a spread of values.
//!
//! The schema describes the shape the parser accepts (keys, types, the closed choices); the
//! checks of values that follow (a cron expression, a range of ports, a duration) stay
//! `ferrysync check`'s.

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

use super::raw::{PatternList, RawJob, RawMaxDelete, RawPorts, RawRetries, RawTransfers, RawWatch};

/// The schema's `$id`: where the Debian package installs it.
pub const SCHEMA_PATH: &str = "/usr/share/ferrysync/job.schema.json";

/// The JSON Schema (draft 2020-12) of a job file.
pub fn job_schema() -> serde_json::Value {
    let mut schema = schemars::generate::SchemaSettings::draft2020_12()
        .for_deserialize()
        .with_transform(schemars::transform::RecursiveTransform(
            text_keys_take_any_scalar,
        ))
        .into_generator()
        .into_root_schema_for::<RawJob>();
    schema.insert("title".into(), "ferrysync job file".into());
    describe_keys(&mut schema);
    schema.insert(
        "description".into(),
        "One job per file, jobs/NAME.yaml; the file name is the job's name. See the README's \"Job files\"."
            .into(),
    );
    schema.to_value()
}

/// What each key means, as the README's "Job files" says it, for an editor's hover and
/// completion. `section`: `""` for the top level, else the struct's definition name.
const KEY_DESCRIPTIONS: &[(&str, &str, &str)] = &[
    ("", "local", "Local directory (required); relative to the job file's directory."),
    ("", "remote", "The FTPS server and the remote directory."),
    ("", "direction", "push: local -> remote | pull: remote -> local (default push)."),
    ("", "mode", "mirror: also delete what the source no longer has | copy: never delete (default mirror; copy with after_transfer: delete or archive)."),
    ("", "schedule", "5-field crontab (Monday = 1) or @hourly, @daily, ..."),
    ("", "timezone", "IANA time zone of the schedule; default: the machine's zone."),
    ("", "catch_up", "true: a scheduled time missed while the agent was down runs at start-up."),
    ("", "watch", "Push jobs: true (inotify) or poll (NFS/SMB): sync soon after local changes."),
    ("", "debounce", "watch: quiet time before a run, 100ms..1h (default 2s)."),
    ("", "poll", "Pull jobs: list the remote this often; with `watch: poll`: the local poll interval."),
    ("", "include", "Glob patterns on paths relative to the job's root (a string or a list)."),
    ("", "exclude", "Glob patterns on paths relative to the job's root (a string or a list)."),
    ("", "transfers", "Parallel connections: auto (default: 4 on a LAN, more as the round trip grows, up to max_transfers) or a fixed number, 1..64."),
    ("", "max_transfers", "transfers: auto: the most connections a run opens, 1..64 (default 16)."),
    ("", "adopt", "A file both sides hold that the ledger does not know: evidence (default: record it if digest, exact time or content shows it is the same, else a conflict) | recopy (send it again)."),
    ("", "initial_files", "transfer (default) | skip: leave alone the files the source holds at the job's first run (remembered in the ledger, whatever their times) unless they change; send only files that appear later."),
    ("", "audit_retention", "How long the per-file audit record keeps rows (default 400d, at least 1d); pruning keeps the chain verifiable."),
    ("", "settle", "Pull jobs: take a remote file only once its size and time were seen unchanged this long apart (default 1m; the run waits for it, re-listing, up to 5 periods or 10 minutes); 0 takes files as listed."),
    ("", "ready_marker", "Pull jobs: take a remote file only once its marker exists beside it, named by this template (\"{name}.done\"); markers are never downloaded, and replace settle."),
    ("", "batch_marker", "Pull jobs: take the files of a folder only once this file exists in it (\"_READY\"); never downloaded, replaces settle."),
    ("", "marker_after_pull", "delete (default): delete a marker on the server once its files are pulled and recorded, so it cannot release the next batch | keep."),
    ("", "min_age", "Leave alone source files younger than this by modification time (`10m`, `2h`, `30d`): neither sent nor deleted at the destination; remote times from LIST count as a minute uncertain."),
    ("", "max_age", "Leave alone source files older than this by modification time (`30d`): neither sent nor deleted at the destination, even in mirror mode."),
    ("", "bandwidth", "Limit on the job's data connections, all together: a rate (20MiB/s, 200Mbit/s, off), a timetable in the job's zone (\"Mon-Fri 08:00-18:00 5MiB/s, off\"), or {up: ..., down: ...}."),
    ("", "after_transfer", "What becomes of a source file once its copy is verified and recorded: keep (default) | delete | archive (moved into archive_to). delete and archive imply mode: copy."),
    ("", "archive_to", "after_transfer: archive: the folder on the source side, relative to the source root or absolute; {yyyy}, {mm}, {dd} (job's time zone) and {job} are filled in."),
    ("", "archive_retention", "Push jobs with a local archive: archived files older than this (`90d`, counted from when they were archived) are removed after each run."),
    ("", "max_delete", "Refuse a run that would delete more: a count, or a percentage of the destination's files (100%: no limit)."),
    ("", "allow_empty_source", "true: a mirror may empty the destination when the source lists no file."),
    ("", "retries", "Transient failures: attempts per file and per listing (a number, or attempts: and max_delay:)."),
    ("", "upload", "Options for servers with quirks (each warned about in every run)."),
    ("RawRemote", "host", "The server's host name or address (required)."),
    ("RawRemote", "port", "Default 21 (explicit, none) or 990 (implicit)."),
    ("RawRemote", "security", "explicit (AUTH TLS) | implicit (TLS from the first byte) | none (needs allow_plaintext)."),
    ("RawRemote", "allow_plaintext", "security: none is refused unless this is true."),
    ("RawRemote", "path", "Absolute remote directory (default /)."),
    ("RawRemote", "timeout", "Per command, and per read or write on a data connection (default 60s)."),
    ("RawRemote", "listing", "auto: MLSD where FEAT offers it, LIST otherwise | list: always LIST."),
    ("RawRemote", "list_time_offset", "Zone of LIST times: auto (learnt from MDTM each run) | \"+02:00\" | UTC."),
    ("RawRemote", "data_mode", "passive (EPSV, then PASV) | active (EPRT, then PORT)."),
    ("RawRemote", "passive_address", "Where PASV data connections go: auto (= control) | server."),
    ("RawRemote", "active_ports", "data_mode: active only: local ports to listen on, 50000 or 50000-50100."),
    ("RawRemote", "max_listing_entries", "Cap on one directory listing's entries."),
    ("RawRemote", "max_listing_line", "Cap on the bytes of one listing line (at least 256)."),
    ("RawRemote", "max_listing_bytes", "Cap on the bytes of one directory's listing (at least 1024)."),
    ("RawRemote", "user", "The login name (required)."),
    ("RawRemote", "password_env", "The environment variable that holds the password."),
    ("RawRemote", "password_file", "A file that holds the password."),
    ("RawRemote", "password", "An inline password: works, with a warning in every run."),
    ("RawRemote", "tls", "Certificate verification and client certificates."),
    ("RawTls", "ca_file", "PEM file of the CA(s) to trust; default: the system's trust store."),
    ("RawTls", "pin_sha256", "Accept exactly this certificate (SHA-256 fingerprint, or a list)."),
    ("RawTls", "insecure_skip_verify", "No verification at all; warned in every run."),
    ("RawTls", "client_cert", "Client certificate (PEM), with client_key."),
    ("RawTls", "client_key", "The client certificate's private key (PEM)."),
    ("RawTls", "max_version", "\"1.2\" for servers whose TLS 1.3 session reuse fails; default \"1.3\"."),
    ("RawUpload", "temp_name", "false: write under the final name (servers that refuse RNFR/RNTO)."),
    ("RawUpload", "verify", "none: skip SIZE/HASH checks (write-only drop folders)."),
    ("RawRetryPolicy", "attempts", "Attempts per file and per listing, the first included."),
    ("RawRetryPolicy", "max_delay", "Backoff: 1 s, doubling up to this, with 25% jitter."),
    ("", "notify", "Alerts: where they go (exec, webhook) and which events; keys override those of _defaults.yaml next to the job files."),
    ("", "expect", "Pull jobs: at least new_files files downloaded by each deadline `by` (crontab, job's timezone), else a `late` alert."),
    ("RawNotify", "enabled", "false: no alerts for this job, whatever _defaults.yaml says."),
    ("RawNotify", "events", "failure, recovery, success, certificate_expiring, late (default: all but success)."),
    ("RawNotify", "cert_expiry_days", "Alert once when the server's or client's certificate expires within this many days (default 21)."),
    ("RawNotify", "exec", "A command and its arguments (a list; never through a shell), the payload JSON on its stdin."),
    ("RawNotify", "exec_timeout", "The exec command is killed after this long (default 30s, at most 10m)."),
    ("RawNotify", "webhook", "HTTP POST of the payload JSON, signed with HMAC-SHA256."),
    ("RawWebhook", "url", "https://...; plain http only to loopback or with allow_http: true."),
    ("RawWebhook", "secret_file", "A file holding the HMAC-SHA256 signing secret."),
    ("RawWebhook", "secret_env", "The environment variable holding the signing secret."),
    ("RawWebhook", "timeout", "Per attempt: connect, TLS, request and reply (default 10s)."),
    ("RawWebhook", "ca_file", "PEM file of the CA(s) to trust; default: the system's trust store."),
    ("RawWebhook", "allow_http", "true: allow plain http to a host other than loopback."),
    ("RawExpect", "new_files", "At least this many files downloaded between two deadlines (default 1)."),
    ("RawExpect", "by", "The deadline: 5-field crontab in the job's timezone, e.g. \"0 7 * * 1-5\"."),
];

/// Puts [`KEY_DESCRIPTIONS`] into the schema (a key the table does not name keeps none).
fn describe_keys(schema: &mut Schema) {
    for (section, key, text) in KEY_DESCRIPTIONS {
        let props = if section.is_empty() {
            schema.get_mut("properties")
        } else {
            schema
                .get_mut("$defs")
                .and_then(|d| d.get_mut(*section))
                .and_then(|d| d.get_mut("properties"))
        };
        if let Some(prop) = props
            .and_then(|p| p.get_mut(*key))
            .and_then(|p| p.as_object_mut())
        {
            prop.insert("description".into(), (*text).into());
        }
    }
}

/// The types of a YAML scalar that serde_yaml hands to a string field as its text: `user: 1234`
/// and `path: 2024` are the strings "1234" and "2024", `true` is "true", `~` is "~".
const SCALAR_TYPES: [&str; 4] = ["string", "number", "boolean", "null"];

/// A list item of a string list takes any scalar (see [`SCALAR_TYPES`]).
fn scalar_text() -> Schema {
    json_schema!({ "type": SCALAR_TYPES })
}

/// Every key of a struct that serde reads as a `String` or a `PathBuf` (`type: string`, with or
/// without `null` for an `Option`) takes any scalar, as the parser does ([`SCALAR_TYPES`]). The
/// keys with several forms and the closed choices are `$ref`s to their own definitions, which
/// keep their own types.
fn text_keys_take_any_scalar(schema: &mut Schema) {
    let Some(props) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) else {
        return;
    };
    for prop in props.values_mut() {
        let Some(prop) = prop.as_object_mut() else {
            continue;
        };
        let text = match prop.get("type") {
            Some(serde_json::Value::String(t)) => t == "string",
            Some(serde_json::Value::Array(ts)) => {
                ts.iter().any(|t| t == "string") && ts.iter().all(|t| t == "string" || t == "null")
            }
            _ => false,
        };
        if text && !prop.contains_key("enum") && !prop.contains_key("const") {
            prop.insert("type".into(), serde_json::json!(SCALAR_TYPES));
        }
        // schemars bounds u8 and u16 but leaves a u32's maximum to the `format`, which
        // validators do not check by default; serde refuses a larger number.
        if prop.get("format").and_then(|f| f.as_str()) == Some("uint32") {
            prop.insert("maximum".into(), u32::MAX.into());
        }
    }
}

impl JsonSchema for PatternList {
    fn schema_name() -> Cow<'static, str> {
        "PatternList".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // One pattern (an integer keeps its spelling, a float would not), or a list of them.
        json_schema!({
            "description": "a string or a list of strings",
            "anyOf": [
                { "type": ["string", "integer"] },
                { "type": "array", "items": scalar_text() }
            ]
        })
    }
}

impl JsonSchema for RawPorts {
    fn schema_name() -> Cow<'static, str> {
        "ActivePorts".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "a port like 50000 or a range of ports like 50000-50100",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string" }
            ]
        })
    }
}

impl JsonSchema for RawWatch {
    fn schema_name() -> Cow<'static, str> {
        "Watch".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "true (inotify), false, or poll (NFS/SMB: the local tree is polled)",
            "anyOf": [
                { "type": "boolean" },
                { "type": "string", "examples": ["poll"] }
            ]
        })
    }
}

impl JsonSchema for RawRetries {
    fn schema_name() -> Cow<'static, str> {
        "Retries".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let full = generator.subschema_for::<super::raw::RawRetryPolicy>();
        json_schema!({
            "description": "a number of attempts like 5, or attempts: and max_delay: keys",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                full
            ]
        })
    }
}

impl JsonSchema for RawMaxDelete {
    fn schema_name() -> Cow<'static, str> {
        "MaxDelete".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "a count of files like 10 or a percentage like 25%",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "examples": ["25%", "100%"] }
            ]
        })
    }
}

impl JsonSchema for RawTransfers {
    fn schema_name() -> Cow<'static, str> {
        "Transfers".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "a number of connections like 4, or auto",
            "anyOf": [
                { "type": "integer", "minimum": 0, "maximum": 65535 },
                { "const": "auto" }
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn validator() -> jsonschema::Validator {
        jsonschema::validator_for(&job_schema()).expect("the schema is a valid JSON Schema")
    }

    /// The keys of the object schema at `schema` (following `$ref`s into `$defs`), with the
    /// schema of each; an `anyOf` contributes the keys of its object branch.
    fn properties(root: &Value, schema: &Value) -> Vec<(String, Value)> {
        let schema = resolve(root, schema);
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            return props
                .iter()
                .map(|(k, v)| (k.clone(), resolve(root, v).clone()))
                .collect();
        }
        schema
            .get("anyOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|branch| properties(root, branch))
            .collect()
    }

    fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r.trim_start_matches("#/$defs/");
                resolve(root, &root["$defs"][name])
            }
            None => schema,
        }
    }

    /// Values as a user may write them (YAML), right and wrong for every kind of key.
    const VALUES: &[&str] = &[
        "1",
        "0",
        "-1",
        "70000",
        "5000000000",
        "2.5",
        "true",
        "false",
        "~",
        "\"\"",
        "x",
        "\"21\"",
        "25%",
        "poll",
        "push",
        "pull",
        "copy",
        "mirror",
        "implicit",
        "none",
        "list",
        "server",
        "active",
        "\"1.3\"",
        "50000-50100",
        "[]",
        "[a, 1]",
        "[a, 2.5, true]",
        "[[a]]",
        "[~]",
        "{}",
        "{a: b}",
        "{attempts: 3}",
        "{attempts: 3, max_delay: 5s}",
        "{attempts: x}",
        "{host: h, user: u}",
        "{ca_file: /x}",
        "{temp_name: false, verify: none}",
    ];

    fn is_valid(yaml: &str) -> Result<(), String> {
        let doc: Value = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        let v = validator();
        let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.to_string()).collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn repo_file(rel: &str) -> String {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// The ```yaml blocks of the README that are whole job files (they have `local:`).
    fn readme_jobs() -> Vec<String> {
        let readme = repo_file("README.md");
        let mut jobs = Vec::new();
        let mut block: Option<String> = None;
        for line in readme.lines() {
            match (&mut block, line.trim_end()) {
                (None, "```yaml") => block = Some(String::new()),
                (Some(b), "```") => {
                    if b.lines().any(|l| l.starts_with("local:")) {
                        jobs.push(std::mem::take(b));
                    }
                    block = None;
                }
                (Some(b), l) => {
                    b.push_str(l);
                    b.push('\n');
                }
                (None, _) => {}
            }
        }
        jobs
    }

    #[test]
    fn every_example_job_validates() {
        let mut examples = vec![
            (
                "jobs/example.yaml".to_string(),
                repo_file("jobs/example.yaml"),
            ),
            (
                "packaging/jobs/example.yaml.disabled".to_string(),
                repo_file("packaging/jobs/example.yaml.disabled"),
            ),
        ];
        let readme = readme_jobs();
        assert!(!readme.is_empty(), "no job in the README's yaml blocks");
        for (i, job) in readme.into_iter().enumerate() {
            examples.push((format!("README.md job {}", i + 1), job));
        }
        for (name, text) in examples {
            // The parser agrees it has the right shape (its values are check's business).
            serde_yaml::from_str::<RawJob>(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            is_valid(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn unknown_keys_and_wrong_types_do_not_validate() {
        let good = "local: /x\nremote:\n  host: h\n  user: u\n";
        assert_eq!(is_valid(good), Ok(()));
        for bad in [
            "colour: blue\n",
            "transfers: many\n",
            "transfers: 70000\n",
            "direction: sideways\n",
            "mode: [mirror]\n",
            "max_delete: -5\n",
            "max_delete: 2.5\n",
            "retries: lots\n",
            "retries:\n  tries: 3\n",
            "watch: 3\n",
            "include: 2.5\n",
            "exclude: {a: b}\n",
            "exclude: [a, [b]]\n",
            "upload:\n  temp_name: maybe\n",
            "bandwidth:\n  sideways: 1MiB/s\n",
            "bandwidth: [1MiB/s]\n",
        ] {
            let text = format!("{good}{bad}");
            assert!(is_valid(&text).is_err(), "{bad:?} validates");
            assert!(
                serde_yaml::from_str::<RawJob>(&text).is_err(),
                "{bad:?} parses"
            );
        }
        for bad_remote in [
            "  prot: 1\n",
            "  port: x\n",
            "  security: tls\n",
            "  tls:\n    verify: no\n",
            "  active_ports: true\n",
        ] {
            let text = format!("{good}{bad_remote}");
            assert!(is_valid(&text).is_err(), "{bad_remote:?} validates");
        }
        // Required keys.
        assert!(is_valid("remote:\n  host: h\n  user: u\n").is_err());
        assert!(is_valid("local: /x\nremote:\n  user: u\n").is_err());
        // Every form of the keys with several forms.
        for form in [
            "max_delete: 10\n",
            "max_delete: 25%\n",
            "retries: 3\n",
            "retries:\n  attempts: 3\n  max_delay: 5s\n",
            "watch: true\n",
            "watch: poll\n",
            "include: \"*.csv\"\n",
            "include: [\"*.csv\", 2024]\n",
            "exclude: 2024\n",
            "bandwidth: 20MiB/s\n",
            "bandwidth: \"Mon-Fri 08:00-18:00 5MiB/s, off\"\n",
            "bandwidth:\n  up: off\n  down: 200Mbit/s\n",
            "remote:\n  host: h\n  user: u\n  active_ports: 50000\n",
            "remote:\n  host: h\n  user: u\n  active_ports: 50000-50100\n",
            "remote:\n  host: h\n  user: u\n  tls:\n    pin_sha256: [\"ab:cd\", \"ef:01\"]\n",
        ] {
            let text = if form.starts_with("remote:") {
                format!("local: /x\n{form}")
            } else {
                format!("{good}{form}")
            };
            assert_eq!(is_valid(&text), Ok(()), "{form:?}");
        }
    }

    #[test]
    fn keys_are_described_and_unknown_keys_are_closed_at_every_level() {
        let schema = job_schema();
        assert_eq!(schema["additionalProperties"], false);
        for def in [
            "RawRemote",
            "RawTls",
            "RawUpload",
            "RawRetryPolicy",
            "RawNotify",
            "RawWebhook",
            "RawExpect",
        ] {
            assert_eq!(schema["$defs"][def]["additionalProperties"], false, "{def}");
        }
        // Every description names a key the schema has (a renamed key fails here).
        for (section, key, _) in KEY_DESCRIPTIONS {
            let props = if section.is_empty() {
                &schema["properties"]
            } else {
                &schema["$defs"][*section]["properties"]
            };
            assert!(
                props.get(*key).is_some(),
                "{section}.{key} is not in the schema"
            );
            assert!(props[*key]["description"].is_string(), "{section}.{key}");
        }
    }

    /// A job with only the keys it must have, with `key: value` at the nesting `path`.
    fn job_with(path: &[&str], key: &str, value: &str) -> String {
        let mut remote = String::new();
        for required in ["host", "user"] {
            if path != ["remote"] || key != required {
                remote.push_str(&format!("  {required}: {required}\n"));
            }
        }
        let mut top = String::new();
        match path {
            [] => top.push_str(&format!("{key}: {value}\n")),
            ["remote"] => remote.push_str(&format!("  {key}: {value}\n")),
            ["remote", section] => remote.push_str(&format!("  {section}:\n    {key}: {value}\n")),
            [outer, section] => {
                top.push_str(&format!("{outer}:\n  {section}:\n    {key}: {value}\n"))
            }
            [section] => top.push_str(&format!("{section}:\n  {key}: {value}\n")),
            _ => unreachable!("{path:?}"),
        }
        let local = if path.is_empty() && key == "local" {
            ""
        } else {
            "local: /x\n"
        };
        let remote = if path.is_empty() && key == "remote" {
            String::new()
        } else {
            format!("remote:\n{remote}")
        };
        format!("{local}{remote}{top}")
    }

    /// The schema says yes exactly where the parser (serde, as `parse_job` calls it) says yes:
    /// for every key the schema knows, at every level, and every value in [`VALUES`]; and an
    /// unknown key is refused by both at every level. A key added to raw.rs reaches the
    /// schema by the derive; a form added to a visitor without its schema fails here.
    #[test]
    fn the_schema_accepts_exactly_what_the_parser_accepts() {
        let root = job_schema();
        let validator = validator();
        let top = properties(&root, &root);
        type Keys = Vec<(String, Value)>;
        let mut sections: Vec<(Vec<&str>, Keys)> = vec![(vec![], top.clone())];
        let section_of = |name: &str| {
            top.iter()
                .find(|(k, _)| k == name)
                .map(|(_, s)| properties(&root, s))
                .unwrap()
        };
        let remote = section_of("remote");
        let tls = remote
            .iter()
            .find(|(k, _)| k == "tls")
            .map(|(_, s)| properties(&root, s))
            .unwrap();
        sections.push((vec!["remote"], remote));
        sections.push((vec!["remote", "tls"], tls));
        sections.push((vec!["upload"], section_of("upload")));
        sections.push((vec!["retries"], section_of("retries")));
        let notify = section_of("notify");
        let webhook = notify
            .iter()
            .find(|(k, _)| k == "webhook")
            .map(|(_, s)| properties(&root, s))
            .unwrap();
        sections.push((vec!["notify"], notify));
        sections.push((vec!["notify", "webhook"], webhook));
        sections.push((vec!["expect"], section_of("expect")));
        let mut checked = 0;
        let mut mismatches = Vec::new();
        for (path, keys) in &sections {
            assert!(!keys.is_empty(), "{path:?}: no keys found in the schema");
            let mut keys: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
            keys.push("no_such_key");
            for key in keys {
                for value in VALUES {
                    let text = job_with(path, key, value);
                    let parser = serde_yaml::from_str::<RawJob>(&text);
                    let doc: Value = serde_yaml::from_str(&text).unwrap();
                    let schema_ok = validator.is_valid(&doc);
                    if parser.is_ok() != schema_ok {
                        mismatches.push(format!(
                            "{}{key}: {value}: parser {}, schema {}",
                            path.iter().map(|p| format!("{p}.")).collect::<String>(),
                            match &parser {
                                Ok(_) => "accepts".to_string(),
                                Err(e) => format!("refuses ({e})"),
                            },
                            if schema_ok { "accepts" } else { "refuses" }
                        ));
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 1000, "{checked}");
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    }
}
