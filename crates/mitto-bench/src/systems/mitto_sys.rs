//! mitto's own Client and Server with one `echo` route.

use crate::runtime::ServerRuntime;
use bytes::Bytes;

const METHOD: &str = "echo";

/// A running mitto echo server (on the server runtime) and a client connected to it.
pub(crate) struct MittoEcho {
    server: Option<mitto::RunningServer>,
    pub(crate) client: mitto::Client,
}

impl MittoEcho {
    /// Binds `url` (`tcp://127.0.0.1:0`, `unix:///path`) on `srt` and connects a client from the
    /// caller's runtime.
    pub(crate) async fn start(srt: &ServerRuntime, url: &str) -> anyhow::Result<MittoEcho> {
        let url = url.to_owned();
        let (server, url) = srt
            .run(async move {
                let server = mitto::Server::new()
                    .route(METHOD, |req: mitto::Request| async move {
                        Ok(req.payload().clone())
                    })
                    .bind(&url)
                    .await?;
                let url = server.local_url().to_owned();
                Ok((server, url))
            })
            .await?;
        let client = mitto::Client::connect(&url, mitto::ClientOptions::new()).await?;
        Ok(MittoEcho {
            server: Some(server),
            client,
        })
    }

    /// Closes the client and shuts the server down.
    pub(crate) async fn stop(mut self, srt: &ServerRuntime) -> anyhow::Result<()> {
        self.client.close().await;
        if let Some(server) = self.server.take() {
            srt.run(async move {
                server.shutdown().await;
                Ok(())
            })
            .await?;
        }
        Ok(())
    }
}

/// One call of `echo`, checking the echoed length.
pub(crate) async fn call(client: &mitto::Client, payload: Bytes) -> anyhow::Result<()> {
    let n = payload.len();
    let reply = client.call(METHOD, payload).await?;
    anyhow::ensure!(
        reply.len() == n,
        "mitto echoed {} of {n} bytes",
        reply.len()
    );
    Ok(())
}
