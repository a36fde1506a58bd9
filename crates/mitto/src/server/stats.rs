//! A server's counters.

use mitto_proto::StatsReport;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Default)]
pub(super) struct Stats {
    pub(super) connections_total: AtomicU64,
    pub(super) connections_open: AtomicU64,
    pub(super) calls_total: AtomicU64,
    pub(super) calls_in_flight: AtomicU64,
    pub(super) calls_ok: AtomicU64,
    pub(super) calls_failed: AtomicU64,
    pub(super) calls_cancelled: AtomicU64,
    pub(super) calls_timed_out: AtomicU64,
    pub(super) calls_rejected: AtomicU64,
    pub(super) handler_panics: AtomicU64,
    pub(super) protocol_errors: AtomicU64,
    pub(super) slow_connections_closed: AtomicU64,
    pub(super) handshakes_failed: AtomicU64,
}

impl Stats {
    pub(super) fn report(&self, uptime: Duration) -> StatsReport {
        let mut values = BTreeMap::new();
        let mut put = |k: &str, v: &AtomicU64| {
            values.insert(k.to_owned(), v.load(Ordering::Relaxed));
        };
        put("connections_total", &self.connections_total);
        put("connections_open", &self.connections_open);
        put("calls_total", &self.calls_total);
        put("calls_in_flight", &self.calls_in_flight);
        put("calls_ok", &self.calls_ok);
        put("calls_failed", &self.calls_failed);
        put("calls_cancelled", &self.calls_cancelled);
        put("calls_timed_out", &self.calls_timed_out);
        put("calls_rejected", &self.calls_rejected);
        put("handler_panics", &self.handler_panics);
        put("protocol_errors", &self.protocol_errors);
        put("slow_connections_closed", &self.slow_connections_closed);
        put("handshakes_failed", &self.handshakes_failed);
        values.insert(
            "uptime_ms".to_owned(),
            uptime.as_millis().min(u64::MAX.into()) as u64,
        );
        StatsReport { values }
    }
}

pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
