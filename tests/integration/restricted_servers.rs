//! Servers that refuse what ferrysync would normally do: a write-only drop folder (no rename,
//! no SIZE, no RETR) and a server that allows only two connections per client.

use crate::harness::{populate, Node, Sandbox, Server};

/// A write-only drop folder refuses RNFR/RNTO, SIZE and RETR: the default upload fails with
/// the server's reply and leaves no file under its final name; with `upload.temp_name: false`
/// and `upload.verify: none` the files arrive, with a warning that says what is given up.
#[test]
fn a_write_only_drop_folder_needs_and_accepts_the_quirk_options() {
    let Some(server) = Server::vsftpd_drop_folder() else {
        return;
    };
    let s = Sandbox::new(&server, "drop");
    populate(&s.local, 10);
    s.job("strict", "");
    s.sync("strict").expect_code(1).expect_output("550");
    let finals: Vec<String> = s
        .remote_tree()
        .into_iter()
        .filter(|(k, n)| matches!(n, Node::File(..)) && !k.ends_with(".ferrysync-part"))
        .map(|(k, _)| k)
        .collect();
    assert!(
        finals.is_empty(),
        "files under their final names: {finals:?}"
    );

    let quirks = Sandbox::new(&server, "drop-ok");
    populate(&quirks.local, 10);
    quirks.job("j", "upload:\n  temp_name: false\n  verify: none\n");
    quirks
        .sync("j")
        .expect_code(0)
        .expect_output("upload.temp_name: false");
    assert_eq!(quirks.remote_tree(), quirks.local_tree());
}

/// A server that allows two connections per client answers the third and fourth with 421:
/// the run goes on with two connections instead of failing.
#[test]
fn too_many_connections_lowers_the_parallelism() {
    let Some(server) = Server::vsftpd_limited() else {
        return;
    };
    let s = Sandbox::new(&server, "limited");
    populate(&s.local, 60);
    s.job("j", "transfers: 4\n");
    s.sync("j")
        .expect_code(0)
        .expect_output("going on with fewer");
    assert_eq!(s.remote_tree(), s.local_tree());
}
