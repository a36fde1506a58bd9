//! The client side of publish/subscribe (spec section 11): subscription ids, SUBSCRIBE and
//! UNSUBSCRIBE, subscription credit granted as the application consumes, at-least-once
//! ACK / NACK, EVENTs surfaced per subscription, and REGISTER / UNREGISTER of service
//! instances (in the same id space).

use super::error::CommandError;
use super::events::{Event, OpId};
use super::ops::Kind;
use super::timers::Key;
use super::Connection;
use crate::body::{Delivery, SubscribeOptions};
use crate::frame::Frame;
use crate::header::Flags;
use crate::negotiate::Features;
use crate::status::Status;
use crate::subject::Subject;
use rustc_hash::{FxHashMap, FxHashSet};
use std::time::Instant;

/// One subscription or registration.
pub(crate) struct Sub {
    pub(crate) filter: Subject,
    pub(crate) opts: SubscribeOptions,
    pub(crate) register: bool,
    /// EVENTs the broker may still send; `None` when credit is off.
    pub(crate) window: Option<u32>,
    /// EVENTs the application consumed and this side has not granted again yet.
    pub(crate) consumed: u32,
    /// EVENTs still to come before an `unsubscribe_after` ends it.
    remaining: Option<u32>,
    /// Deliveries awaiting ACK or NACK.
    pub(crate) unacked: FxHashSet<u64>,
}

impl Sub {
    pub(crate) fn new(filter: Subject, opts: SubscribeOptions, register: bool) -> Sub {
        Sub {
            window: (!register && opts.credit > 0).then_some(opts.credit),
            filter,
            opts,
            register,
            consumed: 0,
            remaining: None,
            unacked: FxHashSet::default(),
        }
    }

    /// EVENTs the application can take now: what the broker may still send plus what it
    /// consumed and was not granted again.
    pub(crate) fn room(&self) -> u32 {
        self.window.map_or(0, |w| w.saturating_add(self.consumed))
    }
}

/// Subscriptions and registrations by id.
#[derive(Default)]
pub(crate) struct Subscriptions {
    pub(crate) map: FxHashMap<u32, Sub>,
    last: u32,
}

impl Subscriptions {
    /// An id no live subscription or registration has (never 0).
    fn alloc(&mut self) -> u32 {
        loop {
            self.last = self.last.wrapping_add(1);
            if self.last != 0 && !self.map.contains_key(&self.last) {
                return self.last;
            }
        }
    }

    pub(crate) fn remove(&mut self, sid: u32) -> Option<Sub> {
        self.map.remove(&sid)
    }
}

impl<C> Connection<C> {
    /// Subscribes to `filter` (wildcards allowed) with `opts` (credit needs FLOW_CONTROL,
    /// at-least-once delivery needs ACKS). The SUBSCRIBE asks for an ACK: `ctx` comes back in
    /// its [`Event::Answer`], and a refusal ends the subscription. Returns the subscription id
    /// and the operation.
    pub fn subscribe(
        &mut self,
        now: Instant,
        filter: Subject,
        opts: SubscribeOptions,
        ctx: C,
    ) -> Result<(u32, OpId), CommandError> {
        self.open_sub(now, None, filter, opts, false, Some(ctx))
    }

    /// Registers a service instance answering REQUESTs on `filter` (spec section 3.18); the
    /// calls routed to it arrive as [`Event::Request`].
    pub fn register(
        &mut self,
        now: Instant,
        filter: Subject,
        opts: SubscribeOptions,
        ctx: C,
    ) -> Result<(u32, OpId), CommandError> {
        self.open_sub(now, None, filter, opts, true, Some(ctx))
    }

    /// Queues SUBSCRIBE or REGISTER; `sid` given when one is made again after a reconnect
    /// (then no room is asked: it restores what the application already had).
    pub(super) fn open_sub(
        &mut self,
        now: Instant,
        sid: Option<u32>,
        filter: Subject,
        opts: SubscribeOptions,
        register: bool,
        ctx: Option<C>,
    ) -> Result<(u32, OpId), CommandError> {
        self.check_open()?;
        if opts.credit > 0 && !register {
            self.check_feature(Features::FLOW_CONTROL)?;
        }
        if opts.delivery == Delivery::AtLeastOnce && !register {
            self.check_feature(Features::ACKS)?;
        }
        let sid = sid.unwrap_or_else(|| self.subs.alloc());
        let mut f = if register {
            Frame::register(sid, filter.clone(), &opts)?
        } else {
            Frame::subscribe(sid, filter.clone(), &opts)?
        };
        f.flags.insert(Flags::ACK_REQUIRED);
        self.check_limits(&f, 0)?;
        if ctx.is_some() {
            self.check_room(f.encoded_len())?;
        }
        let deadline = self.cfg.op_timeout.and_then(|t| now.checked_add(t));
        let kind = if register {
            Kind::Register(sid)
        } else {
            Kind::Subscribe(sid)
        };
        let id = self.ops.insert(self.cfg.max_pending, ctx, kind, deadline)?;
        f.id = id;
        self.out.push(f, None, false);
        if let Some(d) = deadline {
            self.timers.insert(d, Key::Op(id));
        }
        let sub = Sub::new(filter, opts, register);
        self.subs.map.insert(sid, sub);
        Ok((sid, OpId(id)))
    }

    /// Ends subscription `sid` now. EVENTs for it that still arrive are discarded.
    pub fn unsubscribe(&mut self, sid: u32) -> Result<(), CommandError> {
        self.check_open()?;
        match self.subs.map.get(&sid) {
            Some(s) if !s.register => {}
            _ => return Err(CommandError::UnknownSubscription(sid)),
        }
        self.drop_subscription(sid);
        Ok(())
    }

    /// Ends subscription `sid` after `n` more EVENTs (the broker counts them too); then an
    /// [`Event::SubscriptionEnded`] with status OK follows the last one.
    pub fn unsubscribe_after(&mut self, sid: u32, n: u32) -> Result<(), CommandError> {
        if n == 0 {
            return self.unsubscribe(sid);
        }
        self.check_open()?;
        match self.subs.map.get_mut(&sid) {
            Some(s) if !s.register => s.remaining = Some(n),
            _ => return Err(CommandError::UnknownSubscription(sid)),
        }
        let id = self.ops.bare_id()?;
        self.out
            .push(Frame::unsubscribe(sid, Some(n)).with_id(id), None, false);
        Ok(())
    }

    /// Unregisters service instance `sid`; calls already routed to it complete normally.
    pub fn unregister(&mut self, sid: u32) -> Result<(), CommandError> {
        self.check_open()?;
        match self.subs.map.get(&sid) {
            Some(s) if s.register => {}
            _ => return Err(CommandError::UnknownSubscription(sid)),
        }
        self.drop_subscription(sid);
        Ok(())
    }

    /// Forgets `sid` and tells the broker (UNSUBSCRIBE or UNREGISTER).
    pub(super) fn drop_subscription(&mut self, sid: u32) {
        let Some(sub) = self.subs.remove(sid) else {
            return;
        };
        if !self.is_open() {
            return;
        }
        let Ok(id) = self.ops.bare_id() else { return };
        let f = if sub.register {
            Frame::unregister(sid)
        } else {
            Frame::unsubscribe(sid, None)
        };
        self.out.push(f.with_id(id), None, false);
    }

    /// The application took `n` EVENTs of subscription `sid`: CREDIT is granted once half of
    /// the subscription's initial credit was taken.
    pub fn consumed(&mut self, sid: u32, n: u32) -> Result<(), CommandError> {
        self.check_open()?;
        let sub = self
            .subs
            .map
            .get_mut(&sid)
            .ok_or(CommandError::UnknownSubscription(sid))?;
        if let Some(f) = grant(sid, sub, n) {
            self.out.push(f, None, false);
        }
        Ok(())
    }

    /// Acknowledges delivery `delivery` of at-least-once subscription `sid`.
    pub fn ack(&mut self, sid: u32, delivery: u64) -> Result<(), CommandError> {
        self.settle(sid, delivery)?;
        self.out.push(Frame::ack(delivery, sid), None, false);
        Ok(())
    }

    /// Asks for delivery `delivery` of subscription `sid` again, after `delay_ms` if given.
    pub fn nack(
        &mut self,
        sid: u32,
        delivery: u64,
        delay_ms: Option<u32>,
    ) -> Result<(), CommandError> {
        self.settle(sid, delivery)?;
        self.out
            .push(Frame::nack(delivery, sid, delay_ms), None, false);
        Ok(())
    }

    /// Takes `delivery` off the subscription's unacknowledged ones.
    fn settle(&mut self, sid: u32, delivery: u64) -> Result<(), CommandError> {
        self.check_open()?;
        let sub = self
            .subs
            .map
            .get_mut(&sid)
            .ok_or(CommandError::UnknownSubscription(sid))?;
        if !sub.unacked.remove(&delivery) {
            return Err(CommandError::UnknownDelivery { sid, delivery });
        }
        Ok(())
    }

    /// An EVENT from the broker.
    pub(super) fn on_event(&mut self, f: Frame) {
        let sid = f.aux;
        let Some(sub) = self.subs.map.get_mut(&sid).filter(|s| !s.register) else {
            self.stats.events_unknown_sid += 1;
            return;
        };
        if let Some(w) = &mut sub.window {
            if *w == 0 {
                self.stats.events_over_credit += 1;
                return;
            }
            *w -= 1;
        }
        if f.flags.contains(Flags::ACK_REQUIRED) {
            let cap = self.cfg.max_unacked.max(sub.opts.credit) as usize;
            if sub.unacked.len() >= cap {
                // Not surfaced and not acknowledged: the broker delivers it again. Its credit
                // is given back as if it had been consumed.
                self.stats.events_over_unacked += 1;
                if let Some(g) = grant(sid, sub, 1) {
                    self.out.push(g, None, false);
                }
                return;
            }
            sub.unacked.insert(f.id);
        }
        let last = match &mut sub.remaining {
            Some(r) => {
                *r -= 1;
                *r == 0
            }
            None => false,
        };
        self.events.push_back(Event::Message { sid, frame: f });
        if last {
            self.subs.remove(sid);
            self.events.push_back(Event::SubscriptionEnded {
                sid,
                status: Status::OK,
            });
        }
    }

    /// An ERROR about a whole subscription (`id` 0, `aux` = sid): the broker ended it.
    /// Whether it named one.
    pub(super) fn on_subscription_error(&mut self, f: &Frame) -> bool {
        if self.subs.remove(f.aux).is_none() {
            return false;
        }
        self.events.push_back(Event::SubscriptionEnded {
            sid: f.aux,
            status: f.status,
        });
        true
    }
}

/// The CREDIT to send after the application took `n` EVENTs of `sub`, if any.
fn grant(sid: u32, sub: &mut Sub, n: u32) -> Option<Frame> {
    let w = sub.window.as_mut()?;
    sub.consumed = sub.consumed.saturating_add(n);
    if sub.consumed < (sub.opts.credit / 2).max(1) {
        return None;
    }
    let g = std::mem::take(&mut sub.consumed);
    *w = w.saturating_add(g);
    Some(Frame::credit_subscription(sid, g))
}
