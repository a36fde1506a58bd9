//! `codec`: encoding and decoding one mitto request frame, in ns per frame, beside the floor of
//! copying the same payload into a preallocated buffer.
//!
//! - encode: `Frame::encode` into a cleared, preallocated `BytesMut` (32-byte header, subject,
//!   payload copied in; what a connection does for each outgoing frame).
//! - decode: `Decoder::decode` of frames from a receive buffer. The copy of the wire bytes into
//!   the buffer stands for the socket read and is outside the timing; decoding splits `Bytes`
//!   views off that buffer, and [`decode_is_zero_copy`] checks the payload really points into it.
//! - memcpy: `copy_from_slice` of the payload into a preallocated buffer.

use crate::config::Config;
use crate::measure::ns_per_op;
use crate::progress::Progress;
use crate::report::{Metric, ScenarioReport, MITTO};
use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use mitto_proto::{Decoder, Frame, Subject};
use std::hint::black_box;
use std::time::Instant;

const NAME: &str = "codec";
/// Payload sizes measured.
pub const SIZES: [usize; 3] = [16, 1024, 64 * 1024];
/// The floor's name in the rows.
pub const MEMCPY: &str = "memcpy";
/// Decode batches hold at most this many bytes of frames.
const DECODE_BATCH_BYTES: usize = 8 << 20;

fn frame(size: usize) -> anyhow::Result<Frame> {
    Ok(Frame::request(
        1,
        Subject::literal("bench.echo")?,
        Bytes::from(vec![0xA5u8; size]),
    ))
}

/// Operations per timed batch: enough to dwarf the clock reads, few enough to stop on time.
fn batch_for(size: usize) -> u64 {
    ((1usize << 20) / size.max(1)).clamp(8, 1024) as u64
}

/// ns per `Frame::encode` of a request with `size` payload bytes.
pub fn encode_ns(size: usize, config: &Config) -> anyhow::Result<f64> {
    let f = frame(size)?;
    let mut buf = BytesMut::with_capacity(f.encoded_len());
    ns_per_op(config.codec_ops, config.codec_time, batch_for(size), |n| {
        let t = Instant::now();
        for _ in 0..n {
            buf.clear();
            black_box(&f).encode(&mut buf)?;
            black_box(buf.as_ptr());
        }
        Ok(t.elapsed())
    })
}

fn decode_wire(size: usize) -> anyhow::Result<(Bytes, u64)> {
    let one = frame(size)?.to_bytes()?;
    let k = (DECODE_BATCH_BYTES / one.len()).clamp(1, 4096);
    let mut wire = BytesMut::with_capacity(k * one.len());
    for _ in 0..k {
        wire.extend_from_slice(&one);
    }
    Ok((wire.freeze(), k as u64))
}

/// ns per `Decoder::decode` of a request with `size` payload bytes.
pub fn decode_ns(size: usize, config: &Config) -> anyhow::Result<f64> {
    let (wire, per_batch) = decode_wire(size)?;
    let mut dec = Decoder::default();
    let wall = Instant::now();
    let mut ops = 0u64;
    let mut busy = std::time::Duration::ZERO;
    while ops < config.codec_ops {
        // The socket read: outside the timing.
        let mut src = BytesMut::from(&wire[..]);
        let t = Instant::now();
        let mut n = 0u64;
        while let Some(f) = dec.decode(&mut src)? {
            black_box(f.payload.len());
            n += 1;
        }
        busy += t.elapsed();
        anyhow::ensure!(n == per_batch, "decoded {n} of {per_batch} frames");
        ops += n;
        if wall.elapsed() >= config.codec_time {
            break;
        }
    }
    Ok(busy.as_nanos() as f64 / ops.max(1) as f64)
}

/// Whether decoding hands out the payload as a view into the receive buffer (no copy).
pub fn decode_is_zero_copy(size: usize) -> anyhow::Result<bool> {
    let wire = frame(size)?.to_bytes()?;
    let mut src = BytesMut::from(&wire[..]);
    let base = src.as_ptr() as usize;
    let end = base + src.len();
    let f = Decoder::default()
        .decode(&mut src)?
        .context("a whole frame did not decode")?;
    let p = f.payload.as_ptr() as usize;
    Ok(f.payload.len() == size && p >= base && p + size <= end)
}

/// ns per copy of `size` bytes into a preallocated buffer.
pub fn memcpy_ns(size: usize, config: &Config) -> anyhow::Result<f64> {
    let src = vec![0xA5u8; size];
    let mut dst = vec![0u8; size];
    ns_per_op(config.codec_ops, config.codec_time, batch_for(size), |n| {
        let t = Instant::now();
        for _ in 0..n {
            dst.copy_from_slice(black_box(&src));
            black_box(dst.as_mut_ptr());
        }
        Ok(t.elapsed())
    })
}

/// Runs the scenario: every size, every repetition, encode/decode/memcpy interleaved.
pub fn run(config: &Config, progress: &Progress) -> anyhow::Result<ScenarioReport> {
    let mut enc = vec![Vec::new(); SIZES.len()];
    let mut dec = vec![Vec::new(); SIZES.len()];
    let mut cpy = vec![Vec::new(); SIZES.len()];
    // Warm-up (caches, allocator, branch predictors), not recorded.
    progress.step("codec warm-up");
    let warm = Config {
        codec_ops: (config.codec_ops / 10).max(1),
        codec_time: config.codec_time / 10,
        ..config.clone()
    };
    for &size in &SIZES {
        encode_ns(size, &warm)?;
        decode_ns(size, &warm)?;
        memcpy_ns(size, &warm)?;
    }
    for rep in 0..config.reps {
        for (i, &size) in SIZES.iter().enumerate() {
            progress.step(format!("codec {size} B rep {}/{}", rep + 1, config.reps));
            enc[i].push(encode_ns(size, config)?);
            dec[i].push(decode_ns(size, config)?);
            cpy[i].push(memcpy_ns(size, config)?);
        }
    }
    let mut report = ScenarioReport {
        scenario: NAME.to_owned(),
        ..ScenarioReport::default()
    };
    for (i, &size) in SIZES.iter().enumerate() {
        for (case, mitto) in [("encode", &enc[i]), ("decode", &dec[i])] {
            report.rows.push(super::row_from(
                NAME,
                case,
                MITTO,
                Metric::NsPerOp,
                size,
                mitto,
            ));
            report.rows.push(super::row_from(
                NAME,
                case,
                MEMCPY,
                Metric::NsPerOp,
                size,
                &cpy[i],
            ));
        }
    }
    let zero_copy = SIZES
        .iter()
        .map(|&s| decode_is_zero_copy(s))
        .collect::<anyhow::Result<Vec<bool>>>()?;
    report.notes.push(if zero_copy.iter().all(|z| *z) {
        "decode is zero-copy: every decoded payload is a Bytes view into the receive buffer \
         (checked)."
            .to_owned()
    } else {
        format!("WARNING: decode copied the payload (zero-copy check per size: {zero_copy:?})")
    });
    report.notes.push(
        "encode copies the payload into the output buffer; decode only splits views off it."
            .to_owned(),
    );
    Ok(report)
}
