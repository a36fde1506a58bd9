//! Whatever a peer sends, as bytes or as frames handed over in-process, and in whatever state
//! the connection is, nothing panics and nothing the connection holds grows past its bounds.

use crate::pair::{offer, Raw};
use bytes::{Bytes, BytesMut};
use mitto_proto::connection::{Config, Connection};
use mitto_proto::{Flags, Frame, FrameType, MsgKind, Status, Subject};
use proptest::prelude::*;

/// A connection in one of the states a peer can reach it in.
fn conn(state: u8) -> Raw {
    let mut cfg = Config::server(offer("s", 1000));
    cfg.max_outbound = 4096;
    cfg.max_owed = 4096;
    cfg.max_events = 64;
    match state % 4 {
        0 => Raw::server(cfg),
        1 => Raw::accepted_server(cfg),
        2 => Raw::client(Config::client(offer("c", 1000))),
        _ => {
            let mut r = Raw::client(Config::client(offer("c", 1000)));
            r.out();
            let reply = Frame::hello(&offer("s", 1000), true).unwrap();
            r.send(&[reply]);
            r.events();
            r
        }
    }
}

/// Any frame, valid or not (only what `Frame` itself can hold).
fn frame() -> impl Strategy<Value = Frame> {
    (
        prop::sample::select(FrameType::ALL.to_vec()),
        any::<u8>(),
        any::<u64>(),
        prop_oneof![Just(0u32), any::<u32>()],
        any::<u16>(),
        any::<u8>(),
        prop::option::of(prop::sample::select(vec!["a", "a.b", "a.*", ">"])),
        prop::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(t, flags, id, aux, status, kind, subject, payload)| {
            let mut f = Frame::new(t).with_id(id).with_payload(Bytes::from(payload));
            f.flags = Flags::from_bits(flags);
            f.aux = aux;
            f.status = Status(status);
            f.kind = MsgKind(kind);
            if let Some(s) = subject {
                f.subject = Subject::new(s).unwrap();
            }
            f
        })
}

fn check_bounds(c: &Connection<u64>) {
    assert!(
        c.queued_bytes() <= 4096 * 2 + 64 * 1024,
        "{}",
        c.queued_bytes()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn bytes_never_panic_in_any_state(
        state in any::<u8>(),
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 1..20),
        magic_first in any::<bool>(),
    ) {
        let mut r = conn(state);
        for (i, chunk) in chunks.iter().enumerate() {
            let mut b = BytesMut::new();
            if magic_first && i == 0 {
                b.extend_from_slice(b"MITO\x01");
            }
            b.extend_from_slice(chunk);
            r.input.extend_from_slice(&b);
            let mut input = std::mem::take(&mut r.input);
            r.conn.handle_input(r.now, &mut input);
            r.input = input;
            check_bounds(&r.conn);
            r.events();
            r.out();
        }
        let mut input = std::mem::take(&mut r.input);
        r.conn.handle_eof(r.now, &mut input);
        r.events();
        r.out();
    }

    #[test]
    fn frames_never_panic_in_any_state(
        state in any::<u8>(),
        frames in prop::collection::vec(frame(), 1..30),
        as_bytes in any::<bool>(),
    ) {
        let mut r = conn(state);
        for f in frames {
            if as_bytes {
                if let Ok(b) = f.to_bytes() {
                    r.feed(&b);
                }
            } else {
                let _ = r.conn.handle_frame(r.now, f);
            }
            check_bounds(&r.conn);
            if r.events().len() > 64 {
                panic!("more events than the bound");
            }
            r.out();
        }
    }
}
