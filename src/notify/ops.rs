//! Notification operations, shared by the JSON API, the page and the event sources: validate
//! and store channels (audited), and enqueue notices into the outbox.

use stagely_protocol::mask::Masker;

use super::{
    ChannelInfo, ChannelInput, Created, DEFAULT_OFFLINE_MINUTES, EVENTS, EmailInput, Event, Kind,
    MAX_OFFLINE_MINUTES, Notice, NotifyError, TEST_EVENT, Target, invalid, store,
};
use crate::app::AppState;
use crate::audit;
use crate::db::{StoredEnum, now_ms, rfc3339};
use crate::names::{NameKind, validate};
use crate::users::Principal;

/// A channel checked and ready to store (the target still in clear, wiped on drop).
pub struct Valid {
    pub kind: Kind,
    pub name: String,
    pub events: Vec<String>,
    pub offline_minutes: f64,
    pub target: Target,
    pub hint: String,
}

/// Every rule of a channel; errors name the field (`kind`, `events`, `url`, `email.to`…).
pub fn validate_channel(input: &ChannelInput) -> Result<Valid, NotifyError> {
    let Some(kind) = Kind::from_stored(input.kind.trim()) else {
        return invalid("kind", "allowed values are webhook, slack, discord and email");
    };
    let name = validate(NameKind::Token, &input.name).map_err(|e| NotifyError::Invalid {
        field: "name",
        message: e.message,
    })?;
    if input.events.is_empty() {
        return invalid("events", format!("name at least one of {}", EVENTS.join(", ")));
    }
    let mut events: Vec<String> = Vec::new();
    for e in &input.events {
        let e = e.trim();
        if !EVENTS.contains(&e) {
            return invalid(
                "events",
                format!(
                    "unknown event {:?}; allowed: {}",
                    e.chars().take(64).collect::<String>(),
                    EVENTS.join(", ")
                ),
            );
        }
        if !events.iter().any(|x| x == e) {
            events.push(e.to_owned());
        }
    }
    let offline_minutes = input.offline_minutes.unwrap_or(DEFAULT_OFFLINE_MINUTES);
    if !offline_minutes.is_finite() || offline_minutes <= 0.0 || offline_minutes > MAX_OFFLINE_MINUTES {
        return invalid(
            "offline_minutes",
            format!("must be more than 0 and at most {MAX_OFFLINE_MINUTES} (minutes; fractions allowed)"),
        );
    }
    let (target, hint) = match kind {
        Kind::Webhook | Kind::Slack | Kind::Discord => {
            if input.email.is_some() {
                return invalid("email", "is only for kind email");
            }
            let Some(url) = input.url.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
                return invalid("url", format!("is required for a {} channel", kind.as_stored()));
            };
            let host = http_url_host(url)?;
            (Target::Url { url: url.to_owned() }, host)
        }
        Kind::Email => {
            if input.url.is_some() {
                return invalid("url", "is not used by an email channel (give email.host)");
            }
            let Some(email) = &input.email else {
                return invalid(
                    "email",
                    "is required for an email channel: {host, port, from, to, ...}",
                );
            };
            validate_email(email)?
        }
    };
    Ok(Valid {
        kind,
        name,
        events,
        offline_minutes,
        target,
        hint,
    })
}

/// An http(s) URL with a host; answers the host (what may be shown of it).
fn http_url_host(url: &str) -> Result<String, NotifyError> {
    const RULE: &str = "must be an http:// or https:// URL";
    let Ok(parsed) = url::Url::parse(url) else {
        return invalid("url", RULE);
    };
    if !matches!(parsed.scheme(), "http" | "https") {
        return invalid("url", RULE);
    }
    match parsed.host_str() {
        Some(h) if !h.is_empty() => Ok(h.to_owned()),
        _ => invalid("url", format!("{RULE} with a host")),
    }
}

fn validate_email(e: &EmailInput) -> Result<(Target, String), NotifyError> {
    let host = e.host.trim();
    if host.is_empty()
        || host.len() > 253
        || host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return invalid("email.host", "must be the SMTP server's host name or address");
    }
    let port = e.port.unwrap_or(587);
    if port == 0 {
        return invalid("email.port", "must be 1 to 65535");
    }
    if e.from.trim().parse::<lettre::message::Mailbox>().is_err() {
        return invalid("email.from", "must be an address such as stagely@example.com");
    }
    if e.to.is_empty() {
        return invalid("email.to", "name at least one recipient");
    }
    if e.to.len() > 50 {
        return invalid("email.to", "at most 50 recipients");
    }
    let mut to = Vec::new();
    for addr in &e.to {
        if addr.trim().parse::<lettre::Address>().is_err() {
            return invalid(
                "email.to",
                format!(
                    "{:?} is not an email address",
                    addr.chars().take(64).collect::<String>()
                ),
            );
        }
        to.push(addr.trim().to_owned());
    }
    let starttls = e.starttls.unwrap_or(true);
    let password = e.password.clone().filter(|p| !p.is_empty());
    if !starttls && password.is_some() {
        return invalid(
            "email.starttls",
            "must stay on when a password is given (it would cross the network in clear)",
        );
    }
    let username = e
        .username
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned);
    if username.is_some() != password.is_some() {
        return invalid("email.password", "give both username and password, or neither");
    }
    let hint = format!("{host}:{port} → {}", to.join(", "));
    Ok((
        Target::Smtp {
            host: host.to_owned(),
            port,
            username,
            password,
            from: e.from.trim().to_owned(),
            to,
            starttls,
        },
        hint,
    ))
}

/// Validate, encrypt and store a new channel; a generic webhook gets its signing secret, which
/// this answer carries once.
pub async fn create_channel(
    state: &AppState,
    who: &Principal,
    project_id: i64,
    input: ChannelInput,
) -> Result<Created, NotifyError> {
    let valid = validate_channel(&input)?;
    drop(input);
    let target_json = zeroize::Zeroizing::new(
        serde_json::to_string(&valid.target).map_err(|_| crate::secrets::vault::VaultError::Encrypt)?,
    );
    let encrypted_target = state.vault.encrypt(&target_json)?;
    let signing_secret = (valid.kind == Kind::Webhook).then(|| crate::crypto::random_token("whsec"));
    let encrypted_signing = match &signing_secret {
        Some(s) => Some(state.vault.encrypt(s)?),
        None => None,
    };
    let actor = who.actor.clone();
    let channel = state
        .db
        .write(move |tx| {
            if store::project_name(tx, project_id)?.is_none() {
                return Err(NotifyError::ProjectNotFound);
            }
            let now = now_ms();
            let new = store::NewChannel {
                project_id,
                kind: valid.kind,
                name: &valid.name,
                events: &valid.events,
                offline_minutes: valid.offline_minutes,
                target_hint: &valid.hint,
                encrypted_target,
                encrypted_signing,
                actor: &actor,
            };
            let Some(id) = store::insert_channel(tx, &new, now)? else {
                return Err(NotifyError::NameTaken(valid.name.clone()));
            };
            let what = format!(
                "{} ({}: {})",
                valid.name,
                valid.kind.as_stored(),
                valid.events.join(", ")
            );
            audit::record(
                tx,
                now,
                &audit::Entry::new(&actor, "notify.create", "notification", Some(id)).detail(&what),
            )?;
            store::get_channel(tx, id)
        })
        .await?;
    Ok(Created {
        channel,
        signing_secret,
    })
}

pub async fn delete_channel(state: &AppState, who: &Principal, id: i64) -> Result<ChannelInfo, NotifyError> {
    let actor = who.actor.clone();
    state
        .db
        .write(move |tx| {
            let before = store::get_channel(tx, id)?;
            store::delete_channel(tx, id)?;
            let what = format!("{} ({})", before.name, before.kind.as_stored());
            audit::record(
                tx,
                now_ms(),
                &audit::Entry::new(&actor, "notify.delete", "notification", Some(id))
                    .name(&before.name)
                    .project(before.project_id)
                    .detail(&what),
            )?;
            Ok(before)
        })
        .await
}

/// Where a notice links to.
fn link(state: &AppState, path: &str) -> String {
    format!("{}{path}", state.config.public_url.as_str())
}

/// Enqueue `notice` once for every channel of the project that wants it (and existed at `at`),
/// or for `only` that channel; wakes the sender. Answers the new outbox ids.
pub async fn enqueue(
    state: &AppState,
    project_id: i64,
    notice: Notice,
    subject: String,
    at: i64,
    only: Option<i64>,
) -> Result<Vec<i64>, NotifyError> {
    let payload = serde_json::to_string(&notice)
        .map_err(|e| NotifyError::Db(crate::db::DbError::Task(e.to_string())))?;
    let event = notice.event.clone();
    let ids = state
        .db
        .write(move |tx| {
            let channels = match only {
                Some(id) => vec![id],
                None => store::channels_wanting(tx, project_id, &event, at)?,
            };
            let now = now_ms();
            let mut ids = Vec::new();
            for channel in channels {
                if let Some(id) = store::enqueue(tx, channel, &event, &subject, &payload, now)? {
                    ids.push(id);
                }
            }
            Ok::<_, NotifyError>(ids)
        })
        .await?;
    if !ids.is_empty() {
        state.notifier.wake();
    }
    Ok(ids)
}

/// Raise an event from another domain (the push webhook receivers call this when a delivery
/// is rejected). Answers how many deliveries were enqueued.
pub async fn emit(state: &AppState, project_id: i64, event: Event) -> Result<usize, NotifyError> {
    let project = state
        .db
        .read(move |c| store::project_name(c, project_id))
        .await?
        .ok_or(NotifyError::ProjectNotFound)?;
    let now = now_ms();
    match event {
        Event::WebhookRejected {
            provider,
            reason,
            delivery,
        } => {
            let subject = match &delivery {
                Some(d) => format!("{provider}:{}", d.chars().take(128).collect::<String>()),
                None => format!("{provider}:at:{now}:{:08x}", rand::random::<u32>()),
            };
            let notice = Notice {
                event: "webhook.rejected".into(),
                project,
                url: link(state, &format!("/projects/{project_id}")),
                at: rfc3339(now),
                detail: Some(format!(
                    "{provider} webhook rejected: {}",
                    reason.chars().take(200).collect::<String>()
                )),
                ..Notice::default()
            };
            Ok(enqueue(state, project_id, notice, subject, now, None)
                .await?
                .len())
        }
        Event::Drift {
            started,
            environment_id,
            environment,
            at,
            episode,
            detail,
        } => {
            let event = if started { "drift.started" } else { "drift.ended" };
            let notice = Notice {
                event: event.into(),
                project,
                url: link(state, &format!("/projects/{project_id}#env-{environment}")),
                environment: Some(environment),
                at: rfc3339(at),
                detail: Some(detail.chars().take(1000).collect()),
                ..Notice::default()
            };
            let subject = format!("environment:{environment_id}:drift:{episode}");
            Ok(enqueue(state, project_id, notice, subject, at, None).await?.len())
        }
    }
}

/// Send a test notice to one channel; answers its outbox id.
pub async fn send_test(state: &AppState, channel_id: i64) -> Result<i64, NotifyError> {
    let (channel, project) = state
        .db
        .read(move |c| {
            let ch = store::get_channel(c, channel_id)?;
            let project = store::project_name(c, ch.project_id)?.ok_or(NotifyError::ProjectNotFound)?;
            Ok::<_, NotifyError>((ch, project))
        })
        .await?;
    let now = now_ms();
    let notice = Notice {
        event: TEST_EVENT.into(),
        project,
        url: link(state, &format!("/projects/{}", channel.project_id)),
        at: rfc3339(now),
        detail: Some(format!("a test of the notification channel {:?}", channel.name)),
        ..Notice::default()
    };
    let subject = format!("test:{now}:{:08x}", rand::random::<u32>());
    let ids = enqueue(state, channel.project_id, notice, subject, now, Some(channel_id)).await?;
    ids.first().copied().ok_or(NotifyError::NotFound)
}

/// Enqueue `event` for deployment `deployment_id` (its project, environment, status, commit and
/// page), with `detail` written from it, once per `key`. No secret can be in it: ids, names, a
/// ref and a commit only.
async fn deployment_notice(
    state: &AppState,
    deployment_id: i64,
    event: &str,
    key: String,
    detail: impl FnOnce(&crate::deploys::Deployment) -> String,
) -> Result<usize, NotifyError> {
    let d = state
        .db
        .read(move |c| crate::deploys::store::get(c, deployment_id))
        .await
        .map_err(|e| NotifyError::Db(crate::db::DbError::Task(e.to_string())))?;
    let now = now_ms();
    let detail = detail(&d);
    let notice = Notice {
        event: event.into(),
        project: d.project,
        environment: Some(d.environment),
        deployment_id: Some(deployment_id),
        status: Some(d.status.as_str().to_owned()),
        commit: d.commit,
        error: None,
        url: link(state, &format!("/deployments/{deployment_id}")),
        at: rfc3339(now),
        agent: None,
        detail: Some(detail),
    };
    let ids = enqueue(state, d.project_id, notice, key, now, None).await?;
    Ok(ids.len())
}

/// An automatic rollback started after deployment `failed` failed: enqueue `deploy.rollback`
/// linking the rollback (`deployment_id`, in the failed one's project).
pub async fn rollback_started(
    state: &AppState,
    deployment_id: i64,
    failed: i64,
) -> Result<usize, NotifyError> {
    deployment_notice(state, deployment_id, "deploy.rollback", format!("rollback:{deployment_id}"), |d| {
        format!(
            "deployment {failed} failed after changing the stack: rolling back to the release of deployment {}",
            d.redeploy_of.unwrap_or_default()
        )
    })
    .await
}

/// A deployment awaits approval: enqueue `deploy.awaiting_approval` linking its page.
pub async fn awaiting_approval(state: &AppState, deployment_id: i64) -> Result<usize, NotifyError> {
    deployment_notice(
        state,
        deployment_id,
        "deploy.awaiting_approval",
        format!("approval:{deployment_id}"),
        |d| {
            format!(
                "{} asks to deploy {} to {}: another person who may deploy it must approve",
                d.triggered_by, d.git_ref, d.environment
            )
        },
    )
    .await
}

/// A deployment changed: when it has finished, enqueue `deploy.succeeded` / `deploy.failed`.
/// Safe to call any number of times for the same deployment.
pub async fn deployment_changed(state: &AppState, deployment_id: i64) -> Result<usize, NotifyError> {
    let vault = state.vault.clone();
    let found = state
        .db
        .read(move |c| {
            let Some(d) = store::finished_deployment(c, deployment_id)? else {
                return Ok::<_, NotifyError>(None);
            };
            // The stored error is masked already; mask again with the deployment's secret
            // values, so no path into a notice can carry one.
            let sealed = crate::secrets::store::for_environment(c, d.project_id, d.environment_id)?;
            let values = sealed
                .iter()
                .map(|s| vault.decrypt(&s.ciphertext))
                .collect::<Result<Vec<_>, _>>()?;
            let masker = Masker::new(values.iter().map(|v| v.as_str()));
            Ok(Some((d, masker)))
        })
        .await?;
    let Some((d, masker)) = found else {
        return Ok(0);
    };
    let event = match d.status.as_str() {
        "success" => "deploy.succeeded",
        "failed" => "deploy.failed",
        _ => return Ok(0),
    };
    let notice = Notice {
        event: event.into(),
        project: d.project,
        environment: Some(d.environment),
        deployment_id: Some(deployment_id),
        status: Some(d.status),
        commit: d.commit.map(|c| masker.mask(&c)),
        error: d.error.map(|e| masker.mask(&e)),
        url: link(state, &format!("/deployments/{deployment_id}")),
        at: rfc3339(d.finished_at),
        agent: None,
        detail: None,
    };
    let ids = enqueue(
        state,
        d.project_id,
        notice,
        format!("deployment:{deployment_id}"),
        d.finished_at,
        None,
    )
    .await?;
    Ok(ids.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(kind: &str, events: &[&str]) -> ChannelInput {
        let mut i = ChannelInput::default();
        i.kind = kind.into();
        i.name = "ops".into();
        i.events = events.iter().map(|e| (*e).to_owned()).collect();
        i.url = Some("https://hooks.slack.com/services/T/B/secret".into());
        i
    }

    fn field(r: Result<Valid, NotifyError>) -> &'static str {
        match r {
            Err(NotifyError::Invalid { field, .. }) => field,
            Err(e) => panic!("{e}"),
            Ok(_) => "ok",
        }
    }

    #[test]
    fn url_channels_show_only_the_host() {
        let v = validate_channel(&input("slack", &["deploy.failed", "deploy.failed"])).unwrap();
        assert_eq!(v.hint, "hooks.slack.com");
        assert_eq!(v.events, vec!["deploy.failed"]);
        assert_eq!(v.offline_minutes, DEFAULT_OFFLINE_MINUTES);
    }

    #[test]
    fn bad_fields_are_named() {
        assert_eq!(
            field(validate_channel(&input("pager", &["deploy.failed"]))),
            "kind"
        );
        assert_eq!(
            field(validate_channel(&input("slack", &["deploy.maybe"]))),
            "events"
        );
        assert_eq!(field(validate_channel(&input("slack", &[]))), "events");
        let mut ftp = input("webhook", &["deploy.failed"]);
        ftp.url = Some("ftp://x/y".into());
        assert_eq!(field(validate_channel(&ftp)), "url");
        let mut zero = input("webhook", &["agent.offline"]);
        zero.offline_minutes = Some(0.0);
        assert_eq!(field(validate_channel(&zero)), "offline_minutes");
        let mut mail = input("email", &["deploy.failed"]);
        mail.url = None;
        let mut e = EmailInput::default();
        e.host = "smtp.example.com".into();
        e.from = "stagely@example.com".into();
        mail.email = Some(e);
        assert_eq!(field(validate_channel(&mail)), "email.to");
        if let Some(e) = mail.email.as_mut() {
            e.to = vec!["not an address".into()];
        }
        assert_eq!(field(validate_channel(&mail)), "email.to");
        if let Some(e) = mail.email.as_mut() {
            e.to = vec!["ops@example.com".into()];
            e.username = Some("u".into());
            e.password = Some("p".into());
            e.starttls = Some(false);
        }
        assert_eq!(field(validate_channel(&mail)), "email.starttls");
        if let Some(e) = mail.email.as_mut() {
            e.starttls = None;
        }
        let ok = validate_channel(&mail).unwrap();
        assert_eq!(ok.hint, "smtp.example.com:587 → ops@example.com");
    }
}
