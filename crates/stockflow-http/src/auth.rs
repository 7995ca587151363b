//! Who may call which operation: the role each one needs, and the
//! middleware that holds a request's bearer token to it.
//!
//! Without an auth file (`serve` on a loopback address, `demo`) every
//! request passes as `anonymous`. With one, every operation but liveness,
//! readiness and the console's static files needs `Authorization: Bearer
//! <secret>` of a token that has the operation's role: 401 without a
//! known token, 403 naming the role with one that lacks it.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use stockflow_service::auth::{Caller, ClusterSecret, Role, Tokens};

use super::ApiError;

/// What an operation asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone: liveness, readiness, the console's files (a browser loads
    /// them before it can hold a token; they carry no data).
    Open,
    /// Any token the server knows, whatever its roles: who-am-I.
    AnyToken,
    /// Only the other instances of a Kafka-mode cluster, by the cluster
    /// secret (when the server has one).
    Cluster,
    Needs(Role),
}

/// The access an operation needs, by its method and path as the router
/// matched it: the one place that says who may do what.
pub fn access(method: &Method, path: &str) -> Access {
    use Role::*;
    let read = *method == Method::GET || *method == Method::HEAD;
    match path {
        "/healthz" | "/readyz" | "/" => Access::Open,
        _ if path.starts_with("/v1/internal/") => Access::Cluster,
        _ if path.starts_with("/ui/") => Access::Open,
        "/metrics" => Access::Needs(Metrics),
        // It verifies the books across the whole state: an operator's
        // question, and not a cheap one.
        "/v1/check" => Access::Needs(Admin),
        "/v1/session" => Access::AnyToken,
        // It writes nothing but a cookie that opens what `read` opens.
        "/v1/session/stream" => Access::Needs(Read),
        _ if read => Access::Needs(Read),
        "/v1/events" | "/v1/sources/{format}/events" => Access::Needs(Ingest),
        _ if path.starts_with("/v1/orders") => Access::Needs(Orders),
        _ => Access::Needs(Admin),
    }
}

/// The token name a connection's verified client certificate stands for
/// (`--tls-client-ca`), put in each of its requests by the accept loop.
#[derive(Clone, Debug)]
pub struct ClientCertificate(pub String);

/// The routes a stream cookie opens (see `session`).
const STREAMS: [&str; 2] = ["/v1/stream", "/v1/ws"];

/// The secret of an `Authorization: Bearer <secret>` header; the scheme's
/// name is case-insensitive (RFC 9110, 11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, secret) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| secret.trim())
        .filter(|s| !s.is_empty())
}

/// The auth middleware's settings.
#[derive(Clone)]
pub struct Guard {
    /// `None`: no auth file, every caller is `anonymous`.
    pub tokens: Option<Arc<Tokens>>,
    /// Whether GET /metrics is open to anyone (`--metrics-without-auth`).
    pub metrics_open: bool,
    /// Kafka mode: the secret the instances present to each other.
    pub cluster: Option<Arc<ClusterSecret>>,
}

/// 401, saying how to authenticate.
fn unauthorized(message: &'static str) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"stockflow\""),
    );
    response
}

/// Who sent a request, for the audit: the name of the token it was
/// authenticated as (`anonymous` on a server without tokens). Every write
/// records it: on events, catalog entries, orders and dead letters.
#[derive(Clone, Debug)]
pub struct By(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for By {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<By, Self::Rejection> {
        Ok(By(parts.extensions.get::<Caller>().map_or_else(
            || stockflow_core::ANONYMOUS.to_owned(),
            |caller| caller.name.clone(),
        )))
    }
}

/// The caller of an unauthenticated server.
pub fn anonymous() -> Caller {
    Caller {
        name: "anonymous".into(),
        roles: Role::ALL.to_vec(),
    }
}

/// Middleware: identifies the caller (put in the request's extensions for
/// the handlers) and refuses one without the operation's role.
pub async fn authorize(State(guard): State<Guard>, mut request: Request, next: Next) -> Response {
    if guard.tokens.is_none() && guard.cluster.is_none() {
        request.extensions_mut().insert(anonymous());
        return next.run(request).await;
    }
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str());
    let needs = match access(request.method(), path) {
        Access::Needs(Role::Metrics) if guard.metrics_open => Access::Open,
        other => other,
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer);
    let from_cluster = guard
        .cluster
        .as_ref()
        .zip(presented)
        .is_some_and(|(cluster, secret)| cluster.matches(secret));
    let caller = match (&guard.tokens, presented) {
        // Another instance: it forwards reads, nothing else.
        _ if from_cluster => Some(Caller {
            name: "cluster".into(),
            roles: vec![Role::Read],
        }),
        (None, _) => Some(anonymous()),
        (Some(tokens), Some(secret)) => tokens.identify(secret),
        // A client certificate names its token.
        (Some(tokens), None) if request.extensions().get::<ClientCertificate>().is_some() => {
            let certificate = request.extensions().get::<ClientCertificate>();
            certificate.and_then(|c| tokens.named(&c.0))
        }
        // A browser's EventSource or WebSocket: its stream cookie.
        (Some(tokens), None) if STREAMS.contains(&path) => {
            super::session::stream_caller(request.headers(), tokens, guard.cluster.as_deref())
        }
        (Some(_), None) => None,
    };
    if needs == Access::Cluster && !from_cluster {
        if presented.is_none() {
            return unauthorized("send Authorization: Bearer <the cluster secret>");
        }
        tracing::info!(%path, "refused: not the cluster secret");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only the instances of this cluster call /v1/internal/ (with the cluster secret)",
        )
        .into_response();
    }
    match (needs, caller) {
        (Access::Open, caller) => {
            request
                .extensions_mut()
                .insert(caller.unwrap_or_else(|| Caller {
                    name: "anonymous".into(),
                    roles: Vec::new(),
                }));
            next.run(request).await
        }
        (Access::AnyToken | Access::Needs(_) | Access::Cluster, None) => {
            unauthorized(if presented.is_some() {
                "the bearer token is not one this server knows"
            } else {
                "send Authorization: Bearer <token> (see `stockflow token create`)"
            })
        }
        (Access::Needs(role), Some(caller)) if !caller.roles.contains(&role) => {
            let has: Vec<&str> = caller.roles.iter().map(|r| r.as_str()).collect();
            tracing::info!(token = %caller.name, needs = role.as_str(), %path, "refused: role missing");
            ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this operation needs the role {}; the token {} has {}",
                    role.as_str(),
                    caller.name,
                    if has.is_empty() {
                        "none".to_owned()
                    } else {
                        has.join(", ")
                    }
                ),
            )
            .into_response()
        }
        (Access::AnyToken | Access::Needs(_) | Access::Cluster, Some(caller)) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
    }
}
