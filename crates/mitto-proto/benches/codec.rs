//! Codec micro-benchmarks: header encode/decode, whole frames at several payload sizes, batch
//! encoding, and the memcpy floor for the same sizes.
#![allow(missing_docs)]

use bytes::{Bytes, BytesMut};
use criterion::{
    black_box, criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput,
};
use mitto_proto::{Decoder, Flags, Frame, FrameType, Header, Headers, MsgKind, Subject, WellKnown};

fn header() -> Header {
    Header {
        version: 1,
        flags: Flags::URGENT,
        frame_type: FrameType::Request as u8,
        kind: MsgKind::COMMAND,
        id: 0x1122_3344_5566_7788,
        aux: 42,
        status: 0,
        subject_len: 8,
        headers_len: 0,
        payload_len: 32,
    }
}

fn bench_header(c: &mut Criterion) {
    let h = header();
    c.bench_function("header/encode", |b| {
        b.iter(|| black_box(black_box(&h).to_bytes()))
    });
    let raw = h.to_bytes();
    c.bench_function("header/decode", |b| {
        b.iter(|| black_box(Header::from_bytes(black_box(&raw)).ok()))
    });
}

const SIZES: [(usize, &str); 4] = [
    (16, "16B"),
    (1024, "1KiB"),
    (64 * 1024, "64KiB"),
    (1 << 20, "1MiB"),
];

fn frame(size: usize) -> Frame {
    let headers = Headers::builder()
        .insert(WellKnown::ContentType, "application/octet-stream")
        .map(|h| h.build())
        .unwrap_or_default();
    Frame::publish(
        Subject::from_static("bench.frames").unwrap_or_default(),
        Bytes::from(vec![0xA5u8; size]),
    )
    .with_headers(headers)
}

fn bench_frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame/encode");
    for (size, name) in SIZES {
        let f = frame(size);
        let mut buf = BytesMut::with_capacity(f.encoded_len() * 2);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &f, |b, f| {
            b.iter(|| {
                buf.clear();
                f.encode(&mut buf).ok();
                black_box(buf.len())
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("frame/encode_head");
    for (size, name) in SIZES {
        let f = frame(size);
        let mut buf = BytesMut::with_capacity(256);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &f, |b, f| {
            b.iter(|| {
                buf.clear();
                f.encode_head(&mut buf).ok();
                black_box((buf.len(), f.payload.clone()))
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("frame/decode");
    for (size, name) in SIZES {
        let wire = frame(size).to_bytes().unwrap_or_default();
        let mut dec = Decoder::default();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &wire, |b, wire| {
            // The copy into the receive buffer is setup (the socket read), outside the timing;
            // decoding splits a view off that buffer and copies nothing.
            b.iter_batched_ref(
                || BytesMut::from(&wire[..]),
                |src| black_box(dec.decode(src).ok().flatten().map(|f| f.payload.len())),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();

    let mut g = c.benchmark_group("floor/memcpy");
    for (size, name) in SIZES {
        let src = vec![0xA5u8; size];
        let mut dst = vec![0u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(dst.as_ptr());
            })
        });
    }
    g.finish();
}

fn bench_batch(c: &mut Criterion) {
    let frames: Vec<Frame> = (0..1000u64)
        .map(|i| {
            Frame::request(
                i,
                Subject::from_static("calc.add").unwrap_or_default(),
                Bytes::from_static(&[1u8; 16]),
            )
        })
        .collect();
    let mut buf = BytesMut::with_capacity(frames.iter().map(Frame::encoded_len).sum());
    let mut g = c.benchmark_group("batch");
    g.throughput(Throughput::Elements(frames.len() as u64));
    g.bench_function("encode_1000x16B", |b| {
        b.iter(|| {
            buf.clear();
            for f in &frames {
                f.encode(&mut buf).ok();
            }
            black_box(buf.len())
        })
    });
    let wire = {
        let mut w = BytesMut::new();
        for f in &frames {
            f.encode(&mut w).ok();
        }
        w.freeze()
    };
    g.bench_function("decode_1000x16B", |b| {
        let mut dec = Decoder::default();
        b.iter_batched_ref(
            || BytesMut::from(&wire[..]),
            |src| {
                let mut n = 0;
                while let Ok(Some(_)) = dec.decode(src) {
                    n += 1;
                }
                black_box(n)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench_header, bench_frames, bench_batch);
criterion_main!(benches);
