//! Latency mode: keep a runtime's thread polling its sockets for a while after traffic instead
//! of sleeping in the kernel between two messages.
//!
//! Waking a sleeping thread is most of a small message's trip on many machines (tens of
//! microseconds on a virtual machine, see BENCHMARKS.md); a thread that is still polling picks
//! the next message up at once. [`BusyPoll::run`] is a task that yields in a loop while any
//! connection that [`BusyPoll::touch`]es it has read within the window: the runtime then
//! checks its sockets without waiting between tasks, and the thread stays on its CPU. After a
//! quiet window it sleeps until the next read, so an idle process costs nothing.
//!
//! The price is one CPU kept busy while traffic flows (and for one window after it). It helps
//! where that runtime's thread is the one reading the sockets: a current-thread runtime (the
//! `mitto server --busy-poll-us` command runs the broker on one), or a thread of its own.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A busy-polling window shared by the connections of one runtime (see the module docs).
#[derive(Debug)]
pub struct BusyPoll {
    window: Duration,
    reads: AtomicU64,
    asleep: AtomicBool,
    wake: Notify,
    stop: AtomicBool,
}

impl BusyPoll {
    /// Polls for `window` after each read before sleeping.
    pub fn new(window: Duration) -> Arc<BusyPoll> {
        Arc::new(BusyPoll {
            window,
            reads: AtomicU64::new(0),
            asleep: AtomicBool::new(false),
            wake: Notify::new(),
            stop: AtomicBool::new(false),
        })
    }

    /// The polling window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Whether the poller is polling now (it sleeps after a quiet window, and before its first
    /// read).
    pub fn is_polling(&self) -> bool {
        !self.asleep.load(Ordering::SeqCst)
    }

    /// A connection read something: poll for another window (waking the poller if it sleeps).
    #[inline]
    pub fn touch(&self) {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if self.asleep.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    /// Ends [`BusyPoll::run`].
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// The polling task: spawn it on the runtime whose sockets should be polled.
    pub async fn run(self: Arc<Self>) {
        let mut seen = self.reads.load(Ordering::SeqCst);
        let mut active = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let now = self.reads.load(Ordering::Relaxed);
            if now != seen {
                seen = now;
                active = Instant::now();
            } else if active.elapsed() >= self.window {
                // Quiet for a window: sleep until the next read.
                let woken = self.wake.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                self.asleep.store(true, Ordering::SeqCst);
                if self.reads.load(Ordering::SeqCst) == seen && !self.stop.load(Ordering::SeqCst) {
                    woken.await;
                }
                self.asleep.store(false, Ordering::SeqCst);
                active = Instant::now();
                continue;
            }
            // Back of the queue: the runtime polls its sockets without waiting, runs what they
            // made ready, and comes back here.
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread", start_paused = false)]
    async fn it_polls_after_reads_sleeps_when_quiet_and_stops() {
        let bp = BusyPoll::new(Duration::from_millis(20));
        let task = tokio::spawn(bp.clone().run());
        // Quiet: after the window the poller sleeps (and lets the runtime sleep too).
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(
            bp.asleep.load(Ordering::SeqCst),
            "asleep after a quiet window"
        );
        bp.touch();
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert!(!bp.asleep.load(Ordering::SeqCst), "a read wakes it");
        bp.stop();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("it stops")
            .expect("no panic");
    }
}
