//! The connection state machine on its hot paths: a unary call's whole round trip through two
//! `Connection`s back to back (encode, decode, the call table, the peer's table, events), one
//! at a time and pipelined, over bytes and over an in-process link; and a publish reaching
//! the peer.
#![allow(missing_docs)]

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use mitto_proto::connection::{CallOptions, Config, Connection, Event, Link, Transmit};
use mitto_proto::{Frame, Status, Subject};
use std::time::{Duration, Instant};

/// The buffers a driver keeps.
#[derive(Default)]
struct Pipe {
    t: Transmit,
    wire: BytesMut,
    frames: Vec<Frame>,
}

impl Pipe {
    /// Moves what `from` queued into `to`, as bytes or as frames.
    fn pass<A, B>(
        &mut self,
        link: Link,
        now: Instant,
        from: &mut Connection<A>,
        to: &mut Connection<B>,
    ) {
        if link == Link::Frames {
            from.poll_transmit_frames(now, &mut self.frames);
            for f in self.frames.drain(..) {
                let _ = to.handle_frame(now, f);
            }
        } else {
            from.poll_transmit(now, &mut self.t);
            self.t.drain_into(&mut self.wire);
            to.handle_input(now, &mut self.wire);
        }
    }
}

/// Two connected ends and the buffers a driver would keep.
struct Ends {
    link: Link,
    now: Instant,
    client: Connection<u32>,
    server: Connection,
    pipe: Pipe,
    subject: Subject,
    payload: Bytes,
    timeout: CallOptions,
}

impl Ends {
    fn new(link: Link) -> Ends {
        let now = Instant::now();
        let mut e = Ends {
            link,
            now,
            client: Connection::client(Config::client(Config::offer("c", None)).link(link), now),
            server: Connection::server(Config::server(Config::offer("s", None)).link(link), now),
            pipe: Pipe::default(),
            subject: Subject::from_static("bench.echo").unwrap_or_default(),
            payload: Bytes::from_static(&[7u8; 32]),
            timeout: CallOptions::new().timeout(Duration::from_secs(5)),
        };
        e.up();
        while let Some(ev) = e.server.poll_event() {
            if let Event::Hello(_) = ev {
                let _ = e.server.accept(now, "c", "", false);
            }
        }
        e.down();
        while e.client.poll_event().is_some() {}
        assert!(e.client.is_open() && e.server.is_open());
        e
    }

    fn up(&mut self) {
        self.pipe
            .pass(self.link, self.now, &mut self.client, &mut self.server);
    }

    fn down(&mut self) {
        self.pipe
            .pass(self.link, self.now, &mut self.server, &mut self.client);
    }

    /// `n` calls sent together, answered together.
    fn calls(&mut self, n: u32) -> u32 {
        for i in 0..n {
            let req = Frame::request(0, self.subject.clone(), self.payload.clone());
            let _ = self.client.call(self.now, req, self.timeout, i);
        }
        self.up();
        while let Some(ev) = self.server.poll_event() {
            if let Event::Request { id, frame, .. } = ev {
                let _ = self
                    .server
                    .respond(id, Frame::response(0, Status::OK, frame.payload));
            }
        }
        self.down();
        let mut answered = 0;
        while let Some(ev) = self.client.poll_event() {
            if let Event::Answer { ctx, .. } = ev {
                answered += ctx;
            }
        }
        answered
    }
}

fn bench_calls(c: &mut Criterion) {
    let mut g = c.benchmark_group("connection/unary");
    g.throughput(Throughput::Elements(1));
    let mut bytes = Ends::new(Link::Bytes);
    g.bench_function("round_trip_bytes", |b| b.iter(|| black_box(bytes.calls(1))));
    let mut frames = Ends::new(Link::Frames);
    g.bench_function("round_trip_frames", |b| {
        b.iter(|| black_box(frames.calls(1)))
    });
    g.finish();
    let mut g = c.benchmark_group("connection/pipelined");
    g.throughput(Throughput::Elements(64));
    let mut bytes = Ends::new(Link::Bytes);
    g.bench_function("64_calls_bytes", |b| b.iter(|| black_box(bytes.calls(64))));
    g.finish();
}

fn bench_publish(c: &mut Criterion) {
    let mut g = c.benchmark_group("connection/publish");
    g.throughput(Throughput::Elements(64));
    let mut e = Ends::new(Link::Bytes);
    let subject = Subject::from_static("bench.pub").unwrap_or_default();
    g.bench_function("64_publishes_bytes", |b| {
        b.iter(|| {
            for _ in 0..64 {
                let _ = e
                    .client
                    .publish(Frame::publish(subject.clone(), e.payload.clone()));
            }
            e.up();
            let mut n = 0;
            while let Some(ev) = e.server.poll_event() {
                n += matches!(ev, Event::Frame(_)) as u32;
            }
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_calls, bench_publish);
criterion_main!(benches);
