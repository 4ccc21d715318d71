//! Talking to an OpenID Connect provider with the `openidconnect` crate: discovery (cached with
//! its JWKS, fetched lazily so a provider that is down stops nothing but its own sign-in), the
//! authorization URL (code + PKCE S256, `state`, `nonce`), the code exchange and the ID token's
//! verification (signature against the JWKS, `iss`, `aud`, `exp`, `nonce`, `azp`). An unknown
//! `kid` refetches the JWKS once and verifies again: the provider rotated its keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken, IssuerUrl, JsonWebKeySet,
    Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    SignatureVerificationError,
};

use super::Claims;
use crate::config::OidcProvider;

/// How long a discovery document (and its JWKS) is used before it is fetched again.
const DISCOVERY_TTL_MS: i64 = 60 * 60 * 1000;

/// Why a sign-in through a provider did not yield verified claims.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The provider could not be reached or answered nonsense (its discovery, token or JWKS).
    #[error("{0}")]
    Unavailable(String),
    /// The provider's answer did not pass verification (signature, audience, expiry, nonce…).
    #[error("{0}")]
    Rejected(String),
}

/// Discovery documents by provider name, with when they were fetched.
#[derive(Default)]
pub struct Discovery {
    cache: Mutex<HashMap<String, (i64, Arc<CoreProviderMetadata>)>>,
}

/// A sign-in's first half: where to send the browser and what the callback must check.
pub struct Started {
    pub url: String,
    pub state: String,
    pub nonce: Nonce,
    pub verifier: PkceCodeVerifier,
}

impl Discovery {
    fn cached(&self, name: &str, now: i64) -> Option<Arc<CoreProviderMetadata>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(name)
            .filter(|(at, _)| now - at < DISCOVERY_TTL_MS)
            .map(|(_, m)| Arc::clone(m))
    }

    fn store(&self, name: &str, now: i64, meta: CoreProviderMetadata) -> Arc<CoreProviderMetadata> {
        let meta = Arc::new(meta);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(name.to_owned(), (now, Arc::clone(&meta)));
        meta
    }

    /// The provider's metadata and keys: cached, else discovered now.
    pub async fn metadata(
        &self,
        p: &OidcProvider,
        http: &reqwest::Client,
        now: i64,
    ) -> Result<Arc<CoreProviderMetadata>, Failure> {
        if let Some(meta) = self.cached(&p.name, now) {
            return Ok(meta);
        }
        let issuer = IssuerUrl::new(p.issuer.clone())
            .map_err(|e| Failure::Unavailable(format!("the issuer URL is not valid: {e}")))?;
        let meta = CoreProviderMetadata::discover_async(issuer, http)
            .await
            .map_err(|e| Failure::Unavailable(format!("discovery failed: {}", chain(&e))))?;
        Ok(self.store(&p.name, now, meta))
    }

    /// Fetch the provider's JWKS again (an ID token named a key we do not know).
    async fn refresh_jwks(
        &self,
        p: &OidcProvider,
        stale: &CoreProviderMetadata,
        http: &reqwest::Client,
        now: i64,
    ) -> Result<Arc<CoreProviderMetadata>, Failure> {
        let jwks = JsonWebKeySet::fetch_async(stale.jwks_uri(), http)
            .await
            .map_err(|e| Failure::Unavailable(format!("JWKS fetch failed: {}", chain(&e))))?;
        tracing::info!(provider = %p.name, "OIDC: the ID token named an unknown key; JWKS refetched");
        Ok(self.store(&p.name, now, stale.clone().set_jwks(jwks)))
    }
}

/// An error and its sources on one line (the crate's errors put the detail in the sources).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn client(
    p: &OidcProvider,
    meta: &CoreProviderMetadata,
    redirect: &str,
) -> Result<
    CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointMaybeSet,
        openidconnect::EndpointMaybeSet,
    >,
    Failure,
> {
    let redirect = RedirectUrl::new(redirect.to_owned())
        .map_err(|e| Failure::Unavailable(format!("the redirect URL is not valid: {e}")))?;
    Ok(CoreClient::from_provider_metadata(
        meta.clone(),
        ClientId::new(p.client_id.clone()),
        Some(ClientSecret::new(p.client_secret.expose().to_owned())),
    )
    .set_redirect_uri(redirect))
}

/// The authorization URL for a new sign-in, with its `state`, `nonce` and PKCE verifier.
pub fn start(p: &OidcProvider, meta: &CoreProviderMetadata, redirect: &str) -> Result<Started, Failure> {
    let client = client(p, meta, redirect)?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut request = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .set_pkce_challenge(challenge);
    for scope in p.scopes.iter().filter(|s| *s != "openid") {
        request = request.add_scope(Scope::new(scope.clone()));
    }
    let (url, state, nonce) = request.url();
    Ok(Started {
        url: url.to_string(),
        state: state.secret().clone(),
        nonce,
        verifier,
    })
}

/// Exchange the code and verify the ID token it brings; answers its claims.
pub async fn finish(
    discovery: &Discovery,
    p: &OidcProvider,
    redirect: &str,
    code: String,
    verifier: PkceCodeVerifier,
    nonce: &Nonce,
    http: &reqwest::Client,
) -> Result<Claims, Failure> {
    let now = crate::db::now_ms();
    let meta = discovery.metadata(p, http, now).await?;
    let c = client(p, &meta, redirect)?;
    let token = c
        .exchange_code(AuthorizationCode::new(code))
        .map_err(|e| Failure::Unavailable(format!("the provider has no token endpoint: {e}")))?
        .set_pkce_verifier(verifier)
        .request_async(http)
        .await
        .map_err(|e| Failure::Unavailable(format!("the code exchange failed: {}", chain(&e))))?;
    let id_token = token
        .extra_fields()
        .id_token()
        .ok_or_else(|| Failure::Rejected("the token response has no ID token".into()))?;
    let verified = match id_token.claims(&c.id_token_verifier(), nonce) {
        Err(ClaimsVerificationError::SignatureVerification(SignatureVerificationError::NoMatchingKey)) => {
            let fresh = discovery.refresh_jwks(p, &meta, http, now).await?;
            let c = client(p, &fresh, redirect)?;
            id_token.claims(&c.id_token_verifier(), nonce).cloned()
        }
        other => other.cloned(),
    }
    .map_err(|e| Failure::Rejected(format!("the ID token did not verify: {}", chain(&e))))?;
    // The signature covers these bytes: the claims the crate does not model are read from them.
    let raw = payload(&id_token.to_string())?;
    let mut claims = Claims::from_verified(&verified, &raw, &p.groups_claim);
    if !p.groups_claim.is_empty()
        && raw.get(&p.groups_claim).is_none()
        && let Some(endpoint) = meta.userinfo_endpoint()
    {
        let info = userinfo(http, endpoint.url().as_str(), token.access_token().secret()).await?;
        if info.get("sub").and_then(|s| s.as_str()) != Some(claims.subject.as_str()) {
            return Err(Failure::Rejected(
                "the userinfo answer is about another subject".into(),
            ));
        }
        claims.groups = super::groups_of(&info, &p.groups_claim);
    }
    Ok(claims)
}

fn payload(jwt: &str) -> Result<serde_json::Value, Failure> {
    let bad = || Failure::Rejected("the ID token is not a JWT".into());
    let part = jwt.split('.').nth(1).ok_or_else(bad)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| bad())?;
    serde_json::from_slice(&bytes).map_err(|_| bad())
}

async fn userinfo(
    http: &reqwest::Client,
    url: &str,
    access_token: &str,
) -> Result<serde_json::Value, Failure> {
    let unavailable = |e: reqwest::Error| Failure::Unavailable(format!("the userinfo request failed: {e}"));
    http.get(url)
        .bearer_auth(access_token)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(unavailable)?
        .json()
        .await
        .map_err(unavailable)
}
