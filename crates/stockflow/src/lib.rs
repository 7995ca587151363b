//! The stockflow shell: everything around the deterministic core that does
//! IO — the log and checkpoints on disk, the threaded write path, the HTTP
//! API, metrics, and the CLI's demo, simulator and benchmark.

pub mod activity;
pub mod bench;
pub mod bootstrap;
pub mod clock;
pub mod config;
pub mod dead_letters;
pub mod demo;
pub mod embedded;
pub mod history;
pub mod http;
pub mod import;
pub mod json;
pub mod kafka;
pub mod metrics;
pub mod pipeline;
pub mod receipt;
pub mod record;
pub mod recovery;
pub mod repair;
pub mod server;
pub mod simulate;
pub mod sources;
pub mod stream;
pub mod traffic;
pub mod webhooks;

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
