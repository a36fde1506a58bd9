//! The mailbox without a connection: policies of a full subscription, the unacknowledged
//! bound, and what a resumed session gets back. In-process reads (`pop_local`) stand in for
//! the driver.

use super::*;
use mitto::proto::{SlowConsumerPolicy, Subject};
use std::task::{Context, Poll, Waker as TaskWaker};
use std::time::Duration;

fn mailbox(max_bytes: usize) -> (Mailbox, tokio::sync::mpsc::UnboundedReceiver<BrokerCmd>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (Mailbox::new(tx, max_bytes, Default::default()), rx)
}

fn queue(max: usize, policy: SlowConsumerPolicy) -> SubQueue {
    SubQueue::new("t".into(), None, 0, max, policy)
}

fn event(id: u64, size: usize) -> Frame {
    Frame::event(1, id, Subject::new("t").unwrap(), vec![id as u8; size])
}

/// What an in-process reader of `sid` takes now: the ids, or `None` if it would wait.
fn pop(m: &Mailbox, sid: u32) -> Option<Vec<u64>> {
    let mut cx = Context::from_waker(TaskWaker::noop());
    let mut out = VecDeque::new();
    match m.pop_local(sid, &mut cx, &mut out, 100) {
        Poll::Ready(LocalPop::Got(..)) => Some(out.iter().map(|f| f.id).collect()),
        Poll::Ready(LocalPop::Ended) => Some(Vec::new()),
        Poll::Pending => None,
    }
}

#[test]
fn a_full_subscription_applies_its_policy() {
    let (m, _rx) = mailbox(1 << 20);
    m.add_sub(1, queue(2, SlowConsumerPolicy::DropOldest));
    m.add_sub(2, queue(2, SlowConsumerPolicy::DropNewest));
    m.add_sub(3, queue(2, SlowConsumerPolicy::Block));
    m.add_sub(4, queue(2, SlowConsumerPolicy::Disconnect));
    for sid in 1..=4 {
        for id in 1..=2 {
            assert_eq!(m.push_event(sid, event(id, 10), None), Pushed::Queued);
        }
    }
    assert_eq!(m.push_event(1, event(3, 10), None), Pushed::DroppedOldest);
    assert_eq!(m.push_event(2, event(3, 10), None), Pushed::DroppedNewest);
    assert!(matches!(m.push_event(3, event(3, 10), None), Pushed::Rejected(f) if f.id == 3));
    assert!(matches!(m.push_event(4, event(3, 10), None), Pushed::Disconnected(f) if f.id == 3));
    assert!(matches!(
        m.push_event(9, event(3, 10), None),
        Pushed::Gone(_)
    ));
    m.set_local(true);
    assert_eq!(pop(&m, 1), Some(vec![2, 3]));
    assert_eq!(pop(&m, 2), Some(vec![1, 2]));
    assert_eq!(
        pop(&m, 4),
        Some(vec![1, 2]),
        "still there: the core ends it"
    );
}

#[test]
fn the_byte_bound_holds_for_the_whole_mailbox() {
    let one = event(1, 100).encoded_len();
    let (m, _rx) = mailbox(2 * one);
    m.add_sub(1, queue(100, SlowConsumerPolicy::DropNewest));
    m.add_sub(2, queue(100, SlowConsumerPolicy::DropNewest));
    assert_eq!(m.push_event(1, event(1, 100), None), Pushed::Queued);
    assert_eq!(m.push_event(2, event(2, 100), None), Pushed::Queued);
    assert_eq!(m.push_event(1, event(3, 100), None), Pushed::DroppedNewest);
    assert_eq!(m.queued_bytes().0, 2 * one);
}

#[test]
fn past_the_unacknowledged_bound_deliveries_wait_for_acks() {
    let one = event(1, 1000).encoded_len();
    let (m, _rx) = mailbox(1 << 20);
    let m = m.with_max_unacked(2 * one);
    let sq = queue(100, SlowConsumerPolicy::DropOldest)
        .with_acks(subqueue::AckState::new(Duration::from_secs(60), 0));
    m.add_sub(1, sq);
    m.set_local(true);
    for id in 1..=5 {
        m.push_event(1, event(id, 1000), None);
    }
    assert_eq!(pop(&m, 1), Some(vec![1, 2]), "two fill the bound");
    assert_eq!(m.unacked_bytes(), 2 * one);
    assert_eq!(pop(&m, 1), None, "held back, nothing dropped");
    assert!(!m.ack(1, 99), "an unknown id changes nothing");
    assert!(m.ack(1, 1));
    assert_eq!(pop(&m, 1), Some(vec![3]));
    assert!(m.nack(1, 2, None), "asked again: it goes back to the queue");
    assert!(m.ack(1, 3));
    assert_eq!(pop(&m, 1), Some(vec![2, 4]));
    assert_eq!(m.outstanding(), 3, "two unacknowledged, one queued");
    m.remove_sub(1);
    assert_eq!(
        m.unacked_bytes(),
        0,
        "an ended subscription takes its count along"
    );
}

#[test]
fn a_resumed_mailbox_sends_what_was_not_acknowledged_first() {
    let (m, _rx) = mailbox(1 << 20);
    let sq = queue(100, SlowConsumerPolicy::DropOldest)
        .with_acks(subqueue::AckState::new(Duration::from_secs(60), 0));
    m.add_sub(1, sq);
    m.set_local(true);
    m.push_event(1, event(1, 10), None);
    m.push_event(1, event(2, 10), None);
    assert_eq!(pop(&m, 1), Some(vec![1, 2]));
    m.push_event(1, event(3, 10), None);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    m.set_waker(tx);
    assert_eq!(m.unacked_bytes(), 0);
    assert!(
        matches!(rx.try_recv(), Ok(BrokerCmd::Wake)),
        "woken at once"
    );
    assert_eq!(
        pop(&m, 1),
        Some(vec![1, 2, 3]),
        "in order, unacknowledged first"
    );
}
