//! Direct entry points for clients in the broker's own process (`inproc://`/`mem://`): they
//! publish by routing in their own task and read their subscriptions straight from their
//! mailbox, with the same checks and policies as a connection from a socket.

use crate::core::{Blocked, Core, RouteCache, Routed};
use crate::fabric::Scope;
use crate::mailbox::{LocalPop, Mailbox};
use crate::permissions::Permissions;
use crate::subscriptions::SubRef;
use mitto::__private::local::{LocalPort, LocalQueue, Published};
use mitto::proto::{Flags, Frame, Status};
use mitto::{Error, Result};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// One in-process connection's port.
pub(crate) struct Port {
    pub(crate) core: Arc<Core>,
    pub(crate) conn: u64,
    pub(crate) mailbox: Arc<Mailbox>,
    pub(crate) perms: Permissions,
    /// Unique in the process (connection ids are per broker): the key of the route memos
    /// publishing threads keep for this port (see [`with_routes`]).
    pub(crate) uid: u64,
    /// The broker's own federation: its publishes say which subscriptions they go to
    /// (`fabric.rs`).
    pub(crate) fabric: bool,
}

impl Port {
    /// A new port's `uid`.
    pub(crate) fn next_uid() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }
}

/// Ports a thread keeps route memos for.
const THREAD_ROUTES: usize = 4;

/// A thread's route memos, by port `uid`, and the slot the next new port takes.
type ThreadRoutes = ([Option<(u64, RouteCache)>; THREAD_ROUTES], usize);

thread_local! {
    /// Per thread, the route memos of the last ports it published through: a publishing loop
    /// routes without taking a lock (a memo shared by a client's clones needed one per
    /// message), and a task alternating between a few clients keeps each one's memo. Each memo
    /// is only ever used by its thread, so its counts stay single-writer (see `tally`); at
    /// most [`THREAD_ROUTES`] are kept, the oldest replaced. A memo outlives its port until
    /// then (or until the thread ends): it holds the list of subscription queues it matched
    /// (emptied when their connections end) and its counts (still summed), nothing more.
    static ROUTES: std::cell::RefCell<ThreadRoutes> =
        const { std::cell::RefCell::new(([None, None, None, None], 0)) };
}

/// Runs `f` with this thread's route memo for port `uid`; `None` if the thread's memos are not
/// available (the thread is ending, or `f` is already running further up this stack).
fn with_routes<R>(uid: u64, f: impl FnOnce(&mut RouteCache) -> R) -> Option<R> {
    ROUTES
        .try_with(|cell| {
            let mut guard = cell.try_borrow_mut().ok()?;
            let (slots, next) = &mut *guard;
            let i = match slots
                .iter()
                .position(|s| s.as_ref().is_some_and(|(u, _)| *u == uid))
            {
                Some(i) => i,
                None => {
                    let i = *next;
                    *next = (i + 1) % THREAD_ROUTES;
                    slots[i] = Some((uid, RouteCache::publisher()));
                    i
                }
            };
            let (_, routes) = slots[i].as_mut()?;
            Some(f(routes))
        })
        .ok()
        .flatten()
}

impl LocalPort for Port {
    fn publish(&self, mut f: Frame) -> Result<Published> {
        let scope = match self.fabric {
            true => crate::fabric::take(&mut f),
            false => Scope::All,
        };
        // The same rule as for a socket's PUBLISH: replies to inboxes, then permissions.
        let Some(f) = self.core.admit_publish(self.conn, &self.perms, f)? else {
            return Ok(Published::Done);
        };
        // A stream that captures the subject stores it; an acknowledged publish returns once it
        // is stored, a fire-and-forget one at once (as on a socket).
        let ack = f.flags.contains(Flags::ACK_REQUIRED);
        let stored = crate::streams::capture_in(&self.core, &f, &scope)?.filter(|_| ack);
        let mut f = Some(f);
        let routed = match with_routes(self.uid, |routes| {
            f.take().map(|f| self.core.publish_owned(f, routes, &scope))
        }) {
            Some(Some(r)) => r?,
            _ => match f {
                Some(f) => self
                    .core
                    .publish_owned(f, &mut RouteCache::default(), &scope)?,
                None => return Err(Error::new(Status::INTERNAL, "publish lost")),
            },
        };
        if let Some(stored) = stored {
            let room = routed.blocked.map(|b| {
                let Blocked {
                    targets,
                    event,
                    born,
                } = *b;
                wait_for_room(self.core.clone(), targets, event, born)
            });
            return Ok(Published::Blocked(Box::pin(async move {
                stored.wait().await?;
                match room {
                    Some(r) => r.await,
                    None => Ok(()),
                }
            })));
        }
        match routed.blocked {
            Some(b) => {
                let Blocked {
                    targets,
                    event,
                    born,
                } = *b;
                Ok(Published::Blocked(Box::pin(wait_for_room(
                    self.core.clone(),
                    targets,
                    event,
                    born,
                ))))
            }
            None => Ok(Published::Done),
        }
    }

    fn subscription(&self, sid: u32) -> Option<Arc<dyn LocalQueue>> {
        self.mailbox.has_sub(sid).then(|| {
            Arc::new(Queue {
                core: self.core.clone(),
                conn: self.conn,
                mailbox: self.mailbox.clone(),
                sid,
            }) as Arc<dyn LocalQueue>
        })
    }
}

/// Delivers `event` to subscriptions that block publishers, as each makes room; gives up after
/// the broker's `max_block_ms` (as for a publisher over a socket).
async fn wait_for_room(
    core: Arc<Core>,
    mut blocked: Vec<SubRef>,
    event: Frame,
    born: Option<tokio::time::Instant>,
) -> Result<()> {
    let limit = Duration::from_millis(core.cfg.max_block_ms);
    let wait = async {
        while let Some(t) = blocked.last().cloned() {
            let room = t.mailbox.room();
            tokio::pin!(room);
            room.as_mut().enable();
            let mut r = Routed::default();
            if core.offer(&t, event.clone(), born, &mut r).is_none() {
                blocked.pop();
                continue;
            }
            room.await;
        }
    };
    if tokio::time::timeout(limit, wait).await.is_ok() {
        return Ok(());
    }
    let n = blocked.len();
    core.stats
        .publish_rejections
        .fetch_add(n as u64, Ordering::Relaxed);
    Err(Error::new(
        Status::BACKPRESSURE_REJECTION,
        format!(
            "{n} subscriber(s) of {} stayed full for {} ms",
            event.subject.as_str(),
            core.cfg.max_block_ms
        ),
    )
    .retryable())
}

/// One in-process subscription's queue.
struct Queue {
    core: Arc<Core>,
    conn: u64,
    mailbox: Arc<Mailbox>,
    sid: u32,
}

impl LocalQueue for Queue {
    fn ack(&self, ids: &[u64]) {
        // As `on_ack` does for each ACK frame: a stream consumer's deliveries go to its engine,
        // the others to the mailbox (under one lock).
        let n = if crate::streams::is_bound(&self.core, self.conn, self.sid) {
            ids.iter()
                .filter(|id| crate::streams::on_ack(&self.core, self.conn, self.sid, **id))
                .count()
        } else {
            self.mailbox.ack_all(self.sid, ids)
        };
        self.core.stats.acks.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn poll_batch(
        &self,
        cx: &mut Context<'_>,
        out: &mut VecDeque<Frame>,
        max: usize,
    ) -> Poll<bool> {
        match self.mailbox.pop_local(self.sid, cx, out, max) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(LocalPop::Ended) => Poll::Ready(false),
            Poll::Ready(LocalPop::Got(n, bytes, finished)) => {
                let s = &self.core.stats;
                s.msgs_out.fetch_add(n, Ordering::Relaxed);
                s.bytes_out.fetch_add(bytes, Ordering::Relaxed);
                if let Some(sq) = finished {
                    self.core.end_taken(self.conn, self.sid, sq);
                }
                Poll::Ready(true)
            }
        }
    }
}
