"""Answers fitted to the receiver's limits (PROTOCOL.md section 14.5), at every limit from one
byte: what the peer decodes keeps the id and status, and a reason cut on a character boundary."""

from __future__ import annotations

import pytest

from mitto.proto import (
    Decoder,
    Flag,
    Frame,
    FrameType,
    Headers,
    HealthReport,
    StatsReport,
    Status,
    compress,
    fit_answer,
    utf8_prefix,
)


def received(f: Frame, max_payload: int, max_headers: int) -> Frame:
    sent = fit_answer(f, max_payload, max_headers) or f
    d = Decoder(max_payload=max_payload, max_headers=max_headers)
    d.feed(sent.encode())
    got = d.next()
    assert got is not None and d.buffered == 0
    return got


def test_utf8_prefix_never_splits_a_character() -> None:
    s = "aé東😀".encode()
    assert [len(utf8_prefix(s, m)) for m in range(12)] == [0, 1, 1, 3, 3, 3, 6, 6, 6, 6, 10, 10]
    assert utf8_prefix(b"ab\xffcd", 10) == b"ab"


REASON = "no subscription 東京 café, and more words to cut".encode()


@pytest.mark.parametrize("t", [FrameType.ERROR, FrameType.CLOSE, FrameType.RESPONSE])
def test_failures_keep_id_and_status_at_every_limit(t: FrameType) -> None:
    f = Frame(t, id=7, aux=3, status=Status.NOT_FOUND, headers=Headers({"x": "y" * 40}), payload=REASON)
    for limit in range(1, len(REASON) + 2):
        got = received(f, limit, 16)
        assert (got.type, got.id, got.aux, got.status) == (t, 7, 3, Status.NOT_FOUND)
        assert REASON.startswith(got.payload) and len(got.payload) <= limit
        got.payload.decode()
        assert got.headers is None, "headers over the limit are left out"
    assert fit_answer(f, len(REASON), 1000) is None


def test_a_result_or_report_that_does_not_fit_becomes_payload_too_large() -> None:
    ok = Frame(FrameType.RESPONSE, id=9, payload=b"r" * 100)
    for limit in (1, 16, 99):
        got = received(ok, limit, 64)
        assert (got.type, got.id, got.status) == (FrameType.RESPONSE, 9, Status.PAYLOAD_TOO_LARGE)
    assert fit_answer(ok, 100, 64) is None
    health = Frame(
        FrameType.HEALTH, flags=Flag.REPLY, id=4, payload=HealthReport("serving", 1, "x" * 50).encode()
    )
    stats = Frame(FrameType.STATS, flags=Flag.REPLY, id=5, payload=StatsReport({"a" * 30: 1}).encode())
    for f in (health, stats):
        got = received(f, 8, 64)
        assert (got.type, got.id, got.status) == (FrameType.ERROR, f.id, Status.PAYLOAD_TOO_LARGE)


def test_a_compressed_reason_is_dropped_not_cut() -> None:
    f = Frame(
        FrameType.RESPONSE, flags=Flag.COMPRESSED, id=2, status=Status.INTERNAL, payload=compress(b"z" * 500)
    )
    got = received(f, 100, 64)
    assert (got.status, got.flags, got.payload) == (Status.INTERNAL, 0, b"")
    ok = Frame(FrameType.RESPONSE, flags=Flag.COMPRESSED, id=2, payload=compress(b"z" * 500))
    assert received(ok, 100, 64).status == Status.PAYLOAD_TOO_LARGE


def test_other_frames_are_left_to_their_sender() -> None:
    assert fit_answer(Frame(FrameType.PUBLISH, subject="a", payload=b"x" * 100), 10, 10) is None
    assert fit_answer(Frame(FrameType.HEALTH, id=1), 0, 0) is None
