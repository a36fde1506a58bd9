//! One record as stored: framing, checksum, and the parse that trusts no length it reads.
//!
//! ```text
//! 0   u64 hash     xxh3-64 of bytes 8.. with the segment's random seed
//! 8   u32 len      bytes after this field: 22 + subject + headers + payload
//! 12  u64 seq
//! 20  u64 timestamp (ns since the Unix epoch)
//! 28  u16 subject length
//! 30  u32 headers length
//! 34  subject, headers block, payload
//! ```
//! All little-endian. The hash is seeded with a random value kept in the segment's header, so a
//! payload that embeds a well-formed record cannot pass for one when recovery searches for the
//! next record after damage.

use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Framing bytes per record.
pub(crate) const OVERHEAD: usize = 34;
/// Bytes covered by `len` besides the three variable fields.
const FIXED_BODY: u32 = 22;

/// A message read back from a stream: one slice of the reader's buffer (the record as stored)
/// and the places of its fields, so handing one out costs one reference count.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its sequence number in the stream (from 1, no reuse).
    pub seq: u64,
    /// When the stream stored it, in nanoseconds since the Unix epoch (non-decreasing).
    pub timestamp_ns: u64,
    raw: Bytes,
    headers_at: u32,
    payload_at: u32,
}

impl std::fmt::Debug for StoredMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredMessage")
            .field("seq", &self.seq)
            .field("timestamp_ns", &self.timestamp_ns)
            .field("subject", &self.subject())
            .field("headers", &self.headers().len())
            .field("payload", &self.payload().len())
            .finish()
    }
}

impl StoredMessage {
    /// The subject it was published to (checked UTF-8 when appended; `""` if the bytes were
    /// not, which the checksum rules out).
    pub fn subject(&self) -> &str {
        std::str::from_utf8(&self.raw[OVERHEAD..self.headers_at as usize]).unwrap_or("")
    }

    /// The encoded headers block as published (may be empty).
    pub fn headers(&self) -> &[u8] {
        &self.raw[self.headers_at as usize..self.payload_at as usize]
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.raw[self.payload_at as usize..]
    }

    /// The headers block as shared bytes (no copy).
    pub fn headers_bytes(&self) -> Bytes {
        self.raw
            .slice(self.headers_at as usize..self.payload_at as usize)
    }

    /// The payload as shared bytes (no copy), for a frame to carry.
    pub fn payload_bytes(&self) -> Bytes {
        self.raw.slice(self.payload_at as usize..)
    }
}

/// The size a record of these fields takes on disk.
pub(crate) fn stored_size(subject: usize, headers: usize, payload: usize) -> u64 {
    (OVERHEAD + subject + headers + payload) as u64
}

/// Appends one record to `out`.
pub(crate) fn encode(
    out: &mut Vec<u8>,
    seed: u64,
    seq: u64,
    ts: u64,
    subject: &[u8],
    headers: &[u8],
    payload: &[u8],
) {
    let start = out.len();
    let len = FIXED_BODY as usize + subject.len() + headers.len() + payload.len();
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&ts.to_le_bytes());
    out.extend_from_slice(&(subject.len() as u16).to_le_bytes());
    out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    out.extend_from_slice(subject);
    out.extend_from_slice(headers);
    out.extend_from_slice(payload);
    let h = xxh3_64_with_seed(&out[start + 8..], seed);
    out[start..start + 8].copy_from_slice(&h.to_le_bytes());
}

/// The fixed fields of a record that checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) seq: u64,
    pub(crate) ts: u64,
    /// Bytes on disk, framing included.
    pub(crate) size: u32,
    subject_len: u16,
    headers_len: u32,
}

impl Meta {
    /// The fields of a record the writer has just encoded.
    pub(crate) fn new(
        seq: u64,
        ts: u64,
        subject_len: usize,
        headers_len: usize,
        size: u64,
    ) -> Self {
        Meta {
            seq,
            ts,
            size: size as u32,
            subject_len: subject_len as u16,
            headers_len: headers_len as u32,
        }
    }

    /// The message in `buf[start..]`, where the record was parsed.
    pub(crate) fn message(&self, buf: &Bytes, start: usize) -> StoredMessage {
        let h = OVERHEAD + self.subject_len as usize;
        StoredMessage {
            seq: self.seq,
            timestamp_ns: self.ts,
            raw: buf.slice(start..start + self.size as usize),
            headers_at: h as u32,
            payload_at: (h + self.headers_len as usize) as u32,
        }
    }
}

/// What is at an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A whole record that checks.
    Record(Meta),
    /// `buf` is too short: this many bytes are needed to decide (never more than the limits).
    NeedMore(usize),
    /// No record here.
    Bad(Bad),
}

/// Why there is no record at an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bad {
    /// The length is impossible (too small or over `max_record_size`).
    Length,
    /// The record would end past the end of the data (a torn tail, or a damaged length).
    PastEnd,
    /// The bytes do not match their hash (a torn or damaged record).
    Checksum,
}

/// Parses the record at the start of `buf`. `available` is how many bytes the file holds from
/// this offset on: no length is trusted past it or past `max_record`, so nothing is ever sized
/// by a damaged length field.
pub(crate) fn parse(buf: &[u8], seed: u64, max_record: u32, available: u64) -> Parsed {
    if available < 12 {
        return Parsed::Bad(Bad::PastEnd);
    }
    if buf.len() < 12 {
        return Parsed::NeedMore(12);
    }
    let len = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    let size = u64::from(len) + 12;
    if len < FIXED_BODY || size > u64::from(max_record) {
        return Parsed::Bad(Bad::Length);
    }
    if size > available {
        return Parsed::Bad(Bad::PastEnd);
    }
    let size = size as usize;
    if buf.len() < size {
        return Parsed::NeedMore(size);
    }
    let rec = &buf[..size];
    let want = u64::from_le_bytes(rec[..8].try_into().unwrap_or_default());
    if xxh3_64_with_seed(&rec[8..], seed) != want {
        return Parsed::Bad(Bad::Checksum);
    }
    let seq = u64::from_le_bytes(rec[12..20].try_into().unwrap_or_default());
    let ts = u64::from_le_bytes(rec[20..28].try_into().unwrap_or_default());
    let subject_len = u16::from_le_bytes([rec[28], rec[29]]);
    let headers_len = u32::from_le_bytes(rec[30..34].try_into().unwrap_or_default());
    if u64::from(subject_len) + u64::from(headers_len) > u64::from(len - FIXED_BODY) {
        // The hash matched, so only our own bug could write this; treat it as damage.
        return Parsed::Bad(Bad::Checksum);
    }
    Parsed::Record(Meta {
        seq,
        ts,
        size: size as u32,
        subject_len,
        headers_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(seed: u64) -> Vec<u8> {
        let mut v = Vec::new();
        encode(&mut v, seed, 7, 99, b"a.b", b"hh", b"payload");
        v
    }

    #[test]
    fn round_trip_slices_the_fields() {
        let v = one(1);
        assert_eq!(v.len() as u64, stored_size(3, 2, 7));
        let Parsed::Record(m) = parse(&v, 1, 1 << 20, v.len() as u64) else {
            panic!("no record")
        };
        let msg = m.message(&Bytes::from(v), 0);
        assert_eq!((msg.seq, msg.timestamp_ns), (7, 99));
        assert_eq!(msg.subject(), "a.b");
        assert_eq!(msg.headers(), b"hh");
        assert_eq!(msg.payload(), b"payload");
        assert_eq!(&msg.payload_bytes()[..], b"payload");
        assert_eq!(&msg.headers_bytes()[..], b"hh");
    }

    #[test]
    fn another_seed_does_not_check() {
        let v = one(1);
        assert_eq!(parse(&v, 2, 1 << 20, 100), Parsed::Bad(Bad::Checksum));
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let v = one(3);
        for i in 0..v.len() {
            let mut w = v.clone();
            w[i] ^= 0x40;
            assert!(
                !matches!(parse(&w, 3, 1 << 20, w.len() as u64), Parsed::Record(_)),
                "flip at {i}"
            );
        }
    }

    #[test]
    fn every_prefix_asks_for_at_most_the_record() {
        let v = one(3);
        for cut in 0..v.len() {
            match parse(&v[..cut], 3, 1 << 20, v.len() as u64) {
                Parsed::NeedMore(n) => assert!(n <= v.len()),
                other => panic!("cut {cut}: {other:?}"),
            }
            // With the file ending there, the record is torn.
            assert!(matches!(
                parse(&v[..cut], 3, 1 << 20, cut as u64),
                Parsed::Bad(Bad::PastEnd)
            ));
        }
    }

    #[test]
    fn a_huge_length_is_refused_before_any_read() {
        let mut v = one(3);
        v[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            parse(&v[..12], 3, 1 << 20, u64::MAX),
            Parsed::Bad(Bad::Length)
        );
        v[8..12].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(parse(&v[..12], 3, 1 << 20, 500), Parsed::Bad(Bad::PastEnd));
    }
}
