//! What every backend provides (a link to publish on and a session that runs the way in), and
//! the loop that keeps a backend connected: reconnect with backoff, state and counters.

use crate::config::BridgeConfig;
use crate::envelope::Envelope;
use crate::mapping::Rule;
use crate::stats::{bump, State, Stats};
use futures_util::future::BoxFuture;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// What a bridge's tasks share.
pub(crate) struct Ctx {
    pub(crate) cfg: BridgeConfig,
    /// This bridge's origin header value.
    pub(crate) origin: String,
    pub(crate) stats: Arc<Stats>,
    pub(crate) mitto: mitto::Client,
    /// Rules of the mappings into mitto.
    pub(crate) inbound: Vec<Rule>,
    /// Rules of the mappings out of mitto, each with whether a way in of this bridge could take
    /// back what it carries out (then it carries the origin header).
    pub(crate) outbound: Vec<(Rule, bool)>,
    pub(crate) stop: watch::Receiver<bool>,
}

impl Ctx {
    pub(crate) async fn stopped(&self) {
        let mut stop = self.stop.clone();
        let _ = stop.wait_for(|s| *s).await;
    }
}

/// Resolves once the backend confirmed every message of one batch; an error when it did not
/// confirm them all.
pub(crate) type Confirm = BoxFuture<'static, Result<(), String>>;

/// A connected backend's way of taking messages.
pub(crate) trait Link: Clone + Send + Sync + 'static {
    /// Hands `batch` to the backend, in order and after the batches before; the returned future
    /// resolves once the backend confirmed every message of it.
    fn send(&self, batch: &[Envelope]) -> impl Future<Output = Result<Confirm, String>> + Send;
    /// Marks the connection broken, so that it is made again.
    fn trip(&self);
}

/// A connected backend's session: runs the way in until the connection fails (the reason), and
/// closes the connection when dropped.
pub(crate) type Session = BoxFuture<'static, String>;

/// A backend that can be connected.
pub(crate) trait Backend: Send + Sync + 'static {
    type Link: Clone + Send + Sync + 'static;
    fn connect(
        &self,
        ctx: Arc<Ctx>,
    ) -> impl Future<Output = Result<(Self::Link, Session), String>> + Send;
}

/// A flag a link raises when it finds its connection broken.
#[derive(Clone, Default)]
pub(crate) struct Trip(Arc<(AtomicBool, Notify)>);

impl Trip {
    pub(crate) fn trip(&self) {
        self.0 .0.store(true, Ordering::Release);
        self.0 .1.notify_waiters();
    }
    pub(crate) async fn tripped(&self) {
        loop {
            let n = self.0 .1.notified();
            if self.0 .0.load(Ordering::Acquire) {
                return;
            }
            n.await;
        }
    }
}

/// The wait before reconnect attempt `n` (0-based): doubling from the minimum up to the
/// maximum, with up to a quarter of jitter so that bridges do not retry in step.
pub(crate) fn backoff(cfg: &BridgeConfig, n: u32) -> Duration {
    let base = cfg
        .backoff_min_ms
        .saturating_mul(1u64 << n.min(20))
        .min(cfg.backoff_max_ms);
    Duration::from_millis(base + fastrand::u64(0..=base / 4))
}

/// Keeps `backend` connected until the bridge stops, publishing the current link (or none)
/// for the way out.
pub(crate) async fn supervise<B: Backend>(
    ctx: Arc<Ctx>,
    backend: B,
    links: watch::Sender<Option<B::Link>>,
) {
    let connect_timeout = Duration::from_millis(ctx.cfg.confirm_timeout_ms.max(1_000));
    let mut failures = 0u32;
    let mut connected_before = false;
    loop {
        if *ctx.stop.borrow() {
            break;
        }
        ctx.stats.set_state(State::Connecting);
        let attempt = tokio::select! {
            _ = ctx.stopped() => break,
            r = tokio::time::timeout(connect_timeout, backend.connect(ctx.clone())) => r,
        };
        match attempt {
            Ok(Ok((link, session))) => {
                if connected_before {
                    bump(&ctx.stats.reconnects);
                }
                connected_before = true;
                failures = 0;
                ctx.stats.set_state(State::Up);
                tracing::info!(bridge = %ctx.cfg.name, "backend connected");
                let _ = links.send(Some(link));
                let reason = tokio::select! {
                    _ = ctx.stopped() => None,
                    r = session => Some(r),
                };
                let _ = links.send(None);
                match reason {
                    Some(r) => ctx.stats.error(format!("connection lost: {r}")),
                    None => break,
                }
            }
            Ok(Err(e)) => ctx.stats.error(format!("connect: {e}")),
            Err(_) => ctx.stats.error("connect: timed out"),
        }
        ctx.stats.set_state(State::Down);
        let wait = backoff(&ctx.cfg, failures);
        failures = failures.saturating_add(1);
        tokio::select! {
            _ = ctx.stopped() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    let _ = links.send(None);
    ctx.stats.set_state(State::Stopped);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Kind;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let mut cfg = BridgeConfig::new("b", Kind::Nats, "nats://127.0.0.1:4222");
        cfg.backoff_min_ms = 100;
        cfg.backoff_max_ms = 1_000;
        let ms = |n| backoff(&cfg, n).as_millis() as u64;
        assert!((100..=125).contains(&ms(0)));
        assert!((200..=250).contains(&ms(1)));
        assert!((800..=1_000).contains(&ms(3)));
        assert!((1_000..=1_250).contains(&ms(4)));
        assert!((1_000..=1_250).contains(&ms(60)));
    }

    #[tokio::test]
    async fn a_trip_wakes_a_waiter_and_stays_raised() {
        let t = Trip::default();
        let w = tokio::spawn({
            let t = t.clone();
            async move { t.tripped().await }
        });
        tokio::task::yield_now().await;
        t.trip();
        w.await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), t.tripped())
            .await
            .unwrap();
    }
}
