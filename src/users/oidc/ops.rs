//! Applying a verified OpenID Connect sign-in to the account bound to `(issuer, sub)`: create it
//! at the first sign-in the mapping allows, rewrite its global role and its `oidc:<provider>`
//! project roles at every sign-in, refuse (and end the sessions of) a person the mapping no
//! longer lets in. One transaction, audited.

use crate::db::Tx;

use super::{Admission, Claims, admit, store, username_hint};
use crate::access::store::{oidc_source, replace_source};
use crate::app::AppState;
use crate::audit;
use crate::config::OidcProvider;
use crate::db::now_ms;
use crate::users::store::{self as users, NewUser};
use crate::users::{User, UserError};

/// How a sign-in through a provider ended.
#[derive(Debug)]
pub enum Outcome {
    SignedIn(User),
    /// The mapping does not let this person in; `ended` counts the sessions an existing account
    /// of theirs lost.
    NotAllowed {
        ended: Option<usize>,
    },
    Disabled,
}

/// Sign in (or refuse) the person `claims` describes, from the client address `from`.
pub async fn sign_in(
    state: &AppState,
    p: &OidcProvider,
    claims: Claims,
    from: &str,
) -> Result<Outcome, UserError> {
    let p = p.clone();
    let from = from.to_owned();
    let (outcome, revoke) = state.db.write(move |tx| apply(tx, &p, &claims, &from)).await?;
    if let Some(user_id) = revoke {
        // Open WebSockets were authorised with the old role or an ended session.
        state.auth.revoke(user_id);
    }
    Ok(outcome)
}

fn apply(tx: &Tx<'_>, p: &OidcProvider, c: &Claims, from: &str) -> Result<(Outcome, Option<i64>), UserError> {
    let now = now_ms();
    let actor = format!("oidc:{}", p.name);
    let who = format!(
        "sub {} ({}) from {from}",
        c.subject,
        c.email.as_deref().unwrap_or("no verified e-mail")
    );
    let identity = store::by_subject(tx, &p.issuer, &c.subject)?;
    let user = identity.as_ref().map(|i| users::get(tx, i.user_id)).transpose()?;
    if let Some(user) = user.as_ref().filter(|u| u.disabled) {
        let entry = audit::Entry::new(&actor, "user.sign_in_refused", "user", Some(user.id));
        audit::record(tx, now, &entry.detail(&format!("disabled; {who}")))?;
        return Ok((Outcome::Disabled, None));
    }
    let Some(admission) = admit(p, c) else {
        let Some(user) = user else {
            let entry = audit::Entry::new(&actor, "user.sign_in_refused", "user", None);
            audit::record(
                tx,
                now,
                &entry.detail(&format!("not allowed by the mapping; {who}")),
            )?;
            return Ok((Outcome::NotAllowed { ended: None }, None));
        };
        // Removed from every allowed group and domain: out now, not at their session's end.
        let ended = users::delete_user_sessions(tx, user.id)?;
        replace_source(tx, user.id, &oidc_source(&p.name), &[], &actor, now)?;
        let detail = format!("no longer allowed by the mapping; {ended} session(s) ended; {who}");
        let entry = audit::Entry::new(&actor, "user.sign_in_refused", "user", Some(user.id));
        audit::record(tx, now, &entry.detail(&detail))?;
        return Ok((Outcome::NotAllowed { ended: Some(ended) }, Some(user.id)));
    };
    let user = match (identity, user) {
        (Some(identity), Some(user)) => {
            store::touch(tx, identity.id, c.email.as_deref(), now)?;
            user
        }
        _ => create(tx, p, c, &admission, &actor, &who, now)?,
    };
    let role_changed = rewrite_roles(tx, p, &user, &admission, &actor, now)?;
    let user = users::get(tx, user.id)?;
    let revoke = role_changed.then_some(user.id);
    Ok((Outcome::SignedIn(user), revoke))
}

/// The first sign-in the mapping allows: a new account with a unique username, bound to
/// `(issuer, sub)`.
fn create(
    tx: &Tx<'_>,
    p: &OidcProvider,
    c: &Claims,
    a: &Admission,
    actor: &str,
    who: &str,
    now: i64,
) -> Result<User, UserError> {
    let base = username_hint(c);
    let mut username = base.clone();
    let mut n = 2;
    while users::by_username(tx, &username)?.is_some() {
        if n > 1000 {
            return Err(UserError::UsernameTaken(base));
        }
        username = format!("{base}-{n}");
        n += 1;
    }
    let display: String = c.name.as_deref().unwrap_or("").chars().take(100).collect();
    let new = NewUser {
        username: &username,
        display_name: display.trim(),
        password_hash: None,
        github_login: None,
        github_id: None,
        role: a.role,
    };
    let id = users::insert(tx, &new, now)?;
    let identity = store::NewIdentity {
        user_id: id,
        provider: &p.name,
        issuer: &p.issuer,
        subject: &c.subject,
        email: c.email.as_deref(),
    };
    store::insert(tx, &identity, now)?;
    let detail = format!("{} ({}); {who}", a.role.as_str(), a.reason);
    audit::record(
        tx,
        now,
        &audit::Entry::new(actor, "user.create_oidc", "user", Some(id)).detail(&detail),
    )?;
    users::get(tx, id)
}

/// The global role and the `oidc:<provider>` project roles the mapping gives, written now.
/// The last enabled admin keeps admin (logged and audited). Answers whether the role changed.
fn rewrite_roles(
    tx: &Tx<'_>,
    p: &OidcProvider,
    user: &User,
    a: &Admission,
    actor: &str,
    now: i64,
) -> Result<bool, UserError> {
    let mut changed = false;
    if user.role != a.role {
        let last_admin =
            user.role == crate::users::Role::Admin && users::other_enabled_admins(tx, user.id)? == 0;
        let detail = format!(
            "{}: {} → {} ({})",
            user.username,
            user.role.as_str(),
            a.role.as_str(),
            a.reason
        );
        if last_admin {
            tracing::warn!(user = %user.username, provider = %p.name,
                "OIDC mapping would demote the last enabled admin: the role is kept");
            let entry = audit::Entry::new(actor, "user.role_kept", "user", Some(user.id));
            audit::record(
                tx,
                now,
                &entry.detail(&format!("{detail}: kept, the last enabled admin")),
            )?;
        } else {
            users::set_role(tx, user.id, a.role)?;
            audit::record(
                tx,
                now,
                &audit::Entry::new(actor, "user.role", "user", Some(user.id)).detail(&detail),
            )?;
            changed = true;
        }
    }
    let projects = crate::projects::store::list(tx).map_err(|e| UserError::Internal(e.to_string()))?;
    let mut grants = Vec::new();
    for (name, role) in &a.projects {
        match projects.iter().find(|pr| pr.name == *name) {
            Some(project) => grants.push((project.id, *role)),
            None => tracing::warn!(provider = %p.name, project = %name,
                "oidc.project_roles names a project that does not exist: skipped"),
        }
    }
    replace_source(tx, user.id, &oidc_source(&p.name), &grants, actor, now)?;
    Ok(changed)
}
