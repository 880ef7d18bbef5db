//! A client of the admin API over its Unix socket, for the CLI and tests.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;
use zt_store::{
    Client, CreatedClient, Credential, Entry, EntrySpec, Group, NewClient, NewUser, Session, User,
};

use crate::api::{
    AgentList, AppliedPolicies, ApplyPolicies, BundleFormat, ClientList, Count, CreateInvite,
    CreateJoinToken, CredentialList, DecisionList, EntryFilter, EntryList, ErrorBody, ForgetSourceKey,
    ForgottenSourceKey, GroupList, JoinToken, MemberList, MintX509Svid, MintedX509Svid, NewGroup, Revoke,
    RevokedSessions, Rotated, SessionList, ShippedDecision, UpdateEntry, UserList, WitnessKey,
};

/// Largest answer read, in bytes.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("{path}: cannot connect (is zt server running with this data directory?)")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// HTTP failed on the way.
    #[error("admin API: {0}")]
    Http(String),
    /// The server refused the request; its message says why.
    #[error("{message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The server's one-line reason.
        message: String,
    },
}

/// Why minting an X.509-SVID for a key made here failed.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The key or its signing request could not be made.
    #[error("making a key and its signing request")]
    Key(#[source] zt_ca::CaError),
    /// The admin call failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The files could not be written (`--write DIR`).
    #[error("--write {}", dir.display())]
    Write {
        /// The directory.
        dir: PathBuf,
        /// The error.
        source: zt_fs::FsError,
    },
}

/// What to mint with [`AdminClient::mint_x509_svid_for_new_key`].
#[derive(Debug, Clone, Copy)]
pub struct MintRequest<'a> {
    /// The identity, in the server's trust domain.
    pub spiffe_id: &'a zt_identity::SpiffeId,
    /// The lifetime asked for (the server may cut it shorter).
    pub ttl: std::time::Duration,
    /// DNS SANs.
    pub dns_names: &'a [String],
}

/// An admin API client bound to one socket.
#[derive(Debug, Clone)]
pub struct AdminClient {
    socket: PathBuf,
}

impl AdminClient {
    /// A client for the server listening on `socket`.
    pub fn new(socket: impl AsRef<Path>) -> Self {
        Self {
            socket: socket.as_ref().to_owned(),
        }
    }

    /// `POST /v1/entries`.
    pub async fn create_entry(&self, spec: &EntrySpec) -> Result<Entry, ClientError> {
        self.call(Method::POST, "/v1/entries", Some(spec)).await
    }

    /// `GET /v1/entries/{id}`.
    pub async fn entry(&self, id: &str) -> Result<Entry, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/v1/entries/{}", encode(id)), None)
            .await
    }

    /// `GET /v1/entries`, filtered.
    pub async fn list_entries(&self, filter: &EntryFilter) -> Result<Vec<Entry>, ClientError> {
        let mut query = Vec::new();
        if let Some(id) = &filter.spiffe_id {
            query.push(format!("spiffe_id={}", encode(id)));
        }
        if let Some(id) = &filter.parent_id {
            query.push(format!("parent_id={}", encode(id)));
        }
        let path = if query.is_empty() {
            "/v1/entries".to_owned()
        } else {
            format!("/v1/entries?{}", query.join("&"))
        };
        let list: EntryList = self.call::<(), _>(Method::GET, &path, None).await?;
        Ok(list.entries)
    }

    /// `PUT /v1/entries/{id}`.
    pub async fn update_entry(&self, id: &str, update: &UpdateEntry) -> Result<Entry, ClientError> {
        self.call(Method::PUT, &format!("/v1/entries/{}", encode(id)), Some(update))
            .await
    }

    /// `DELETE /v1/entries/{id}`.
    pub async fn delete_entry(&self, id: &str) -> Result<Entry, ClientError> {
        self.call::<(), _>(Method::DELETE, &format!("/v1/entries/{}", encode(id)), None)
            .await
    }

    /// `GET /v1/entries/count`.
    pub async fn count_entries(&self) -> Result<u64, ClientError> {
        let count: Count = self.call::<(), _>(Method::GET, "/v1/entries/count", None).await?;
        Ok(count.count)
    }

    /// `POST /v1/join-tokens`.
    pub async fn create_join_token(&self, request: &CreateJoinToken) -> Result<JoinToken, ClientError> {
        self.call(Method::POST, "/v1/join-tokens", Some(request)).await
    }

    /// `POST /v1/svids/x509`.
    pub async fn mint_x509_svid(&self, request: &MintX509Svid) -> Result<MintedX509Svid, ClientError> {
        self.call(Method::POST, "/v1/svids/x509", Some(request)).await
    }

    /// `GET /v1/bundle`: the trust bundle as text (PEM or JWKS).
    pub async fn bundle(&self, format: BundleFormat) -> Result<String, ClientError> {
        let format = match format {
            BundleFormat::Pem => "pem",
            BundleFormat::Jwks => "jwks",
        };
        let bytes = self
            .send::<()>(Method::GET, &format!("/v1/bundle?format={format}"), None)
            .await?;
        String::from_utf8(bytes.to_vec()).map_err(|e| ClientError::Http(e.to_string()))
    }

    /// `POST /v1/revocations`.
    pub async fn revoke(&self, request: &Revoke) -> Result<zt_store::Revocation, ClientError> {
        self.call(Method::POST, "/v1/revocations", Some(request)).await
    }

    /// `PUT /v1/policies`.
    pub async fn apply_policies(&self, request: &ApplyPolicies) -> Result<AppliedPolicies, ClientError> {
        self.call(Method::PUT, "/v1/policies", Some(request)).await
    }

    /// `GET /v1/policies`: the newest version; `None` if none was ever applied.
    pub async fn policies(&self) -> Result<Option<zt_store::PolicyVersion>, ClientError> {
        match self.call::<(), _>(Method::GET, "/v1/policies", None).await {
            Ok(version) => Ok(Some(version)),
            Err(ClientError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/decisions`: one page of shipped decision records after `after`
    /// (source, seq); an empty page is the end.
    pub async fn decisions(&self, after: (&str, u64)) -> Result<Vec<ShippedDecision>, ClientError> {
        let path = format!(
            "/v1/decisions?after_source={}&after_seq={}",
            encode(after.0),
            after.1
        );
        let list: DecisionList = self.call::<(), _>(Method::GET, &path, None).await?;
        Ok(list.decisions)
    }

    /// `GET /v1/witness/key`: the key that verifies zt server's cosignatures.
    pub async fn witness_key(&self) -> Result<WitnessKey, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/witness/key", None).await
    }

    /// `POST /v1/witness/forget`: forgets the log key pinned for `source`.
    pub async fn forget_source_key(&self, source: &str) -> Result<ForgottenSourceKey, ClientError> {
        let body = ForgetSourceKey {
            source: source.to_owned(),
        };
        self.call(Method::POST, "/v1/witness/forget", Some(&body)).await
    }

    /// `GET /v1/agents`.
    pub async fn list_agents(&self) -> Result<Vec<zt_store::Agent>, ClientError> {
        let list: AgentList = self.call::<(), _>(Method::GET, "/v1/agents", None).await?;
        Ok(list.agents)
    }

    /// `GET /v1/agents/{id}`.
    pub async fn agent(&self, id: &str) -> Result<zt_store::Agent, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/v1/agents/{}", encode(id)), None)
            .await
    }

    /// `POST /v1/agents/{id}/evict` or `/ban`: the agent must attest again (or may not).
    pub async fn evict_agent(&self, id: &str, ban: bool) -> Result<zt_store::Agent, ClientError> {
        let action = if ban { "ban" } else { "evict" };
        self.call::<(), _>(Method::POST, &format!("/v1/agents/{}/{action}", encode(id)), None)
            .await
    }

    /// Has zt server sign an X.509-SVID for a key made here: only a CSR goes to
    /// the server. Returns the answer and the key (PKCS#8 PEM).
    pub async fn mint_x509_svid_for_new_key(
        &self,
        request: &MintRequest<'_>,
    ) -> Result<(MintedX509Svid, String), MintError> {
        use base64::Engine as _;
        let (key_pem, csr) = zt_ca::key_and_csr().map_err(MintError::Key)?;
        let minted = self
            .mint_x509_svid(&MintX509Svid {
                spiffe_id: request.spiffe_id.to_string(),
                csr: base64::engine::general_purpose::STANDARD.encode(csr),
                ttl_secs: request.ttl.as_secs(),
                dns_names: request.dns_names.to_vec(),
            })
            .await?;
        Ok((minted, key_pem))
    }

    /// Mints an SVID (see [`Self::mint_x509_svid_for_new_key`]) into `dir` as
    /// SPIRE's `x509 mint -write` does: svid.pem, key.pem (0600) and bundle.pem,
    /// each replaced atomically; `dir` is made private (0700).
    pub async fn mint_x509_svid_to_dir(
        &self,
        request: &MintRequest<'_>,
        dir: &Path,
    ) -> Result<MintedX509Svid, MintError> {
        use zt_fs::{PRIVATE_MODE, PUBLIC_MODE, write_atomically};
        let (minted, key_pem) = self.mint_x509_svid_for_new_key(request).await?;
        let write = |source| MintError::Write {
            dir: dir.to_owned(),
            source,
        };
        zt_fs::private_dir(dir).map_err(write)?;
        write_atomically(&[
            (
                dir.join("svid.pem"),
                minted.chain_pem.clone().into_bytes(),
                PUBLIC_MODE,
            ),
            (dir.join("key.pem"), key_pem.into_bytes(), PRIVATE_MODE),
            (
                dir.join("bundle.pem"),
                minted.bundle_pem.clone().into_bytes(),
                PUBLIC_MODE,
            ),
        ])
        .map_err(write)?;
        Ok(minted)
    }

    /// `POST /v1/users`.
    pub async fn create_user(&self, new: &NewUser) -> Result<User, ClientError> {
        self.call(Method::POST, "/v1/users", Some(new)).await
    }

    /// `GET /v1/users/{name}`.
    pub async fn user(&self, name: &str) -> Result<User, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/v1/users/{}", encode(name)), None)
            .await
    }

    /// `GET /v1/users`.
    pub async fn users(&self) -> Result<Vec<User>, ClientError> {
        let list: UserList = self.call::<(), _>(Method::GET, "/v1/users", None).await?;
        Ok(list.users)
    }

    /// `DELETE /v1/users/{name}`: the user and everything of theirs.
    pub async fn delete_user(&self, name: &str) -> Result<User, ClientError> {
        self.call::<(), _>(Method::DELETE, &format!("/v1/users/{}", encode(name)), None)
            .await
    }

    /// `POST /v1/users/{name}/disable` (revokes their sessions) or `/enable`.
    pub async fn set_user_disabled(&self, name: &str, disabled: bool) -> Result<User, ClientError> {
        let action = if disabled { "disable" } else { "enable" };
        self.call::<(), _>(
            Method::POST,
            &format!("/v1/users/{}/{action}", encode(name)),
            None,
        )
        .await
    }

    /// `POST /v1/users/{name}/invites`: a one-time enrollment token, returned this once.
    pub async fn create_invite(
        &self,
        name: &str,
        ttl: std::time::Duration,
    ) -> Result<crate::api::Invite, ClientError> {
        let body = CreateInvite {
            ttl_secs: ttl.as_secs(),
        };
        self.call(
            Method::POST,
            &format!("/v1/users/{}/invites", encode(name)),
            Some(&body),
        )
        .await
    }

    /// `POST /v1/users/{name}/password`: sets (or, with `None`, removes) a password.
    pub async fn set_password(&self, name: &str, password: Option<&str>) -> Result<(), ClientError> {
        let body = crate::api::SetPassword {
            password: password.map(str::to_owned),
        };
        self.send(
            Method::POST,
            &format!("/v1/users/{}/password", encode(name)),
            Some(&body),
        )
        .await?;
        Ok(())
    }

    /// `GET /v1/users/{name}/credentials`.
    pub async fn credentials(&self, name: &str) -> Result<Vec<Credential>, ClientError> {
        let list: CredentialList = self
            .call::<(), _>(
                Method::GET,
                &format!("/v1/users/{}/credentials", encode(name)),
                None,
            )
            .await?;
        Ok(list.credentials)
    }

    /// `POST /v1/credentials/{id}/revoke`.
    pub async fn revoke_credential(&self, id: &str) -> Result<Credential, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!("/v1/credentials/{}/revoke", encode(id)),
            None,
        )
        .await
    }

    /// `POST /v1/groups`.
    pub async fn create_group(&self, name: &str) -> Result<Group, ClientError> {
        let body = NewGroup {
            name: name.to_owned(),
        };
        self.call(Method::POST, "/v1/groups", Some(&body)).await
    }

    /// `GET /v1/groups`.
    pub async fn groups(&self) -> Result<Vec<Group>, ClientError> {
        let list: GroupList = self.call::<(), _>(Method::GET, "/v1/groups", None).await?;
        Ok(list.groups)
    }

    /// `DELETE /v1/groups/{name}`.
    pub async fn delete_group(&self, name: &str) -> Result<(), ClientError> {
        self.send::<()>(Method::DELETE, &format!("/v1/groups/{}", encode(name)), None)
            .await?;
        Ok(())
    }

    /// `GET /v1/groups/{name}/members`: user names.
    pub async fn group_members(&self, name: &str) -> Result<Vec<String>, ClientError> {
        let list: MemberList = self
            .call::<(), _>(Method::GET, &format!("/v1/groups/{}/members", encode(name)), None)
            .await?;
        Ok(list.members)
    }

    /// `PUT` (add) or `DELETE` (remove) `/v1/groups/{group}/members/{user}`.
    pub async fn set_member(&self, group: &str, user: &str, member: bool) -> Result<(), ClientError> {
        let method = if member { Method::PUT } else { Method::DELETE };
        let path = format!("/v1/groups/{}/members/{}", encode(group), encode(user));
        self.send::<()>(method, &path, None).await?;
        Ok(())
    }

    /// `POST /v1/clients`: the client, and its secret this once.
    pub async fn create_client(&self, new: &NewClient) -> Result<CreatedClient, ClientError> {
        self.call(Method::POST, "/v1/clients", Some(new)).await
    }

    /// `GET /v1/clients/{id}`.
    pub async fn client(&self, id: &str) -> Result<Client, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/v1/clients/{}", encode(id)), None)
            .await
    }

    /// `GET /v1/clients`.
    pub async fn clients(&self) -> Result<Vec<Client>, ClientError> {
        let list: ClientList = self.call::<(), _>(Method::GET, "/v1/clients", None).await?;
        Ok(list.clients)
    }

    /// `DELETE /v1/clients/{id}`.
    pub async fn delete_client(&self, id: &str) -> Result<Client, ClientError> {
        self.call::<(), _>(Method::DELETE, &format!("/v1/clients/{}", encode(id)), None)
            .await
    }

    /// `GET /v1/sessions`, of one user (by name) or of everyone.
    pub async fn sessions(&self, user: Option<&str>) -> Result<Vec<Session>, ClientError> {
        let path = match user {
            Some(user) => format!("/v1/sessions?user={}", encode(user)),
            None => "/v1/sessions".to_owned(),
        };
        let list: SessionList = self.call::<(), _>(Method::GET, &path, None).await?;
        Ok(list.sessions)
    }

    /// `POST /v1/sessions/{id}/revoke`: the session and its refresh-token families.
    pub async fn revoke_session(&self, id: &str) -> Result<Session, ClientError> {
        self.call::<(), _>(Method::POST, &format!("/v1/sessions/{}/revoke", encode(id)), None)
            .await
    }

    /// `POST /v1/users/{name}/sessions/revoke`: every session of the user.
    pub async fn revoke_user_sessions(&self, name: &str) -> Result<RevokedSessions, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!("/v1/users/{}/sessions/revoke", encode(name)),
            None,
        )
        .await
    }

    /// `POST /v1/devices/tokens`.
    pub async fn create_device_token(
        &self,
        request: &crate::api::CreateDeviceToken,
    ) -> Result<crate::api::DeviceToken, ClientError> {
        self.call(Method::POST, "/v1/devices/tokens", Some(request)).await
    }

    /// `GET /v1/devices`.
    pub async fn devices(&self) -> Result<Vec<crate::api::DeviceInfo>, ClientError> {
        let list: crate::api::DeviceList = self.call::<(), _>(Method::GET, "/v1/devices", None).await?;
        Ok(list.devices)
    }

    /// `GET /v1/devices/{id}`, with its newest events.
    pub async fn device(&self, id: &str) -> Result<crate::api::DeviceInfo, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/v1/devices/{}", encode(id)), None)
            .await
    }

    /// `POST /v1/devices/{id}/approve` or `/revoke`, or `DELETE /v1/devices/{id}`.
    pub async fn device_action(
        &self,
        id: &str,
        action: DeviceAction,
    ) -> Result<crate::api::DeviceInfo, ClientError> {
        let path = format!("/v1/devices/{}", encode(id));
        match action {
            DeviceAction::Approve => {
                self.call::<(), _>(Method::POST, &format!("{path}/approve"), None)
                    .await
            }
            DeviceAction::Revoke => {
                self.call::<(), _>(Method::POST, &format!("{path}/revoke"), None)
                    .await
            }
            DeviceAction::Delete => self.call::<(), _>(Method::DELETE, &path, None).await,
        }
    }

    /// `POST /v1/ca/rotate`.
    pub async fn rotate_ca(&self) -> Result<Rotated, ClientError> {
        self.call::<(), _>(Method::POST, "/v1/ca/rotate", None).await
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let bytes = self.send(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Http(e.to_string()))
    }

    /// Sends one request; a non-2xx answer becomes [`ClientError::Refused`] with its message.
    async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Bytes, ClientError> {
        let http = |e: &dyn std::fmt::Display| ClientError::Http(e.to_string());
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http(&e))?;
        tokio::spawn(connection);
        let body = match body {
            Some(body) => Bytes::from(serde_json::to_vec(body).map_err(|e| http(&e))?),
            None => Bytes::new(),
        };
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "zt-admin")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| http(&e))?;
        let response = sender.send_request(request).await.map_err(|e| http(&e))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| http(&*e))?
            .to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.error)
            .unwrap_or_else(|_| describe(status, &bytes));
        Err(ClientError::Refused {
            status: status.as_u16(),
            message,
        })
    }
}

fn describe(status: StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {text}")
    }
}

/// Percent-encodes a path segment or query value (RFC 3986 unreserved kept).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// What an administrator does to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceAction {
    /// A pending device may get its certificate.
    Approve,
    /// Its certificate and reports are refused from now on.
    Revoke,
    /// Forgotten, with its events.
    Delete,
}
