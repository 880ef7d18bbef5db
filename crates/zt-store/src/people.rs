//! People: users, groups and their members, and one-time enrollment invites.
//! A user's `sub` is random and opaque, fixed at creation: names and e-mail
//! addresses may change, the subject of the tokens issued to them never does.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::Row as _;
use sqlx::any::AnyRow;

use crate::{
    Store, StoreError, TokenProblem, is_unique_violation, random_id, random_token, sha256_hex, to_i64, to_u64,
};

/// Longest user or group name, in bytes.
const MAX_NAME_LEN: usize = 64;

/// Shortest and longest password, in characters (NIST SP 800-63B's minimum).
const MIN_PASSWORD_LEN: usize = 8;
const MAX_PASSWORD_LEN: usize = 256;

/// Longest e-mail address (RFC 5321's path limit) or display name, in bytes.
const MAX_TEXT_LEN: usize = 254;

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct User {
    /// The subject of every token issued to this user: 128 random bits, hex.
    pub sub: String,
    /// Unique name, what operators type.
    pub name: String,
    /// The name shown to people.
    pub display_name: String,
    /// Contact address; never an identifier.
    pub email: String,
    /// Whether the user may sign in.
    pub disabled: bool,
    /// The groups the user is a member of, by name, sorted.
    pub groups: Vec<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds.
    pub updated_at: u64,
}

/// What `zt user add` asks for.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Unique name: letters, digits, `.`, `_`, `-`, starting with a letter or digit.
    pub name: String,
    /// Contact address.
    pub email: String,
    /// The name shown to people (default: `name`).
    #[serde(default)]
    pub display_name: Option<String>,
    /// Existing groups to add the user to.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A stored group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Group {
    /// Unique name.
    pub name: String,
    /// How many users are members.
    pub members: u64,
    /// Unix seconds.
    pub created_at: u64,
}

/// A one-time enrollment token, as returned once when made.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Invite {
    /// The user it enrolls, by name.
    pub user: String,
    /// The token: 256 random bits, base64url. Only its SHA-256 is stored.
    pub token: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// Checks a user or group name: 1 to [`MAX_NAME_LEN`] bytes of ASCII letters,
/// digits, `.`, `_` and `-`, starting with a letter or digit.
pub(crate) fn check_name(field: &'static str, name: &str) -> Result<(), StoreError> {
    let invalid = |reason: &str| StoreError::InvalidValue {
        field,
        value: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid(&format!("must be 1 to {MAX_NAME_LEN} characters")));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(invalid(
            "only letters, digits, '.', '_' and '-', starting with a letter or digit",
        ));
    }
    Ok(())
}

/// Checks an e-mail address loosely: one `@` between non-empty parts, no
/// whitespace or control characters. Whether it is deliverable is not our business.
fn check_email(email: &str) -> Result<(), StoreError> {
    let invalid = |reason: &str| StoreError::InvalidValue {
        field: "email",
        value: email.to_owned(),
        reason: reason.to_owned(),
    };
    if email.len() > MAX_TEXT_LEN {
        return Err(invalid(&format!("longer than {MAX_TEXT_LEN} bytes")));
    }
    let well_formed = email
        .split_once('@')
        .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty() && !domain.contains('@'));
    if !well_formed || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("expected local@domain"));
    }
    Ok(())
}

fn check_display_name(name: &str) -> Result<(), StoreError> {
    if name.trim().is_empty() || name.len() > MAX_TEXT_LEN || name.chars().any(char::is_control) {
        return Err(StoreError::InvalidValue {
            field: "display_name",
            value: name.to_owned(),
            reason: format!("must be 1 to {MAX_TEXT_LEN} bytes, without control characters"),
        });
    }
    Ok(())
}

const USER_COLUMNS: &str = "sub, name, display_name, email, disabled_at, created_at, updated_at";

impl Store {
    /// Creates a user with a fresh `sub`, and adds it to `groups` (which must exist).
    pub async fn create_user(&self, new: &NewUser, now: u64) -> Result<User, StoreError> {
        check_name("name", &new.name)?;
        check_email(&new.email)?;
        let display_name = new.display_name.clone().unwrap_or_else(|| new.name.clone());
        check_display_name(&display_name)?;
        let sub = random_id()?;
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO users (sub, name, display_name, email, disabled_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, NULL, $5, $5)",
        )
        .bind(&sub)
        .bind(&new.name)
        .bind(&display_name)
        .bind(&new.email)
        .bind(to_i64(now))
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e) if is_unique_violation(&e) => return Err(StoreError::duplicate("user", &new.name)),
            other => other?,
        };
        let mut groups = new.groups.clone();
        groups.sort();
        groups.dedup();
        for group in &groups {
            insert_member(&mut tx, group, &sub, now).await?;
        }
        self.record_change(&mut tx, "user", &sub, now).await?;
        tx.commit().await?;
        self.notify_local();
        Ok(User {
            sub,
            name: new.name.clone(),
            display_name,
            email: new.email.clone(),
            disabled: false,
            groups,
            created_at: now,
            updated_at: now,
        })
    }

    /// The user with this name, with its groups.
    pub async fn user(&self, name: &str) -> Result<User, StoreError> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE name = $1"))
            .bind(name)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::missing("user", name))?;
        let mut user = user_from_row(&row)?;
        let groups = sqlx::query("SELECT group_name FROM group_members WHERE sub = $1 ORDER BY group_name")
            .bind(&user.sub)
            .fetch_all(self.pool())
            .await?;
        user.groups = groups
            .iter()
            .map(|row| row.try_get("group_name"))
            .collect::<Result<_, _>>()?;
        Ok(user)
    }

    /// Every user, by name, with their groups.
    pub async fn users(&self) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY name"))
            .fetch_all(self.pool())
            .await?;
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for row in sqlx::query("SELECT sub, group_name FROM group_members ORDER BY group_name")
            .fetch_all(self.pool())
            .await?
        {
            groups
                .entry(row.try_get("sub")?)
                .or_default()
                .push(row.try_get("group_name")?);
        }
        rows.iter()
            .map(|row| {
                let mut user = user_from_row(row)?;
                user.groups = groups.remove(&user.sub).unwrap_or_default();
                Ok(user)
            })
            .collect()
    }

    /// Disables a user: in the same transaction, every session of theirs and
    /// every refresh-token family of those sessions is revoked.
    pub async fn disable_user(&self, name: &str, now: u64) -> Result<User, StoreError> {
        let mut tx = self.begin_write().await?;
        let sub = sub_of(&mut tx, name).await?;
        sqlx::query(
            "UPDATE users SET disabled_at = $1, updated_at = $1 WHERE sub = $2 AND disabled_at IS NULL",
        )
        .bind(to_i64(now))
        .bind(&sub)
        .execute(&mut *tx)
        .await?;
        self.revoke_sessions_of(&mut tx, &sub, "user disabled", now)
            .await?;
        self.record_change(&mut tx, "user", &sub, now).await?;
        tx.commit().await?;
        self.notify_local();
        self.user(name).await
    }

    /// Enables a disabled user. Sessions revoked when it was disabled stay revoked.
    pub async fn enable_user(&self, name: &str, now: u64) -> Result<User, StoreError> {
        let mut tx = self.begin_write().await?;
        let sub = sub_of(&mut tx, name).await?;
        sqlx::query(
            "UPDATE users SET disabled_at = NULL, updated_at = $1 WHERE sub = $2 AND disabled_at IS NOT NULL",
        )
        .bind(to_i64(now))
        .bind(&sub)
        .execute(&mut *tx)
        .await?;
        self.record_change(&mut tx, "user", &sub, now).await?;
        tx.commit().await?;
        self.notify_local();
        self.user(name).await
    }

    /// Deletes a user with everything of theirs: memberships, credentials,
    /// sessions, refresh-token families, invites. Returns what the user was.
    pub async fn delete_user(&self, name: &str, now: u64) -> Result<User, StoreError> {
        let user = self.user(name).await?;
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query("DELETE FROM users WHERE sub = $1")
            .bind(&user.sub)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::missing("user", name));
        }
        self.record_change(&mut tx, "user", &user.sub, now).await?;
        tx.commit().await?;
        self.notify_local();
        Ok(user)
    }

    /// Creates an empty group.
    pub async fn create_group(&self, name: &str, now: u64) -> Result<Group, StoreError> {
        check_name("group", name)?;
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query("INSERT INTO user_groups (name, created_at) VALUES ($1, $2)")
            .bind(name)
            .bind(to_i64(now))
            .execute(&mut *tx)
            .await;
        match inserted {
            Err(e) if is_unique_violation(&e) => return Err(StoreError::duplicate("group", name)),
            other => other?,
        };
        self.record_change(&mut tx, "group", name, now).await?;
        tx.commit().await?;
        self.notify_local();
        Ok(Group {
            name: name.to_owned(),
            members: 0,
            created_at: now,
        })
    }

    /// Every group, by name, with its number of members.
    pub async fn groups(&self) -> Result<Vec<Group>, StoreError> {
        let rows = sqlx::query(
            "SELECT g.name, g.created_at, COUNT(m.sub) AS members FROM user_groups g \
             LEFT JOIN group_members m ON m.group_name = g.name \
             GROUP BY g.name, g.created_at ORDER BY g.name",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Group {
                    name: row.try_get("name")?,
                    members: to_u64(row.try_get("members")?),
                    created_at: to_u64(row.try_get("created_at")?),
                })
            })
            .collect()
    }

    /// Deletes a group; its members lose the membership, nothing else.
    pub async fn delete_group(&self, name: &str, now: u64) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query("DELETE FROM user_groups WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::missing("group", name));
        }
        self.record_change(&mut tx, "group", name, now).await?;
        tx.commit().await?;
        self.notify_local();
        Ok(())
    }

    /// The members of a group, by user name.
    pub async fn group_members(&self, group: &str) -> Result<Vec<String>, StoreError> {
        let exists = sqlx::query("SELECT name FROM user_groups WHERE name = $1")
            .bind(group)
            .fetch_optional(self.pool())
            .await?;
        if exists.is_none() {
            return Err(StoreError::missing("group", group));
        }
        let rows = sqlx::query(
            "SELECT u.name FROM group_members m JOIN users u ON u.sub = m.sub \
             WHERE m.group_name = $1 ORDER BY u.name",
        )
        .bind(group)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|row| row.try_get("name"))
            .collect::<Result<_, _>>()?)
    }

    /// Adds a user to a group; adding a member again changes nothing.
    pub async fn add_member(&self, group: &str, user: &str, now: u64) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let sub = sub_of(&mut tx, user).await?;
        let already = sqlx::query("SELECT sub FROM group_members WHERE group_name = $1 AND sub = $2")
            .bind(group)
            .bind(&sub)
            .fetch_optional(&mut *tx)
            .await?;
        if already.is_none() {
            insert_member(&mut tx, group, &sub, now).await?;
            self.record_change(&mut tx, "user", &sub, now).await?;
            tx.commit().await?;
            self.notify_local();
        }
        Ok(())
    }

    /// Removes a user from a group; refused if the user is not a member.
    pub async fn remove_member(&self, group: &str, user: &str, now: u64) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let sub = sub_of(&mut tx, user).await?;
        let removed = sqlx::query("DELETE FROM group_members WHERE group_name = $1 AND sub = $2")
            .bind(group)
            .bind(&sub)
            .execute(&mut *tx)
            .await?;
        if removed.rows_affected() == 0 {
            return Err(StoreError::missing("member", &format!("{user} of group {group}")));
        }
        self.record_change(&mut tx, "user", &sub, now).await?;
        tx.commit().await?;
        self.notify_local();
        Ok(())
    }

    /// Makes a one-time enrollment token for a user, valid for `ttl`; only its
    /// SHA-256 is stored. A disabled user gets none.
    pub async fn create_invite(&self, user: &str, ttl: Duration, now: u64) -> Result<Invite, StoreError> {
        let token = random_token()?;
        let expires_at = now.saturating_add(ttl.as_secs());
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("SELECT sub, disabled_at FROM users WHERE name = $1")
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::missing("user", user))?;
        let sub: String = row.try_get("sub")?;
        if row.try_get::<Option<i64>, _>("disabled_at")?.is_some() {
            return Err(StoreError::Disabled(user.to_owned()));
        }
        sqlx::query(
            "INSERT INTO invites (token_sha256, sub, created_at, expires_at, used_at) VALUES ($1, $2, $3, $4, NULL)",
        )
        .bind(sha256_hex(&token))
        .bind(&sub)
        .bind(to_i64(now))
        .bind(to_i64(expires_at))
        .execute(&mut *tx)
        .await?;
        self.record_change(&mut tx, "invite", &sub, now).await?;
        tx.commit().await?;
        self.notify_local();
        Ok(Invite {
            user: user.to_owned(),
            token,
            expires_at,
        })
    }

    /// Uses an invite: succeeds once, before expiry, for a user still enabled;
    /// returns the user's `sub`.
    pub async fn consume_invite(&self, token: &str, now: u64) -> Result<String, StoreError> {
        let mut tx = self.begin_write().await?;
        let sub = consume_invite_in(&mut tx, token, now).await?;
        self.record_change(&mut tx, "invite", &sub, now).await?;
        tx.commit().await?;
        self.notify_local();
        Ok(sub)
    }

    /// The user an invite enrolls, if it could be used now (unused, unexpired,
    /// the user enabled); the invite stays unused.
    pub async fn invite_user(&self, token: &str, now: u64) -> Result<User, StoreError> {
        let row = sqlx::query(
            "SELECT u.name, i.expires_at, i.used_at, u.disabled_at FROM invites i JOIN users u ON u.sub = i.sub \
             WHERE i.token_sha256 = $1",
        )
        .bind(sha256_hex(token))
        .fetch_optional(self.pool())
        .await?
        .ok_or(StoreError::Invite(TokenProblem::Unknown))?;
        let name: String = row.try_get("name")?;
        if row.try_get::<Option<i64>, _>("disabled_at")?.is_some() {
            return Err(StoreError::Disabled(name));
        }
        if row.try_get::<Option<i64>, _>("used_at")?.is_some() {
            return Err(StoreError::Invite(TokenProblem::Used));
        }
        if to_u64(row.try_get("expires_at")?) <= now {
            return Err(StoreError::Invite(TokenProblem::Expired));
        }
        self.user(&name).await
    }

    /// Sets (or, with `None`, removes) a user's password, stored as argon2id.
    /// Passwords are a weaker factor than passkeys, used only where a
    /// deployment enables them.
    pub async fn set_password(&self, user: &str, password: Option<&str>, now: u64) -> Result<(), StoreError> {
        if let Some(password) = password
            && !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&password.chars().count())
        {
            return Err(StoreError::InvalidValue {
                field: "password",
                value: String::new(),
                reason: format!("must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters"),
            });
        }
        let hash = match password {
            Some(password) => Some(crate::clients::hash_secret(password.to_owned()).await?),
            None => None,
        };
        let mut tx = self.begin_write().await?;
        let sub = sub_of(&mut tx, user).await?;
        sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE sub = $3")
            .bind(hash)
            .bind(to_i64(now))
            .bind(&sub)
            .execute(&mut *tx)
            .await?;
        self.record_change(&mut tx, "user", &sub, now).await?;
        tx.commit().await?;
        self.notify_local();
        Ok(())
    }

    /// The enabled user `name` whose password is `password`, if both match;
    /// as slow for an unknown name as for a known one.
    pub async fn check_password(&self, name: &str, password: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT password_hash FROM users WHERE name = $1 AND disabled_at IS NULL")
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        let hash = row
            .map(|row| row.try_get::<Option<String>, _>("password_hash"))
            .transpose()?
            .flatten();
        if crate::clients::check_secret(hash, password, "password hash", name).await? {
            Ok(Some(self.user(name).await?))
        } else {
            Ok(None)
        }
    }
}

/// The `sub` of the user named `name`, inside `tx`.
/// Marks an invite used inside `tx`: succeeds once, before expiry, for a user
/// still enabled; returns the user's `sub`. Two concurrent uses cannot both
/// succeed: the conditional UPDATE is the arbiter.
pub(crate) async fn consume_invite_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    token: &str,
    now: u64,
) -> Result<String, StoreError> {
    let hash = sha256_hex(token);
    let used = sqlx::query(
        "UPDATE invites SET used_at = $1 WHERE token_sha256 = $2 AND used_at IS NULL AND expires_at > $1 \
         AND sub IN (SELECT sub FROM users WHERE disabled_at IS NULL)",
    )
    .bind(to_i64(now))
    .bind(&hash)
    .execute(&mut **tx)
    .await?;
    let row = sqlx::query(
        "SELECT i.sub, i.expires_at, u.disabled_at FROM invites i JOIN users u ON u.sub = i.sub \
         WHERE i.token_sha256 = $1",
    )
    .bind(&hash)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(StoreError::Invite(TokenProblem::Unknown))?;
    let sub: String = row.try_get("sub")?;
    if used.rows_affected() == 0 {
        if row.try_get::<Option<i64>, _>("disabled_at")?.is_some() {
            return Err(StoreError::Disabled(sub));
        }
        let expired = to_u64(row.try_get("expires_at")?) <= now;
        return Err(StoreError::Invite(if expired {
            TokenProblem::Expired
        } else {
            TokenProblem::Used
        }));
    }
    Ok(sub)
}

pub(crate) async fn sub_of(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    name: &str,
) -> Result<String, StoreError> {
    let row = sqlx::query("SELECT sub FROM users WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::missing("user", name))?;
    Ok(row.try_get("sub")?)
}

async fn insert_member(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    group: &str,
    sub: &str,
    now: u64,
) -> Result<(), StoreError> {
    let exists = sqlx::query("SELECT name FROM user_groups WHERE name = $1")
        .bind(group)
        .fetch_optional(&mut **tx)
        .await?;
    if exists.is_none() {
        return Err(StoreError::missing("group", group));
    }
    sqlx::query("INSERT INTO group_members (group_name, sub, added_at) VALUES ($1, $2, $3)")
        .bind(group)
        .bind(sub)
        .bind(to_i64(now))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn user_from_row(row: &AnyRow) -> Result<User, StoreError> {
    Ok(User {
        sub: row.try_get("sub")?,
        name: row.try_get("name")?,
        display_name: row.try_get("display_name")?,
        email: row.try_get("email")?,
        disabled: row.try_get::<Option<i64>, _>("disabled_at")?.is_some(),
        groups: Vec::new(),
        created_at: to_u64(row.try_get("created_at")?),
        updated_at: to_u64(row.try_get("updated_at")?),
    })
}
