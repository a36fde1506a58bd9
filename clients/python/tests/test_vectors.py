"""The conformance vectors of spec/vectors, read as every implementation must (see
spec/vectors/README.md): decode field by field, re-encode byte for byte, survive every split,
and give each invalid input its listed error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mitto.proto import (
    DELIVERY_NAMES,
    POLICY_NAMES,
    DecodeError,
    Decoder,
    Frame,
    FrameType,
    Headers,
    HealthReport,
    Hello,
    StatsReport,
    SubscribeOptions,
    decompress,
    feature_names,
    flag_names,
    is_valid_filter,
    is_valid_literal,
    matches,
    status_name,
    type_name,
)

VECTORS = Path(__file__).resolve().parents[3] / "spec" / "vectors"


def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())


FRAMES = load("frames.json")["vectors"]
INVALID = load("invalid.json")["vectors"]
SUBJECTS = load("subjects.json")

PING_77 = Frame(FrameType.PING, id=77).encode()


def decoder_for(v: dict[str, Any]) -> Decoder:
    lim = v.get("limits") or {}
    return Decoder(
        max_payload=lim.get("max_payload", 64 * 1024 * 1024),
        max_headers=lim.get("max_headers", 64 * 1024),
        max_subject=lim.get("max_subject", 4096),
    )


def decode_one(v: dict[str, Any]) -> Frame:
    d = decoder_for(v)
    d.feed(bytes.fromhex(v["hex"]))
    f = d.next()
    assert f is not None
    assert d.next() is None
    assert d.buffered == 0
    d.eof()
    return f


def frame_json(f: Frame) -> dict[str, Any]:
    return {
        "type": type_name(f.type),
        "flags": flag_names(f.flags),
        "kind": f.kind,
        "id": str(f.id),
        "aux": f.aux,
        "status": f.status,
        "subject": f.subject,
        "headers": [{"key": k, "value_hex": v.hex()} for k, v in (f.headers or Headers())],
        "payload_hex": f.payload.hex(),
    }


def body_json(f: Frame) -> dict[str, Any] | None:
    b = f.body
    if isinstance(b, Hello):
        return {
            "major": b.major,
            "minor": b.minor,
            "flags": b.flags,
            "features": b.features,
            "feature_names": feature_names(b.features),
            "max_payload": b.max_payload,
            "max_headers": b.max_headers,
            "keepalive_ms": b.keepalive_ms,
            "name": b.name,
            "client_id": b.client_id,
            "session": b.session,
            "user": b.user,
            "auth_hex": b.auth.hex(),
        }
    if isinstance(b, SubscribeOptions):
        return {
            "delivery": DELIVERY_NAMES[b.delivery],
            "policy": POLICY_NAMES[b.policy],
            "max_pending": b.max_pending,
            "ack_wait_ms": b.ack_wait_ms,
            "max_deliver": b.max_deliver,
            "credit": b.credit,
            "queue": b.queue,
            "durable": b.durable,
        }
    if f.type == FrameType.UNSUBSCRIBE:
        return {"after": b}
    if f.type == FrameType.NACK:
        return {"delay_ms": b}
    if f.type == FrameType.CREDIT:
        return {"credit": b}
    if f.type in (FrameType.ERROR, FrameType.CLOSE):
        return {"reason": b}
    if isinstance(b, HealthReport):
        out: dict[str, Any] = {"state": b.state, "uptime_ms": b.uptime_ms, "server": b.server}
        if b.detail is not None:
            out["detail"] = b.detail
        return out
    if isinstance(b, StatsReport):
        return dict(b.values)
    return None


@pytest.mark.parametrize("v", FRAMES, ids=[v["name"] for v in FRAMES])
def test_valid_vector_decodes_and_reencodes(v: dict[str, Any]) -> None:
    f = decode_one(v)
    assert frame_json(f) == v["frame"]
    assert body_json(f) == v.get("body")
    if "decompressed_hex" in v:
        lim = (v.get("limits") or {}).get("max_payload", 64 * 1024 * 1024)
        assert decompress(f.payload, lim).hex() == v["decompressed_hex"]
    assert f.encode().hex() == v["hex"]


@pytest.mark.parametrize("v", FRAMES, ids=[v["name"] for v in FRAMES])
def test_valid_vector_survives_every_split(v: dict[str, Any]) -> None:
    raw = bytes.fromhex(v["hex"])
    whole = frame_json(decode_one(v))
    for cut in range(len(raw) + 1):
        d = decoder_for(v)
        d.feed(raw[:cut])
        got = d.next()
        if got is None:
            d.feed(raw[cut:])
            got = d.next()
        assert got is not None, cut
        assert frame_json(got) == whole


def test_all_vectors_one_byte_at_a_time() -> None:
    plain = [v for v in FRAMES if not v.get("limits")]
    stream = b"".join(bytes.fromhex(v["hex"]) for v in plain)
    d = Decoder()
    out = []
    for i in range(len(stream)):
        d.feed(stream[i : i + 1])
        while (f := d.next()) is not None:
            out.append(frame_json(f))
    d.eof()
    assert out == [v["frame"] for v in plain]


def test_typed_bodies_reencode_to_the_vectors() -> None:
    for v in FRAMES:
        f = decode_one(v)
        b = f.body
        if isinstance(b, (Hello, SubscribeOptions, HealthReport, StatsReport)):
            assert b.encode().hex() == v["frame"]["payload_hex"], v["name"]


@pytest.mark.parametrize("v", INVALID, ids=[v["name"] for v in INVALID])
def test_invalid_vector_gives_its_error(v: dict[str, Any]) -> None:
    raw = bytes.fromhex(v["hex"])
    want = v["error"]
    d = decoder_for(v)
    d.feed(raw)
    with pytest.raises(DecodeError) as ei:
        if v.get("eof"):
            assert d.next() is None, "an incomplete frame needs more bytes"
            d.eof()
        else:
            d.next()
    e = ei.value
    assert (e.code, e.status, e.fatal, str(e.id)) == (want["code"], want["status"], want["fatal"], want["id"])
    assert status_name(e.status) == want["status_name"]
    assert e.reason
    if e.fatal:
        d.feed(PING_77)
        with pytest.raises(DecodeError):
            d.next()
        return
    oversize = e.code in ("payload_too_large", "headers_too_large", "subject_too_long") and len(raw) == 32
    if oversize:
        # Only the header arrived: nothing is held for the declared bytes.
        assert d.buffered == 0
        return
    d.feed(PING_77)
    f = d.next()
    assert f is not None
    assert (f.type, f.id) == (FrameType.PING, 77)
    assert d.buffered == 0


def test_oversize_frame_is_skipped_as_it_arrives() -> None:
    d = Decoder(max_payload=16)
    body = b"x" * 1000
    f = Frame(FrameType.PUBLISH, id=9, subject="a", payload=body).encode()
    d.feed(f[:40])
    with pytest.raises(DecodeError) as ei:
        d.next()
    assert ei.value.code == "payload_too_large"
    assert d.buffered == 0
    for i in range(40, len(f), 100):
        d.feed(f[i : i + 100])
        assert d.buffered == 0
    d.feed(PING_77)
    got = d.next()
    assert got is not None and got.id == 77


def test_subject_lists_and_matches() -> None:
    for s in SUBJECTS["valid"]:
        assert is_valid_filter(s), s
    for s in SUBJECTS["invalid"]:
        assert not is_valid_filter(s) and not is_valid_literal(s), s
    for s in SUBJECTS["literal_only_invalid"]:
        assert is_valid_filter(s) and not is_valid_literal(s), s
    for m in SUBJECTS["matches"]:
        assert matches(m["filter"], m["subject"]) is m["matches"], m


def test_vectors_cover_every_frame_type() -> None:
    seen = {decode_one(v).type for v in FRAMES}
    assert seen == set(FrameType)
