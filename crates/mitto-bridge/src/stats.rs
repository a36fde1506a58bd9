//! A bridge's counters and state, as `/bridgez` shows them.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

/// Where a bridge's backend connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum State {
    /// Connecting (first time or after a loss).
    Connecting,
    /// Connected.
    Up,
    /// Lost; waiting before the next try.
    Down,
    /// Stopped.
    Stopped,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Up,
            2 => State::Down,
            3 => State::Stopped,
            _ => State::Connecting,
        }
    }
    fn to_u8(self) -> u8 {
        match self {
            State::Connecting => 0,
            State::Up => 1,
            State::Down => 2,
            State::Stopped => 3,
        }
    }
}

/// Live counters of one bridge.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    state: AtomicU8,
    pub(crate) msgs_in: AtomicU64,
    pub(crate) msgs_out: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) buffered_msgs: AtomicU64,
    pub(crate) buffered_bytes: AtomicU64,
    pub(crate) drops: AtomicU64,
    pub(crate) loops_prevented: AtomicU64,
    pub(crate) unmappable: AtomicU64,
    last_error: Mutex<String>,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn add(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

impl Stats {
    pub(crate) fn set_state(&self, s: State) {
        self.state.store(s.to_u8(), Ordering::Relaxed);
    }
    pub(crate) fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Relaxed))
    }
    /// Counts an error and keeps its text (the latest one) for monitoring.
    pub(crate) fn error(&self, what: impl std::fmt::Display) {
        bump(&self.errors);
        let text = what.to_string();
        tracing::warn!(error = %text, "bridge error");
        if let Ok(mut e) = self.last_error.lock() {
            *e = text;
        }
    }
}

/// A bridge's counters at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Snapshot {
    /// The bridge's name.
    pub name: String,
    /// Its backend kind.
    pub kind: &'static str,
    /// Its backend URL, password hidden.
    pub url: String,
    /// Connection state.
    pub state: State,
    /// Messages from the backend accepted by mitto.
    pub msgs_in: u64,
    /// Messages to the backend, confirmed by it.
    pub msgs_out: u64,
    /// Payload bytes in.
    pub bytes_in: u64,
    /// Payload bytes out.
    pub bytes_out: u64,
    /// Errors (connect failures, refused publishes, lost links).
    pub errors: u64,
    /// Connections lost and made again.
    pub reconnects: u64,
    /// Messages held for the backend now (buffered or unconfirmed).
    pub buffered_msgs: u64,
    /// Payload bytes held for the backend now.
    pub bytes_buffered: u64,
    /// Messages given up because the buffer was full (or mitto refused them on the way in and
    /// the backend cannot take them back).
    pub drops: u64,
    /// Messages not sent back where they came from (origin header).
    pub loops_prevented: u64,
    /// Messages whose name cannot be carried to the other side.
    pub unmappable: u64,
    /// The latest error, if any.
    pub last_error: String,
}

impl Stats {
    pub(crate) fn snapshot(&self, name: &str, kind: &'static str, url: &str) -> Snapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            name: name.to_owned(),
            kind,
            url: crate::redact(url),
            state: self.state(),
            msgs_in: g(&self.msgs_in),
            msgs_out: g(&self.msgs_out),
            bytes_in: g(&self.bytes_in),
            bytes_out: g(&self.bytes_out),
            errors: g(&self.errors),
            reconnects: g(&self.reconnects),
            buffered_msgs: g(&self.buffered_msgs),
            bytes_buffered: g(&self.buffered_bytes),
            drops: g(&self.drops),
            loops_prevented: g(&self.loops_prevented),
            unmappable: g(&self.unmappable),
            last_error: self
                .last_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default(),
        }
    }
}
