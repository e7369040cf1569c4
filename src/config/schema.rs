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

use super::raw::{PatternList, RawJob, RawMaxDelete, RawPorts, RawRetries, RawWatch};

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
    schema.insert(
        "description".into(),
        "One job per file, jobs/NAME.yaml; the file name is the job's name. See the README's \"Job files\"."
            .into(),
    );
    schema.to_value()
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
        let mut sections: Vec<(Vec<&str>, Vec<(String, Value)>)> = vec![(vec![], top.clone())];
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
