//! The dashboard at `/ui/`: a page, a script and a style sheet, embedded in the binary (nothing
//! to build or install), that use only the JSON APIs. Every answer forbids inline script and
//! style and anything not from the relay itself (`Content-Security-Policy`), so a payload that
//! slipped into the page as markup could still run nothing; the page renders payloads as text
//! anyway.

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderValue};

use super::error::ApiError;

/// Scripts, styles, images and API calls only from the relay; no inline script or style, no
/// frames, no plugins, no form posts elsewhere.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                      connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The embedded files, by the name after `/ui/` (`""` is the page).
const ASSETS: &[(&str, &str, &str)] = &[
    ("", "text/html; charset=utf-8", include_str!("../../ui/index.html")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("../../ui/app.js")),
    ("app.css", "text/css; charset=utf-8", include_str!("../../ui/app.css")),
];

/// `GET /ui/{asset}`: an embedded file, or 404 (`GET /ui` and `/ui/` are the page, whose links
/// are absolute so that both work).
pub(super) fn asset(name: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    let (_, content_type, body) =
        ASSETS.iter().find(|(asset, _, _)| *asset == name).ok_or_else(|| ApiError::not_found("page"))?;
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    Ok(response)
}
