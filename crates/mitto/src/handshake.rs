//! The HELLO exchange that opens every connection, before the driver takes over.
//!
//! Until it completes, both sides decode with [`Limits::HANDSHAKE`] (PROTOCOL.md 8.1): a peer
//! that has not yet been admitted can make this side buffer one small frame, nothing more.

use crate::error::{Error, Result};
use crate::transport::{Incoming, Io};
use bytes::BytesMut;
use mitto_proto::negotiate::{negotiate, Negotiated};
use mitto_proto::{Decoder, Flags, Frame, FrameType, Hello, Limits, Status};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How much a handshake read asks the buffer for at a time.
const READ_STEP: usize = 4096;

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
        if buf.capacity() - buf.len() < READ_STEP / 4 {
            buf.reserve(READ_STEP);
        }
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
        let mut dec = Decoder::new(Limits::HANDSHAKE);
        let mut buf = BytesMut::with_capacity(READ_STEP);
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
                io.set_frame_limit(agreed.limits.max_frame());
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

/// Reads the client's first frame. A refusal carries the id its ERROR names (section 14.3 of
/// the spec: the header's id, or 0 when none could be read); `None` when the peer is gone and
/// nothing can be answered.
async fn read_first(
    io: &mut Io,
    dec: &mut Decoder,
    buf: &mut BytesMut,
) -> std::result::Result<Frame, (Option<u64>, Error)> {
    if matches!(io, Io::Link(_)) {
        return read_frame(io, dec, buf).await.map_err(|e| (None, e));
    }
    loop {
        match dec.decode(buf) {
            Ok(Some(f)) => return Ok(f),
            Ok(None) => {}
            Err(e) => return Err((Some(e.id()), e.into())),
        }
        if buf.capacity() - buf.len() < READ_STEP / 4 {
            buf.reserve(READ_STEP);
        }
        match io.read_buf(buf).await {
            Ok(0) => {
                return Err(match dec.decode_eof(buf) {
                    Err(e) => (Some(e.id()), e.into()),
                    Ok(_) => (
                        None,
                        Error::connection_lost("peer closed during the handshake"),
                    ),
                })
            }
            Ok(_) => {}
            Err(e) => return Err((None, e.into())),
        }
    }
}

/// Server side: waits for the client's HELLO, checks it with `admit`, negotiates and replies.
/// Every refusal, whether the first frame could not be decoded or was not an acceptable HELLO,
/// is sent the same way: ERROR (the id of the offending frame where known, else 0), then CLOSE
/// with the same status, then the connection closes.
pub async fn server(
    io: &mut Io,
    local: &Hello,
    timeout: Duration,
    admit: impl FnOnce(&Hello) -> Result<(String, String, bool)>,
) -> Result<(Negotiated, Hello, BytesMut)> {
    server_with(io, local, timeout, admit, |_| Duration::ZERO).await
}

/// A new connection's setup on the accepting side, all within `timeout`: the transport's own
/// handshake (TLS, WebSocket upgrade), then [`server_with`]. A peer that stays silent, at either step, is closed
/// when the time is up (the error's status is TIMEOUT).
pub async fn accept(
    inc: Incoming,
    local: &Hello,
    timeout: Duration,
    admit: impl FnOnce(&Hello) -> Result<(String, String, bool)>,
    refusal_delay: impl FnOnce(&Error) -> Duration,
) -> Result<(Io, Negotiated, Hello, BytesMut)> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut io = tokio::time::timeout_at(deadline, inc.establish())
        .await
        .map_err(|_| {
            Error::new(
                Status::TIMEOUT,
                format!("transport setup not done within {timeout:?}"),
            )
        })??;
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let (agreed, hello, leftover) = server_with(&mut io, local, left, admit, refusal_delay).await?;
    Ok((io, agreed, hello, leftover))
}

/// [`server`], with a pause of `refusal_delay(&error)` before a refusal is sent (a peer
/// guessing credentials waits for each answer; the pause counts against `timeout`).
pub async fn server_with(
    io: &mut Io,
    local: &Hello,
    timeout: Duration,
    admit: impl FnOnce(&Hello) -> Result<(String, String, bool)>,
    refusal_delay: impl FnOnce(&Error) -> Duration,
) -> Result<(Negotiated, Hello, BytesMut)> {
    let run = async {
        let mut dec = Decoder::new(Limits::HANDSHAKE);
        let mut buf = BytesMut::with_capacity(READ_STEP);
        let outcome = match read_first(io, &mut dec, &mut buf).await {
            Err((None, e)) => return Err(e),
            Err((Some(id), e)) => Err((id, e)),
            Ok(f) if f.frame_type != FrameType::Hello || f.flags.contains(Flags::REPLY) => Err((
                f.id,
                Error::new(
                    Status::UNEXPECTED_FRAME,
                    format!("the first frame must be HELLO, not {}", f.frame_type.name()),
                ),
            )),
            Ok(f) => Hello::decode(&f.payload)
                .map_err(|k| (f.id, Error::new(Status::BAD_REQUEST, k.to_string())))
                .and_then(|h| {
                    let agreed = negotiate(local, &h)
                        .map_err(|e| (f.id, Error::new(e.status(), e.to_string())))?;
                    let (client_id, session, resumed) = admit(&h).map_err(|e| (f.id, e))?;
                    Ok((f.id, agreed, h, client_id, session, resumed))
                }),
        };
        match outcome {
            Ok((id, agreed, h, client_id, session, resumed)) => {
                let reply = agreed.reply(&local.name, &client_id, &session, resumed);
                write_frame(io, &Frame::hello(&reply, true)?.with_id(id)).await?;
                // Admitted: a WebSocket's messages may now be as large as the agreed frames.
                io.set_frame_limit(agreed.limits.max_frame());
                Ok((agreed, h, buf))
            }
            Err((id, e)) => {
                let pause = refusal_delay(&e);
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
                let refusal = vec![
                    Frame::error(id, e.status(), e.message()),
                    Frame::close(e.status(), e.message()),
                ];
                let _ = write_frames(io, refusal).await;
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
