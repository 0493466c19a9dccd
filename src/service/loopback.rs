//! A memcommit server inside this process, on 127.0.0.1 with an ephemeral port: what
//! `memcommit replay` and `memcommit bench --trace` talk to when no `--server` is given.

use anyhow::Context;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{serve, ServiceConfig};

/// A running in-process server task and the means to stop it.
pub struct LoopbackServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl LoopbackServer {
    /// Binds 127.0.0.1:0 and serves `config` there on the current tokio runtime until
    /// [`LoopbackServer::stop`].
    ///
    /// # Errors
    /// When 127.0.0.1 cannot be bound.
    pub async fn start(config: ServiceConfig) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the in-process server on 127.0.0.1")?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(config, listener, async move {
            let _ = stopped.await;
        }));
        Ok(LoopbackServer { url, stop, task })
    }

    /// Shuts the server down gracefully (calls in flight finish) and waits for it.
    ///
    /// # Errors
    /// What [`serve`] returned, or the task's panic.
    pub async fn stop(self) -> anyhow::Result<()> {
        // An Err means the server already ended; its task says why.
        let _ = self.stop.send(());
        self.task.await.context("in-process server task")?
    }
}
