//! Cosignatures of checkpoints by a witness (c2sp.org/tlog-cosignature,
//! `cosignature/v1` with Ed25519): zt server's statement that, at a time, the
//! checkpoint was the largest it had seen of a log and consistent with the
//! records shipped to it.
//!
//! A cosignature is one more signature line on the checkpoint's note, by a key
//! of signature type 0x04: `— <name> base64(key ID || u64 time || Ed25519
//! signature)`, the signature over `cosignature/v1\ntime <time>\n` followed by
//! the checkpoint's text. Its keys use the note key encodings of [`crate::note`]
//! with type 0x04.

use std::fmt;

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, UnparsedPublicKey};

use crate::note::{
    Note, NoteError, check_name, ed25519_pair, format_key, invalid, key_id, parse_signer, parse_verifier,
    random_seed, signature_line,
};

/// The signature type of Ed25519 `cosignature/v1` signatures (and their keys).
pub const COSIGNATURE_TYPE: u8 = 0x04;
/// The latest timestamp a cosignature may carry (2^63 - 1).
pub const MAX_TIME: u64 = (1 << 63) - 1;

/// What a cosigner signs: `cosignature/v1`, the time, then the checkpoint's text.
pub fn message(text: &str, time: u64) -> String {
    format!("cosignature/v1\ntime {time}\n{text}")
}

/// A witness's public key: who may cosign. Its text form is a note verifier
/// key of type 0x04, `<name>+<hex key ID>+<base64(0x04 || public key)>`.
#[derive(Clone, PartialEq, Eq)]
pub struct CosignatureVerifier {
    name: String,
    id: u32,
    public: [u8; 32],
}

/// A checkpoint a witness's cosignature verified on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cosigned<'a> {
    /// The cosigned note text (the checkpoint).
    pub text: &'a str,
    /// When it was cosigned, Unix seconds (the latest, if several lines verify).
    pub time: u64,
}

impl CosignatureVerifier {
    /// Parses a cosignature verifier key, checking that its ID is the one its
    /// name and key give.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let (name, id, public) = parse_verifier(text, COSIGNATURE_TYPE)?;
        Ok(Self { name, id, public })
    }

    /// The witness's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks that `note` carries a valid cosignature by this key and returns
    /// the cosigned text and time. A line by this key that does not verify
    /// rejects the note; other signatures are ignored.
    pub fn verify<'a>(&self, note: &'a str) -> Result<Cosigned<'a>, NoteError> {
        let parsed = Note::parse(note)?;
        let mut time = None;
        for signature in &parsed.signatures {
            if signature.name != self.name || signature.id != self.id {
                continue;
            }
            let Some((stamp, bytes)) = signature
                .bytes
                .split_first_chunk::<8>()
                .filter(|(_, s)| s.len() == 64)
            else {
                return Err(invalid(format!(
                    "the cosignature by {self} is {} bytes, not 8 + 64",
                    signature.bytes.len()
                )));
            };
            let stamp = u64::from_be_bytes(*stamp);
            if stamp > MAX_TIME {
                return Err(invalid(format!(
                    "the cosignature by {self} has timestamp {stamp}, past 2^63 - 1"
                )));
            }
            UnparsedPublicKey::new(&ED25519, &self.public)
                .verify(message(parsed.text, stamp).as_bytes(), bytes)
                .map_err(|_| invalid(format!("the cosignature by {self} does not verify")))?;
            time = time.max(Some(stamp));
        }
        match time {
            Some(time) => Ok(Cosigned {
                text: parsed.text,
                time,
            }),
            None => {
                let by: Vec<String> = parsed
                    .signatures
                    .iter()
                    .map(|s| format!("{}+{:08x}", s.name, s.id))
                    .collect();
                Err(invalid(format!(
                    "not cosigned by {}+{:08x} (signed by {})",
                    self.name,
                    self.id,
                    by.join(", ")
                )))
            }
        }
    }
}

impl fmt::Display for CosignatureVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_key(&self.name, self.id, COSIGNATURE_TYPE, &self.public))
    }
}

impl fmt::Debug for CosignatureVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CosignatureVerifier({self})")
    }
}

/// A witness's private key. Its text form is a note signer key of type 0x04,
/// `PRIVATE+KEY+<name>+<hex key ID>+<base64(0x04 || seed)>`: a secret.
pub struct CosignerKey {
    pair: Ed25519KeyPair,
    seed: [u8; 32],
    verifier: CosignatureVerifier,
}

impl CosignerKey {
    /// A new random key named `name` (a schema-less URL, by the spec's advice).
    pub fn generate(name: &str) -> Result<Self, NoteError> {
        Self::from_seed(name, random_seed()?)
    }

    fn from_seed(name: &str, seed: [u8; 32]) -> Result<Self, NoteError> {
        check_name(name)?;
        let (pair, public) = ed25519_pair(&seed)?;
        let verifier = CosignatureVerifier {
            name: name.to_owned(),
            id: key_id(name, COSIGNATURE_TYPE, &public),
            public,
        };
        Ok(Self { pair, seed, verifier })
    }

    /// Parses a cosigner key.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let (name, id, seed) = parse_signer(text, COSIGNATURE_TYPE)?;
        let key = Self::from_seed(&name, seed)?;
        if key.verifier.id != id {
            return Err(invalid(format!(
                "key ID {id:08x} is not the one of this name and key ({:08x})",
                key.verifier.id
            )));
        }
        Ok(key)
    }

    /// The key's text form: a secret.
    pub fn to_secret_text(&self) -> String {
        format!(
            "PRIVATE+KEY+{}",
            format_key(
                &self.verifier.name,
                self.verifier.id,
                COSIGNATURE_TYPE,
                &self.seed
            )
        )
    }

    /// Its public half.
    pub fn verifier(&self) -> &CosignatureVerifier {
        &self.verifier
    }

    /// The cosignature line (ending in a newline) of a checkpoint's note text
    /// `text`, at `time` (Unix seconds); append it to the note's signatures.
    pub fn cosign(&self, text: &str, time: u64) -> Result<String, NoteError> {
        if time > MAX_TIME {
            return Err(invalid(format!("timestamp {time} is past 2^63 - 1")));
        }
        if !text.ends_with('\n') || text.contains("\n\n") {
            return Err(invalid("a note text ends in one newline and holds no blank line"));
        }
        let signature = self.pair.sign(message(text, time).as_bytes());
        Ok(signature_line(
            &self.verifier.name,
            self.verifier.id,
            &[&time.to_be_bytes(), signature.as_ref()],
        ))
    }
}

impl fmt::Debug for CosignerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key material.
        write!(f, "CosignerKey({})", self.verifier)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::note::{Checkpoint, SigningKey};

    /// The checkpoint and log signature of c2sp.org/tlog-cosignature's example.
    const SPEC_NOTE: &str = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n\u{2014} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n";
    /// Its witness line: key ID 8d66cf3f, time 1679315147 (0x641850cb), as the
    /// spec's signed-message example says.
    const SPEC_COSIGNATURE: &str = "\u{2014} witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n";

    /// Go's sumdb/note test seed, used here as a cosigner key: Ed25519 is
    /// deterministic, so the line below is fixed (verified independently by
    /// tests/interop/verify_checkpoint.py through the live test).
    const SEED: [u8; 32] = [
        0x81, 0x0a, 0x14, 0x02, 0xd5, 0x14, 0x6c, 0x8d, 0x84, 0xf2, 0x44, 0x33, 0x30, 0xf5, 0x40, 0x80, 0xeb,
        0xf9, 0x8e, 0xe1, 0x7d, 0x9c, 0x74, 0xf6, 0x25, 0x2f, 0xc5, 0xd5, 0xc7, 0x28, 0x31, 0x73,
    ];

    fn checkpoint() -> String {
        Checkpoint {
            origin: "zt/decision-log/0011223344556677".into(),
            size: 7,
            root: [9; 32],
        }
        .text()
    }

    #[test]
    fn the_spec_examples_timestamp_and_message_are_read_as_written() {
        let note = format!("{SPEC_NOTE}{SPEC_COSIGNATURE}");
        let parsed = Note::parse(&note).unwrap();
        let witness = &parsed.signatures[1];
        assert_eq!(
            (witness.name.as_str(), witness.id),
            ("witness.example.com/w1", 0x8d66cf3f)
        );
        let (stamp, signature) = witness.bytes.split_first_chunk::<8>().unwrap();
        assert_eq!((u64::from_be_bytes(*stamp), signature.len()), (1_679_315_147, 64));
        assert_eq!(
            message(parsed.text, 1_679_315_147),
            "cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
        );
        // Another witness's key finds no cosignature of its own there.
        let other = CosignerKey::generate("witness.example.com/w1").unwrap();
        let e = other.verifier().verify(&note).unwrap_err().to_string();
        assert!(e.starts_with("not cosigned by witness.example.com/w1+"), "{e}");
    }

    #[test]
    fn a_cosignature_verifies_with_its_key_and_round_trips_its_encodings() {
        let key = CosignerKey::from_seed("example.org/zt-server/witness", SEED).unwrap();
        let again = CosignerKey::parse(&key.to_secret_text()).unwrap();
        assert_eq!(again.verifier(), key.verifier());
        let verifier = CosignatureVerifier::parse(&key.verifier().to_string()).unwrap();
        assert_eq!(&verifier, key.verifier());
        assert!(
            key.verifier()
                .to_string()
                .starts_with("example.org/zt-server/witness+")
        );
        assert!(!format!("{key:?}").contains(&key.to_secret_text()));

        let writer = SigningKey::generate("zt/decision-log/0011223344556677").unwrap();
        let text = checkpoint();
        let line = key.cosign(&text, 1_700_000_000).unwrap();
        // Fixed bytes: the same seed, time and text always give the same line.
        assert_eq!(line, key.cosign(&text, 1_700_000_000).unwrap());
        let note = format!("{}{line}", writer.sign(&text));
        let cosigned = verifier.verify(&note).unwrap();
        assert_eq!(
            cosigned,
            Cosigned {
                text: &text,
                time: 1_700_000_000
            }
        );
        // The writer's signature still verifies beside it.
        assert_eq!(writer.verifier().verify(&note).unwrap(), text);
    }

    #[test]
    fn a_wrong_key_a_changed_body_or_time_and_malformed_lines_are_refused() {
        let key = CosignerKey::generate("example.org/zt-server/witness").unwrap();
        let writer = SigningKey::generate("zt/decision-log/0011223344556677").unwrap();
        let text = checkpoint();
        let note = format!(
            "{}{}",
            writer.sign(&text),
            key.cosign(&text, 1_700_000_000).unwrap()
        );

        // Another key of the same name: no cosignature of its own.
        let other = CosignerKey::generate("example.org/zt-server/witness").unwrap();
        let e = other.verifier().verify(&note).unwrap_err().to_string();
        assert!(
            e.starts_with("not cosigned by example.org/zt-server/witness+"),
            "{e}"
        );
        // The writer's key is not a cosignature key, nor the other way round.
        let e = CosignatureVerifier::parse(&writer.verifier().to_string())
            .unwrap_err()
            .to_string();
        assert!(e.contains("signature type 0x01, not 0x04"), "{e}");
        assert!(crate::note::VerifierKey::parse(&key.verifier().to_string()).is_err());

        // A changed body (another size), or a changed time, breaks the signature.
        let e = key
            .verifier()
            .verify(&note.replacen("\n7\n", "\n8\n", 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not verify"), "{e}");
        let line = key.cosign(&text, 1_700_000_000).unwrap();
        let shifted = key.cosign(&text, 1_700_000_001).unwrap();
        let (_, old_blob) = line.trim_end().rsplit_once(' ').unwrap();
        let (_, new_blob) = shifted.trim_end().rsplit_once(' ').unwrap();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut forged = b64.decode(old_blob).unwrap();
        forged[4..12].copy_from_slice(&1_700_000_001u64.to_be_bytes());
        let forged = note.replace(old_blob, &b64.encode(&forged));
        assert!(
            key.verifier()
                .verify(&forged)
                .unwrap_err()
                .to_string()
                .contains("does not verify")
        );
        assert_ne!(old_blob, new_blob);

        // Malformed: a line of a plain signature's length, a timestamp past 2^63 - 1.
        let short = b64.encode([&key.verifier().id.to_be_bytes()[..], &[0u8; 64]].concat());
        let e = key
            .verifier()
            .verify(&note.replace(old_blob, &short))
            .unwrap_err()
            .to_string();
        assert!(e.contains("64 bytes, not 8 + 64"), "{e}");
        let mut late = b64.decode(old_blob).unwrap();
        late[4..12].copy_from_slice(&u64::MAX.to_be_bytes());
        let e = key
            .verifier()
            .verify(&note.replace(old_blob, &b64.encode(&late)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("past 2^63 - 1"), "{e}");
        assert!(key.cosign(&text, MAX_TIME + 1).is_err());
        assert!(key.cosign("no newline", 1).is_err());
        assert!(CosignatureVerifier::parse("example.org/w+00000000+BA==").is_err());
        assert!(CosignerKey::generate("has space").is_err());
    }
}
