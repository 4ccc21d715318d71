//! Two-factor rules and writes: enrolment (start, confirm), checking a code at the second
//! sign-in step, regenerating recovery codes, disabling, an admin's reset. Every write is
//! audited (`user.2fa.*`) in its transaction; no secret or code ever reaches the audit, a log
//! line or an error message.

use zeroize::Zeroizing;

use super::{
    Challenge, check_code, hash_recovery_code, looks_like_totp, new_recovery_codes, new_secret, otpauth_url,
    qr_data_url, store, totp,
};
use crate::app::AppState;
use crate::audit;
use crate::db::now_ms;
use crate::users::{Principal, UserError, store as users_store};

/// What the account page shows about a person's two-factor.
#[derive(Debug, Clone, Copy, Default)]
pub struct Status {
    pub enabled: bool,
    pub pending: bool,
    pub recovery_left: i64,
}

pub async fn status(state: &AppState, user_id: i64) -> Result<Status, UserError> {
    state
        .db
        .read(move |c| {
            let row = store::get(c, user_id)?;
            Ok::<_, UserError>(Status {
                enabled: row.as_ref().is_some_and(|r| r.enabled_at.is_some()),
                pending: row.as_ref().is_some_and(|r| r.enabled_at.is_none()),
                recovery_left: store::unused_recovery_codes(c, user_id)?,
            })
        })
        .await
}

fn vault_error(e: crate::secrets::vault::VaultError) -> UserError {
    UserError::Internal(format!("two-factor secret: {e}"))
}

fn me(who: &Principal) -> Result<i64, UserError> {
    who.user_id.ok_or(UserError::NotFound)
}

const ON_ALREADY: &str = "two-factor authentication is on already; disable it first to enrol another device";
const NOT_PENDING: &str = "no two-factor enrolment is in progress: start it again";
const OFF: &str = "two-factor authentication is off for this account";

/// Start (or restart) enrolment: a new secret, pending until a code confirms it.
pub async fn start(state: &AppState, who: &Principal) -> Result<(), UserError> {
    let user_id = me(who)?;
    let secret = new_secret();
    let sealed = state.vault.encrypt(&secret).map_err(vault_error)?;
    let started = state
        .db
        .write(move |tx| Ok::<_, UserError>(store::put_pending(tx, user_id, &sealed, now_ms())?))
        .await?;
    if !started {
        return Err(UserError::TwoFactorState(ON_ALREADY));
    }
    Ok(())
}

/// A pending enrolment as the page shows it: the secret for manual entry and its QR code.
pub struct Enrolment {
    pub secret: Zeroizing<String>,
    pub qr_data_url: String,
}

/// The pending enrolment of the signed-in person, if any.
pub async fn pending(state: &AppState, who: &Principal) -> Result<Option<Enrolment>, UserError> {
    let user_id = me(who)?;
    let (row, user) = state
        .db
        .read(move |c| Ok::<_, UserError>((store::get(c, user_id)?, users_store::get(c, user_id)?)))
        .await?;
    let Some(row) = row.filter(|r| r.enabled_at.is_none()) else {
        return Ok(None);
    };
    let secret = state.vault.decrypt(&row.secret_encrypted).map_err(vault_error)?;
    let url = otpauth_url(&totp(&secret, &user.username)?)?;
    Ok(Some(Enrolment {
        qr_data_url: qr_data_url(&url)?,
        secret,
    }))
}

/// Reserve a code attempt on the account's second-factor limit.
fn reserve(state: &AppState, user_id: i64) -> Result<crate::users::limiter::Reservation, UserError> {
    state
        .auth
        .second_factor
        .reserve(&format!("user:{user_id}"), "", now_ms())
        .map_err(|wait| {
            tracing::info!(user_id, "two-factor code refused before checking: rate limited");
            UserError::RateLimited {
                retry_after_secs: wait,
            }
        })
}

/// The TOTP step `code` matches for this person's stored secret (pending or enabled).
async fn matching_step(
    state: &AppState,
    user_id: i64,
    code: &str,
    enabled: bool,
) -> Result<Option<i64>, UserError> {
    let (row, user) = state
        .db
        .read(move |c| Ok::<_, UserError>((store::get(c, user_id)?, users_store::get(c, user_id)?)))
        .await?;
    let row = match row {
        Some(r) if r.enabled_at.is_some() == enabled => r,
        _ => return Err(UserError::TwoFactorState(if enabled { OFF } else { NOT_PENDING })),
    };
    let secret = state.vault.decrypt(&row.secret_encrypted).map_err(vault_error)?;
    let t = totp(&secret, &user.username)?;
    let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
    Ok(check_code(&t, code, now).and_then(|s| i64::try_from(s).ok()))
}

/// Confirm enrolment with a current code: two-factor is on, and here are the recovery codes
/// (shown once, stored hashed).
pub async fn confirm(
    state: &AppState,
    who: &Principal,
    code: &str,
) -> Result<Vec<Zeroizing<String>>, UserError> {
    let user_id = me(who)?;
    let reservation = reserve(state, user_id)?;
    let Some(step) = matching_step(state, user_id, code, false).await? else {
        return Err(UserError::WrongCode);
    };
    let codes = new_recovery_codes();
    let hashes: Vec<Vec<u8>> = codes.iter().map(|c| hash_recovery_code(c)).collect();
    let actor = who.actor.clone();
    state
        .db
        .write(move |tx| {
            let now = now_ms();
            if !store::accept_step(tx, user_id, step)? || !store::enable(tx, user_id, now)? {
                return Err(UserError::WrongCode);
            }
            store::replace_recovery_codes(tx, user_id, &hashes, now)?;
            audit::record(
                tx,
                now,
                &audit::Entry::new(&actor, "user.2fa.enable", "user", Some(user_id)),
            )?;
            Ok(())
        })
        .await?;
    state.auth.second_factor.succeeded(reservation);
    Ok(codes)
}

/// Which kind of second factor passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passed {
    Code,
    RecoveryCode,
}

/// Check a TOTP code (once: a replayed step is refused) or, when `recovery` allows and the
/// input is not six digits, a recovery code (spent). Counted on the account's second-factor
/// limit; a wrong one stays counted.
pub async fn verify(
    state: &AppState,
    user_id: i64,
    actor: &str,
    input: &str,
    recovery: bool,
) -> Result<Passed, UserError> {
    let reservation = reserve(state, user_id)?;
    let actor = actor.to_owned();
    let passed = if looks_like_totp(input) || !recovery {
        let Some(step) = matching_step(state, user_id, input, true).await? else {
            return Err(UserError::WrongCode);
        };
        let fresh = state
            .db
            .write(move |tx| Ok::<_, UserError>(store::accept_step(tx, user_id, step)?))
            .await?;
        if !fresh {
            tracing::info!(user_id, "two-factor code refused: replayed");
            return Err(UserError::WrongCode);
        }
        Passed::Code
    } else {
        let hash = hash_recovery_code(input);
        let used = state
            .db
            .write(move |tx| {
                let now = now_ms();
                if !store::is_enabled(tx, user_id)? || !store::use_recovery_code(tx, user_id, &hash, now)? {
                    return Ok::<_, UserError>(false);
                }
                let left = store::unused_recovery_codes(tx, user_id)?;
                audit::record(
                    tx,
                    now,
                    &audit::Entry::new(&actor, "user.2fa.recovery_used", "user", Some(user_id))
                        .detail(&format!("{left} recovery code(s) left")),
                )?;
                Ok(true)
            })
            .await?;
        if !used {
            return Err(UserError::WrongCode);
        }
        Passed::RecoveryCode
    };
    state.auth.second_factor.succeeded(reservation);
    Ok(passed)
}

/// A wrong code at the second sign-in step, audited (never the code itself).
pub async fn wrong_code(state: &AppState, c: &Challenge, from: &str) -> Result<(), UserError> {
    let actor = format!("user:{}", c.username);
    let detail = format!(
        "attempt {} of {} from {from}",
        c.attempts,
        super::MAX_WRONG_PER_CHALLENGE
    );
    let user_id = c.user_id;
    state
        .db
        .write(move |tx| {
            audit::record(
                tx,
                now_ms(),
                &audit::Entry::new(&actor, "user.2fa.wrong_code", "user", Some(user_id)).detail(&detail),
            )?;
            Ok::<_, UserError>(())
        })
        .await
}

/// New recovery codes (the old ones stop working); needs a current TOTP code.
pub async fn regenerate(
    state: &AppState,
    who: &Principal,
    code: &str,
) -> Result<Vec<Zeroizing<String>>, UserError> {
    let user_id = me(who)?;
    verify(state, user_id, &who.actor, code, false).await?;
    let codes = new_recovery_codes();
    let hashes: Vec<Vec<u8>> = codes.iter().map(|c| hash_recovery_code(c)).collect();
    let actor = who.actor.clone();
    state
        .db
        .write(move |tx| {
            let now = now_ms();
            store::replace_recovery_codes(tx, user_id, &hashes, now)?;
            audit::record(
                tx,
                now,
                &audit::Entry::new(&actor, "user.2fa.recovery_codes", "user", Some(user_id)),
            )?;
            Ok::<_, UserError>(())
        })
        .await?;
    Ok(codes)
}

/// Turn two-factor off: needs the current password (counted like a failed sign-in when wrong)
/// and a current code or a recovery code.
pub async fn disable(
    state: &AppState,
    who: &Principal,
    ip: &str,
    password: Zeroizing<String>,
    code: &str,
) -> Result<(), UserError> {
    let user_id = me(who)?;
    if !state.db.read(move |c| store::is_enabled(c, user_id)).await? {
        return Err(UserError::TwoFactorState(OFF));
    }
    crate::users::ops::check_own_password(state, user_id, ip, password).await?;
    verify(state, user_id, &who.actor, code, true).await?;
    let actor = who.actor.clone();
    state
        .db
        .write(move |tx| {
            store::delete(tx, user_id)?;
            audit::record(
                tx,
                now_ms(),
                &audit::Entry::new(&actor, "user.2fa.disable", "user", Some(user_id)),
            )?;
            Ok::<_, UserError>(())
        })
        .await
}

/// An admin's reset of someone's two-factor (a lost phone): the secret and codes are gone, the
/// person signs in with their password and may enrol again.
pub async fn reset(state: &AppState, who: &Principal, id: i64) -> Result<(), UserError> {
    let actor = who.actor.clone();
    state
        .db
        .write(move |tx| {
            let user = users_store::get(tx, id)?;
            if !store::delete(tx, id)? {
                return Err(UserError::TwoFactorState(OFF));
            }
            audit::record(
                tx,
                now_ms(),
                &audit::Entry::new(&actor, "user.2fa.reset", "user", Some(id)).name(&user.username),
            )?;
            Ok(())
        })
        .await
}
