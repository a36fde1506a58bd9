//! Graceful shutdown: the broker stops accepting connections and publishes (a PUBLISH is
//! refused with UNAVAILABLE, so its publisher still holds it), then sends every connection what
//! it holds for it and waits for the acknowledgements of at-least-once deliveries, for at most
//! `shutdown_drain_ms`; each connection closes with CLOSE OK once it has nothing left. When the
//! time runs out, the connections still open close with CLOSE UNAVAILABLE naming how many
//! messages they did not get (also logged, and counted in `shutdown_undelivered`), as are the
//! messages kept for detached sessions and durable subscriptions, which a broker without
//! durable storage loses when it stops.

use crate::core::Core;
use crate::mailbox::Mailbox;
use crate::shared::BrokerCmd;
use mitto::__private::conn::Ctx;
use mitto::proto::Status;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long connections get, after the drain time, to send their CLOSE.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Drains and closes every connection (see the module's description).
pub(crate) async fn shutdown(core: &Arc<Core>) {
    core.stop();
    let drain = Duration::from_millis(core.cfg.shutdown_drain_ms);
    let deadline = Instant::now() + drain;
    for c in open(core) {
        let _ = c.send(BrokerCmd::Drain);
    }
    if !all_closed(core, deadline).await {
        for c in open(core) {
            let _ = c.send(BrokerCmd::DrainDeadline);
        }
        all_closed(core, Instant::now() + CLOSE_GRACE).await;
    }
    let kept: usize = core
        .durables
        .kept()
        .iter()
        .map(|m| m.outstanding())
        .sum::<usize>()
        + core.detached_outstanding();
    if kept > 0 {
        core.stats
            .shutdown_undelivered
            .fetch_add(kept as u64, Ordering::Relaxed);
        tracing::warn!(
            messages = kept,
            "broker stopped with messages kept for detached sessions and durable subscriptions: lost"
        );
    }
    let undelivered = core.stats.shutdown_undelivered.load(Ordering::Relaxed);
    tracing::info!(undelivered, "broker stopped");
}

fn open(core: &Core) -> Vec<tokio::sync::mpsc::UnboundedSender<BrokerCmd>> {
    core.conns.controls()
}

/// Waits until every connection has ended, or `until`; true if they all did.
async fn all_closed(core: &Core, until: Instant) -> bool {
    loop {
        if core.stats.connections_open.load(Ordering::Relaxed) == 0 {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// While draining: closes the connection once its mailbox holds nothing (nothing queued,
/// nothing waiting for an acknowledgement) and no publish of its is held.
pub(crate) fn close_if_drained(mailbox: &Mailbox, held_publish: bool, cx: &mut Ctx<'_>) {
    if !held_publish && mailbox.outstanding() == 0 {
        cx.close(Status::OK, "broker shutting down");
    }
}

/// The drain time ran out: closes now, saying (and counting, and logging) what the connection
/// did not get.
pub(crate) fn close_undrained(core: &Core, conn: u64, mailbox: &Mailbox, cx: &mut Ctx<'_>) {
    let n = mailbox.outstanding();
    if n == 0 {
        return cx.close(Status::OK, "broker shutting down");
    }
    core.stats
        .shutdown_undelivered
        .fetch_add(n as u64, Ordering::Relaxed);
    let ms = core.cfg.shutdown_drain_ms;
    tracing::warn!(
        conn,
        undelivered = n,
        drain_ms = ms,
        "shutdown drain time ran out before this connection got everything"
    );
    cx.close(
        Status::UNAVAILABLE,
        format!(
            "broker shutting down: the drain time of {ms} ms ran out with {n} message(s) not delivered or not acknowledged"
        ),
    );
}
