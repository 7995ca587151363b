//! Starting and stopping a server: recovery, pipeline, HTTP listener.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use stockflow_embedded::pipeline::Pipeline;
use stockflow_embedded::recovery::recover;
use stockflow_embedded::Embedded;
use stockflow_http::router;
use stockflow_http::simulator::Simulator;
use stockflow_service::config::Config;

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    /// `https` with a certificate, else `http`.
    pub scheme: &'static str,
    pub pipeline: Arc<Pipeline>,
    pub simulator: Arc<Simulator>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Recovers the data directory, starts the write path and listens.
    pub async fn start(config: Config, listen: SocketAddr) -> anyhow::Result<Server> {
        stockflow_http::amqp::check(&config)?;
        let recovering = config.clone();
        let recovered = tokio::task::spawn_blocking(move || recover(&recovering)).await??;
        let pipeline = Arc::new(Pipeline::start(&config, recovered)?);
        let listener = TcpListener::bind(listen).await.with_context(|| {
            format!("cannot listen on {listen}; is another server running there?")
        })?;
        let addr = listener.local_addr()?;
        stockflow_service::metrics::handle();
        let state = Arc::new_cyclic(|state| Embedded {
            simulator: stockflow_http::simulator::Simulator::new(
                config.simulator,
                state.clone() as std::sync::Weak<dyn stockflow_http::simulator::Sink>,
                config.request_events_max,
            ),
            pipeline: pipeline.clone(),
            admission: stockflow_http::Admission::new(&config),
            config,
        });
        stockflow_http::bootstrap::load(&*state).await?;
        stockflow_http::webhooks::start(state.clone(), state.config.webhooks.clone())?;
        stockflow_http::amqp::start(state.clone())?;
        stockflow_embedded::sink::start(&state.config, pipeline.shared.clone())?;
        if state.config.lake.is_some() {
            stockflow_service::lake::start(
                &state.config,
                pipeline.shared.partition_count(),
                stockflow_service::lake::Writer {
                    owner: stockflow_embedded::recovery::data_dir_id(&state.config.data_dir)?,
                    shared: false,
                },
                Box::new(stockflow_service::lake::HistoryFiles(
                    state.config.data_dir.clone(),
                )),
            )?;
        }
        let simulator = state.simulator.clone();
        let limits = stockflow_http::serve::ConnectionLimits::of(&state.config);
        let tls = state.config.tls.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (stop, task) = stockflow_http::serve::spawn(listener, router(state), limits, tls);
        tracing::info!(%addr, scheme, "listening");
        Ok(Server {
            addr,
            scheme,
            pipeline,
            simulator,
            stop,
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Stops listening, finishes in-flight requests, drains the pipeline
    /// and writes a checkpoint.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.simulator.stop().await;
        self.pipeline.shared.hub.close();
        let _ = self.stop.send(());
        self.task.await??;
        let pipeline = self.pipeline;
        tokio::task::spawn_blocking(move || pipeline.shutdown()).await?;
        Ok(())
    }
}
