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

pub use crate::queue_url::queue_of;
pub(crate) use crate::queue_url::{amqp_url, prefetch_of};
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
