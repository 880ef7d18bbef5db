//! The admin API's routes for people: users, groups and their members,
//! enrollment invites, credentials, sessions and OAuth clients. Secrets made
//! here (invites, client secrets) are in the answer once and in no log.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use zt_store::{NewClient, NewUser};

use crate::admin::{AdminState, ApiError, ApiResult, json, store_error};
use crate::api::{
    ClientList, CreateInvite, CredentialList, GroupList, MemberList, NewGroup, RevokedSessions,
    SessionFilter, SessionList, SetPassword, UserList,
};
use crate::now;
use zt_idp::events::Event;

/// Longest invite validity accepted: one day. An invite is a bearer credential
/// for a first passkey; the default is 15 minutes.
pub const MAX_INVITE_TTL: u64 = 24 * 3600;

/// Why an operator's revocation happened, for the record.
const OPERATOR: &str = "revoked by an operator";

/// The people routes, merged into the admin router.
pub(crate) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/v1/users", post(create_user).get(list_users))
        .route("/v1/users/{name}", get(show_user).delete(delete_user))
        .route("/v1/users/{name}/disable", post(disable_user))
        .route("/v1/users/{name}/enable", post(enable_user))
        .route("/v1/users/{name}/invites", post(create_invite))
        .route("/v1/users/{name}/password", post(set_password))
        .route("/v1/users/{name}/credentials", get(list_credentials))
        .route("/v1/users/{name}/sessions/revoke", post(revoke_user_sessions))
        .route("/v1/credentials/{id}/revoke", post(revoke_credential))
        .route("/v1/groups", post(create_group).get(list_groups))
        .route("/v1/groups/{name}", axum::routing::delete(delete_group))
        .route("/v1/groups/{name}/members", get(list_members))
        .route(
            "/v1/groups/{name}/members/{user}",
            put(add_member).delete(remove_member),
        )
        .route("/v1/clients", post(create_client).get(list_clients))
        .route("/v1/clients/{id}", get(show_client).delete(delete_client))
        .route("/v1/sessions", get(list_sessions))
        .route("/v1/sessions/{id}/revoke", post(revoke_session))
}

async fn create_user(State(state): State<AdminState>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let new: NewUser = json(&body)?;
    let user = state
        .store
        .create_user(&new, now())
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    tracing::info!(target: "zt::audit", user = %user.name, sub = %user.sub, "user created");
    Ok((StatusCode::CREATED, axum::Json(user)))
}

async fn list_users(State(state): State<AdminState>) -> ApiResult<axum::Json<UserList>> {
    let users = state
        .store
        .users()
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    Ok(axum::Json(UserList { users }))
}

async fn show_user(
    State(state): State<AdminState>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<impl IntoResponse> {
    let user = state
        .store
        .user(&name)
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    Ok(axum::Json(user))
}

async fn delete_user(
    State(state): State<AdminState>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<impl IntoResponse> {
    let user = state
        .store
        .delete_user(&name, now())
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    tracing::info!(target: "zt::audit", user = %user.name, sub = %user.sub, "user deleted");
    record(
        &state,
        Event::success("user_deleted", "user deleted by an admin")
            .with("user", user.name.as_str())
            .with("sub", user.sub.as_str()),
    );
    Ok(axum::Json(user))
}

async fn disable_user(
    State(state): State<AdminState>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<impl IntoResponse> {
    let user = state
        .store
        .disable_user(&name, now())
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    tracing::info!(target: "zt::audit", user = %user.name, sub = %user.sub, "user disabled; sessions revoked");
    record(
        &state,
        Event::success(
            "user_disabled",
            "user disabled by an admin: every session and refresh token revoked",
        )
        .with("user", user.name.as_str())
        .with("sub", user.sub.as_str()),
    );
    Ok(axum::Json(user))
}

async fn enable_user(
    State(state): State<AdminState>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<impl IntoResponse> {
    let user = state
        .store
        .enable_user(&name, now())
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    tracing::info!(target: "zt::audit", user = %user.name, sub = %user.sub, "user enabled");
    record(
        &state,
        Event::success("user_enabled", "user enabled by an admin")
            .with("user", user.name.as_str())
            .with("sub", user.sub.as_str()),
    );
    Ok(axum::Json(user))
}

async fn create_invite(
    State(state): State<AdminState>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let request: CreateInvite = json(&body)?;
    if request.ttl_secs == 0 || request.ttl_secs > MAX_INVITE_TTL {
        return Err(ApiError::bad_request(format!(
            "ttl {}s is not between 1s and {MAX_INVITE_TTL}s ({}h)",
            request.ttl_secs,
            MAX_INVITE_TTL / 3600
        )));
    }
    let invite = state
        .store
        .create_invite(&name, Duration::from_secs(request.ttl_secs), now())
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    tracing::info!(target: "zt::audit", user = %name, expires_at = invite.expires_at, "invite created");
    let url = state
        .idp
        .as_ref()
        .map(|idp| format!("{}/enroll?invite={}", idp.config().issuer, invite.token));
    Ok((
        StatusCode::CREATED,
        axum::Json(crate::api::Invite {
            user: invite.user,
            token: invite.token,
            expires_at: invite.expires_at,
            url,
        }),
    ))
}

async fn set_password(
    State(state): State<AdminState>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let request: SetPassword = json(&body)?;
    state
        .store
        .set_password(&name, request.password.as_deref(), now())
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    let what = if request.password.is_some() {
        "set"
    } else {
        "removed"
    };
    tracing::info!(target: "zt::audit", user = %name, "password {what}");
    record(
        &state,
        Event::success(
            if request.password.is_some() {
                "password_set"
            } else {
                "password_removed"
            },
            "password changed by an admin",
        )
        .with("user", name.as_str()),
    );
    Ok(StatusCode::NO_CONTENT)
}

async fn list_credentials(
    State(state): State<AdminState>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<axum::Json<CredentialList>> {
    let credentials = state
        .store
        .credentials(&name)
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    Ok(axum::Json(CredentialList { credentials }))
}

async fn revoke_credential(
    State(state): State<AdminState>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<impl IntoResponse> {
    let credential = state
        .store
        .revoke_credential(&id, now())
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    tracing::info!(target: "zt::audit", credential = %credential.id, user = %credential.user, "credential revoked");
    record(
        &state,
        Event::success("credential_revoked", "credential revoked by an admin")
            .with("user", credential.user.as_str())
            .with("credential", credential.id.as_str()),
    );
    Ok(axum::Json(credential))
}

async fn create_group(State(state): State<AdminState>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let request: NewGroup = json(&body)?;
    let group = state
        .store
        .create_group(&request.name, now())
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    tracing::info!(target: "zt::audit", group = %group.name, "group created");
    Ok((StatusCode::CREATED, axum::Json(group)))
}

async fn list_groups(State(state): State<AdminState>) -> ApiResult<axum::Json<GroupList>> {
    let groups = state
        .store
        .groups()
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    Ok(axum::Json(GroupList { groups }))
}

async fn delete_group(
    State(state): State<AdminState>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<StatusCode> {
    state
        .store
        .delete_group(&name, now())
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    tracing::info!(target: "zt::audit", group = %name, "group deleted");
    Ok(StatusCode::NO_CONTENT)
}

async fn list_members(
    State(state): State<AdminState>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<axum::Json<MemberList>> {
    let members = state
        .store
        .group_members(&name)
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    Ok(axum::Json(MemberList { group: name, members }))
}

async fn add_member(
    State(state): State<AdminState>,
    UrlPath((group, user)): UrlPath<(String, String)>,
) -> ApiResult<StatusCode> {
    state
        .store
        .add_member(&group, &user, now())
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    tracing::info!(target: "zt::audit", %group, %user, "member added");
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_member(
    State(state): State<AdminState>,
    UrlPath((group, user)): UrlPath<(String, String)>,
) -> ApiResult<StatusCode> {
    state
        .store
        .remove_member(&group, &user, now())
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    tracing::info!(target: "zt::audit", %group, %user, "member removed");
    Ok(StatusCode::NO_CONTENT)
}

async fn create_client(State(state): State<AdminState>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let new: NewClient = json(&body)?;
    if new.kind == zt_store::ClientKind::Spiffe
        && zt_identity::SpiffeId::parse(&new.client_id)
            .is_ok_and(|id| id.trust_domain() != &state.trust_domain)
    {
        return Err(ApiError::bad_request(format!(
            "client_id {}: not in this server's trust domain {}",
            new.client_id, state.trust_domain
        )));
    }
    let created = state
        .store
        .create_client(&new, now())
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    tracing::info!(target: "zt::audit", client = %created.client.client_id, kind = ?created.client.kind, "client created");
    Ok((StatusCode::CREATED, axum::Json(created)))
}

async fn list_clients(State(state): State<AdminState>) -> ApiResult<axum::Json<ClientList>> {
    let clients = state
        .store
        .clients()
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    Ok(axum::Json(ClientList { clients }))
}

async fn show_client(
    State(state): State<AdminState>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<impl IntoResponse> {
    let client = state
        .store
        .client(&id)
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    Ok(axum::Json(client))
}

async fn delete_client(
    State(state): State<AdminState>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<impl IntoResponse> {
    let client = state
        .store
        .delete_client(&id, now())
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    tracing::info!(target: "zt::audit", client = %client.client_id, "client deleted");
    Ok(axum::Json(client))
}

async fn list_sessions(
    State(state): State<AdminState>,
    Query(filter): Query<SessionFilter>,
) -> ApiResult<axum::Json<SessionList>> {
    let sessions = state
        .store
        .sessions(filter.user.as_deref())
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    Ok(axum::Json(SessionList { sessions }))
}

async fn revoke_session(
    State(state): State<AdminState>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<impl IntoResponse> {
    let session = state
        .store
        .revoke_session(&id, OPERATOR, now())
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    tracing::info!(target: "zt::audit", session = %session.id, user = %session.user, "session revoked");
    record(
        &state,
        Event::success(
            "session_revoked",
            "session revoked by an admin: its refresh tokens too",
        )
        .with("user", session.user.as_str())
        .with("session", session.id.as_str()),
    );
    Ok(axum::Json(session))
}

async fn revoke_user_sessions(
    State(state): State<AdminState>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<axum::Json<RevokedSessions>> {
    let revoked = state
        .store
        .revoke_user_sessions(&name, OPERATOR, now())
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    tracing::info!(target: "zt::audit", user = %name, revoked, "sessions revoked");
    record(
        &state,
        Event::success("session_revoked", "every session of the user revoked by an admin")
            .with("user", name.as_str())
            .with("sessions", revoked),
    );
    Ok(axum::Json(RevokedSessions { user: name, revoked }))
}

/// Records what an admin did to a person in the OpenID Provider's
/// authentication-event log, when it runs. The change is already committed:
/// a log that cannot be written is reported, not undone.
fn record(state: &AdminState, event: Event) {
    if let Some(idp) = &state.idp
        && let Err(e) = idp.auth_events().record(event.with("by", "admin"))
    {
        tracing::error!(
            error = e.description(),
            "recording an admin's change to people in the decision log failed"
        );
    }
}
