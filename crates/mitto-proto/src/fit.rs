//! Answers that carry a status reach the peer whatever limits it agreed to (spec section 14.5):
//! their reason is shortened to fit, never the answer dropped.

use crate::compress::check_prefix;
use crate::frame::Frame;
use crate::header::{Flags, FrameType};
use crate::headers::Headers;
use crate::negotiate::Limits;
use crate::status::Status;

/// The longest prefix of `b` that is at most `max` bytes long and valid UTF-8: a reason cut
/// there is still text (a cut inside a character drops the whole character).
pub(crate) fn utf8_prefix(b: &[u8], max: usize) -> &[u8] {
    let cut = &b[..b.len().min(max)];
    match std::str::from_utf8(cut) {
        Ok(_) => cut,
        Err(e) => &cut[..e.valid_up_to()],
    }
}

impl Frame {
    /// The frame to send in place of this one to a peer that agreed to `limits`, or `None`
    /// when this one may go as it is.
    ///
    /// An ERROR, a CLOSE or a RESPONSE with a failure status over the limits keeps its id,
    /// `aux` and status; its reason is cut at a UTF-8 character boundary to fit `max_payload`
    /// and its headers block is left out if it does not fit `max_headers`. A RESPONSE OK that
    /// does not fit becomes RESPONSE PAYLOAD_TOO_LARGE, and a HEALTH or STATS report that does
    /// not fit becomes ERROR PAYLOAD_TOO_LARGE, so that the call or query still ends. Other
    /// frames are left to their sender, which refuses an oversize message itself.
    ///
    /// ```
    /// use mitto_proto::{Frame, Limits, Status};
    ///
    /// let limits = Limits { max_payload: 8, ..Limits::default() };
    /// let e = Frame::error(7, Status::NOT_FOUND, "no subscription café");
    /// let sent = e.fit_answer(&limits).expect("shortened");
    /// assert_eq!((sent.id, sent.status), (7, Status::NOT_FOUND));
    /// assert_eq!(&sent.payload[..], b"no subsc");
    /// assert!(Frame::error(7, Status::NOT_FOUND, "short").fit_answer(&limits).is_none());
    /// ```
    pub fn fit_answer(&self, limits: &Limits) -> Option<Frame> {
        let max = limits.max_payload;
        let payload_over = self.payload.len() > max as usize
            || (self.flags.contains(Flags::COMPRESSED)
                && check_prefix(&self.payload, max).is_err());
        let headers_over = self.headers.as_bytes().len() > limits.max_headers as usize;
        if !payload_over && !headers_over {
            return None;
        }
        let refused = |what: &str| {
            let why = format!(
                "the {what} ({} bytes of payload, {} of headers) exceeds your limits \
                 ({max} and {})",
                self.payload.len(),
                self.headers.as_bytes().len(),
                limits.max_headers
            );
            (self.id, why)
        };
        let f = match self.frame_type {
            FrameType::Error | FrameType::Close => self.shortened(payload_over, headers_over, max),
            FrameType::Response if self.status != Status::OK => {
                self.shortened(payload_over, headers_over, max)
            }
            FrameType::Response => {
                let (id, why) = refused("result");
                Frame::response(id, Status::PAYLOAD_TOO_LARGE, why).shortened(true, false, max)
            }
            FrameType::Health | FrameType::Stats if self.flags.contains(Flags::REPLY) => {
                let (id, why) = refused("report");
                Frame::error(id, Status::PAYLOAD_TOO_LARGE, &why).shortened(true, false, max)
            }
            _ => return None,
        };
        Some(f)
    }

    /// A copy with the reason cut to `max` bytes and, if asked, without headers.
    fn shortened(&self, payload: bool, headers: bool, max: u32) -> Frame {
        let mut f = self.clone();
        if headers {
            f.headers = Headers::default();
        }
        if payload {
            if f.flags.contains(Flags::COMPRESSED) {
                // A compressed reason cannot be cut: the status says enough.
                f.flags.remove(Flags::COMPRESSED);
                f.payload = bytes::Bytes::new();
            } else {
                let keep = utf8_prefix(&f.payload, max as usize).len();
                f.payload.truncate(keep);
            }
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Decoder, HealthReport, HealthState, StatsReport, WellKnown};
    use bytes::BytesMut;

    fn limits(max_payload: u32, max_headers: u32) -> Limits {
        Limits {
            max_payload,
            max_headers,
            ..Limits::default()
        }
    }

    /// What a peer with `l` decodes from `f` as sent.
    fn received(f: &Frame, l: Limits) -> Frame {
        let sent = f.fit_answer(&l).unwrap_or_else(|| f.clone());
        let mut b = BytesMut::new();
        sent.encode(&mut b).unwrap();
        let got = Decoder::new(l).decode(&mut b).unwrap().unwrap();
        assert!(b.is_empty());
        got
    }

    #[test]
    fn utf8_prefix_never_splits_a_character() {
        let s = "aé東😀".as_bytes(); // 1 + 2 + 3 + 4 bytes
        let cuts: Vec<usize> = (0..=11).map(|m| utf8_prefix(s, m).len()).collect();
        assert_eq!(cuts, [0, 1, 1, 3, 3, 3, 6, 6, 6, 6, 10, 10]);
        assert_eq!(
            utf8_prefix(b"ab\xffcd", 10),
            b"ab",
            "invalid bytes end the text"
        );
    }

    #[test]
    fn error_close_and_failed_response_keep_id_status_and_aux_at_any_limit() {
        let mut e = Frame::error(42, Status::SLOW_CONSUMER, "subscription ended: é");
        e.aux = 9;
        let c = Frame::close(Status::UNAVAILABLE, "broker shutting down");
        let r = Frame::response(7, Status::NO_RESPONDERS, "no responders for calc.add");
        for max in [1, 2, 16, 21, 22, 40] {
            for f in [&e, &c, &r] {
                let got = received(f, limits(max, 64));
                assert_eq!(
                    (got.frame_type, got.id, got.aux, got.status),
                    (f.frame_type, f.id, f.aux, f.status),
                    "{max}"
                );
                assert!(got.payload.len() <= max as usize);
                assert!(f.payload.starts_with(&got.payload));
                assert!(std::str::from_utf8(&got.payload).is_ok());
            }
        }
        // One byte short of the two-byte "é": it goes whole.
        assert_eq!(received(&e, limits(21, 64)).payload.len(), 20);
        assert_eq!(received(&e, limits(22, 64)).payload.len(), 22);
    }

    #[test]
    fn headers_that_do_not_fit_are_left_out_of_a_failure() {
        let h = Headers::builder()
            .insert(WellKnown::CorrelationId, "x".repeat(100))
            .unwrap()
            .build();
        let r = Frame::response(3, Status::EXECUTION_ERROR, "boom").with_headers(h.clone());
        let got = received(&r, limits(1024, 64));
        assert!(got.headers.is_empty());
        assert_eq!(
            (got.id, got.status, &got.payload[..]),
            (3, r.status, &b"boom"[..])
        );
        let fits = received(&r, limits(1024, 1024));
        assert_eq!(fits.headers, h);
    }

    #[test]
    fn a_result_or_report_that_does_not_fit_becomes_payload_too_large() {
        let ok = Frame::response(5, Status::OK, vec![7u8; 100]);
        let got = received(&ok, limits(40, 64));
        assert_eq!(
            (got.frame_type, got.id, got.status),
            (FrameType::Response, 5, Status::PAYLOAD_TOO_LARGE)
        );
        let mut s = StatsReport::default();
        for i in 0..20 {
            s.values.insert(format!("counter_{i}"), i);
        }
        let stats = Frame::stats_reply(9, &s).unwrap();
        let got = received(&stats, limits(16, 64));
        assert_eq!(
            (got.frame_type, got.id, got.status),
            (FrameType::Error, 9, Status::PAYLOAD_TOO_LARGE)
        );
        let health = HealthReport {
            state: HealthState::Serving,
            uptime_ms: 1,
            server: "mitto".into(),
            detail: None,
        };
        let h = Frame::health_reply(8, &health).unwrap();
        assert!(h.fit_answer(&limits(1024, 64)).is_none(), "fits: as it is");
    }

    #[cfg(feature = "lz4")]
    #[test]
    fn a_compressed_result_is_judged_by_its_uncompressed_length() {
        let big = crate::compress::compress(&[0u8; 4096]);
        assert!(big.len() < 100);
        let ok = Frame::response(5, Status::OK, big).with_flags(Flags::COMPRESSED);
        let got = received(&ok, limits(1024, 64));
        assert_eq!((got.id, got.status), (5, Status::PAYLOAD_TOO_LARGE));
        assert!(!got.flags.contains(Flags::COMPRESSED));
    }

    #[test]
    fn other_frames_are_the_senders_business() {
        let p = Frame::publish(crate::Subject::literal("a").unwrap(), vec![0u8; 100]);
        assert!(p.fit_answer(&limits(16, 64)).is_none());
        assert!(Frame::ping(1)
            .with_payload(vec![0u8; 100])
            .fit_answer(&limits(16, 64))
            .is_none());
    }
}
