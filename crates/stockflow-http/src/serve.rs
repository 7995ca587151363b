//! The accept loop of both modes' HTTP servers, with the limits that keep
//! slow or idle clients from holding the server: at most
//! `connections_max` open connections, and a request's head must arrive
//! within `header_read_timeout` (its body has the same time, in
//! `ingest::read_body`). axum's own `serve` has neither.
//!
//! At the cap, a new connection takes the place of the oldest one that
//! has not yet sent a whole request head (which is closed): so a crowd of
//! half-sent heads cannot keep a health probe or a real client out for
//! the length of the timeout. Only when every open connection is inside a
//! request is the new one closed at once (counted and logged).
//!
//! One client host (an IPv4 address, an IPv6 /64) holds at most
//! `connections_per_address_max` of them: a single host cannot take every
//! place (one more from it is closed at once, counted and logged). Behind
//! a proxy every client has the proxy's address; raise it to
//! `connections_max` there. An upgraded connection (a WebSocket) keeps
//! its place under both limits until it closes.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use stockflow_service::tls::ServerTls;

use crate::auth::ClientCertificate;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How long a stopping server lets open connections finish.
const DRAIN_MAX: Duration = Duration::from_secs(10);

/// A connection's place under the cap.
type Slot = Arc<parking_lot::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>;

/// Connections that have not sent a whole request head yet, oldest first:
/// their slot, and how to close them.
#[derive(Default)]
struct Waiting {
    next_id: u64,
    by_age: BTreeMap<u64, (Slot, tokio::sync::oneshot::Sender<()>)>,
}

impl Waiting {
    /// Closes the oldest waiting connection and hands over its place.
    fn evict_oldest(&mut self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        while let Some((_, (slot, close))) = self.by_age.pop_first() {
            if let Some(permit) = slot.lock().take() {
                let _ = close.send(());
                return Some(permit);
            }
        }
        None
    }
}

/// The connection limits (see `config`).
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    pub connections_max: usize,
    pub connections_per_address_max: usize,
    pub header_read_timeout: Duration,
}

/// Open connections per client address.
#[derive(Clone, Default)]
struct PerAddress(Arc<parking_lot::Mutex<HashMap<IpAddr, usize>>>);

/// One connection's count in [`PerAddress`], given back when dropped.
struct Counted {
    table: PerAddress,
    address: IpAddr,
}

impl PerAddress {
    /// Counts one more connection from `address`, unless it has `max`.
    fn admit(&self, address: IpAddr, max: usize) -> Option<Counted> {
        let address = host_of(address);
        let mut table = self.0.lock();
        if table.get(&address).is_some_and(|open| *open >= max) || max == 0 {
            return None;
        }
        *table.entry(address).or_insert(0) += 1;
        Some(Counted {
            table: self.clone(),
            address,
        })
    }
}

/// Counts one more closed connection; answers its number when it is worth
/// a log line: each of the first ten, then every 1,000th (an attack must
/// not fill the log either).
fn worth_a_line(closed: &AtomicU64) -> Option<u64> {
    let n = closed.fetch_add(1, Ordering::Relaxed) + 1;
    (n <= 10 || n.is_multiple_of(1000)).then_some(n)
}

/// The host an address counts for: an IPv4 address (also one mapped into
/// IPv6) as it is, an IPv6 address by its /64, the block one host gets.
fn host_of(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut table = self.table.0.lock();
        if let Some(open) = table.get_mut(&self.address) {
            *open -= 1;
            if *open == 0 {
                table.remove(&self.address);
            }
        }
    }
}

impl ConnectionLimits {
    pub fn of(config: &stockflow_service::config::Config) -> ConnectionLimits {
        ConnectionLimits {
            connections_max: config.connections_max,
            connections_per_address_max: config.connections_per_address_max,
            header_read_timeout: config.read_timeout,
        }
    }
}

/// Serves `router` on `listener` on a task of its own, until the returned
/// sender is used (or dropped).
pub fn spawn(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    tls: Option<Arc<ServerTls>>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, router, limits, tls, async move {
        let _ = stopped.await;
    }));
    (stop, task)
}

/// Serves `router` on `listener` until `shutdown` completes, then lets the
/// open connections finish (at most [`DRAIN_MAX`]). With `tls`, every
/// connection is TLS (HTTP/1.1 or HTTP/2).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    tls: Option<Arc<ServerTls>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let open = Arc::new(Semaphore::new(limits.connections_max));
    // Stopping: every connection finishes its request in flight and closes.
    let (stopping, stop_seen) = tokio::sync::watch::channel(false);
    let shed = AtomicU64::new(0);
    let per_address = PerAddress::default();
    let refused = AtomicU64::new(0);
    let waiting = Arc::new(parking_lot::Mutex::new(Waiting::default()));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: wait, do not spin.
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Its own address's limit first: a host over it takes no one's place.
        let Some(counted) = per_address.admit(peer.ip(), limits.connections_per_address_max) else {
            metrics::counter!("stockflow_http_connections_refused_per_address_total").increment(1);
            if let Some(n) = worth_a_line(&refused) {
                tracing::warn!(%peer, limit = limits.connections_per_address_max, refused = n, "closing a connection: too many open from its address");
            }
            drop(stream);
            continue;
        };
        let permit = open.clone().try_acquire_owned().ok();
        let permit = permit.or_else(|| {
            let taken = waiting.lock().evict_oldest();
            if taken.is_some() {
                metrics::counter!("stockflow_http_connections_evicted_total").increment(1);
            }
            taken
        });
        let Some(permit) = permit else {
            metrics::counter!("stockflow_http_connections_shed_total").increment(1);
            if let Some(n) = worth_a_line(&shed) {
                tracing::warn!(%peer, limit = limits.connections_max, shed = n, "shedding a connection: too many open");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let slot: Slot = Arc::new(parking_lot::Mutex::new(Some(permit)));
        let (close, closed) = tokio::sync::oneshot::channel::<()>();
        let id = {
            let mut waiting = waiting.lock();
            let id = waiting.next_id;
            waiting.next_id += 1;
            waiting.by_age.insert(id, (slot.clone(), close));
            id
        };
        // Its first request head makes it no longer evictable (the lock
        // is taken for that one only).
        let headed = waiting.clone();
        let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
        // The token a client certificate names, once the handshake is done.
        let certified: Arc<std::sync::OnceLock<ClientCertificate>> = Arc::default();
        let named = certified.clone();
        let router = tower::ServiceExt::map_request(
            router.clone(),
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                if first.swap(false, Ordering::Relaxed) {
                    headed.lock().by_age.remove(&id);
                }
                if let Some(name) = named.get() {
                    request.extensions_mut().insert(name.clone());
                }
                request
            },
        );
        let service = hyper_util::service::TowerToHyperService::new(router);
        let place = (slot, counted);
        let stop_seen = stop_seen.clone();
        let gone = waiting.clone();
        let acceptor = tls
            .as_ref()
            .map(|tls| tokio_rustls::TlsAcceptor::from(tls.config()));
        tokio::spawn(async move {
            let mut closed = closed;
            let ended = match acceptor {
                None => {
                    let io = JsonParseErrors::new(TokioIo::new(stream), place);
                    drive(io, service, limits, false, closed, stop_seen).await
                }
                Some(acceptor) => {
                    let handshake = handshake(acceptor, stream, peer, limits.header_read_timeout);
                    let stream = tokio::select! {
                        stream = handshake => stream,
                        // Evicted while shaking hands.
                        Ok(()) = &mut closed => None,
                    };
                    match stream {
                        Some(stream) => {
                            let session = stream.get_ref().1;
                            let h2 = session.alpn_protocol() == Some(b"h2");
                            // Verified by the handshake against --tls-client-ca.
                            let name = session
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .and_then(|leaf| stockflow_service::tls::client_name(leaf));
                            if let Some(name) = name {
                                let _ = certified.set(ClientCertificate(name));
                            }
                            let io = JsonParseErrors::new(TokioIo::new(stream), place);
                            drive(io, service, limits, h2, closed, stop_seen).await
                        }
                        None => Ok(()),
                    }
                }
            };
            if let Err(error) = ended {
                tracing::debug!(%peer, %error, "connection ended");
            }
            gone.lock().by_age.remove(&id);
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    // Every connection gives its permit back when it ends.
    let all = u32::try_from(limits.connections_max).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN_MAX, open.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("connections still open {DRAIN_MAX:?} after stopping; closing them");
    }
    Ok(())
}

/// Serves one connection's requests until it ends, is evicted (`closed`)
/// or the server stops: HTTP/2 when `h2` (the client chose it by ALPN),
/// else HTTP/1.1. (hyper-util's auto builder would sniff the version
/// itself, but outside the head timeout: a silent client would stay.)
async fn drive<I, S>(
    io: I,
    service: S,
    limits: ConnectionLimits,
    h2: bool,
    closed: tokio::sync::oneshot::Receiver<()>,
    stop_seen: tokio::sync::watch::Receiver<bool>,
) -> hyper::Result<()>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        // HTTP/2 has no head timeout: pings close a connection whose
        // client stopped answering, and `idle` one with no request open
        // for as long (as an idle HTTP/1.1 keep-alive is). Streams per
        // connection are capped, so one connection is not a hundred.
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(limits.header_read_timeout)
            .keep_alive_timeout(limits.header_read_timeout)
            .max_concurrent_streams(H2_STREAMS_MAX)
            .max_header_list_size(H2_HEADERS_BYTES_MAX);
        let activity = Arc::new(Activity::new());
        let service = Tracked {
            inner: service,
            activity: activity.clone(),
        };
        let connection = builder.serve_connection(io, service);
        let idle = async move {
            activity.idle_for(limits.header_read_timeout).await;
            metrics::counter!("stockflow_http_idle_connections_closed_total").increment(1);
        };
        until_closed(connection, closed, stop_seen, idle).await
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        let connection = builder.serve_connection(io, service).with_upgrades();
        until_closed(connection, closed, stop_seen, std::future::pending()).await
    }
}

/// A connection hyper serves, which can be asked to finish gracefully.
trait Graceful: Future<Output = hyper::Result<()>> {
    fn finish(self: std::pin::Pin<&mut Self>);
}

impl<I, S> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    hyper::server::conn::http1::UpgradeableConnection<I, S>: Future<Output = hyper::Result<()>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
    >,
{
    fn finish(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    hyper::server::conn::http2::Connection<I, S, E>: Future<Output = hyper::Result<()>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
    >,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, axum::body::Body>,
{
    fn finish(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Runs `connection` until it ends, is evicted or the server stops.
async fn until_closed(
    connection: impl Graceful,
    closed: tokio::sync::oneshot::Receiver<()>,
    mut stop_seen: tokio::sync::watch::Receiver<bool>,
    idle: impl Future<Output = ()>,
) -> hyper::Result<()> {
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        ended = connection.as_mut() => ended,
        // Evicted: its place went to a newer connection.
        Ok(()) = closed => Ok(()),
        () = idle => {
            connection.as_mut().finish();
            connection.await
        }
        _ = async { let _ = stop_seen.wait_for(|stopping| *stopping).await; } => {
            connection.as_mut().finish();
            connection.await
        }
    }
}

/// Requests one HTTP/2 connection may have open at once.
const H2_STREAMS_MAX: u32 = 64;
/// Bytes of one request's headers over HTTP/2.
const H2_HEADERS_BYTES_MAX: u32 = 64 << 10;

/// An HTTP/2 connection's open requests (their answers' bodies included,
/// so a live stream counts), and since when it has had none.
struct Activity {
    open: std::sync::atomic::AtomicUsize,
    idle_since: parking_lot::Mutex<std::time::Instant>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            open: Default::default(),
            idle_since: parking_lot::Mutex::new(std::time::Instant::now()),
        }
    }

    /// Completes once the connection has had no open request for `limit`.
    async fn idle_for(self: Arc<Self>, limit: Duration) {
        let every = (limit / 4).max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(every).await;
            if self.open.load(Ordering::Acquire) == 0 && self.idle_since.lock().elapsed() >= limit {
                return;
            }
        }
    }
}

/// One open request of an [`Activity`], closed when dropped.
struct Open(Arc<Activity>);

impl Open {
    fn new(activity: Arc<Activity>) -> Open {
        activity.open.fetch_add(1, Ordering::AcqRel);
        Open(activity)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.idle_since.lock() = std::time::Instant::now();
        }
    }
}

/// A service whose requests are counted open until their answer's body
/// is done or dropped.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Tracked<S>
where
    S: hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
    >,
    S::Future: Send + 'static,
{
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send>,
    >;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let open = Open::new(self.activity.clone());
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| {
                axum::body::Body::new(CountedBody {
                    inner: body,
                    _open: open,
                })
            }))
        })
    }
}

/// An answer's body that keeps its request counted open.
struct CountedBody {
    inner: axum::body::Body,
    _open: Open,
}

impl hyper::body::Body for CountedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The answer to a plain-HTTP request on a TLS port: that it takes https.
const HTTPS_REQUIRED: &str = "{\"code\":\"https_required\",\"message\":\"this port speaks \
    HTTPS only: use https:// in the URL\"}";

/// A TLS handshake with a new connection, done `within` or failed (and
/// counted, once, whatever the cause).
async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    within: std::time::Duration,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    let why = match tokio::time::timeout(within, shake(acceptor, stream)).await {
        Ok(Ok(stream)) => return Some(stream),
        Ok(Err(why)) => why,
        Err(_) => "no TLS handshake in time".to_owned(),
    };
    metrics::counter!("stockflow_http_tls_handshakes_failed_total").increment(1);
    tracing::debug!(%peer, %why, "TLS handshake failed");
    None
}

/// The handshake itself. A client that speaks plain HTTP instead (its
/// first byte is not a TLS record's) is told to use https, as far as it
/// reads an answer, and closed.
async fn shake(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
) -> Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, String> {
    use tokio::io::AsyncWriteExt;
    let mut first = [0u8; 1];
    // 0x16: a TLS handshake record.
    if matches!(stream.peek(&mut first).await, Ok(1)) && first[0] != 0x16 {
        let mut stream = stream;
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{HTTPS_REQUIRED}",
            HTTPS_REQUIRED.len()
        );
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
        return Err("plain HTTP on the TLS port".to_owned());
    }
    acceptor.accept(stream).await.map_err(|e| e.to_string())
}

/// A connection's IO, through which hyper's own answers to a request head
/// it cannot parse (400 for a bad request line or header, 414, 431) leave
/// with the API's `{code, message}` body instead of an empty one.
///
/// hyper writes those answers itself, before any service sees a request,
/// and offers no hook for their body; so they are recognised on the way
/// out. The test is exact: a write that is nothing but a head, of status
/// 400, 414 or 431, with `content-length: 0`. The service never answers
/// that way: `errors_are_json` gives each of its errors a JSON body, so
/// their heads say a length above 0.
struct JsonParseErrors<T> {
    inner: T,
    /// The JSON answer still to be written in place of hyper's.
    pending: Vec<u8>,
    written: usize,
    /// The connection's place under both limits, given back when the IO
    /// is dropped: an upgraded connection (a WebSocket) keeps it.
    _place: (Slot, Counted),
}

impl<T> JsonParseErrors<T> {
    fn new(inner: T, place: (Slot, Counted)) -> JsonParseErrors<T> {
        JsonParseErrors {
            inner,
            pending: Vec::new(),
            written: 0,
            _place: place,
        }
    }
}

/// The JSON answer to write instead of `head`, if `head` is hyper's own
/// answer to a request head it could not parse.
fn answer_for_parse_error(head: &[u8]) -> Option<Vec<u8>> {
    let rest = head.strip_prefix(b"HTTP/1.1 ")?;
    // The status first: every other answer is passed on after 13 bytes.
    if !matches!(rest.get(..4)?, b"400 " | b"414 " | b"431 ") {
        return None;
    }
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    if end != head.len() {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?.to_ascii_lowercase();
    if !text.contains("\r\ncontent-length: 0\r\n") {
        return None;
    }
    let (status, code, message) = match rest.get(..4)? {
        b"400 " => (
            "400 Bad Request",
            "bad_request",
            "the request line or a header could not be read as HTTP/1.1 \
             (a malformed method, target, version or header, or conflicting \
             Content-Length / Transfer-Encoding); nothing was processed",
        ),
        b"414 " => (
            "414 URI Too Long",
            "uri_too_long",
            "the request target is too long; nothing was processed",
        ),
        b"431 " => (
            "431 Request Header Fields Too Large",
            "headers_too_large",
            "the request head is too large (at most 100 headers, about 400 KiB \
             in all); nothing was processed",
        ),
        _ => return None,
    };
    let body = serde_json::json!({"code": code, "message": message}).to_string();
    Some(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<T: hyper::rt::Write + Unpin> JsonParseErrors<T> {
    /// Writes what is pending of a replaced answer.
    fn poll_pending(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        while self.written < self.pending.len() {
            let n = match std::pin::Pin::new(&mut self.inner)
                .poll_write(cx, &self.pending[self.written..])
            {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            };
            self.written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `head` in place of hyper's answer, if it is one.
    fn replace(
        &mut self,
        cx: &mut std::task::Context<'_>,
        head: &[u8],
    ) -> Option<std::task::Poll<std::io::Result<usize>>> {
        let answer = answer_for_parse_error(head)?;
        self.pending = answer;
        self.written = 0;
        Some(match self.poll_pending(cx) {
            std::task::Poll::Ready(Err(error)) => std::task::Poll::Ready(Err(error)),
            // Taken whole: the rest leaves on the next write or flush.
            _ => std::task::Poll::Ready(Ok(head.len())),
        })
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for JsonParseErrors<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for JsonParseErrors<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_pending(cx))?;
        if let Some(taken) = self.replace(cx, buf) {
            return taken;
        }
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_pending(cx))?;
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (filled.next(), filled.next()) {
            if let Some(taken) = self.replace(cx, only) {
                return taken;
            }
        }
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A body that did not arrive in time (see [`body_deadline`]).
#[derive(Debug)]
pub struct BodyTimeout(pub Duration);

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the body did not arrive within {} s", self.0.as_secs())
    }
}

impl std::error::Error for BodyTimeout {}

impl BodyTimeout {
    /// The timeout somewhere in `error`'s chain of sources (the body's
    /// readers wrap it).
    pub fn within<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTimeout> {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(timeout) = error.downcast_ref::<BodyTimeout>() {
                return Some(timeout);
            }
            next = error.source();
        }
        None
    }
}

/// Middleware: a write's body must arrive whole within `timeout` from the
/// end of its head; reading it after that fails with [`BodyTimeout`]
/// (408 from `ingest::read_body`). So a client sending a byte now and then
/// holds an ingest slot for that long at most.
pub async fn body_deadline(
    axum::extract::State(timeout): axum::extract::State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::Method;
    if !matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH
    ) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let body = DeadlineBody {
        inner: body,
        deadline: Box::pin(tokio::time::sleep(timeout)),
        timeout,
    };
    let request = axum::extract::Request::from_parts(parts, axum::body::Body::new(body));
    next.run(request).await
}

/// A request body that fails once its deadline passes.
struct DeadlineBody {
    inner: axum::body::Body,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl hyper::body::Body for DeadlineBody {
    type Data = axum::body::Bytes;
    // Boxed, so that the reader finds a BodyTimeout under axum's wrapper.
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            let timeout = self.timeout;
            return std::task::Poll::Ready(Some(Err(Box::new(BodyTimeout(timeout)))));
        }
        std::pin::Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map(|frame| frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
