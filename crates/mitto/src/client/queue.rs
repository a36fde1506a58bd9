//! The command queue of a socket connection, kept in order with what callers write straight
//! for the driver.
//!
//! Unary calls and fire-and-forget publishes are encoded by their callers into the connection's
//! call table buffer ([`crate::client::calls`]), which the driver takes whole; every other command
//! (subscriptions, calls that need the driver's bookkeeping, large publishes, acknowledged
//! ones, flushes, close) goes through the bounded command queue. Both reach the socket in the
//! order they were made: before a command enters the queue, what was written into the buffer
//! so far enters it first (one `Encoded` command, under the table's lock), and the driver takes
//! the buffer only while the queue is empty (asked under the same lock). A frame written after
//! a command never leaves before it, and one written before it never after it.

use super::calls::Calls;
use crate::client::Cmd;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::{SendError, TrySendError};

/// The sending end of a connection's command queue (see the module docs).
#[derive(Clone)]
pub(crate) struct CmdTx {
    tx: mpsc::Sender<Cmd>,
    calls: Option<Arc<Calls>>,
}

impl CmdTx {
    /// `tx`'s capacity must be at least 2 (a command and what was written before it).
    pub(crate) fn new(tx: mpsc::Sender<Cmd>, calls: Option<Arc<Calls>>) -> CmdTx {
        CmdTx { tx, calls }
    }

    /// Whether the driver is gone.
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Queues `cmd` if there is room now (else gives it back, moved: the same as tokio's
    /// `Sender::try_send`, which this stands in for).
    #[allow(clippy::result_large_err)]
    pub(crate) fn try_send(&self, cmd: Cmd) -> Result<(), TrySendError<Cmd>> {
        let Some(calls) = &self.calls else {
            return self.tx.try_send(cmd);
        };
        let mut held = calls.hold();
        if !held.has_written() {
            return self.tx.try_send(cmd);
        }
        let mut permits = match self.tx.try_reserve_many(2) {
            Ok(permits) => permits,
            Err(TrySendError::Full(())) => return Err(TrySendError::Full(cmd)),
            Err(TrySendError::Closed(())) => return Err(TrySendError::Closed(cmd)),
        };
        let (Some(a), Some(b)) = (permits.next(), permits.next()) else {
            // Two permits were asked for: never here, and nothing is lost if it were.
            return Err(TrySendError::Full(cmd));
        };
        if let Some(bytes) = held.drain() {
            a.send(Cmd::Encoded(bytes));
        }
        b.send(cmd);
        Ok(())
    }

    /// Queues `cmd`, waiting for room.
    pub(crate) async fn send(&self, cmd: Cmd) -> Result<(), SendError<Cmd>> {
        let Some(calls) = &self.calls else {
            return self.tx.send(cmd).await;
        };
        let Ok(mut permits) = self.tx.reserve_many(2).await else {
            return Err(SendError(cmd));
        };
        let (Some(a), Some(b)) = (permits.next(), permits.next()) else {
            return Err(SendError(cmd));
        };
        let mut held = calls.hold();
        if let Some(bytes) = held.drain() {
            a.send(Cmd::Encoded(bytes));
        }
        b.send(cmd);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use mitto_proto::{Decoder, Frame, FrameType, Subject};
    use std::task::Context;
    use std::time::Duration;

    fn publish(n: u8) -> Frame {
        Frame::publish(Subject::literal("s").unwrap(), vec![n])
    }

    /// Each frame in `b`: a publish by its payload byte, a request by `0xEE`.
    fn frames(b: &Bytes) -> Vec<u8> {
        let mut buf = BytesMut::from(&b[..]);
        let mut d = Decoder::default();
        let mut out = Vec::new();
        while let Some(f) = d.decode(&mut buf).unwrap() {
            out.push(match f.frame_type {
                FrameType::Publish => f.payload[0],
                FrameType::Request => 0xEE,
                other => panic!("unexpected {other:?}"),
            });
        }
        out
    }

    /// What the driver would send, in order: commands from the queue first (an `Encoded` one
    /// by its frames, any other as `0xFF`), then the table's buffer while the queue is empty.
    fn drive(rx: &mut mpsc::Receiver<Cmd>, calls: &Calls) -> Vec<u8> {
        let waker = futures_util::task::noop_waker();
        let mut sent = Vec::new();
        loop {
            while let Ok(cmd) = rx.try_recv() {
                match cmd {
                    Cmd::Encoded(b) => sent.extend(frames(&b)),
                    _ => sent.push(0xFF),
                }
            }
            match calls.take(&waker, || !rx.is_empty()) {
                Some(t) => sent.extend(frames(&t.bytes)),
                None if rx.is_empty() => return sent,
                None => {}
            }
        }
    }

    #[tokio::test]
    async fn a_command_leaves_after_what_was_written_before_it_and_before_what_came_after() {
        let (tx, mut rx) = mpsc::channel(8);
        let calls = Arc::new(Calls::new(16));
        let q = CmdTx::new(tx, Some(calls.clone()));
        let waker = futures_util::task::noop_waker();
        let cx = Context::from_waker(&waker);
        assert!(calls.publish(publish(1).as_ref()));
        let request = Frame::request(0, Subject::literal("m").unwrap(), Bytes::new());
        calls
            .start(request.as_ref(), Duration::from_secs(5), &cx)
            .unwrap();
        q.try_send(Cmd::Close).unwrap();
        // What the driver does when it takes the `Encoded` command: the request in it gets
        // its deadline then, once.
        assert!(calls.stamp().is_some());
        assert!(calls.stamp().is_none());
        assert!(calls.publish(publish(3).as_ref()));
        q.send(Cmd::Close).await.unwrap();
        q.send(Cmd::Close).await.unwrap();
        assert!(calls.publish(publish(4).as_ref()));
        assert_eq!(drive(&mut rx, &calls), [1, 0xEE, 0xFF, 3, 0xFF, 0xFF, 4]);
    }

    #[tokio::test]
    async fn the_buffer_waits_while_commands_before_it_are_queued() {
        let (tx, mut rx) = mpsc::channel(8);
        let calls = Arc::new(Calls::new(16));
        let q = CmdTx::new(tx, Some(calls.clone()));
        q.try_send(Cmd::Close).unwrap();
        assert!(calls.publish(publish(1).as_ref()));
        let waker = futures_util::task::noop_waker();
        assert!(
            calls.take(&waker, || !rx.is_empty()).is_none(),
            "the command is still queued"
        );
        assert!(matches!(rx.try_recv(), Ok(Cmd::Close)));
        let t = calls
            .take(&waker, || !rx.is_empty())
            .expect("now the publish");
        assert_eq!(frames(&t.bytes), [1]);
    }

    #[tokio::test]
    async fn a_full_buffer_or_queue_is_refused_without_losing_anything() {
        let (tx, mut rx) = mpsc::channel(2);
        let calls = Arc::new(Calls::new(2));
        let q = CmdTx::new(tx, Some(calls.clone()));
        assert!(calls.publish(publish(1).as_ref()));
        assert!(calls.publish(publish(2).as_ref()));
        assert!(!calls.publish(publish(3).as_ref()), "two frames at most");
        q.try_send(Cmd::Close).unwrap();
        let big = Frame::publish(Subject::literal("s").unwrap(), vec![0u8; 512 * 1024]);
        assert!(!calls.publish(big.as_ref()), "over the byte bound");
        // The queue holds the two publishes (one command) and the command: no room for another
        // pair.
        assert!(calls.publish(publish(5).as_ref()));
        match q.try_send(Cmd::Close) {
            Err(TrySendError::Full(Cmd::Close)) => {}
            _ => panic!("the queue is full and the command comes back"),
        }
        assert_eq!(drive(&mut rx, &calls), [1, 2, 0xFF, 5]);
        calls.close(&crate::Error::connection_lost("gone"));
        assert!(!calls.publish(publish(6).as_ref()), "closed");
    }
}
