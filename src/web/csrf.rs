//! CSRF tokens for cookie-authenticated requests that change state.
//!
//! Each session has its own random token. htmx sends it in `X-CSRF-Token` (set once through
//! `hx-headers` on `<body>`); plain HTML forms, which work without JavaScript, send it as the
//! hidden field `_csrf`. For those the form body is read here and handed on unchanged.

use axum::body::{Body, to_bytes};
use axum::extract::Request;
use axum::http::header;

use crate::crypto::ct_eq;

pub const HEADER: &str = "x-csrf-token";
pub const FIELD: &str = "_csrf";
/// Largest form body read for its token (secret values are at most 64 KiB before encoding).
const FORM_LIMIT: usize = 1024 * 1024;

/// `Ok(request)` (body intact) when it carries `expected`; `Err(request)` otherwise.
pub async fn check(req: Request, expected: &str) -> Result<Request, Request> {
    if let Some(sent) = req.headers().get(HEADER).and_then(|v| v.to_str().ok()) {
        return if ct_eq(sent.as_bytes(), expected.as_bytes()) {
            Ok(req)
        } else {
            Err(req)
        };
    }
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(req);
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = to_bytes(body, FORM_LIMIT).await else {
        return Err(Request::from_parts(parts, Body::empty()));
    };
    let ok = form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == FIELD)
        .is_some_and(|(_, v)| ct_eq(v.as_bytes(), expected.as_bytes()));
    let req = Request::from_parts(parts, Body::from(bytes));
    if ok { Ok(req) } else { Err(req) }
}
