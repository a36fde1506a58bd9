//! Waiting for a sequence to be appended: how a caught-up reader learns there is more to read
//! without polling.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::StoreError;

/// A wait: the sequence, and where to say it is there.
type Wait = (u64, flume::Sender<u64>);

/// Who waits for which sequence. The writer fires them after each published batch.
#[derive(Debug, Default, Clone)]
pub(crate) struct Waiters(Arc<Mutex<Vec<Wait>>>);

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, Vec<Wait>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a wait for `seq`; `last` reads the last durable sequence (and whether the
    /// stream is closed) under the waiters' lock, so an append published meanwhile is never
    /// missed.
    pub(crate) fn register(&self, seq: u64, last: impl FnOnce() -> (u64, bool)) -> SeqWaiter {
        let (tx, rx) = flume::bounded(1);
        let mut w = self.lock();
        let (l, closed) = last();
        if l >= seq {
            let _ = tx.send(l);
        } else if !closed {
            w.retain(|(_, t)| !t.is_disconnected());
            w.push((seq, tx));
        }
        SeqWaiter { rx }
    }

    /// Fires every wait for a sequence at or below `last`.
    pub(crate) fn fire(&self, last: u64) {
        let mut w = self.lock();
        if w.is_empty() {
            return;
        }
        w.retain(|(seq, tx)| {
            if *seq <= last {
                let _ = tx.send(last);
                false
            } else {
                !tx.is_disconnected()
            }
        });
    }

    /// Ends every wait: the stream is closed.
    pub(crate) fn close(&self) {
        self.lock().clear();
    }
}

/// Fires once the stream's last durable sequence reaches the one waited for
/// ([`Stream::wait_for`](crate::Stream::wait_for)); dropping it cancels the wait.
#[derive(Debug)]
#[must_use]
pub struct SeqWaiter {
    rx: flume::Receiver<u64>,
}

impl SeqWaiter {
    /// Blocks until then; returns the last durable sequence.
    pub fn wait(self) -> Result<u64, StoreError> {
        self.rx.recv().map_err(|_| StoreError::Closed)
    }

    /// Blocks at most `timeout`; `Ok(None)` if it passed first.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<u64>, StoreError> {
        match self.rx.recv_timeout(timeout) {
            Ok(l) => Ok(Some(l)),
            Err(flume::RecvTimeoutError::Timeout) => Ok(None),
            Err(flume::RecvTimeoutError::Disconnected) => Err(StoreError::Closed),
        }
    }

    /// Waits without blocking a thread (from async code).
    pub async fn wait_async(self) -> Result<u64, StoreError> {
        self.rx.recv_async().await.map_err(|_| StoreError::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_fire_at_their_sequence_and_end_on_close() {
        let w = Waiters::default();
        assert_eq!(w.register(3, || (5, false)).wait().unwrap(), 5);
        let a = w.register(6, || (5, false));
        let b = w.register(8, || (5, false));
        w.fire(7);
        assert_eq!(a.wait_timeout(Duration::ZERO).unwrap(), Some(7));
        assert_eq!(b.wait_timeout(Duration::ZERO).unwrap(), None);
        drop(b);
        w.fire(7);
        assert!(w.lock().is_empty(), "a dropped wait is forgotten");
        let c = w.register(9, || (5, false));
        w.close();
        assert!(matches!(c.wait(), Err(StoreError::Closed)));
        assert!(matches!(
            w.register(9, || (5, true)).wait(),
            Err(StoreError::Closed)
        ));
    }
}
