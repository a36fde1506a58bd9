//! Services on a queue: a mitto service whose requests wait in a durable RabbitMQ queue that any
//! number of workers, on any machines, share.
//!
//! - The broker side ([`Kind::AmqpService`](crate::Kind::AmqpService), `kind = "amqp_service"`)
//!   serves a subject: each request is published, persistent and with a publisher confirm, to
//!   the queue with `reply-to` (a queue of the broker side's own), a `correlation-id` no one
//!   can guess, and the caller's time left as AMQP `expiration`; the reply goes back to the
//!   caller if it comes before the caller's deadline.
//! - A worker ([`serve`]) runs an ordinary [`mitto::Server`] on requests it takes from the
//!   queue with consumer acknowledgements: a request is acknowledged only after its reply was
//!   confirmed by RabbitMQ, so a worker that dies holding one leaves it to another worker.
//!
//! `docs/BRIDGES.md` says exactly which guarantees hold.

pub(crate) mod forward;
mod serve;

pub use serve::{serve, QueueWorker, WorkerStats};

/// Header naming the method (the mitto subject) a request was sent to.
pub const METHOD_HEADER: &str = "mitto-method";
/// Header of a reply that is a failure: the mitto status code, as decimal text.
pub const STATUS_HEADER: &str = "mitto-status";
/// Header of a failed reply: the reason.
pub const REASON_HEADER: &str = "mitto-reason";

/// A failed call as a reply: its status and reason in [`STATUS_HEADER`] and [`REASON_HEADER`].
pub(crate) fn failure(e: &mitto::Error) -> crate::envelope::Envelope {
    crate::envelope::Envelope {
        headers: vec![
            (
                STATUS_HEADER.to_owned(),
                e.status().0.to_string().into_bytes(),
            ),
            (REASON_HEADER.to_owned(), e.message().as_bytes().to_vec()),
        ],
        ..crate::envelope::Envelope::default()
    }
}

/// The query parameters of a work-queue URL that are mitto's, not the AMQP client's.
const OWN_PARAMS: [&str; 2] = ["queue", "prefetch"];

fn params(url: &str) -> impl Iterator<Item = (&str, &str)> {
    url.split_once('?')
        .map_or("", |(_, q)| q)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// The queue named by `?queue=` in a work-queue URL.
pub fn queue_of(url: &str) -> Result<String, String> {
    match params(url).find(|(k, _)| *k == "queue") {
        Some((_, q)) if !q.is_empty() && q.len() <= 255 && !q.starts_with("amq.") => {
            Ok(q.to_owned())
        }
        Some(_) => Err("?queue= must name a queue (1-255 bytes, not amq.*)".to_owned()),
        None => Err("the URL names no queue (add ?queue=NAME)".to_owned()),
    }
}

/// `?prefetch=` of a work-queue URL: requests a worker takes at once (default 1).
pub(crate) fn prefetch_of(url: &str) -> Result<u16, String> {
    match params(url).find(|(k, _)| *k == "prefetch") {
        Some((_, n)) => n
            .parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| "?prefetch= must be 1-65535".to_owned()),
        None => Ok(1),
    }
}

/// `url` without mitto's own query parameters, for the AMQP client.
pub(crate) fn amqp_url(url: &str) -> String {
    let Some((base, _)) = url.split_once('?') else {
        return url.to_owned();
    };
    let rest: Vec<String> = params(url)
        .filter(|(k, _)| !OWN_PARAMS.contains(k))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn work_queue_urls() {
        let u = "amqp://guest:guest@127.0.0.1:5672/%2f?queue=svc.work&heartbeat=10&prefetch=4";
        assert_eq!(queue_of(u).unwrap(), "svc.work");
        assert_eq!(prefetch_of(u).unwrap(), 4);
        assert_eq!(
            amqp_url(u),
            "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10"
        );
        assert_eq!(amqp_url("amqp://h/%2f?queue=q"), "amqp://h/%2f");
        assert!(queue_of("amqp://h/%2f").is_err());
        assert!(queue_of("amqp://h/%2f?queue=").is_err());
        assert!(queue_of("amqp://h/%2f?queue=amq.x").is_err());
        assert_eq!(prefetch_of("amqp://h/%2f?queue=q").unwrap(), 1);
        assert!(prefetch_of("amqp://h/%2f?queue=q&prefetch=0").is_err());
    }
}
