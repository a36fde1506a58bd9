//! A queued message made fit for the subscriber it is about to go to: the limits that
//! subscriber agreed (a message over them is skipped for it, never sent), its compression (the
//! broker decompresses for a peer that did not negotiate LZ4), the time the message waited in
//! the broker (charged against its relative `deadline` and its `ttl`; one that ran out is
//! dropped, never delivered late), and how many times it was delivered (`delivery-count`).

use mitto::proto::compress::decompress;
use mitto::proto::negotiate::{Features, Negotiated};
use mitto::proto::{Flags, Frame, FrameType, HeaderKey, Headers, Status, WellKnown};
use std::time::Duration;
use tokio::time::Instant;

/// What one connection agreed to receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Peer {
    pub(crate) max_payload: u32,
    pub(crate) max_headers: u32,
    /// COMPRESSION_LZ4 was negotiated: compressed payloads go out as they are.
    pub(crate) lz4: bool,
    /// The agreed minor version (`delivery-count` exists since 1.1).
    pub(crate) minor: u8,
}

impl Peer {
    /// Takes anything (a mailbox no connection reads: a durable subscription's messages
    /// waiting for their next subscriber).
    pub(crate) const ANY: Peer = Peer {
        max_payload: u32::MAX,
        max_headers: u32::MAX,
        lz4: true,
        minor: u8::MAX,
    };

    /// What a handshake agreed.
    pub(crate) fn of(n: &Negotiated) -> Peer {
        Peer {
            max_payload: n.limits.max_payload,
            max_headers: n.limits.max_headers,
            lz4: n.features.contains(Features::COMPRESSION_LZ4),
            minor: n.version.minor,
        }
    }

    /// Whether every message the broker accepts goes to this peer unchanged (no size to check,
    /// nothing to decompress).
    pub(crate) fn takes_all(&self, broker_max_payload: u32) -> bool {
        self.lz4
            && self.max_payload >= broker_max_payload
            && self.max_headers >= mitto::proto::Limits::DEFAULT_MAX_HEADERS
    }
}

/// Why a message does not go to a subscriber.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unfit {
    /// Over the subscriber's agreed limits.
    TooLarge,
    /// Its time ran out in the broker.
    Expired,
}

/// Whether a COMPRESSED frame from a peer may go on: only where LZ4 was negotiated, and only
/// with a block that decompresses, within the `max_payload` this connection agreed, to what its
/// prefix says, so that none is ever forwarded otherwise. (A PUBLISH's block is decompressed
/// where it is routed, in the publisher's own task and under no lock, for in-process
/// publishers too; here its prefix is held to the connection's limit.)
pub(crate) fn check_compressed(
    f: &Frame,
    lz4: bool,
    max_payload: u32,
) -> Result<(), (Status, String)> {
    if !lz4 {
        return Err((
            Status::UNSUPPORTED_FEATURE,
            "COMPRESSION_LZ4 was not negotiated: COMPRESSED is not allowed".into(),
        ));
    }
    if f.frame_type == FrameType::Publish {
        return match plain_len(f) {
            Some(n) if n <= max_payload => Ok(()),
            Some(n) => Err((
                Status::PAYLOAD_TOO_LARGE,
                format!("the block decompresses to {n} bytes, over the agreed max_payload {max_payload}"),
            )),
            // Too short to say: refused where it is decompressed.
            None => Ok(()),
        };
    }
    f.decompressed_payload(max_payload)
        .map(drop)
        .map_err(|e| (e.status(), e.to_string()))
}

/// The length a compressed block says it decompresses to (its 4-byte prefix).
fn plain_len(f: &Frame) -> Option<u32> {
    f.payload
        .get(..4)
        .and_then(|p| p.try_into().ok())
        .map(u32::from_be_bytes)
}

/// Whether a message's headers carry a relative time the broker must charge (`deadline`,
/// `ttl`): only those messages are stamped with their arrival.
#[inline]
pub(crate) fn timed(h: &Headers) -> bool {
    !h.is_empty()
        && h.iter().any(|(k, _)| {
            matches!(
                k,
                HeaderKey::Known(WellKnown::Deadline) | HeaderKey::Known(WellKnown::Ttl)
            )
        })
}

/// `f` as it leaves for `peer`: `born` is when the broker took a timed message in, `count`
/// the delivery this is (1 the first time).
#[inline]
pub(crate) fn fit(
    mut f: Frame,
    peer: &Peer,
    born: Option<Instant>,
    count: u32,
) -> Result<Frame, Unfit> {
    if let Some(t) = born {
        f.headers = charge(&f.headers, t.elapsed()).ok_or(Unfit::Expired)?;
    }
    if f.flags.contains(Flags::COMPRESSED) {
        // The broker checked the block when it was published; what it says it holds must fit.
        let plain = plain_len(&f).unwrap_or(u32::MAX);
        if plain > peer.max_payload {
            return Err(Unfit::TooLarge);
        }
        if !peer.lz4 {
            f.payload = decompress(&f.payload, peer.max_payload).map_err(|_| Unfit::TooLarge)?;
            f.flags.remove(Flags::COMPRESSED);
        }
    }
    if count > 1 && peer.minor >= 1 {
        let h = f.headers.to_builder().delivery_count(count).build();
        // The marker is advice: a block it would push over the limit goes without it.
        if h.as_bytes().len() <= peer.max_headers as usize {
            f.headers = h;
        }
    }
    if f.payload.len() > peer.max_payload as usize
        || f.headers.as_bytes().len() > peer.max_headers as usize
    {
        return Err(Unfit::TooLarge);
    }
    Ok(f)
}

/// The headers with `waited` taken off every `deadline` and `ttl`; `None` if one ran out (a
/// deadline with nothing left, a ttl shorter than the wait).
pub(crate) fn charge(h: &Headers, waited: Duration) -> Option<Headers> {
    let mut b = Headers::builder();
    for (k, v) in h.iter() {
        b = match k {
            HeaderKey::Known(WellKnown::Deadline) => {
                let left = Duration::from_micros(u64::from_be_bytes(v.try_into().ok()?));
                b.deadline(left.checked_sub(waited).filter(|d| !d.is_zero())?)
            }
            HeaderKey::Known(WellKnown::Ttl) => {
                let ttl = Duration::from_millis(u64::from_be_bytes(v.try_into().ok()?));
                b.ttl(ttl.checked_sub(waited)?)
            }
            HeaderKey::Known(w) => b.insert(w, v).ok()?,
            HeaderKey::Custom(c) => b.insert_custom(c, v).ok()?,
            HeaderKey::Reserved(id) => b.insert_reserved(id, v).ok()?,
        };
    }
    Some(b.build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mitto::proto::compress::compress;
    use mitto::proto::Subject;

    fn event(payload: impl Into<bytes::Bytes>) -> Frame {
        Frame::event(1, 7, Subject::literal("a").unwrap(), payload)
    }

    const SMALL: Peer = Peer {
        max_payload: 100,
        max_headers: 20,
        lz4: false,
        minor: 1,
    };

    #[test]
    fn time_waited_is_taken_off_deadline_and_ttl_and_other_entries_stay() {
        let h = Headers::builder()
            .insert_custom("k", "v")
            .unwrap()
            .deadline(Duration::from_millis(500))
            .ttl(Duration::from_millis(100))
            .build();
        assert!(timed(&h));
        assert!(!timed(
            &Headers::builder().insert_custom("k", "v").unwrap().build()
        ));
        let c = charge(&h, Duration::from_millis(40)).unwrap();
        assert_eq!(c.deadline(), Some(Duration::from_millis(460)));
        assert_eq!(c.ttl(), Some(Duration::from_millis(60)));
        assert_eq!(c.get_custom("k"), Some(&b"v"[..]));
        assert_eq!(c.as_bytes().len(), h.as_bytes().len());
        assert!(
            charge(&h, Duration::from_millis(101)).is_none(),
            "ttl ran out"
        );
        let d = Headers::builder()
            .deadline(Duration::from_millis(5))
            .build();
        assert!(
            charge(&d, Duration::from_millis(5)).is_none(),
            "nothing left"
        );
    }

    #[test]
    fn limits_compression_and_delivery_count() {
        assert_eq!(
            fit(event(vec![0u8; 101]), &SMALL, None, 1),
            Err(Unfit::TooLarge)
        );
        assert!(fit(event(vec![0u8; 100]), &SMALL, None, 1).is_ok());
        let big_headers = Headers::builder()
            .insert_custom("k", [0u8; 30])
            .unwrap()
            .build();
        assert_eq!(
            fit(event("x").with_headers(big_headers), &SMALL, None, 1),
            Err(Unfit::TooLarge)
        );
        // Compressed: decompressed for a peer without LZ4, refused when it would not fit.
        let plain = b"mitto ".repeat(10);
        let z = event(compress(&plain)).with_flags(Flags::COMPRESSED);
        let out = fit(z.clone(), &SMALL, None, 1).unwrap();
        assert!(!out.flags.contains(Flags::COMPRESSED));
        assert_eq!(out.payload, plain);
        let lz4 = Peer { lz4: true, ..SMALL };
        assert_eq!(fit(z.clone(), &lz4, None, 1).unwrap(), z);
        let bomb = event(compress(&[0u8; 1000])).with_flags(Flags::COMPRESSED);
        assert!(bomb.payload.len() < 100);
        assert_eq!(fit(bomb.clone(), &SMALL, None, 1), Err(Unfit::TooLarge));
        assert_eq!(fit(bomb, &lz4, None, 1), Err(Unfit::TooLarge));
        // A redelivery is marked, for a 1.1 peer, when the block still fits.
        let again = fit(event("x"), &SMALL, None, 3).unwrap();
        assert_eq!(again.headers.delivery_count(), Some(3));
        let old = Peer { minor: 0, ..SMALL };
        assert_eq!(
            fit(event("x"), &old, None, 3)
                .unwrap()
                .headers
                .delivery_count(),
            None
        );
        let tight = Peer {
            max_headers: 4,
            ..SMALL
        };
        assert_eq!(
            fit(event("x"), &tight, None, 3)
                .unwrap()
                .headers
                .delivery_count(),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stamped_message_is_charged_from_its_arrival() {
        let born = Instant::now();
        let f = event("x").with_headers(Headers::builder().ttl(Duration::from_millis(50)).build());
        tokio::time::advance(Duration::from_millis(20)).await;
        let out = fit(f.clone(), &SMALL, Some(born), 1).unwrap();
        assert_eq!(out.headers.ttl(), Some(Duration::from_millis(30)));
        tokio::time::advance(Duration::from_millis(31)).await;
        assert_eq!(fit(f, &SMALL, Some(born), 1), Err(Unfit::Expired));
    }
}
