//! The closed choices of a job file's `remote:` section (security, passive address, data mode,
//! listing): deserialized as written and used as they are, by the raw form of the section and
//! by its validation alike.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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
/// address in a PASV reply: a server behind NAT announces its private address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PassiveAddress {
    /// The server's address, unless it is private or unroutable and differs from the control
    /// connection's peer; then the control connection's peer.
    #[default]
    Auto,
    /// Always the control connection's peer, ignoring the address in PASV.
    Control,
    /// Always the address in PASV (servers whose data connections come from another host).
    Server,
}

/// `remote.data_mode`: who opens the data connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Listing {
    /// MLSD where FEAT offers it (exact UTC times), LIST otherwise.
    #[default]
    Auto,
    /// Always LIST: for servers whose MLSD is missing from FEAT, broken or slow.
    List,
}
