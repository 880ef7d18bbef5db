//! The admin API's JSON documents, shared by the server and its client.

use serde::{Deserialize, Serialize};
use zt_store::{Entry, EntrySpec};

/// `PUT /v1/entries/{id}`: the new spec, based on `revision`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateEntry {
    /// The revision the change is based on; a stale one is refused (409).
    pub revision: u64,
    /// The entry as it should become.
    #[serde(flatten)]
    pub spec: EntrySpec,
}

/// `GET /v1/entries` query: optional filters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EntryFilter {
    /// Only entries with this SPIFFE ID.
    pub spiffe_id: Option<String>,
    /// Only entries under this parent.
    pub parent_id: Option<String>,
}

/// `GET /v1/entries` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryList {
    /// The entries, in creation order.
    pub entries: Vec<Entry>,
}

/// `GET /v1/entries/count` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Count {
    /// How many.
    pub count: u64,
}

/// `POST /v1/join-tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateJoinToken {
    /// The agent ID the token grants; without it, one is derived from the token.
    pub spiffe_id: Option<String>,
    /// Validity, seconds.
    pub ttl_secs: u64,
}

/// `POST /v1/join-tokens` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinToken {
    /// The one-time token; shown once, stored only as a hash.
    pub token: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// Every error answer: one line saying what is wrong.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The message.
    pub error: String,
}

/// `GET /v1/bundle` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BundleQuery {
    /// `pem` (default) or `jwks`.
    pub format: Option<BundleFormat>,
}

/// Formats of the trust bundle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BundleFormat {
    /// The X.509 authorities as PEM.
    #[default]
    Pem,
    /// The SPIFFE bundle (JWK Set), with the JWT keys.
    Jwks,
}

/// `POST /v1/ca/rotate` answer: the authority now signing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rotated {
    /// Serial of the active CA certificate.
    pub serial: String,
    /// Its notAfter, unix seconds.
    pub not_after: u64,
    /// How many authorities the bundle holds now.
    pub authorities: usize,
}

/// `POST /v1/svids/x509`: sign an X.509-SVID for a key the caller keeps (SPIRE's
/// `x509 mint`). No entry or agent is involved: the admin socket is trusted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MintX509Svid {
    /// The identity, in this server's trust domain.
    pub spiffe_id: String,
    /// A PKCS#10 request (DER, standard base64) proving possession of the key.
    pub csr: String,
    /// Lifetime, seconds; cut to the signing authority's.
    pub ttl_secs: u64,
    /// DNS SANs, for peers that check host names.
    #[serde(default)]
    pub dns_names: Vec<String>,
}

/// `POST /v1/svids/x509` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MintedX509Svid {
    /// The SVID: leaf first, PEM.
    pub chain_pem: String,
    /// The trust bundle to verify it and its peers with, PEM.
    pub bundle_pem: String,
    /// The leaf's serial, hex (what `zt revoke --serial` takes).
    pub serial: String,
    /// notAfter, Unix seconds.
    pub expires_at: u64,
}

/// `POST /v1/revocations`: exactly one of `serial` and `spiffe_id`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Revoke {
    /// One SVID, by serial (hex, `:` separators allowed).
    pub serial: Option<String>,
    /// Every SVID of this ID issued until now.
    pub spiffe_id: Option<String>,
    /// Why, for the record.
    #[serde(default)]
    pub reason: String,
}

/// `GET /v1/revocations` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevocationList {
    /// Revocations in force.
    pub revocations: Vec<zt_store::Revocation>,
}

/// `PUT /v1/policies`: the whole set of policy files, stored as a new version.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyPolicies {
    /// Every file, by its path relative to the applied directory.
    pub files: Vec<zt_store::PolicyFile>,
}

/// `PUT /v1/policies` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppliedPolicies {
    /// The version now in force.
    pub version: u64,
    /// Its digest.
    pub digest: String,
    /// Whether it is new (false: the set was the newest version already).
    pub changed: bool,
}

/// `GET /v1/decisions` query: the page after (`after_source`, `after_seq`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DecisionPage {
    /// The source of the last record seen ("" to start).
    #[serde(default)]
    pub after_source: String,
    /// Its sequence number.
    #[serde(default)]
    pub after_seq: u64,
}

/// `GET /v1/witness/key` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WitnessKey {
    /// The key that verifies zt server's cosignatures of decision-log
    /// checkpoints: a note verifier key of type 0x04 (cosignature/v1).
    pub verifier_key: String,
}

/// `POST /v1/witness/forget` body: forget the log key pinned for a source.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgetSourceKey {
    /// The workload's SPIFFE ID.
    pub source: String,
}

/// `POST /v1/witness/forget` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForgottenSourceKey {
    /// The workload's SPIFFE ID.
    pub source: String,
    /// The key that was pinned for it.
    pub verifier_key: String,
}

/// One shipped decision record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShippedDecision {
    /// The workload whose proxy decided (its SPIFFE ID).
    pub source: String,
    /// The record, a JSON line of its decision log.
    pub record: String,
}

/// `GET /v1/decisions` answer, in (source, seq) order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecisionList {
    /// At most a page; an empty list is the end.
    pub decisions: Vec<ShippedDecision>,
}

/// `GET /v1/agents` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentList {
    /// Attested (and banned) agents.
    pub agents: Vec<zt_store::Agent>,
}

/// `GET /v1/users` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserList {
    /// Every user, by name.
    pub users: Vec<zt_store::User>,
}

/// `POST /v1/groups` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewGroup {
    /// The group's name.
    pub name: String,
}

/// `GET /v1/groups` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupList {
    /// Every group, by name.
    pub groups: Vec<zt_store::Group>,
}

/// `GET /v1/groups/{name}/members` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberList {
    /// The group.
    pub group: String,
    /// Its members, by user name.
    pub members: Vec<String>,
}

/// `POST /v1/users/{name}/invites` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateInvite {
    /// Validity, seconds (at most a day).
    pub ttl_secs: u64,
}

/// `POST /v1/users/{name}/invites` answer: the one-time token, and the
/// enrollment link when zt server runs the OpenID Provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// The user it enrolls, by name.
    pub user: String,
    /// The token: 256 random bits, base64url, shown only now.
    pub token: String,
    /// Unix seconds.
    pub expires_at: u64,
    /// `https://ISSUER/enroll?invite=TOKEN`, when the OpenID Provider runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// `POST /v1/users/{name}/password` body.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPassword {
    /// The new password; `None` removes it.
    pub password: Option<String>,
}

impl std::fmt::Debug for SetPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        write!(
            f,
            "SetPassword({})",
            if self.password.is_some() { "set" } else { "remove" }
        )
    }
}

/// `GET /v1/users/{name}/credentials` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CredentialList {
    /// The user's credentials, revoked ones included.
    pub credentials: Vec<zt_store::Credential>,
}

/// `GET /v1/clients` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientList {
    /// Every OAuth client, by ID.
    pub clients: Vec<zt_store::Client>,
}

/// `GET /v1/sessions` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionFilter {
    /// Only this user's sessions, by name.
    pub user: Option<String>,
}

/// `GET /v1/sessions` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionList {
    /// Sessions, newest first.
    pub sessions: Vec<zt_store::Session>,
}

/// `POST /v1/users/{name}/sessions/revoke` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokedSessions {
    /// The user.
    pub user: String,
    /// How many sessions were open and are now revoked, with their refresh-token families.
    pub revoked: u64,
}

/// `POST /v1/devices/tokens`: a one-time device enrollment token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateDeviceToken {
    /// The person the device is issued to.
    pub owner: String,
    /// Validity, seconds.
    pub ttl_secs: u64,
    /// Devices enrolled with it wait for `zt device approve`.
    #[serde(default)]
    pub approval: bool,
    /// Devices enrolled with it may report overridden facts: for tests only.
    #[serde(default)]
    pub test_mode: bool,
}

/// `POST /v1/devices/tokens` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceToken {
    /// The token; shown once, stored only as a hash.
    pub token: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// A device as the admin API shows it: what is stored, with the live tier.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// What the datastore holds.
    #[serde(flatten)]
    pub device: zt_store::Device,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// Its newest events, newest first (`GET /v1/devices/{id}` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<zt_store::DeviceEvent>,
}

/// `GET /v1/devices` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceList {
    /// Every device, by enrollment time.
    pub devices: Vec<DeviceInfo>,
}
