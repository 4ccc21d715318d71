//! Every users-domain write and rule, called by the pages (and the CLI): sign-in checks, sessions,
//! one-time links (setup, invitations), roles, disabling (the last-admin rule), GitHub links and
//! API tokens (the token rules). Each operation takes a principal and plain input, validates,
//! writes through [`store`], and records its audit entry in the same transaction.
//! No HTTP types here: handlers translate requests to these calls and results to pages.

use crate::db::Tx;
use zeroize::Zeroizing;

use super::store::{self, LinkKind, NewUser};
use super::{
    Principal, RESET_LINK_TTL_MS, Role, SETUP_LINK_TTL_MS, User, UserError, password, validate_password,
    validate_username,
};
use crate::app::AppState;
use crate::audit;
use crate::db::{Db, DbError, now_ms};
use crate::names::{self, NameKind};

// --- sign-in ------------------------------------------------------------------------------------

/// Check a local sign-in: the rate limit first (a slot is reserved before any hashing, so a
/// burst evaluates at most what the limits allow), then the same answer
/// ([`UserError::SignInRefused`]) for an unknown user, a wrong password and a disabled account.
/// A refusal stays counted against the address and the (account, address) pair; a success
/// gives the slot back. When every password thread is busy the answer is [`UserError::Busy`]
/// at once, and the attempt costs nothing.
pub async fn check_sign_in(
    state: &AppState,
    ip: &str,
    username: &str,
    password_text: Zeroizing<String>,
) -> Result<User, UserError> {
    let now = now_ms();
    let username = username.trim().to_owned();
    let reservation = state.auth.limiter.reserve(ip, &username, now).map_err(|wait| {
        tracing::info!(%ip, "sign-in refused before checking: rate limited");
        UserError::RateLimited {
            retry_after_secs: wait,
        }
    })?;
    // A place on the password threads before the lookup: a flood beyond them costs neither a
    // database read nor a hash.
    let slot = match state.auth.passwords.admit() {
        Ok(slot) => slot,
        Err(_) => {
            state.auth.limiter.cancel(reservation);
            tracing::warn!(%ip, "sign-in refused: every password thread is busy");
            return Err(UserError::Busy);
        }
    };
    let lookup = username.clone();
    let found = match state.db.read(move |c| store::by_username(c, &lookup)).await {
        Ok(found) => found,
        Err(e) => {
            state.auth.limiter.cancel(reservation);
            return Err(e.into());
        }
    };
    let (user, hash) = match found {
        Some((user, hash)) => (Some(user), hash),
        None => (None, None),
    };
    // Verified even for an unknown user, so the answer takes as long either way.
    let password_ok = match state.auth.passwords.verify_in(slot, password_text, hash).await {
        Ok(ok) => ok,
        Err(e) => {
            state.auth.limiter.cancel(reservation);
            return Err(match e {
                password::PasswordError::Busy => {
                    tracing::warn!(%ip, "sign-in refused: every password thread is busy");
                    UserError::Busy
                }
                e => UserError::Internal(e.to_string()),
            });
        }
    };
    match user {
        Some(u) if password_ok && !u.disabled => {
            state.auth.limiter.succeeded(reservation);
            Ok(u)
        }
        _ => {
            tracing::info!(%ip, "failed sign-in");
            Err(UserError::SignInRefused)
        }
    }
}

/// Open a web session for a user who passed a sign-in check (from the client address `from`,
/// recorded in the audit entry); answers the cookie value. A `user.sign_in` session (password:
/// the sign-in form, a setup, invitation or reset link) is marked as such: `auth.require_admin_2fa`
/// confines those of an admin without two-factor. Other sign-ins (GitHub, an identity provider)
/// are exempt: the provider does the second factor.
pub async fn start_session(
    state: &AppState,
    user_id: i64,
    username: &str,
    action: &'static str,
    from: &str,
) -> Result<String, UserError> {
    start_session_via(state, user_id, username, action, from, None).await
}

/// [`start_session`] through a named sign-in provider (`oidc:<name>`), said in the audit entry.
pub async fn start_session_via(
    state: &AppState,
    user_id: i64,
    username: &str,
    action: &'static str,
    from: &str,
    via: Option<&str>,
) -> Result<String, UserError> {
    let detail = match via {
        Some(via) => format!("via {via} from {from}"),
        None => format!("from {from}"),
    };
    let lifetime =
        i64::try_from(state.config.auth.session_hours.saturating_mul(3_600_000)).unwrap_or(i64::MAX);
    let actor = format!("user:{username}");
    // A password session (the one `auth.require_admin_2fa` confines until two-factor is on):
    // the local sign-in, not GitHub's or an OpenID provider's, whose second factor is theirs.
    let via_password = action == "user.sign_in" && via.is_none();
    let (cookie, _) = state
        .db
        .write(move |tx| {
            let now = now_ms();
            let created = store::create_session(tx, user_id, now, lifetime, via_password)?;
            audit::record(
                tx,
                now,
                &audit::Entry::new(&actor, action, "user", Some(user_id)).detail(&detail),
            )?;
            Ok::<_, UserError>(created)
        })
        .await?;
    Ok(cookie)
}

/// Sign out: end the session whose id hash is `id_hash`.
pub async fn end_session(
    state: &AppState,
    id_hash: Vec<u8>,
    user_id: i64,
    username: &str,
) -> Result<(), UserError> {
    let actor = format!("user:{username}");
    state
        .db
        .write(move |tx| {
            store::delete_session(tx, &id_hash)?;
            audit::record(
                tx,
                now_ms(),
                &audit::Entry::new(&actor, "user.sign_out", "user", Some(user_id)),
            )?;
            Ok::<_, UserError>(())
        })
        .await?;
    // Signing out closes the person's open WebSockets (those of their other sessions reconnect
    // and are re-authorised).
    state.auth.revoke(user_id);
    Ok(())
}

// --- your own password, your own sessions -------------------------------------------------------

/// A password change as typed: the current password and the new one twice (wiped when dropped).
pub struct PasswordChange {
    pub current: Zeroizing<String>,
    pub new: Zeroizing<String>,
    pub confirm: Zeroizing<String>,
}

/// The new password twice, by the same rules as at setup and invitation.
fn check_new_password(new: &str, confirm: &str) -> Result<(), UserError> {
    validate_password(new)?;
    if new != confirm {
        return Err(UserError::Invalid {
            field: "confirm",
            message: "the two passwords differ".into(),
        });
    }
    Ok(())
}

fn hash_error(e: password::PasswordError) -> UserError {
    match e {
        password::PasswordError::Busy => UserError::Busy,
        e => UserError::Internal(e.to_string()),
    }
}

/// Change the signed-in person's own password. The current one is checked through the sign-in
/// limiter (a wrong one counts as a failed sign-in of this account from `ip`, so the form cannot
/// be used to guess it); the new one follows [`validate_password`]. On success every *other*
/// session of the person ends (`keep`, the session making the change, stays; a token caller
/// keeps none), their open WebSockets close (those of the kept session reconnect), and the
/// change is audited. Answers how many sessions ended.
pub async fn change_password(
    state: &AppState,
    who: &Principal,
    keep: Option<Vec<u8>>,
    ip: &str,
    change: PasswordChange,
) -> Result<usize, UserError> {
    let user_id = who.user_id.ok_or(UserError::NotFound)?;
    let user = state.db.read(move |c| store::get(c, user_id)).await?;
    if !user.has_password {
        return Err(UserError::NoPassword);
    }
    check_new_password(&change.new, &change.confirm)?;
    check_own_password(state, user_id, ip, change.current).await?;
    let hash = state.auth.passwords.hash(change.new).await.map_err(hash_error)?;
    let actor = who.actor.clone();
    let ended = state
        .db
        .write(move |tx| {
            store::set_password_hash(tx, user_id, &hash)?;
            let n = store::delete_other_sessions(tx, user_id, keep.as_deref())?;
            let detail = format!("{n} other session(s) ended");
            audit::record(
                tx,
                now_ms(),
                &audit::Entry::new(&actor, "user.password_change", "user", Some(user_id)).detail(&detail),
            )?;
            Ok::<_, UserError>(n)
        })
        .await?;
    state.auth.revoke(user_id);
    Ok(ended)
}

/// Check the signed-in person's own password (a password change, disabling two-factor):
/// counted on the sign-in limiter like a sign-in, a wrong one stays counted
/// ([`UserError::WrongPassword`]).
pub async fn check_own_password(
    state: &AppState,
    user_id: i64,
    ip: &str,
    password_text: Zeroizing<String>,
) -> Result<(), UserError> {
    let user = state.db.read(move |c| store::get(c, user_id)).await?;
    if !user.has_password {
        return Err(UserError::NoPassword);
    }
    let reservation = state
        .auth
        .limiter
        .reserve(ip, &user.username, now_ms())
        .map_err(|wait| {
            tracing::info!(%ip, "password check refused before checking: rate limited");
            UserError::RateLimited {
                retry_after_secs: wait,
            }
        })?;
    let slot = match state.auth.passwords.admit() {
        Ok(slot) => slot,
        Err(_) => {
            state.auth.limiter.cancel(reservation);
            return Err(UserError::Busy);
        }
    };
    let stored = match state.db.read(move |c| store::password_hash(c, user_id)).await {
        Ok(h) => h,
        Err(e) => {
            state.auth.limiter.cancel(reservation);
            return Err(e);
        }
    };
    let ok = match state.auth.passwords.verify_in(slot, password_text, stored).await {
        Ok(ok) => ok,
        Err(e) => {
            state.auth.limiter.cancel(reservation);
            return Err(hash_error(e));
        }
    };
    if !ok {
        // The reservation stays counted as a failed sign-in.
        tracing::info!(%ip, user = %user.username, "refused: wrong current password");
        return Err(UserError::WrongPassword);
    }
    state.auth.limiter.succeeded(reservation);
    Ok(())
}

/// "Sign out everywhere": end every session of the signed-in person, this one too, and close
/// their open WebSockets. Answers how many sessions ended.
pub async fn sign_out_everywhere(state: &AppState, who: &Principal) -> Result<usize, UserError> {
    let user_id = who.user_id.ok_or(UserError::NotFound)?;
    let actor = who.actor.clone();
    let n = state
        .db
        .write(move |tx| {
            let n = store::delete_user_sessions(tx, user_id)?;
            let detail = format!("{n} session(s) ended");
            audit::record(
                tx,
                now_ms(),
                &audit::Entry::new(&actor, "user.sign_out_everywhere", "user", Some(user_id)).detail(&detail),
            )?;
            Ok::<_, UserError>(n)
        })
        .await?;
    state.auth.revoke(user_id);
    Ok(n)
}

// --- password-reset links (admin) ---------------------------------------------------------------

/// An admin issues a one-time password-reset link for `user_id` (shown once; only its hash is
/// kept; valid [`RESET_LINK_TTL_MS`]; a newer link replaces an open one). Refused for a disabled
/// account, and for an account without a password (GitHub only) unless `add_password`: then the
/// link gives that account a password, besides GitHub. Answers the link.
pub async fn issue_reset(
    state: &AppState,
    who: &Principal,
    user_id: i64,
    add_password: bool,
) -> Result<String, UserError> {
    let actor = who.actor.clone();
    let token = state
        .db
        .write(move |tx| {
            let user = store::get(tx, user_id)?;
            if user.disabled {
                return Err(UserError::Invalid {
                    field: "form",
                    message: format!("{} is disabled: enable the account before resetting its password", user.username),
                });
            }
            if !user.has_password && !add_password {
                return Err(UserError::Invalid {
                    field: "form",
                    message: format!(
                        "{} has no password (it signs in with GitHub only); tick \"give it a password\" to issue a link that adds one",
                        user.username
                    ),
                });
            }
            let now = now_ms();
            let (id, token) = store::create_reset(tx, user_id, &actor, now, now.saturating_add(RESET_LINK_TTL_MS))?;
            let detail = format!("{} (reset link {id})", user.username);
            audit::record(tx, now, &audit::Entry::new(&actor, "user.password_reset_issue", "user", Some(user_id)).detail(&detail))?;
            Ok(token)
        })
        .await?;
    Ok(format!("{}/reset?token={token}", state.config.public_url))
}

/// Withdraw an open reset link.
pub async fn revoke_reset(state: &AppState, who: &Principal, id: i64) -> Result<(), UserError> {
    let actor = who.actor.clone();
    state
        .db
        .write(move |tx| {
            let now = now_ms();
            let Some(user_id) = store::revoke_reset(tx, id, now)? else {
                return Err(UserError::LinkInvalid);
            };
            let detail = format!("reset link {id}");
            audit::record(
                tx,
                now,
                &audit::Entry::new(&actor, "user.password_reset_revoke", "user", Some(user_id))
                    .detail(&detail),
            )?;
            Ok(())
        })
        .await
}

/// The person a live reset link is for.
pub fn live_reset(
    c: &crate::db::Conn<'_>,
    token: &str,
    now: i64,
) -> Result<Option<store::ResetRow>, UserError> {
    Ok(store::live_reset(c, token, now)?)
}

/// Set a new password through a reset link: the link is used up, every session of the person
/// ends and their sockets close; audited. Answers the user's id and username.
pub async fn use_reset(
    state: &AppState,
    token: &str,
    new: Zeroizing<String>,
    confirm: Zeroizing<String>,
) -> Result<(i64, String), UserError> {
    check_new_password(&new, &confirm)?;
    let peek = token.to_owned();
    if state
        .db
        .read(move |c| live_reset(c, &peek, now_ms()))
        .await?
        .is_none()
    {
        return Err(UserError::LinkInvalid);
    }
    let hash = state.auth.passwords.hash(new).await.map_err(hash_error)?;
    let token = token.to_owned();
    let (user_id, username) = state
        .db
        .write(move |tx| {
            let now = now_ms();
            let link = live_reset(tx, &token, now)?.ok_or(UserError::LinkInvalid)?;
            if !store::consume_reset(tx, link.id, now)? {
                return Err(UserError::LinkInvalid);
            }
            store::set_password_hash(tx, link.user.id, &hash)?;
            let n = store::delete_user_sessions(tx, link.user.id)?;
            let detail = format!("reset link {}; {n} session(s) ended", link.id);
            let actor = format!("user:{}", link.user.username);
            audit::record(
                tx,
                now,
                &audit::Entry::new(&actor, "user.password_reset", "user", Some(link.user.id)).detail(&detail),
            )?;
            Ok::<_, UserError>((link.user.id, link.user.username))
        })
        .await?;
    state.auth.revoke(user_id);
    Ok((user_id, username))
}

/// What a new account from a one-time link is made of.
pub struct NewAccount {
    pub username: String,
    pub password: Zeroizing<String>,
    pub confirm: Zeroizing<String>,
}

/// Create an account from a setup link (the first admin only) or an invitation; the link is used
/// up in the same transaction. Answers the user's id and username.
pub async fn create_from_link(
    state: &AppState,
    kind: LinkKind,
    token: &str,
    account: NewAccount,
) -> Result<(i64, String), UserError> {
    let username = validate_username(&account.username)?;
    validate_password(&account.password)?;
    if *account.password != *account.confirm {
        return Err(UserError::Invalid {
            field: "confirm",
            message: "the two passwords differ".into(),
        });
    }
    let hash = state
        .auth
        .passwords
        .hash(account.password)
        .await
        .map_err(|e| match e {
            password::PasswordError::Busy => UserError::Busy,
            e => UserError::Internal(e.to_string()),
        })?;
    let (name, token) = (username.clone(), token.to_owned());
    let id = state
        .db
        .write(move |tx| {
            let now = now_ms();
            let Some(link) = live_link(tx, kind, &token, now)? else {
                return Err(UserError::LinkInvalid);
            };
            let (link_id, role) = (link.id, link.role);
            if !store::consume_link(tx, link_id, now)? {
                return Err(UserError::LinkInvalid);
            }
            // The setup link only ever creates the *first* user.
            if kind == LinkKind::Setup && store::count(tx)? > 0 {
                return Err(UserError::LinkInvalid);
            }
            let new = NewUser {
                username: &name,
                display_name: "",
                password_hash: Some(&hash),
                github_login: None,
                github_id: None,
                role,
            };
            let id = store::insert(tx, &new, now)?;
            store::set_link_user(tx, link_id, id)?;
            let action = match kind {
                LinkKind::Setup => "user.setup_admin",
                LinkKind::Invite => "user.accept_invite",
            };
            audit::record(
                tx,
                now,
                &audit::Entry::new(&format!("user:{name}"), action, "user", Some(id)).detail(role.as_str()),
            )?;
            Ok(id)
        })
        .await?;
    Ok((id, username))
}

/// The live link `token` of this kind, if it can still be used. An invitation is capped by its
/// inviter's *current* role: it dies when the inviter is disabled or now has a lower role than
/// the one it grants. A link made without a person (the setup link; an invite through a CLI
/// token) keeps its role.
pub fn live_link(
    c: &crate::db::Conn<'_>,
    kind: LinkKind,
    token: &str,
    now: i64,
) -> Result<Option<store::LinkRow>, UserError> {
    let Some(link) = store::peek_link(c, kind, token, now)? else {
        return Ok(None);
    };
    Ok(match link.inviter {
        Some((_, true)) => None,
        Some((inviter_role, false)) if inviter_role < link.role => None,
        _ => Some(link),
    })
}

/// Who GitHub says signed in: the numeric id (stable) and the login (renamable).
#[derive(Debug, Clone)]
pub struct GithubIdentity {
    pub id: i64,
    pub login: String,
}

/// A GitHub identity that passed the allow list: its user, matched by the numeric GitHub id.
///
/// - An account bound to this id signs in; a renamed login only updates what is shown.
/// - Else an account linked to this *login* without an id binds this id now, unless it is
///   disabled. One bound to another id is refused ([`UserError::GithubIdMismatch`]) and the
///   refusal audited: someone else registered the login after its owner renamed or freed it.
/// - Else a first sign-in creates an account with `default_role`.
///
/// A disabled account is refused. `from` is the client address, for the audit entries.
pub async fn github_sign_in(
    state: &AppState,
    identity: &GithubIdentity,
    default_role: Role,
    from: &str,
) -> Result<User, UserError> {
    let GithubIdentity { id: gid, login } = identity.clone();
    let from = from.to_owned();
    // The outer error rolls back; the inner one is a refusal whose audit entry must commit.
    state
        .db
        .write(move |tx| -> Result<Result<User, UserError>, UserError> {
            let now = now_ms();
            let actor = format!("github:{login}");
            if let Some(user) = store::by_github_id(tx, gid)? {
                if user.disabled {
                    return Ok(Err(UserError::Disabled));
                }
                if user.github_login.as_deref() != Some(login.as_str()) {
                    let old = user.github_login.clone().unwrap_or_default();
                    if store::rename_github_login(tx, user.id, &login)? {
                        let detail = format!("GitHub id {gid}: @{old} → @{login}");
                        audit::record(tx, now, &audit::Entry::new(&actor, "user.github_rename", "user", Some(user.id)).detail(&detail))?;
                    } else {
                        tracing::warn!(user = %user.username, %login,
                            "GitHub login renamed to one another account is linked to; the old one is still shown");
                    }
                }
                return Ok(Ok(store::get(tx, user.id)?));
            }
            if let Some(user) = store::by_github_login(tx, &login)? {
                if let Some(bound) = user.github_id {
                    let detail = format!(
                        "refused: GitHub id {gid} presented the login @{login}, which is linked to GitHub id \
                         {bound} (from {from})"
                    );
                    audit::record(tx, now, &audit::Entry::new(&actor, "user.github_refused", "user", Some(user.id)).detail(&detail))?;
                    tracing::warn!(%login, github_id = gid, bound_id = bound, %from,
                        "GitHub sign-in refused: the login is linked to another GitHub id");
                    return Ok(Err(UserError::GithubIdMismatch { login }));
                }
                if user.disabled {
                    return Ok(Err(UserError::Disabled));
                }
                store::bind_github_id(tx, user.id, gid)?;
                let detail = format!("GitHub id {gid} bound to @{login} (from {from})");
                audit::record(tx, now, &audit::Entry::new(&actor, "user.github_bind", "user", Some(user.id)).detail(&detail))?;
                return Ok(Ok(store::get(tx, user.id)?));
            }
            let new = NewUser {
                username: &login,
                display_name: "",
                password_hash: None,
                github_login: Some(&login),
                github_id: Some(gid),
                role: default_role,
            };
            let id = store::insert(tx, &new, now)?;
            audit::record(tx, now, &audit::Entry::new(&actor, "user.create_github", "user", Some(id)).detail(&format!("{} (GitHub id {gid})", default_role.as_str())))?;
            Ok(Ok(store::get(tx, id)?))
        })
        .await?
}

/// On a start with no users, issue a fresh one-time setup link (older unused ones stop working)
/// and return it; `None` once anyone exists.
pub fn ensure_setup_link(db: &Db, public_url: &str, now: i64) -> Result<Option<String>, DbError> {
    db.write_blocking(|tx| {
        if store::count(tx)? > 0 {
            store::delete_setup_links(tx)?;
            return Ok(None);
        }
        store::delete_setup_links(tx)?;
        let (_, token) = store::create_link(
            tx,
            LinkKind::Setup,
            Role::Admin,
            "system",
            None,
            now,
            now + SETUP_LINK_TTL_MS,
        )?;
        Ok(Some(format!("{public_url}/setup?token={token}")))
    })
}

// --- people (admin) -------------------------------------------------------------------------------

/// Refuse a change that leaves no enabled admin.
fn keep_an_admin(tx: &Tx<'_>, user: &User, losing_admin: bool) -> Result<(), UserError> {
    if losing_admin
        && user.role == Role::Admin
        && !user.disabled
        && store::other_enabled_admins(tx, user.id)? == 0
    {
        return Err(UserError::LastAdmin);
    }
    Ok(())
}

/// A role from a form or request field.
pub fn parse_role(value: &str) -> Result<Role, UserError> {
    Role::parse(value.trim()).ok_or_else(|| UserError::Invalid {
        field: "role",
        message: "unknown role: use admin, member or viewer".into(),
    })
}

/// Change a user's role; the last enabled admin stays admin.
pub fn change_role_in(tx: &Tx<'_>, who: &Principal, id: i64, role: Role) -> Result<(), UserError> {
    let user = store::get(tx, id)?;
    keep_an_admin(tx, &user, role != Role::Admin)?;
    store::set_role(tx, id, role)?;
    // Sessions carry no role: the next request already sees the new one.
    audit::record(
        tx,
        now_ms(),
        &audit::Entry::new(&who.actor, "user.role", "user", Some(id)).detail(&format!(
            "{} → {}",
            user.username,
            role.as_str()
        )),
    )?;
    Ok(())
}

pub async fn change_role(state: &AppState, who: &Principal, id: i64, role: Role) -> Result<(), UserError> {
    let who = who.clone();
    state
        .db
        .write(move |tx| change_role_in(tx, &who, id, role))
        .await?;
    // Open WebSockets were authorised with the old role: close them (a browser that may still
    // view reconnects with the new one).
    state.auth.revoke(id);
    Ok(())
}

/// Disable (ending every session at once) or enable a user; the last enabled admin stays enabled.
pub fn set_disabled_in(tx: &Tx<'_>, who: &Principal, id: i64, disable: bool) -> Result<(), UserError> {
    let user = store::get(tx, id)?;
    keep_an_admin(tx, &user, disable)?;
    store::set_disabled(tx, id, disable)?;
    if disable {
        store::delete_user_sessions(tx, id)?;
    }
    let action = if disable { "user.disable" } else { "user.enable" };
    audit::record(
        tx,
        now_ms(),
        &audit::Entry::new(&who.actor, action, "user", Some(id)).detail(&user.username),
    )?;
    Ok(())
}

pub async fn set_disabled(
    state: &AppState,
    who: &Principal,
    id: i64,
    disable: bool,
) -> Result<(), UserError> {
    let who = who.clone();
    state
        .db
        .write(move |tx| set_disabled_in(tx, &who, id, disable))
        .await?;
    if disable {
        state.auth.revoke(id);
    }
    Ok(())
}

/// End every session of a user; answers how many there were.
pub async fn end_sessions(state: &AppState, who: &Principal, id: i64) -> Result<usize, UserError> {
    let actor = who.actor.clone();
    let n = state
        .db
        .write(move |tx| {
            let user = store::get(tx, id)?;
            let n = store::delete_user_sessions(tx, id)?;
            audit::record(
                tx,
                now_ms(),
                &audit::Entry::new(&actor, "user.end_sessions", "user", Some(id))
                    .detail(&format!("{} ({n})", user.username)),
            )?;
            Ok::<_, UserError>(n)
        })
        .await?;
    state.auth.revoke(id);
    Ok(n)
}

/// Invite someone with a one-time link bound to `role`; answers the link.
pub async fn invite(state: &AppState, who: &Principal, role: Role) -> Result<String, UserError> {
    let (actor, inviter) = (who.actor.clone(), who.user_id);
    if role > who.role {
        return Err(UserError::RoleTooHigh);
    }
    let ttl = i64::try_from(state.config.auth.invite_hours.saturating_mul(3_600_000)).unwrap_or(i64::MAX);
    let token = state
        .db
        .write(move |tx| {
            let now = now_ms();
            let (id, token) = store::create_link(
                tx,
                LinkKind::Invite,
                role,
                &actor,
                inviter,
                now,
                now.saturating_add(ttl),
            )?;
            audit::record(
                tx,
                now,
                &audit::Entry::new(&actor, "user.invite", "invite", Some(id)).detail(role.as_str()),
            )?;
            Ok::<_, UserError>(token)
        })
        .await?;
    Ok(format!("{}/invite?token={token}", state.config.public_url))
}

/// Withdraw an open invitation.
pub async fn revoke_invite(state: &AppState, who: &Principal, id: i64) -> Result<(), UserError> {
    let actor = who.actor.clone();
    state
        .db
        .write(move |tx| {
            let now = now_ms();
            if !store::revoke_invite(tx, id, now)? {
                return Err(UserError::InviteNotFound);
            }
            audit::record(
                tx,
                now,
                &audit::Entry::new(&actor, "user.invite_revoke", "invite", Some(id)),
            )?;
            Ok(())
        })
        .await
}

/// A GitHub login as an admin types it (`@` and case dropped); empty means none.
pub fn parse_github_login(value: &str) -> Result<String, UserError> {
    let login = value.trim().trim_start_matches('@').to_ascii_lowercase();
    let valid = login.is_empty()
        || (login.len() <= 39
            && login.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !login.starts_with('-'));
    if !valid {
        return Err(UserError::Invalid {
            field: "github_login",
            message: "a GitHub login has letters, digits and '-' (at most 39)".into(),
        });
    }
    Ok(login)
}

/// An admin links (or, with an empty login, unlinks) a GitHub login to a user. The allow list
/// still decides whether that login may sign in.
pub async fn set_github_login(
    state: &AppState,
    who: &Principal,
    id: i64,
    login: &str,
) -> Result<(), UserError> {
    let login = parse_github_login(login)?;
    let actor = who.actor.clone();
    state
        .db
        .write(move |tx| {
            let user = store::get(tx, id)?;
            if login.is_empty() {
                store::unlink_github(tx, id)?;
            } else {
                store::link_github(tx, id, &login, None)?;
            }
            let detail = format!(
                "{} → {}",
                user.username,
                if login.is_empty() { "none" } else { &login }
            );
            audit::record(
                tx,
                now_ms(),
                &audit::Entry::new(&actor, "user.link_github", "user", Some(id)).detail(&detail),
            )?;
            Ok(())
        })
        .await
}

/// A signed-in user links the GitHub identity they just proved (login and numeric id) to their
/// own account.
pub async fn link_own_github(
    state: &AppState,
    who: &Principal,
    identity: &GithubIdentity,
) -> Result<(), UserError> {
    let user_id = who.user_id.ok_or(UserError::NotFound)?;
    let (actor, GithubIdentity { id: gid, login }) = (who.actor.clone(), identity.clone());
    state
        .db
        .write(move |tx| {
            store::link_github(tx, user_id, &login, Some(gid))?;
            audit::record(
                tx,
                now_ms(),
                &audit::Entry::new(&actor, "user.link_github", "user", Some(user_id))
                    .detail(&format!("{login} (GitHub id {gid})")),
            )?;
            Ok(())
        })
        .await
}

/// A user unlinks GitHub from their own account; refused when it has no password to sign in with.
pub async fn unlink_own_github(state: &AppState, who: &Principal) -> Result<(), UserError> {
    let user_id = who.user_id.ok_or(UserError::NotFound)?;
    let actor = who.actor.clone();
    state
        .db
        .write(move |tx| {
            let user = store::get(tx, user_id)?;
            if !user.has_password {
                return Err(UserError::Invalid {
                    field: "github",
                    message: "this account has no password; unlinking GitHub would lock you out".into(),
                });
            }
            store::unlink_github(tx, user_id)?;
            audit::record(
                tx,
                now_ms(),
                &audit::Entry::new(&actor, "user.unlink_github", "user", Some(user_id)),
            )?;
            Ok(())
        })
        .await
}

// --- API tokens -----------------------------------------------------------------------------------

/// A token just made: its clear text is shown once and never stored.
pub struct CreatedToken {
    pub id: i64,
    pub name: String,
    pub token: String,
}

/// Create an API token for `who` (bound to their user, if any). The name follows
/// [`NameKind::Token`]; a token cannot have a higher role than its creator, and a token cannot
/// mint tokens (only a signed-in person or the CLI can), so no token outlives its parent.
pub fn create_token_in(
    tx: &Tx<'_>,
    who: &Principal,
    name: &str,
    role: Role,
    now: i64,
) -> Result<CreatedToken, UserError> {
    let name = names::validate(NameKind::Token, name).map_err(|e| UserError::Invalid {
        field: "name",
        message: e.message,
    })?;
    if who.via_token {
        return Err(UserError::TokenCannotMint);
    }
    if role > who.role && !(role == Role::Member && holds_project_role(tx, who)?) {
        return Err(UserError::RoleTooHigh);
    }
    let (id, token) = store::insert_token(tx, &name, role, who.user_id, now)?;
    audit::record(
        tx,
        now,
        &audit::Entry::new(&who.actor, "token.create", "api_token", Some(id)).detail(&name),
    )?;
    Ok(CreatedToken { id, name, token })
}

/// Whether a person holds a project role above viewer somewhere: a global viewer who does may
/// mint a `member` token, which acts with their project roles (capped at maintainer) and as a
/// viewer everywhere else ([`crate::access::project_role`]; the token's global role stays the
/// lower of its own and its owner's).
fn holds_project_role(c: &crate::db::Conn<'_>, who: &Principal) -> Result<bool, UserError> {
    let Some(user_id) = who.user_id else {
        return Ok(false);
    };
    Ok(crate::access::store::highest_anywhere(c, user_id)?
        .is_some_and(|r| r > crate::access::ProjectRole::Viewer))
}

pub async fn create_token(
    state: &AppState,
    who: &Principal,
    name: &str,
    role: Role,
) -> Result<CreatedToken, UserError> {
    let (who, name) = (who.clone(), name.to_owned());
    state
        .db
        .write(move |tx| create_token_in(tx, &who, &name, role, now_ms()))
        .await
}

/// Whose tokens `who` sees and may revoke: admins every token, others their own.
pub fn token_scope(who: &Principal) -> Option<i64> {
    if who.role >= Role::Admin {
        None
    } else {
        Some(who.user_id.unwrap_or(-1))
    }
}

/// Revoke a live token `who` may see; [`UserError::TokenNotFound`] otherwise.
pub async fn revoke_token(state: &AppState, who: &Principal, id: i64) -> Result<(), UserError> {
    let scope = token_scope(who);
    let actor = who.actor.clone();
    state
        .db
        .write(move |tx| {
            let mine = store::list_tokens(tx, scope)?.iter().any(|t| t.id == id);
            let now = now_ms();
            if !mine || !store::revoke_token(tx, id, now)? {
                return Err(UserError::TokenNotFound);
            }
            audit::record(
                tx,
                now,
                &audit::Entry::new(&actor, "token.revoke", "api_token", Some(id)),
            )?;
            Ok(())
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        (dir, db)
    }

    fn add_user(db: &Db, name: &str, role: Role) -> i64 {
        db.write_blocking(|tx| {
            let new = NewUser {
                username: name,
                display_name: "",
                password_hash: None,
                github_login: None,
                github_id: None,
                role,
            };
            store::insert(tx, &new, 1)
        })
        .unwrap()
    }

    #[test]
    fn the_last_enabled_admin_can_be_neither_demoted_nor_disabled() {
        let (_dir, db) = db();
        let admin = add_user(&db, "ada", Role::Admin);
        let who = Principal::cli();
        let demote = db.write_blocking(|tx| change_role_in(tx, &who, admin, Role::Member));
        assert!(matches!(demote, Err(UserError::LastAdmin)), "{demote:?}");
        let disable = db.write_blocking(|tx| set_disabled_in(tx, &who, admin, true));
        assert!(matches!(disable, Err(UserError::LastAdmin)), "{disable:?}");
        // With a second admin, the first may go.
        add_user(&db, "grace", Role::Admin);
        db.write_blocking(|tx| change_role_in(tx, &who, admin, Role::Member))
            .unwrap();
        let user = db.read_blocking(|c| store::get(c, admin)).unwrap();
        assert_eq!(user.role, Role::Member);
    }

    #[test]
    fn token_names_count_characters_and_roles_stay_at_or_below_the_creator() {
        let (_dir, db) = db();
        let member = Principal {
            actor: "user:m".into(),
            role: Role::Member,
            user_id: None,
            via_token: false,
            token_role: None,
        };
        let ok = "é".repeat(64);
        let made = db.write_blocking(|tx| create_token_in(tx, &member, &ok, Role::Member, 1));
        assert_eq!(made.unwrap().name, ok);
        let long = "é".repeat(65);
        let refused = db.write_blocking(|tx| create_token_in(tx, &member, &long, Role::Member, 1));
        assert!(
            matches!(&refused, Err(UserError::Invalid { field: "name", .. })),
            "{:?}",
            refused.err()
        );
        let higher = db.write_blocking(|tx| create_token_in(tx, &member, "ci", Role::Admin, 1));
        assert!(
            matches!(higher, Err(UserError::RoleTooHigh)),
            "{:?}",
            higher.err()
        );
    }

    #[test]
    fn a_token_cannot_mint_tokens_and_invitations_follow_the_inviters_current_role() {
        let (_dir, db) = db();
        let token = Principal {
            actor: "user:ada (token ci)".into(),
            role: Role::Admin,
            user_id: None,
            via_token: true,
            token_role: Some(Role::Admin),
        };
        let minted = db.write_blocking(|tx| create_token_in(tx, &token, "child", Role::Viewer, 1));
        assert!(
            matches!(minted, Err(UserError::TokenCannotMint)),
            "{:?}",
            minted.err()
        );
        let ada = add_user(&db, "ada", Role::Admin);
        add_user(&db, "root", Role::Admin);
        let (_, link) = db
            .write_blocking(|tx| {
                store::create_link(tx, LinkKind::Invite, Role::Admin, "user:ada", Some(ada), 1, 100)
            })
            .unwrap();
        let live = |db: &Db| {
            db.read_blocking(|c| live_link(c, LinkKind::Invite, &link, 2))
                .unwrap()
        };
        assert!(live(&db).is_some());
        db.write_blocking(|tx| change_role_in(tx, &Principal::cli(), ada, Role::Member))
            .unwrap();
        assert!(live(&db).is_none(), "demoted below the invitation's role");
        db.write_blocking(|tx| change_role_in(tx, &Principal::cli(), ada, Role::Admin))
            .unwrap();
        db.write_blocking(|tx| set_disabled_in(tx, &Principal::cli(), ada, true))
            .unwrap();
        assert!(live(&db).is_none(), "a disabled inviter");
    }

    #[test]
    fn an_unknown_stored_role_is_an_error_naming_the_row() {
        let (_dir, db) = db();
        let id = add_user(&db, "ada", Role::Admin);
        db.write_blocking(|tx| {
            // As a newer Stagely (or a hand edit) might leave it, past the CHECK constraint.
            tx.execute_batch("PRAGMA ignore_check_constraints = ON")?;
            tx.execute("UPDATE users SET role = 'owner' WHERE id = ?1", [id])?;
            tx.execute_batch("PRAGMA ignore_check_constraints = OFF")?;
            Ok::<_, crate::db::DbError>(())
        })
        .unwrap();
        let err = db.read_blocking(|c| store::get(c, id)).unwrap_err().to_string();
        assert!(
            err.contains(&format!("users row {id}")) && err.contains("\"owner\""),
            "{err}"
        );
        let err = db.read_blocking(store::list).unwrap_err().to_string();
        assert!(err.contains("users row"), "{err}");
    }
}
