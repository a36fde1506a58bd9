//! MQTT 3.1.1 through `rumqttc`: as [`crate::mqtt`] but payload only, since MQTT 3.1.1 has no
//! headers (no content type, correlation or origin; the configuration refuses ways in and out
//! that overlap, which would loop).

use crate::envelope::Envelope;
use crate::link::{Backend, Confirm, Ctx, Link, Session, Trip};
use crate::mqtt::{
    acked, all, deliver_until_taken, err, expect, parse_url, qos, written, AbortOnDrop, SharedAcks,
};
use futures_util::FutureExt;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Outgoing, Packet, Publish, QoS};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Clone)]
pub(crate) struct Mqtt3Link {
    client: AsyncClient,
    acks: SharedAcks,
    qos: QoS,
    trip: Trip,
}

impl Link for Mqtt3Link {
    async fn send(&self, batch: &[Envelope]) -> Result<Confirm, String> {
        let mut expected = Vec::with_capacity(batch.len());
        for env in batch {
            expected.push(expect(&self.acks));
            self.client
                .publish(env.name.clone(), self.qos, false, env.payload.clone())
                .await
                .map_err(err)?;
        }
        Ok(all(expected))
    }

    fn trip(&self) {
        self.trip.trip();
    }
}

/// The MQTT 3.1.1 bridge backend.
pub(crate) struct Mqtt3;

impl Backend for Mqtt3 {
    type Link = Mqtt3Link;

    async fn connect(&self, ctx: Arc<Ctx>) -> Result<(Mqtt3Link, Session), String> {
        let cfg = &ctx.cfg;
        let (host, port, creds) = parse_url(&cfg.url)?;
        let id = cfg
            .client_id
            .clone()
            .unwrap_or_else(|| format!("mitto-bridge-{}", cfg.name));
        let mut o = MqttOptions::new(id, host, port);
        o.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(false)
            .set_manual_acks(true);
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
        let q = qos(cfg.qos).1;
        for r in &ctx.inbound {
            client.subscribe(r.remote_filter(), q).await.map_err(err)?;
        }
        let trip = Trip::default();
        let acks = SharedAcks::default();
        let link = Mqtt3Link {
            client: client.clone(),
            acks: acks.clone(),
            qos: q,
            trip: trip.clone(),
        };
        let (tx, mut rx) = mpsc::channel::<Publish>(window.max(1));
        let inbound = AbortOnDrop(tokio::spawn({
            let (ctx, client) = (ctx.clone(), client.clone());
            async move {
                while let Some(p) = rx.recv().await {
                    let env = Envelope {
                        name: p.topic.clone(),
                        payload: p.payload.clone(),
                        ..Envelope::default()
                    };
                    deliver_until_taken(&ctx, env).await;
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
                    Ok(Event::Incoming(Packet::PubAck(a))) => acked(&acks, a.pkid, Ok(())),
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
