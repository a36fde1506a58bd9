//! Times `Header::to_bytes` and `Header::from_bytes` in a tight loop (a cross-check of the
//! criterion figures that `perf stat` can count cycles and instructions for).
//!
//! ```text
//! cargo run --release -p mitto-proto --example header_loop -- [iterations]
//! ```

use mitto_proto::{Flags, Header, MsgKind};
use std::hint::black_box;
use std::time::Instant;

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000_000);
    let h = Header {
        version: 1,
        flags: Flags::empty(),
        frame_type: 4,
        kind: MsgKind(0),
        id: 42,
        aux: 0,
        status: 0,
        subject_len: 8,
        headers_len: 0,
        payload_len: 32,
    };
    let t0 = Instant::now();
    for i in 0..n {
        let mut x = h;
        x.id = i;
        black_box(black_box(&x).to_bytes());
    }
    let enc = t0.elapsed().as_nanos() as f64 / n as f64;
    let raw = h.to_bytes();
    let t0 = Instant::now();
    for _ in 0..n {
        black_box(Header::from_bytes(black_box(&raw)).ok());
    }
    let dec = t0.elapsed().as_nanos() as f64 / n as f64;
    println!("header encode {enc:.2} ns, decode {dec:.2} ns ({n} iterations each)");
}
