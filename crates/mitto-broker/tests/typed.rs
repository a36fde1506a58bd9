//! Typed events (`publish_typed`, `subscribe_typed`): one rule on both transports, in-process
//! (`inproc://`) and TCP. A publish never fails because of what a subscriber expects; a typed
//! subscriber reads each message as its type, gets an `Err` item for one that does not decode,
//! and goes on; wildcard typed subscriptions may see several types. In process, a value of the
//! subscriber's very type travels by reference, never serialized.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
#[path = "support/bus_env.rs"]
mod bus_env;

use bus_env::*;
use mitto::{Codec, Error, Status};
use mitto_broker::BrokerConfig;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

on_both_transports! {
    case_other_types_are_err_items => other_types_are_err_items_inproc, other_types_are_err_items_tcp;
    case_compatible_types_decode => compatible_types_decode_inproc, compatible_types_decode_tcp;
}

// ---------------------------------------------------------------------------------------------
// one rule on both transports

/// Only the `level` of a [`Reading`]: its encoding decodes as one.
#[derive(Debug, Deserialize)]
struct Level {
    level: i64,
}

/// A typed subscriber's `Err` item for a message that is not its `T`: BAD_REQUEST, naming the
/// subject and the expected type.
fn not_a<T>(e: &Error, subject: &str) {
    assert_eq!(e.status(), Status::BAD_REQUEST, "{e}");
    let (m, want) = (e.message(), std::any::type_name::<T>());
    assert!(m.contains(subject) && m.contains(want), "{m}");
}

/// Another type on a typed subject: the publish succeeds, the subscriber of the other type
/// gets an `Err` item and goes on, and a wildcard typed subscription sees every type there.
async fn case_other_types_are_err_items(env: &Env) {
    let (a, b, p) = (env.client().await, env.client().await, env.client().await);
    let mut readings = a.subscribe_typed::<Reading>("wt.orders").await.unwrap();
    // Filters that overlap a subject read by another type are allowed.
    let mut alarms = b.subscribe_typed::<Alarm>("wt.orders").await.unwrap();
    let mut all = b.subscribe_typed::<Alarm>("wt.>").await.unwrap();
    b.flush().await.unwrap();
    a.flush().await.unwrap();
    p.publish_typed("wt.orders", Alarm { code: 1 })
        .await
        .expect("a publish never fails for what a subscriber expects");
    not_a::<Reading>(&next_typed(&mut readings).await.unwrap_err(), "wt.orders");
    assert_eq!(next_typed(&mut alarms).await.unwrap().code, 1);
    assert_eq!(next_typed(&mut all).await.unwrap().code, 1);
    // Every subscription goes on: a reading is Ok for `readings`, an Err for the others.
    p.publish_typed("wt.orders", Reading::new("ok", 1))
        .await
        .unwrap();
    assert_eq!(next_typed(&mut readings).await.unwrap().sensor, "ok");
    not_a::<Alarm>(&next_typed(&mut alarms).await.unwrap_err(), "wt.orders");
    not_a::<Alarm>(&next_typed(&mut all).await.unwrap_err(), "wt.orders");
    // Bytes of no type at all: an Err item too, and the stream goes on.
    p.publish("wt.orders", "not json").await.unwrap();
    p.publish_typed("wt.orders", Reading::new("next", 2))
        .await
        .unwrap();
    not_a::<Reading>(&next_typed(&mut readings).await.unwrap_err(), "wt.orders");
    assert_eq!(next_typed(&mut readings).await.unwrap().sensor, "next");
    // A wildcard subscription takes whatever type each subject carries.
    p.publish_typed("wt.eu.alarm", Alarm { code: 7 })
        .await
        .unwrap();
    // (the two messages before, on wt.orders, first)
    for _ in 0..2 {
        not_a::<Alarm>(&next_typed(&mut all).await.unwrap_err(), "wt.orders");
    }
    assert_eq!(next_typed(&mut all).await.unwrap().code, 7);
}

/// A value of another Rust type decodes where the encodings agree, with the publisher's codec
/// (named by its `content-type`), whatever the subscriber's own codec: in process as over TCP.
async fn case_compatible_types_decode(env: &Env) {
    let s = env.client().await;
    let mut levels = s.subscribe_typed::<Level>("plant.>").await.unwrap();
    let mut values = s
        .subscribe_typed::<serde_json::Value>("plant.>")
        .await
        .unwrap();
    s.flush().await.unwrap();
    let json_pub = env.client().await;
    let msgpack_pub = env.client_with(opts().codec(Codec::MsgPack)).await;
    let v = Arc::new(Reading::new("boiler", 90));
    json_pub
        .publish_shared("plant.temp", v.clone())
        .await
        .unwrap();
    let first = next_typed(&mut levels).await.unwrap();
    assert_eq!(first.level, 90);
    assert_eq!(
        first.message().headers().content_type(),
        Some("application/json")
    );
    // Two publishers' connections keep no order between them: the second publishes once the
    // first's message has arrived.
    msgpack_pub
        .publish_typed("plant.temp", Reading::new("chiller", 4))
        .await
        .unwrap();
    let second = next_typed(&mut levels).await.unwrap();
    assert_eq!(second.level, 4);
    assert_eq!(
        second.message().headers().content_type(),
        Some("application/msgpack")
    );
    let want = serde_json::json!({"sensor": "boiler", "level": 90});
    assert_eq!(
        *next_typed(&mut values).await.unwrap().value().as_ref(),
        want
    );
    let want = serde_json::json!({"sensor": "chiller", "level": 4});
    assert_eq!(
        *next_typed(&mut values).await.unwrap().value().as_ref(),
        want
    );
    assert_eq!(
        v.encodes(),
        1,
        "encoded once for both subscribers of other types"
    );
}

// ---------------------------------------------------------------------------------------------
// in-process only: values by reference, local and remote subscribers, values too large

/// A reading that counts how often it is serialized.
#[derive(Debug, Deserialize)]
struct Reading {
    sensor: String,
    level: i64,
    #[serde(skip)]
    encodes: Arc<AtomicUsize>,
}

impl Reading {
    fn new(sensor: &str, level: i64) -> Reading {
        Reading {
            sensor: sensor.to_owned(),
            level,
            encodes: Arc::default(),
        }
    }

    fn encodes(&self) -> usize {
        self.encodes.load(Ordering::SeqCst)
    }
}

impl Serialize for Reading {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.encodes.fetch_add(1, Ordering::SeqCst);
        let mut st = s.serialize_struct("Reading", 2)?;
        st.serialize_field("sensor", &self.sensor)?;
        st.serialize_field("level", &self.level)?;
        st.end()
    }
}

/// Another type, whose encoding does not decode as a [`Reading`] (nor a reading as one).
#[derive(Debug, Serialize, Deserialize)]
struct Alarm {
    code: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_values_travel_in_process_by_reference() {
    let env = Env::start(Transport::Inproc).await;
    bounded("typed in-process delivery", async {
        let s = env.inproc_client().await;
        let p = env.inproc_client().await;
        let mut a = s.subscribe_typed::<Reading>("sensors.temp").await.unwrap();
        // On the publisher's own client too.
        let mut b = p.subscribe_typed::<Reading>("sensors.*").await.unwrap();
        let v = Arc::new(Reading::new("t1", 21));
        p.publish_shared("sensors.temp", v.clone()).await.unwrap();
        for sub in [&mut a, &mut b] {
            let ev = next_typed(sub).await.unwrap();
            assert!(Arc::ptr_eq(ev.value(), &v), "the publisher's very Arc");
            assert_eq!((ev.sensor.as_str(), ev.level), ("t1", 21));
            assert_eq!(ev.message().subject(), "sensors.temp");
        }
        assert_eq!(v.encodes(), 0, "never serialized");
        // By value: both subscribers share the one Arc made of it.
        p.publish_typed("sensors.temp", Reading::new("t2", 22))
            .await
            .unwrap();
        let x = next_typed(&mut a).await.unwrap();
        let y = next_typed(&mut b).await.unwrap();
        assert!(Arc::ptr_eq(x.value(), y.value()));
        assert_eq!(x.sensor, "t2");
        assert_eq!(x.encodes(), 0, "never serialized");
        assert_eq!(env.stat("msgs_in"), 2);
        assert_eq!(env.stat("bytes_in"), 0, "no payload bytes at all");
    })
    .await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_and_remote_subscribers_of_one_subject() {
    let env = Env::start(Transport::Inproc).await;
    bounded("mixed subscribers", async {
        let local = env.inproc_client().await;
        let remote = env.tcp_client().await;
        let mut l_typed = local
            .subscribe_typed::<Reading>("plant.temp")
            .await
            .unwrap();
        let mut l_raw = local.subscribe("plant.temp").await.unwrap();
        let mut r_raw = remote.subscribe("plant.temp").await.unwrap();
        let mut r_typed = remote
            .subscribe_typed::<Reading>("plant.temp")
            .await
            .unwrap();
        let p = env.inproc_client().await;
        let v = Arc::new(Reading::new("boiler", 90));
        p.publish_shared("plant.temp", v.clone()).await.unwrap();
        let want = serde_json::json!({"sensor": "boiler", "level": 90});
        // In-process, typed: the publisher's Arc.
        let ev = next_typed(&mut l_typed).await.unwrap();
        assert!(Arc::ptr_eq(ev.value(), &v));
        // In-process, untyped: the value is there, and the payload is its JSON, on demand.
        let m = next(&mut l_raw).await;
        assert!(Arc::ptr_eq(&m.value::<Reading>().unwrap(), &v));
        assert_eq!(json(m.payload()), want);
        assert_eq!(m.headers().content_type(), Some("application/json"));
        // Over TCP: JSON bytes with their content type, decoded by a typed subscriber.
        let m = next(&mut r_raw).await;
        assert_eq!(m.headers().content_type(), Some("application/json"));
        assert_eq!(json(m.payload()), want);
        assert!(m.value::<Reading>().is_none());
        let ev = next_typed(&mut r_typed).await.unwrap();
        assert_eq!((ev.sensor.as_str(), ev.level), ("boiler", 90));
        assert!(!Arc::ptr_eq(ev.value(), &v));
        assert_eq!(v.encodes(), 1, "encoded once for everyone who needed bytes");
        // A TCP publish reaches in-process subscribers decoded.
        remote
            .publish_typed("plant.temp", Reading::new("chiller", 4))
            .await
            .unwrap();
        let ev = next_typed(&mut l_typed).await.unwrap();
        assert_eq!((ev.sensor.as_str(), ev.level), ("chiller", 4));
        let m = next(&mut l_raw).await;
        assert!(m.value::<Reading>().is_none());
        assert_eq!(m.headers().content_type(), Some("application/json"));
        assert_eq!(
            json(m.payload()),
            serde_json::json!({"sensor": "chiller", "level": 4})
        );
        // Plain JSON bytes with no content type: decoded with the default codec.
        remote
            .publish("plant.temp", r#"{"sensor":"raw","level":5}"#)
            .await
            .unwrap();
        let ev = next_typed(&mut l_typed).await.unwrap();
        assert_eq!((ev.sensor.as_str(), ev.level), ("raw", 5));
    })
    .await;
    env.shutdown().await;
}

/// A typed value too large for the wire: in-process subscribers could take it as it is, but a
/// remote subscriber cannot get its encoding. The publish must then fail, as an untyped publish
/// of as many bytes does, rather than be accepted and silently never reach the remote one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_values_too_large_for_the_wire_are_not_lost_silently() {
    fn small_payloads(cfg: &mut BrokerConfig) {
        cfg.max_payload = 1024;
    }
    let env = Env::start_with(Transport::Inproc, small_payloads).await;
    bounded("a typed value too large for the wire", async {
        let local = env.inproc_client().await;
        let remote = env.tcp_client().await;
        let mut far = remote.subscribe("big.value").await.unwrap();
        let e = local
            .publish("big.value", vec![b'x'; 4000])
            .await
            .unwrap_err();
        assert_eq!(e.status(), Status::PAYLOAD_TOO_LARGE, "{e}");
        match local.publish_typed("big.value", "y".repeat(4000)).await {
            Err(e) => assert_eq!(e.status(), Status::PAYLOAD_TOO_LARGE, "{e}"),
            Ok(()) => {
                let got = tokio::time::timeout(Duration::from_millis(500), far.next()).await;
                assert!(
                    matches!(&got, Ok(Some(m)) if m.payload().len() > 4000),
                    "the typed publish was accepted, but the TCP subscriber got {got:?}"
                );
            }
        }
    })
    .await;
    env.shutdown().await;
}
