//! The queue between a connection's driver and one of its subscriptions: bounded, with one
//! receiver that takes everything queued in one swap.
//!
//! A tokio channel pays a semaphore, a linked block list and a waker per message on both sides
//! (about a fifth of a subscribing client's time in the `pubsub` benchmark). Here the driver
//! pays one uncontended lock per message and wakes the subscriber only when it waits; the
//! subscriber takes the whole queue under one lock and reads it without any.
//!
//! Senders are counted like a channel's: when the last [`InboxTx`] is dropped (the driver
//! forgot the subscription and the client's record of it is gone), the receiver ends after
//! what was queued.

use crate::client::Message;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Why a message was not queued.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The queue holds its capacity.
    Full,
    /// The receiver is gone.
    Closed,
}

struct State {
    msgs: VecDeque<Message>,
    waker: Option<Waker>,
    senders_gone: bool,
    receiver_gone: bool,
}

struct Shared {
    state: Mutex<State>,
    capacity: usize,
    senders: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing here can leave the queue half-changed: keep going after a panic elsewhere.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A bounded queue of `capacity` messages.
pub(crate) fn inbox(capacity: usize) -> (InboxTx, InboxRx) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            msgs: VecDeque::new(),
            waker: None,
            senders_gone: false,
            receiver_gone: false,
        }),
        capacity: capacity.max(1),
        senders: AtomicUsize::new(1),
    });
    (
        InboxTx(shared.clone()),
        InboxRx {
            shared,
            batch: VecDeque::new(),
        },
    )
}

/// The sending end (cloned for the driver and the client's record of the subscription).
pub(crate) struct InboxTx(Arc<Shared>);

impl InboxTx {
    /// Queues `m` unless the queue is full or the receiver is gone.
    pub(crate) fn try_send(&self, m: Message) -> Result<(), Refused> {
        let mut s = self.0.lock();
        if s.receiver_gone {
            return Err(Refused::Closed);
        }
        if s.msgs.len() >= self.0.capacity {
            return Err(Refused::Full);
        }
        s.msgs.push_back(m);
        let w = s.waker.take();
        drop(s);
        if let Some(w) = w {
            w.wake();
        }
        Ok(())
    }

    /// Wakes the receiver without a message (something else changed for it).
    pub(crate) fn wake(&self) {
        let w = self.0.lock().waker.take();
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Room left in the queue.
    pub(crate) fn capacity(&self) -> usize {
        self.0.capacity.saturating_sub(self.0.lock().msgs.len())
    }
}

impl Clone for InboxTx {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::Relaxed);
        InboxTx(self.0.clone())
    }
}

impl Drop for InboxTx {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let mut s = self.0.lock();
        s.senders_gone = true;
        let w = s.waker.take();
        drop(s);
        if let Some(w) = w {
            w.wake();
        }
    }
}

/// The receiving end.
pub(crate) struct InboxRx {
    shared: Arc<Shared>,
    /// Taken from the queue, not yet received.
    batch: VecDeque<Message>,
}

impl InboxRx {
    /// The next message; `None` once every sender is gone and nothing is left.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        if let Some(m) = self.batch.pop_front() {
            return Poll::Ready(Some(m));
        }
        let mut s = self.shared.lock();
        if !s.msgs.is_empty() {
            std::mem::swap(&mut s.msgs, &mut self.batch);
            drop(s);
            return Poll::Ready(self.batch.pop_front());
        }
        if s.senders_gone {
            return Poll::Ready(None);
        }
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for InboxRx {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        s.receiver_gone = true;
        s.msgs.clear();
        s.waker = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::task::noop_waker_ref;
    use mitto_proto::{Frame, Subject};

    fn msg(n: u8) -> Message {
        let f = Frame::event(1, u64::from(n), Subject::literal("a.b").unwrap(), vec![n]);
        Message::from_event(f)
    }

    fn recv(rx: &mut InboxRx) -> Poll<Option<u8>> {
        let mut cx = Context::from_waker(noop_waker_ref());
        rx.poll_recv(&mut cx).map(|m| m.map(|m| m.payload()[0]))
    }

    #[test]
    fn messages_arrive_in_order_up_to_the_capacity() {
        let (tx, mut rx) = inbox(3);
        for n in 0..3 {
            tx.try_send(msg(n)).unwrap();
        }
        assert!(matches!(tx.try_send(msg(9)), Err(Refused::Full)));
        assert_eq!(tx.capacity(), 0);
        assert_eq!(recv(&mut rx), Poll::Ready(Some(0)));
        // The rest were taken with the first: the queue has room again.
        assert_eq!(tx.capacity(), 3);
        tx.try_send(msg(3)).unwrap();
        let got: Vec<_> = (0..3).map(|_| recv(&mut rx)).collect();
        assert_eq!(
            got,
            [
                Poll::Ready(Some(1)),
                Poll::Ready(Some(2)),
                Poll::Ready(Some(3))
            ]
        );
        assert_eq!(recv(&mut rx), Poll::Pending);
    }

    #[test]
    fn the_receiver_ends_when_the_last_sender_goes_and_wakes() {
        let (tx, mut rx) = inbox(4);
        let tx2 = tx.clone();
        tx.try_send(msg(1)).unwrap();
        drop(tx);
        assert_eq!(recv(&mut rx), Poll::Ready(Some(1)));
        let woken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        struct Flag(Arc<std::sync::atomic::AtomicBool>);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let waker = Waker::from(Arc::new(Flag(woken.clone())));
        let mut cx = Context::from_waker(&waker);
        assert!(rx.poll_recv(&mut cx).is_pending());
        drop(tx2);
        assert!(
            woken.load(Ordering::SeqCst),
            "the waiting receiver is woken"
        );
        assert_eq!(recv(&mut rx), Poll::Ready(None));
    }

    #[test]
    fn a_gone_receiver_refuses_and_frees_what_was_queued() {
        let (tx, rx) = inbox(4);
        let payload = Bytes::from(vec![1u8; 8]);
        let f = Frame::event(1, 1, Subject::literal("a").unwrap(), payload.clone());
        tx.try_send(Message::from_event(f)).unwrap();
        drop(rx);
        assert!(
            payload.is_unique(),
            "the queued message was dropped with the receiver"
        );
        assert!(matches!(tx.try_send(msg(2)), Err(Refused::Closed)));
    }
}
