//! The JSON form of decoded frames and errors used by `spec/vectors/`, shared by the conformance
//! test and the vector generator so that both describe a frame the same way.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use mitto_proto::body::{decode_credit, decode_opt_u32, decode_reason};
use mitto_proto::{
    DecodeError, Decoder, Flags, Frame, FrameType, HeaderKey, HealthReport, Hello, Limits,
    StatsReport, SubscribeOptions,
};
use serde_json::{json, Map, Value};

/// The JSON description of a frame's fields.
pub fn frame_json(f: &Frame) -> Value {
    let headers: Vec<Value> = f
        .headers
        .iter()
        .map(|(k, v)| {
            let key = match k {
                HeaderKey::Known(w) => w.name().to_string(),
                HeaderKey::Reserved(id) => format!("#{id}"),
                HeaderKey::Custom(s) => s.to_string(),
            };
            json!({ "key": key, "value_hex": hex::encode(v) })
        })
        .collect();
    json!({
        "type": f.frame_type.name(),
        "flags": f.flags.names(),
        "kind": f.kind.0,
        "id": f.id.to_string(),
        "aux": f.aux,
        "status": f.status.0,
        "subject": f.subject.as_str(),
        "headers": headers,
        "payload_hex": hex::encode(&f.payload),
    })
}

/// The JSON description of a control frame's typed body, if it has one.
pub fn body_json(f: &Frame) -> Option<Value> {
    let p = &f.payload[..];
    let reply = f.flags.contains(Flags::REPLY);
    Some(match f.frame_type {
        FrameType::Hello => {
            let h = Hello::decode(p).ok()?;
            json!({
                "major": h.version.major, "minor": h.version.minor, "flags": h.flags,
                "features": h.features.bits(), "feature_names": h.features.names(),
                "max_payload": h.max_payload, "max_headers": h.max_headers,
                "keepalive_ms": h.keepalive_ms, "name": h.name, "client_id": h.client_id,
                "session": h.session, "user": h.user, "auth_hex": hex::encode(&h.auth),
            })
        }
        FrameType::Subscribe | FrameType::Register => {
            let o = SubscribeOptions::decode(p, f.frame_type.name()).ok()?;
            json!({
                "delivery": format!("{:?}", o.delivery), "policy": format!("{:?}", o.policy),
                "max_pending": o.max_pending, "ack_wait_ms": o.ack_wait_ms,
                "max_deliver": o.max_deliver, "credit": o.credit, "queue": o.queue,
                "durable": o.durable,
            })
        }
        FrameType::Unsubscribe => json!({ "after": decode_opt_u32(p, "UNSUBSCRIBE").ok()? }),
        FrameType::Nack => json!({ "delay_ms": decode_opt_u32(p, "NACK").ok()? }),
        FrameType::Credit => json!({ "credit": decode_credit(p).ok()? }),
        FrameType::Error | FrameType::Close => json!({ "reason": decode_reason(p, "x").ok()? }),
        FrameType::Health if reply => serde_json::to_value(HealthReport::decode(p).ok()?).ok()?,
        FrameType::Stats if reply => serde_json::to_value(StatsReport::decode(p).ok()?).ok()?,
        _ => return None,
    })
}

/// The JSON description of a decode error.
pub fn error_json(e: &DecodeError) -> Value {
    json!({
        "code": e.code(),
        "status": e.status().0,
        "status_name": e.status().name(),
        "fatal": e.is_fatal(),
        "id": e.id().to_string(),
    })
}

/// Limits from a vector's optional `limits` object (missing fields take the defaults).
pub fn limits_from(v: &Value) -> Limits {
    let mut l = Limits::default();
    if let Some(o) = v.get("limits").and_then(Value::as_object) {
        if let Some(x) = o.get("max_payload").and_then(Value::as_u64) {
            l.max_payload = x as u32;
        }
        if let Some(x) = o.get("max_headers").and_then(Value::as_u64) {
            l.max_headers = x as u32;
        }
        if let Some(x) = o.get("max_subject").and_then(Value::as_u64) {
            l.max_subject = x as u16;
        }
    }
    l
}

/// Decodes a vector's bytes: one frame, or the first error. `eof` marks the end of the stream.
pub fn decode_vector(bytes: &[u8], limits: Limits, eof: bool) -> Result<Frame, DecodeError> {
    let mut dec = Decoder::new(limits);
    let mut buf = bytes::BytesMut::from(bytes);
    let r = if eof {
        dec.decode_eof(&mut buf)
    } else {
        dec.decode(&mut buf)
    };
    match r {
        Ok(Some(f)) => Ok(f),
        Ok(None) => panic!("vector bytes hold no complete frame and no error"),
        Err(e) => Err(e),
    }
}

/// Builds the full JSON vector for valid bytes.
pub fn valid_vector(name: &str, doc: &str, bytes: &[u8], limits: Option<Value>) -> Value {
    let lim = limits
        .clone()
        .map(|l| json!({ "limits": l }))
        .unwrap_or(Value::Null);
    let f = decode_vector(bytes, limits_from(&lim), false)
        .unwrap_or_else(|e| panic!("valid vector {name} does not decode: {e}"));
    let mut m = Map::new();
    m.insert("name".into(), name.into());
    m.insert("doc".into(), doc.into());
    m.insert("hex".into(), hex::encode(bytes).into());
    if let Some(l) = limits {
        m.insert("limits".into(), l);
    }
    m.insert("frame".into(), frame_json(&f));
    if let Some(b) = body_json(&f) {
        m.insert("body".into(), b);
    }
    if f.flags.contains(Flags::COMPRESSED) {
        let d = f
            .decompressed_payload(limits_from(&lim).max_payload)
            .expect("decompresses");
        m.insert("decompressed_hex".into(), hex::encode(&d).into());
    }
    Value::Object(m)
}

/// Builds the full JSON vector for invalid bytes.
pub fn invalid_vector(
    name: &str,
    doc: &str,
    bytes: &[u8],
    limits: Option<Value>,
    eof: bool,
) -> Value {
    let lim = limits
        .clone()
        .map(|l| json!({ "limits": l }))
        .unwrap_or(Value::Null);
    let e = match decode_vector(bytes, limits_from(&lim), eof) {
        Ok(f) => panic!("invalid vector {name} decoded as {f:?}"),
        Err(e) => e,
    };
    let mut m = Map::new();
    m.insert("name".into(), name.into());
    m.insert("doc".into(), doc.into());
    m.insert("hex".into(), hex::encode(bytes).into());
    if let Some(l) = limits {
        m.insert("limits".into(), l);
    }
    if eof {
        m.insert("eof".into(), true.into());
    }
    m.insert("error".into(), error_json(&e));
    Value::Object(m)
}
