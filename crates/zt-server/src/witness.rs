//! zt server as the witness of the decision logs shipped to it: it pins each
//! source's log key on first use and cosigns (c2sp.org/tlog-cosignature) a
//! checkpoint only when it is signed by that key, names that key's log, covers
//! no more records than the server holds and no fewer than it witnessed
//! before, and carries the Merkle root of the records the server holds. As
//! stored records never change, an equal root proves the checkpoint
//! consistent with every earlier one. A writer that rewrites its log
//! afterwards and signs it again cannot get its new history cosigned, and
//! `zt audit verify --witness-key` finds the rewritten records.

use std::sync::Arc;

use tonic::Status;
use zt_audit::cosignature::{CosignatureVerifier, CosignerKey};
use zt_audit::note::{Checkpoint, VerifierKey};
use zt_identity::TrustDomain;
use zt_store::{Store, StoreError};

use crate::metrics::Metrics;

/// Why a source's log key or checkpoint was refused.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// The source presented a log key other than the one pinned for it.
    #[error(
        "decisions from {source_id}: verifier key {presented} is not {pinned}, the key pinned for this source \
         on first use; if its log key really changed, forget the old one (zt audit forget-key {source_id})"
    )]
    KeyChanged {
        /// The workload.
        source_id: String,
        /// The key it presented.
        presented: String,
        /// The key pinned.
        pinned: String,
    },
    /// The key or checkpoint is malformed, or the checkpoint does not match
    /// what the server holds and witnessed.
    #[error("checkpoint from {source_id}: {what}")]
    Refused {
        /// The workload.
        source_id: String,
        /// Why.
        what: String,
    },
    /// The datastore.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The witness: zt server's cosigner key (one per datastore) and its checks.
pub struct Witness {
    key: CosignerKey,
    store: Store,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Witness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Witness({})", self.key.verifier())
    }
}

/// A source's log key, checked against the one pinned for it.
#[derive(Debug, Clone)]
pub struct PinnedKey {
    key: VerifierKey,
    text: String,
    witnessed_size: u64,
}

impl Witness {
    /// Loads the witness key from the datastore, creating it (named
    /// `<trust domain>/zt-server/witness`) if no server has yet.
    pub async fn load(
        store: Store,
        trust_domain: &TrustDomain,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            what: "witness key",
            key: "1".into(),
            reason,
        };
        let fresh = CosignerKey::generate(&format!("{trust_domain}/zt-server/witness"))
            .map_err(|e| corrupt(e.to_string()))?;
        let stored = store.witness_key(&fresh.to_secret_text()).await?;
        let key = CosignerKey::parse(&stored).map_err(|e| corrupt(e.to_string()))?;
        Ok(Self { key, store, metrics })
    }

    /// The key that verifies this server's cosignatures.
    pub fn verifier(&self) -> &CosignatureVerifier {
        self.key.verifier()
    }

    /// Checks the log key `presented` by `source`: pinned if it is the first,
    /// refused if another is pinned.
    pub async fn pin(&self, source: &str, presented: &str) -> Result<PinnedKey, WitnessError> {
        let refused = |what: String| WitnessError::Refused {
            source_id: source.to_owned(),
            what,
        };
        let key =
            VerifierKey::parse(presented).map_err(|e| refused(format!("verifier key {presented:?}: {e}")))?;
        // Its canonical form is what is pinned and compared.
        let text = key.to_string();
        let pinned = self.store.pin_source_key(source, &text).await?;
        if pinned.verifier_key != text {
            return Err(WitnessError::KeyChanged {
                source_id: source.to_owned(),
                presented: text,
                pinned: pinned.verifier_key,
            });
        }
        Ok(PinnedKey {
            key,
            text,
            witnessed_size: pinned.witnessed_size,
        })
    }

    /// Cosigns `note`, `source`'s checkpoint, if it is signed by the pinned
    /// key, names its log, and is consistent with the `stored` records held
    /// and the checkpoints witnessed before; returns the cosignature line.
    pub async fn cosign(
        &self,
        source: &str,
        pinned: &PinnedKey,
        note: &str,
        stored: u64,
        now: u64,
    ) -> Result<String, WitnessError> {
        let refused = |what: String| WitnessError::Refused {
            source_id: source.to_owned(),
            what,
        };
        let text = pinned.key.verify(note).map_err(|e| refused(e.to_string()))?;
        let checkpoint = Checkpoint::parse(text).map_err(|e| refused(e.to_string()))?;
        if checkpoint.origin != pinned.key.name() {
            return Err(refused(format!(
                "origin {:?} is not {:?}, the log of the key pinned for this source",
                checkpoint.origin,
                pinned.key.name()
            )));
        }
        let size = checkpoint.size;
        if size > stored {
            return Err(refused(format!(
                "covers {size} records, but zt server holds {stored} for this source"
            )));
        }
        if size < pinned.witnessed_size {
            return Err(refused(format!(
                "covers {size} records, fewer than the {} already witnessed: the log was cut back",
                pinned.witnessed_size
            )));
        }
        let tree = self.store.decision_tree(source, size).await?.ok_or_else(|| {
            refused(format!(
                "zt server holds fewer than {size} records for this source"
            ))
        })?;
        if tree.root() != checkpoint.root {
            return Err(refused(format!(
                "its root hash is not the one of the {size} records zt server holds for this source: \
                 the log was rewritten after they were shipped"
            )));
        }
        // Recorded before signing, only if no larger size was witnessed meanwhile
        // (by another replica) and the key is still the one pinned.
        if !self.store.record_witnessed(source, &pinned.text, size).await? {
            return Err(refused(format!(
                "a checkpoint larger than {size} records was witnessed meanwhile, or the key was forgotten"
            )));
        }
        let line = self.key.cosign(text, now).map_err(|e| refused(e.to_string()))?;
        self.metrics.checkpoints_cosigned.inc();
        Ok(line)
    }

    /// The gRPC answer to a refusal, counted and logged.
    pub fn refusal(&self, e: WitnessError) -> Status {
        match &e {
            WitnessError::KeyChanged { source_id, .. } => {
                self.metrics.witness_key_refusals.inc();
                tracing::warn!(target: "zt::audit", source = %source_id, error = %e, "refused: a decision log key other than the one pinned");
                Status::permission_denied(e.to_string())
            }
            WitnessError::Refused { source_id, .. } => {
                self.metrics.witness_checkpoint_refusals.inc();
                tracing::warn!(target: "zt::audit", source = %source_id, error = %e, "refused to cosign a decision log checkpoint");
                Status::failed_precondition(e.to_string())
            }
            WitnessError::Store(_) => {
                self.metrics.datastore_errors.inc();
                tracing::error!(error = %e, "datastore error");
                Status::unavailable("datastore unavailable")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
    use super::*;

    fn record(path: &str) -> zt_audit::Record {
        let line = format!(
            r#"{{"seq":0,"time_ms":1,"id":"i","source_principal":null,"source_ip":null,"destination":"d","port":null,"protocol":"http","method":null,"host":null,"path":"{path}","decision":"DENY","mode":"enforce","policy":null,"reason":"r","policy_version":"v","eval_ns":1,"dry_run":null,"audit":null,"prev":"","hash":""}}"#
        );
        serde_json::from_str(&line).unwrap()
    }

    /// A signed log of `paths` written by `key`: its lines and its checkpoints' notes.
    fn log(dir: &std::path::Path, key: &str, paths: &[&str]) -> (Vec<String>, Vec<String>) {
        let path = dir.join("decisions.log");
        let policy = zt_audit::CheckpointPolicy {
            every: 2,
            interval: std::time::Duration::from_secs(3600),
        };
        let signer = zt_audit::note::SigningKey::parse(key).unwrap();
        let mut writer = zt_audit::Writer::open_signed(&path, signer, policy).unwrap();
        for p in paths {
            writer.append([record(p)]).unwrap();
        }
        drop(writer);
        let lines = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let notes = zt_audit::signed::read_checkpoints(&zt_audit::signed::checkpoints_path(&path))
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|n| n.note)
            .collect();
        (lines, notes)
    }

    #[tokio::test]
    async fn only_checkpoints_of_the_pinned_key_matching_the_stored_records_are_cosigned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("zt.db").to_str().unwrap())
            .await
            .unwrap();
        let metrics = Arc::new(Metrics::new(&zt_task::Tasks::new(), |_| {}));
        let trust_domain = TrustDomain::parse("example.org").unwrap();
        let witness = Witness::load(store.clone(), &trust_domain, metrics.clone())
            .await
            .unwrap();
        // One key per datastore, whichever server loads it.
        let again = Witness::load(store.clone(), &trust_domain, metrics.clone())
            .await
            .unwrap();
        assert_eq!(again.verifier(), witness.verifier());

        let source = "spiffe://example.org/ns/production/sa/billing";
        let writer = zt_audit::note::SigningKey::generate("zt/decision-log/aa").unwrap();
        let vkey = writer.verifier().to_string();
        let logs = tempfile::tempdir().unwrap();
        let (lines, notes) = log(
            logs.path(),
            &writer.to_secret_text(),
            &["/a", "/b", "/c", "/d", "/e"],
        );
        // Checkpoints at 2, 4 and 5 records.
        assert_eq!(notes.len(), 3);
        let pinned = witness.pin(source, &vkey).await.unwrap();
        let stored = store.append_decisions(source, &lines[..4]).await.unwrap();
        assert_eq!(stored, 4);

        let refused = |e: WitnessError| e.to_string();
        // Beyond the records held.
        let e = refused(
            witness
                .cosign(source, &pinned, &notes[2], stored, 1)
                .await
                .unwrap_err(),
        );
        assert!(e.contains("covers 5 records, but zt server holds 4"), "{e}");
        // Cosigned: the line verifies with the witness key.
        let line = witness
            .cosign(source, &pinned, &notes[1], stored, 1_700_000_000)
            .await
            .unwrap();
        let whole = format!("{}{line}", notes[1]);
        assert_eq!(witness.verifier().verify(&whole).unwrap().time, 1_700_000_000);
        assert_eq!(metrics.checkpoints_cosigned.get(), 1);
        // Never back to a smaller size.
        let pinned = witness.pin(source, &vkey).await.unwrap();
        let e = refused(
            witness
                .cosign(source, &pinned, &notes[0], stored, 1)
                .await
                .unwrap_err(),
        );
        assert!(
            e.contains("covers 2 records, fewer than the 4 already witnessed"),
            "{e}"
        );

        // Another log key for the source: refused, naming the source and both keys.
        let other = zt_audit::note::SigningKey::generate("zt/decision-log/bb").unwrap();
        let err = witness
            .pin(source, &other.verifier().to_string())
            .await
            .unwrap_err();
        let e = err.to_string();
        assert!(
            e.starts_with(&format!(
                "decisions from {source}: verifier key zt/decision-log/bb+"
            )) && e.contains(&format!("is not {vkey}, the key pinned")),
            "{e}"
        );
        let status = witness.refusal(err);
        assert_eq!(
            (status.code(), status.message()),
            (tonic::Code::PermissionDenied, e.as_str())
        );
        assert_eq!(metrics.witness_key_refusals.get(), 1);
        // A checkpoint signed by another key, or naming another log.
        let text = zt_audit::note::Note::parse(&notes[1]).unwrap().text.to_owned();
        let foreign = other.sign(&text);
        let e = refused(
            witness
                .cosign(source, &pinned, &foreign, stored, 1)
                .await
                .unwrap_err(),
        );
        assert!(e.contains("not signed by zt/decision-log/aa+"), "{e}");
        let renamed = writer.sign(&text.replacen("zt/decision-log/aa", "zt/decision-log/zz", 1));
        let e = refused(
            witness
                .cosign(source, &pinned, &renamed, stored, 1)
                .await
                .unwrap_err(),
        );
        assert!(
            e.contains("origin \"zt/decision-log/zz\" is not \"zt/decision-log/aa\""),
            "{e}"
        );

        // A checkpoint of a rewritten history: its root is not the stored records'.
        let rewritten = tempfile::tempdir().unwrap();
        let (_, forged) = log(
            rewritten.path(),
            &writer.to_secret_text(),
            &["/a", "/x", "/c", "/d", "/e"],
        );
        let e = refused(
            witness
                .cosign(source, &pinned, &forged[1], stored, 1)
                .await
                .unwrap_err(),
        );
        assert!(
            e.contains("its root hash is not the one of the 4 records zt server holds"),
            "{e}"
        );
    }
}
