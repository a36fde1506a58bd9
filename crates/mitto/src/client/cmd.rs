//! Commands from the API to a connection's driver, and where a call's answer goes.

use super::call_parts::Reply;
use crate::error::{Error, Result};
use bytes::Bytes;
use mitto_proto::Frame;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

pub(crate) enum Cmd {
    /// A call (boxed: unary calls on a socket go through the call table, so this is the rarer
    /// command, and a small `Cmd` keeps a publish's trip through the command queue cheap).
    Call(Box<CallCmd>),
    /// Registers the local end of subscription `sid` (its SUBSCRIBE goes as a `Call`).
    Subscribe {
        sid: u32,
        tx: crate::client::inbox::InboxTx,
    },
    /// Forgets subscription `sid` locally.
    DropSub(u32),
    Send(Frame),
    /// Frames written into the call table before a command entered the queue (see
    /// [`crate::client::queue`]).
    Encoded(Bytes),
    Cancel(u64),
    Close,
}

/// A call for the connection's driver.
pub(crate) struct CallCmd {
    pub(crate) id: u64,
    pub(crate) frame: Frame,
    pub(crate) slot: Slot,
    /// When the reactor fails the call with TIMEOUT (and sends CANCEL).
    pub(crate) deadline: Option<Due>,
}

impl Cmd {
    pub(crate) fn call(c: CallCmd) -> Cmd {
        Cmd::Call(Box::new(c))
    }
}

/// When a call times out.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Due {
    /// At this instant.
    At(Instant),
    /// This long after the connection's driver takes the call (at most one turn of the driver
    /// after it was made): the caller then reads no clock per call.
    After(Duration),
}

pub(crate) enum Slot {
    Unary(oneshot::Sender<Result<Reply>>),
    Stream {
        items: Option<mpsc::Sender<Result<Bytes>>>,
        done: Option<oneshot::Sender<Result<Reply>>>,
        credit: Option<Arc<Semaphore>>,
    },
}

impl Slot {
    pub(super) fn fail(self, e: Error) {
        match self {
            Slot::Unary(tx) => {
                let _ = tx.send(Err(e));
            }
            Slot::Stream {
                items,
                done,
                credit,
            } => {
                if let Some(c) = credit {
                    c.close();
                }
                if let Some(tx) = items {
                    let _ = tx.try_send(Err(e.clone()));
                }
                if let Some(tx) = done {
                    let _ = tx.send(Err(e));
                }
            }
        }
    }
}
