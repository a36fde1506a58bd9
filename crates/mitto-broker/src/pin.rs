//! Keeps a queued message from holding on to much more memory than its own.
//!
//! A frame read from a socket is a view into the reader's buffer chunk (64 KiB, or about twice
//! the largest frame read into it), which stays allocated while any view into it lives. A
//! subscriber that takes one message in a thousand of a busy publisher's, and does not read,
//! would keep a whole chunk alive per message it holds. So when a subscription already has
//! messages waiting, a small message that is not next to the one queued before it (in the same
//! stretch of the same chunk) is copied out of the chunk. Messages that come one after another
//! from one publisher (the common case, fan-out included) are next to each other and are never
//! copied, so the publish path copies nothing while subscribers keep up.
//!
//! Bound: a message of up to [`COPY_MAX`] bytes kept as a view lies within [`NEAR`] bytes of
//! the one queued before it, so it keeps at most `NEAR + COPY_MAX` bytes of chunk alive besides
//! those the queue holds anyway; a larger one keeps at most its chunk, about twice its size
//! plus 64 KiB.

use bytes::Bytes;
use mitto::proto::{Frame, Headers, Subject};
use std::sync::atomic::{AtomicU64, Ordering};

/// The largest message (subject, headers and payload) copied out.
pub(crate) const COPY_MAX: usize = 16 * 1024;

/// How far a message may lie from the one queued before it and still be kept as a view.
pub(crate) const NEAR: usize = 4 * 1024;

/// Where a frame's bytes are: the first and one-past-the-last address of its payload (or of its
/// subject, when it has no payload).
fn span(f: &Frame) -> (usize, usize) {
    let b: &[u8] = if f.payload.is_empty() {
        f.subject.as_bytes()
    } else {
        &f.payload
    };
    let start = b.as_ptr() as usize;
    (start, start + b.len())
}

/// `f` as it is to be queued behind the message that ended at `*last_end` (0: none queued):
/// copied out of its chunk if the queue is `lagging`, it is small and not next to that message.
/// Updates `*last_end`; counts copies in `copied`.
#[inline]
pub(crate) fn settle(f: Frame, last_end: &mut usize, lagging: bool, copied: &AtomicU64) -> Frame {
    let (start, end) = span(&f);
    if !lagging || start.abs_diff(*last_end) <= NEAR || f.value.is_some() || !small(&f) {
        *last_end = end;
        return f;
    }
    // The next message is measured against where this one lay in its chunk, not against the
    // copy: otherwise one copy would make every later neighbour look scattered and be copied.
    *last_end = end;
    copied.fetch_add(1, Ordering::Relaxed);
    copy_out(f)
}

fn small(f: &Frame) -> bool {
    f.payload.len() + f.headers.as_bytes().len() + f.subject.len() <= COPY_MAX
}

/// `f` with its subject, headers and payload in allocations of their own.
#[cold]
fn copy_out(mut f: Frame) -> Frame {
    f.payload = Bytes::copy_from_slice(&f.payload);
    if !f.headers.is_empty() {
        if let Ok(h) = Headers::from_wire(Bytes::copy_from_slice(f.headers.as_bytes())) {
            f.headers = h;
        }
    }
    if let Ok(s) = Subject::new(f.subject.as_str()) {
        f.subject = s;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames that are views into one 64 KiB chunk, `gap` bytes of other frames between them.
    fn views(n: usize, size: usize, gap: usize) -> Vec<Frame> {
        let chunk = Bytes::from(vec![7u8; 64 * 1024]);
        (0..n)
            .map(|i| {
                let at = i * (size + gap);
                let s = Subject::new("t").unwrap();
                Frame::event(1, i as u64, s, chunk.slice(at..at + size))
            })
            .collect()
    }

    fn queue(frames: Vec<Frame>) -> (Vec<Frame>, u64) {
        let copied = AtomicU64::new(0);
        let mut last = 0;
        let out = frames
            .into_iter()
            .enumerate()
            .map(|(i, f)| settle(f, &mut last, i > 0, &copied))
            .collect();
        (out, copied.load(Ordering::Relaxed))
    }

    #[test]
    fn neighbours_stay_views_and_scattered_small_messages_are_copied() {
        let (_, copies) = queue(views(100, 100, 50));
        assert_eq!(copies, 0, "one publisher's run shares its chunk");
        let (out, copies) = queue(views(10, 100, 6000));
        assert_eq!(copies, 9, "all but the first, which went at once");
        assert!(out
            .iter()
            .all(|f| f.payload.len() == 100 && f.payload[0] == 7));
    }

    #[test]
    fn after_one_copy_its_neighbours_stay_views() {
        let mut frames = views(1, 100, 0);
        frames.extend(views(50, 100, 50));
        let (_, copies) = queue(frames);
        assert_eq!(copies, 1, "only the message that jumped to another chunk");
    }

    #[test]
    fn a_message_alone_or_large_is_never_copied() {
        let copied = AtomicU64::new(0);
        let mut last = 0;
        for f in views(3, 20_000, 1000) {
            settle(f, &mut last, true, &copied);
        }
        assert_eq!(copied.load(Ordering::Relaxed), 0, "over COPY_MAX");
        let f = views(1, 10, 0).pop().unwrap();
        settle(f, &mut last, false, &copied);
        assert_eq!(copied.load(Ordering::Relaxed), 0, "not lagging");
    }
}
