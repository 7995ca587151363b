//! The API description held against the server by a contract tester no
//! one here wrote: Schemathesis (PyPI; `.ci/install` installs it) sends
//! every operation of /v1/openapi.json requests generated from the
//! document, valid and invalid, and checks every answer against it (its
//! default: every check). In both modes, so the one document describes
//! both. Then a client generated from the document (openapi-python-client,
//! PyPI) does what an integrator's would: `tests/client/generated_client.py`.

use std::process::Command;

use std::time::Duration;

use crate::kafka::{wait_settled, Broker, Instance};

/// How long the server keeps an idle connection: longer than the tester
/// leaves one of its pooled connections idle, so that a POST never meets
/// a connection the server closed a moment before (a client may retry
/// only what is idempotent; that race is not what this test is about).
const IDLE: Duration = Duration::from_secs(300);

/// Runs Schemathesis against the server at `url`; fails with its report.
/// A run that found no disagreement but stopped on an error of the
/// tester's own (its report's ERRORS, with no FAILURES: say, Hypothesis
/// finding its generation "inconsistent" when a slow machine cut its time
/// budget differently on replay) is run once more; a disagreement never is.
fn finds_nothing(url: &str, mode: &str) {
    finds_nothing_as(url, mode, None);
}

/// [`finds_nothing`], presenting `token` (a server with an auth file).
fn finds_nothing_as(url: &str, mode: &str, token: Option<&str>) {
    for attempt in 1..=2 {
        let (success, report) = schemathesis(url, token);
        if success {
            // It ran the operations, rather than stopping early.
            assert!(report.contains("API Operations:"), "{mode}: {report}");
            return;
        }
        let tester_error = report.contains("= ERRORS =") && !report.contains("= FAILURES =");
        assert!(
            tester_error && attempt == 1,
            "{mode}: Schemathesis finds the server and its document disagree:\n{report}"
        );
        eprintln!("{mode}: Schemathesis stopped on an error of its own; once more:\n{report}");
    }
}

/// One Schemathesis run: whether it passed, and its report.
fn schemathesis(url: &str, token: Option<&str>) -> (bool, String) {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis.toml");
    // It keeps a cache of what it found where it runs: not in the tree.
    let scratch = tempfile::tempdir().unwrap();
    let mut command = Command::new("schemathesis");
    command
        .current_dir(scratch.path())
        .args(["--no-color", "--config-file", config, "run"])
        .arg(format!("{url}/v1/openapi.json"));
    if let Some(token) = token {
        command
            .arg("--header")
            .arg(format!("Authorization: Bearer {token}"));
    }
    let output = command
        // Few examples, a fixed seed: the same requests each run, in the
        // suite's time. Any other seed explores further.
        .args(["--max-examples", "5", "--seed", "1", "--workers", "2"])
        .output()
        .expect("schemathesis runs (`.ci/install` installs it with pip)");
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.success(), report)
}

/// Generates a Python client from the document the server at `url`
/// serves, and uses it: stock in, a level read, an order placed and
/// cancelled, a refused event found among the dead letters.
fn a_generated_client_works(url: &str, mode: &str) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/client/generated_client.py"
    );
    let output = Command::new("python3")
        .args([script, url, mode])
        .output()
        .expect("python3 runs");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{mode}: the client generated from the document failed \
         (openapi-python-client missing? .ci/install installs it):\n{said}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(said.contains("generated client ok"), "{mode}: {said}");
}

#[test]
fn the_api_description_holds_against_the_embedded_server() {
    let _heavy = crate::heavy();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = runtime.block_on(crate::start(dir.path(), |config| {
        config.read_timeout = IDLE;
    }));
    finds_nothing(&server.url(), "embedded");
    a_generated_client_works(&server.url(), "embedded");
    runtime.block_on(server.stop()).unwrap();
}

/// With an auth file the document says who may call what, and the tester
/// holds that too: a request without the token, or with one it made up,
/// must be refused.
#[test]
fn the_api_description_holds_against_a_server_that_wants_tokens() {
    let _heavy = crate::heavy();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let roles = stockflow_service::auth::Role::ALL;
    let secret = stockflow_service::auth::create(&file, "contract", &roles).unwrap();
    let tokens = stockflow_service::auth::Tokens::load(&file).unwrap();
    let server = runtime.block_on(crate::start(&dir.path().join("data"), |config| {
        config.read_timeout = IDLE;
        config.auth = Some(std::sync::Arc::new(tokens));
    }));
    finds_nothing_as(&server.url(), "with tokens", Some(&secret));
    runtime.block_on(server.stop()).unwrap();
}

#[test]
fn the_api_description_holds_against_a_kafka_mode_instance() {
    let _heavy = crate::heavy();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    broker.create_topics();
    let idle = IDLE.as_secs().to_string();
    let instance = Instance::with_args(
        &broker,
        "contract",
        &dir.path().join("instance"),
        "priority:WEB,BACKUP",
        &["--read-timeout-seconds", &idle],
    );
    wait_settled(&instance.url, 1);
    finds_nothing(&instance.url, "kafka");
    a_generated_client_works(&instance.url, "kafka");
}
