//! Regenerates the conformance vectors in `spec/vectors/` from this implementation.
//!
//! `cargo run -p mitto-proto --example gen_vectors -- spec/vectors`
//!
//! The vectors are the contract; once published they change only with the protocol version.
//! The conformance test (`tests/vectors.rs`) checks that the code still reproduces them.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/vectors.rs"]
mod vectors;

use bytes::Bytes;
use mitto_proto::compress::compress;
use mitto_proto::negotiate::Features;
use mitto_proto::{
    Delivery, Flags, Frame, FrameType, Headers, HealthReport, HealthState, Hello, MsgKind,
    SlowConsumerPolicy, StatsReport, Status, Subject, SubscribeOptions, Version, WellKnown,
};
use serde_json::{json, Value};
use std::time::Duration;
use vectors::{invalid_vector, valid_vector};

fn s(x: &str) -> Subject {
    Subject::new(x).unwrap()
}

fn b(f: &Frame) -> Vec<u8> {
    f.to_bytes().unwrap().to_vec()
}

fn hello_body(reply: bool) -> Hello {
    Hello {
        version: Version { major: 1, minor: 0 },
        flags: if reply { Hello::RESUMED } else { 0 },
        features: Features::STREAMING
            | Features::ACKS
            | Features::FLOW_CONTROL
            | Features::SESSION_RESUME,
        max_payload: if reply { 1 << 20 } else { 0 },
        max_headers: 0,
        keepalive_ms: 30_000,
        name: if reply {
            "mitto-broker".into()
        } else {
            "orders-svc".into()
        },
        client_id: "c-42".into(),
        session: if reply { "s-7".into() } else { String::new() },
        user: if reply { String::new() } else { "alice".into() },
        auth: if reply {
            Bytes::new()
        } else {
            Bytes::from_static(b"secret")
        },
    }
}

fn valid() -> Vec<Value> {
    let mut v = Vec::new();
    let mut add = |name: &str, doc: &str, f: Frame| v.push(valid_vector(name, doc, &b(&f), None));

    add(
        "hello_client",
        "client HELLO: version 1.0, features, keepalive, user/password",
        Frame::hello(&hello_body(false), false).unwrap(),
    );
    add(
        "hello_server_reply",
        "server HELLO reply: REPLY flag, agreed limits, resumed session",
        Frame::hello(&hello_body(true), true).unwrap().with_id(0),
    );
    add(
        "hello_other_major",
        "client HELLO whose body offers major 2 in a major-1 header: it decodes (the body's \
         version is negotiated, not checked by the decoder); a server that speaks only major 1 \
         refuses it with ERROR and CLOSE UNSUPPORTED_VERSION (sections 7.1, 8.1)",
        Frame::hello(
            &Hello {
                version: Version { major: 2, minor: 0 },
                ..hello_body(false)
            },
            false,
        )
        .unwrap()
        .with_id(3),
    );
    add(
        "subscribe_defaults",
        "SUBSCRIBE sid 1 to a literal subject, empty body = defaults",
        Frame::subscribe(1, s("orders.created"), &SubscribeOptions::default()).unwrap(),
    );
    add(
        "subscribe_wildcards_queue_acked",
        "SUBSCRIBE with * and >, queue group, at-least-once, drop-oldest, credit, ACK_REQUIRED",
        Frame::subscribe(
            2,
            s("orders.*.>"),
            &SubscribeOptions {
                delivery: Delivery::AtLeastOnce,
                policy: SlowConsumerPolicy::DropOldest,
                max_pending: 1000,
                ack_wait_ms: 30_000,
                max_deliver: 5,
                credit: 64,
                queue: Some("workers".into()),
                durable: None,
            },
        )
        .unwrap()
        .with_id(11)
        .with_flags(Flags::ACK_REQUIRED),
    );
    add(
        "subscribe_full_wildcard",
        "SUBSCRIBE to '>' with the block policy",
        Frame::subscribe(
            3,
            s(">"),
            &SubscribeOptions {
                policy: SlowConsumerPolicy::Block,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    add(
        "subscribe_durable",
        "SUBSCRIBE at-least-once with the durable name 'billing' after an empty queue group (1.1)",
        Frame::subscribe(
            4,
            s("orders.>"),
            &SubscribeOptions {
                delivery: Delivery::AtLeastOnce,
                durable: Some("billing".into()),
                ..Default::default()
            },
        )
        .unwrap()
        .with_id(12)
        .with_flags(Flags::ACK_REQUIRED),
    );
    add(
        "unsubscribe",
        "UNSUBSCRIBE sid 2 at once",
        Frame::unsubscribe(2, None),
    );
    add(
        "unsubscribe_after",
        "UNSUBSCRIBE sid 2 after 10 more messages",
        Frame::unsubscribe(2, Some(10)),
    );
    add(
        "publish_minimal",
        "PUBLISH with an empty payload",
        Frame::publish(s("demo.hello"), Bytes::new()),
    );
    add(
        "publish_hello",
        "PUBLISH 'hi' to demo.hello",
        Frame::publish(s("demo.hello"), "hi").with_id(1),
    );
    add(
        "publish_all_message_flags",
        "PUBLISH with ACK_REQUIRED and URGENT, kind COMMAND",
        Frame::publish(s("jobs.run"), "x")
            .with_flags(Flags::ACK_REQUIRED | Flags::URGENT)
            .with_kind(MsgKind::COMMAND)
            .with_id(99),
    );
    for (k, name) in [
        (MsgKind::EVENT, "event"),
        (MsgKind::STATE, "state"),
        (MsgKind::LOG, "log"),
        (MsgKind::METRIC, "metric"),
        (MsgKind(128), "app_128"),
        (MsgKind(255), "app_255"),
    ] {
        add(
            &format!("publish_kind_{name}"),
            &format!("PUBLISH with message kind {}", k.0),
            Frame::publish(s("k.t"), "").with_kind(k),
        );
    }
    let all_headers = Headers::builder()
        .insert(WellKnown::ContentType, "application/json")
        .unwrap()
        .insert(WellKnown::CorrelationId, "corr-1")
        .unwrap()
        .insert(WellKnown::ReplyTo, "_INBOX.c42.1")
        .unwrap()
        .deadline(Duration::from_millis(1500))
        .insert(
            WellKnown::Traceparent,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .unwrap()
        .insert(WellKnown::Tracestate, "congo=t61rcWkgMzE")
        .unwrap()
        .ttl(Duration::from_secs(60))
        .insert(WellKnown::Auth, "token-abc")
        .unwrap()
        .build();
    add(
        "publish_every_well_known_header",
        "PUBLISH carrying each of the 8 well-known headers by compact id",
        Frame::publish(s("orders.created"), "{}").with_headers(all_headers),
    );
    let custom = Headers::builder()
        .insert_custom("tenant", "acme")
        .unwrap()
        .insert_custom("tenant", "beta")
        .unwrap()
        .insert_custom("x-empty", "")
        .unwrap()
        .insert_reserved(42, [0u8, 1, 2])
        .unwrap()
        .build();
    add(
        "publish_custom_repeated_reserved_headers",
        "free-form keys (one repeated, one empty value) and a reserved compact id 42",
        Frame::publish(s("a.b"), "p").with_headers(custom),
    );
    add(
        "publish_utf8_subject",
        "subject tokens may be any UTF-8 without whitespace",
        Frame::publish(s("café.größe.東京"), "u"),
    );
    add(
        "publish_compressed",
        "PUBLISH with a COMPRESSED payload: u32 BE length then an LZ4 block",
        Frame::publish(s("logs.app"), compress(&b"mitto ".repeat(16)))
            .with_flags(Flags::COMPRESSED)
            .with_kind(MsgKind::LOG),
    );
    add(
        "event_delivery",
        "EVENT delivery 1001 on sid 2",
        Frame::event(2, 1001, s("orders.eu.created"), "{\"id\":1}"),
    );
    add(
        "event_acked_urgent",
        "EVENT that must be ACKed, URGENT",
        Frame::event(2, 1002, s("orders.eu.created"), "x")
            .with_flags(Flags::ACK_REQUIRED | Flags::URGENT),
    );
    add(
        "event_redelivered",
        "EVENT delivered for the third time: delivery-count 3 (1.1), ACK_REQUIRED",
        Frame::event(2, 1003, s("orders.eu.created"), "x")
            .with_flags(Flags::ACK_REQUIRED)
            .with_headers(Headers::builder().delivery_count(3).build()),
    );
    add("ack_publish", "ACK of PUBLISH id 99", Frame::ack(99, 0));
    add(
        "ack_delivery",
        "ACK of delivery 1002 on sid 2",
        Frame::ack(1002, 2),
    );
    add(
        "nack_delivery",
        "NACK of delivery 1002 on sid 2, redeliver at once",
        Frame::nack(1002, 2, None),
    );
    add(
        "nack_with_delay",
        "NACK with a 250 ms redelivery delay",
        Frame::nack(1002, 2, Some(250)),
    );
    add(
        "error_about_frame",
        "ERROR about frame 7: method not found",
        Frame::error(7, Status::METHOD_NOT_FOUND, "no method calc.div"),
    );
    add(
        "error_connection",
        "connection-level ERROR (id 0) with an unknown status code passed through",
        Frame::error(0, Status(4000), "custom"),
    );
    add("ping", "PING id 1", Frame::ping(1));
    add(
        "pong_with_payload",
        "PONG echoing a PING payload",
        Frame::pong(&Frame::ping(2).with_payload("t0")),
    );
    add(
        "close",
        "CLOSE: server draining",
        Frame::close(Status::UNAVAILABLE, "server shutting down"),
    );
    add(
        "request_unary",
        "REQUEST call 5 to calc.add with a deadline and JSON content type",
        Frame::request(5, s("calc.add"), "[1,2]").with_headers(
            Headers::builder()
                .insert(WellKnown::ContentType, "application/json")
                .unwrap()
                .deadline(Duration::from_millis(250))
                .build(),
        ),
    );
    add(
        "request_client_stream",
        "REQUEST with START: the request body continues as STREAM frames",
        Frame::request(6, s("upload.put"), "").with_flags(Flags::START),
    );
    add(
        "request_max_id",
        "REQUEST with the largest id",
        Frame::request(u64::MAX, s("x"), "").with_flags(Flags::URGENT),
    );
    add(
        "response_ok",
        "RESPONSE OK to call 5",
        Frame::response(5, Status::OK, "3"),
    );
    add(
        "response_timeout",
        "RESPONSE TIMEOUT to call 5",
        Frame::response(5, Status::TIMEOUT, ""),
    );
    add(
        "response_compressed",
        "compressed RESPONSE",
        Frame::response(5, Status::OK, compress(&[7u8; 300])).with_flags(Flags::COMPRESSED),
    );
    add(
        "stream_item",
        "STREAM item of call 6",
        Frame::stream(6, "chunk-1", false),
    );
    add(
        "stream_end",
        "STREAM END of call 6",
        Frame::stream(6, "", true),
    );
    add("cancel", "CANCEL call 5", Frame::cancel(5));
    add(
        "credit_stream",
        "CREDIT of 16 items to the stream of call 6",
        Frame::credit_stream(6, 16),
    );
    add(
        "credit_subscription",
        "CREDIT of 100 EVENTs to sid 2",
        Frame::credit_subscription(2, 100),
    );
    add("health_query", "HEALTH query", Frame::health_query(8));
    add(
        "health_reply",
        "HEALTH reply: MessagePack map",
        Frame::health_reply(
            8,
            &HealthReport {
                state: HealthState::Serving,
                uptime_ms: 12_345,
                server: "mitto 0.1.0".into(),
                detail: None,
            },
        )
        .unwrap(),
    );
    add("stats_query", "STATS query", Frame::stats_query(9));
    let mut stats = StatsReport::default();
    stats.values.insert("msgs_in".into(), 10);
    stats.values.insert("msgs_out".into(), 20);
    stats.values.insert("slow_consumer_drops".into(), 0);
    add(
        "stats_reply",
        "STATS reply: MessagePack map of counters",
        Frame::stats_reply(9, &stats).unwrap(),
    );
    add(
        "register_service",
        "REGISTER service instance 9 for calc.* in queue group calc",
        Frame::register(
            9,
            s("calc.*"),
            &SubscribeOptions {
                queue: Some("calc".into()),
                ..Default::default()
            },
        )
        .unwrap()
        .with_flags(Flags::ACK_REQUIRED)
        .with_id(3),
    );
    add(
        "unregister_service",
        "UNREGISTER service instance 9",
        Frame::unregister(9),
    );

    // boundary sizes
    let at_limit = Frame::publish(s("b"), vec![0xEEu8; 16]);
    v.push(valid_vector(
        "payload_exactly_at_limit",
        "a 16-byte payload with max_payload 16",
        &b(&at_limit),
        Some(json!({ "max_payload": 16 })),
    ));
    let long_subject = "a".repeat(4096);
    v.push(valid_vector(
        "subject_exactly_at_limit",
        "a 4096-byte subject (the default limit)",
        &b(&Frame::publish(s(&long_subject), "")),
        None,
    ));
    let mut all = Frame::response(1, Status(u16::MAX), "");
    all.aux = u32::MAX;
    v.push(valid_vector(
        "header_fields_max",
        "id, aux and status at their maximum values",
        &b(&all.with_id(u64::MAX)),
        None,
    ));
    v.extend(stream_vectors());
    v
}

/// The durable streams' admin requests, answers, consumer binding and deliveries (section 19).
fn stream_vectors() -> Vec<Value> {
    let mut v = Vec::new();
    let mut add = |name: &str, doc: &str, f: Frame| v.push(valid_vector(name, doc, &b(&f), None));
    let json = |v: Value| Bytes::from(v.to_string());
    add(
        "stream_create_request",
        "REQUEST to $MITTO.STREAM.CREATE.orders with the stream's JSON configuration (19.2)",
        Frame::request(
            21,
            s("$MITTO.STREAM.CREATE.orders"),
            json(
                json!({"subjects": ["orders.>"], "max_msgs": 100000, "max_age": "7days",
                        "discard": "old", "fsync": "always"}),
            ),
        ),
    );
    add(
        "stream_info_response",
        "RESPONSE OK to an admin request: the stream's configuration and state (19.2)",
        Frame::response(
            21,
            Status::OK,
            json(
                json!({"config": {"name": "orders", "subjects": ["orders.>"],
                        "max_msgs": 100000, "max_age": "7days", "discard": "old",
                        "fsync": "always"},
                        "state": {"msgs": 0, "bytes": 0, "first_seq": 1, "last_seq": 0,
                                  "first_ts": 0, "last_ts": 0, "failed": false}}),
            ),
        ),
    );
    add(
        "stream_not_found_response",
        "RESPONSE NOT_FOUND to an admin request: a stream that does not exist or that the \
         user may not see (19.4)",
        Frame::response(22, Status::NOT_FOUND, "no stream orders"),
    );
    add(
        "consumer_create_request",
        "REQUEST to $MITTO.CONSUMER.CREATE.orders.billing: a durable consumer from sequence \
         10, dead letters after 5 deliveries (19.3)",
        Frame::request(
            23,
            s("$MITTO.CONSUMER.CREATE.orders.billing"),
            json(json!({"deliver": "seq", "start_seq": 10, "ack_wait": "30s",
                        "max_deliver": 5, "dead_letter": "orders.dead", "replay": "instant"})),
        ),
    );
    add(
        "consumer_subscribe",
        "SUBSCRIBE binding sid 7 to consumer billing of stream orders: at-least-once, credit \
         64, ACK_REQUIRED (19.5)",
        Frame::subscribe(
            7,
            s("$MITTO.CONSUMER.DELIVER.orders.billing"),
            &SubscribeOptions {
                delivery: Delivery::AtLeastOnce,
                credit: 64,
                ..SubscribeOptions::default()
            },
        )
        .unwrap()
        .with_id(24)
        .with_flags(Flags::ACK_REQUIRED),
    );
    let headers = Headers::builder()
        .insert_custom("mitto-stream", "orders")
        .unwrap()
        .insert_custom("mitto-stream-seq", "42")
        .unwrap()
        .insert_custom("mitto-stream-time-ns", "1764921600000000000")
        .unwrap()
        .delivery_count(2)
        .build();
    add(
        "consumer_event",
        "EVENT of stream sequence 42 (its id) to sid 7, delivered a second time: ACK_REQUIRED, \
         the stream's headers and delivery-count 2 (19.5)",
        Frame::event(7, 42, s("orders.created"), "{\"id\":1}")
            .with_headers(headers)
            .with_flags(Flags::ACK_REQUIRED),
    );
    add(
        "consumer_ack",
        "ACK of stream sequence 42 on sid 7: the consumer's position passes it for good (19.5)",
        Frame::ack(42, 7),
    );
    v
}

/// Sets bytes of an encoded frame.
fn patch(mut bytes: Vec<u8>, at: usize, with: &[u8]) -> Vec<u8> {
    bytes[at..at + with.len()].copy_from_slice(with);
    bytes
}

/// A raw frame with explicit header fields and sections (to build what the API refuses).
#[allow(clippy::too_many_arguments)]
fn raw(
    t: u8,
    flags: u8,
    kind: u8,
    id: u64,
    aux: u32,
    subject: &[u8],
    headers: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"MITO");
    out.extend_from_slice(&[1, flags, t, kind]);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&aux.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&(subject.len() as u16).to_be_bytes());
    out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(subject);
    out.extend_from_slice(headers);
    out.extend_from_slice(payload);
    out
}

fn invalid() -> Vec<Value> {
    let publish = b(&Frame::publish(s("demo.hello"), "hi").with_id(5));
    let pub_t = FrameType::Publish as u8;
    let mut v = Vec::new();
    let mut add = |name: &str, doc: &str, bytes: Vec<u8>| {
        v.push(invalid_vector(name, doc, &bytes, None, false))
    };
    add(
        "bad_magic",
        "a full header whose magic is not MITO: fatal",
        patch(publish.clone(), 0, b"MIPS"),
    );
    add(
        "bad_magic_early",
        "bytes that cannot begin a frame ('GET /'): fatal before 32 bytes arrive",
        b"GET /".to_vec(),
    );
    add(
        "unsupported_version",
        "header version 2: fatal",
        patch(publish.clone(), 4, &[2]),
    );
    add(
        "unsupported_version_zero",
        "header version 0: fatal",
        patch(publish.clone(), 4, &[0]),
    );
    add(
        "unknown_frame_type",
        "frame type 0x7f: skipped, UNSUPPORTED_FEATURE",
        patch(publish.clone(), 6, &[0x7f]),
    );
    add(
        "frame_type_zero",
        "frame type 0 is not defined",
        patch(publish.clone(), 6, &[0]),
    );
    add(
        "reserved_flag_bits",
        "flag bit 7 set",
        patch(publish.clone(), 5, &[0x80]),
    );
    add(
        "flag_not_allowed",
        "START on PUBLISH",
        patch(publish.clone(), 5, &[Flags::START.bits()]),
    );
    add(
        "reply_flag_on_publish",
        "REPLY on PUBLISH",
        patch(publish.clone(), 5, &[Flags::REPLY.bits()]),
    );
    add(
        "reserved_kind",
        "message kind 6 is reserved",
        patch(publish.clone(), 7, &[6]),
    );
    add(
        "payload_over_default_limit",
        "declared payload of 64 MiB + 1: refused from the header alone, before allocating",
        patch(
            publish.clone(),
            28,
            &(64 * 1024 * 1024 + 1u32).to_be_bytes(),
        )[..32]
            .to_vec(),
    );
    add(
        "payload_length_max_u32",
        "declared payload of 4 GiB - 1",
        patch(publish.clone(), 28, &u32::MAX.to_be_bytes())[..32].to_vec(),
    );
    add(
        "headers_over_limit",
        "declared headers block of 64 KiB + 1",
        patch(publish.clone(), 24, &(64 * 1024 + 1u32).to_be_bytes())[..32].to_vec(),
    );
    add(
        "subject_over_limit",
        "declared subject of 4097 bytes",
        patch(publish.clone(), 22, &4097u16.to_be_bytes())[..32].to_vec(),
    );
    add(
        "missing_subject",
        "PUBLISH without a subject",
        raw(pub_t, 0, 0, 1, 0, b"", b"", b"x"),
    );
    add(
        "unexpected_subject",
        "PING with a subject",
        raw(FrameType::Ping as u8, 0, 0, 1, 0, b"a", b"", b""),
    );
    add(
        "subject_not_utf8",
        "subject bytes that are not UTF-8",
        raw(pub_t, 0, 0, 1, 0, b"a.\xff", b"", b""),
    );
    add(
        "subject_empty_token",
        "subject with an empty token",
        raw(pub_t, 0, 0, 1, 0, b"a..b", b"", b""),
    );
    add(
        "subject_with_space",
        "subject with a space",
        raw(pub_t, 0, 0, 1, 0, b"a b", b"", b""),
    );
    add(
        "wildcard_in_publish",
        "PUBLISH to a filter",
        raw(pub_t, 0, 0, 1, 0, b"a.*", b"", b""),
    );
    add(
        "gt_not_last",
        "'>' must be the last token",
        raw(FrameType::Subscribe as u8, 0, 0, 1, 1, b"a.>.b", b"", b""),
    );
    add(
        "header_entry_overruns_block",
        "a header value longer than what is left of the headers block",
        raw(pub_t, 0, 0, 1, 0, b"a", b"\x01\x00\x09text", b""),
    );
    add(
        "header_truncated_length",
        "a header entry cut inside its value length",
        raw(pub_t, 0, 0, 1, 0, b"a", b"\x01\x00", b""),
    );
    add(
        "header_empty_key",
        "free-form header key of length 0",
        raw(pub_t, 0, 0, 1, 0, b"a", b"\x00\x00\x00\x00", b""),
    );
    add(
        "header_key_not_utf8",
        "free-form header key that is not UTF-8",
        raw(pub_t, 0, 0, 1, 0, b"a", b"\x00\x01\xfe\x00\x00", b""),
    );
    add(
        "header_deadline_wrong_size",
        "deadline value of 3 bytes (must be 8)",
        raw(pub_t, 0, 0, 1, 0, b"a", b"\x04\x00\x03abc", b""),
    );
    add(
        "header_delivery_count_wrong_size",
        "delivery-count value of 8 bytes (must be 4)",
        raw(
            FrameType::Event as u8,
            0,
            0,
            1,
            2,
            b"a",
            b"\x09\x00\x08\x00\x00\x00\x00\x00\x00\x00\x02",
            b"",
        ),
    );
    add(
        "header_well_known_in_free_form",
        "free-form key spelling a well-known key",
        raw(
            pub_t,
            0,
            0,
            1,
            0,
            b"a",
            b"\x00\x0ccontent-type\x00\x00",
            b"",
        ),
    );
    add(
        "hello_truncated",
        "HELLO body shorter than its fixed part",
        raw(FrameType::Hello as u8, 0, 0, 0, 0, b"", b"", &[1, 0, 0, 0]),
    );
    add(
        "hello_string_overruns",
        "HELLO whose name length runs past the body",
        raw(
            FrameType::Hello as u8,
            0,
            0,
            0,
            0,
            b"",
            b"",
            &[&[1u8, 0, 0, 0][..], &[0; 16], &[0, 50, b'x']].concat(),
        ),
    );
    add(
        "subscribe_without_sid",
        "SUBSCRIBE with subscription id 0",
        raw(FrameType::Subscribe as u8, 0, 0, 1, 0, b"a", b"", b""),
    );
    add(
        "event_without_sid",
        "EVENT with subscription id 0",
        raw(FrameType::Event as u8, 0, 0, 1, 0, b"a", b"", b""),
    );
    add(
        "subscribe_unknown_policy",
        "SUBSCRIBE options with slow-consumer policy 9",
        raw(
            FrameType::Subscribe as u8,
            0,
            0,
            1,
            1,
            b"a",
            b"",
            &[
                0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        ),
    );
    add(
        "credit_wrong_size",
        "CREDIT body of 3 bytes",
        raw(FrameType::Credit as u8, 0, 0, 1, 0, b"", b"", &[0, 0, 1]),
    );
    add(
        "nack_wrong_size",
        "NACK body of 2 bytes",
        raw(FrameType::Nack as u8, 0, 0, 1, 2, b"", b"", &[0, 1]),
    );
    add(
        "error_reason_not_utf8",
        "ERROR reason that is not UTF-8",
        raw(FrameType::Error as u8, 0, 0, 1, 0, b"", b"", b"\xc3\x28"),
    );
    add(
        "health_query_with_body",
        "a HEALTH query carries no body",
        raw(FrameType::Health as u8, 0, 0, 1, 0, b"", b"", b"x"),
    );
    add(
        "stats_reply_not_msgpack_map",
        "STATS reply whose body is not a map",
        raw(
            FrameType::Stats as u8,
            Flags::REPLY.bits(),
            0,
            1,
            0,
            b"",
            b"",
            b"\xc3",
        ),
    );
    let health = HealthReport {
        state: HealthState::Serving,
        uptime_ms: 5,
        server: "mitto".into(),
        detail: None,
    };
    let report = health.encode().unwrap().to_vec();
    let at = report.windows(7).position(|w| w == b"serving").unwrap();
    add(
        "health_reply_unknown_state",
        "HEALTH reply whose state is none of serving, not_serving, draining",
        raw(
            FrameType::Health as u8,
            Flags::REPLY.bits(),
            0,
            8,
            0,
            b"",
            b"",
            &patch(report, at, b"unknown"),
        ),
    );
    add(
        "compressed_without_prefix",
        "COMPRESSED payload shorter than its length prefix",
        raw(
            pub_t,
            Flags::COMPRESSED.bits(),
            0,
            1,
            0,
            b"a",
            b"",
            b"\x00\x01",
        ),
    );
    add(
        "compressed_over_limit",
        "COMPRESSED payload declaring 64 MiB + 1 uncompressed",
        raw(
            pub_t,
            Flags::COMPRESSED.bits(),
            0,
            1,
            0,
            b"a",
            b"",
            &(64 * 1024 * 1024 + 1u32).to_be_bytes(),
        ),
    );
    v.push(invalid_vector(
        "payload_over_negotiated_limit",
        "a 17-byte payload when max_payload is 16",
        &b(&Frame::publish(s("b"), vec![0u8; 17])),
        Some(json!({ "max_payload": 16 })),
        false,
    ));
    // Before the handshake completes, a receiver decodes with the handshake limits
    // (PROTOCOL.md 8.1): the client's first frame is refused from its header alone.
    let handshake = json!({ "max_payload": 4096, "max_headers": 1024, "max_subject": 256 });
    let hello = b(&Frame::hello(&hello_body(false), false).unwrap());
    v.push(invalid_vector(
        "hello_over_handshake_limit",
        "a first frame (HELLO) declaring 4097 bytes of body, before the handshake: refused from the header",
        &patch(hello.clone(), 28, &4097u32.to_be_bytes())[..32],
        Some(handshake.clone()),
        false,
    ));
    v.push(invalid_vector(
        "hello_headers_over_handshake_limit",
        "a first frame (HELLO) declaring a 1025-byte headers block, before the handshake",
        &patch(hello, 24, &1025u32.to_be_bytes())[..32],
        Some(handshake),
        false,
    ));
    v.push(invalid_vector(
        "truncated_header_at_eof",
        "the stream ends 20 bytes into a header: fatal",
        &publish[..20],
        None,
        true,
    ));
    v.push(invalid_vector(
        "truncated_payload_at_eof",
        "the stream ends inside a payload: fatal",
        &publish[..publish.len() - 1],
        None,
        true,
    ));
    v
}

fn subjects() -> Value {
    let valid = [
        "a",
        "orders.eu.created",
        "*",
        ">",
        "orders.*",
        "orders.>",
        "*.*.>",
        "_INBOX.abc123",
        "café.東京",
        "a-b_c:d/e",
    ];
    let invalid = [
        "", ".", "a.", ".a", "a..b", "a b", "a\tb", "a.>.b", "a*", "a.b*", "a.>b", ">.a", "a\u{1}b",
    ];
    let literal_only_invalid = ["*", "a.*", "a.>"];
    let matches: Vec<Value> = [
        ("a.b.c", "a.b.c", true),
        ("a.b.c", "a.b", false),
        ("a.b", "a.b.c", false),
        ("a.*.c", "a.x.c", true),
        ("a.*.c", "a.x.y.c", false),
        ("a.*", "a", false),
        ("a.>", "a.b", true),
        ("a.>", "a.b.c.d", true),
        ("a.>", "a", false),
        (">", "a", true),
        (">", "a.b.c", true),
        ("*", "a", true),
        ("*", "a.b", false),
        ("*.>", "a.b", true),
        ("*.>", "a", false),
        ("a.*.>", "a.b.c", true),
        ("a.*.>", "a.b", false),
        ("orders.*.created", "orders.eu.created", true),
        ("orders.*.created", "orders.eu.deleted", false),
    ]
    .iter()
    .map(|(f, s, m)| json!({ "filter": f, "subject": s, "matches": m }))
    .collect();
    json!({
        "description": "Subject and filter syntax and matching. 'valid' are valid filters (wildcards allowed); 'literal_only_invalid' are valid filters but invalid literal subjects (PUBLISH, EVENT, REQUEST).",
        "valid": valid, "invalid": invalid, "literal_only_invalid": literal_only_invalid, "matches": matches,
    })
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "spec/vectors".into());
    let write = |file: &str, v: Value| {
        let text = serde_json::to_string_pretty(&v).unwrap() + "\n";
        std::fs::write(format!("{dir}/{file}"), text).unwrap();
    };
    let valid = valid();
    let invalid = invalid();
    println!("{} valid, {} invalid", valid.len(), invalid.len());
    write(
        "frames.json",
        json!({
            "description": "Valid frames. Decoding 'hex' (with 'limits' if given, else the defaults) yields 'frame' (and 'body' for control frames, 'decompressed_hex' for COMPRESSED payloads); encoding the frame yields 'hex' again, byte for byte.",
            "protocol_version": "1.1",
            "vectors": valid,
        }),
    );
    write(
        "invalid.json",
        json!({
            "description": "Invalid inputs. Decoding 'hex' (with 'limits' if given; then end of stream if 'eof') yields 'error'. A non-fatal error consumes the bad frame: a frame that follows it decodes normally. A fatal one means the receiver sends ERROR and closes.",
            "protocol_version": "1.1",
            "vectors": invalid,
        }),
    );
    write("subjects.json", subjects());
}
