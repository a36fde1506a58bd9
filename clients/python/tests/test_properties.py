"""Property tests of the protocol core: generated frames round-trip through any split of the
byte stream; arbitrary bytes only ever produce frames or ``DecodeError``s."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mitto.proto import (
    FRAME_RULES_PUBLIC,
    DecodeError,
    Decoder,
    Frame,
    FrameType,
    Headers,
    SubscribeOptions,
    encode_u32,
    matches,
    subject_error,
)

token = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), blacklist_characters=".*>"),
    min_size=1,
    max_size=8,
)
literal = (
    st.lists(token, min_size=1, max_size=5)
    .map(".".join)
    .filter(lambda s: subject_error(s, literal=True) is None)
)
header_key = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_0123456789", min_size=1, max_size=12).filter(
    lambda k: (
        k
        not in (
            "content-type",
            "correlation-id",
            "reply-to",
            "deadline",
            "traceparent",
            "tracestate",
            "ttl",
            "auth",
            "delivery-count",
        )
    )
)


@st.composite
def headers(draw: st.DrawFn) -> Headers | None:
    entries = draw(st.lists(st.tuples(header_key, st.binary(max_size=20)), max_size=4))
    if not entries and draw(st.booleans()):
        return None
    h = Headers()
    for k, v in entries:
        h.add(k, v)
    if draw(st.booleans()):
        h.add("deadline", draw(st.integers(0, 2**64 - 1)))
    if draw(st.booleans()):
        h.add("content-type", "application/json")
    return h or None


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    t = draw(
        st.sampled_from(
            [
                FrameType.PUBLISH,
                FrameType.EVENT,
                FrameType.REQUEST,
                FrameType.RESPONSE,
                FrameType.STREAM,
                FrameType.PING,
                FrameType.CREDIT,
                FrameType.SUBSCRIBE,
                FrameType.ACK,
                FrameType.CANCEL,
            ]
        )
    )
    rule, needs_sid, allowed = FRAME_RULES_PUBLIC[t]
    flags = draw(st.integers(0, 0x3F)) & allowed & ~0x02  # no COMPRESSED: its payload has rules
    subject = draw(literal) if rule.name != "NONE" else ""
    aux = draw(st.integers(1, 2**32 - 1)) if needs_sid else draw(st.sampled_from([0, 5]))
    if t == FrameType.CREDIT:
        payload = encode_u32(draw(st.integers(0, 2**32 - 1)))
    elif t == FrameType.SUBSCRIBE:
        payload = SubscribeOptions(
            credit=draw(st.integers(0, 100)), queue=draw(st.sampled_from([None, "q"]))
        ).encode()
    else:
        payload = draw(st.binary(max_size=300))
    return Frame(
        t,
        flags=flags,
        kind=draw(st.sampled_from([0, 1, 5, 128, 255])),
        id=draw(st.integers(0, 2**64 - 1)),
        aux=aux,
        status=draw(st.integers(0, 65535)),
        subject=subject,
        headers=draw(headers()),
        payload=payload,
    )


def fields(f: Frame) -> tuple[object, ...]:
    return (f.type, f.flags, f.kind, f.id, f.aux, f.status, f.subject, list(f.headers or []), f.payload)


@settings(max_examples=200, deadline=None)
@given(st.lists(frames(), min_size=1, max_size=6), st.data())
def test_frames_round_trip_through_any_split(fs: list[Frame], data: st.DataObject) -> None:
    wire = b"".join(f.encode() for f in fs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=5)))
    d = Decoder()
    out: list[Frame] = []
    last = 0
    for c in [*cuts, len(wire)]:
        d.feed(wire[last:c])
        last = c
        while (f := d.next()) is not None:
            out.append(f)
    d.eof()
    assert [fields(f) for f in out] == [fields(f) for f in fs]
    assert b"".join(f.encode() for f in out) == wire


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(1, 64))
def test_garbage_never_raises_anything_but_decode_error(data: bytes, chunk: int) -> None:
    d = Decoder(max_payload=256, max_headers=64)
    fed = 0
    try:
        for i in range(0, len(data), chunk):
            d.feed(data[i : i + chunk])
            fed += len(data[i : i + chunk])
            while True:
                try:
                    if d.next() is None:
                        break
                except DecodeError as e:
                    assert e.code and e.status
                    if e.fatal:
                        raise
                assert d.buffered <= fed
        d.eof()
    except DecodeError as e:
        assert e.fatal


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_mitto_header_with_garbage_body_fails_cleanly(body: bytes) -> None:
    # A well-formed header over random sections exercises every validation step.
    for t in list(FrameType):
        raw = Frame(t, id=3, aux=1, payload=body).encode()
        d = Decoder()
        d.feed(raw)
        try:
            d.next()
        except DecodeError as e:
            assert not e.fatal and e.id == 3


@given(st.lists(token, min_size=1, max_size=4))
def test_wildcard_filters_match_their_subjects(tokens: list[str]) -> None:
    s = ".".join(tokens)
    if subject_error(s, literal=True) is not None:
        return
    assert matches(s, s)
    assert matches(">", s)
    assert matches(".".join("*" for _ in tokens), s)
    assert not matches(s + ".x", s)
    if len(tokens) > 1:
        assert matches(tokens[0] + ".>", s)
