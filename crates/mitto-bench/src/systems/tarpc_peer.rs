//! tarpc (google/tarpc): serde transport over TCP with the bincode codec, the `#[tarpc::service]`
//! macro, one task spawned per request on the server as tarpc's own examples do.

use crate::runtime::ServerRuntime;
use anyhow::Context as _;
use futures::{future, StreamExt};
use serde_bytes::ByteBuf;
use std::net::SocketAddr;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;

/// The echo service.
#[tarpc::service]
pub(crate) trait Echo {
    /// Answers the payload it was sent.
    async fn echo(payload: ByteBuf) -> ByteBuf;
}

#[derive(Clone)]
struct EchoServer;

impl Echo for EchoServer {
    async fn echo(self, _: tarpc::context::Context, payload: ByteBuf) -> ByteBuf {
        payload
    }
}

/// Starts the tarpc echo server on `srt`; returns its address.
pub(crate) async fn start(srt: &ServerRuntime) -> anyhow::Result<SocketAddr> {
    srt.run(async {
        let mut incoming =
            tarpc::serde_transport::tcp::listen("127.0.0.1:0", Bincode::default).await?;
        incoming.config_mut().max_frame_length(usize::MAX);
        let addr = incoming.local_addr();
        tokio::spawn(async move {
            incoming
                .filter_map(|t| future::ready(t.ok()))
                .for_each(|transport| {
                    let _ = transport.get_ref().set_nodelay(true);
                    let channel = BaseChannel::with_defaults(transport);
                    tokio::spawn(channel.execute(EchoServer.serve()).for_each(|rpc| {
                        tokio::spawn(rpc);
                        future::ready(())
                    }));
                    future::ready(())
                })
                .await;
        });
        Ok(addr)
    })
    .await
}

/// A tarpc client on one connection (its dispatch task runs on the caller's runtime).
pub(crate) async fn connect(addr: SocketAddr) -> anyhow::Result<EchoClient> {
    let transport = tarpc::serde_transport::tcp::connect(addr, Bincode::default)
        .await
        .context("connecting to the tarpc server")?;
    transport.get_ref().set_nodelay(true)?;
    Ok(EchoClient::new(tarpc::client::Config::default(), transport).spawn())
}

/// One call, checking the echoed length.
pub(crate) async fn call(client: &EchoClient, payload: &[u8]) -> anyhow::Result<()> {
    let reply = client
        .echo(tarpc::context::current(), ByteBuf::from(payload.to_vec()))
        .await?;
    anyhow::ensure!(reply.len() == payload.len(), "tarpc echo mismatch");
    Ok(())
}
