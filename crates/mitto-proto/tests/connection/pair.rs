//! Two connections back to back through buffers, with virtual time (quinn-proto's `Pair`):
//! no sockets, no sleeps. A test moves time, holds one direction (so that frames cross),
//! steps frame by frame, cuts the link, and reads every frame each side sent.

use bytes::BytesMut;
use mitto_proto::connection::{Config, Connection, Event, Link, Transmit};
use mitto_proto::{Decoder, Frame, Hello};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One direction of the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

/// What is on the wire in one direction and not yet delivered.
#[derive(Default)]
struct Wire {
    bytes: BytesMut,
    frames: VecDeque<Frame>,
    held: bool,
    /// Every frame sent this way, in order.
    log: Vec<Frame>,
}

pub(crate) struct Pair {
    pub(crate) now: Instant,
    pub(crate) client: Connection<u64>,
    pub(crate) server: Connection<u64>,
    link: Link,
    up: Wire,
    down: Wire,
    /// Events taken from each side, in order.
    pub(crate) client_events: Vec<Event<u64>>,
    pub(crate) server_events: Vec<Event<u64>>,
    /// The server accepts every HELLO (client id "c-1", session "s-1").
    pub(crate) auto_accept: bool,
    /// The session the server says it resumed.
    pub(crate) resumed: bool,
    /// The driver read EOF after a cut.
    cut: bool,
}

/// A HELLO offering everything, with a keepalive.
pub(crate) fn offer(name: &str, keepalive_ms: u32) -> Hello {
    let mut h = Config::offer(name, None);
    h.keepalive_ms = keepalive_ms;
    h
}

impl Pair {
    /// A pair over a byte stream, both sides offering everything, no keepalive.
    pub(crate) fn new() -> Pair {
        Pair::with(
            Config::client(offer("client", 0)),
            Config::server(offer("server", 0)),
        )
    }

    /// A pair with these settings (the link form is the client's).
    pub(crate) fn with(client: Config, server: Config) -> Pair {
        let now = Instant::now();
        let link = client.link;
        Pair {
            now,
            client: Connection::client(client, now),
            server: Connection::server(server.link(link), now),
            link,
            up: Wire::default(),
            down: Wire::default(),
            client_events: Vec::new(),
            server_events: Vec::new(),
            auto_accept: true,
            resumed: false,
            cut: false,
        }
    }

    /// A pair whose handshake completed, events of it taken.
    pub(crate) fn connected() -> Pair {
        let mut p = Pair::new();
        p.drive();
        assert!(p.client.is_open() && p.server.is_open());
        p.client_events.clear();
        p.server_events.clear();
        p.clear_log();
        p
    }

    fn wire(&mut self, d: Dir) -> &mut Wire {
        match d {
            Dir::Up => &mut self.up,
            Dir::Down => &mut self.down,
        }
    }

    /// Moves what `d`'s sender queued onto the wire. Whether anything moved.
    pub(crate) fn transmit(&mut self, d: Dir) -> bool {
        let now = self.now;
        let (conn, wire) = match d {
            Dir::Up => (&mut self.client, &mut self.up),
            Dir::Down => (&mut self.server, &mut self.down),
        };
        match self.link {
            Link::Bytes => {
                let mut t = Transmit::new();
                if conn.poll_transmit(now, &mut t) == 0 {
                    return false;
                }
                let mut b = BytesMut::new();
                t.drain_into(&mut b);
                let mut copy = b.clone();
                let mut dec = Decoder::default();
                while let Ok(Some(f)) = dec.decode(&mut copy) {
                    wire.log.push(f);
                }
                wire.bytes.extend_from_slice(&b);
                true
            }
            _ => {
                let mut out = Vec::new();
                if conn.poll_transmit_frames(now, &mut out) == 0 {
                    return false;
                }
                wire.log.extend(out.iter().cloned());
                wire.frames.extend(out);
                true
            }
        }
    }

    /// Delivers what is on the wire in direction `d`, unless held. Whether anything moved.
    pub(crate) fn deliver(&mut self, d: Dir) -> bool {
        let now = self.now;
        if self.wire(d).held {
            return false;
        }
        let (conn, wire) = match d {
            Dir::Up => (&mut self.server, &mut self.up),
            Dir::Down => (&mut self.client, &mut self.down),
        };
        let before = (wire.bytes.len(), wire.frames.len());
        if !wire.bytes.is_empty() && conn.can_read() {
            conn.handle_input(now, &mut wire.bytes);
        }
        while let Some(f) = wire.frames.pop_front() {
            if let Some(f) = conn.handle_frame(now, f) {
                wire.frames.push_front(f);
                break;
            }
        }
        before != (wire.bytes.len(), wire.frames.len())
    }

    /// Delivers only the first frame on the wire in direction `d` (frames link).
    pub(crate) fn deliver_one(&mut self, d: Dir) -> Option<Frame> {
        let now = self.now;
        let (conn, wire) = match d {
            Dir::Up => (&mut self.server, &mut self.up),
            Dir::Down => (&mut self.client, &mut self.down),
        };
        let f = wire.frames.pop_front()?;
        if conn.handle_frame(now, f.clone()).is_some() {
            return None;
        }
        Some(f)
    }

    /// Takes both sides' events (the server accepting HELLOs if asked).
    pub(crate) fn events(&mut self) -> bool {
        let mut any = false;
        while let Some(e) = self.client.poll_event() {
            self.client_events.push(e);
            any = true;
        }
        while let Some(e) = self.server.poll_event() {
            if let (Event::Hello(_), true) = (&e, self.auto_accept) {
                self.server
                    .accept(self.now, "c-1", "s-1", self.resumed)
                    .unwrap();
            }
            self.server_events.push(e);
            any = true;
        }
        any
    }

    /// Runs both sides until nothing moves (time stands still).
    pub(crate) fn drive(&mut self) {
        for _ in 0..100_000 {
            let mut moved = self.events();
            moved |= self.transmit(Dir::Up);
            moved |= self.transmit(Dir::Down);
            moved |= self.deliver(Dir::Up);
            moved |= self.deliver(Dir::Down);
            moved |= self.events();
            if !moved {
                return;
            }
        }
        panic!("the pair never settled");
    }

    /// Moves time to `to`, fires both sides' timers, and drives.
    pub(crate) fn advance_to(&mut self, to: Instant) {
        self.now = to;
        self.client.handle_timeout(to);
        self.server.handle_timeout(to);
        self.drive();
    }

    /// Moves time by `d`.
    pub(crate) fn advance(&mut self, d: Duration) {
        self.advance_to(self.now + d);
    }

    /// Moves time from timer to timer until `until`.
    pub(crate) fn run_until(&mut self, until: Instant) {
        loop {
            let next = [self.client.poll_timeout(), self.server.poll_timeout()]
                .into_iter()
                .flatten()
                .filter(|t| *t <= until)
                .min();
            match next {
                Some(t) => self.advance_to(t.max(self.now)),
                None => return self.advance_to(until),
            }
        }
    }

    /// Holds (or releases) direction `d`: what is sent waits on the wire.
    pub(crate) fn hold(&mut self, d: Dir, held: bool) {
        self.wire(d).held = held;
    }

    /// Every frame sent in direction `d` so far.
    pub(crate) fn sent(&self, d: Dir) -> &[Frame] {
        match d {
            Dir::Up => &self.up.log,
            Dir::Down => &self.down.log,
        }
    }

    /// Forgets the frames logged so far.
    pub(crate) fn clear_log(&mut self) {
        self.up.log.clear();
        self.down.log.clear();
    }

    /// The frames on the wire in direction `d` (frames link), to reorder.
    pub(crate) fn in_flight(&mut self, d: Dir) -> &mut VecDeque<Frame> {
        &mut self.wire(d).frames
    }

    /// The transport breaks: what is on the wire is lost, both drivers see it fail.
    pub(crate) fn cut(&mut self) {
        for w in [&mut self.up, &mut self.down] {
            w.bytes.clear();
            w.frames.clear();
        }
        self.client.transport_lost("cut");
        self.server.transport_lost("cut");
        self.cut = true;
        self.events();
    }

    /// Takes the client's events.
    pub(crate) fn take_client(&mut self) -> Vec<Event<u64>> {
        std::mem::take(&mut self.client_events)
    }

    /// Takes the server's events.
    pub(crate) fn take_server(&mut self) -> Vec<Event<u64>> {
        std::mem::take(&mut self.server_events)
    }
}

/// The final answers among `events`: (ctx, status), in order.
pub(crate) fn answers(events: &[Event<u64>]) -> Vec<(u64, mitto_proto::Status)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Answer { ctx, answer, .. } => Some((
                *ctx,
                match answer {
                    Ok(f) => f.status,
                    Err(e) => e.status(),
                },
            )),
            _ => None,
        })
        .collect()
}

/// The calls the peer opened among `events`: (id, frame).
pub(crate) fn requests(events: &[Event<u64>]) -> Vec<(mitto_proto::connection::RequestId, Frame)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Request { id, frame, .. } => Some((*id, frame.clone())),
            _ => None,
        })
        .collect()
}

/// The frames handed to the application among `events`.
pub(crate) fn frames(events: &[Event<u64>]) -> Vec<Frame> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Frame(f) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

/// (type, id, status) of each frame.
pub(crate) fn brief(fs: &[Frame]) -> Vec<(mitto_proto::FrameType, u64, mitto_proto::Status)> {
    fs.iter().map(|f| (f.frame_type, f.id, f.status)).collect()
}

/// One end fed raw bytes by a test, with what it sends decoded back.
pub(crate) struct Raw {
    pub(crate) now: Instant,
    pub(crate) conn: Connection<u64>,
    pub(crate) input: BytesMut,
}

impl Raw {
    pub(crate) fn server(cfg: Config) -> Raw {
        let now = Instant::now();
        Raw {
            now,
            conn: Connection::server(cfg, now),
            input: BytesMut::new(),
        }
    }

    pub(crate) fn client(cfg: Config) -> Raw {
        let now = Instant::now();
        Raw {
            now,
            conn: Connection::client(cfg, now),
            input: BytesMut::new(),
        }
    }

    /// Feeds encoded frames (or any bytes).
    pub(crate) fn feed(&mut self, b: &[u8]) {
        self.input.extend_from_slice(b);
        self.conn.handle_input(self.now, &mut self.input);
    }

    /// Feeds frames.
    pub(crate) fn send(&mut self, fs: &[Frame]) {
        let mut b = BytesMut::new();
        for f in fs {
            f.encode(&mut b).unwrap();
        }
        self.feed(&b);
    }

    /// What the connection queued, decoded.
    pub(crate) fn out(&mut self) -> Vec<Frame> {
        let mut t = Transmit::new();
        self.conn.poll_transmit(self.now, &mut t);
        let mut b = BytesMut::new();
        t.drain_into(&mut b);
        let mut dec = Decoder::default();
        std::iter::from_fn(|| dec.decode(&mut b).unwrap()).collect()
    }

    /// Its events.
    pub(crate) fn events(&mut self) -> Vec<Event<u64>> {
        std::iter::from_fn(|| self.conn.poll_event()).collect()
    }

    /// A server that accepted a default client HELLO (its reply and events taken).
    pub(crate) fn accepted_server(cfg: Config) -> Raw {
        let mut r = Raw::server(cfg);
        r.send(&[Frame::hello(&offer("raw", 0), false).unwrap()]);
        r.events();
        r.conn.accept(r.now, "c", "", false).unwrap();
        r.out();
        r
    }
}
