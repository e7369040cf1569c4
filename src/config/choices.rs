//! The closed choices of a job file's `remote:` section (security, passive address, data mode,
//! listing): deserialized as written and used as they are, by the raw form of the section and
//! by its validation alike.

use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// AUTH TLS on the control connection, then PBSZ 0 / PROT P.
    Explicit,
    /// TLS from the first byte (default port 990).
    Implicit,
    /// Plain FTP: refused unless `allow_plaintext: true`.
    None,
}

/// `remote.passive_address`: where a passive data connection goes when the server answers PASV
/// (EPSV replies carry only a port: they always go to the control connection's address).
///
/// FTPS encrypts the control connection, so a NAT gateway's FTP helper cannot rewrite the
/// address in a PASV reply: a server behind NAT announces its private address. And a hostile
/// server could name a third host (FTP bounce). So, as curl does by default since 7.74, only
/// the reply's port is used unless the job says `server`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PassiveAddress {
    /// Always the control connection's peer, with the port of the PASV reply; its address is
    /// ignored (a substitution is logged once per run).
    #[default]
    Auto,
    /// The same as `auto` (kept as an accepted value: job files written when `auto` still
    /// trusted routable PASV addresses use it).
    Control,
    /// Always the address in PASV (servers whose data connections are served by another host).
    Server,
}

/// `remote.data_mode`: who opens the data connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DataMode {
    /// The client connects to the server (EPSV, PASV if refused).
    #[default]
    Passive,
    /// The server connects to the client (EPRT, PORT if refused), for servers whose firewall
    /// admits only the control port.
    Active,
}

/// `remote.listing`: how directories are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Listing {
    /// MLSD where FEAT offers it (exact UTC times), LIST otherwise.
    #[default]
    Auto,
    /// Always LIST: for servers whose MLSD is missing from FEAT, broken or slow.
    List,
}
