//! What a server can do, as far as ferrysync cares: the features its FEAT reply offers (MLSD,
//! MFMT, MDTM, SIZE, UTF8, a SHA-256 command), and the listing limit some servers (known by
//! their greeting) cut directory listings short at.

use crate::remote::digest::DigestCommand;
use crate::remote::error::FtpsError;

/// What the server said it can do in FEAT.
#[derive(Debug, Clone, Default)]
pub struct Features {
    pub mlsd: bool,
    pub mfmt: bool,
    pub mdtm: bool,
    pub size: bool,
    pub utf8: bool,
    /// How to ask the server for the SHA-256 of a file, if it can tell.
    pub sha256: Option<Sha256Command>,
    /// How to ask the server for a digest of a file, of the strongest algorithm it offers
    /// (SHA-256, SHA-1 or MD5): evidence for adopting files the ledger does not know.
    pub digest: Option<DigestCommand>,
    /// Every feature line of the FEAT reply (`NAME` or `NAME params`), sorted: for
    /// `ferrysync test`.
    pub offered: Vec<String>,
}

/// The server-side hash commands ferrysync can check a file with (SHA-256 only: BLAKE3 is
/// not offered by servers, and MD5 and CRC32 are too weak to prove a resumed file whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sha256Command {
    /// `HASH` (draft-bryan-ftpext-hash) with SHA-256 among its algorithms.
    Hash,
    /// `XSHA256 path` (ProFTPD mod_digest, some appliances).
    XSha256,
}

impl Features {
    /// Reads FEAT's answer: feature name -> optional parameters.
    pub(super) fn from_feat(f: &std::collections::HashMap<String, Option<String>>) -> Features {
        let get = |k: &str| {
            f.iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone().unwrap_or_default())
        };
        let sha256 =
            if get("HASH").is_some_and(|algs| algs.to_ascii_uppercase().contains("SHA-256")) {
                Some(Sha256Command::Hash)
            } else if get("XSHA256").is_some() {
                Some(Sha256Command::XSha256)
            } else {
                None
            };
        Features {
            mlsd: get("MLSD").is_some() || get("MLST").is_some(),
            mfmt: get("MFMT").is_some(),
            mdtm: get("MDTM").is_some(),
            size: get("SIZE").is_some(),
            utf8: get("UTF8").is_some(),
            sha256,
            digest: DigestCommand::from_feat(f),
            offered: {
                let mut lines: Vec<String> = f
                    .iter()
                    .map(|(k, v)| match v {
                        Some(v) if !v.is_empty() => format!("{k} {v}"),
                        _ => k.clone(),
                    })
                    .collect();
                lines.sort();
                lines
            },
        }
    }
}

/// The first 64-hex-digit word of a hash reply (`213 SHA-256 0-99 <hex> name`, `250 <hex>`).
pub(super) fn sha256_in_reply(reply: &str) -> Option<[u8; 32]> {
    let word = reply
        .split_whitespace()
        .find(|w| w.len() == 64 && w.chars().all(|c| c.is_ascii_hexdigit()))?;
    crate::config::Fingerprint::parse(word).ok().map(|f| f.0)
}

/// Pure-FTPd ends a listing after `LimitRecursion`'s file count, 10000 by default, and says so
/// only in the final reply of the transfer (`226 Output truncated to 10000 matches`), which
/// suppaftp does not hand back. It is known by its greeting (`Welcome to Pure-FTPd`).
const PUREFTPD_DEFAULT_LIST_LIMIT: usize = 10_000;

/// The number of entries (lines, `.` and `..` included) at which this server, known by its
/// greeting, cuts a directory listing short without an error; `None` if it is not known to.
pub(super) fn listing_limit(greeting: &str) -> Option<usize> {
    greeting
        .contains("Pure-FTPd")
        .then_some(PUREFTPD_DEFAULT_LIST_LIMIT)
}

/// Refuses a listing that has reached the server's limit: it is probably cut short, and the
/// missing entries would look deleted to the plan (a pull mirror would delete the local
/// copies). A directory of exactly the limit's size is refused too: the listing cannot tell.
pub(super) fn check_listing_complete(
    server: &str,
    command: &'static str,
    dir: &str,
    lines: usize,
    limit: Option<usize>,
) -> Result<(), FtpsError> {
    match limit {
        Some(limit) if lines >= limit => Err(FtpsError::Setup {
            server: server.to_string(),
            reason: format!(
                "{command} {dir}: the listing stopped at {lines} entries, the limit at which \
                 Pure-FTPd cuts listings short (LimitRecursion, 10000 by default), so it is \
                 probably incomplete and nothing was changed; ask the server's administrator to \
                 raise LimitRecursion above the number of entries in the directory, or keep \
                 fewer than {limit} entries in one directory"
            ),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_features_and_replies() {
        let feat = |pairs: &[(&str, Option<&str>)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
                .collect::<std::collections::HashMap<_, _>>()
        };
        let f = Features::from_feat(&feat(&[
            ("HASH", Some("SHA-1;SHA-256*;MD5")),
            ("MLST", Some("type*;size*;")),
        ]));
        assert_eq!(f.sha256, Some(Sha256Command::Hash));
        assert!(f.mlsd);
        let f = Features::from_feat(&feat(&[("XSHA256", None), ("HASH", Some("MD5*"))]));
        assert_eq!(f.sha256, Some(Sha256Command::XSha256));
        assert_eq!(Features::from_feat(&feat(&[("XMD5", None)])).sha256, None);
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(
            sha256_in_reply(&format!("213 SHA-256 0-3 {hex} a b.txt")).unwrap()[0],
            0xba
        );
        assert_eq!(sha256_in_reply(&format!("250 {hex}")).unwrap()[31], 0xad);
        assert!(sha256_in_reply("213 SHA-256 0-3 zz a.txt").is_none());
    }

    #[test]
    fn a_pureftpd_listing_at_its_limit_is_refused() {
        let greeting = "220---------- Welcome to Pure-FTPd [privsep] [TLS] ----------\n220-You are user number 1 of 50 allowed.";
        let limit = listing_limit(greeting);
        assert_eq!(limit, Some(10_000));
        assert_eq!(listing_limit("220 (vsFTPd 3.0.3)"), None);
        assert_eq!(
            listing_limit("220 ProFTPD Server (ferrysync test ProFTPD)"),
            None
        );
        assert!(check_listing_complete("s", "MLSD", "/d", 9_999, limit).is_ok());
        let err = check_listing_complete("s", "MLSD", "/d", 10_000, limit).unwrap_err();
        assert!(!err.is_transient());
        let text = err.to_string();
        assert!(
            text.contains("MLSD /d") && text.contains("LimitRecursion"),
            "{text}"
        );
        assert!(check_listing_complete("s", "LIST", "/d", 50_000, None).is_ok());
    }

    mod fuzz {
        //! Fuzz targets (proptest): hash replies, FEAT lines and greetings come from the server.

        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #![proptest_config(crate::fuzz_config(1024))]

            #[test]
            fn any_text_as_a_hash_reply(reply in any::<String>()) {
                if let Some(h) = sha256_in_reply(&reply) {
                    // Only a 64-digit hex word of the reply itself is ever taken as the hash.
                    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
                    prop_assert!(reply.to_ascii_lowercase().contains(&hex), "{reply:?}");
                }
            }

            #[test]
            fn hash_replies_with_a_digest_among_hostile_words(
                before in "[ -~]{0,40}", digest in proptest::array::uniform32(any::<u8>()),
                upper in any::<bool>(), after in any::<String>(),
            ) {
                let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                let hex = if upper { hex.to_ascii_uppercase() } else { hex };
                let reply = format!("213 {before} {hex} {after}");
                // The first 64-digit word wins; `before` may hold none (it is too short).
                prop_assert_eq!(sha256_in_reply(&reply), Some(digest));
            }

            #[test]
            fn any_feat_reply_and_greeting(
                feat in proptest::collection::hash_map(any::<String>(), any::<Option<String>>(), 0..12),
                greeting in any::<String>(), lines in any::<usize>(),
            ) {
                let _ = Features::from_feat(&feat);
                let limit = listing_limit(&greeting);
                let _ = check_listing_complete("s", "LIST", "/d", lines, limit);
            }
        }
    }
}
