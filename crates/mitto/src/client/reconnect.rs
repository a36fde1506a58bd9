//! The supervisor of a client's connection: reconnects with backoff when it is lost, and
//! closes the client for good when it may not (reconnect off, closed by the caller, or
//! `max_reconnects` attempts in a row failed).

use super::connect::open;
use super::reactor::ClientReactor;
use super::{Shared, State};
use crate::conn::Driver;
use crate::error::{CloseReason, Error};
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub(super) async fn supervise(shared: Arc<Shared>, mut driver: Driver<ClientReactor>) {
    loop {
        let outcome = driver.run().await;
        let lost = match outcome {
            Ok(()) => Error::connection_lost("connection closed"),
            Err(e) => e,
        };
        if shared.closing.load(Ordering::Acquire) {
            return close_for_good(
                &shared,
                CloseReason::ByCaller,
                "closed by the caller".into(),
            );
        }
        if !shared.opts.reconnect {
            let why = format!("{} (reconnect is off)", lost.message());
            return close_for_good(&shared, CloseReason::ReconnectOff, why);
        }
        tracing::info!(endpoint = %shared.endpoint, error = %lost, "connection lost, reconnecting");
        shared.state.send_replace(State::Connecting);
        let (min, max) = shared.opts.backoff;
        let mut wait = min;
        // Failed attempts since the loss: a successful one ends this loop, so each loss
        // starts from zero.
        let mut failed = 0u32;
        let mut last = lost;
        driver = loop {
            if shared.closing.load(Ordering::Acquire) {
                return close_for_good(
                    &shared,
                    CloseReason::ByCaller,
                    "closed by the caller".into(),
                );
            }
            if shared.opts.max_reconnects.is_some_and(|n| failed >= n) {
                let why = format!(
                    "gave up after {failed} failed reconnect attempts to {} (last: {})",
                    shared.endpoint,
                    last.message()
                );
                tracing::warn!(endpoint = %shared.endpoint, failed, error = %last, "giving up reconnecting");
                return close_for_good(&shared, CloseReason::ReconnectsExhausted, why);
            }
            match open(
                &shared.endpoint,
                &shared.opts,
                &shared.subs,
                &shared.session,
            )
            .await
            {
                Ok((d, conn, resumed)) => {
                    super::subscribe::resubscribe(&shared, &conn, resumed);
                    shared.state.send_replace(State::Up(conn));
                    break d;
                }
                Err(e) => {
                    tracing::debug!(endpoint = %shared.endpoint, error = %e, ?wait, "reconnect failed");
                    failed += 1;
                    last = e;
                    if shared.opts.max_reconnects.is_some_and(|n| failed >= n) {
                        continue; // gives up above, without waiting first
                    }
                    let jitter = wait.mul_f64(fastrand::f64() * 0.5);
                    tokio::time::sleep(wait + jitter).await;
                    wait = (wait * 2).min(max);
                }
            }
        };
    }
}

/// Closes the client for good: every later call fails with the error, and subscriptions end.
fn close_for_good(shared: &Shared, reason: CloseReason, why: String) {
    let e = Error::client_closed(reason, format!("client is closed: {why}"));
    // The state first: a subscriber that sees its stream end and calls again gets the error.
    shared.state.send_replace(State::Closed(e));
    // The records hold the last senders of the subscriptions' inboxes (the driver's went with
    // it), so dropping them ends every subscription after what it already received.
    let records = match shared.subs.lock() {
        Ok(mut t) => std::mem::take(&mut *t),
        Err(p) => std::mem::take(&mut *p.into_inner()),
    };
    drop(records);
}
