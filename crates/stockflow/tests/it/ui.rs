//! The web UI in a real browser: starts `stockflow demo` exactly as a user
//! would (with no background traffic, so totals can be checked), then runs
//! the Playwright tests in `tests/e2e/ui.test.mjs` against it in Debian's
//! headless Chromium. Screenshots land in target/tmp/ui-screenshots.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Kills the demo when the test ends, however it ends.
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the Playwright tests of `tests/e2e/{file}` against the server at
/// `url`, and fails with their report if any fails. Never skips: a
/// machine without the browser fails, saying what to run.
pub fn run_browser_tests(file: &str, url: &str) {
    run_browser_tests_with(file, url, &[]);
}

/// [`run_browser_tests`] with more environment for the tests.
pub fn run_browser_tests_with(file: &str, url: &str, env: &[(&str, String)]) {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run .ci/install (installs Debian's chromium)"
    );
    assert!(
        e2e.join("node_modules/playwright-core").exists(),
        "playwright-core is missing: run .ci/install (npm ci in {})",
        e2e.display()
    );
    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    let started = Instant::now();
    let output = Command::new("node")
        .args(["--test", "--test-reporter=spec", file])
        .current_dir(&e2e)
        .env("STOCKFLOW_URL", url)
        .env("STOCKFLOW_SCREENSHOTS", &screenshots)
        .env("CHROMIUM", CHROMIUM)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("node runs (install Node.js 18+)");
    let report = String::from_utf8_lossy(&output.stdout);
    println!("{report}{}", String::from_utf8_lossy(&output.stderr));
    println!(
        "browser tests took {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        screenshots.display()
    );
    assert!(output.status.success(), "browser tests failed:\n{report}");
}

#[test]
fn the_web_ui_works_in_a_real_browser() {
    let _alone = crate::alone();

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args(["demo", "--rate", "0", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the stockflow binary runs");
    let stdout = child.stdout.take().unwrap();
    let demo = Demo(child);
    // The demo says it is running once its world is seeded.
    let (ready, seeded) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("stockflow demo is running") {
                let _ = ready.send(());
            }
        }
    });
    seeded
        .recv_timeout(Duration::from_secs(120))
        .expect("the demo starts and seeds its catalog");

    run_browser_tests("ui.test.mjs", &format!("http://127.0.0.1:{port}"));
    drop(demo);
}

/// The console on a server that asks for tokens: see `tests/e2e/auth.test.mjs`.
#[test]
fn the_console_asks_for_a_token_and_shows_only_what_it_allows() {
    use stockflow_service::auth::Role;
    let _alone = crate::alone();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let mut tokens = serde_json::Map::new();
    for (name, roles) in [
        ("viewer", vec![Role::Read]),
        ("ingest", vec![Role::Ingest]),
        ("admin", vec![Role::Read, Role::Orders, Role::Admin]),
    ] {
        let secret = stockflow_service::auth::create(&file, name, &roles).unwrap();
        tokens.insert(name.to_owned(), secret.into());
    }
    let (server, url) = crate::auth::serve(
        &dir.path().join("data"),
        &["--auth-file", file.to_str().unwrap()],
        &dir.path().join("log.txt"),
    );
    run_browser_tests_with(
        "auth.test.mjs",
        &url,
        &[(
            "STOCKFLOW_TOKENS",
            serde_json::Value::Object(tokens).to_string(),
        )],
    );
    drop(server);
}
