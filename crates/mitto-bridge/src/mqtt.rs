//! MQTT 5 through `rumqttc` (MQTT 3.1.1 in the `mqtt3` module): out with QoS 1 and its PUBACK as
//! the confirm, in from QoS 1 subscriptions acknowledged once mitto accepted each message.
//!
//! The session persists at Mosquitto (a fixed client id, no clean start), so messages for the
//! bridge's subscriptions wait there while the bridge is away (up to an hour with MQTT 5). Each connection gets a fresh
//! `rumqttc` event loop; what the old one had not confirmed is sent again by the bridge.

use crate::envelope::Envelope;
use crate::inbound::{deliver, Fate};
use crate::link::{Backend, Confirm, Ctx, Link, Session, Trip};
use futures_util::FutureExt;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, Packet, PubAckReason, Publish, PublishProperties,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::Outgoing;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long Mosquitto keeps the bridge's session (and the messages for it) while the bridge is
/// away, seconds.
const SESSION_EXPIRY_S: u32 = 3600;

pub(crate) fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Host, port and credentials (user, password) of an MQTT URL.
pub(crate) type Target = (String, u16, Option<(String, String)>);

/// Host, port and credentials of an `mqtt://[user[:password]@]host[:port]` URL.
pub(crate) fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("mqtt://")
        .ok_or_else(|| format!("{} is not an mqtt:// URL", crate::redact(url)))?;
    let rest = rest.trim_end_matches('/');
    let (creds, hostport) = match rest.rsplit_once('@') {
        Some((c, h)) => {
            let (u, p) = c.split_once(':').unwrap_or((c, ""));
            (Some((u.to_owned(), p.to_owned())), h)
        }
        None => (None, rest),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("bad port in {}", crate::redact(url)))?,
        ),
        _ => (hostport, 1883),
    };
    if host.is_empty() || host.contains(['/', '?']) {
        return Err(format!("bad host in {}", crate::redact(url)));
    }
    Ok((host.trim_matches(['[', ']']).to_owned(), port, creds))
}

pub(crate) fn qos(q: u8) -> (QoS, rumqttc::QoS) {
    match q {
        0 => (QoS::AtMostOnce, rumqttc::QoS::AtMostOnce),
        _ => (QoS::AtLeastOnce, rumqttc::QoS::AtLeastOnce),
    }
}

type Waiter = oneshot::Sender<Result<(), String>>;

/// Confirms waited for: publishes handed to the event loop (in order) and those written with
/// their packet id.
#[derive(Default)]
pub(crate) struct Acks {
    queued: VecDeque<Waiter>,
    sent: HashMap<u16, Waiter>,
}

pub(crate) type SharedAcks = Arc<Mutex<Acks>>;

/// A confirm waited for.
pub(crate) type Expected = oneshot::Receiver<Result<(), String>>;

/// Registers a confirm before its publish is handed to the event loop.
pub(crate) fn expect(acks: &SharedAcks) -> Expected {
    let (tx, rx) = oneshot::channel();
    if let Ok(mut a) = acks.lock() {
        a.queued.push_back(tx);
    }
    rx
}

/// Resolves once every confirm of a batch came, or at the first that failed.
pub(crate) fn all(expected: Vec<Expected>) -> Confirm {
    async move {
        for rx in expected {
            rx.await
                .unwrap_or_else(|_| Err("the connection ended before the PUBACK".to_owned()))?;
        }
        Ok(())
    }
    .boxed()
}

/// A publish was written with packet id `pkid` (0 for QoS 0, which is then done).
pub(crate) fn written(acks: &SharedAcks, pkid: u16) {
    if let Ok(mut a) = acks.lock() {
        if let Some(w) = a.queued.pop_front() {
            if pkid == 0 {
                let _ = w.send(Ok(()));
            } else {
                a.sent.insert(pkid, w);
            }
        }
    }
}

/// The broker acknowledged packet `pkid`.
pub(crate) fn acked(acks: &SharedAcks, pkid: u16, r: Result<(), String>) {
    if let Some(w) = acks.lock().ok().and_then(|mut a| a.sent.remove(&pkid)) {
        let _ = w.send(r);
    }
}

/// Ends a task when its session ends.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Delivers a message from the broker to mitto, trying again while mitto refuses it (MQTT
/// cannot take a message back), until it is accepted or skipped.
pub(crate) async fn deliver_until_taken(ctx: &Ctx, env: Envelope) {
    let mut tries = 0u32;
    while deliver(ctx, env.clone()).await == Fate::Refused {
        tokio::time::sleep(crate::link::backoff(&ctx.cfg, tries)).await;
        tries = tries.saturating_add(1);
    }
}

fn envelope(p: &Publish) -> Envelope {
    let mut env = Envelope {
        name: String::from_utf8_lossy(&p.topic).into_owned(),
        payload: p.payload.clone(),
        ..Envelope::default()
    };
    if let Some(props) = &p.properties {
        env.content_type = props.content_type.clone();
        env.correlation_id = props.correlation_data.as_ref().map(|c| c.to_vec());
        for (k, v) in &props.user_properties {
            env.headers.push((k.clone(), v.as_bytes().to_vec()));
        }
    }
    env
}

fn properties(env: &Envelope) -> PublishProperties {
    PublishProperties {
        content_type: env.content_type.clone(),
        correlation_data: env.correlation_id.clone().map(Into::into),
        user_properties: env
            .headers
            .iter()
            // User properties are UTF-8 strings: binary values are left out.
            .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.clone()).ok()?)))
            .collect(),
        ..PublishProperties::default()
    }
}

#[derive(Clone)]
pub(crate) struct MqttLink {
    client: AsyncClient,
    acks: SharedAcks,
    qos: QoS,
    trip: Trip,
}

impl Link for MqttLink {
    async fn send(&self, batch: &[Envelope]) -> Result<Confirm, String> {
        let mut expected = Vec::with_capacity(batch.len());
        for env in batch {
            expected.push(expect(&self.acks));
            let props = properties(env);
            self.client
                .publish_with_properties(
                    env.name.clone(),
                    self.qos,
                    false,
                    env.payload.clone(),
                    props,
                )
                .await
                .map_err(err)?;
        }
        Ok(all(expected))
    }

    fn trip(&self) {
        self.trip.trip();
    }
}

/// The MQTT 5 bridge backend.
pub(crate) struct Mqtt;

impl Backend for Mqtt {
    type Link = MqttLink;

    async fn connect(&self, ctx: Arc<Ctx>) -> Result<(MqttLink, Session), String> {
        let cfg = &ctx.cfg;
        let (host, port, creds) = parse_url(&cfg.url)?;
        let id = cfg
            .client_id
            .clone()
            .unwrap_or_else(|| format!("mitto-bridge-{}", cfg.name));
        let mut o = MqttOptions::new(id, host, port);
        o.set_keep_alive(Duration::from_secs(30))
            .set_clean_start(false)
            .set_session_expiry_interval(Some(SESSION_EXPIRY_S))
            .set_manual_acks(true)
            .set_connection_timeout(cfg.confirm_timeout_ms.div_ceil(1000).max(1));
        if let Some((u, p)) = creds {
            o.set_credentials(u, p);
        }
        let window = cfg.window as usize;
        let (client, mut el) = AsyncClient::new(o, window.max(10));
        loop {
            match el.poll().await.map_err(err)? {
                Event::Incoming(Packet::ConnAck(c)) if c.code == ConnectReturnCode::Success => {
                    break
                }
                Event::Incoming(Packet::ConnAck(c)) => {
                    return Err(format!("refused: {:?}", c.code));
                }
                _ => {}
            }
        }
        let q = qos(cfg.qos).0;
        for r in &ctx.inbound {
            client.subscribe(r.remote_filter(), q).await.map_err(err)?;
        }
        let trip = Trip::default();
        let acks = SharedAcks::default();
        let link = MqttLink {
            client: client.clone(),
            acks: acks.clone(),
            qos: q,
            trip: trip.clone(),
        };
        // Messages from the broker go to mitto on a task of their own, so that the event loop
        // keeps turning (PUBACKs, pings) while mitto is slow.
        let (tx, mut rx) = mpsc::channel::<Publish>(window.max(1));
        let inbound = AbortOnDrop(tokio::spawn({
            let (ctx, client) = (ctx.clone(), client.clone());
            async move {
                while let Some(p) = rx.recv().await {
                    deliver_until_taken(&ctx, envelope(&p)).await;
                    if client.ack(&p).await.is_err() {
                        return;
                    }
                }
            }
        }));
        let session = async move {
            let _inbound = inbound;
            loop {
                let ev = tokio::select! {
                    _ = trip.tripped() => return "a publish failed".to_owned(),
                    ev = el.poll() => ev,
                };
                match ev {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => written(&acks, pkid),
                    Ok(Event::Incoming(Packet::PubAck(a))) => {
                        let r = match a.reason {
                            PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
                            other => Err(format!("PUBACK {other:?}")),
                        };
                        acked(&acks, a.pkid, r);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send(p).await.is_err() {
                            return "the way in ended".to_owned();
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return e.to_string(),
                }
            }
        };
        Ok((link, session.boxed()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1884").unwrap(),
            ("127.0.0.1".into(), 1884, None)
        );
        assert_eq!(
            parse_url("mqtt://u:p@localhost").unwrap(),
            ("localhost".into(), 1883, Some(("u".into(), "p".into())))
        );
        assert!(parse_url("mqtt://h:x").is_err());
        assert!(parse_url("tcp://h:1").is_err());
        assert!(parse_url("mqtt://").is_err());
    }

    #[tokio::test]
    async fn confirms_pair_with_packet_ids_in_order() {
        let acks = SharedAcks::default();
        let a = all(vec![expect(&acks)]);
        let b = all(vec![expect(&acks)]);
        let c = all(vec![expect(&acks)]);
        written(&acks, 7);
        written(&acks, 8);
        written(&acks, 0); // QoS 0: done once written
        acked(&acks, 8, Err("PUBACK NotAuthorized".into()));
        acked(&acks, 7, Ok(()));
        acked(&acks, 99, Ok(())); // unknown: ignored
        assert_eq!(a.await, Ok(()));
        assert!(b.await.unwrap_err().contains("NotAuthorized"));
        assert_eq!(c.await, Ok(()));
        // A confirm whose connection went away fails, so the message is sent again.
        let d = all(vec![expect(&acks)]);
        drop(acks);
        assert!(d.await.is_err());
    }
}
