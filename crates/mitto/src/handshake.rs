//! The HELLO exchange that opens every connection, before the driver takes over.

use crate::error::{Error, Result};
use crate::transport::Io;
use bytes::BytesMut;
use mitto_proto::negotiate::{negotiate, Negotiated};
use mitto_proto::{Decoder, Flags, Frame, FrameType, Hello, Status};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Writes frames (encoded in one buffer, or as they are on an in-process link) and flushes.
pub(crate) async fn write_frames(io: &mut Io, frames: Vec<Frame>) -> Result<()> {
    if let Io::Link(l) = io {
        return l.send(frames).await;
    }
    let mut b = BytesMut::new();
    for f in &frames {
        f.encode(&mut b)?;
    }
    io.write_all(&b).await?;
    io.flush().await?;
    Ok(())
}

async fn write_frame(io: &mut Io, f: &Frame) -> Result<()> {
    write_frames(io, vec![f.clone()]).await
}

async fn shutdown(io: &mut Io) {
    match io {
        Io::Link(l) => l.close(),
        io => {
            let _ = io.shutdown().await;
        }
    }
}

pub(crate) async fn read_frame(
    io: &mut Io,
    dec: &mut Decoder,
    buf: &mut BytesMut,
) -> Result<Frame> {
    if let Io::Link(l) = io {
        return l
            .recv()
            .await
            .ok_or_else(|| Error::connection_lost("peer closed during the handshake"));
    }
    loop {
        if let Some(f) = dec.decode(buf)? {
            return Ok(f);
        }
        buf.reserve(4096);
        if io.read_buf(buf).await? == 0 {
            return Err(Error::connection_lost("peer closed during the handshake"));
        }
    }
}

/// Client side: sends HELLO, waits for the server's HELLO reply. Returns what was agreed, the
/// server's reply, and any bytes read past it.
pub async fn client(
    io: &mut Io,
    offer: &Hello,
    timeout: Duration,
) -> Result<(Negotiated, Hello, BytesMut)> {
    let run = async {
        write_frame(io, &Frame::hello(offer, false)?).await?;
        let mut dec = Decoder::default();
        let mut buf = BytesMut::with_capacity(4096);
        let f = read_frame(io, &mut dec, &mut buf).await.map_err(|e| {
            if e.status() == Status::PROTOCOL_ERROR {
                Error::new(
                    Status::PROTOCOL_ERROR,
                    format!(
                        "the server did not answer in mitto's protocol ({}); a TLS listener \
                         needs a tls:// URL",
                        e.message()
                    ),
                )
            } else {
                e
            }
        })?;
        match f.frame_type {
            FrameType::Hello if f.flags.contains(Flags::REPLY) => {
                let reply = Hello::decode(&f.payload)
                    .map_err(|k| Error::new(Status::PROTOCOL_ERROR, k.to_string()))?;
                let agreed =
                    negotiate(offer, &reply).map_err(|e| Error::new(e.status(), e.to_string()))?;
                Ok((agreed, reply, buf))
            }
            FrameType::Error | FrameType::Close => Err(Error::from_remote(f.status, &f.payload)),
            other => Err(Error::new(
                Status::UNEXPECTED_FRAME,
                format!("expected the server's HELLO, got {}", other.name()),
            )),
        }
    };
    tokio::time::timeout(timeout, run).await.map_err(|_| {
        Error::new(
            Status::TIMEOUT,
            format!("no HELLO from the server within {timeout:?}"),
        )
        .retryable()
    })?
}

/// Server side: waits for the client's HELLO, checks it with `admit`, negotiates and replies.
/// Every refusal is sent to the client as an ERROR frame before the error is returned.
pub async fn server(
    io: &mut Io,
    local: &Hello,
    timeout: Duration,
    admit: impl FnOnce(&Hello) -> Result<(String, String, bool)>,
) -> Result<(Negotiated, Hello, BytesMut)> {
    let run = async {
        let mut dec = Decoder::default();
        let mut buf = BytesMut::with_capacity(4096);
        let f = match read_frame(io, &mut dec, &mut buf).await {
            Ok(f) => f,
            Err(e) => {
                let _ = write_frame(io, &Frame::error(0, e.status(), e.message())).await;
                return Err(e);
            }
        };
        let refuse = |id: u64, e: Error| (Box::new(Frame::error(id, e.status(), e.message())), e);
        let outcome = if f.frame_type != FrameType::Hello || f.flags.contains(Flags::REPLY) {
            Err(refuse(
                f.id,
                Error::new(
                    Status::UNEXPECTED_FRAME,
                    format!("the first frame must be HELLO, not {}", f.frame_type.name()),
                ),
            ))
        } else {
            let hello = Hello::decode(&f.payload)
                .map_err(|k| refuse(f.id, Error::new(Status::BAD_REQUEST, k.to_string())));
            hello.and_then(|h| {
                let agreed = negotiate(local, &h)
                    .map_err(|e| refuse(f.id, Error::new(e.status(), e.to_string())))?;
                let (client_id, session, resumed) = admit(&h).map_err(|e| refuse(f.id, e))?;
                Ok((agreed, h, client_id, session, resumed))
            })
        };
        match outcome {
            Ok((agreed, h, client_id, session, resumed)) => {
                let reply = agreed.reply(&local.name, &client_id, &session, resumed);
                write_frame(io, &Frame::hello(&reply, true)?.with_id(f.id)).await?;
                Ok((agreed, h, buf))
            }
            Err((frame, e)) => {
                let _ = write_frame(io, &frame).await;
                let _ = write_frame(io, &Frame::close(e.status(), e.message())).await;
                shutdown(io).await;
                Err(e)
            }
        }
    };
    tokio::time::timeout(timeout, run).await.map_err(|_| {
        Error::new(
            Status::TIMEOUT,
            format!("no HELLO from the client within {timeout:?}"),
        )
    })?
}
