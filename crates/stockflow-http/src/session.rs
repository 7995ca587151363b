//! The web console's session: who its token is, and a cookie that opens
//! the live stream for a browser.
//!
//! A browser's EventSource and WebSocket cannot send an Authorization
//! header, and a secret in the URL would land in logs. So the console,
//! holding its token, asks `POST /v1/session/stream` for a cookie: a
//! session cookie (gone with the browser; `DELETE` ends it at sign-out),
//! HttpOnly, SameSite=Strict, limited to `/v1`, valid twelve hours at
//! most. It carries the token's name, not its secret, and opens only the
//! two stream routes (see [`stream_caller`]). Its signature covers the
//! digest of the token's secret, so a token removed from the auth file, or
//! replaced under the same name, stops opening them at the next
//! connection. The key is derived from the cluster secret in Kafka mode
//! (any instance takes any instance's cookie), else drawn at start (a
//! restart ends every cookie; the console asks for a new one).

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use stockflow_service::auth::{Caller, ClusterSecret, Role, Tokens};

use super::backend::Backend;
use super::ApiError;

/// The cookie's name.
pub const COOKIE: &str = "sf_stream";
/// How long a cookie opens the stream.
const LIFETIME_SECONDS: i64 = 12 * 3600;

/// The key cookies are signed with: derived from the cluster secret, or
/// random for this process.
fn key(cluster: Option<&ClusterSecret>) -> [u8; 32] {
    static DRAWN: OnceLock<[u8; 32]> = OnceLock::new();
    match cluster {
        Some(cluster) => cluster.derive("stream cookie"),
        None => *DRAWN.get_or_init(rand::random),
    }
}

/// The MAC of a cookie's `payload` for the token whose secret's digest
/// is `bound`.
fn signature(key: &[u8; 32], payload: &str, bound: &[u8; 32]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(payload.as_bytes());
    mac.update(b"\0");
    mac.update(bound);
    mac
}

/// A cookie value for `name`, valid until `expires` (Unix seconds):
/// `hex(name).expires.hex(hmac)`.
fn ticket(key: &[u8; 32], name: &str, bound: &[u8; 32], expires: i64) -> String {
    let payload = format!("{}.{expires}", hex::encode(name));
    let signed = hex::encode(signature(key, &payload, bound).finalize().into_bytes());
    format!("{payload}.{signed}")
}

/// The caller a cookie value stands for, if it names a token of `tokens`,
/// its signature holds for that token's secret (checked in constant time)
/// and it has not expired at `now`.
fn verify(key: &[u8; 32], value: &str, tokens: &Tokens, now: i64) -> Option<Caller> {
    let (payload, signed) = value.rsplit_once('.')?;
    let signed = hex::decode(signed).ok()?;
    let (name, expires) = payload.split_once('.')?;
    (expires.parse::<i64>().ok()? > now).then_some(())?;
    let name = String::from_utf8(hex::decode(name).ok()?).ok()?;
    let (caller, bound) = tokens.bound(&name)?;
    signature(key, payload, &bound).verify_slice(&signed).ok()?;
    Some(caller)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The caller a request to a stream route stands for by its cookie, if it
/// carries a valid one (any of them, if several) whose token still has the
/// `read` role.
pub fn stream_caller(
    headers: &HeaderMap,
    tokens: &Tokens,
    cluster: Option<&ClusterSecret>,
) -> Option<Caller> {
    let key = key(cluster);
    let now = unix_now();
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .find_map(|value| verify(&key, value, tokens, now))
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
) -> Result<Response, ApiError> {
    let config = backend.config();
    let expires = unix_now() + LIFETIME_SECONDS;
    // Without an auth file the stream is open and the cookie unused.
    let bound = match &config.auth {
        None => [0; 32],
        Some(tokens) => match tokens.bound(&caller.name) {
            Some((_, bound)) => bound,
            None => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "only a token of the auth file can open the stream from a browser",
                ))
            }
        },
    };
    let key = key(config.cluster_secret.as_deref());
    let cookie = format!(
        "{COOKIE}={}; Path=/v1; HttpOnly; SameSite=Strict{}",
        ticket(&key, &caller.name, &bound, expires),
        secure(config)
    );
    let expires_at = chrono::DateTime::from_timestamp(expires, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    Ok(with_cookie(
        Json(StreamCookie { expires_at }).into_response(),
        &cookie,
    ))
}

/// `response` setting `cookie`.
fn with_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `; Secure` when this server speaks TLS.
fn secure(config: &stockflow_service::config::Config) -> &'static str {
    if config.tls.is_some() {
        "; Secure"
    } else {
        ""
    }
}

#[utoipa::path(delete, path = "/v1/session/stream",
    operation_id = "closeStreamSession", tag = "access",
    summary = "Ends the browser's stream cookie (sign-out)",
    responses(
        (status = 204, description = "The cookie is cleared"),
        openapi::WriteRefusals,
    ))]
pub async fn end_stream_cookie<B: Backend>(State(backend): State<Arc<B>>) -> Response {
    let cookie = format!(
        "{COOKIE}=; Path=/v1; Max-Age=0; HttpOnly; SameSite=Strict{}",
        secure(backend.config())
    );
    with_cookie(StatusCode::NO_CONTENT.into_response(), &cookie)
}

use super::openapi;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_opens_until_it_expires_and_only_unaltered_and_for_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        stockflow_service::auth::create(&file, "console.eu", &[Role::Read]).unwrap();
        stockflow_service::auth::create(&file, "admin", &[Role::Read]).unwrap();
        let tokens = Tokens::load(&file).unwrap();
        let key = key(None);
        let (_, bound) = tokens.bound("console.eu").unwrap();
        let value = ticket(&key, "console.eu", &bound, 1_000);
        let name = |v: &str, now| verify(&key, v, &tokens, now).map(|c| c.name);
        assert_eq!(name(&value, 999).as_deref(), Some("console.eu"));
        assert_eq!(name(&value, 1_000), None, "expired");
        let later = value.replacen(".1000.", ".9000.", 1);
        assert_ne!(later, value);
        assert_eq!(name(&later, 999), None, "a changed expiry");
        let other = format!(
            "{}{}",
            hex::encode("admin"),
            &value[hex::encode("console.eu").len()..]
        );
        assert_eq!(name(&other, 999), None, "a changed name");
        assert_eq!(name("", 0), None);
        assert_eq!(name("zz.1.zz", 0), None);
        assert_eq!(verify(&[7; 32], &value, &tokens, 999), None, "another key");
    }
}
