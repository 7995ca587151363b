//! The web console's session: who its token is, and a cookie that opens
//! the live stream for a browser.
//!
//! A browser's EventSource and WebSocket cannot send an Authorization
//! header, and a secret in the URL would land in logs. So the console,
//! holding its token, asks `POST /v1/session/stream` for a cookie that is
//! HttpOnly, SameSite=Strict, limited to `/v1` and twelve hours, and
//! signed with a key this process draws at start. It carries the token's
//! name, not its secret, and opens only the two stream routes (see
//! [`stream_caller`]): a token removed from the auth file stops opening
//! them at the next connection, and a restart ends every cookie (the
//! console asks for a new one).

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use stockflow_service::auth::{Caller, Role, Tokens};

use super::backend::Backend;

/// The cookie's name.
pub const COOKIE: &str = "sf_stream";
/// How long a cookie opens the stream.
const LIFETIME_SECONDS: i64 = 12 * 3600;

/// The key cookies are signed with: random, this process only.
fn key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(rand::random)
}

fn signature(payload: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key()).expect("any key length");
    mac.update(payload.as_bytes());
    mac
}

/// A cookie value for `name`, valid until `expires` (Unix seconds):
/// `hex(name).expires.hex(hmac)`.
fn ticket(name: &str, expires: i64) -> String {
    let payload = format!("{}.{expires}", hex::encode(name));
    let signed = hex::encode(signature(&payload).finalize().into_bytes());
    format!("{payload}.{signed}")
}

/// The token name a cookie value names, if its signature holds (checked
/// in constant time) and it has not expired at `now`.
fn verify(value: &str, now: i64) -> Option<String> {
    let (payload, signed) = value.rsplit_once('.')?;
    let signed = hex::decode(signed).ok()?;
    signature(payload).verify_slice(&signed).ok()?;
    let (name, expires) = payload.split_once('.')?;
    (expires.parse::<i64>().ok()? > now).then_some(())?;
    String::from_utf8(hex::decode(name).ok()?).ok()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The caller a request to a stream route stands for by its cookie, if it
/// carries a valid one whose token still has the `read` role.
pub fn stream_caller(headers: &HeaderMap, tokens: &Tokens) -> Option<Caller> {
    let value = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))?;
    let name = verify(value, unix_now())?;
    tokens
        .named(&name)
        .filter(|c| c.roles.contains(&Role::Read))
}

/// Who the caller is, as `GET /v1/session` answers.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// The token's name (`anonymous` on a server without an auth file).
    name: String,
    /// What it may do; every role on a server without an auth file.
    #[schema(value_type = Vec<String>, example = json!(["read", "orders"]))]
    roles: Vec<&'static str>,
    /// Whether this server asks for tokens at all.
    authentication: bool,
}

#[utoipa::path(get, path = "/v1/session",
    operation_id = "getSession", tag = "access",
    summary = "Who the presented token is",
    description = "The token's name and roles, for a client (the web console) to show only what they allow. Any known token may ask.",
    responses(
        (status = 200, description = "The caller", body = Session),
        openapi::ReadRefusals,
    ))]
pub async fn get<B: Backend>(
    State(backend): State<Arc<B>>,
    Extension(caller): Extension<Caller>,
) -> Json<Session> {
    Json(Session {
        name: caller.name,
        roles: caller.roles.iter().map(|r| r.as_str()).collect(),
        authentication: backend.config().auth.is_some(),
    })
}

/// When a stream cookie stops working.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamCookie {
    /// RFC 3339, UTC.
    expires_at: String,
}

#[utoipa::path(post, path = "/v1/session/stream",
    operation_id = "openStreamSession", tag = "access",
    summary = "A cookie that opens the live stream from a browser",
    description = "Sets the HttpOnly cookie `sf_stream` (path /v1, SameSite=Strict, 12 hours), which `GET /v1/stream` and `GET /v1/ws` accept in place of the Authorization header a browser's EventSource and WebSocket cannot send. It names the token, not its secret; it stops working when the token leaves the auth file or loses `read`, and when the server restarts.",
    request_body(content = serde_json::Value, description = "Empty: `{}`", content_type = "application/json"),
    responses(
        (status = 200, description = "The cookie is set", body = StreamCookie),
        openapi::WriteRefusals,
    ))]
pub async fn stream_cookie<B: Backend>(
    State(backend): State<Arc<B>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let expires = unix_now() + LIFETIME_SECONDS;
    let secure = if backend.config().tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={}; Path=/v1; Max-Age={LIFETIME_SECONDS}; HttpOnly; SameSite=Strict{secure}",
        ticket(&caller.name, expires)
    );
    let expires_at = chrono::DateTime::from_timestamp(expires, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    let mut response = Json(StreamCookie { expires_at }).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

use super::openapi;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_opens_until_it_expires_and_only_unaltered() {
        let value = ticket("console.eu", 1_000);
        assert_eq!(verify(&value, 999).as_deref(), Some("console.eu"));
        assert_eq!(verify(&value, 1_000), None, "expired");
        let later = value.replacen(".1000.", ".9000.", 1);
        assert_ne!(later, value);
        assert_eq!(verify(&later, 999), None, "a changed expiry");
        let other = format!(
            "{}{}",
            hex::encode("admin"),
            &value[hex::encode("console.eu").len()..]
        );
        assert_eq!(verify(&other, 999), None, "a changed name");
        assert_eq!(verify("", 0), None);
        assert_eq!(verify("zz.1.zz", 0), None);
    }
}
