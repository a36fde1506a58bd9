//! The key/value headers block.
//!
//! Entries follow each other with no count and no padding; the block's length is in the frame
//! header. One entry is:
//!
//! ```text
//! key id   u8          1..=255: a compact key (see WellKnown); 0: a free-form key follows
//! [key len u8, key]    only when key id is 0: 1..=255 bytes of UTF-8
//! value len u16 BE
//! value    value len bytes
//! ```
//!
//! Keys may repeat; [`Headers::get`] returns the first. Compact ids 9..=255 are reserved for later
//! minor versions: a receiver keeps them and passes them on. A free-form key may not spell a
//! well-known key's name (in any case): the encoder always uses the compact id.

use crate::error::{DecodeErrorKind, EncodeError};
use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;
use std::time::Duration;

macro_rules! well_known {
    ($( $(#[$doc:meta])* $name:ident = $value:expr, $text:expr; )*) => {
        /// The well-known header keys and their compact ids.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        #[non_exhaustive]
        #[repr(u8)]
        pub enum WellKnown {
            $( $(#[$doc])* $name = $value, )*
        }

        impl WellKnown {
            /// Parses a compact id.
            pub const fn from_id(id: u8) -> Option<WellKnown> {
                match id {
                    $( $value => Some(WellKnown::$name), )*
                    _ => None,
                }
            }

            /// The key's name.
            pub const fn name(self) -> &'static str {
                match self {
                    $( WellKnown::$name => $text, )*
                }
            }

            /// Looks a key up by name, ignoring ASCII case.
            pub fn from_name(name: &str) -> Option<WellKnown> {
                $( if name.eq_ignore_ascii_case($text) { return Some(WellKnown::$name); } )*
                None
            }

            /// Every well-known key.
            pub const ALL: &'static [WellKnown] = &[$( WellKnown::$name, )*];
        }
    };
}

well_known! {
    /// MIME type of the payload (`application/json`, `application/msgpack`, ...).
    ContentType = 1, "content-type";
    /// Application correlation id.
    CorrelationId = 2, "correlation-id";
    /// Subject the receiver sends its answer to.
    ReplyTo = 3, "reply-to";
    /// Time left for the operation, in microseconds, as a u64 BE (8 bytes). Relative, so that
    /// clocks need not agree; every hop subtracts the time the frame spent with it.
    Deadline = 4, "deadline";
    /// W3C Trace Context `traceparent`.
    Traceparent = 5, "traceparent";
    /// W3C Trace Context `tracestate`.
    Tracestate = 6, "tracestate";
    /// Time to live of a message in milliseconds, as a u64 BE (8 bytes).
    Ttl = 7, "ttl";
    /// Authorization token for this one frame.
    Auth = 8, "auth";
}

impl WellKnown {
    /// The exact value length this key requires, if fixed.
    pub const fn fixed_len(self) -> Option<usize> {
        match self {
            WellKnown::Deadline | WellKnown::Ttl => Some(8),
            _ => None,
        }
    }
}

/// A header key as it appears in a block.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HeaderKey<'a> {
    /// A well-known key (compact id 1..=8).
    Known(WellKnown),
    /// A compact id this version does not define (9..=255), kept as it is.
    Reserved(u8),
    /// A free-form key.
    Custom(&'a str),
}

impl HeaderKey<'_> {
    /// The key's name (`"#17"` for a reserved id).
    pub fn name(&self) -> std::borrow::Cow<'_, str> {
        match self {
            HeaderKey::Known(k) => k.name().into(),
            HeaderKey::Reserved(id) => format!("#{id}").into(),
            HeaderKey::Custom(s) => (*s).into(),
        }
    }
}

/// The value of a block that holds exactly one entry, a `deadline` (what a call with no headers
/// of its own carries).
#[inline]
fn lone_deadline(b: &[u8]) -> Option<u64> {
    match b {
        [id, 0, 8, v @ ..] if *id == WellKnown::Deadline as u8 => {
            Some(u64::from_be_bytes(v.try_into().ok()?))
        }
        _ => None,
    }
}

/// A validated headers block, held as shared bytes.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Headers(Bytes);

fn check_custom_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("empty key");
    }
    if key.len() > 255 {
        return Err("key longer than 255 bytes");
    }
    if key.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("whitespace or control character in key");
    }
    if WellKnown::from_name(key).is_some() {
        return Err("well-known key sent in free form");
    }
    Ok(())
}

impl Headers {
    /// An empty block.
    pub const fn new() -> Headers {
        Headers(Bytes::new())
    }

    /// Starts building a block.
    pub fn builder() -> HeadersBuilder {
        HeadersBuilder::default()
    }

    /// Validates a received block.
    pub fn from_wire(b: Bytes) -> Result<Headers, DecodeErrorKind> {
        if lone_deadline(&b).is_some() {
            // The block nearly every call carries: nothing else to check.
            return Ok(Headers(b));
        }
        let mut it = RawIter { buf: &b, pos: 0 };
        while let Some(entry) = it.next_entry() {
            entry.map_err(DecodeErrorKind::MalformedHeaders)?;
        }
        Ok(Headers(b))
    }

    /// The encoded block.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entries, in order.
    pub fn iter(&self) -> impl Iterator<Item = (HeaderKey<'_>, &[u8])> {
        let mut it = RawIter {
            buf: &self.0,
            pos: 0,
        };
        std::iter::from_fn(move || it.next_entry().and_then(Result::ok))
    }

    /// The number of entries.
    pub fn count(&self) -> usize {
        self.iter().count()
    }

    /// The first value of a well-known key.
    pub fn get(&self, key: WellKnown) -> Option<&[u8]> {
        self.iter()
            .find(|(k, _)| *k == HeaderKey::Known(key))
            .map(|(_, v)| v)
    }

    /// The first value of a well-known key, as UTF-8 text.
    pub fn get_str(&self, key: WellKnown) -> Option<&str> {
        self.get(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first value of a free-form key (exact match), or of a well-known key by name.
    pub fn get_custom(&self, key: &str) -> Option<&[u8]> {
        if let Some(k) = WellKnown::from_name(key) {
            return self.get(k);
        }
        self.iter()
            .find(|(k, _)| *k == HeaderKey::Custom(key))
            .map(|(_, v)| v)
    }

    /// The `deadline` header: time left for the operation.
    pub fn deadline(&self) -> Option<Duration> {
        lone_deadline(&self.0)
            .or_else(|| self.get_u64(WellKnown::Deadline))
            .map(Duration::from_micros)
    }

    /// The `ttl` header.
    pub fn ttl(&self) -> Option<Duration> {
        self.get_u64(WellKnown::Ttl).map(Duration::from_millis)
    }

    /// The `reply-to` header.
    pub fn reply_to(&self) -> Option<&str> {
        self.get_str(WellKnown::ReplyTo)
    }

    /// The `content-type` header.
    pub fn content_type(&self) -> Option<&str> {
        self.get_str(WellKnown::ContentType)
    }

    fn get_u64(&self, key: WellKnown) -> Option<u64> {
        let v: [u8; 8] = self.get(key)?.try_into().ok()?;
        Some(u64::from_be_bytes(v))
    }

    /// A builder holding this block's entries, to add more.
    pub fn to_builder(&self) -> HeadersBuilder {
        HeadersBuilder(BytesMut::from(&self.0[..]))
    }
}

struct RawIter<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> RawIter<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    #[allow(clippy::type_complexity)]
    fn next_entry(&mut self) -> Option<Result<(HeaderKey<'a>, &'a [u8]), &'static str>> {
        if self.pos >= self.buf.len() {
            return None;
        }
        Some(self.entry())
    }

    fn entry(&mut self) -> Result<(HeaderKey<'a>, &'a [u8]), &'static str> {
        let id = self.take(1).ok_or("truncated entry")?[0];
        let key = if id == 0 {
            let klen = self.take(1).ok_or("truncated key length")?[0];
            let k = self
                .take(usize::from(klen))
                .ok_or("key overruns the block")?;
            let k = std::str::from_utf8(k).map_err(|_| "key is not UTF-8")?;
            check_custom_key(k)?;
            HeaderKey::Custom(k)
        } else {
            match WellKnown::from_id(id) {
                Some(k) => HeaderKey::Known(k),
                None => HeaderKey::Reserved(id),
            }
        };
        let l = self.take(2).ok_or("truncated value length")?;
        let vlen = usize::from(u16::from_be_bytes([l[0], l[1]]));
        let v = self.take(vlen).ok_or("value overruns the block")?;
        if let HeaderKey::Known(k) = key {
            if k.fixed_len().is_some_and(|n| n != v.len()) {
                return Err("deadline and ttl values must be 8 bytes");
            }
        }
        Ok((key, v))
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in self.iter() {
            match std::str::from_utf8(v) {
                Ok(s) => m.entry(&k.name(), &s),
                Err(_) => m.entry(&k.name(), &v),
            };
        }
        m.finish()
    }
}

/// Builds a headers block.
///
/// ```
/// use mitto_proto::{Headers, WellKnown};
/// use std::time::Duration;
/// let h = Headers::builder()
///     .insert(WellKnown::ContentType, "application/json")
///     .unwrap()
///     .deadline(Duration::from_millis(250))
///     .insert_custom("tenant", "acme")
///     .unwrap()
///     .build();
/// assert_eq!(h.content_type(), Some("application/json"));
/// assert_eq!(h.deadline(), Some(Duration::from_millis(250)));
/// assert_eq!(h.get_custom("tenant"), Some(&b"acme"[..]));
/// ```
#[derive(Clone, Default, Debug)]
pub struct HeadersBuilder(BytesMut);

impl HeadersBuilder {
    /// Adds a well-known key.
    pub fn insert(mut self, key: WellKnown, value: impl AsRef<[u8]>) -> Result<Self, EncodeError> {
        let v = value.as_ref();
        if key.fixed_len().is_some_and(|n| n != v.len()) {
            return Err(EncodeError::InvalidHeaderValue {
                key: key.name().into(),
                reason: "must be 8 bytes",
            });
        }
        self.0.put_u8(key as u8);
        self.put_value(key.name(), v)?;
        Ok(self)
    }

    /// Adds a free-form key. A well-known key's name (any case) is stored as its compact id.
    pub fn insert_custom(self, key: &str, value: impl AsRef<[u8]>) -> Result<Self, EncodeError> {
        if let Some(k) = WellKnown::from_name(key) {
            return self.insert(k, value);
        }
        check_custom_key(key).map_err(|reason| EncodeError::InvalidHeaderKey {
            key: key.into(),
            reason,
        })?;
        let mut me = self;
        me.0.put_u8(0);
        me.0.put_u8(key.len() as u8);
        me.0.put_slice(key.as_bytes());
        me.put_value(key, value.as_ref())?;
        Ok(me)
    }

    /// Adds an entry with a reserved compact id (9..=255), as a relay passing one on does.
    pub fn insert_reserved(mut self, id: u8, value: impl AsRef<[u8]>) -> Result<Self, EncodeError> {
        if id == 0 || WellKnown::from_id(id).is_some() {
            return Err(EncodeError::InvalidHeaderKey {
                key: format!("#{id}"),
                reason: "not a reserved compact id",
            });
        }
        self.0.put_u8(id);
        self.put_value("reserved", value.as_ref())?;
        Ok(self)
    }

    /// Adds a `deadline` (time left, whole microseconds, saturating).
    pub fn deadline(mut self, left: Duration) -> Self {
        let us = u64::try_from(left.as_micros()).unwrap_or(u64::MAX);
        self.0.put_u8(WellKnown::Deadline as u8);
        self.0.put_u16(8);
        self.0.put_u64(us);
        self
    }

    /// Adds a `ttl` (whole milliseconds, saturating).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.0.put_u8(WellKnown::Ttl as u8);
        self.0.put_u16(8);
        self.0.put_u64(ms);
        self
    }

    fn put_value(&mut self, key: &str, v: &[u8]) -> Result<(), EncodeError> {
        let len = u16::try_from(v.len()).map_err(|_| EncodeError::InvalidHeaderValue {
            key: key.into(),
            reason: "longer than 65,535 bytes",
        })?;
        self.0.put_u16(len);
        self.0.put_slice(v);
        Ok(())
    }

    /// Finishes the block.
    pub fn build(self) -> Headers {
        Headers(self.0.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_deadline_block_reads_like_any_other() {
        let d = Duration::from_micros(1_234_567);
        let lone = Headers::builder().deadline(d).build();
        assert_eq!(lone.as_bytes().len(), 11);
        let back = Headers::from_wire(lone.as_bytes().clone()).unwrap();
        assert_eq!(back.deadline(), Some(d));
        assert_eq!(back.count(), 1);
        // The same entry after another one, and a block one byte short or long: the general
        // path decides.
        let two = Headers::builder()
            .insert_custom("k", "v")
            .unwrap()
            .deadline(d)
            .build();
        assert_eq!(
            Headers::from_wire(two.as_bytes().clone())
                .unwrap()
                .deadline(),
            Some(d)
        );
        let short = Bytes::copy_from_slice(&lone.as_bytes()[..10]);
        assert!(Headers::from_wire(short).is_err());
        let mut long = lone.as_bytes().to_vec();
        long.push(0);
        assert!(Headers::from_wire(Bytes::from(long)).is_err());
    }

    #[test]
    fn encodes_compact_and_custom_keys() {
        let h = Headers::builder()
            .insert(WellKnown::ContentType, "a/b")
            .unwrap()
            .insert_custom("x", "yz")
            .unwrap()
            .build();
        assert_eq!(h.as_bytes().as_ref(), b"\x01\x00\x03a/b\x00\x01x\x00\x02yz");
        let back = Headers::from_wire(h.as_bytes().clone()).unwrap();
        assert_eq!(back.count(), 2);
        assert_eq!(back.get_custom("x"), Some(&b"yz"[..]));
        assert_eq!(back.get_custom("Content-Type"), Some(&b"a/b"[..]));
    }

    #[test]
    fn custom_names_of_well_known_keys_become_compact() {
        let h = Headers::builder()
            .insert_custom("Reply-To", "_INBOX.1")
            .unwrap()
            .build();
        assert_eq!(h.as_bytes()[0], WellKnown::ReplyTo as u8);
        assert_eq!(h.reply_to(), Some("_INBOX.1"));
        assert!(Headers::builder()
            .insert_custom("deadline", "short")
            .is_err());
    }

    #[test]
    fn rejects_malformed_blocks() {
        let cases: &[&[u8]] = &[
            b"\x01",                 // truncated value length
            b"\x01\x00\x05abc",      // value overruns
            b"\x00",                 // truncated key length
            b"\x00\x00\x00\x00",     // empty key
            b"\x00\x05ab",           // key overruns
            b"\x00\x01\xff\x00\x00", // key not UTF-8
            b"\x00\x02a \x00\x00",   // key with whitespace
            b"\x04\x00\x02\x00\x01", // deadline of 2 bytes
            b"\x00\x03ttl\x00\x00",  // well-known name in free form
        ];
        for c in cases {
            assert!(Headers::from_wire(Bytes::from_static(c)).is_err(), "{c:?}");
        }
    }

    #[test]
    fn reserved_ids_pass_through() {
        let h = Headers::from_wire(Bytes::from_static(b"\x2a\x00\x01z")).unwrap();
        assert_eq!(h.iter().next(), Some((HeaderKey::Reserved(42), &b"z"[..])));
        let rebuilt = Headers::builder().insert_reserved(42, "z").unwrap().build();
        assert_eq!(rebuilt, h);
    }

    #[test]
    fn bad_keys_and_values_are_caller_errors() {
        assert!(Headers::builder().insert_custom("", "v").is_err());
        assert!(Headers::builder().insert_custom("a b", "v").is_err());
        assert!(Headers::builder()
            .insert_custom(&"k".repeat(256), "v")
            .is_err());
        assert!(Headers::builder()
            .insert(WellKnown::Auth, vec![0u8; 70_000])
            .is_err());
        assert!(Headers::builder().insert_reserved(3, "v").is_err());
    }

    #[test]
    fn durations() {
        let h = Headers::builder()
            .deadline(Duration::from_micros(1500))
            .ttl(Duration::from_secs(2))
            .build();
        assert_eq!(h.deadline(), Some(Duration::from_micros(1500)));
        assert_eq!(h.ttl(), Some(Duration::from_secs(2)));
    }
}
