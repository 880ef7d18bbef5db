//! JWT-SVIDs for workloads: minted by the server on first request for an entry and
//! audience, then served from memory until half their life is gone. While the
//! server is unreachable, a cached token is served until it expires.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;
use tonic::Status;
use tonic::transport::Channel;
use zt_api::agent::agent_client::AgentClient;
use zt_api::agent::{Entry, MintJwtSvidRequest};

use crate::now;

/// Most tokens held; beyond that, expired ones are dropped, and if that is not
/// enough, all of them.
const MAX_CACHED: usize = 10_000;

/// Entry ID, entry revision and sorted audience.
type JwtKey = (String, u64, Vec<String>);

#[derive(Clone)]
struct CachedJwt {
    token: String,
    refresh_at: u64,
    expires_at: u64,
}

/// Mints and caches JWT-SVIDs.
pub struct JwtSvids {
    link: watch::Receiver<Option<AgentClient<Channel>>>,
    cache: Mutex<HashMap<JwtKey, CachedJwt>>,
}

impl JwtSvids {
    /// Mints through whatever connection to the server `link` holds.
    pub fn new(link: watch::Receiver<Option<AgentClient<Channel>>>) -> Self {
        Self {
            link,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// A JWT-SVID of `entry` for `audience`.
    pub async fn fetch(&self, entry: &Entry, audience: &[String]) -> Result<String, Status> {
        let mut audience = audience.to_vec();
        audience.sort();
        audience.dedup();
        let key = (entry.id.clone(), entry.revision, audience);
        let now = now();
        let cached = self.cache.lock().ok().and_then(|c| c.get(&key).cloned());
        if let Some(cached) = &cached
            && now < cached.refresh_at
        {
            return Ok(cached.token.clone());
        }
        let client = self.link.borrow().clone();
        let minted = match client {
            Some(mut client) => {
                client
                    .mint_jwt_svid(MintJwtSvidRequest {
                        entry_id: entry.id.clone(),
                        audience: key.2.clone(),
                    })
                    .await
            }
            None => Err(Status::unavailable("no connection to zt server")),
        };
        match minted {
            Ok(minted) => {
                let minted = minted.into_inner();
                let expires_at = u64::try_from(minted.expires_at).unwrap_or(0);
                let fresh = CachedJwt {
                    token: minted.token.clone(),
                    refresh_at: now + expires_at.saturating_sub(now) / 2,
                    expires_at,
                };
                if let Ok(mut cache) = self.cache.lock() {
                    if cache.len() >= MAX_CACHED {
                        cache.retain(|_, jwt| jwt.expires_at > now);
                        if cache.len() >= MAX_CACHED {
                            cache.clear();
                        }
                    }
                    cache.insert(key, fresh);
                }
                Ok(minted.token)
            }
            // An outage: a token that is still valid is better than none.
            Err(status) if status.code() == tonic::Code::Unavailable => match cached {
                Some(cached) if now < cached.expires_at => Ok(cached.token),
                _ => Err(Status::unavailable(format!(
                    "could not fetch JWT-SVID: {}",
                    status.message()
                ))),
            },
            Err(status) => Err(status),
        }
    }
}
