//! TLS end to end, on a real `stockflow serve` process with a certificate
//! made here (a test CA and a server certificate for 127.0.0.1): HTTP/1.1
//! and HTTP/2 clients, the live stream, a webhook delivered to an https
//! receiver that only the test CA vouches for, a plain-http client turned
//! away with a reason, and a new certificate taken on SIGHUP.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A test certificate authority, and certificates it signs.
pub struct Authority {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub pem: String,
}

impl Authority {
    /// A new CA, with a key of its own.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Authority {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "stockflow test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Authority {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server certificate for 127.0.0.1 and localhost: (cert, key) PEM.
    pub fn server(&self, name: &str) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

impl Authority {
    /// A client certificate whose subject's common name is `name`: cert
    /// and key in one PEM, as a client identity.
    pub fn client(&self, name: &str) -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        format!("{}{}", cert.pem(), key.serialize_pem())
    }
}

/// A client that trusts the test CA (and nothing else).
fn client(ca: &str, http1_only: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .tls_info(true)
        .timeout(Duration::from_secs(30));
    if http1_only {
        builder = builder.http1_only();
    }
    builder.build().unwrap()
}

/// The DER of the certificate `answer` came with.
fn presented(answer: &reqwest::Response) -> Vec<u8> {
    answer
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("a TLS answer")
        .to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// An https receiver of webhooks (the server's own accept loop, with a
/// certificate of the test CA): every body it gets.
async fn receiver(
    authority: &Authority,
    dir: &Path,
) -> (
    String,
    Arc<parking_lot::Mutex<Vec<Value>>>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (cert, key) = authority.server("receiver");
    let tls = stockflow_service::tls::ServerTls::load(
        Path::new(&write(dir, "receiver.pem", &cert)),
        Path::new(&write(dir, "receiver.key", &key)),
    )
    .unwrap();
    let got = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let kept = got.clone();
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::Json<Value>| {
            let kept = kept.clone();
            async move {
                kept.lock().push(body.0);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}/hook",
        listener.local_addr().unwrap().port()
    );
    let limits = stockflow_http::serve::ConnectionLimits {
        connections_max: 16,
        connections_per_address_max: 16,
        header_read_timeout: Duration::from_secs(10),
    };
    let (stop, _task) = stockflow_http::serve::spawn(listener, router, limits, Some(tls));
    (url, got, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_http1_http2_the_stream_and_webhooks_and_refuses_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new();
    let ca = write(dir.path(), "ca.pem", &authority.pem);
    let (cert, key) = authority.server("first");
    let cert_file = write(dir.path(), "server.pem", &cert);
    let key_file = write(dir.path(), "server.key", &key);
    let (hook, delivered, stop_receiver) = receiver(&authority, dir.path()).await;
    let log = dir.path().join("log.txt");
    let (server, url) = crate::auth::serve(
        &dir.path().join("data"),
        &[
            "--tls-cert",
            &cert_file,
            "--tls-key",
            &key_file,
            "--tls-ca-file",
            &ca,
            "--webhook",
            &hook,
            "--read-timeout-seconds",
            "2",
        ],
        &log,
    );
    let url = url.replace("http://", "https://");

    // HTTP/1.1 and HTTP/2, chosen by ALPN.
    let h1 = client(&authority.pem, true);
    let h2 = client(&authority.pem, false);
    let answer = h1.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.version(), reqwest::Version::HTTP_11);
    assert_eq!(presented(&answer), der(&cert));
    let answer = h2.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.version(), reqwest::Version::HTTP_2);

    // The live stream over HTTP/2, while an event is posted over HTTP/1.1.
    let mut stream = h2
        .get(format!("{url}/v1/stream?sku=TLS-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let event = serde_json::json!({"eventId": "tls-1", "eventType": "RECEIPT",
        "sku": "TLS-1", "locationId": "S1", "quantity": 7});
    let posted = h1
        .post(format!("{url}/v1/events"))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200, "{}", posted.text().await.unwrap());
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains("\"onHand\":7") {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, stream.chunk())
            .await
            .expect("the stream shows the event within 10 s")
            .unwrap()
            .expect("the stream stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let level: Value = h2
        .get(format!("{url}/v1/stock/TLS-1/S1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(level["onHand"], 7);

    // A plain-http client is turned away with the reason.
    let plain = reqwest::get(format!("{}/healthz", url.replace("https://", "http://")))
        .await
        .unwrap();
    assert_eq!(plain.status(), 400);
    let reason = plain.text().await.unwrap();
    assert!(reason.contains("https://"), "{reason}");

    // A connection that never starts its handshake is closed after the
    // read timeout, as a silent plain one is.
    let (after, _) = crate::hostile::closed_after(
        &url.replace("https://", "http://"),
        b"",
        Duration::from_secs(6),
    )
    .await;
    assert!(
        after >= Duration::from_millis(1900),
        "closed after {after:?}"
    );

    // An HTTP/2 connection with no request open is closed after the read
    // timeout too (its client answers pings, so they would not).
    let idle_closed = || async {
        let text = h1
            .get(format!("{url}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with("stockflow_http_idle_connections_closed_total"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = idle_closed().await;
    let idle = client(&authority.pem, false);
    let answer = idle.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(answer.version(), reqwest::Version::HTTP_2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while idle_closed().await <= before {
        assert!(
            Instant::now() < deadline,
            "an idle HTTP/2 connection stays open"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(idle);

    // A client that does not trust the CA does not get through.
    let stranger = reqwest::Client::builder().build().unwrap();
    assert!(stranger.get(format!("{url}/healthz")).send().await.is_err());

    // The webhook receiver, vouched for by --tls-ca-file only, gets the
    // alert of a stock-out.
    let sale = serde_json::json!({"eventId": "tls-2", "eventType": "SALE",
        "sku": "TLS-1", "locationId": "S1", "quantity": 7});
    let posted = h1
        .post(format!("{url}/v1/events"))
        .json(&sale)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(15);
    while delivered.lock().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the https webhook is delivered; the log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        delivered.lock()[0]["sku"],
        "TLS-1",
        "{:?}",
        delivered.lock()
    );

    // A new certificate, taken on SIGHUP by new connections.
    let (renewed, renewed_key) = authority.server("renewed");
    write(dir.path(), "server.pem", &renewed);
    write(dir.path(), "server.key", &renewed_key);
    let pid = server.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = client(&authority.pem, true)
            .get(format!("{url}/healthz"))
            .send()
            .await
            .unwrap();
        if presented(&answer) == der(&renewed) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate is served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broken pair is refused and the renewed one stays.
    write(dir.path(), "server.key", "not a key");
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = client(&authority.pem, true)
        .get(format!("{url}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(presented(&answer), der(&renewed));
    drop(server);
    let _ = stop_receiver.send(());
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("TLS certificate reloaded"), "{log}");
    assert!(log.contains("TLS certificate not reloaded"), "{log}");
}

#[test]
fn a_key_that_does_not_go_with_the_certificate_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new();
    let (cert, _) = authority.server("one");
    let (_, other_key) = authority.server("two");
    let output = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(write(dir.path(), "c.pem", &cert))
        .arg("--tls-key")
        .arg(write(dir.path(), "k.pem", &other_key))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does not go with"), "{stderr}");
}

/// `--tls-client-ca`: a client showing a certificate of that CA acts as
/// the auth file's token its subject names, with that token's roles and no
/// bearer token; a name the file does not hold, or no certificate, is 401;
/// a certificate of another CA does not get through the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_acts_as_the_token_it_names() {
    use stockflow_service::auth::Role;
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new();
    let ca = write(dir.path(), "ca.pem", &authority.pem);
    let (cert, key) = authority.server("server");
    let tokens = dir.path().join("tokens");
    stockflow_service::auth::create(&tokens, "pos-7", &[Role::Ingest]).unwrap();
    let (server, url) = crate::auth::serve(
        &dir.path().join("data"),
        &[
            "--tls-cert",
            &write(dir.path(), "server.pem", &cert),
            "--tls-key",
            &write(dir.path(), "server.key", &key),
            "--tls-client-ca",
            &ca,
            "--auth-file",
            tokens.to_str().unwrap(),
        ],
        &dir.path().join("log.txt"),
    );
    let url = url.replace("http://", "https://");
    let with = |identity: Option<String>| {
        let mut builder = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(authority.pem.as_bytes()).unwrap(),
            );
        if let Some(pem) = identity {
            builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
        }
        builder.build().unwrap()
    };
    let event = serde_json::json!({"eventId": "cc-1", "eventType": "RECEIPT",
        "sku": "CC", "locationId": "S1", "quantity": 3});
    let post = |client: reqwest::Client| {
        let url = url.clone();
        let event = event.clone();
        async move {
            match client
                .post(format!("{url}/v1/events"))
                .json(&event)
                .send()
                .await
            {
                Ok(answer) => Some(answer.status().as_u16()),
                Err(_) => None,
            }
        }
    };
    assert_eq!(
        post(with(Some(authority.client("pos-7")))).await,
        Some(200),
        "the token's role"
    );
    let read = with(Some(authority.client("pos-7")))
        .get(format!("{url}/v1/stock/CC/S1"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 403, "and only the token's roles");
    assert_eq!(
        post(with(Some(authority.client("stranger")))).await,
        Some(401)
    );
    assert_eq!(
        post(with(None)).await,
        Some(401),
        "no certificate: a token is needed"
    );
    let other = Authority::new();
    assert_eq!(
        post(with(Some(other.client("pos-7")))).await,
        None,
        "another CA's"
    );
    drop(server);
}
