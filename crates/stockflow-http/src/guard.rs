//! What keeps another web site from writing through a visitor's browser,
//! for both modes' routers.
//!
//! A page on any origin can make a browser send a "simple" POST (a form's
//! `application/x-www-form-urlencoded`, `multipart/form-data` or
//! `text/plain`, or no body at all) without asking the server first. So
//! every write must say it is JSON, NDJSON or CSV, which a browser sends
//! cross-origin only after a CORS preflight, granted only to the origins
//! `--cors-origin` lists (see [`cors`]); a
//! body in a compression the server does not decode is refused too,
//! rather than parsed as garbage. A WebSocket upgrade is a GET a page can
//! also make, so one sent by a browser (it carries `Origin`) must come
//! from the server's own origin or a listed one.

use axum::extract::Request;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// The body types a write may carry.
const WRITE_TYPES: [&str; 3] = ["application/json", "application/x-ndjson", "text/csv"];

/// Middleware: POST, PUT and PATCH need one of [`WRITE_TYPES`] (415
/// otherwise), and no request body may be compressed (415).
pub async fn writes_say_what_they_carry(request: Request, next: Next) -> Response {
    if let Err(refused) = check_write(request.method(), request.headers()) {
        tracing::info!(method = %request.method(), uri = %request.uri(), "refused a write: {}", refused.message);
        return refused.into_response();
    }
    next.run(request).await
}

fn check_write(method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    let unsupported = |message: String| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
    };
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
        let encoding = encoding.to_str().unwrap_or("?").trim();
        if !encoding.eq_ignore_ascii_case("identity") {
            return Err(unsupported(format!(
                "Content-Encoding {encoding:?} is not accepted; send the body uncompressed"
            )));
        }
    }
    if !matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        return Ok(());
    }
    match media_type(headers) {
        Some(media) if WRITE_TYPES.contains(&media.as_str()) => Ok(()),
        other => Err(unsupported(format!(
            "a write needs Content-Type {} (got {}); an empty body is sent as application/json",
            WRITE_TYPES.join(", "),
            other.map_or("none".to_owned(), |m| format!("{m:?}"))
        ))),
    }
}

/// The media type a request's Content-Type names, lowercased, without
/// its parameters (`text/csv; charset=utf-8` is `text/csv`).
pub(crate) fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        value
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

/// A WebSocket upgrade from a browser (it sends `Origin`) must come from a
/// page of this server (the Origin's host and port are the request's
/// Host, its scheme the server's: https when it serves `tls`) or of an
/// `allowed` origin. Clients that are not browsers send no Origin.
pub fn same_origin(headers: &HeaderMap, allowed: &[String], tls: bool) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return Ok(());
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let scheme = if tls { "https://" } else { "http://" };
    let origin_host = origin.strip_prefix(scheme).unwrap_or("");
    if !host.is_empty() && origin_host.eq_ignore_ascii_case(host) {
        return Ok(());
    }
    tracing::info!(%origin, %host, "refused a WebSocket from another origin");
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden_origin",
        format!("a WebSocket from origin {origin:?} is not accepted; open it from a page of this server ({host})"),
    ))
}

/// The CORS layer for `origins` (none: no layer, so no page of another
/// origin may read an answer or send a write). Preflights are answered
/// before authentication: they carry no token by design.
pub fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use std::time::Duration;
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let origins = origins.iter().filter_map(|o| o.parse().ok());
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([header::RETRY_AFTER, header::WWW_AUTHENTICATE])
            .max_age(Duration::from_secs(600)),
    )
}

/// An origin as `--cors-origin` takes it: a scheme and a host (and port),
/// nothing more, as browsers send it.
pub fn parse_origin(text: &str) -> Result<String, String> {
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .ok_or_else(|| format!("{text:?} is not an origin: it starts with https:// or http://"))?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '*', ' ']) {
        return Err(format!(
            "{text:?} is not an origin: a scheme and a host, like https://shop.example.com \
             (no path, no trailing slash, no wildcard)"
        ));
    }
    let _: axum::http::HeaderValue = text
        .parse()
        .map_err(|_| format!("{text:?} is not an origin"))?;
    Ok(text.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), value.parse().unwrap());
        }
        map
    }

    #[test]
    fn a_write_must_say_it_is_json_ndjson_or_csv_and_be_uncompressed() {
        let ok = [
            "application/json",
            "application/json; charset=utf-8",
            "application/x-ndjson",
            "Text/CSV",
        ];
        for t in ok {
            assert!(
                check_write(&Method::POST, &headers(&[(header::CONTENT_TYPE, t)])).is_ok(),
                "{t}"
            );
        }
        for t in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            let refused =
                check_write(&Method::POST, &headers(&[(header::CONTENT_TYPE, t)])).unwrap_err();
            assert_eq!(refused.code, "unsupported_media_type", "{t}");
        }
        assert!(
            check_write(&Method::POST, &HeaderMap::new()).is_err(),
            "no type at all"
        );
        assert!(check_write(&Method::GET, &HeaderMap::new()).is_ok());
        assert!(check_write(&Method::DELETE, &HeaderMap::new()).is_ok());
        let gzip = headers(&[
            (header::CONTENT_TYPE, "application/json"),
            (header::CONTENT_ENCODING, "gzip"),
        ]);
        assert!(check_write(&Method::POST, &gzip).is_err());
        let identity = headers(&[
            (header::CONTENT_TYPE, "application/json"),
            (header::CONTENT_ENCODING, "identity"),
        ]);
        assert!(check_write(&Method::POST, &identity).is_ok());
    }

    #[test]
    fn a_websocket_from_a_browser_must_come_from_this_server_or_a_listed_origin() {
        let host = (header::HOST, "127.0.0.1:8080");
        let from = |origin: &str| headers(&[host.clone(), (header::ORIGIN, origin)]);
        assert!(
            same_origin(&headers(std::slice::from_ref(&host)), &[], false).is_ok(),
            "not a browser"
        );
        assert!(same_origin(&from("http://127.0.0.1:8080"), &[], false).is_ok());
        assert!(same_origin(&from("https://evil.example"), &[], false).is_err());
        assert!(same_origin(&from("null"), &[], false).is_err());
        // Another port, or the other scheme, is another origin.
        assert!(same_origin(&from("http://127.0.0.1:9090"), &[], false).is_err());
        assert!(same_origin(&from("https://127.0.0.1:8080"), &[], false).is_err());
        assert!(same_origin(&from("http://127.0.0.1:8080"), &[], true).is_err());
        assert!(same_origin(&from("https://127.0.0.1:8080"), &[], true).is_ok());
        let listed = ["https://shop.example".to_owned()];
        assert!(same_origin(&from("https://shop.example"), &listed, false).is_ok());
        assert!(same_origin(&from("https://evil.example"), &listed, false).is_err());
    }

    #[test]
    fn an_origin_is_a_scheme_and_a_host() {
        assert_eq!(
            parse_origin("https://Shop.example:8443"),
            Ok("https://shop.example:8443".to_owned())
        );
        for bad in [
            "shop.example",
            "https://shop.example/",
            "*",
            "https://*.example",
            "https://",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }
}
