//! The supervisor of a client's connection: reconnects with backoff when it is lost.

use super::connect::open;
use super::reactor::ClientReactor;
use super::{Shared, State};
use crate::conn::Driver;
use crate::error::Error;
use mitto_proto::Status;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub(super) async fn supervise(shared: Arc<Shared>, mut driver: Driver<ClientReactor>) {
    loop {
        let outcome = driver.run().await;
        let lost = match outcome {
            Ok(()) => Error::connection_lost("connection closed"),
            Err(e) => e,
        };
        if shared.closing.load(Ordering::Acquire) || !shared.opts.reconnect {
            shared.state.send_replace(State::Closed(lost));
            return;
        }
        tracing::info!(endpoint = %shared.endpoint, error = %lost, "connection lost, reconnecting");
        shared.state.send_replace(State::Connecting);
        let (min, max) = shared.opts.backoff;
        let mut wait = min;
        driver = loop {
            if shared.closing.load(Ordering::Acquire) {
                shared.state.send_replace(State::Closed(Error::new(
                    Status::CANCELLED,
                    "client closed",
                )));
                return;
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
                    let jitter = wait.mul_f64(fastrand::f64() * 0.5);
                    tokio::time::sleep(wait + jitter).await;
                    wait = (wait * 2).min(max);
                }
            }
        };
    }
}
