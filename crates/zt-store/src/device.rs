//! The device authorization grant's requests (RFC 8628): a device (a CLI, a
//! TV) gets a device code, which it polls with, and a short user code, which
//! a person types on a browser where they sign in and approve. The device
//! code is 256 random bits, stored only as SHA-256; the user code is 8
//! characters from an alphabet without vowels or look-alikes (§6.1), about
//! 34.6 bits: guessing is left to the verification page's rate limit.

use sqlx::Row as _;

use crate::{
    Session, Store, StoreError, User, is_unique_violation, random_token, sha256_hex, to_i64, to_u64,
};

/// The user code's alphabet: consonants only, so no word is spelled and no
/// two characters look alike (RFC 8628 §6.1).
pub const USER_CODE_ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";
/// Characters in a user code.
const USER_CODE_LEN: usize = 8;
/// Seconds a device polling too fast must add to its interval (§3.5).
const SLOW_DOWN_SECS: u64 = 5;

/// A device authorization request just made: the device code (shown only
/// now) and the user code, as `XXXX-XXXX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCode {
    /// 256 random bits, base64url.
    pub device_code: String,
    /// What the person types, `XXXX-XXXX`.
    pub user_code: String,
}

/// A pending request as the verification page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRequest {
    /// The client that asked.
    pub client_id: String,
    /// The scope asked for.
    pub scope: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// What a device's poll finds (RFC 8628 §3.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevicePoll {
    /// No one has approved or denied yet.
    Pending,
    /// Polled sooner than the interval allows: the interval is now longer.
    SlowDown,
    /// The request expired.
    Expired,
    /// The person denied it.
    Denied,
    /// Unknown, another client's, or already redeemed.
    Invalid,
    /// Approved in this session, redeemed now (once).
    Approved {
        /// The scope asked for.
        scope: String,
        /// The session that approved it.
        session: Box<Session>,
        /// Its user.
        user: Box<User>,
    },
}

/// `XXXX-XXXX` or any casing, dashes and spaces: the stored form, if it can be a user code.
fn normalize_user_code(typed: &str) -> Option<String> {
    let code: String = typed
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (code.len() == USER_CODE_LEN && code.bytes().all(|b| USER_CODE_ALPHABET.contains(&b))).then_some(code)
}

fn random_user_code() -> Result<String, StoreError> {
    let mut code = String::with_capacity(USER_CODE_LEN);
    let limit = 256 - 256 % USER_CODE_ALPHABET.len(); // no modulo bias
    while code.len() < USER_CODE_LEN {
        let mut bytes = [0u8; 16];
        aws_lc_rs::rand::fill(&mut bytes)
            .map_err(|_| sqlx::Error::Protocol("random number generator failed".into()))?;
        for b in bytes {
            if usize::from(b) < limit && code.len() < USER_CODE_LEN {
                code.push(char::from(
                    USER_CODE_ALPHABET[usize::from(b) % USER_CODE_ALPHABET.len()],
                ));
            }
        }
    }
    Ok(code)
}

impl Store {
    /// Stores a device authorization request of `client_id` for `scope`.
    pub async fn create_device_code(
        &self,
        client_id: &str,
        scope: &str,
        expires_at: u64,
        interval: u64,
        now: u64,
    ) -> Result<DeviceCode, StoreError> {
        let device_code = random_token()?;
        // A collision of user codes among the live ones is rare; try again.
        for _ in 0..4 {
            let user_code = random_user_code()?;
            let inserted = sqlx::query(
                "INSERT INTO device_codes (device_code_sha256, user_code, client_id, scope, created_at, \
                 expires_at, interval_secs, last_poll_at, session_id, denied_at, redeemed_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, NULL, NULL)",
            )
            .bind(sha256_hex(&device_code))
            .bind(&user_code)
            .bind(client_id)
            .bind(scope)
            .bind(to_i64(now))
            .bind(to_i64(expires_at))
            .bind(to_i64(interval))
            .execute(self.pool())
            .await;
            match inserted {
                Ok(_) => {
                    return Ok(DeviceCode {
                        device_code,
                        user_code: format!("{}-{}", &user_code[..4], &user_code[4..]),
                    });
                }
                Err(e) if is_unique_violation(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::duplicate("user code", "(four random tries)"))
    }

    /// The request a person's typed user code names, if it is still waiting.
    pub async fn device_request(
        &self,
        user_code: &str,
        now: u64,
    ) -> Result<Option<DeviceRequest>, StoreError> {
        let Some(code) = normalize_user_code(user_code) else {
            return Ok(None);
        };
        let row = sqlx::query(
            "SELECT client_id, scope, expires_at FROM device_codes WHERE user_code = $1 AND expires_at > $2 \
             AND session_id IS NULL AND denied_at IS NULL",
        )
        .bind(&code)
        .bind(to_i64(now))
        .fetch_optional(self.pool())
        .await?;
        row.map(|row| {
            Ok(DeviceRequest {
                client_id: row.try_get("client_id")?,
                scope: row.try_get("scope")?,
                expires_at: to_u64(row.try_get("expires_at")?),
            })
        })
        .transpose()
    }

    /// A person's answer to the request of `user_code`: approved in
    /// `session_id`, or denied (`None`). `false` if it was no longer waiting.
    pub async fn answer_device_request(
        &self,
        user_code: &str,
        session_id: Option<&str>,
        now: u64,
    ) -> Result<bool, StoreError> {
        let Some(code) = normalize_user_code(user_code) else {
            return Ok(false);
        };
        let answered = match session_id {
            Some(session_id) => sqlx::query(
                "UPDATE device_codes SET session_id = $1 WHERE user_code = $2 AND expires_at > $3 \
                 AND session_id IS NULL AND denied_at IS NULL",
            )
            .bind(session_id),
            None => sqlx::query(
                "UPDATE device_codes SET denied_at = $1 WHERE user_code = $2 AND expires_at > $3 \
                 AND session_id IS NULL AND denied_at IS NULL",
            )
            .bind(to_i64(now)),
        }
        .bind(&code)
        .bind(to_i64(now))
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(answered == 1)
    }

    /// A device's poll with `device_code` as `client_id`: see [`DevicePoll`].
    /// An approved request is redeemed once, and only while its session is
    /// open and its user enabled.
    pub async fn poll_device_code(
        &self,
        device_code: &str,
        client_id: &str,
        now: u64,
    ) -> Result<DevicePoll, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT client_id, scope, expires_at, interval_secs, last_poll_at, session_id, denied_at, redeemed_at \
             FROM device_codes WHERE device_code_sha256 = $1",
        )
        .bind(sha256_hex(device_code))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(DevicePoll::Invalid);
        };
        if row.try_get::<String, _>("client_id")? != client_id
            || row.try_get::<Option<i64>, _>("redeemed_at")?.is_some()
        {
            return Ok(DevicePoll::Invalid);
        }
        if to_u64(row.try_get("expires_at")?) <= now {
            return Ok(DevicePoll::Expired);
        }
        let interval = to_u64(row.try_get("interval_secs")?);
        let too_soon = row
            .try_get::<Option<i64>, _>("last_poll_at")?
            .is_some_and(|last| now < to_u64(last).saturating_add(interval));
        let (set_interval, outcome) = if too_soon {
            (interval + SLOW_DOWN_SECS, Some(DevicePoll::SlowDown))
        } else if row.try_get::<Option<i64>, _>("denied_at")?.is_some() {
            (interval, Some(DevicePoll::Denied))
        } else if row.try_get::<Option<String>, _>("session_id")?.is_none() {
            (interval, Some(DevicePoll::Pending))
        } else {
            (interval, None)
        };
        sqlx::query(
            "UPDATE device_codes SET last_poll_at = $1, interval_secs = $2 WHERE device_code_sha256 = $3",
        )
        .bind(to_i64(now))
        .bind(to_i64(set_interval))
        .bind(sha256_hex(device_code))
        .execute(&mut *tx)
        .await?;
        if outcome.is_none() {
            sqlx::query("UPDATE device_codes SET redeemed_at = $1 WHERE device_code_sha256 = $2")
                .bind(to_i64(now))
                .bind(sha256_hex(device_code))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        if let Some(outcome) = outcome {
            return Ok(outcome);
        }
        let session_id: String = row.try_get("session_id")?;
        let (session, user) = self.session(&session_id).await?;
        if !session.is_open(now) || user.disabled {
            return Ok(DevicePoll::Denied);
        }
        Ok(DevicePoll::Approved {
            scope: row.try_get("scope")?,
            session: Box::new(session),
            user: Box::new(user),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes_are_eight_unambiguous_characters_typed_any_way() {
        for _ in 0..100 {
            let code = random_user_code().unwrap();
            assert_eq!(normalize_user_code(&code), Some(code.clone()));
        }
        assert_eq!(normalize_user_code("bcdf-ghjk"), Some("BCDFGHJK".into()));
        assert_eq!(normalize_user_code("BCDF GHJK"), Some("BCDFGHJK".into()));
        assert_eq!(normalize_user_code("BCDF-GHJA"), None, "a vowel");
        assert_eq!(normalize_user_code("BCDF-GHJ"), None, "too short");
        assert_eq!(normalize_user_code("BCDF-GHJ0"), None, "a digit");
    }
}
