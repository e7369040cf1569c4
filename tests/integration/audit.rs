//! The per-file audit record (README "Commands": `history --files`, `history --run`, `audit
//! verify`, `audit export`): a push and a pull record exactly the files they moved, with the
//! BLAKE3 of their content and the server's reply, and an edited row breaks the chain.

use serde_json::Value;

use crate::harness::{Sandbox, Server};

fn hex(content: &[u8]) -> String {
    blake3::hash(content).to_hex().to_string()
}

/// (action, path, blake3) of each file in a `files` array, sorted.
fn files_of(files: &Value) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = files
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["action"].as_str().unwrap().to_string(),
                f["path"].as_str().unwrap().to_string(),
                f["blake3"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn row(action: &str, path: &str, content: &[u8]) -> (String, String, String) {
    (action.to_string(), path.to_string(), hex(content))
}

/// The audit record of a push and a pull, through every command that shows it (run against
/// every server by `against_servers!` in scenarios.rs).
pub fn push_and_pull_are_recorded_file_by_file(server: &Server) {
    let s = Sandbox::new(server, "audit-push");
    let (a, b, c) = (&b"alpha,1\n"[..], &b"beta\x00\xff"[..], &b"gamma"[..]);
    s.write_local("a.csv", a);
    s.write_local("d/b.bin", b);
    s.write_local("d/e/c.txt", c);
    s.job("out", "direction: push\nmode: mirror\n");

    // `sync -v` names each file as it completes.
    let push = s.ferrysync(&["-v", "sync", "out"]);
    push.expect_code(0);
    for path in ["a.csv", "d/b.bin", "d/e/c.txt"] {
        assert!(
            push.stderr.contains(&format!("path={path}"))
                && push.stderr.contains(&format!(
                    "blake3={}",
                    hex(if path == "a.csv" {
                        a
                    } else if path == "d/b.bin" {
                        b
                    } else {
                        c
                    })
                )),
            "sync -v does not list {path}:\n{}",
            push.text()
        );
    }
    assert!(push.stderr.contains("uploaded"), "{}", push.text());

    // A delete in a mirror run is recorded with what was deleted.
    std::fs::remove_file(s.local.join("d/e/c.txt")).unwrap();
    s.sync("out").expect_code(0);

    let hist = s.ferrysync(&["history", "out", "--files", "--json"]);
    hist.expect_code(0);
    let runs: Value = serde_json::from_str(&hist.stdout).unwrap();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2, "{}", hist.stdout);
    // Newest first: the delete, then the first push.
    assert_eq!(
        files_of(&runs[0]["files"]),
        [row("deleted", "d/e/c.txt", c)],
        "{}",
        hist.stdout
    );
    assert_eq!(
        files_of(&runs[1]["files"]),
        [
            row("uploaded", "a.csv", a),
            row("uploaded", "d/b.bin", b),
            row("uploaded", "d/e/c.txt", c)
        ],
        "{}",
        hist.stdout
    );
    // The run's documented fields are all still there, and each file has its own.
    for key in ["id", "outcome", "files_up", "failures", "files"] {
        assert!(
            runs[1].get(key).is_some(),
            "history --files --json lacks {key}"
        );
    }
    for f in runs[1]["files"].as_array().unwrap() {
        for key in [
            "seq",
            "run_id",
            "job",
            "path",
            "action",
            "bytes",
            "blake3",
            "server_reply",
            "at",
            "prev",
            "hash",
        ] {
            assert!(
                f.get(key).is_some(),
                "a file of history --files lacks {key}"
            );
        }
        assert_eq!(f["run_id"], runs[1]["id"]);
        let reply = f["server_reply"].as_str().unwrap_or("");
        assert!(reply.starts_with("25"), "the RNTO reply is not kept: {f}");
        eprintln!("{}: RNTO reply recorded: `{reply}`", server.port);
    }
    let deleted = &runs[0]["files"][0];
    eprintln!(
        "{}: DELE reply recorded: {}",
        server.port, deleted["server_reply"]
    );
    assert_eq!(deleted["bytes"], c.len());
    assert!(
        deleted["server_reply"]
            .as_str()
            .unwrap_or("")
            .starts_with("25"),
        "the DELE reply is not kept: {deleted}"
    );

    // `--run N`: one run, its files.
    let first = runs[1]["id"].as_i64().unwrap().to_string();
    let one = s.ferrysync(&["history", "out", "--run", &first, "--json"]);
    one.expect_code(0);
    let one: Value = serde_json::from_str(&one.stdout).unwrap();
    assert_eq!(one["id"], runs[1]["id"]);
    assert_eq!(files_of(&one["files"]), files_of(&runs[1]["files"]));
    let text = s.ferrysync(&["history", "out", "--run", &first]);
    text.expect_code(0)
        .expect_output("d/b.bin")
        .expect_output(&hex(b))
        .expect_output("uploaded");
    s.ferrysync(&["history", "out", "--run", "999999"])
        .expect_code(2);

    // The pull of the same remote folder records its downloads.
    let p = Sandbox::sharing_remote_of(&s, "audit-pull");
    p.job("in", "direction: pull\n");
    p.sync("in").expect_code(0);
    let pulled = p.ferrysync(&["history", "in", "--files", "--json"]);
    let pulled: Value = serde_json::from_str(&pulled.stdout).unwrap();
    assert_eq!(
        files_of(&pulled[0]["files"]),
        [
            row("downloaded", "a.csv", a),
            row("downloaded", "d/b.bin", b)
        ]
    );

    // The export: CSV with a header, and JSON lines, the same rows.
    let csv = s.ferrysync(&["audit", "export", "--format", "csv"]);
    csv.expect_code(0);
    let lines: Vec<&str> = csv.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "seq,run_id,job,path,action,bytes,blake3,server_reply,at,prev,hash"
    );
    assert_eq!(lines.len(), 5, "{}", csv.stdout);
    let uploaded_b = format!(",out,d/b.bin,uploaded,{},{},", b.len(), hex(b));
    assert_eq!(
        lines.iter().filter(|l| l.contains(&uploaded_b)).count(),
        1,
        "{}",
        csv.stdout
    );
    let jsonl = s.ferrysync(&["audit", "export", "--job", "out", "--format", "jsonl"]);
    jsonl.expect_code(0);
    let exported: Vec<Value> = jsonl
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut all = files_of(&runs[1]["files"]);
    all.extend(files_of(&runs[0]["files"]));
    assert_eq!(files_of(&Value::Array(exported)), {
        all.sort();
        all
    });
    let none = s.ferrysync(&[
        "audit",
        "export",
        "--since",
        "2999-01-01",
        "--format",
        "jsonl",
    ]);
    none.expect_code(0);
    assert_eq!(none.stdout, "");

    // Verify: intact, then an edited row is found (exit 1).
    let ok = s.ferrysync(&["audit", "verify"]);
    ok.expect_code(0).expect_output("out: intact; 4 rows");
    let conn = rusqlite::Connection::open(&s.state).unwrap();
    conn.execute(
        "UPDATE audit SET blake3 = ?1 WHERE path = 'd/b.bin'",
        [hex(b"something else")],
    )
    .unwrap();
    drop(conn);
    let broken = s.ferrysync(&["audit", "verify", "--job", "out"]);
    broken.expect_code(1).expect_output("BROKEN: row");
    assert!(broken.stdout.contains("was edited"), "{}", broken.text());
    let intact = p.ferrysync(&["audit", "verify"]);
    intact.expect_code(0).expect_output("in: intact; 2 rows");

    // The newest row cut off: the chain alone cannot tell, a head noted earlier can.
    let head = intact
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("in: ").and_then(|l| l.split("head ").nth(1)))
        .unwrap()
        .to_string();
    p.ferrysync(&["audit", "verify", "--job", "in", "--head", &head])
        .expect_code(0)
        .expect_output("is in the chain");
    let conn = rusqlite::Connection::open(&p.state).unwrap();
    conn.execute(
        "DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)",
        [],
    )
    .unwrap();
    drop(conn);
    p.ferrysync(&["audit", "verify"])
        .expect_code(0)
        .expect_output("in: intact; 1 rows");
    p.ferrysync(&["audit", "verify", "--job", "in", "--head", &head])
        .expect_code(1)
        .expect_output("no longer in the chain");
}

#[test]
fn history_of_an_unknown_job_exits_2_naming_the_jobs() {
    let server = Server::loopback();
    let s = Sandbox::new(&server, "nosuch");
    s.write_local("a", b"a");
    s.job("real", "");
    s.job("never", "");
    // A job with a file and no runs yet: an empty history, as before.
    s.ferrysync(&["history", "never", "--json"]).expect_code(0);
    s.sync("real").expect_code(0);
    s.ferrysync(&["history", "nosuch"])
        .expect_code(2)
        .expect_output("no job named `nosuch`")
        .expect_output("the jobs are: never, real");
    s.ferrysync(&["history", "real"])
        .expect_code(0)
        .expect_output("RUN");
}
