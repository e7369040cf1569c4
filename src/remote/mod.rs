//! The FTPS client: a logged-in [`Session`] with every command the sync needs (each with a
//! timeout and an error naming the server, the command, the path and the reply), the TLS set-up
//! and verification behind it, the passive and active data connections, and the parsers of
//! LIST and MLSD lines. It knows nothing of jobs' runs, plans or the ledger.
//!
//! May import: `model`, `config`.

mod connect;
pub(crate) mod data_channel;
pub(crate) mod digest;
pub(crate) mod error;
mod features;
pub(crate) mod listing;
mod listing_read;
mod passive;
mod pipelined;
pub(crate) mod probe;
pub(crate) mod session;
pub(crate) mod tls;

pub use connect::FtpStream;
pub use error::FtpsError;
pub use probe::{list_folder, path_within, probe, DataSummary, FolderListing, Probe, RemoteEntry};
pub use session::Session;
pub use tls::{fingerprint, CertificateDates, TlsContext};
