//! Every request has a context: an id, the client's address, and one tracing span with its
//! method, matched route, client, status and latency.
//!
//! The client address ([`ClientAddr`], a request extension every handler can extract) is the
//! TCP peer, unless the peer is one of `trusted_proxies`: then it is the rightmost hop of the
//! `client_address_header` (`X-Forwarded-For` or `Forwarded`) that is not itself a trusted proxy,
//! so a client cannot choose its own address by sending the header (each proxy appends the
//! address it saw; only the part our proxies wrote is believed). This is the one place it is
//! computed: rate limits, audit details and log lines all use it.
//!
//! The id is a trusted proxy's `X-Request-Id` when the peer is one of `trusted_proxies` and the
//! value is a plain token (letters, digits, `-`, `_`, `.`, `:`; at most 64), else 12 random hex
//! digits. It is answered in the `X-Request-Id` header, put in every JSON error and error page
//! ([`current_id`]), and carried by the span, so every log line the request causes names it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::app::AppState;
use crate::config::{ClientAddressHeader, Config};

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");
const MAX_ID_CHARS: usize = 64;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being served on this task; a fresh one outside any request (so an
/// error rendered by a background task still has an id to log and show).
pub fn current_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_else(|_| new_id())
}

fn new_id() -> String {
    let bytes: [u8; 6] = rand::random();
    hex::encode(bytes)
}

/// A proxy's id is kept only when it cannot forge a log line or a header.
fn acceptable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_CHARS
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// Routes that are polled (health checks) or fetched by the dozen (assets) log at debug.
fn quiet(route: &str) -> bool {
    matches!(route, "/healthz" | "/readyz" | "/assets/{*path}")
}

/// The client's address as [`context`] established it (see the module docs). Extract it in a
/// handler; outside the middleware (a router without it) it is `0.0.0.0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ClientAddr>()
            .copied()
            .unwrap_or(ClientAddr(IpAddr::V4(Ipv4Addr::UNSPECIFIED))))
    }
}

/// The client behind `peer`: the peer itself unless it is a trusted proxy; then the rightmost
/// address in the configured header that is not a trusted proxy (all trusted: the leftmost).
/// A hop that is not an address (`unknown`, an obfuscated `_name`, garbage) ends the walk: the
/// client is the last address that was believed.
pub fn client_addr(config: &Config, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let peer = peer.to_canonical();
    if !config.is_trusted_proxy(peer) {
        return peer;
    }
    let hops: Vec<Option<IpAddr>> = match config.client_address_header {
        ClientAddressHeader::XForwardedFor => headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(parse_hop)
            .collect(),
        ClientAddressHeader::Forwarded => headers
            .get_all("forwarded")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, v)| parse_hop(v))
            })
            .collect(),
    };
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = *hop else { break };
        client = ip;
        if !config.is_trusted_proxy(ip) {
            break;
        }
    }
    client
}

/// One hop as proxies write it: `192.0.2.1`, `2001:db8::1`, `192.0.2.1:4711`, `[2001:db8::1]`,
/// `"[2001:db8::1]:4711"` (quoted, in `Forwarded`).
fn parse_hop(raw: &str) -> Option<IpAddr> {
    let s = raw.trim().trim_matches('"').trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sock) = s.parse::<SocketAddr>() {
        return Some(sock.ip().to_canonical());
    }
    let inner = s.strip_prefix('[')?.split(']').next()?;
    inner.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

pub async fn context(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let client = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| {
        client_addr(&state.config, p, req.headers())
    });
    req.extensions_mut().insert(ClientAddr(client));
    let from_proxy = peer
        .is_some_and(|ip| state.config.is_trusted_proxy(ip))
        .then(|| req.headers().get(&HEADER).and_then(|v| v.to_str().ok()))
        .flatten()
        .filter(|id| acceptable(id))
        .map(str::to_owned);
    let id = from_proxy.unwrap_or_else(new_id);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "<no route>".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().clone();
    let span = tracing::info_span!("request", id = %id, method = %method, route = %route, client = %client);
    req.headers_mut().remove(&HEADER);
    let mut response = REQUEST_ID
        .scope(id.clone(), next.run(req).instrument(span.clone()))
        .await;
    let status = response.status().as_u16();
    let latency_ms = format!("{:.2}", started.elapsed().as_secs_f64() * 1000.0);
    span.in_scope(|| {
        if quiet(&route) {
            tracing::debug!(status, %latency_ms, "served");
        } else {
            tracing::info!(status, %latency_ms, "served");
        }
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_tokens_are_kept() {
        assert!(acceptable("req-123_abc.def:1"));
        assert!(acceptable(&"a".repeat(64)));
        for bad in ["", " ", "a b", "x\nforged=1", "\"quoted\"", &"a".repeat(65), "é"] {
            assert!(!acceptable(bad), "{bad:?}");
        }
    }

    fn config(proxies: &[&str], header: ClientAddressHeader) -> Config {
        Config {
            trusted_proxies: proxies
                .iter()
                .map(|p| crate::config::Cidr::parse(p).unwrap())
                .collect(),
            client_address_header: header,
            ..Config::default()
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop_and_only_behind_a_trusted_proxy() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let xff = ClientAddressHeader::XForwardedFor;
        let c = config(&["10.0.0.0/8", "::1"], xff);
        let spoofed = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.2")]);
        // From a trusted proxy: the hops our proxies appended are skipped, the client's own
        // claim (6.6.6.6, left of the address our first proxy saw) is not believed.
        assert_eq!(client_addr(&c, ip("10.0.0.1"), &spoofed), ip("198.51.100.7"));
        // From anyone else the header is ignored.
        assert_eq!(client_addr(&c, ip("203.0.113.9"), &spoofed), ip("203.0.113.9"));
        assert_eq!(
            client_addr(&c, ip("::ffff:203.0.113.9"), &spoofed),
            ip("203.0.113.9")
        );
        // No header, or only trusted hops.
        assert_eq!(client_addr(&c, ip("10.0.0.1"), &HeaderMap::new()), ip("10.0.0.1"));
        let inside = headers(&[("x-forwarded-for", "10.9.9.9"), ("x-forwarded-for", "10.0.0.3")]);
        assert_eq!(client_addr(&c, ip("::1"), &inside), ip("10.9.9.9"));
        // Garbage ends the walk at the last believed address; ports and brackets are dropped.
        let odd = headers(&[("x-forwarded-for", "unknown, [2001:db8::5]:443")]);
        assert_eq!(client_addr(&c, ip("10.0.0.1"), &odd), ip("2001:db8::5"));
        let bad = headers(&[("x-forwarded-for", "198.51.100.1, nonsense")]);
        assert_eq!(client_addr(&c, ip("10.0.0.1"), &bad), ip("10.0.0.1"));
        // The Forwarded header when configured; X-Forwarded-For is then ignored.
        let c = config(&["10.0.0.0/8"], ClientAddressHeader::Forwarded);
        let fwd = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            (
                "forwarded",
                "for=\"[2001:db8:cafe::17]:4711\";proto=https, For=10.0.0.4;by=10.0.0.1",
            ),
        ]);
        assert_eq!(client_addr(&c, ip("10.0.0.1"), &fwd), ip("2001:db8:cafe::17"));
        let obfuscated = headers(&[("forwarded", "for=_hidden")]);
        assert_eq!(client_addr(&c, ip("10.0.0.1"), &obfuscated), ip("10.0.0.1"));
    }

    #[tokio::test]
    async fn the_id_is_the_tasks_inside_a_request_and_fresh_outside() {
        let inside = REQUEST_ID.scope("abc".to_owned(), async { current_id() }).await;
        assert_eq!(inside, "abc");
        let (a, b) = (current_id(), current_id());
        assert_eq!(a.len(), 12);
        assert_ne!(a, b);
    }
}
