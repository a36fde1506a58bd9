//! Deadlines of many calls behind one timer per connection. Adding a deadline is a comparison;
//! finishing a call costs nothing here. When the earliest deadline noted passes, the owner sweeps
//! its calls once (expiring the overdue ones) and notes the next earliest.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Waker};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

pub(crate) struct Deadlines {
    earliest: Option<Instant>,
    timer: Pin<Box<Sleep>>,
}

impl Deadlines {
    pub(crate) fn new() -> Deadlines {
        Deadlines {
            earliest: None,
            timer: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
        }
    }

    /// A call with deadline `d` started.
    pub(crate) fn note(&mut self, d: Instant) {
        if self.earliest.is_none_or(|e| d < e) {
            self.earliest = Some(d);
        }
    }

    /// `Some(now)` when a sweep is due; otherwise the timer wakes `waker` when one is.
    pub(crate) fn due(&mut self, waker: &Waker) -> Option<Instant> {
        let e = self.earliest?;
        if self.timer.deadline() != e {
            self.timer.as_mut().reset(e);
        }
        let mut cx = Context::from_waker(waker);
        self.timer
            .as_mut()
            .poll(&mut cx)
            .is_ready()
            .then(Instant::now)
    }

    /// The sweep is done; `next` is the earliest deadline still pending.
    pub(crate) fn swept(&mut self, next: Option<Instant>) {
        self.earliest = next;
    }

    /// No calls are pending any more.
    pub(crate) fn clear(&mut self) {
        self.earliest = None;
    }
}
