//! A publisher held back by subscriptions that block publishers while full: its message waits
//! for room (reading from its connection paused, so TCP slows it down) for at most
//! `max_block_ms`, then is refused with BACKPRESSURE_REJECTION.

use super::BrokerReactor;
use crate::subscriptions::SubRef;
use mitto::__private::conn::{Ctx, Reactor};
use mitto::proto::{Frame, Status};
use mitto::Error;
use std::future::Future;
use std::sync::atomic::Ordering;

/// A message held for subscriptions that block publishers while full.
pub(super) struct Parked {
    /// Those still to take it (the last first).
    pub(super) targets: Vec<SubRef>,
    pub(super) event: Frame,
    pub(super) born: Option<tokio::time::Instant>,
    pub(super) id: u64,
    pub(super) ack: bool,
    /// Its append to a stream, when its publisher waits for an ACK: the one answer then waits
    /// for the store as well.
    pub(super) stored: Option<crate::streams::Stored>,
    pub(super) subject: String,
    pub(super) room: Option<std::pin::Pin<Box<tokio::sync::futures::OwnedNotified>>>,
    pub(super) deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl BrokerReactor {
    /// Offers the held message again to the subscriptions that were full; true once it is
    /// delivered (or given up), so that reading resumes.
    pub(super) fn retry_parked(&mut self, cx: &mut Ctx<'_>) -> bool {
        let Some(p) = self.parked.as_mut() else {
            return false;
        };
        let waker = cx.waker().clone();
        let mut task = std::task::Context::from_waker(&waker);
        loop {
            let Some(t) = p.targets.last().cloned() else {
                break;
            };
            if let Some(room) = p.room.as_mut() {
                if room.as_mut().poll(&mut task).is_pending() {
                    if p.deadline.as_mut().poll(&mut task).is_pending() {
                        return false;
                    }
                    // Held too long: refuse, as a publisher would be without blocking.
                    let why = format!(
                        "{} subscriber(s) of {} stayed full for {} ms",
                        p.targets.len(),
                        p.subject,
                        self.core.cfg.max_block_ms
                    );
                    let n = p.targets.len();
                    self.core
                        .stats
                        .publish_rejections
                        .fetch_add(n as u64, Ordering::Relaxed);
                    if let Some(p) = self.parked.take() {
                        let e = Error::new(Status::BACKPRESSURE_REJECTION, why);
                        self.answer_parked(p, Err(e), cx);
                    }
                    self.resume_held(cx);
                    return true;
                }
            }
            // Armed before the attempt, so that room made right after it wakes this task.
            p.room = Some(t.mailbox.room_owned());
            let mut r = crate::core::Routed::default();
            if self
                .core
                .offer(&t, p.event.clone(), p.born, &mut r)
                .is_some()
            {
                continue;
            }
            p.targets.pop();
            p.room = None;
        }
        if let Some(p) = self.parked.take() {
            self.answer_parked(p, Ok(()), cx);
        }
        self.resume_held(cx);
        true
    }

    /// The one answer to a held publish: delivered or refused, and (for a stream's) stored or
    /// not; a store that failed says so first.
    fn answer_parked(&self, p: Parked, outcome: Result<(), Error>, cx: &mut Ctx<'_>) {
        match (p.stored, outcome) {
            (Some(stored), outcome) => {
                crate::streams::answer_when_stored(stored, p.id, outcome, self.mailbox.clone())
            }
            (None, Ok(())) if p.ack => self.ack_publish(p.id, cx),
            (None, Ok(())) => {}
            (None, Err(e)) => cx.send(&Frame::error(p.id, e.status(), e.message())),
        }
    }

    /// Handles the messages that arrived behind a held one, until one is held again.
    pub(super) fn resume_held(&mut self, cx: &mut Ctx<'_>) {
        while self.parked.is_none() {
            let Some(f) = self.held.pop_front() else {
                return;
            };
            self.on_frame(f, cx);
        }
    }
}
