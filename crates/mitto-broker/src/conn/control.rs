//! The frames of a connection that are not publishes or subscriptions: the frames of calls
//! in flight, queries of the broker's health and counters, acknowledgements, and the end of a
//! service instance.

use super::BrokerReactor;
use crate::requests::BROKER_CALL_BIT;
use crate::stats::bump;
use mitto::__private::conn::Ctx;
use mitto::proto::body::decode_opt_u32;
use mitto::proto::{Flags, Frame, FrameType, HealthReport, HealthState, StatsReport, Status};
use std::time::Duration;

impl BrokerReactor {
    /// RESPONSE, STREAM, CANCEL and a call's CREDIT. Calls the broker opened carry bit 63
    /// (PROTOCOL.md 10.1): a RESPONSE answers one of them or none; STREAM and CREDIT belong to
    /// one of them or to this client's own; a CANCEL to this client's own.
    pub(super) fn on_call_frame(&mut self, f: Frame, cx: &mut Ctx<'_>) {
        let broker_call = f.id & BROKER_CALL_BIT != 0;
        match f.frame_type {
            FrameType::Response if !broker_call => {
                bump(&self.core.stats.protocol_errors);
                let why = "the broker opens no call with this id (its ids have bit 63 set)";
                self.refuse(cx, &f, Status::UNEXPECTED_FRAME, why)
            }
            FrameType::Cancel => {
                if let Some(answer) = self.core.caller_frame(self.conn, &f) {
                    cx.send(&answer);
                }
            }
            FrameType::Response => self.core.instance_frame(self.conn, &f),
            _ if broker_call => self.core.instance_frame(self.conn, &f),
            _ => {
                self.core.caller_frame(self.conn, &f);
            }
        }
    }

    /// HEALTH and STATS queries. The broker asks none: a report answers nothing of its own.
    pub(super) fn on_query(&mut self, f: Frame, cx: &mut Ctx<'_>) {
        if f.flags.contains(Flags::REPLY) {
            bump(&self.core.stats.protocol_errors);
            let why = format!("the broker sent no {} query", f.frame_type.name());
            return self.refuse(cx, &f, Status::UNEXPECTED_FRAME, &why);
        }
        let uptime_ms = self.core.started.elapsed().as_millis().min(u64::MAX.into()) as u64;
        let reply = if f.frame_type == FrameType::Health {
            let report = HealthReport {
                state: if self.draining {
                    HealthState::Draining
                } else {
                    HealthState::Serving
                },
                uptime_ms,
                server: self.core.cfg.name.clone(),
                detail: None,
            };
            Frame::health_reply(f.id, &report)
        } else {
            let mut values = self.core.snapshot();
            values.insert("uptime_ms".into(), uptime_ms);
            Frame::stats_reply(f.id, &StatsReport { values })
        };
        match reply {
            Ok(r) => cx.send(&r),
            Err(e) => cx.send(&Frame::error(f.id, Status::INTERNAL, &e.to_string())),
        }
    }

    /// ACK and NACK of a delivery. One that matches nothing pending is ignored (it may have
    /// crossed a redelivery or the end of the subscription), and so is one without a
    /// subscription id.
    pub(super) fn on_ack(&mut self, f: Frame) {
        if f.aux == 0 {
            return;
        }
        if f.frame_type == FrameType::Ack {
            // A consumer's delivery (its id is the stream sequence), else the mailbox's.
            if crate::streams::on_ack(&self.core, self.conn, f.aux, f.id)
                || self.mailbox.ack(f.aux, f.id)
            {
                bump(&self.core.stats.acks);
            }
            return;
        }
        let delay = decode_opt_u32(&f.payload, "NACK")
            .ok()
            .flatten()
            .map(|ms| Duration::from_millis(ms.into()));
        if crate::streams::on_nack(&self.core, self.conn, f.aux, f.id, delay)
            || self.mailbox.nack(f.aux, f.id, delay)
        {
            bump(&self.core.stats.nacks);
        }
    }

    /// UNREGISTER of a service instance.
    pub(super) fn on_unregister(&mut self, f: Frame, cx: &mut Ctx<'_>) {
        match self.services.remove(&f.aux) {
            Some(filter) => {
                self.core.unregister(&filter, self.conn, f.aux);
                if f.flags.contains(Flags::ACK_REQUIRED) {
                    cx.send(&Frame::ack(f.id, 0));
                }
            }
            None => {
                let why = format!("no service instance {}", f.aux);
                self.refuse(cx, &f, Status::NOT_FOUND, &why)
            }
        }
    }
}
