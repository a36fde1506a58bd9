//! The frames a call sends, and what the frames that answer it mean.

use super::call_parts::{CallOptions, Reply};
use crate::error::{Error, Result};
use bytes::Bytes;
use mitto_proto::{Flags, Frame, Headers, Status, Subject, WellKnown};
use std::time::Duration;

/// The error of a call whose payload is over the negotiated limit.
pub(super) fn payload_too_large(len: usize, max: u32) -> Error {
    Error::new(
        Status::PAYLOAD_TOO_LARGE,
        format!("payload of {len} bytes exceeds the negotiated limit of {max}"),
    )
}

/// The error of a frame whose headers block is over the negotiated limit (a sender must not
/// send it: PROTOCOL.md 8.2).
pub(super) fn headers_too_large(len: usize, max: u32) -> Error {
    Error::new(
        Status::PAYLOAD_TOO_LARGE,
        format!("headers block of {len} bytes exceeds the negotiated limit of {max}"),
    )
}

/// A RESPONSE (or HEALTH / STATS answer) as a call's result.
pub(super) fn reply_of(f: Frame) -> Result<Reply> {
    if f.status.is_ok() {
        Ok(Reply {
            headers: f.headers,
            payload: f.payload,
        })
    } else {
        Err(remote_error(&f))
    }
}

pub(super) fn remote_error(f: &Frame) -> Error {
    let e = Error::from_remote(f.status, &f.payload);
    match f.headers.get_custom(crate::error::ERROR_DETAILS_HEADER) {
        Some(d) => e.with_details(Bytes::copy_from_slice(d)),
        None => e,
    }
}

/// A headers block holding only a `deadline`, built in one allocation (the common case).
pub(super) fn deadline_only(left: Duration) -> Headers {
    use bytes::BufMut;
    let mut b = bytes::BytesMut::with_capacity(11);
    b.put_u8(WellKnown::Deadline as u8);
    b.put_u16(8);
    b.put_u64(u64::try_from(left.as_micros()).unwrap_or(u64::MAX));
    Headers::from_wire(b.freeze()).unwrap_or_default()
}

/// The REQUEST frame of call `id`.
pub(super) fn request_of(
    id: u64,
    subject: Subject,
    headers: Headers,
    payload: Bytes,
    opts: &CallOptions,
) -> Frame {
    let mut f = Frame::request(id, subject, payload)
        .with_headers(headers)
        .with_kind(opts.kind);
    if opts.urgent {
        f.flags.insert(Flags::URGENT);
    }
    f
}

/// The headers block of a call with the client's default timeout: kept for the life of the
/// process (one per distinct timeout, at most [`KEPT_DEADLINES`]), so that the copy every call
/// takes and drops costs no reference count.
pub(super) fn default_deadline(timeout: Duration) -> Headers {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static KEPT: OnceLock<Mutex<HashMap<Duration, Headers>>> = OnceLock::new();
    let fresh = deadline_only(timeout);
    let Ok(mut kept) = KEPT.get_or_init(Default::default).lock() else {
        return fresh;
    };
    match kept.get(&timeout) {
        Some(h) => h.clone(),
        None if kept.len() < KEPT_DEADLINES => {
            let h = kept_for_the_process(fresh);
            kept.insert(timeout, h.clone());
            h
        }
        None => fresh,
    }
}

/// `h` in bytes kept for the life of the process, so that its copies and drops touch no
/// reference count (for the few blocks every call or message of a kind carries; callers bound
/// how many they make).
pub(crate) fn kept_for_the_process(h: Headers) -> Headers {
    let kept: &'static [u8] = Box::leak(h.as_bytes().to_vec().into_boxed_slice());
    Headers::from_wire(Bytes::from_static(kept)).unwrap_or(h)
}

/// Distinct default timeouts whose headers [`default_deadline`] keeps.
pub(super) const KEPT_DEADLINES: usize = 64;
