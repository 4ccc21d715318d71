//! The real WebSocket under the connection loop: tokio-tungstenite over rustls (system roots plus
//! an optional CA file), the token in an `Authorization: Bearer` header (never in the URL).
//! It turns the socket into a `Sink<WsOut>` + `Stream<Item = Result<WsIn, _>>`, so the protocol
//! logic in [`super::connection`] runs the same over test channels.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use super::config::Token;
use stagely_protocol::MAX_FRAME_BYTES;

/// How long a TCP + TLS + upgrade handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot read the CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("the server refused the agent token (HTTP {0}): check the token file")]
    Unauthorized(u16),
    #[error("the server answered HTTP {status}")]
    Http { status: u16, retry_after: Option<u64> },
    #[error("connecting timed out after {0:?}")]
    Timeout(Duration),
    #[error("invalid server URL or token: {0}")]
    Request(String),
    #[error("{0}")]
    WebSocket(String),
}

impl TransportError {
    /// The server's `Retry-After`, when it asked the agent to come back later.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TransportError::Http { retry_after, .. } => retry_after.map(Duration::from_secs),
            _ => None,
        }
    }
}

impl From<tungstenite::Error> for TransportError {
    fn from(e: tungstenite::Error) -> Self {
        match e {
            tungstenite::Error::Http(resp) => {
                let status = resp.status().as_u16();
                if status == 401 || status == 403 {
                    return TransportError::Unauthorized(status);
                }
                let retry_after = resp
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse().ok());
                TransportError::Http { status, retry_after }
            }
            other => TransportError::WebSocket(other.to_string()),
        }
    }
}

/// A frame from the server, as the connection loop sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsIn {
    Text(String),
    /// The server closed, with its reason.
    Close(String),
    /// Ping, pong or a binary frame: proof of life, nothing to handle.
    Other,
}

/// A frame to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsOut {
    Text(String),
    Ping,
    Close,
}

/// rustls client settings: the system's roots, plus the certificates in `ca_file`.
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TransportError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "a system CA certificate could not be loaded");
    }
    let (added, _) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(count = added, "system CA certificates loaded");
    if let Some(path) = ca_file {
        let ca_err = |reason: String| TransportError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let mut count = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| ca_err(e.to_string()))? {
            let cert = cert.map_err(|e| ca_err(e.to_string()))?;
            roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
            count += 1;
        }
        if count == 0 {
            return Err(ca_err("it holds no PEM certificate".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Dial `url` and split the socket into the loop's sink and stream.
pub async fn connect(
    url: &str,
    token: &Token,
    tls: Arc<rustls::ClientConfig>,
) -> Result<
    (
        impl Sink<WsOut, Error = TransportError> + Unpin + use<>,
        impl Stream<Item = Result<WsIn, TransportError>> + Unpin + use<>,
    ),
    TransportError,
> {
    let mut request = url
        .into_client_request()
        .map_err(|e| TransportError::Request(e.to_string()))?;
    let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .map_err(|_| TransportError::Request("the token holds characters a header cannot carry".into()))?;
    auth.set_sensitive(true);
    request.headers_mut().insert(header::AUTHORIZATION, auth);
    request.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static(concat!("stagely-agent/", env!("CARGO_PKG_VERSION"))),
    );
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES));
    let dial = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(config),
        true,
        Some(Connector::Rustls(tls)),
    );
    let (socket, _response) = tokio::time::timeout(CONNECT_TIMEOUT, dial)
        .await
        .map_err(|_| TransportError::Timeout(CONNECT_TIMEOUT))??;
    let (sink, stream) = socket.split();
    let sink = sink.sink_map_err(TransportError::from).with(|out: WsOut| {
        futures_util::future::ready(Ok::<_, TransportError>(match out {
            WsOut::Text(t) => Message::Text(t.into()),
            WsOut::Ping => Message::Ping(Default::default()),
            WsOut::Close => Message::Close(None),
        }))
    });
    let stream = stream.map(|m| match m {
        Ok(Message::Text(t)) => Ok(WsIn::Text(t.as_str().to_owned())),
        Ok(Message::Close(frame)) => Ok(WsIn::Close(
            frame.map(|f| f.reason.as_str().to_owned()).unwrap_or_default(),
        )),
        Ok(_) => Ok(WsIn::Other),
        Err(e) => Err(TransportError::from(e)),
    });
    Ok((Box::pin(sink), stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_roots_load_and_a_bad_ca_file_is_refused() {
        assert!(tls_config(None).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let err = tls_config(Some(&empty)).unwrap_err().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
        assert!(tls_config(Some(&dir.path().join("absent.pem"))).is_err());
        // A system CA bundle is a valid CA file.
        let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
        if bundle.is_file() {
            assert!(tls_config(Some(bundle)).is_ok());
        }
    }
}
