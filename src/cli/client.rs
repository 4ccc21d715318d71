//! The JSON API client behind `stagely deploy`, `stagely deployments` and `stagely logs`: the
//! appliance's URL, the API token (from `STAGELY_TOKEN` or `--token-file`, never a flag value,
//! so never in argv), and every failure classified once into an exit code (docs/ci.md).

use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use zeroize::Zeroizing;

/// Exit codes of the client commands, exactly as docs/ci.md lists them.
pub mod exit {
    pub const SUCCESS: u8 = 0;
    /// The deployment failed, or the appliance could not start it (409, 5xx, unreachable).
    pub const FAILED: u8 = 1;
    /// Bad flags, no token, 401/403, an unknown project, environment or deployment, bad input.
    pub const USAGE: u8 = 2;
    /// `--timeout` elapsed; the deployment may still run.
    pub const TIMEOUT: u8 = 3;
    /// Cancelled, or superseded by a newer deployment of the same environment.
    pub const STOPPED: u8 = 4;
}

/// Why a client command ends without a final deployment status; each is one line on stderr.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The caller must fix something: flags, the token, a name (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The appliance refused or could not do it (exit 1).
    #[error("{0}")]
    Failed(String),
    /// A network error or a server error worth retrying while waiting (exit 1 when final).
    #[error("{0}")]
    Transient(String),
    /// The `--timeout` deadline passed while retrying (exit 3).
    #[error("timed out")]
    TimedOut,
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Usage(_) => exit::USAGE,
            ClientError::Failed(_) | ClientError::Transient(_) => exit::FAILED,
            ClientError::TimedOut => exit::TIMEOUT,
        }
    }
}

/// The API token, read once; never printed (its `Debug` says so), wiped when dropped.
pub struct Token(Zeroizing<String>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

impl Token {
    /// From `--token-file` when given, else `STAGELY_TOKEN`; surrounding whitespace trimmed.
    pub fn load(token_file: Option<&Path>) -> Result<Token, ClientError> {
        let raw = match token_file {
            Some(path) => Zeroizing::new(read_token_file(path)?),
            None => match std::env::var("STAGELY_TOKEN") {
                Ok(v) => Zeroizing::new(v),
                Err(std::env::VarError::NotPresent) => {
                    return Err(ClientError::Usage(
                        "no API token: set STAGELY_TOKEN or pass --token-file FILE".into(),
                    ));
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(ClientError::Usage("STAGELY_TOKEN is not valid UTF-8".into()));
                }
            },
        };
        let token = Zeroizing::new(raw.trim().to_owned());
        let from = match token_file {
            Some(p) => format!("the token file {}", p.display()),
            None => "STAGELY_TOKEN".to_owned(),
        };
        if token.is_empty() {
            return Err(ClientError::Usage(format!("{from} is empty")));
        }
        // A token is printable ASCII; anything else (a pasted newline in the middle, a control
        // character) could never authenticate. Never echoed: it may be a near-miss of the real one.
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ClientError::Usage(format!(
                "{from} holds characters an API token never has"
            )));
        }
        Ok(Token(token))
    }
}

fn read_token_file(path: &Path) -> Result<String, ClientError> {
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read_to_string(path)
        .map_err(|e| ClientError::Usage(format!("cannot read the token file {}: {e}", path.display())))?;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        // As the agent does for its token file: a warning, not a refusal (CI runners write
        // secret files with modes of their own choosing).
        eprintln!(
            "stagely: warning: the token file {} is readable by other users: chmod 600 it",
            path.display()
        );
    }
    Ok(text)
}

/// One appliance, one token.
pub struct Client {
    base: url::Url,
    http: reqwest::Client,
}

/// One page of a deployment's log and the cursor of the next one, when more may follow.
pub struct LogPage<T> {
    pub lines: Vec<T>,
    pub next_after: Option<i64>,
}

impl Client {
    pub fn new(server: &str, token: &Token) -> Result<Client, ClientError> {
        let base = parse_server(server)?;
        if base.scheme() == "http" && !is_loopback(&base) {
            eprintln!(
                "stagely: warning: {} is http:// and not loopback: the API token crosses the network in clear; use https",
                base.as_str().trim_end_matches('/')
            );
        }
        let bearer = Zeroizing::new(format!("Bearer {}", token.0.as_str()));
        let mut auth = HeaderValue::from_str(&bearer)
            .map_err(|_| ClientError::Usage("the API token is not a valid header value".into()))?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            // A redirect is answered, not followed: the token goes only where --server says.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("stagely-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Failed(format!("cannot make an HTTP client: {}", one_line(&e))))?;
        Ok(Client { base, http })
    }

    /// The appliance's URL for a path (for people: a deployment's page).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base.as_str().trim_end_matches('/'))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self.send(self.http.get(self.url(path)), true).await?;
        decode(resp, path).await
    }

    /// A POST is sent once: only a connection that was never made is retried by the caller
    /// (`Transient`); anything after the request may have arrived is final (no second deploy).
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, ClientError> {
        let resp = self
            .send(self.http.post(self.url(path)).json(body), false)
            .await?;
        decode(resp, path).await.map_err(|e| match e {
            ClientError::Transient(why) => ClientError::Failed(why),
            other => other,
        })
    }

    pub async fn logs<T: DeserializeOwned>(&self, id: i64, after: i64) -> Result<LogPage<T>, ClientError> {
        let path = format!("/api/deployments/{id}/logs?after_seq={after}");
        let resp = self.send(self.http.get(self.url(&path)), true).await?;
        let next_after = resp
            .headers()
            .get("stagely-next-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let lines = decode(resp, &path).await?;
        Ok(LogPage { lines, next_after })
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        idempotent: bool,
    ) -> Result<reqwest::Response, ClientError> {
        let resp = req.send().await.map_err(|e| {
            let why = format!("cannot reach {}: {}", self.url(""), one_line(&e));
            if idempotent || e.is_connect() {
                ClientError::Transient(why)
            } else {
                ClientError::Failed(why)
            }
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status.is_redirection() {
            let to = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("elsewhere")
                .to_owned();
            return Err(ClientError::Usage(format!(
                "the appliance answered {status} (redirect to {to}): pass the URL it redirects to as --server"
            )));
        }
        // The API's own one-line reason (`error.message`); else the status alone.
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| status.to_string());
        match classify(status, message) {
            // The request arrived: a POST answered 5xx may still have made a deployment, so it
            // is never sent again.
            ClientError::Transient(why) if !idempotent => Err(ClientError::Failed(why)),
            other => Err(other),
        }
    }
}

/// Which failures are the caller's (2), which are worth retrying while waiting, and which are
/// final (1). 409s (agent offline, no agent, a deploy in progress) are the appliance's state, not
/// the caller's mistake: 1.
pub fn classify(status: StatusCode, message: String) -> ClientError {
    match status.as_u16() {
        401 => ClientError::Usage(format!("not authenticated ({status}): {message}")),
        403 => ClientError::Usage(format!("not allowed ({status}): {message}")),
        400 | 404 | 405 | 413 | 414 | 415 | 422 => ClientError::Usage(message),
        408 | 429 | 500..=599 => {
            ClientError::Transient(format!("the appliance answered {status}: {message}"))
        }
        _ => ClientError::Failed(format!("the appliance answered {status}: {message}")),
    }
}

async fn decode<T: DeserializeOwned>(resp: reqwest::Response, path: &str) -> Result<T, ClientError> {
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| ClientError::Transient(format!("the answer to {path} broke off: {}", one_line(&e))))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ClientError::Failed(format!(
            "unexpected answer to {path} (is --server a Stagely appliance?): {e}"
        ))
    })
}

/// Retry `call` on transient errors with backoff (250 ms doubling to 5 s) until `deadline`
/// (`None`: for ever); one line on stderr when the appliance is lost and one when it is back.
pub async fn retrying<T, F, Fut>(deadline: Option<Instant>, mut call: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut delay = Duration::from_millis(250);
    let mut lost = false;
    loop {
        match call().await {
            Err(ClientError::Transient(why)) => {
                if !lost {
                    eprintln!("stagely: {why}; retrying");
                    lost = true;
                }
                let mut wait = delay;
                if let Some(d) = deadline {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(ClientError::TimedOut);
                    }
                    wait = wait.min(left);
                }
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            other => {
                if lost && other.is_ok() {
                    eprintln!("stagely: the appliance answers again");
                }
                return other;
            }
        }
    }
}

/// A few tries for the look-ups before a deploy (a blip at the start of a CI job), then final.
pub async fn retrying_briefly<T, F, Fut>(mut call: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    let last = std::cell::RefCell::new(String::new());
    let result = retrying(Some(deadline), || {
        let attempt = call();
        async {
            let r = attempt.await;
            if let Err(ClientError::Transient(why)) = &r {
                last.borrow_mut().clone_from(why);
            }
            r
        }
    })
    .await;
    match result {
        Err(ClientError::TimedOut) => Err(ClientError::Failed(format!(
            "gave up after 15 s: {}",
            last.borrow()
        ))),
        other => other,
    }
}

fn parse_server(server: &str) -> Result<url::Url, ClientError> {
    let server = server.trim();
    if server.is_empty() {
        return Err(ClientError::Usage(
            "no appliance URL: pass --server URL or set STAGELY_SERVER".into(),
        ));
    }
    let url = url::Url::parse(server)
        .map_err(|e| ClientError::Usage(format!("--server {server:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ClientError::Usage(
            "--server must be an http:// or https:// URL".into(),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Never echoed: the userinfo may be a credential, and argv is visible to every user.
        return Err(ClientError::Usage(
            "--server must not carry credentials: the token goes in STAGELY_TOKEN or --token-file".into(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ClientError::Usage(
            "--server must not have a query or fragment".into(),
        ));
    }
    Ok(url)
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// An error and its causes on one line ("error sending request …: connection refused").
fn one_line(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_exit_codes() {
        let code = |s: u16| classify(StatusCode::from_u16(s).unwrap(), "m".into()).exit_code();
        assert_eq!(code(401), exit::USAGE);
        assert_eq!(code(403), exit::USAGE);
        assert_eq!(code(404), exit::USAGE);
        assert_eq!(code(422), exit::USAGE);
        assert_eq!(code(409), exit::FAILED);
        assert_eq!(code(500), exit::FAILED);
        assert!(matches!(
            classify(StatusCode::SERVICE_UNAVAILABLE, "m".into()),
            ClientError::Transient(_)
        ));
        assert!(matches!(
            classify(StatusCode::CONFLICT, "m".into()),
            ClientError::Failed(_)
        ));
    }

    #[test]
    fn server_urls_are_checked_and_never_echo_credentials() {
        assert!(parse_server("https://stagely.example.com").is_ok());
        assert!(parse_server("http://127.0.0.1:8080/").is_ok());
        for bad in ["", "stagely.example.com", "ftp://x", "https://x/?a=1"] {
            assert!(matches!(parse_server(bad), Err(ClientError::Usage(_))), "{bad}");
        }
        let Err(ClientError::Usage(m)) = parse_server("https://ci:hunter2-canary@x.example") else {
            panic!("credentials in the URL accepted");
        };
        assert!(!m.contains("hunter2-canary"), "{m}");
    }

    #[test]
    fn the_token_debug_hides_it() {
        let t = Token(Zeroizing::new("tok-canary".into()));
        assert!(!format!("{t:?}").contains("tok-canary"));
    }
}
