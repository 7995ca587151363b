//! The web dashboard and storefront: static files under `web/`, embedded in
//! the binary (so `stockflow demo` serves them with nothing installed),
//! served at `/` and `/ui/…`. The pages use only the public API and the
//! live stream.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// The files of `crates/stockflow-http/web`, compiled in (also in debug builds:
/// the `debug-embed` feature), so tests see what ships.
#[derive(rust_embed::Embed)]
#[folder = "web/"]
struct Assets;

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(file) = Assets::get(path) else {
        return ApiError::not_found(format!("no file {path:?} in the web UI")).into_response();
    };
    let etag = format!("\"{}\"", hex::encode(&file.metadata.sha256_hash()[..12]));
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let mut response = (
        [(header::CONTENT_TYPE, content_type(path))],
        file.data.into_owned(),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("hex is a valid header value"),
    );
    // Revalidate every time: the files are tiny and a new binary must
    // never run with the old script.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// GET /: the single page; views are chosen by the URL's #fragment.
#[utoipa::path(get, path = "/",
    operation_id = "getConsole", tag = "operations",
    summary = "The web dashboard and storefront (HTML)",
    description = "Static files embedded in the binary, also under /ui/…; they use only this API and /v1/stream.",
    responses(
        (status = 200, description = "The page", content_type = "text/html"),
    ))]
pub async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// GET /ui/{path}
pub async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_page_imports_is_embedded() {
        let index =
            String::from_utf8(Assets::get("index.html").unwrap().data.into_owned()).unwrap();
        assert!(index.contains("/ui/app.js"));
        for file in Assets::iter() {
            let text = String::from_utf8(Assets::get(&file).unwrap().data.into_owned()).unwrap();
            for import in text.lines().filter_map(|l| l.split(" from './").nth(1)) {
                let name = import.split('\'').next().unwrap();
                assert!(Assets::get(name).is_some(), "{file} imports missing {name}");
            }
        }
    }
}
