//! Tokens and roles: every route of the router, with no token, a token
//! without the route's role and one with it; tokens made by `stockflow
//! token create` and taken by a running server on SIGHUP; and a server
//! that would be reachable from other machines without an auth file
//! refusing to start.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;
use stockflow_http::auth::{access, Access};
use stockflow_service::auth::Role;

/// `stockflow token create` as a user runs it: the secret on stdout.
fn create_token(file: &Path, name: &str, roles: &[Role]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stockflow"));
    command.args(["token", "create", "--name", name, "--auth-file"]);
    command.arg(file);
    for role in roles {
        command.args(["--role", role.as_str()]);
    }
    let output = command.output().expect("the stockflow binary runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let secret = String::from_utf8(output.stdout).unwrap();
    let secret = secret.trim().to_owned();
    assert!(
        secret.starts_with("sf_") && !secret.contains('\n'),
        "{secret}"
    );
    secret
}

/// A request of `method` to `path` (its parameters filled with
/// placeholders), with `token` if any: the status and the error code.
async fn call(url: &str, method: &Method, path: &str, token: Option<&str>) -> (u16, Value) {
    let path = path
        .replace("{*path}", "app.js")
        .replace("{id}", "1")
        .replace(['{', '}'], "");
    let client = reqwest::Client::new();
    let mut request = client
        .request(method.clone(), format!("{url}{path}"))
        .timeout(Duration::from_secs(30));
    if *method != Method::GET {
        request = request
            .header("content-type", "application/json")
            .body("{}");
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let www = response.headers().get("www-authenticate").cloned();
    if status == 401 {
        assert_eq!(
            www.as_ref().and_then(|v| v.to_str().ok()),
            Some("Bearer realm=\"stockflow\""),
            "{method} {path}: a 401 says how to authenticate"
        );
    }
    // Only refusals are read: a stream's body never ends.
    let body = if status == 401 || status == 403 {
        response.json().await.unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_a_token_with_its_role() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let mut secrets = std::collections::BTreeMap::new();
    for role in Role::ALL {
        secrets.insert(role, create_token(&file, role.as_str(), &[role]));
    }
    let data = dir.path().join("data");
    let tokens = stockflow_service::auth::Tokens::load(&file).unwrap();
    let server = crate::start(&data, |c| c.auth = Some(std::sync::Arc::new(tokens))).await;
    let url = server.url();

    let operations = stockflow_http::operations::<stockflow_embedded::Embedded>();
    assert!(operations.len() > 40, "the router's own list");
    for operation in &operations {
        // A cookie that opens the stream, which `read` opens anyway.
        if operation.path == "/v1/session/stream" {
            continue;
        }
        if operation.method != Method::GET {
            assert!(
                !matches!(
                    access(&operation.method, operation.path),
                    Access::Open | Access::Needs(Role::Read)
                ),
                "{} {} is a write open to readers",
                operation.method,
                operation.path
            );
        }
    }
    for operation in &operations {
        let (method, path) = (&operation.method, operation.path);
        let needed = match access(method, path) {
            Access::Open => {
                let (status, _) = call(&url, method, path, None).await;
                assert!(
                    status != 401 && status != 403,
                    "{method} {path} is open: {status}"
                );
                continue;
            }
            Access::Cluster => panic!("{method} {path}: an instances' route in the public list"),
            Access::AnyToken => {
                assert_eq!(call(&url, method, path, None).await.0, 401);
                for role in Role::ALL {
                    let (status, body) = call(&url, method, path, Some(&secrets[&role])).await;
                    assert_eq!(
                        status,
                        200,
                        "{method} {path} with a {} token: {body}",
                        role.as_str()
                    );
                }
                continue;
            }
            Access::Needs(role) => role,
        };
        let (status, body) = call(&url, method, path, None).await;
        assert_eq!(status, 401, "{method} {path} without a token: {body}");
        let (status, _) = call(&url, method, path, Some("sf_not-a-token")).await;
        assert_eq!(status, 401, "{method} {path} with an unknown token");
        for role in Role::ALL.into_iter().filter(|r| *r != needed) {
            let (status, body) = call(&url, method, path, Some(&secrets[&role])).await;
            assert_eq!(
                status,
                403,
                "{method} {path} with a {} token",
                role.as_str()
            );
            assert_eq!(body["code"], "forbidden");
            let message = body["message"].as_str().unwrap();
            assert!(
                message.contains(&format!("needs the role {}", needed.as_str())),
                "{message}"
            );
        }
        let (status, body) = call(&url, method, path, Some(&secrets[&needed])).await;
        assert!(
            status != 401 && !(status == 403 && body["code"] == "forbidden"),
            "{method} {path} with its role {}: {status} {body}",
            needed.as_str()
        );
    }

    // What each role does, end to end: ingest writes, read reads, orders
    // places; none of them does another's work.
    let client = reqwest::Client::new();
    let event = serde_json::json!({"eventId": "auth-1", "eventType": "RECEIPT",
        "sku": "A", "locationId": "S", "quantity": 5});
    let posted = client
        .post(format!("{url}/v1/events"))
        .bearer_auth(&secrets[&Role::Ingest])
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    let level: Value = client
        .get(format!("{url}/v1/stock/A/S"))
        .bearer_auth(&secrets[&Role::Read])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(level["onHand"], 5);
    // The scheme's name is case-insensitive; another scheme is no token.
    for (header, status) in [
        (format!("bearer {}", secrets[&Role::Read]), 200),
        (format!("Basic {}", secrets[&Role::Read]), 401),
    ] {
        let answer = client
            .get(format!("{url}/v1/stock/A/S"))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), status);
    }
    let order = serde_json::json!({"orderId": "auth-o", "lines": [{"sku": "A", "locationId": "S", "quantity": 2}]});
    let placed: Value = client
        .post(format!("{url}/v1/orders"))
        .bearer_auth(&secrets[&Role::Orders])
        .json(&order)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(placed["status"], "reserved", "{placed}");
    server.stop().await.unwrap();
}

/// A `stockflow serve` process, killed when dropped.
pub struct Serve(pub Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `stockflow serve` with `args`, its log to `log`; waits for it
/// to listen.
pub fn serve(data: &Path, args: &[&str], log: &Path) -> (Serve, String) {
    let port = crate::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args(["serve", "--data-dir"])
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("the stockflow binary runs");
    let stdout = child.stdout.take().unwrap();
    let (ready, listening) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("stockflow listening") {
                let _ = ready.send(());
            }
        }
    });
    listening
        .recv_timeout(Duration::from_secs(60))
        .expect("the server starts");
    (Serve(child), format!("http://127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_created_while_the_server_runs_works_after_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let first = create_token(&file, "first", &[Role::Read]);
    let log = dir.path().join("log.txt");
    let (server, url) = serve(
        &dir.path().join("data"),
        &["--auth-file", file.to_str().unwrap()],
        &log,
    );
    let status = |token: String| {
        let url = url.clone();
        async move {
            reqwest::Client::new()
                .get(format!("{url}/v1/sources"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status(first.clone()).await, 200);
    let second = create_token(&file, "second", &[Role::Read]);
    assert_eq!(status(second.clone()).await, 401, "not before SIGHUP");
    let pid = server.0.id().to_string();
    let hup = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(second.clone()).await != 200 {
        assert!(
            Instant::now() < deadline,
            "the new token works after SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status(first.clone()).await, 200, "the old one still does");
    drop(server);
    // A server without an auth file takes a SIGHUP (meant for a reload)
    // without stopping.
    let (plain, plain_url) = serve(
        &dir.path().join("plain"),
        &[],
        &dir.path().join("plain.txt"),
    );
    let pid = plain.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let health = reqwest::get(format!("{plain_url}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200, "still serving after SIGHUP");
    drop(plain);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("auth file reloaded"), "{log}");
    for secret in [&first, &second] {
        assert!(!log.contains(secret.as_str()), "a secret in the log");
        assert!(!log.contains(&secret[3..15]), "part of a secret in the log");
    }
}

#[test]
fn a_server_other_machines_can_reach_needs_an_auth_file_or_says_it_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let output = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(&data)
        .output()
        .expect("the stockflow binary runs");
    assert!(!output.status.success(), "it must not start");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--auth-file") && stderr.contains("--insecure-no-auth"),
        "{stderr}"
    );
    assert!(!data.exists(), "refused before creating the data directory");

    // Kafka mode refuses an auth file without a cluster secret rather
    // than leave its instances' endpoints to each other open (or closed)
    // by surprise.
    let tokens = dir.path().join("tokens");
    create_token(&tokens, "t", &[Role::Read]);
    let output = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args(["serve", "--kafka", "127.0.0.1:1", "--data-dir"])
        .arg(&data)
        .arg("--auth-file")
        .arg(&tokens)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--cluster-secret-file"), "{stderr}");
    // A secret anyone could guess is refused too.
    let short = dir.path().join("short");
    std::fs::write(&short, "hunter2\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args(["serve", "--kafka", "127.0.0.1:1", "--data-dir"])
        .arg(&data)
        .arg("--auth-file")
        .arg(&tokens)
        .arg("--cluster-secret-file")
        .arg(&short)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("at least 32"), "{stderr}");
    assert!(
        !stderr.contains("hunter2"),
        "the secret is not echoed: {stderr}"
    );

    let port = crate::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args(["serve", "--insecure-no-auth", "--listen"])
        .arg(format!("0.0.0.0:{port}"))
        .arg("--data-dir")
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut warned = false;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if line.contains("no authentication") {
            warned = true;
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned, "--insecure-no-auth starts, and says so");
}

/// What a browser asks before a page of another origin may call the API,
/// and what it is told: only origins given by `--cors-origin` are let in,
/// their preflights are answered without a token (a browser sends none),
/// and a server without the flag lets no other origin in at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_listed_origins_may_call_from_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let secret = create_token(&file, "shop", &[Role::Read]);
    let listed = "https://shop.example";
    let server = crate::start(&dir.path().join("data"), |c| {
        c.auth = Some(std::sync::Arc::new(
            stockflow_service::auth::Tokens::load(&file).unwrap(),
        ));
        c.cors_origins = vec![listed.to_owned()];
    })
    .await;
    let plain = crate::start(&dir.path().join("plain"), |_| {}).await;
    let client = reqwest::Client::new();
    let preflight = |url: String, origin: &'static str| {
        client
            .request(Method::OPTIONS, format!("{url}/v1/orders"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let allowed = |answer: &reqwest::Response| {
        answer
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let answer = preflight(server.url(), listed).await.unwrap();
    assert!(answer.status().is_success(), "{}", answer.status());
    assert_eq!(allowed(&answer).as_deref(), Some(listed));
    let headers = answer.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(headers.contains("authorization"), "{headers}");
    let answer = preflight(server.url(), "https://evil.example")
        .await
        .unwrap();
    assert_eq!(allowed(&answer), None, "an origin not listed");
    let answer = preflight(plain.url(), listed).await.unwrap();
    assert_eq!(allowed(&answer), None, "a server without --cors-origin");

    // The call itself still needs its token; its answer may be read.
    let read = |token: Option<&str>| {
        let mut request = client
            .get(format!("{}/v1/sources", server.url()))
            .header("origin", listed);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let answer = read(None).await.unwrap();
    assert_eq!(answer.status(), 401);
    let answer = read(Some(&secret)).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(allowed(&answer).as_deref(), Some(listed));
    server.stop().await.unwrap();
    plain.stop().await.unwrap();
}

/// The console's way into the live stream: a cookie from `POST
/// /v1/session/stream` opens `GET /v1/stream` (which a browser's
/// EventSource calls without headers) and nothing else; a forged or
/// altered one opens nothing, and one whose token left the auth file
/// stops working at the next reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cookie_opens_the_stream_only_while_its_token_is_known() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let reader = create_token(&file, "console", &[Role::Read]);
    let writer = create_token(&file, "writer", &[Role::Ingest]);
    create_token(&file, "other", &[Role::Read]);
    let tokens = std::sync::Arc::new(stockflow_service::auth::Tokens::load(&file).unwrap());
    let server = crate::start(&dir.path().join("data"), |c| c.auth = Some(tokens.clone())).await;
    let url = server.url();
    let client = reqwest::Client::new();

    let who: Value = client
        .get(format!("{url}/v1/session"))
        .bearer_auth(&writer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        who,
        serde_json::json!({"name": "writer", "roles": ["ingest"], "authentication": true})
    );

    let cookie_for = |token: String| {
        let client = client.clone();
        let url = url.clone();
        async move {
            client
                .post(format!("{url}/v1/session/stream"))
                .bearer_auth(token)
                .json(&serde_json::json!({}))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(
        cookie_for(writer.clone()).await.status(),
        403,
        "ingest cannot read"
    );
    let answer = cookie_for(reader.clone()).await;
    assert_eq!(answer.status(), 200);
    let set = answer.headers()["set-cookie"].to_str().unwrap().to_owned();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/v1"] {
        assert!(set.contains(part), "{set}");
    }
    assert!(!set.contains("Max-Age"), "a session cookie: {set}");
    assert!(
        !set.contains(&reader[3..15]),
        "the cookie holds no secret: {set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();

    let with = |path: &'static str, cookie: String| {
        let client = client.clone();
        let url = url.clone();
        async move {
            client
                .get(format!("{url}{path}"))
                .header("cookie", cookie)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(with("/v1/stream", cookie.clone()).await, 200);
    assert_eq!(
        with("/v1/stock/A/S", cookie.clone()).await,
        401,
        "only the stream"
    );
    let (name, rest) = cookie.split_once('=').unwrap();
    let forged = format!(
        "{name}={}{}",
        hex_of("other"),
        &rest[hex_of("console").len()..]
    );
    assert_eq!(
        with("/v1/stream", forged).await,
        401,
        "another reader's name, same signature"
    );
    let mut altered = cookie.clone();
    let last = altered.pop().unwrap();
    altered.push(if last == '0' { '1' } else { '0' });
    assert_eq!(
        with("/v1/stream", altered).await,
        401,
        "a changed signature"
    );

    // Sign-out clears it.
    let cleared = client
        .delete(format!("{url}/v1/session/stream"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), 204);
    let set = cleared.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set.starts_with("sf_stream=;") && set.contains("Max-Age=0"),
        "{set}"
    );

    // The token leaves the file, and a new one takes its name: the old
    // cookie opens nothing.
    let kept: String = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .filter(|l| !l.contains("\"console\""))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, kept).unwrap();
    tokens.reload().unwrap();
    assert_eq!(with("/v1/stream", cookie.clone()).await, 401, "removed");
    create_token(&file, "console", &[Role::Read]);
    tokens.reload().unwrap();
    assert_eq!(
        with("/v1/stream", cookie).await,
        401,
        "replaced under its name"
    );
    server.stop().await.unwrap();
}

fn hex_of(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}
