//! The HTTP senders: the generic signed webhook, Slack and Discord incoming webhooks.
//!
//! One POST, no redirect followed, a timeout; a 2xx answer is success. The answer's body is
//! never read into a log or the outbox: at most its status line. The URL never appears in an
//! error (Slack and Discord URLs are credentials).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::Notice;

/// The generic webhook's body: the notice as JSON.
pub fn webhook_body(notice: &Notice) -> Vec<u8> {
    serde_json::to_vec(notice).unwrap_or_default()
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`, the `X-Stagely-Signature` header's value.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes a key of any length; new_from_slice cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A one-line title: `shop/staging deploy failed`.
pub fn title(n: &Notice) -> String {
    let what = match n.event.as_str() {
        "deploy.succeeded" => "deploy succeeded",
        "deploy.failed" => "deploy failed",
        "deploy.rollback" => "rolling back",
        "agent.offline" => "agent offline",
        "webhook.rejected" => "webhook rejected",
        "drift.started" => "drift started",
        "drift.ended" => "drift ended",
        _ => "test notification",
    };
    match &n.environment {
        Some(env) => format!("{}/{env} {what}", n.project),
        None => format!("{} {what}", n.project),
    }
}

/// The facts after the title, as plain lines (commit, error, agent, detail).
pub fn lines(n: &Notice) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(id) = n.deployment_id {
        out.push(format!("Deployment #{id}"));
    }
    if let Some(c) = &n.commit {
        out.push(format!("Commit {}", c.chars().take(12).collect::<String>()));
    }
    if let Some(a) = &n.agent {
        out.push(format!("Agent {a}"));
    }
    if let Some(d) = &n.detail {
        out.push(d.clone());
    }
    if let Some(e) = &n.error {
        out.push(format!("Error: {}", cut(e, 500)));
    }
    out
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

/// Slack escapes only these three in mrkdwn text.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Slack incoming webhook: `{"text": "..."}` in mrkdwn, with a `<url|…>` link.
pub fn slack_body(n: &Notice) -> Vec<u8> {
    let mut text = format!("*{}*", slack_escape(&title(n)));
    for l in lines(n) {
        text.push('\n');
        text.push_str(&slack_escape(&l));
    }
    let label = if n.deployment_id.is_some() {
        "View the deployment"
    } else {
        "Open Stagely"
    };
    text.push_str(&format!("\n<{}|{label}>", n.url));
    serde_json::to_vec(&serde_json::json!({ "text": text })).unwrap_or_default()
}

/// Discord incoming webhook: `{"content": "..."}` (markdown, at most 2,000 characters).
pub fn discord_body(n: &Notice) -> Vec<u8> {
    let mut text = format!("**{}**", title(n));
    for l in lines(n) {
        text.push('\n');
        text.push_str(&l);
    }
    text = cut(&text, 1800);
    text.push_str(&format!("\n{}", n.url));
    serde_json::to_vec(&serde_json::json!({ "content": text, "allowed_mentions": {"parse": []} }))
        .unwrap_or_default()
}

/// The client every HTTP notification uses: no redirects, a timeout, rustls.
pub fn client(timeout: std::time::Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .user_agent(concat!("stagely/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// POST `body`; `Err` carries a short safe text (`HTTP 500`, `timed out`), never the URL.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    headers: &[(&'static str, String)],
) -> Result<(), String> {
    let mut req = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    match req.send().await {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => {
            let s = resp.status();
            Err(if s.is_redirection() {
                format!("HTTP {} (redirects are not followed)", s.as_u16())
            } else {
                format!("HTTP {} {}", s.as_u16(), s.canonical_reason().unwrap_or(""))
                    .trim_end()
                    .to_owned()
            })
        }
        Err(e) => {
            let e = e.without_url();
            Err(if e.is_timeout() {
                "timed out".to_owned()
            } else if e.is_connect() {
                "cannot connect".to_owned()
            } else {
                "request failed".to_owned()
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn slack_text_links_back_and_escapes() {
        let n = Notice {
            event: "deploy.failed".into(),
            project: "shop".into(),
            environment: Some("staging".into()),
            deployment_id: Some(7),
            error: Some("<b> & co".into()),
            url: "https://s.example/deployments/7".into(),
            ..Notice::default()
        };
        let v: serde_json::Value = serde_json::from_slice(&slack_body(&n)).unwrap();
        let text = v["text"].as_str().unwrap();
        assert!(text.starts_with("*shop/staging deploy failed*"), "{text}");
        assert!(text.contains("&lt;b&gt; &amp; co"));
        assert!(text.ends_with("<https://s.example/deployments/7|View the deployment>"));
        let d: serde_json::Value = serde_json::from_slice(&discord_body(&n)).unwrap();
        assert!(
            d["content"]
                .as_str()
                .unwrap()
                .ends_with("https://s.example/deployments/7")
        );
    }
}
