//! The in-process transport (`mem://`, `inproc://`): linked frame queues, and the registry of
//! in-process listeners.

use crate::error::{Error, Result};
use crate::local::LocalPort;
use mitto_proto::Frame;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Frames each direction of a [`Link`] may hold (in batches) before the sender waits.
const LINK_BATCHES: usize = 64;

/// An in-process connection: each side sends batches of [`Frame`]s that the other receives as
/// they are (payloads and attached values shared, nothing encoded). One end may also offer the
/// other a [`LocalPort`] for direct calls.
pub struct Link {
    tx: tokio_util::sync::PollSender<Vec<Frame>>,
    rx: mpsc::Receiver<Vec<Frame>>,
    pending: VecDeque<Frame>,
    port: Arc<OnceLock<Arc<dyn LocalPort>>>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Link")
    }
}

impl Link {
    /// Two connected ends.
    pub fn pair() -> (Link, Link) {
        let (atx, arx) = mpsc::channel(LINK_BATCHES);
        let (btx, brx) = mpsc::channel(LINK_BATCHES);
        let port = Arc::new(OnceLock::new());
        (
            Link {
                tx: tokio_util::sync::PollSender::new(atx),
                rx: brx,
                pending: VecDeque::new(),
                port: port.clone(),
            },
            Link {
                tx: tokio_util::sync::PollSender::new(btx),
                rx: arx,
                pending: VecDeque::new(),
                port,
            },
        )
    }

    /// Sends a batch, waiting while the peer's queue is full.
    pub async fn send(&mut self, frames: Vec<Frame>) -> Result<()> {
        std::future::poll_fn(|cx| self.tx.poll_reserve(cx))
            .await
            .map_err(|_| Error::connection_lost("the in-process peer went away"))?;
        self.tx
            .send_item(frames)
            .map_err(|_| Error::connection_lost("the in-process peer went away"))
    }

    /// Waits until a batch can be sent.
    pub fn poll_reserve(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tx
            .poll_reserve(cx)
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    /// Sends a batch after [`Link::poll_reserve`] said there is room.
    pub fn send_reserved(&mut self, frames: Vec<Frame>) -> io::Result<()> {
        self.tx
            .send_item(frames)
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    /// Ends this side's sending: the peer reads the end of the stream.
    pub fn close(&mut self) {
        self.tx.close();
    }

    /// The next frame; `None` once the peer is gone.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        loop {
            if let Some(f) = self.pending.pop_front() {
                return Poll::Ready(Some(f));
            }
            match std::task::ready!(self.rx.poll_recv(cx)) {
                Some(batch) => self.pending.extend(batch),
                None => return Poll::Ready(None),
            }
        }
    }

    /// Waits for the next frame.
    pub async fn recv(&mut self) -> Option<Frame> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Where the accepting side offers the peer direct calls; offer before the handshake
    /// reply, so that the client finds it as soon as it is connected.
    pub fn port_slot(&self) -> PortSlot {
        PortSlot(self.port.clone())
    }

    /// The port the peer offered, if any.
    pub fn port(&self) -> Option<Arc<dyn LocalPort>> {
        self.port.get().cloned()
    }
}

/// The place on a [`Link`] where the accepting side offers a [`LocalPort`].
#[derive(Clone)]
pub struct PortSlot(Arc<OnceLock<Arc<dyn LocalPort>>>);

impl PortSlot {
    /// Offers `port` (the first offer stands).
    pub fn offer(&self, port: Arc<dyn LocalPort>) {
        let _ = self.0.set(port);
    }
}

impl fmt::Debug for PortSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PortSlot")
    }
}

type MemRegistry = Mutex<HashMap<String, mpsc::Sender<Link>>>;

pub(super) fn mem_registry() -> &'static MemRegistry {
    static R: OnceLock<MemRegistry> = OnceLock::new();
    R.get_or_init(Default::default)
}
