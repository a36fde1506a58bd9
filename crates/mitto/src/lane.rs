//! A batch queue of commands for a connection's driver (see [`Lane`]).

use std::task::Waker;

/// A bounded queue of commands that the driver takes whole: a sender pushes under a lock
/// (waking the driver only when the queue was empty), the driver swaps the queue for an empty
/// one. Cheaper per command than a channel when many commands arrive between two turns of the
/// driver (pipelined calls); a sender that finds it full or closed uses the channel instead.
pub(crate) struct Lane<T> {
    items: std::sync::Mutex<LaneItems<T>>,
    waker: futures_util::task::AtomicWaker,
    cap: usize,
}

struct LaneItems<T> {
    queued: Vec<T>,
    closed: bool,
}

impl<T> Lane<T> {
    pub(crate) fn new(cap: usize) -> Lane<T> {
        Lane {
            items: std::sync::Mutex::new(LaneItems {
                queued: Vec::new(),
                closed: false,
            }),
            waker: futures_util::task::AtomicWaker::new(),
            cap: cap.max(1),
        }
    }

    /// Queues `item`; gives it back if the lane is full or closed.
    pub(crate) fn push(&self, item: T) -> Result<(), T> {
        let Ok(mut q) = self.items.lock() else {
            return Err(item);
        };
        if q.closed || q.queued.len() >= self.cap {
            return Err(item);
        }
        let was_empty = q.queued.is_empty();
        q.queued.push(item);
        drop(q);
        if was_empty {
            self.waker.wake();
        }
        Ok(())
    }

    /// Swaps everything queued into `out` (which must be empty); `waker` is woken by the next
    /// push into the emptied lane.
    pub(crate) fn take(&self, waker: &Waker, out: &mut Vec<T>) {
        self.waker.register(waker);
        if let Ok(mut q) = self.items.lock() {
            std::mem::swap(&mut q.queued, out);
        }
    }

    /// Refuses further pushes; returns what was still queued.
    pub(crate) fn close(&self) -> Vec<T> {
        match self.items.lock() {
            Ok(mut q) => {
                q.closed = true;
                std::mem::take(&mut q.queued)
            }
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Counts its wakes.
    struct CountWake(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn lane_hands_over_in_order_wakes_once_per_batch_and_refuses_when_full_or_closed() {
        let lane = Lane::new(3);
        let count = Arc::new(CountWake(std::sync::atomic::AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let wakes = || count.0.load(std::sync::atomic::Ordering::SeqCst);
        let mut out = Vec::new();
        lane.take(&waker, &mut out);
        assert!(out.is_empty());
        assert_eq!(lane.push(1), Ok(()));
        assert_eq!(
            wakes(),
            1,
            "the first push into an empty lane wakes the driver"
        );
        assert_eq!(lane.push(2), Ok(()));
        assert_eq!(lane.push(3), Ok(()));
        assert_eq!(wakes(), 1, "pushes behind it do not");
        assert_eq!(lane.push(4), Err(4), "full at its capacity");
        lane.take(&waker, &mut out);
        assert_eq!(out, vec![1, 2, 3]);
        out.clear();
        assert_eq!(lane.push(5), Ok(()));
        assert_eq!(wakes(), 2, "the emptied lane wakes again");
        assert_eq!(lane.close(), vec![5], "closing gives back what was queued");
        assert_eq!(lane.push(6), Err(6), "a closed lane refuses");
    }
}
