//! Webhook operations: making or rotating a project's secret, and handling one delivery
//! (verify, de-duplicate, match environments, trigger). `api.rs` only translates HTTP.

use serde::Serialize;
use zeroize::Zeroizing;

use super::push::{self, Pushed};
use super::store::{self, NewDelivery};
use super::verify::{self, Rejection};
use super::{HookError, Outcome, Provider, Urls, WebhookInfo};
use crate::app::AppState;
use crate::audit;
use crate::db::{DbError, now_ms, rfc3339};
use crate::deploys::DeployError;
use crate::deploys::ops::{self as deploy_ops, Request};
use crate::projects::{self, ProjectError, store as project_store};
use crate::users::{Principal, Role};

/// Deliveries shown by `GET /api/projects/{id}/webhook` and the project page.
pub const SHOWN_DELIVERIES: i64 = 20;
/// At most one `webhook.rejected` audit entry per project per this long (every rejection is in
/// the bounded delivery log): a flood of bad signatures must not grow the audit log.
const REJECTED_AUDIT_EVERY_MS: i64 = 60_000;

fn project_error(e: ProjectError) -> HookError {
    match e {
        ProjectError::NotFound => HookError::ProjectNotFound,
        ProjectError::Db(e) => HookError::Db(e),
        other => HookError::Db(DbError::Task(other.to_string())),
    }
}

/// A new webhook secret, shown once.
pub struct NewSecret {
    pub secret: Zeroizing<String>,
    pub urls: Urls,
}

/// Create or replace the project's webhook secret (the old one stops working at once).
pub async fn rotate(state: &AppState, who: &Principal, project_id: i64) -> Result<NewSecret, HookError> {
    let bytes: [u8; 32] = rand::random();
    let secret = Zeroizing::new(hex::encode(bytes));
    let ciphertext = state.vault.encrypt(&secret)?;
    let actor = who.actor.clone();
    state
        .db
        .write(move |tx| {
            let project = project_store::get(tx, project_id).map_err(project_error)?;
            let now = now_ms();
            store::set_secret(tx, project_id, &ciphertext, &actor, now)?;
            audit::record(
                tx,
                now,
                &audit::Entry::new(&actor, "webhook.rotate", "project", Some(project_id))
                    .detail(&project.name),
            )?;
            Ok::<_, HookError>(())
        })
        .await?;
    Ok(NewSecret {
        secret,
        urls: Urls::new(state.config.public_url.as_str(), project_id),
    })
}

/// The project's webhook without its secret, with the latest deliveries.
pub async fn info(state: &AppState, project_id: i64) -> Result<WebhookInfo, HookError> {
    let urls = Urls::new(state.config.public_url.as_str(), project_id);
    state
        .db
        .read(move |c| {
            project_store::get(c, project_id).map_err(project_error)?;
            let created = store::created(c, project_id)?;
            Ok(WebhookInfo {
                configured: created.is_some(),
                urls,
                created_at: created.as_ref().map(|(at, _)| rfc3339(*at)),
                created_by: created.map(|(_, by)| by),
                deliveries: store::recent(c, project_id, SHOWN_DELIVERIES)?,
            })
        })
        .await
}

/// What a delivery carried besides its body: the provider's headers, already picked.
#[derive(Debug, Default)]
pub struct Incoming {
    /// The signature (GitHub, Gitea) or token (GitLab) header's value.
    pub signature: Option<String>,
    pub event: Option<String>,
    pub delivery_id: Option<String>,
}

/// One environment's deploy from a push.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Started {
    pub environment: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    /// Why this environment could not be deployed (agent offline, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a verified delivery came to (the answer's body).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Handled {
    pub result: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deployments: Vec<Started>,
}

impl Handled {
    fn ignored(reason: impl Into<String>) -> Handled {
        Handled {
            result: Outcome::Ignored,
            reason: Some(reason.into()),
            deployments: Vec::new(),
        }
    }
}

/// Handle one delivery: verify its signature, refuse a replay, and deploy the environments the
/// push is for. `Err(BadSignature)` for an unknown project, a project without a webhook, or a
/// bad or missing signature alike.
pub async fn receive(
    state: &AppState,
    provider: Provider,
    project_id: i64,
    incoming: Incoming,
    body: &[u8],
) -> Result<Handled, HookError> {
    let sealed = state.db.lookup(move |c| store::secret(c, project_id)).await?;
    let event = incoming
        .event
        .as_deref()
        .map(|e| push::sanitize_label(e, 40))
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    let Some(sealed) = sealed else {
        // The same work as a real check, so the answer's timing does not tell either.
        let _ = verify::verify(provider, b"no webhook here", body, incoming.signature.as_deref());
        return Err(HookError::BadSignature);
    };
    let secret = state.vault.decrypt(&sealed)?;
    if let Err(why) = verify::verify(provider, secret.as_bytes(), body, incoming.signature.as_deref()) {
        reject(state, provider, project_id, &event, why).await?;
        return Err(HookError::BadSignature);
    }
    drop(secret);
    let delivery_id = incoming
        .delivery_id
        .as_deref()
        .map(|d| push::sanitize_label(d, 100))
        .filter(|d| !d.is_empty());
    let keep = state.config.hooks.keep_deliveries;
    let (ev, did) = (event.clone(), delivery_id.clone());
    let row = state
        .db
        .write(move |tx| {
            let now = now_ms();
            let new = NewDelivery {
                project_id,
                provider,
                delivery_id: did.as_deref(),
                event: &ev,
                result: Outcome::Processing,
                detail: "",
            };
            if let Some(id) = store::insert_delivery(tx, &new, keep, now)? {
                return Ok::<_, HookError>(Some(id));
            }
            let detail = format!("delivery {} seen before", did.as_deref().unwrap_or(""));
            let dup = NewDelivery {
                delivery_id: None,
                result: Outcome::Duplicate,
                detail: &detail,
                ..new
            };
            store::insert_delivery(tx, &dup, keep, now)?;
            Ok(None)
        })
        .await?;
    let Some(row) = row else {
        return Ok(Handled {
            result: Outcome::Duplicate,
            reason: Some("this delivery id was handled before".into()),
            deployments: Vec::new(),
        });
    };
    let handled = handle(state, provider, project_id, &event, body).await;
    let handled = match handled {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(project_id, provider = provider.as_str(), error = %e, "webhook delivery failed");
            finish(state, row, Outcome::Error, "internal error", &[]).await?;
            return Err(e);
        }
    };
    let ids: Vec<i64> = handled
        .deployments
        .iter()
        .filter_map(|d| d.deployment_id)
        .collect();
    finish(state, row, handled.result, &describe(&handled), &ids).await?;
    Ok(handled)
}

/// The delivery log's detail for a handled delivery (names and ids; never the body).
fn describe(h: &Handled) -> String {
    let mut parts: Vec<String> = h.reason.iter().cloned().collect();
    for d in &h.deployments {
        parts.push(match (&d.deployment_id, &d.error) {
            (Some(id), _) => format!("{}: deployment #{id}", d.environment),
            (None, Some(e)) => format!("{}: {e}", d.environment),
            (None, None) => d.environment.clone(),
        });
    }
    let text = parts.join("; ");
    text.chars().take(500).collect()
}

async fn finish(
    state: &AppState,
    row: i64,
    result: Outcome,
    detail: &str,
    ids: &[i64],
) -> Result<(), HookError> {
    let (detail, ids) = (detail.to_owned(), ids.to_vec());
    state
        .db
        .write(move |tx| store::finish_delivery(tx, row, result, &detail, &ids))
        .await?;
    Ok(())
}

/// Record a refused delivery; audited, and notified (`webhook.rejected`), at most once a minute
/// per project, so a flood of bad signatures floods neither the audit log nor anyone's inbox.
async fn reject(
    state: &AppState,
    provider: Provider,
    project_id: i64,
    event: &str,
    why: Rejection,
) -> Result<(), HookError> {
    tracing::warn!(
        project_id,
        provider = provider.as_str(),
        reason = why.as_str(),
        "webhook refused"
    );
    let keep = state.config.hooks.keep_deliveries;
    let event = event.to_owned();
    let audited = state
        .db
        .write(move |tx| {
            let now = now_ms();
            let new = NewDelivery {
                project_id,
                provider,
                delivery_id: None,
                event: &event,
                result: Outcome::Rejected,
                detail: why.as_str(),
            };
            let id = store::insert_delivery(tx, &new, keep, now)?.unwrap_or(0);
            if store::rejected_since(tx, project_id, now - REJECTED_AUDIT_EVERY_MS, id)? {
                return Ok::<_, HookError>(false);
            }
            audit::record(
                tx,
                now,
                &audit::Entry::new(
                    &format!("{}:webhook", provider.as_str()),
                    "webhook.rejected",
                    "project",
                    Some(project_id),
                )
                .detail(&format!(
                    "{}: {} (event {event})",
                    provider.as_str(),
                    why.as_str()
                )),
            )?;
            Ok(true)
        })
        .await?;
    if audited {
        // The rejected request's delivery id is the sender's word, unverified: not a key.
        let notice = crate::notify::Event::WebhookRejected {
            provider: provider.as_str().to_owned(),
            reason: why.as_str().to_owned(),
            delivery: None,
        };
        if let Err(e) = crate::notify::ops::emit(state, project_id, notice).await {
            tracing::warn!(project_id, error = %e, "cannot enqueue the webhook.rejected notice");
        }
    }
    Ok(())
}

/// Whether `event` (the provider's event header) is a push.
fn is_push(provider: Provider, event: &str) -> bool {
    match provider {
        Provider::Github | Provider::Gitea => event == "push",
        Provider::Gitlab => matches!(event, "Push Hook" | "Tag Push Hook"),
    }
}

/// A verified, first-seen delivery: deploy what the push is for.
async fn handle(
    state: &AppState,
    provider: Provider,
    project_id: i64,
    event: &str,
    body: &[u8],
) -> Result<Handled, HookError> {
    if !is_push(provider, event) {
        return Ok(Handled::ignored(format!("event {event:?} does nothing")));
    }
    let Some(push) = push::parse(body) else {
        return Ok(Handled::ignored("not a push payload (no \"ref\")"));
    };
    if push.deleted {
        return Ok(Handled::ignored("a deleted branch or tag deploys nothing"));
    }
    let Some(commit) = push.commit.clone() else {
        return Ok(Handled::ignored("the payload names no pushed commit (\"after\")"));
    };
    let project = state
        .db
        .read(move |c| project_store::get(c, project_id))
        .await
        .map_err(project_error)?;
    let (name, envs): (String, Vec<&projects::Environment>) = match &push.pushed {
        Pushed::Branch(b) => (
            b.clone(),
            project
                .environments
                .iter()
                .filter(|e| e.deploy_on_push && e.git_ref.as_deref().unwrap_or(&project.git_ref) == b)
                .collect(),
        ),
        Pushed::Tag(t) => (
            t.clone(),
            project
                .environments
                .iter()
                .filter(|e| {
                    e.deploy_on_tag
                        .as_deref()
                        .is_some_and(|g| push::glob_matches(g, t))
                })
                .collect(),
        ),
        Pushed::Other(r) => {
            return Ok(Handled::ignored(format!(
                "ref {} is neither a branch nor a tag",
                push::sanitize_label(r, 100)
            )));
        }
    };
    if envs.is_empty() {
        let what = match &push.pushed {
            Pushed::Tag(_) => "tag",
            _ => "branch",
        };
        return Ok(Handled::ignored(format!(
            "no environment deploys on a push to {what} {}",
            push::sanitize_label(&name, 100)
        )));
    }
    let who = Principal {
        actor: format!("{}:{}", provider.as_str(), push.pusher),
        role: Role::Member,
        user_id: None,
        via_token: true,
        token_role: None,
    };
    let mut deployments = Vec::new();
    for env in envs {
        let request = Request {
            environment: Some(env.name.clone()),
            git_ref: Some(name.clone()),
            commit: Some(commit.clone()),
        };
        deployments.push(
            match deploy_ops::trigger(state, &who, project_id, request).await {
                Ok(t) => Started {
                    environment: env.name.clone(),
                    deployment_id: Some(t.deployment_id),
                    status: Some(t.status.as_str()),
                    error: None,
                },
                Err(e) => Started {
                    environment: env.name.clone(),
                    deployment_id: None,
                    status: None,
                    error: Some(trigger_error(&e)),
                },
            },
        );
    }
    let any = deployments.iter().any(|d| d.deployment_id.is_some());
    Ok(Handled {
        result: if any { Outcome::Deployed } else { Outcome::Error },
        reason: None,
        deployments,
    })
}

/// A trigger's error as the delivery log and the sender may see it: the rule that refused
/// (no agent, agent offline, …); storage and vault details only in the server log.
fn trigger_error(e: &DeployError) -> String {
    match e {
        DeployError::Db(_) | DeployError::Vault(_) | DeployError::Seal => {
            tracing::error!(error = %e, "webhook deploy failed");
            "internal error; see the server log".to_owned()
        }
        other => other.to_string(),
    }
}
