//! Unary calls through two `Connection`s back to back in a loop (a cross-check of the
//! criterion figures that `perf stat` or callgrind can count instructions for).
//!
//! ```text
//! cargo run --release -p mitto-proto --example connection_loop -- [calls] [pipelined]
//! ```

use bytes::{Bytes, BytesMut};
use mitto_proto::connection::{CallOptions, Config, Connection, Event, Transmit};
use mitto_proto::{Frame, Status, Subject};
use std::time::{Duration, Instant};

/// Moves what `from` queued into `to`, through bytes.
fn pass<A, B>(now: Instant, from: &mut Connection<A>, to: &mut Connection<B>, t: &mut Transmit) {
    let mut wire = BytesMut::new();
    from.poll_transmit(now, t);
    t.drain_into(&mut wire);
    to.handle_input(now, &mut wire);
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(|a| a.parse().ok());
    let n: u64 = args.next().flatten().unwrap_or(1_000_000);
    let window: u64 = args.next().flatten().unwrap_or(1).max(1);
    let now = Instant::now();
    let mut client: Connection<u64> =
        Connection::client(Config::client(Config::offer("c", None)), now);
    let mut server: Connection = Connection::server(Config::server(Config::offer("s", None)), now);
    let mut t = Transmit::new();
    pass(now, &mut client, &mut server, &mut t);
    while let Some(e) = server.poll_event() {
        if let Event::Hello(_) = e {
            server.accept(now, "c", "", false)?;
        }
    }
    pass(now, &mut server, &mut client, &mut t);
    while client.poll_event().is_some() {}
    let subject = Subject::from_static("bench.echo")?;
    let payload = Bytes::from_static(&[7u8; 32]);
    let opts = CallOptions::new().timeout(Duration::from_secs(5));
    let t0 = Instant::now();
    let mut answered = 0u64;
    let mut i = 0;
    while i < n {
        for _ in 0..window {
            let req = Frame::request(0, subject.clone(), payload.clone());
            client.call(now, req, opts, i)?;
            i += 1;
        }
        pass(now, &mut client, &mut server, &mut t);
        while let Some(e) = server.poll_event() {
            if let Event::Request { id, frame, .. } = e {
                server.respond(id, Frame::response(0, Status::OK, frame.payload))?;
            }
        }
        pass(now, &mut server, &mut client, &mut t);
        while let Some(e) = client.poll_event() {
            answered += u64::from(matches!(e, Event::Answer { answer: Ok(_), .. }));
        }
    }
    let dt = t0.elapsed();
    println!(
        "{answered} calls in {dt:?}: {:.0} ns per call ({window} at a time)",
        dt.as_nanos() as f64 / n as f64
    );
    Ok(())
}
