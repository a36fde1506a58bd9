//! The way in: one message from the backend published to mitto with the broker's ACK, so that
//! the backend is acknowledged only once mitto accepted it.

use crate::envelope::Envelope;
use crate::link::Ctx;
use crate::stats::{add, bump};
use mitto::PublishOptions;

/// What became of a message from the backend.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    /// mitto accepted it: acknowledge it to the backend.
    Accepted,
    /// Not for mitto (this bridge sent it, or its name has no mitto subject): acknowledge it
    /// to the backend too, so that it is not delivered again.
    Skipped,
    /// mitto refused it or did not answer: the backend should deliver it again.
    Refused,
}

/// Publishes `env` to mitto and waits for the broker's ACK.
pub(crate) async fn deliver(ctx: &Ctx, env: Envelope) -> Fate {
    if env.origin() == Some(ctx.origin.as_bytes()) {
        bump(&ctx.stats.loops_prevented);
        return Fate::Skipped;
    }
    let subject = match ctx
        .inbound
        .iter()
        .find_map(|r| r.to_mitto(&env.name).transpose())
    {
        Some(Ok(s)) => s,
        other => {
            bump(&ctx.stats.unmappable);
            if let Some(Err(e)) = other {
                tracing::debug!(bridge = %ctx.cfg.name, error = %e, "not taken in");
            }
            return Fate::Skipped;
        }
    };
    let len = env.payload.len();
    let opts = PublishOptions::new()
        .headers(env.mitto_headers(&ctx.origin))
        .ack();
    match ctx.mitto.publish_with(&subject, env.payload, opts).await {
        Ok(()) => {
            bump(&ctx.stats.msgs_in);
            add(&ctx.stats.bytes_in, len);
            Fate::Accepted
        }
        Err(e) => {
            ctx.stats.error(format!("mitto refused {subject}: {e}"));
            Fate::Refused
        }
    }
}
