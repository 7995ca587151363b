//! The `stockflow` command's own parts, on top of the crates it puts
//! together: starting a server in either mode, `import`, `simulate`,
//! `demo` and `bench`. The CLI itself is `main.rs`.

pub mod bench;
pub mod demo;
pub mod import;
pub mod server;
pub mod simulate;

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
