//! The broker's table of open connections, for what reaches every connection: shutdown,
//! redelivery sweeps and monitoring. A connection enters it once admitted and leaves it when
//! it ends (unless a resumed session took its id over meanwhile).

use crate::mailbox::Mailbox;
use crate::shared::Waker;
use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};

/// What the broker knows of a connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// Its driver's control queue.
    pub(crate) ctl: Waker,
    pub(crate) mailbox: Arc<Mailbox>,
    /// Bytes waiting in the driver's outbox.
    pub(crate) backlog: Arc<AtomicUsize>,
    pub(crate) peer: String,
    pub(crate) name: String,
    pub(crate) user: String,
}

/// The open connections, by id.
#[derive(Default)]
pub(crate) struct Connections(Mutex<HashMap<u64, ConnInfo>>);

impl Connections {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, ConnInfo>> {
        // A map of handles: a panic elsewhere cannot leave it half-changed.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enters connection `id` (a resumed session's id replaces its lost connection's entry).
    pub(crate) fn insert(&self, id: u64, info: ConnInfo) {
        self.lock().insert(id, info);
    }

    /// Takes connection `id` out, if the entry is still the one whose driver listens on `ctl`.
    pub(crate) fn remove(&self, id: u64, ctl: &Waker) {
        let mut c = self.lock();
        if c.get(&id).is_some_and(|i| i.ctl.same_channel(ctl)) {
            c.remove(&id);
        }
    }

    /// Every connection, with its id.
    pub(crate) fn list(&self) -> Vec<(u64, ConnInfo)> {
        self.lock().iter().map(|(id, i)| (*id, i.clone())).collect()
    }

    /// Every connection's mailbox.
    pub(crate) fn mailboxes(&self) -> Vec<Arc<Mailbox>> {
        self.lock().values().map(|i| i.mailbox.clone()).collect()
    }

    /// Every connection's control queue.
    pub(crate) fn controls(&self) -> Vec<Waker> {
        self.lock().values().map(|i| i.ctl.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> (
        ConnInfo,
        tokio::sync::mpsc::UnboundedReceiver<crate::shared::BrokerCmd>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mailbox = Arc::new(Mailbox::new(tx.clone(), 1024, Default::default()));
        let i = ConnInfo {
            ctl: tx,
            mailbox,
            backlog: Arc::default(),
            peer: "p".into(),
            name: "n".into(),
            user: String::new(),
        };
        (i, rx)
    }

    #[test]
    fn a_connection_leaves_only_its_own_entry() {
        let c = Connections::default();
        let (lost, _rx1) = info();
        let lost_ctl = lost.ctl.clone();
        c.insert(7, lost);
        // A resumed session takes id 7 over before the lost connection's task ends.
        let (resumed, _rx2) = info();
        let resumed_ctl = resumed.ctl.clone();
        c.insert(7, resumed);
        c.remove(7, &lost_ctl);
        assert_eq!(c.list().len(), 1, "the resumed one stays");
        assert_eq!(c.mailboxes().len(), 1);
        assert!(c.controls()[0].same_channel(&resumed_ctl));
        c.remove(7, &resumed_ctl);
        assert!(c.list().is_empty());
    }
}
