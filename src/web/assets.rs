//! Static assets (`assets/`), embedded in the binary so the appliance works air-gapped.
//!
//! Pages link them as `/assets/<path>?v=<content hash>`: such a URL never changes meaning, so it
//! is cached for a year; a request without the current hash is revalidated by ETag.

use axum::extract::{Path, Query};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

#[derive(rust_embed::Embed)]
#[folder = "assets/"]
struct Assets;

fn version(file: &rust_embed::EmbeddedFile) -> String {
    hex::encode(&file.metadata.sha256_hash()[..6])
}

/// The URL of an asset, versioned by its content.
pub fn url(path: &str) -> String {
    match Assets::get(path) {
        Some(file) => format!("/assets/{path}?v={}", version(&file)),
        None => {
            tracing::error!(path, "page links a missing asset");
            format!("/assets/{path}")
        }
    }
}

#[derive(Deserialize)]
pub struct AssetQuery {
    v: Option<String>,
}

pub async fn serve(Path(path): Path<String>, Query(q): Query<AssetQuery>, headers: HeaderMap) -> Response {
    let Some(file) = Assets::get(&path) else {
        return (StatusCode::NOT_FOUND, "no such asset\n").into_response();
    };
    let version = version(&file);
    let etag = format!("\"{version}\"");
    let cache = if q.v.as_deref() == Some(version.as_str()) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut response = if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == etag)
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        file.data.into_owned().into_response()
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(file.metadata.mimetype()) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_linked_asset_is_embedded() {
        for path in [
            "app.css",
            "app.js",
            "favicon.svg",
            "vendor/htmx/htmx-2.0.11.min.js",
            "vendor/htmx/ext-ws-2.0.4.min.js",
            "vendor/htmx/LICENSE-htmx",
            "vendor/pico/pico-2.1.1.min.css",
            "vendor/pico/LICENSE",
        ] {
            assert!(super::Assets::get(path).is_some(), "{path}");
            assert!(super::url(path).contains("?v="));
        }
    }
}
