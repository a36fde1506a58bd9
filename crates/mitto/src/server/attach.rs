//! Serving through a broker: the server connects to it and registers its methods.

use super::running::run_connection;
use super::shared::Shared;
use super::PeerInfo;
use crate::error::{Error, Result};
use crate::handshake;
use crate::transport::Endpoint;
use mitto_proto::{Flags, Frame, FrameType, Status, Subject};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tracing::Instrument;

pub(super) type Attached = (
    crate::transport::Io,
    mitto_proto::Negotiated,
    bytes::BytesMut,
);

/// Connects to a broker and registers every method.
pub(super) async fn attach_connect(
    shared: &Shared,
    ep: &Endpoint,
    client: &crate::ClientOptions,
) -> Result<Attached> {
    let setup = async {
        let mut io = crate::transport::connect(ep, client.tls.as_ref()).await?;
        let offer = crate::client::hello(client);
        let (agreed, _, mut buf) =
            handshake::client(&mut io, &offer, client.connect_timeout).await?;
        // Keys were made from `&str`s.
        let mut methods: Vec<String> = shared
            .server
            .routes
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        methods.sort();
        let mut wire = Vec::with_capacity(methods.len());
        for (i, m) in methods.iter().enumerate() {
            let group = shared
                .server
                .opts
                .group
                .clone()
                .unwrap_or_else(|| m.clone());
            let opts = mitto_proto::SubscribeOptions {
                queue: Some(group),
                ..Default::default()
            };
            let n = i as u64 + 1;
            let mut f = Frame::register(n as u32, Subject::new(m)?, &opts)?.with_id(n);
            f.flags.insert(Flags::ACK_REQUIRED);
            wire.push(f);
        }
        handshake::write_frames(&mut io, wire).await?;
        let mut dec = mitto_proto::Decoder::new(agreed.limits);
        let mut acked = 0;
        while acked < methods.len() {
            let f = handshake::read_frame(&mut io, &mut dec, &mut buf).await?;
            match f.frame_type {
                FrameType::Ack => acked += 1,
                FrameType::Error | FrameType::Close => {
                    let method = methods
                        .get((f.id as usize).wrapping_sub(1))
                        .map(|m| m.as_str());
                    let e = Error::from_remote(f.status, &f.payload);
                    return Err(Error::new(
                        e.status(),
                        format!(
                            "registering {} failed: {}",
                            method.unwrap_or("?"),
                            e.message()
                        ),
                    ));
                }
                _ => {}
            }
        }
        Ok((io, agreed, buf))
    };
    tokio::time::timeout(client.connect_timeout, setup)
        .await
        .map_err(|_| {
            Error::new(Status::TIMEOUT, format!("attaching to {ep} timed out")).retryable()
        })?
}

pub(super) async fn attach_loop(
    shared: Arc<Shared>,
    ep: Endpoint,
    client: crate::ClientOptions,
    first: Attached,
) {
    let mut next = Some(first);
    let (min, max) = client.backoff;
    let mut wait = min;
    loop {
        if let Some((io, agreed, leftover)) = next.take() {
            wait = min;
            let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
            let peer = Arc::new(PeerInfo {
                addr: ep.to_string(),
                name: "broker".into(),
                ..PeerInfo::default()
            });
            let span = tracing::info_span!("mitto.attach", id, broker = %ep);
            run_connection(&shared, io, agreed, leftover, peer, id, false)
                .instrument(span)
                .await;
        }
        if shared.draining() || !client.reconnect {
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(max);
        match attach_connect(&shared, &ep, &client).await {
            Ok(a) => next = Some(a),
            Err(e) => tracing::debug!(broker = %ep, error = %e, "re-attaching failed"),
        }
    }
}
