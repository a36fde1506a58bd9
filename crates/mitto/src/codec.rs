//! Content codecs, chosen by the `content-type` header: raw bytes, JSON, MessagePack, Protobuf.

use crate::error::{Error, Result};
use bytes::Bytes;
use mitto_proto::Status;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A serde codec for typed calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Codec {
    /// `application/json` (serde_json).
    #[default]
    Json,
    /// `application/msgpack` (rmp-serde, maps with field names).
    MsgPack,
}

/// The content type of raw bytes.
pub const OCTET_STREAM: &str = "application/octet-stream";
/// The content type of Protobuf messages (prost).
pub const PROTOBUF: &str = "application/x-protobuf";

impl Codec {
    /// The `content-type` value.
    pub const fn content_type(self) -> &'static str {
        match self {
            Codec::Json => "application/json",
            Codec::MsgPack => "application/msgpack",
        }
    }

    /// The codec for a `content-type` value (parameters after `;` ignored); `None` when absent
    /// means the default (JSON).
    pub fn from_content_type(ct: Option<&str>) -> Result<Codec> {
        let Some(ct) = ct else { return Ok(Codec::Json) };
        match ct.split(';').next().unwrap_or("").trim() {
            "application/json" => Ok(Codec::Json),
            "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => {
                Ok(Codec::MsgPack)
            }
            other => Err(Error::new(
                Status::BAD_REQUEST,
                format!("unsupported content type {other:?}"),
            )),
        }
    }

    /// Encodes a value.
    pub fn encode<T: Serialize + ?Sized>(self, v: &T) -> Result<Bytes> {
        match self {
            Codec::Json => serde_json::to_vec(v)
                .map(Bytes::from)
                .map_err(|e| encode_err(self, e)),
            Codec::MsgPack => rmp_serde::to_vec_named(v)
                .map(Bytes::from)
                .map_err(|e| encode_err(self, e)),
        }
    }

    /// Decodes a value.
    pub fn decode<T: DeserializeOwned>(self, b: &[u8]) -> Result<T> {
        match self {
            Codec::Json => serde_json::from_slice(b).map_err(|e| decode_err(self, e)),
            Codec::MsgPack => rmp_serde::from_slice(b).map_err(|e| decode_err(self, e)),
        }
    }
}

fn encode_err(c: Codec, e: impl std::fmt::Display) -> Error {
    Error::new(
        Status::INTERNAL,
        format!("cannot encode {}: {e}", c.content_type()),
    )
}

fn decode_err(c: Codec, e: impl std::fmt::Display) -> Error {
    Error::new(
        Status::BAD_REQUEST,
        format!("cannot decode {}: {e}", c.content_type()),
    )
}

/// Encodes a Protobuf message.
pub fn encode_proto<T: prost::Message>(m: &T) -> Bytes {
    Bytes::from(m.encode_to_vec())
}

/// Decodes a Protobuf message.
pub fn decode_proto<T: prost::Message + Default>(b: &[u8]) -> Result<T> {
    T::decode(b).map_err(|e| {
        Error::new(
            Status::BAD_REQUEST,
            format!("cannot decode {PROTOBUF}: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct P {
        a: i32,
        b: String,
    }

    #[test]
    fn codecs_round_trip_and_report_errors() {
        let p = P {
            a: 1,
            b: "x".into(),
        };
        for c in [Codec::Json, Codec::MsgPack] {
            let b = c.encode(&p).unwrap();
            assert_eq!(c.decode::<P>(&b).unwrap(), p);
            let e = c.decode::<P>(b"\xff\x00garbage").unwrap_err();
            assert_eq!(e.status(), Status::BAD_REQUEST);
            assert_eq!(Codec::from_content_type(Some(c.content_type())).unwrap(), c);
        }
        assert_eq!(
            Codec::from_content_type(Some("application/json; charset=utf-8")).unwrap(),
            Codec::Json
        );
        assert!(Codec::from_content_type(Some("text/xml")).is_err());
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Msg {
        #[prost(int32, tag = "1")]
        x: i32,
    }

    #[test]
    fn protobuf() {
        let b = encode_proto(&Msg { x: 5 });
        assert_eq!(decode_proto::<Msg>(&b).unwrap(), Msg { x: 5 });
        assert!(decode_proto::<Msg>(b"\xff\xff\xff").is_err());
    }
}
