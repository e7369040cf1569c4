//! Digests a server computes of its own files (HASH, XSHA256, XSHA1, XMD5), as evidence for
//! adopting a file the ledger does not know (see [`crate::model::plan::adoption`]): which
//! command a server offers, reading its reply, and the local digest of the same algorithm,
//! computed in the same read as the file's BLAKE3.
//!
//! MD5 and SHA-1 are weak against someone forging a collision, but not against chance: a file
//! that two tools copied is not crafted, and a hostile server could lie about any digest. They
//! are only ever evidence that a copy is the same, never a proof that a resumed transfer is
//! whole (that is SHA-256's, see [`crate::remote::features::Sha256Command`]).

use std::collections::HashMap;

use sha1::Digest as _;

/// An algorithm both a server and ferrysync compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    Sha256,
    Sha1,
    Md5,
}

impl DigestAlgorithm {
    /// The name HASH and OPTS HASH use (draft-bryan-ftpext-hash).
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "SHA-256",
            DigestAlgorithm::Sha1 => "SHA-1",
            DigestAlgorithm::Md5 => "MD5",
        }
    }

    /// The digest's length in bytes.
    fn len(self) -> usize {
        match self {
            DigestAlgorithm::Sha256 => 32,
            DigestAlgorithm::Sha1 => 20,
            DigestAlgorithm::Md5 => 16,
        }
    }
}

/// How to ask a server for a file's digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestCommand {
    /// `OPTS HASH <algorithm>`, then `HASH path` (213).
    Hash(DigestAlgorithm),
    /// `XSHA256 path`, `XSHA1 path`, `XMD5 path` (250; ProFTPD mod_digest, appliances).
    X(DigestAlgorithm),
}

impl DigestCommand {
    pub fn algorithm(self) -> DigestAlgorithm {
        match self {
            DigestCommand::Hash(a) | DigestCommand::X(a) => a,
        }
    }

    /// The command's name, for errors.
    pub fn name(self) -> &'static str {
        match self {
            DigestCommand::Hash(_) => "HASH",
            DigestCommand::X(DigestAlgorithm::Sha256) => "XSHA256",
            DigestCommand::X(DigestAlgorithm::Sha1) => "XSHA1",
            DigestCommand::X(DigestAlgorithm::Md5) => "XMD5",
        }
    }

    /// The best command FEAT offers: the strongest algorithm, HASH before its X command.
    pub(super) fn from_feat(f: &HashMap<String, Option<String>>) -> Option<DigestCommand> {
        let get = |k: &str| {
            f.iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone().unwrap_or_default().to_ascii_uppercase())
        };
        let hash_algs: Vec<String> = get("HASH")
            .map(|algs| {
                algs.split(';')
                    .map(|a| a.trim().trim_end_matches('*').to_string())
                    .collect()
            })
            .unwrap_or_default();
        [
            (DigestAlgorithm::Sha256, "XSHA256"),
            (DigestAlgorithm::Sha1, "XSHA1"),
            (DigestAlgorithm::Md5, "XMD5"),
        ]
        .into_iter()
        .find_map(|(alg, x)| {
            if hash_algs.iter().any(|a| a == alg.name()) {
                Some(DigestCommand::Hash(alg))
            } else {
                get(x).map(|_| DigestCommand::X(alg))
            }
        })
    }
}

/// The digest in a reply (`213 SHA-1 0-99 <hex> name`, `250 <hex>`): its first word of exactly
/// the algorithm's length in hex digits.
pub(super) fn digest_in_reply(reply: &str, algorithm: DigestAlgorithm) -> Option<Vec<u8>> {
    let hex_len = algorithm.len() * 2;
    let word = reply
        .split_whitespace()
        .find(|w| w.len() == hex_len && w.chars().all(|c| c.is_ascii_hexdigit()))?;
    (0..algorithm.len())
        .map(|i| u8::from_str_radix(&word[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// BLAKE3 and, where a server can be asked for one, a digest of another algorithm, computed
/// over the same bytes in one pass.
pub struct LocalDigest {
    blake3: blake3::Hasher,
    other: Option<Other>,
}

enum Other {
    Sha256(sha2::Sha256),
    Sha1(sha1::Sha1),
    Md5(md5::Md5),
}

impl LocalDigest {
    pub fn new(algorithm: Option<DigestAlgorithm>) -> LocalDigest {
        LocalDigest {
            blake3: blake3::Hasher::new(),
            other: algorithm.map(|a| match a {
                DigestAlgorithm::Sha256 => Other::Sha256(sha2::Sha256::new()),
                DigestAlgorithm::Sha1 => Other::Sha1(sha1::Sha1::new()),
                DigestAlgorithm::Md5 => Other::Md5(md5::Md5::new()),
            }),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.blake3.update(bytes);
        match &mut self.other {
            Some(Other::Sha256(h)) => h.update(bytes),
            Some(Other::Sha1(h)) => h.update(bytes),
            Some(Other::Md5(h)) => h.update(bytes),
            None => {}
        }
    }

    /// The BLAKE3, and the other digest if one was asked for.
    pub fn finalize(self) -> (blake3::Hash, Option<Vec<u8>>) {
        let other = self.other.map(|o| match o {
            Other::Sha256(h) => h.finalize().to_vec(),
            Other::Sha1(h) => h.finalize().to_vec(),
            Other::Md5(h) => h.finalize().to_vec(),
        });
        (self.blake3.finalize(), other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feat(pairs: &[(&str, Option<&str>)]) -> HashMap<String, Option<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect()
    }

    #[test]
    fn the_strongest_offered_digest_is_chosen() {
        let pick = |pairs: &[(&str, Option<&str>)]| DigestCommand::from_feat(&feat(pairs));
        // ProFTPD mod_digest with `DigestAlgorithms all`.
        assert_eq!(
            pick(&[
                ("HASH", Some("CRC32;MD5;SHA-1*;SHA-256;SHA-512")),
                ("XMD5", None),
                ("XSHA1", None),
                ("XSHA256", None),
            ]),
            Some(DigestCommand::Hash(DigestAlgorithm::Sha256))
        );
        assert_eq!(
            pick(&[("XSHA256", None), ("HASH", Some("MD5*"))]),
            Some(DigestCommand::X(DigestAlgorithm::Sha256))
        );
        assert_eq!(
            pick(&[("hash", Some("sha-1*;md5"))]),
            Some(DigestCommand::Hash(DigestAlgorithm::Sha1))
        );
        assert_eq!(
            pick(&[("XMD5", None), ("MLST", Some("size*;"))]),
            Some(DigestCommand::X(DigestAlgorithm::Md5))
        );
        assert_eq!(pick(&[("HASH", Some("CRC32*"))]), None);
        assert_eq!(pick(&[("MDTM", None)]), None);
    }

    #[test]
    fn replies_and_local_digests_agree_on_known_values() {
        let mut d = LocalDigest::new(Some(DigestAlgorithm::Md5));
        d.update(b"ab");
        d.update(b"c");
        let (b3, md5) = d.finalize();
        assert_eq!(b3, blake3::hash(b"abc"));
        let md5_hex = "900150983cd24fb0d6963f7d28e17f72";
        assert_eq!(
            md5,
            digest_in_reply(&format!("250 {md5_hex}"), DigestAlgorithm::Md5)
        );
        let sha1_hex = "a9993e364706816aba3e25717850c26c9cd0d89d";
        let mut d = LocalDigest::new(Some(DigestAlgorithm::Sha1));
        d.update(b"abc");
        assert_eq!(
            d.finalize().1,
            digest_in_reply(
                &format!("213 SHA-1 0-3 {sha1_hex} a b.txt"),
                DigestAlgorithm::Sha1
            )
        );
        let sha256_hex = "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD";
        let mut d = LocalDigest::new(Some(DigestAlgorithm::Sha256));
        d.update(b"abc");
        assert_eq!(
            d.finalize().1,
            digest_in_reply(
                &format!("213 SHA-256 0-3 {sha256_hex} x"),
                DigestAlgorithm::Sha256
            )
        );
        // A word of another algorithm's length is not taken.
        assert_eq!(
            digest_in_reply(&format!("250 {md5_hex}"), DigestAlgorithm::Sha1),
            None
        );
        assert_eq!(LocalDigest::new(None).finalize().1, None);
    }
}
