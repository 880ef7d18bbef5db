//! Refresh-token rotations, committed together on SQLite. There each rotation
//! is a write transaction that ends in a sync to disk, one writer at a time;
//! requests that arrive while one batch commits go in the next (group
//! commit), so a busy provider syncs once for many rotations and a lone
//! request waits for nothing. Each rotation in a batch is checked and applied
//! in order, as if alone (a token presented twice in one batch is spent the
//! second time). PostgreSQL commits concurrent transactions together by
//! itself, and one batch at a time would only serialize them: there each
//! rotation is its own transaction.

use std::sync::OnceLock;

use tokio::sync::{mpsc, oneshot};
use zt_store::{GrantError, IssuedRefresh, Rotation, Store};

use crate::{OAuthError, now};

/// Most rotations committed together.
const MAX_BATCH: usize = 64;
/// Most rotations waiting for a batch.
const QUEUE: usize = 1024;

type Outcome = Result<IssuedRefresh, GrantError>;

struct Job {
    token: String,
    client_id: String,
    scope: Option<String>,
    reply: oneshot::Sender<Result<Outcome, String>>,
}

/// The rotations' queue, and the task that commits them (started by the
/// first rotation, ended when the provider is dropped).
pub struct Rotations {
    store: Store,
    grace: u64,
    queue: OnceLock<mpsc::Sender<Job>>,
}

impl Rotations {
    pub(crate) fn new(store: Store, grace: u64) -> Self {
        Self {
            store,
            grace,
            queue: OnceLock::new(),
        }
    }

    /// Rotates `token` for `client_id` (see [`Store::rotate_refresh_token`]).
    pub(crate) async fn rotate(
        &self,
        token: &str,
        client_id: &str,
        scope: Option<&str>,
    ) -> Result<Outcome, OAuthError> {
        if self.store.backend() != zt_store::Backend::Sqlite {
            return Ok(self
                .store
                .rotate_refresh_token(token, client_id, scope, self.grace, now())
                .await?);
        }
        let queue = self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(QUEUE);
            tokio::spawn(commit_batches(self.store.clone(), self.grace, receiver));
            sender
        });
        let (reply, answer) = oneshot::channel();
        let job = Job {
            token: token.to_owned(),
            client_id: client_id.to_owned(),
            scope: scope.map(str::to_owned),
            reply,
        };
        let gone = || OAuthError::server_error("refresh-token rotation", "the rotation task stopped");
        queue.send(job).await.map_err(|_| gone())?;
        answer
            .await
            .map_err(|_| gone())?
            .map_err(|e| OAuthError::server_error("datastore", e))
    }
}

/// Takes what is queued (up to [`MAX_BATCH`]), commits it in one transaction,
/// answers each; until the queue closes.
async fn commit_batches(store: Store, grace: u64, mut queue: mpsc::Receiver<Job>) {
    while let Some(first) = queue.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH
            && let Ok(job) = queue.try_recv()
        {
            jobs.push(job);
        }
        let rotations: Vec<Rotation<'_>> = jobs
            .iter()
            .map(|job| Rotation {
                token: &job.token,
                client_id: &job.client_id,
                scope: job.scope.as_deref(),
            })
            .collect();
        match store.rotate_refresh_tokens(&rotations, grace, now()).await {
            Ok(outcomes) => {
                for (job, outcome) in jobs.into_iter().zip(outcomes) {
                    let _ = job.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                let error = e.to_string();
                for job in jobs {
                    let _ = job.reply.send(Err(error.clone()));
                }
            }
        }
    }
}
