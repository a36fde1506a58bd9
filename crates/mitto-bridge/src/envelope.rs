//! A message between mitto and a backend: name, payload and the headers that cross.
//!
//! Crossing: `content-type` and `correlation-id` go to the backend's own fields where it has
//! them (AMQP properties, MQTT 5 properties) and to headers otherwise (NATS); `traceparent`,
//! `tracestate` and free-form headers go as headers. `reply-to`, `deadline`, `ttl` and `auth`
//! never cross: they mean something only to this broker (and `auth` is a secret).

use bytes::Bytes;
use mitto::{Headers, WellKnown};

/// The header that names the bridge a message last crossed, so that a bridge never sends a
/// message back the way it came.
pub const ORIGIN_HEADER: &str = "mitto-origin";

/// A message on its way across.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Envelope {
    /// The subject (mitto side) or backend name.
    pub(crate) name: String,
    pub(crate) payload: Bytes,
    pub(crate) content_type: Option<String>,
    pub(crate) correlation_id: Option<Vec<u8>>,
    /// Other headers, the origin header included.
    pub(crate) headers: Vec<(String, Vec<u8>)>,
}

impl Envelope {
    /// The message's origin header, if any.
    pub(crate) fn origin(&self) -> Option<&[u8]> {
        self.origin_of(ORIGIN_HEADER)
    }

    /// The value of header `name`, if any.
    pub(crate) fn origin_of(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Whether it carries any header (content type and correlation id included).
    pub(crate) fn has_headers(&self) -> bool {
        self.content_type.is_some() || self.correlation_id.is_some() || !self.headers.is_empty()
    }

    /// Removes the origin header.
    pub(crate) fn clear_origin(&mut self) {
        self.headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case(ORIGIN_HEADER));
    }

    /// Replaces the origin header with `origin`.
    pub(crate) fn set_origin(&mut self, origin: &str) {
        self.clear_origin();
        self.headers
            .push((ORIGIN_HEADER.to_owned(), origin.as_bytes().to_vec()));
    }

    /// Takes what crosses from a mitto message's headers.
    pub(crate) fn from_mitto(name: String, payload: Bytes, h: &Headers) -> Envelope {
        let mut env = Envelope {
            name,
            payload,
            ..Envelope::default()
        };
        for (k, v) in h.iter() {
            match k {
                mitto::proto::HeaderKey::Known(WellKnown::ContentType) => {
                    env.content_type = std::str::from_utf8(v).ok().map(str::to_owned);
                }
                mitto::proto::HeaderKey::Known(WellKnown::CorrelationId) => {
                    env.correlation_id = Some(v.to_vec());
                }
                mitto::proto::HeaderKey::Known(
                    k @ (WellKnown::Traceparent | WellKnown::Tracestate),
                ) => {
                    env.headers.push((k.name().to_owned(), v.to_vec()));
                }
                mitto::proto::HeaderKey::Custom(k) => env.headers.push((k.to_owned(), v.to_vec())),
                _ => {}
            }
        }
        env
    }

    /// The mitto headers for this message: what may cross, and `origin` as its origin. Header
    /// names mitto does not accept are left out.
    pub(crate) fn mitto_headers(&self, origin: &str) -> Headers {
        self.build_headers(Some(origin))
    }

    /// As [`Envelope::mitto_headers`], with no origin (a reply to a caller).
    pub(crate) fn mitto_headers_without_origin(&self) -> Headers {
        self.build_headers(None)
    }

    fn build_headers(&self, origin: Option<&str>) -> Headers {
        let mut b = Headers::builder();
        if let Some(ct) = &self.content_type {
            b = b.clone().insert(WellKnown::ContentType, ct).unwrap_or(b);
        }
        if let Some(c) = &self.correlation_id {
            b = b.clone().insert(WellKnown::CorrelationId, c).unwrap_or(b);
        }
        for (k, v) in &self.headers {
            if k.eq_ignore_ascii_case(ORIGIN_HEADER) {
                continue;
            }
            match WellKnown::from_name(k) {
                Some(WellKnown::Traceparent | WellKnown::Tracestate) | None => {}
                // content-type and correlation-id come from the fields; the rest never cross.
                Some(_) => continue,
            }
            b = b.clone().insert_custom(k, v).unwrap_or(b);
        }
        if let Some(o) = origin {
            b = b.clone().insert_custom(ORIGIN_HEADER, o).unwrap_or(b);
        }
        b.build()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn what_crosses_and_what_does_not() {
        let h = Headers::builder()
            .insert(WellKnown::ContentType, "application/json")
            .unwrap()
            .insert(WellKnown::CorrelationId, "c-1")
            .unwrap()
            .insert(WellKnown::ReplyTo, "_INBOX.x")
            .unwrap()
            .insert(WellKnown::Auth, "secret")
            .unwrap()
            .insert(WellKnown::Traceparent, "00-abc-def-01")
            .unwrap()
            .deadline(Duration::from_secs(1))
            .insert_custom("tenant", "acme")
            .unwrap()
            .build();
        let mut env = Envelope::from_mitto("a.b".into(), Bytes::from_static(b"x"), &h);
        assert_eq!(env.content_type.as_deref(), Some("application/json"));
        assert_eq!(env.correlation_id.as_deref(), Some(&b"c-1"[..]));
        let names: Vec<&str> = env.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["traceparent", "tenant"]);
        assert_eq!(env.origin(), None);
        env.set_origin("one");
        env.set_origin("two");
        assert_eq!(env.origin(), Some(&b"two"[..]));

        // Back into mitto: the fields as well-known keys, our origin in place of theirs, and
        // keys a backend sent that mitto keeps for itself left out.
        env.headers.push(("reply-to".into(), b"evil".to_vec()));
        env.headers.push(("bad key".into(), b"v".to_vec()));
        let back = env.mitto_headers("me");
        assert_eq!(back.content_type(), Some("application/json"));
        assert_eq!(back.get(WellKnown::CorrelationId), Some(&b"c-1"[..]));
        assert_eq!(
            back.get(WellKnown::Traceparent),
            Some(&b"00-abc-def-01"[..])
        );
        assert_eq!(back.get_custom("tenant"), Some(&b"acme"[..]));
        assert_eq!(back.get_custom(ORIGIN_HEADER), Some(&b"me"[..]));
        assert_eq!(back.reply_to(), None);
        assert_eq!(back.get(WellKnown::Auth), None);
        assert_eq!(back.deadline(), None);
    }
}
