//! Web sessions on the wire: the session cookie, resolving it to a principal, and the
//! same-origin check for cookie-authenticated requests.
//!
//! The cookie holds 32 random bytes; the server keeps only their hash (table `sessions`), so
//! sign-out and revocation end a session at once. `HttpOnly`, `SameSite=Lax`, and `Secure` with
//! the `__Host-` prefix when the public URL is https.

use axum::http::{HeaderMap, HeaderValue, header};

use crate::app::AppState;
use crate::config::Config;
use crate::db::{DbError, now_ms};
use crate::users::{Principal, store};

const COOKIE_PLAIN: &str = "stagely_session";
const COOKIE_SECURE: &str = "__Host-stagely_session";

/// The session behind a cookie-authenticated request (in its extensions, beside the principal).
#[derive(Debug, Clone)]
pub struct Session {
    pub id_hash: Vec<u8>,
    pub user_id: i64,
    pub username: String,
    pub csrf: String,
    /// When the session ends by itself (ms since the epoch).
    pub expires_at: i64,
    /// `auth.require_admin_2fa` holds this session to the enrolment pages: an admin who signed
    /// in with a password and has no two-factor yet ([`CONFINED_PATHS`]).
    pub confined: bool,
}

/// What a confined session may reach: the account page and two-factor enrolment, and sign-out.
pub const CONFINED_PATHS: &[&str] = &[
    "/account",
    "/account/2fa",
    "/account/2fa/start",
    "/account/2fa/confirm",
    "/logout",
];

/// Why a confined session is refused (the API's 403 says it; pages redirect to `/account`).
pub const CONFINED_REASON: &str = "this appliance requires two-factor authentication for admins \
     (auth.require_admin_2fa): enrol on your account page (/account) before anything else";

/// A future that ends when a WebSocket opened by `who` must close: that person's sign-out,
/// disable, demotion or ended sessions ([`crate::users::AuthState::until_revoked`]), or the
/// session it was opened with expiring. A socket task selects on it; while it runs it counts as
/// an open browser WebSocket for `/metrics`.
pub fn socket_end(
    state: &AppState,
    who: &Principal,
    session: Option<&Session>,
) -> impl Future<Output = ()> + Send + 'static {
    let revoked = state.auth.until_revoked(who.user_id);
    let expires_in = session.map(|s| u64::try_from(s.expires_at - now_ms()).unwrap_or(0));
    let auth = state.auth.clone();
    async move {
        // The socket task polls this for as long as the socket is open: it counts as an open
        // browser socket (`/metrics`) from its first poll until it is dropped.
        let _open = auth.browser_socket();
        let expired = async move {
            match expires_in {
                Some(ms) => tokio::time::sleep(std::time::Duration::from_millis(ms)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = revoked => {}
            () = expired => {}
        }
    }
}

pub fn cookie_name(config: &Config) -> &'static str {
    if config.is_https() {
        COOKIE_SECURE
    } else {
        COOKIE_PLAIN
    }
}

/// The value of cookie `name` in the request, if any.
pub fn read_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

fn attributes(config: &Config) -> &'static str {
    if config.is_https() {
        "; Path=/; HttpOnly; SameSite=Lax; Secure"
    } else {
        "; Path=/; HttpOnly; SameSite=Lax"
    }
}

/// `Set-Cookie` for a new session.
pub fn set_cookie(config: &Config, value: &str) -> HeaderValue {
    let max_age = config.auth.session_hours.saturating_mul(3600);
    let text = format!(
        "{}={value}; Max-Age={max_age}{}",
        cookie_name(config),
        attributes(config)
    );
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""))
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie(config: &Config) -> HeaderValue {
    let text = format!("{}=; Max-Age=0{}", cookie_name(config), attributes(config));
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""))
}

/// A short-lived cookie (10 minutes) for a sign-in flow in flight, e.g. the OAuth state.
pub fn set_flow_cookie(config: &Config, name: &str, value: &str) -> HeaderValue {
    let text = format!("{name}={value}; Max-Age=600{}", attributes(config));
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""))
}

pub fn clear_flow_cookie(config: &Config, name: &str) -> HeaderValue {
    let text = format!("{name}=; Max-Age=0{}", attributes(config));
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""))
}

/// The principal and session a session cookie stands for, if it is live.
pub async fn resolve(state: &AppState, headers: &HeaderMap) -> Result<Option<(Principal, Session)>, DbError> {
    let Some(value) = read_cookie(headers, cookie_name(&state.config)) else {
        return Ok(None);
    };
    if value.is_empty() || value.len() > 200 {
        return Ok(None);
    }
    let value = value.to_owned();
    let row = state
        .db
        .lookup(move |c| store::session(c, &value, now_ms()))
        .await?;
    let require_2fa = state.config.auth.require_admin_2fa;
    Ok(row.map(|s| {
        let confined =
            require_2fa && s.user.role == crate::users::Role::Admin && s.via_password && !s.two_factor;
        let principal = Principal {
            actor: format!("user:{}", s.user.username),
            role: s.user.role,
            user_id: Some(s.user.id),
            via_token: false,
            token_role: None,
        };
        let session = Session {
            id_hash: s.id_hash,
            user_id: s.user.id,
            username: s.user.username,
            csrf: s.csrf,
            expires_at: s.expires_at,
            confined,
        };
        (principal, session)
    }))
}

/// `scheme://host[:port]` of a URL, lowercased.
fn origin_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    format!("{}://{}", scheme.to_ascii_lowercase(), host.to_ascii_lowercase())
}

/// True when the request's `Origin` (if it has one) is this appliance: its public URL, or the
/// very host the request was sent to. Cross-site pages cannot make a browser send otherwise.
pub fn same_origin(config: &Config, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let origin = origin.trim().to_ascii_lowercase();
    if origin == origin_of(config.public_url.as_str()) {
        return true;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    !host.is_empty() && (origin == format!("http://{host}") || origin == format!("https://{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn reads_the_named_cookie_only() {
        let h = headers(&[("cookie", "a=1; stagely_session=abc ; b=2")]);
        assert_eq!(read_cookie(&h, "stagely_session"), Some("abc"));
        assert_eq!(read_cookie(&h, "stagely"), None);
    }

    #[test]
    fn origin_must_be_the_public_url_or_the_requested_host() {
        let config = Config {
            public_url: crate::config::PublicUrl::set(
                crate::config::HttpUrl::parse("https://deploy.example.com").unwrap(),
            ),
            ..Config::default()
        };
        assert!(same_origin(&config, &headers(&[])));
        assert!(same_origin(
            &config,
            &headers(&[("origin", "https://deploy.example.com")])
        ));
        assert!(same_origin(
            &config,
            &headers(&[("origin", "http://127.0.0.1:9000"), ("host", "127.0.0.1:9000")])
        ));
        assert!(!same_origin(
            &config,
            &headers(&[("origin", "https://evil.example"), ("host", "deploy.example.com")])
        ));
        assert!(!same_origin(&config, &headers(&[("origin", "null")])));
    }
}
