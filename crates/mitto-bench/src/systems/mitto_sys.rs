//! mitto's own Client and Server with one `echo` route.

use crate::runtime::ServerRuntime;
use bytes::Bytes;

const METHOD: &str = "echo";

/// A running mitto echo server (on the server runtime) and a client connected to it.
pub(crate) struct MittoEcho {
    server: Option<mitto::RunningServer>,
    pub(crate) client: mitto::Client,
    /// Latency mode's pollers (server's, client's), when started with one.
    pollers: Vec<std::sync::Arc<mitto::BusyPoll>>,
}

impl MittoEcho {
    /// Binds `url` (`tcp://127.0.0.1:0`, `unix:///path`) on `srt` and connects a client from the
    /// caller's runtime.
    pub(crate) async fn start(srt: &ServerRuntime, url: &str) -> anyhow::Result<MittoEcho> {
        MittoEcho::start_with(srt, url, None, true).await
    }

    /// [`MittoEcho::start`] with spin-then-park off at both ends (`spin(Duration::ZERO)`): each
    /// end sleeps until woken, as the peers and the raw floors do.
    pub(crate) async fn start_no_spin(srt: &ServerRuntime, url: &str) -> anyhow::Result<MittoEcho> {
        MittoEcho::start_with(srt, url, None, false).await
    }

    /// [`MittoEcho::start`] with both ends in latency mode: a poller on each runtime keeps it
    /// polling its sockets for `window` after each read (see `mitto::BusyPoll`).
    pub(crate) async fn start_busy_poll(
        srt: &ServerRuntime,
        url: &str,
        window: std::time::Duration,
    ) -> anyhow::Result<MittoEcho> {
        MittoEcho::start_with(srt, url, Some(window), true).await
    }

    async fn start_with(
        srt: &ServerRuntime,
        url: &str,
        busy_poll: Option<std::time::Duration>,
        spin: bool,
    ) -> anyhow::Result<MittoEcho> {
        let spin = if spin {
            mitto::DEFAULT_SPIN
        } else {
            std::time::Duration::ZERO
        };
        let url = url.to_owned();
        let server_poller = busy_poll.map(mitto::BusyPoll::new);
        let sp = server_poller.clone();
        let (server, url) = srt
            .run(async move {
                let opts = mitto::ServerOptions::default().spin(spin);
                let opts = match sp {
                    Some(p) => {
                        tokio::spawn(p.clone().run());
                        opts.busy_poll(p)
                    }
                    None => opts,
                };
                let server = mitto::Server::with_options(opts)
                    .route(METHOD, |req: mitto::Request| async move {
                        Ok(req.payload().clone())
                    })
                    .bind(&url)
                    .await?;
                let url = server.local_url().to_owned();
                Ok((server, url))
            })
            .await?;
        let mut pollers: Vec<_> = server_poller.into_iter().collect();
        let mut opts = mitto::ClientOptions::new().spin(spin);
        if let Some(w) = busy_poll {
            let p = mitto::BusyPoll::new(w);
            tokio::spawn(p.clone().run());
            opts = opts.busy_poll(p.clone());
            pollers.push(p);
        }
        let client = mitto::Client::connect(&url, opts).await?;
        Ok(MittoEcho {
            server: Some(server),
            client,
            pollers,
        })
    }

    /// Closes the client and shuts the server down.
    pub(crate) async fn stop(mut self, srt: &ServerRuntime) -> anyhow::Result<()> {
        self.client.close().await;
        for p in &self.pollers {
            p.stop();
        }
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
