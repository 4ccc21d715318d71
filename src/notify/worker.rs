//! The notification background tasks: follow the hub's events ([`listen`]), watch for agents
//! offline too long ([`watch_agents`]), and send the outbox with retries ([`deliver`]). All stop
//! on the shared shutdown token.

use std::time::Duration;

use stagely_protocol::mask::Masker;
use tokio::sync::broadcast::error::RecvError;
use zeroize::Zeroizing;

use super::{DeliveryStatus, Kind, Notice, Target, email, http, ops, store};
use crate::agents::hub::HubEvent;
use crate::app::AppState;
use crate::config::NotifyConfig;
use crate::db::{DbError, now_ms, rfc3339};

/// How far back a catch-up looks for finished deployments whose hub event was missed (a lagging
/// receiver, or a crash between the deployment's end and its notice).
const CATCH_UP_MS: i64 = 15 * 60 * 1000;
/// Deliveries sent per pass (concurrently).
const BATCH: i64 = 16;

/// The sender's wake-up call and HTTP client, in the app state.
pub struct Notifier {
    wake: tokio::sync::Notify,
    client: reqwest::Client,
    /// `notify.smtp_extra_ca_file`, read once at start.
    extra_ca: Option<Vec<u8>>,
}

impl Notifier {
    pub fn new(config: &NotifyConfig) -> Result<Notifier, std::io::Error> {
        let extra_ca = if config.smtp_extra_ca_file.as_os_str().is_empty() {
            None
        } else {
            Some(std::fs::read(&config.smtp_extra_ca_file)?)
        };
        Ok(Notifier {
            wake: tokio::sync::Notify::new(),
            client: http::client(Duration::from_secs(config.timeout_secs)),
            extra_ca,
        })
    }

    /// Something was enqueued: send it now rather than at the next timer.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Follow `DeploymentChanged` events; a finished deployment becomes a notice.
pub async fn listen(state: AppState) {
    let mut events = state.hub.events();
    catch_up(&state).await;
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            () = state.shutdown.cancelled() => break,
        };
        match event {
            Ok(HubEvent::DeploymentChanged { deployment_id, .. }) => {
                if let Err(e) = ops::deployment_changed(&state, deployment_id).await {
                    tracing::error!(deployment_id, error = %e, "cannot enqueue a deploy notification");
                }
            }
            Ok(_) => {}
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "notifications fell behind the hub's events; catching up"
                );
                catch_up(&state).await;
            }
            Err(RecvError::Closed) => break,
        }
    }
}

/// Enqueue (once: the outbox's key) every recently finished deployment.
async fn catch_up(state: &AppState) {
    let since = now_ms() - CATCH_UP_MS;
    let ids = match state.db.read(move |c| store::finished_since(c, since)).await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::error!(error = %e, "cannot list finished deployments for notifications");
            return;
        }
    };
    for id in ids {
        if let Err(e) = ops::deployment_changed(state, id).await {
            tracing::error!(deployment_id = id, error = %e, "cannot enqueue a deploy notification");
        }
    }
}

/// Every `notify.offline_check_secs`: an agent offline (the hub has no connection, the database
/// says offline since its last heartbeat) for a channel's `offline_minutes` or longer is one
/// `agent.offline` notice per offline episode (the episode is keyed by that last heartbeat).
pub async fn watch_agents(state: AppState) {
    let period = Duration::from_secs_f64(state.config.notify.offline_check_secs.max(0.1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = state.shutdown.cancelled() => break,
        }
        // Once across replicas: only the leader watches (one notice per episode either way).
        if !state.cluster.is_leader() {
            continue;
        }
        if let Err(e) = check_agents(&state, now_ms()).await {
            tracing::error!(error = %e, "cannot check agents for offline notifications");
        }
    }
}

async fn check_agents(state: &AppState, now: i64) -> Result<(), super::NotifyError> {
    let watched = state.db.read(move |c| store::watched_agents(c, now)).await?;
    for w in watched {
        let Some(since) = w.last_heartbeat else {
            continue; // never connected: nothing went offline
        };
        if state.hub.is_online(w.agent_id) || !w.offline {
            continue;
        }
        let threshold_ms = (w.offline_minutes * 60_000.0) as i64;
        if now - since < threshold_ms {
            continue;
        }
        let minutes = (now - since) / 60_000;
        let notice = Notice {
            event: "agent.offline".into(),
            project: w.project.clone(),
            environment: Some(w.environment.clone()),
            url: format!("{}/agents/{}", state.config.public_url.as_str(), w.agent_id),
            at: rfc3339(now),
            agent: Some(w.agent.clone()),
            detail: Some(format!(
                "Agent {} has been offline since {} ({minutes} min)",
                w.agent,
                rfc3339(since)
            )),
            ..Notice::default()
        };
        let subject = format!("agent:{}:{since}", w.agent_id);
        ops::enqueue(state, w.project_id, notice, subject, now, Some(w.channel_id)).await?;
    }
    Ok(())
}

/// Send due deliveries until shutdown; sleep until the next one is due or something is enqueued.
pub async fn deliver(state: AppState) {
    // Several replicas: only the leader sends, and it looks again at least this often for rows
    // another replica enqueued (its wake-up call reaches only its own sender).
    let shared = state.db.backend() == crate::db::Backend::Postgres;
    loop {
        if !state.cluster.is_leader() {
            tokio::select! {
                () = tokio::time::sleep(crate::cluster::leader::RETRY) => continue,
                () = state.shutdown.cancelled() => break,
            }
        }
        let now = now_ms();
        let due = match state.db.read(move |c| store::due(c, now, BATCH)).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the notification outbox");
                Vec::new()
            }
        };
        let full = due.len() as i64 == BATCH;
        futures_util::future::join_all(due.into_iter().map(|d| attempt(&state, d))).await;
        if full {
            continue;
        }
        let next = state.db.read(store::next_due).await.unwrap_or_else(|e: DbError| {
            tracing::error!(error = %e, "cannot read the notification outbox");
            None
        });
        let longest = if shared { 2_000 } else { 60_000 };
        let wait_ms = next.map_or(longest, |t| (t - now_ms()).clamp(0, longest));
        tokio::select! {
            () = state.notifier.wake.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0))) => {}
            () = state.shutdown.cancelled() => break,
        }
    }
}

/// The delay before retry number `attempts` (1-based): base, 2×base, 4×base…, at most a day.
pub fn backoff_ms(base_secs: f64, attempts: i64) -> i64 {
    let exp = u32::try_from((attempts - 1).clamp(0, 20)).unwrap_or(0);
    let ms = base_secs * 1000.0 * f64::from(2u32.pow(exp));
    (ms as i64).clamp(1, 24 * 3600 * 1000)
}

async fn attempt(state: &AppState, d: store::Due) {
    let result = send(state, &d).await;
    let now = now_ms();
    let attempts = d.attempts + 1;
    let cfg = &state.config.notify;
    let (status, error, next) = match result {
        Ok(()) => (DeliveryStatus::Sent, None, None),
        Err(e) if attempts >= i64::from(cfg.max_attempts) => (DeliveryStatus::Failed, Some(e), None),
        Err(e) => (
            DeliveryStatus::Pending,
            Some(e),
            Some(now + backoff_ms(cfg.retry_base_secs, attempts)),
        ),
    };
    match status {
        DeliveryStatus::Sent => {
            tracing::info!(delivery = d.id, channel = d.channel_id, event = %d.event, "notification sent")
        }
        DeliveryStatus::Pending => {
            tracing::warn!(delivery = d.id, channel = d.channel_id, attempts, error = ?error, "notification not delivered; will retry")
        }
        DeliveryStatus::Failed => {
            tracing::error!(delivery = d.id, channel = d.channel_id, attempts, error = ?error, "notification not delivered; giving up")
        }
    }
    let id = d.id;
    if let Err(e) = state
        .db
        .write(move |tx| store::record_attempt(tx, id, status, error.as_deref(), next, now))
        .await
    {
        tracing::error!(delivery = id, error = %e, "cannot record a notification attempt");
    }
}

/// One attempt; `Err` is a short text with every credential of the channel masked out.
async fn send(state: &AppState, d: &store::Due) -> Result<(), String> {
    let target_json = state
        .vault
        .decrypt(&d.encrypted_target)
        .map_err(|_| "cannot decrypt the channel's target".to_owned())?;
    let target: Target =
        serde_json::from_str(&target_json).map_err(|_| "the channel's target is unreadable".to_owned())?;
    let signing = match &d.encrypted_signing {
        Some(ct) => Some(
            state
                .vault
                .decrypt(ct)
                .map_err(|_| "cannot decrypt the signing secret".to_owned())?,
        ),
        None => None,
    };
    let notice: Notice = serde_json::from_str(&d.payload).map_err(|_| "unreadable notice".to_owned())?;
    let timeout = Duration::from_secs(state.config.notify.timeout_secs);
    let result = match (&target, d.kind) {
        (Target::Url { url }, Kind::Webhook) => {
            let body = http::webhook_body(&notice);
            let sig = http::signature(signing.as_ref().map_or("", |s| s.as_str()), &body);
            let headers = [
                ("x-stagely-signature", sig),
                ("x-stagely-event", notice.event.clone()),
                ("x-stagely-delivery", d.id.to_string()),
            ];
            http::post(&state.notifier.client, url, body, &headers).await
        }
        (Target::Url { url }, Kind::Slack) => {
            http::post(&state.notifier.client, url, http::slack_body(&notice), &[]).await
        }
        (Target::Url { url }, Kind::Discord) => {
            http::post(&state.notifier.client, url, http::discord_body(&notice), &[]).await
        }
        (Target::Smtp { .. }, Kind::Email) => {
            email::send(&target, &notice, state.notifier.extra_ca.as_deref(), timeout).await
        }
        _ => Err("the channel's kind and target disagree".to_owned()),
    };
    result.map_err(|e| {
        let mut creds: Vec<Zeroizing<String>> = target
            .credentials()
            .into_iter()
            .map(|s| Zeroizing::new(s.to_owned()))
            .collect();
        if let Some(s) = signing {
            creds.push(s);
        }
        Masker::new(creds.iter().map(|s| s.as_str())).mask(&e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base() {
        assert_eq!(backoff_ms(10.0, 1), 10_000);
        assert_eq!(backoff_ms(10.0, 2), 20_000);
        assert_eq!(backoff_ms(10.0, 4), 80_000);
        assert_eq!(backoff_ms(10.0, 100), 24 * 3600 * 1000);
        assert_eq!(backoff_ms(0.2, 2), 400);
    }
}
