//! A peer that writes and reads raw frames on a socket to the broker: for tests that send what a
//! well-behaved client never would (forged ids, replies to inboxes it was never given) and need
//! to see exactly which frames come back.

#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use mitto::proto::negotiate::Features;
use mitto::proto::{Decoder, Flags, Frame, FrameType, Hello, Subject, SubscribeOptions, Version};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for a frame it expects before failing (a guard against hanging, not a
/// timing assertion).
pub(crate) const GUARD: Duration = Duration::from_secs(10);

/// A HELLO offering every feature, as `user` with `password` (both empty: no credentials).
pub(crate) fn offer(user: &str, password: &str) -> Hello {
    Hello {
        version: Version::CURRENT,
        features: Features::supported(),
        name: "raw".into(),
        user: user.into(),
        auth: Bytes::copy_from_slice(password.as_bytes()),
        ..Hello::default()
    }
}

pub(crate) struct Raw {
    s: TcpStream,
    dec: Decoder,
    buf: BytesMut,
    next_id: u64,
}

impl Raw {
    /// Connects and completes the handshake with `hello`; returns the server's reply too.
    pub(crate) async fn open(url: &str, hello: &Hello) -> (Raw, Hello) {
        let s = TcpStream::connect(url.trim_start_matches("tcp://"))
            .await
            .unwrap();
        let mut r = Raw {
            s,
            dec: Decoder::default(),
            buf: BytesMut::new(),
            next_id: 1,
        };
        r.send(&Frame::hello(hello, false).unwrap()).await;
        let f = r.recv().await;
        assert_eq!(f.frame_type, FrameType::Hello, "{f:?}");
        let reply = Hello::decode(&f.payload).unwrap();
        (r, reply)
    }

    /// Connects as `user` / `password` (empty: anonymous).
    pub(crate) async fn login(url: &str, user: &str, password: &str) -> Raw {
        Raw::open(url, &offer(user, password)).await.0
    }

    pub(crate) async fn send(&mut self, f: &Frame) {
        self.s.write_all(&f.to_bytes().unwrap()).await.unwrap();
    }

    /// The next frame other than PING (answered with PONG). Fails the test at end of stream
    /// or after [`GUARD`] of silence.
    pub(crate) async fn recv(&mut self) -> Frame {
        self.try_recv().await.expect("the connection is open")
    }

    /// As [`Raw::recv`], `None` at end of stream.
    pub(crate) async fn try_recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.dec.decode(&mut self.buf).unwrap() {
                if f.frame_type == FrameType::Ping {
                    self.send(&Frame::pong(&f)).await;
                    continue;
                }
                return Some(f);
            }
            let n = tokio::time::timeout(GUARD, self.s.read_buf(&mut self.buf))
                .await
                .expect("a frame before the guard time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    /// Sends a HEALTH query and returns every frame the broker sent before answering it: the
    /// broker handles a connection's frames in order and answers each refusal on the spot, so
    /// these are its answers to everything this peer sent before.
    pub(crate) async fn sync(&mut self) -> Vec<Frame> {
        let id = 0x5EED_0000 + self.next_id;
        self.next_id += 1;
        self.send(&Frame::health_query(id)).await;
        let mut before = Vec::new();
        loop {
            let f = self.recv().await;
            if f.frame_type == FrameType::Health && f.id == id {
                return before;
            }
            before.push(f);
        }
    }

    /// SUBSCRIBE (or REGISTER when `service`) `filter` as `sid`, waiting for the ACK.
    pub(crate) async fn join(
        &mut self,
        service: bool,
        sid: u32,
        filter: &str,
        opts: &SubscribeOptions,
    ) {
        let subject = Subject::new(filter).unwrap();
        let f = if service {
            Frame::register(sid, subject, opts).unwrap()
        } else {
            Frame::subscribe(sid, subject, opts).unwrap()
        };
        let id = 0xACC0_0000 + u64::from(sid);
        self.send(&f.with_id(id).with_flags(Flags::ACK_REQUIRED))
            .await;
        let a = self.recv().await;
        assert_eq!((a.frame_type, a.id), (FrameType::Ack, id), "{a:?}");
    }
}

pub(crate) fn subject(s: &str) -> Subject {
    Subject::new(s).unwrap()
}
