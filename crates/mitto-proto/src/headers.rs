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
//! Keys may repeat; [`Headers::get`] returns the first. Compact ids 10..=255 are reserved for
//! later minor versions: a receiver keeps them and passes them on. A free-form key may not spell a
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
    /// How many times the broker has delivered this message, this delivery included, as a u32
    /// BE (4 bytes); on redeliveries only, so its presence marks one (protocol 1.1).
    DeliveryCount = 9, "delivery-count";
}

impl WellKnown {
    /// The exact value length this key requires, if fixed.
    pub const fn fixed_len(self) -> Option<usize> {
        match self {
            WellKnown::Deadline | WellKnown::Ttl => Some(8),
            WellKnown::DeliveryCount => Some(4),
            _ => None,
        }
    }

    /// Why a value of the wrong length is refused (for keys with a fixed length).
    const fn length_rule(self) -> &'static str {
        match self {
            WellKnown::DeliveryCount => "delivery-count values must be 4 bytes",
            _ => "deadline and ttl values must be 8 bytes",
        }
    }
}

/// A header key as it appears in a block.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HeaderKey<'a> {
    /// A well-known key (compact id 1..=9).
    Known(WellKnown),
    /// A compact id this version does not define (10..=255), kept as it is.
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

impl From<WellKnown> for HeaderKey<'static> {
    fn from(k: WellKnown) -> Self {
        HeaderKey::Known(k)
    }
}

/// A name: a well-known key's name (any ASCII case) is that key, anything else a free-form key.
impl<'a> From<&'a str> for HeaderKey<'a> {
    fn from(name: &'a str) -> Self {
        match WellKnown::from_name(name) {
            Some(k) => HeaderKey::Known(k),
            None => HeaderKey::Custom(name),
        }
    }
}

impl<'a> From<&'a String> for HeaderKey<'a> {
    fn from(name: &'a String) -> Self {
        HeaderKey::from(name.as_str())
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

    /// The first value of a key: a [`WellKnown`] key, or a name (`"tenant"`; a well-known key's
    /// name, in any case, finds that key).
    ///
    /// ```
    /// use mitto_proto::{Headers, WellKnown};
    /// let h = Headers::new().with("tenant", "acme").with(WellKnown::ContentType, "text/plain");
    /// assert_eq!(h.get("tenant"), Some(&b"acme"[..]));
    /// assert_eq!(h.get("Content-Type"), h.get(WellKnown::ContentType));
    /// assert_eq!(h.get("region"), None);
    /// ```
    pub fn get<'k>(&self, key: impl Into<HeaderKey<'k>>) -> Option<&[u8]> {
        let key = key.into();
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Every value of a key, in order (keys may repeat).
    pub fn get_all<'s, 'k: 's>(
        &'s self,
        key: impl Into<HeaderKey<'k>>,
    ) -> impl Iterator<Item = &'s [u8]> + 's {
        let key = key.into();
        self.iter().filter(move |(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The first value of a key (as [`Headers::get`]), as UTF-8 text; `None` when absent or
    /// not UTF-8.
    ///
    /// ```
    /// use mitto_proto::Headers;
    /// let h = Headers::new().with("tenant", "acme").with("blob", [0xff, 0xfe]);
    /// assert_eq!(h.get_str("tenant"), Some("acme"));
    /// assert_eq!(h.get_str("blob"), None);
    /// ```
    pub fn get_str<'k>(&self, key: impl Into<HeaderKey<'k>>) -> Option<&str> {
        self.get(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first value of a free-form key (exact match), or of a well-known key by name: the
    /// same as [`Headers::get`] with a name.
    pub fn get_custom(&self, key: &str) -> Option<&[u8]> {
        self.get(key)
    }

    /// This block with one more entry, for keys and values the program spells itself:
    /// `key` is a [`WellKnown`] key or a name (a well-known key's name is sent as that key).
    ///
    /// ```
    /// use mitto_proto::{Headers, WellKnown};
    /// let h = Headers::new()
    ///     .with("tenant", "acme")
    ///     .with(WellKnown::CorrelationId, "order-7");
    /// assert_eq!(h.get_str("tenant"), Some("acme"));
    /// assert_eq!(h.correlation_id(), Some("order-7"));
    /// ```
    ///
    /// # Panics
    ///
    /// When the key is not a valid key (empty, over 255 bytes, with whitespace or a control
    /// character) or the value breaks its key's rule (over 65,535 bytes; `deadline` and `ttl`
    /// not 8 bytes, `delivery-count` not 4): a bug in the program, as with a malformed constant.
    /// Use [`Headers::try_with`] for keys or values that come from outside the program.
    #[track_caller]
    pub fn with<'k>(self, key: impl Into<HeaderKey<'k>>, value: impl AsRef<[u8]>) -> Headers {
        match self.try_with(key, value) {
            Ok(h) => h,
            Err(e) => panic!("{e} (Headers::try_with reports this as an error)"),
        }
    }

    /// This block with one more entry, or why the entry is invalid: [`Headers::with`] for keys
    /// and values that come from outside the program (a peer, a configuration file).
    ///
    /// ```
    /// use mitto_proto::Headers;
    /// let from_peer = "bad key";
    /// assert!(Headers::new().try_with(from_peer, "v").is_err());
    /// let h = Headers::new().try_with("tenant", "acme").unwrap();
    /// assert_eq!(h.get_str("tenant"), Some("acme"));
    /// ```
    pub fn try_with<'k>(
        self,
        key: impl Into<HeaderKey<'k>>,
        value: impl AsRef<[u8]>,
    ) -> Result<Headers, EncodeError> {
        let b = match self.0.try_into_mut() {
            Ok(b) => HeadersBuilder(b),
            Err(shared) => HeadersBuilder(BytesMut::from(&shared[..])),
        };
        Ok(b.insert(key, value)?.build())
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

    /// The `delivery-count` header: how many times the broker has delivered this message,
    /// this delivery included (present on redeliveries only).
    pub fn delivery_count(&self) -> Option<u32> {
        let v: [u8; 4] = self.get(WellKnown::DeliveryCount)?.try_into().ok()?;
        Some(u32::from_be_bytes(v))
    }

    /// The `reply-to` header.
    pub fn reply_to(&self) -> Option<&str> {
        self.get_str(WellKnown::ReplyTo)
    }

    /// The `content-type` header.
    pub fn content_type(&self) -> Option<&str> {
        self.get_str(WellKnown::ContentType)
    }

    /// The `correlation-id` header.
    pub fn correlation_id(&self) -> Option<&str> {
        self.get_str(WellKnown::CorrelationId)
    }

    /// The `traceparent` header (W3C Trace Context).
    pub fn traceparent(&self) -> Option<&str> {
        self.get_str(WellKnown::Traceparent)
    }

    /// The `tracestate` header (W3C Trace Context).
    pub fn tracestate(&self) -> Option<&str> {
        self.get_str(WellKnown::Tracestate)
    }

    /// The `auth` header: a token for this one frame.
    pub fn auth(&self) -> Option<&[u8]> {
        self.get(WellKnown::Auth)
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
                return Err(k.length_rule());
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
/// [`HeadersBuilder::with`] (and [`Headers::with`]) add entries the program spells itself and
/// chain without a `Result`; [`HeadersBuilder::insert`] checks keys and values that come from
/// outside the program and says what is wrong.
///
/// ```
/// use mitto_proto::{Headers, WellKnown};
/// use std::time::Duration;
/// let h = Headers::builder()
///     .with(WellKnown::ContentType, "application/json")
///     .with("tenant", "acme")
///     .deadline(Duration::from_millis(250))
///     .build();
/// assert_eq!(h.content_type(), Some("application/json"));
/// assert_eq!(h.deadline(), Some(Duration::from_millis(250)));
/// assert_eq!(h.get_str("tenant"), Some("acme"));
///
/// let key_from_a_peer = "two words";
/// assert!(Headers::builder().insert(key_from_a_peer, "v").is_err());
/// ```
#[derive(Clone, Default, Debug)]
pub struct HeadersBuilder(BytesMut);

impl HeadersBuilder {
    /// Adds an entry: `key` is a [`WellKnown`] key or a name (a well-known key's name, in any
    /// case, is stored as its compact id).
    pub fn insert<'k>(
        self,
        key: impl Into<HeaderKey<'k>>,
        value: impl AsRef<[u8]>,
    ) -> Result<Self, EncodeError> {
        match key.into() {
            HeaderKey::Known(k) => self.insert_known(k, value.as_ref()),
            HeaderKey::Custom(name) => self.insert_custom(name, value),
            HeaderKey::Reserved(id) => self.insert_reserved(id, value),
        }
    }

    /// Adds an entry for a key and value the program spells itself (see [`Headers::with`]).
    ///
    /// # Panics
    ///
    /// As [`Headers::with`]: when the key or the value is invalid. Use
    /// [`HeadersBuilder::insert`] for keys or values from outside the program.
    #[track_caller]
    pub fn with<'k>(self, key: impl Into<HeaderKey<'k>>, value: impl AsRef<[u8]>) -> Self {
        match self.insert(key, value) {
            Ok(b) => b,
            Err(e) => panic!("{e} (HeadersBuilder::insert reports this as an error)"),
        }
    }

    fn insert_known(mut self, key: WellKnown, v: &[u8]) -> Result<Self, EncodeError> {
        if key.fixed_len().is_some_and(|n| n != v.len()) {
            return Err(EncodeError::InvalidHeaderValue {
                key: key.name().into(),
                reason: key.length_rule(),
            });
        }
        self.0.put_u8(key as u8);
        self.put_value(key.name(), v)?;
        Ok(self)
    }

    /// Adds a free-form key. A well-known key's name (any case) is stored as its compact id.
    pub fn insert_custom(self, key: &str, value: impl AsRef<[u8]>) -> Result<Self, EncodeError> {
        if let Some(k) = WellKnown::from_name(key) {
            return self.insert_known(k, value.as_ref());
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

    /// Adds an entry with a reserved compact id (10..=255), as a relay passing one on does.
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

    /// Adds a `delivery-count`.
    pub fn delivery_count(mut self, n: u32) -> Self {
        self.0.put_u8(WellKnown::DeliveryCount as u8);
        self.0.put_u16(4);
        self.0.put_u32(n);
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
    fn with_chains_names_and_well_known_keys() {
        let h = Headers::new()
            .with("tenant", "acme")
            .with("Content-Type", "text/plain")
            .with(WellKnown::CorrelationId, "c-1")
            .with("tenant", "other");
        // A well-known name goes out as its compact id, whatever its case.
        assert_eq!(h.as_bytes()[14], WellKnown::ContentType as u8);
        assert_eq!(h.get_str("tenant"), Some("acme"));
        assert_eq!(
            h.get_all("tenant").collect::<Vec<_>>(),
            [&b"acme"[..], &b"other"[..]]
        );
        assert_eq!(h.content_type(), Some("text/plain"));
        assert_eq!(h.get_str("content-type"), Some("text/plain"));
        assert_eq!(h.correlation_id(), Some("c-1"));
        assert_eq!(h.get_str("region"), None);
        let back = Headers::from_wire(h.as_bytes().clone()).unwrap();
        assert_eq!(back, h);
        // A shared block is copied, not changed.
        let base = Headers::new().with("a", "1");
        let more = base.clone().with("b", "2");
        assert_eq!((base.count(), more.count()), (1, 2));
    }

    #[test]
    fn try_with_reports_what_with_refuses() {
        for (k, v) in [("", "v"), ("a b", "v"), ("ttl", "short"), ("k\n", "v")] {
            assert!(Headers::new().try_with(k, v).is_err(), "{k:?}");
            assert!(Headers::builder().insert(k, v).is_err(), "{k:?}");
        }
        assert!(Headers::new().try_with("k", vec![0u8; 65_536]).is_err());
        let r = std::panic::catch_unwind(|| Headers::new().with("a b", "v"));
        assert!(r.is_err());
        let r = std::panic::catch_unwind(|| Headers::builder().with("", "v"));
        assert!(r.is_err());
    }

    #[test]
    fn typed_getters_of_well_known_keys() {
        let h = Headers::new()
            .with(WellKnown::Traceparent, "00-ab-cd-01")
            .with(WellKnown::Tracestate, "k=v")
            .with(WellKnown::Auth, [1, 2])
            .with(WellKnown::ReplyTo, "_INBOX.x");
        assert_eq!(h.traceparent(), Some("00-ab-cd-01"));
        assert_eq!(h.tracestate(), Some("k=v"));
        assert_eq!(h.auth(), Some(&[1u8, 2][..]));
        assert_eq!(h.reply_to(), Some("_INBOX.x"));
        assert_eq!(h.correlation_id(), None);
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
