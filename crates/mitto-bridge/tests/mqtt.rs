//! The MQTT bridge against Mosquitto, with `rumqttc` on the other side: the shared daemon for
//! both ways, and a daemon of the test's own for a restart mid-stream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use mitto::{Client, Headers, PublishOptions, WellKnown};
use mitto_bridge::{BridgeConfig, Direction, Kind, State, ORIGIN_HEADER};
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use std::time::Duration;
use support::*;
use tokio::sync::mpsc;

/// A third-party MQTT 5 client: its publishes received go to the channel.
async fn other_side(
    id: &str,
    port: u16,
    filter: &str,
    clean: bool,
) -> (
    AsyncClient,
    mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Publish>,
) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_clean_start(clean);
    if !clean {
        o.set_session_expiry_interval(Some(600));
    }
    let (c, mut el) = AsyncClient::new(o, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    let (sub_tx, mut sub_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(p);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = sub_tx.send(());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    c.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), sub_rx.recv())
        .await
        .expect("SUBACK")
        .unwrap();
    (c, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_both_ways_with_properties_and_no_echo() {
    if !up("Mosquitto", 1883) {
        return;
    }
    let name = unique("mqtt");
    let mut cfg = BridgeConfig::new(&name, Kind::Mqtt, "mqtt://127.0.0.1:1883").map(
        &format!("{name}.>"),
        None,
        None,
    );
    cfg.client_id = Some(format!("{name}-bridge"));
    let (broker, url) = broker(vec![cfg]).await;
    wait_for("the bridge to connect", || snap(&broker).state == State::Up).await;
    let (other, mut got) =
        other_side(&format!("{name}-other"), 1883, &format!("{name}/#"), true).await;
    let app = Client::connect(&url, client_opts()).await.unwrap();
    let mut sub = app.subscribe(&format!("{name}.>")).await.unwrap();

    let h = Headers::builder()
        .insert(WellKnown::ContentType, "application/json")
        .unwrap()
        .insert(WellKnown::CorrelationId, "c-9")
        .unwrap()
        .insert_custom("tenant", "acme")
        .unwrap()
        .build();
    app.publish_with(
        &format!("{name}.a.b"),
        "[1]",
        PublishOptions::new().headers(h).ack(),
    )
    .await
    .unwrap();
    let p = tokio::time::timeout(Duration::from_secs(10), got.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&p.topic[..], format!("{name}/a/b").as_bytes());
    assert_eq!(&p.payload[..], b"[1]");
    let props = p.properties.unwrap();
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    assert_eq!(props.correlation_data.as_deref(), Some(&b"c-9"[..]));
    assert!(props
        .user_properties
        .contains(&("tenant".into(), "acme".into())));
    assert!(props
        .user_properties
        .iter()
        .any(|(k, _)| k == ORIGIN_HEADER));
    assert_eq!(sub.next().await.unwrap().subject(), format!("{name}.a.b"));

    // In: a rumqttc publish with MQTT 5 properties reaches mitto with them as headers.
    let props = PublishProperties {
        content_type: Some("text/plain".into()),
        correlation_data: Some("c-10".into()),
        user_properties: vec![("tenant".into(), "globex".into())],
        ..PublishProperties::default()
    };
    other
        .publish_with_properties(format!("{name}/in/x"), QoS::AtLeastOnce, false, "hi", props)
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.subject(), format!("{name}.in.x"));
    assert_eq!(m.headers().content_type(), Some("text/plain"));
    assert_eq!(
        m.headers().get(WellKnown::CorrelationId),
        Some(&b"c-10"[..])
    );
    assert_eq!(m.headers().get_custom("tenant"), Some(&b"globex"[..]));
    // The other side sees its own publish once, and no copy back from the bridge.
    let p = tokio::time::timeout(Duration::from_secs(10), got.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&p.payload[..], b"hi");
    wait_for("the counters", || {
        let s = snap(&broker);
        s.msgs_in >= 1 && s.msgs_out >= 1 && s.loops_prevented >= 2
    })
    .await;
    assert!(tokio::time::timeout(Duration::from_millis(300), got.recv())
        .await
        .is_err());
    assert!(tokio::time::timeout(Duration::from_millis(100), sub.next())
        .await
        .is_err());
    let s = snap(&broker);
    assert_eq!((s.msgs_in, s.msgs_out, s.drops), (1, 1, 0), "{s:?}");
    broker.shutdown().await;
}

/// A Mosquitto of the test's own, on a free port, keeping sessions across restarts.
struct Mosquitto {
    child: std::process::Child,
}

impl Mosquitto {
    fn start(port: u16, dir: &std::path::Path) -> Mosquitto {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n",
                dir.display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto runs");
        Mosquitto { child }
    }

    /// Stops it as an operator would (SIGTERM: it saves its sessions).
    fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_restart_mid_stream_loses_no_acked_message() {
    if std::process::Command::new("mosquitto")
        .arg("-h")
        .output()
        .is_err()
    {
        eprintln!("\n*** SKIPPED: no mosquitto binary to run a broker of the test's own ***\n");
        return;
    }
    let dir = std::env::temp_dir().join(unique("mitto-mqtt-"));
    std::fs::create_dir_all(&dir).unwrap();
    // Mosquitto started as root runs as its own user, which must be able to save sessions here.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let port = free_port();
    let mosq = Mosquitto::start(port, &dir);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let name = unique("mqttr");
    let mut cfg = BridgeConfig::new(&name, Kind::Mqtt, &format!("mqtt://127.0.0.1:{port}")).map(
        &format!("{name}.>"),
        None,
        Some(Direction::Out),
    );
    cfg.backoff_min_ms = 50;
    cfg.backoff_max_ms = 200;
    let (broker, url) = broker(vec![cfg]).await;
    wait_for("the bridge to connect", || snap(&broker).state == State::Up).await;
    // The other side keeps a session, so what the bridge sends while it reconnects waits.
    let (_other, mut got) =
        other_side(&format!("{name}-other"), port, &format!("{name}/#"), false).await;
    let app = Client::connect(&url, client_opts()).await.unwrap();
    let send = |i: u32| {
        let app = app.clone();
        let subject = format!("{name}.n");
        async move {
            app.publish_with(&subject, i.to_string(), PublishOptions::new().ack())
                .await
                .unwrap()
        }
    };
    for i in 0..50 {
        send(i).await;
    }
    wait_for("the first half to be confirmed", || {
        snap(&broker).msgs_out == 50
    })
    .await;
    mosq.stop();
    wait_for("the bridge to see the loss", || {
        snap(&broker).state != State::Up
    })
    .await;
    // Acked by the broker while the backend is down: held, not confirmed, not ACKed.
    for i in 50..100 {
        send(i).await;
    }
    wait_for("the second half to be held", || {
        snap(&broker).buffered_msgs == 50
    })
    .await;
    let s = snap(&broker);
    assert_eq!(
        s.msgs_out, 50,
        "nothing is confirmed while Mosquitto is down: {s:?}"
    );
    let mosq = Mosquitto::start(port, &dir);
    wait_for("every message confirmed after the restart", || {
        let s = snap(&broker);
        s.msgs_out == 100 && s.buffered_msgs == 0
    })
    .await;
    let s = snap(&broker);
    assert!(s.reconnects >= 1 && s.drops == 0, "{s:?}");
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 100 {
        let p = tokio::time::timeout(Duration::from_secs(20), got.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of 100 arrived", seen.len()))
            .unwrap();
        seen.insert(String::from_utf8_lossy(&p.payload).parse::<u32>().unwrap());
    }
    assert_eq!(seen, (0..100).collect());
    broker.shutdown().await;
    drop(mosq);
    let _ = std::fs::remove_dir_all(&dir);
}
