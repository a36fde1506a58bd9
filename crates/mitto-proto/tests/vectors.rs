//! Conformance: this implementation reproduces every vector in `spec/vectors/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use bytes::BytesMut;
use mitto_proto::{Decoder, Flags, Frame, FrameType, Limits, Subject, WellKnown};
use serde_json::Value;
use std::collections::HashSet;
use support::vectors::{body_json, decode_vector, error_json, frame_json, limits_from};

fn load(file: &str) -> Value {
    let path = format!("{}/../../spec/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn vectors(file: &str) -> Vec<Value> {
    load(file)["vectors"].as_array().unwrap().clone()
}

fn bytes_of(v: &Value) -> Vec<u8> {
    hex::decode(v["hex"].as_str().unwrap()).unwrap()
}

#[test]
fn every_valid_vector_decodes_to_its_fields_and_re_encodes_byte_for_byte() {
    let all = vectors("frames.json");
    assert!(all.len() >= 40);
    for v in &all {
        let name = v["name"].as_str().unwrap();
        let bytes = bytes_of(v);
        let f =
            decode_vector(&bytes, limits_from(v), false).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(frame_json(&f), v["frame"], "{name}: decoded fields differ");
        assert_eq!(
            body_json(&f).unwrap_or(Value::Null),
            v["body"],
            "{name}: body differs"
        );
        if let Some(d) = v.get("decompressed_hex") {
            let got = f.decompressed_payload(limits_from(v).max_payload).unwrap();
            assert_eq!(
                hex::encode(&got),
                d.as_str().unwrap(),
                "{name}: decompressed payload"
            );
        }
        assert_eq!(
            hex::encode(f.to_bytes().unwrap()),
            v["hex"].as_str().unwrap(),
            "{name}: re-encode"
        );
    }
}

#[test]
fn valid_vectors_cover_every_frame_type_flag_and_well_known_header() {
    let all = vectors("frames.json");
    let types: HashSet<String> = all
        .iter()
        .map(|v| v["frame"]["type"].as_str().unwrap().to_owned())
        .collect();
    for t in FrameType::ALL {
        assert!(types.contains(t.name()), "no vector for {}", t.name());
    }
    let flags: HashSet<String> = all
        .iter()
        .flat_map(|v| v["frame"]["flags"].as_array().unwrap().clone())
        .map(|f| f.as_str().unwrap().to_owned())
        .collect();
    for f in [
        "ACK_REQUIRED",
        "COMPRESSED",
        "URGENT",
        "START",
        "END",
        "REPLY",
    ] {
        assert!(flags.contains(f), "no vector with flag {f}");
        assert!(Flags::from_name(f).is_some());
    }
    let keys: HashSet<String> = all
        .iter()
        .flat_map(|v| v["frame"]["headers"].as_array().unwrap().clone())
        .map(|h| h["key"].as_str().unwrap().to_owned())
        .collect();
    for k in WellKnown::ALL {
        assert!(
            keys.contains(k.name()),
            "no vector with header {}",
            k.name()
        );
    }
}

#[test]
fn every_valid_vector_survives_every_split_point() {
    for v in vectors("frames.json") {
        let name = v["name"].as_str().unwrap();
        let bytes = bytes_of(&v);
        let whole = decode_vector(&bytes, limits_from(&v), false).unwrap();
        for cut in 0..=bytes.len() {
            let mut dec = Decoder::new(limits_from(&v));
            let mut buf = BytesMut::from(&bytes[..cut]);
            let first = dec.decode(&mut buf).unwrap();
            let f = match first {
                Some(f) => f,
                None => {
                    buf.extend_from_slice(&bytes[cut..]);
                    dec.decode(&mut buf)
                        .unwrap()
                        .unwrap_or_else(|| panic!("{name} cut {cut}"))
                }
            };
            assert_eq!(f, whole, "{name} split at {cut}");
        }
    }
}

#[test]
fn the_whole_stream_byte_by_byte_gives_the_same_frames() {
    let all: Vec<Value> = vectors("frames.json")
        .into_iter()
        .filter(|v| v.get("limits").is_none())
        .collect();
    let stream: Vec<u8> = all.iter().flat_map(bytes_of).collect();
    let expected: Vec<Frame> = all
        .iter()
        .map(|v| decode_vector(&bytes_of(v), Limits::default(), false).unwrap())
        .collect();
    let mut dec = Decoder::default();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for b in &stream {
        buf.extend_from_slice(&[*b]);
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            got.push(f);
        }
    }
    assert_eq!(got, expected);
    assert!(dec.decode_eof(&mut buf).unwrap().is_none());
}

#[test]
fn every_invalid_vector_gives_its_error_and_non_fatal_ones_skip_to_the_next_frame() {
    let all = vectors("invalid.json");
    assert!(all.len() >= 15);
    let ping = Frame::ping(77).to_bytes().unwrap();
    for v in &all {
        let name = v["name"].as_str().unwrap();
        let bytes = bytes_of(v);
        let eof = v.get("eof").and_then(Value::as_bool).unwrap_or(false);
        let e = decode_vector(&bytes, limits_from(v), eof).expect_err(name);
        assert_eq!(error_json(&e), v["error"], "{name}");

        // A non-fatal error consumes exactly the bad frame; what follows decodes normally.
        let complete = bytes.len() >= 32 && {
            let h: [u8; 32] = bytes[..32].try_into().unwrap();
            mitto_proto::Header::from_bytes(&h)
                .map(|h| h.frame_len() == bytes.len() as u64)
                .unwrap_or(false)
        };
        if !e.is_fatal() && complete {
            let mut dec = Decoder::new(limits_from(v));
            let mut buf = BytesMut::from(&bytes[..]);
            buf.extend_from_slice(&ping);
            assert!(dec.decode(&mut buf).is_err(), "{name}");
            let next = dec
                .decode(&mut buf)
                .unwrap()
                .unwrap_or_else(|| panic!("{name}: no next frame"));
            assert_eq!((next.frame_type, next.id), (FrameType::Ping, 77), "{name}");
        }
        if e.is_fatal() {
            let mut dec = Decoder::new(limits_from(v));
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = if eof {
                dec.decode_eof(&mut buf)
            } else {
                dec.decode(&mut buf)
            };
            buf.extend_from_slice(&ping);
            assert!(
                dec.decode(&mut buf).is_err(),
                "{name}: a failed decoder must stay failed"
            );
        }
    }
}

#[test]
fn subject_vectors() {
    let s = load("subjects.json");
    for v in s["valid"].as_array().unwrap() {
        assert!(Subject::new(v.as_str().unwrap()).is_ok(), "{v}");
    }
    for v in s["invalid"].as_array().unwrap() {
        assert!(Subject::new(v.as_str().unwrap()).is_err(), "{v}");
    }
    for v in s["literal_only_invalid"].as_array().unwrap() {
        assert!(Subject::new(v.as_str().unwrap()).is_ok(), "{v}");
        assert!(Subject::literal(v.as_str().unwrap()).is_err(), "{v}");
    }
    for m in s["matches"].as_array().unwrap() {
        let (f, subj) = (
            m["filter"].as_str().unwrap(),
            m["subject"].as_str().unwrap(),
        );
        assert_eq!(
            mitto_proto::subject::matches(f, subj),
            m["matches"].as_bool().unwrap(),
            "{m}"
        );
    }
}
