//! Signed notes and checkpoints in the formats transparency logs share
//! (c2sp.org/signed-note, c2sp.org/tlog-checkpoint, as Go's checksum database
//! and Sigstore use them), with Ed25519 keys in Go's `golang.org/x/mod/sumdb/note`
//! text encodings — so any of those tools can check a decision log's heads.
//!
//! A note is text ending in a newline, a blank line, then signature lines
//! `— <key name> <base64(key ID || signature)>`; the key ID is the first four
//! bytes of SHA-256(key name || 0x0A || 0x01 || public key).

use std::fmt;

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::merkle::Hash;

/// The signature type of Ed25519 note signatures.
pub const ED25519_TYPE: u8 = 0x01;
/// Largest note read, in bytes: a checkpoint with a few signatures is < 1 KiB.
pub const MAX_NOTE_BYTES: usize = 16 * 1024;
/// Most signature lines read from one note (the spec asks for at least 16).
const MAX_SIGNATURES: usize = 100;
/// What starts a signature line: an em dash and a space.
const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// Why a key, note or checkpoint is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NoteError(String);

pub(crate) fn invalid(what: impl Into<String>) -> NoteError {
    NoteError(what.into())
}

/// A key name: non-empty, no Unicode spaces, no `+`.
pub(crate) fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '+' || c.is_control()) {
        return Err(invalid(format!(
            "key name {name:?}: must be non-empty, without spaces or '+'"
        )));
    }
    Ok(())
}

/// The key ID of a key of signature type `kind`: SHA-256(name || 0x0A || kind || key)[:4].
pub(crate) fn key_id(name: &str, kind: u8, public: &[u8; 32]) -> u32 {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    context.update(name.as_bytes());
    context.update(&[b'\n', kind]);
    context.update(public);
    let digest = context.finish();
    let mut id = [0u8; 4];
    id.copy_from_slice(digest.as_ref().get(..4).unwrap_or(&[0; 4]));
    u32::from_be_bytes(id)
}

/// The public half: who may sign checkpoints of a log. Its text form is a
/// note verifier key, `<name>+<hex key ID>+<base64(0x01 || public key)>`.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    id: u32,
    public: [u8; 32],
}

impl VerifierKey {
    /// Parses a verifier key, checking that its ID is the one its name and key give.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let (name, id, public) = parse_verifier(text, ED25519_TYPE)?;
        Ok(Self { name, id, public })
    }

    /// The key's name, which is also the origin of the checkpoints it signs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks that `note` carries a valid signature by this key, and returns
    /// its text. A signature by this key that does not verify rejects the note.
    pub fn verify<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        let parsed = Note::parse(note)?;
        let mut verified = false;
        for signature in &parsed.signatures {
            if signature.name != self.name || signature.id != self.id {
                continue;
            }
            UnparsedPublicKey::new(&ED25519, &self.public)
                .verify(parsed.text.as_bytes(), &signature.bytes)
                .map_err(|_| invalid(format!("the signature by {self} does not verify")))?;
            verified = true;
        }
        if !verified {
            let by: Vec<String> = parsed
                .signatures
                .iter()
                .map(|s| format!("{}+{:08x}", s.name, s.id))
                .collect();
            return Err(invalid(format!(
                "not signed by {}+{:08x} (signed by {})",
                self.name,
                self.id,
                by.join(", ")
            )));
        }
        Ok(parsed.text)
    }
}

impl fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_key(&self.name, self.id, ED25519_TYPE, &self.public))
    }
}

impl fmt::Debug for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifierKey({self})")
    }
}

/// Parses a verifier key `NAME+KEYID+BASE64(kind || key)` of signature type
/// `kind`, checking that its ID is the one its name and key give.
pub(crate) fn parse_verifier(text: &str, kind: u8) -> Result<(String, u32, [u8; 32]), NoteError> {
    let text = text.trim();
    // Base64 may hold '+': only the first two separate.
    let parts: Vec<&str> = text.splitn(3, '+').collect();
    let [name, id, key] = parts.as_slice() else {
        return Err(invalid("not a verifier key (NAME+KEYID+BASE64KEY)"));
    };
    check_name(name)?;
    let id = parse_id(id)?;
    let public = ed25519_key(key, "public", kind)?;
    let expected = key_id(name, kind, &public);
    if expected != id {
        return Err(invalid(format!(
            "key ID {id:08x} is not the one of this name and key ({expected:08x})"
        )));
    }
    Ok(((*name).to_owned(), id, public))
}

/// Parses a signer key `PRIVATE+KEY+NAME+KEYID+BASE64(kind || seed)` of
/// signature type `kind`: its name, ID and seed (the ID is checked by the caller,
/// which derives the public key).
pub(crate) fn parse_signer(text: &str, kind: u8) -> Result<(String, u32, [u8; 32]), NoteError> {
    let parts: Vec<&str> = text.trim().splitn(5, '+').collect();
    let ["PRIVATE", "KEY", name, id, key] = parts.as_slice() else {
        return Err(invalid("not a signing key (PRIVATE+KEY+NAME+KEYID+BASE64KEY)"));
    };
    check_name(name)?;
    Ok((
        (*name).to_owned(),
        parse_id(id)?,
        ed25519_key(key, "private", kind)?,
    ))
}

/// `NAME+KEYID+BASE64(kind || key)`.
pub(crate) fn format_key(name: &str, id: u32, kind: u8, key: &[u8; 32]) -> String {
    let mut bytes = Vec::with_capacity(33);
    bytes.push(kind);
    bytes.extend_from_slice(key);
    format!("{name}+{id:08x}+{}", BASE64.encode(bytes))
}

/// A new Ed25519 key pair from `seed`, and its public key.
/// 32 random bytes for a new Ed25519 key.
pub(crate) fn random_seed() -> Result<[u8; 32], NoteError> {
    let mut seed = [0u8; 32];
    aws_lc_rs::rand::fill(&mut seed).map_err(|_| invalid("the system random generator failed"))?;
    Ok(seed)
}

pub(crate) fn ed25519_pair(seed: &[u8; 32]) -> Result<(Ed25519KeyPair, [u8; 32]), NoteError> {
    let pair =
        Ed25519KeyPair::from_seed_unchecked(seed).map_err(|e| invalid(format!("not an Ed25519 key: {e}")))?;
    let public = <[u8; 32]>::try_from(pair.public_key().as_ref())
        .map_err(|_| invalid("Ed25519 public key is not 32 bytes"))?;
    Ok((pair, public))
}

/// A signature line, `— NAME BASE64(key ID || bytes)` and its newline.
pub(crate) fn signature_line(name: &str, id: u32, bytes: &[&[u8]]) -> String {
    let mut blob = id.to_be_bytes().to_vec();
    for part in bytes {
        blob.extend_from_slice(part);
    }
    format!("{SIGNATURE_PREFIX}{name} {}\n", BASE64.encode(blob))
}

fn parse_id(text: &str) -> Result<u32, NoteError> {
    if text.len() != 8 {
        return Err(invalid(format!("key ID {text:?}: not 8 hex digits")));
    }
    u32::from_str_radix(text, 16).map_err(|_| invalid(format!("key ID {text:?}: not 8 hex digits")))
}

/// `kind` followed by 32 bytes, base64: an Ed25519 public key or seed.
fn ed25519_key(text: &str, what: &str, kind: u8) -> Result<[u8; 32], NoteError> {
    let bytes = BASE64
        .decode(text)
        .map_err(|_| invalid(format!("{what} key: not base64")))?;
    match bytes.split_first() {
        Some((&first, key)) if first == kind => {
            <[u8; 32]>::try_from(key).map_err(|_| invalid(format!("{what} key: {} bytes, not 32", key.len())))
        }
        Some((other, _)) => Err(invalid(format!(
            "{what} key: signature type {other:#04x}, not {kind:#04x} ({})",
            if kind == ED25519_TYPE {
                "an Ed25519 note key"
            } else {
                "an Ed25519 cosignature/v1 key"
            }
        ))),
        None => Err(invalid(format!("{what} key: empty"))),
    }
}

/// The private half, held by the log's writer. Its text form is a note signer
/// key, `PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || seed)>`.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    seed: [u8; 32],
    verifier: VerifierKey,
}

impl SigningKey {
    /// A new random key.
    pub fn generate(name: &str) -> Result<Self, NoteError> {
        Self::from_seed(name, random_seed()?)
    }

    fn from_seed(name: &str, seed: [u8; 32]) -> Result<Self, NoteError> {
        check_name(name)?;
        let (pair, public) = ed25519_pair(&seed)?;
        Ok(Self {
            pair,
            seed,
            verifier: VerifierKey {
                name: name.to_owned(),
                id: key_id(name, ED25519_TYPE, &public),
                public,
            },
        })
    }

    /// Parses a signer key.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let (name, id, seed) = parse_signer(text, ED25519_TYPE)?;
        let key = Self::from_seed(&name, seed)?;
        if key.verifier.id != id {
            return Err(invalid(format!(
                "key ID {id:08x} is not the one of this name and key ({:08x})",
                key.verifier.id
            )));
        }
        Ok(key)
    }

    /// The signer key's text form: a secret.
    pub fn to_secret_text(&self) -> String {
        format!(
            "PRIVATE+KEY+{}",
            format_key(&self.verifier.name, self.verifier.id, ED25519_TYPE, &self.seed)
        )
    }

    /// Its public half.
    pub fn verifier(&self) -> &VerifierKey {
        &self.verifier
    }

    /// `text` (a note text, ending in a newline) signed: the whole note.
    pub fn sign(&self, text: &str) -> String {
        let signature = self.pair.sign(text.as_bytes());
        format!(
            "{text}\n{}",
            signature_line(&self.verifier.name, self.verifier.id, &[signature.as_ref()])
        )
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key material.
        write!(f, "SigningKey({})", self.verifier)
    }
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The signer's key name.
    pub name: String,
    /// The key ID.
    pub id: u32,
    /// The signature proper.
    pub bytes: Vec<u8>,
}

/// A note split into its text and signatures, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note<'a> {
    /// The signed text, with its final newline.
    pub text: &'a str,
    /// Its signatures.
    pub signatures: Vec<Signature>,
}

impl<'a> Note<'a> {
    /// Splits a note at its last blank line and parses the signature lines.
    pub fn parse(note: &'a str) -> Result<Self, NoteError> {
        if note.len() > MAX_NOTE_BYTES {
            return Err(invalid(format!("note longer than {MAX_NOTE_BYTES} bytes")));
        }
        if note.chars().any(|c| c < ' ' && c != '\n') {
            return Err(invalid("note holds a control character"));
        }
        let Some(split) = note.rfind("\n\n") else {
            return Err(invalid("no blank line before the signatures"));
        };
        let text = note.get(..=split).unwrap_or_default();
        let lines = note.get(split + 2..).unwrap_or_default();
        let Some(lines) = lines.strip_suffix('\n') else {
            return Err(invalid("the last signature line does not end in a newline"));
        };
        let mut signatures = Vec::new();
        for line in lines.split('\n') {
            if signatures.len() == MAX_SIGNATURES {
                return Err(invalid(format!("more than {MAX_SIGNATURES} signatures")));
            }
            let Some((name, encoded)) = line
                .strip_prefix(SIGNATURE_PREFIX)
                .and_then(|rest| rest.split_once(' '))
            else {
                return Err(invalid(format!(
                    "{line:?}: not a signature line (— NAME SIGNATURE)"
                )));
            };
            check_name(name)?;
            let bytes = BASE64
                .decode(encoded)
                .map_err(|_| invalid(format!("signature by {name}: not base64")))?;
            let Some((id, signature)) = bytes.split_first_chunk::<4>().filter(|(_, s)| !s.is_empty()) else {
                return Err(invalid(format!("signature by {name}: too short")));
            };
            signatures.push(Signature {
                name: name.to_owned(),
                id: u32::from_be_bytes(*id),
                bytes: signature.to_vec(),
            });
        }
        Ok(Self { text, signatures })
    }
}

/// A checkpoint's text: the log's origin, its size and its Merkle root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Which log (the signing key's name).
    pub origin: String,
    /// Records covered.
    pub size: u64,
    /// The Merkle tree's root over them.
    pub root: Hash,
}

impl Checkpoint {
    /// The note text, `origin\nsize\nbase64(root)\n`.
    pub fn text(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, BASE64.encode(self.root))
    }

    /// Parses a note text; extension lines are accepted and ignored.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let mut lines = text
            .strip_suffix('\n')
            .ok_or_else(|| invalid("checkpoint text does not end in a newline"))?
            .split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| invalid("no origin line"))?;
        let size = lines.next().ok_or_else(|| invalid("no tree size line"))?;
        let size = size
            .parse::<u64>()
            .ok()
            .filter(|n| n.to_string() == size)
            .ok_or_else(|| {
                invalid(format!(
                    "tree size {size:?}: not a decimal without leading zeroes"
                ))
            })?;
        let root = lines.next().ok_or_else(|| invalid("no root hash line"))?;
        let root = BASE64
            .decode(root)
            .ok()
            .and_then(|bytes| <Hash>::try_from(bytes).ok())
            .ok_or_else(|| invalid(format!("root hash {root:?}: not 32 bytes of base64")))?;
        if lines.any(str::is_empty) {
            return Err(invalid("an empty extension line"));
        }
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    /// Go's golang.org/x/mod/sumdb/note test key and its signed note
    /// ("If you think cryptography is the answer…"), which sumdb's tools accept.
    const GO_SIGNER: &str = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const GO_VERIFIER: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const GO_NOTE: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    #[test]
    fn keys_and_notes_interoperate_with_gos_note_package() {
        let signer = SigningKey::parse(GO_SIGNER).unwrap();
        assert_eq!(signer.verifier().to_string(), GO_VERIFIER);
        assert_eq!(signer.to_secret_text(), GO_SIGNER);
        let text = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
        // Ed25519 is deterministic: the same bytes as Go's.
        assert_eq!(signer.sign(text), GO_NOTE);
        let verifier = VerifierKey::parse(GO_VERIFIER).unwrap();
        assert_eq!(verifier.verify(GO_NOTE).unwrap(), text);
    }

    #[test]
    fn a_note_verifies_only_with_its_key_and_untouched() {
        let key = SigningKey::generate("zt.example/log").unwrap();
        let checkpoint = Checkpoint {
            origin: "zt.example/log".into(),
            size: 7,
            root: [9; 32],
        };
        let note = key.sign(&checkpoint.text());
        let text = key.verifier().verify(&note).unwrap();
        assert_eq!(Checkpoint::parse(text).unwrap(), checkpoint);

        let tampered = note.replacen("\n7\n", "\n8\n", 1);
        let e = key.verifier().verify(&tampered).unwrap_err().to_string();
        assert!(e.contains("does not verify"), "{e}");
        let other = SigningKey::generate("zt.example/log").unwrap();
        let e = other.verifier().verify(&note).unwrap_err().to_string();
        assert!(e.starts_with("not signed by zt.example/log+"), "{e}");
        // A second signature (a witness) does not disturb the first.
        let cosigned = format!("{note}{}", other.sign(text).rsplit_once("\n\n").unwrap().1);
        assert_eq!(key.verifier().verify(&cosigned).unwrap(), text);
        assert_eq!(other.verifier().verify(&cosigned).unwrap(), text);
    }

    #[test]
    fn malformed_keys_notes_and_checkpoints_are_refused() {
        assert!(VerifierKey::parse("name+00000000+AQ==").is_err());
        let good = SigningKey::generate("a/b").unwrap().verifier().to_string();
        let wrong_id = format!("a/b+00000000+{}", good.splitn(3, '+').nth(2).unwrap());
        assert!(
            VerifierKey::parse(&wrong_id)
                .unwrap_err()
                .to_string()
                .contains("is not the one")
        );
        assert!(SigningKey::generate("has space").is_err());
        assert!(Note::parse("text\n").is_err());
        assert!(Note::parse("text\n\n- a AAAA\n").is_err());
        assert!(Note::parse("text\n\n\u{2014} a AAAAAA==").is_err());
        assert!(Checkpoint::parse("o\n01\nAAAA\n").is_err());
        assert!(Checkpoint::parse("o\n1\nAAAA\n").is_err());
        assert!(Checkpoint::parse(&format!("o\n1\n{}\n\n", BASE64.encode([0u8; 32]))).is_err());
        assert_eq!(
            Checkpoint::parse(&format!("o\n0\n{}\next\n", BASE64.encode([0u8; 32])))
                .unwrap()
                .size,
            0
        );
    }
}
