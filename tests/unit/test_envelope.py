"""Unit tests for rhizomorph/protocol/envelope.py: header parsing, target normalisation, stamping, frames."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rhizomorph.protocol import envelope
from rhizomorph.protocol.envelope import Envelope, EnvelopeError
from tests.wire_oracle import routable_header

USER = {"id": "u1", "roles": ["anonymous"], "is_anonymous": True}


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


# -- parse ------------------------------------------------------------------------------------


def test_parse_reads_header_and_points_at_payload():
    header = {"type": "method", "to": "ws/b", "method": "services.echo.echo", "session": "s1"}
    extra = {"args": [b"x" * 100], "promise": "*"}
    frame = pack(header) + pack(extra)

    env = envelope.parse(frame)

    assert env.header == header
    assert env.payload_offset == len(pack(header))
    assert bytes(env.payload) == pack(extra)
    assert env.frame is frame


def test_parse_does_not_decode_the_payload():
    # A payload that is not valid msgpack at all must not matter to parse().
    frame = pack({"to": "b"}) + b"\xc1\xc1\xc1 not msgpack"
    env = envelope.parse(frame)
    assert env.header == {"to": "b"}
    assert bytes(env.payload) == b"\xc1\xc1\xc1 not msgpack"


def test_parse_single_segment_has_empty_payload():
    frame = pack({"to": "*", "type": "hello"})
    env = envelope.parse(frame)
    assert env.payload_offset == len(frame)
    assert bytes(env.payload) == b""


@pytest.mark.parametrize(
    "frame, message",
    [
        (b"", "truncated"),
        (pack({"to": "ws/b", "method": "m"})[:-1], "truncated"),
        (b"\x82\xa2to", "truncated"),
        (pack([1, 2, 3]), "map"),
        (pack("to"), "map"),
        (pack(7), "map"),
        (pack(None), "map"),
        (pack({"method": "m"}), "'to'"),
        (pack({"to": ""}), "'to'"),
        (pack({"to": 5}), "'to'"),
        (pack({"to": None}), "'to'"),
        (pack({"to": b"ws/b"}), "'to'"),
        (pack({"to": "ws/b", "type": 3}), "'type'"),
        (pack({"to": "ws/b", "type": None}), "'type'"),
        (b"\xc1", "malformed"),  # never-used msgpack byte
        (b"\x81\x91\x01\x01", "malformed"),  # a list as a map key
    ],
)
def test_parse_rejects_unroutable_frames(frame, message):
    with pytest.raises(EnvelopeError, match=message):
        envelope.parse(frame)


def test_envelope_error_is_a_value_error():
    assert issubclass(EnvelopeError, ValueError)


def test_parse_accepts_non_string_keys_in_header():
    frame = pack({"to": "b", 1: "one"})
    assert envelope.parse(frame).header == {"to": "b", 1: "one"}


# -- normalize_target / is_broadcast ----------------------------------------------------------


@pytest.mark.parametrize(
    "to, expected",
    [
        ("*", "ws1/*"),
        ("client", "ws1/client"),
        ("ws2/client", "ws2/client"),
        ("*/manager-abc", "*/manager-abc"),
        ("ws2/*", "ws2/*"),
        ("client:svc", "ws1/client:svc"),
    ],
)
def test_normalize_target(to, expected):
    assert envelope.normalize_target(to, "ws1") == expected


@pytest.mark.parametrize(
    "target, expected",
    [("ws/*", True), ("*/*", True), ("ws/client", False), ("*/manager-x", False), ("*", False), ("ws/a*", False)],
)
def test_is_broadcast(target, expected):
    assert envelope.is_broadcast(target) is expected


# -- stamp ------------------------------------------------------------------------------------


def test_stamp_overwrites_client_supplied_identity_fields():
    header = {
        "type": "method",
        "to": "b",
        "from": "evil/root",
        "ws": "evil",
        "user": {"id": "root"},
        "method": "services.x.y",
        "session": "s",
    }
    extra = {"args": [1, "two", b"\x00\xff"], "promise": "*", "t": 15.0}
    frame = envelope.encode(header, extra)

    out = envelope.stamp(envelope.parse(frame), sender="ws1/a", workspace="ws1", user=USER, target="ws1/b")

    stamped = envelope.parse(out)
    assert stamped.header == {
        "type": "method",
        "to": "ws1/b",
        "from": "ws1/a",
        "ws": "ws1",
        "user": USER,
        "method": "services.x.y",
        "session": "s",
    }
    assert envelope.decode(out) == {**stamped.header, **extra}


def test_stamp_keeps_payload_bytes_identical():
    # A payload packed with a non-canonical encoding (a str8 for a short string, a float32) would be
    # re-encoded differently if the router decoded and re-packed it; it must come out byte for byte.
    payload = b"\x81\xd9\x04args\x92\xca\x3f\x80\x00\x00\xc4\x03abc"
    frame = pack({"to": "b"}) + payload
    out = envelope.stamp(envelope.parse(frame), sender="w/a", workspace="w", user={}, target="w/b")
    assert isinstance(out, bytes)
    assert out.endswith(payload)
    assert out[envelope.parse(out).payload_offset :] == payload


def test_stamp_keeps_even_garbage_payload_untouched():
    payload = bytes(range(256)) * 4
    frame = pack({"to": "b"}) + payload
    out = envelope.stamp(envelope.parse(frame), sender="w/a", workspace="w", user=USER, target="w/b")
    assert out[envelope.parse(out).payload_offset :] == payload


# -- encode / decode --------------------------------------------------------------------------


def test_encode_decode_round_trip_merges_extra_into_header():
    header = {"type": "method", "to": "ws/b", "from": "ws/a"}
    extra = {"args": [1, [2, 3], {"k": b"v"}], "with_kwargs": True}
    frame = envelope.encode(header, extra)
    assert frame == pack(header) + pack(extra)
    assert envelope.decode(frame) == {**header, **extra}


def test_encode_without_extra_is_single_segment():
    header = {"to": "ws/b", "type": "x"}
    frame = envelope.encode(header)
    assert frame == pack(header)
    assert envelope.decode(frame) == header


def test_decode_extra_overrides_header_keys():
    frame = envelope.encode({"to": "ws/b", "k": 1}, {"k": 2})
    assert envelope.decode(frame)["k"] == 2


def test_decode_ignores_a_third_segment():
    frame = envelope.encode({"to": "ws/b"}, {"args": [1]}) + pack({"args": [2], "evil": True})
    assert envelope.decode(frame) == {"to": "ws/b", "args": [1]}


@pytest.mark.parametrize(
    "payload, message",
    [
        (pack([1, 2]), "extra segment must be a msgpack map"),
        (pack("text"), "extra segment must be a msgpack map"),
        (b"\xc1", "malformed msgpack payload"),
        (pack({"args": [1, 2, 3]})[:-1], "malformed msgpack payload"),
    ],
)
def test_decode_rejects_bad_extra_segment(payload, message):
    with pytest.raises(EnvelopeError, match=message):
        envelope.decode(pack({"to": "ws/b"}) + payload)


def test_decode_rejects_bad_header():
    with pytest.raises(EnvelopeError):
        envelope.decode(pack({"no": "to"}) + pack({"args": []}))


# -- synthetic frames -------------------------------------------------------------------------


def test_reject_frame_shape():
    frame = envelope.reject_frame(
        caller="ws1/a",
        target="ws2/b",
        session="sess1",
        message="Target peer ws2/b is not connected",
        workspace="ws1",
        user=USER,
    )
    env = envelope.parse(frame)
    assert env.header == {
        "type": "method",
        "from": "ws2/b",
        "to": "ws1/a",
        "method": "sess1.reject",
        "ws": "ws1",
        "user": USER,
    }
    assert envelope.decode(frame)["args"] == [
        {"_rtype": "error", "_rvalue": "Target peer ws2/b is not connected", "_rtrace": ""}
    ]
    assert "session" not in env.header  # a reject is fire-and-forget


def test_peer_not_found_frame_shape():
    frame = envelope.peer_not_found_frame(caller="ws1/a", target="ws2/b", message="gone")
    env = envelope.parse(frame)
    assert env.payload_offset == len(frame)  # single segment
    assert env.header == {"type": "peer_not_found", "to": "ws1/a", "peer_id": "ws2/b", "error": "gone"}


def test_event_frame_shape():
    data = {"id": "client1", "workspace": "ws1"}
    frame = envelope.event_frame("client_disconnected", data)
    env = envelope.parse(frame)
    assert env.payload_offset == len(frame)
    assert env.header == {"type": "client_disconnected", "to": "*", "data": data}
    for key in ("from", "ws", "user"):
        assert key not in env.header


# -- property tests ---------------------------------------------------------------------------

INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
SCALARS = st.none() | st.booleans() | INT64 | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
IDENTITY_KEYS = st.sampled_from(["from", "ws", "user", "to", "type"])


@st.composite
def headers(draw):
    header = draw(st.dictionaries(st.text(max_size=10), VALUES, max_size=6))
    # Sometimes carry forged identity fields, which stamp() must overwrite.
    for key in draw(st.lists(st.sampled_from(["from", "ws", "user"]), unique=True)):
        header[key] = draw(VALUES)
    header["to"] = draw(st.text(min_size=1, max_size=20))
    if draw(st.booleans()):
        header["type"] = draw(st.text(max_size=10))
    else:
        header.pop("type", None)
    return header


EXTRAS = st.none() | st.dictionaries(st.text(max_size=10), VALUES, max_size=6)
PROPERTY_SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(
    header=headers(),
    extra=EXTRAS,
    sender=st.text(min_size=1, max_size=10),
    workspace=st.text(min_size=1, max_size=10),
    user=st.dictionaries(st.text(max_size=5), SCALARS, max_size=3),
)
def test_property_stamp_overwrites_identity_and_keeps_extra(header, extra, sender, workspace, user):
    frame = envelope.encode(header, extra)
    parsed = envelope.parse(frame)
    original_payload = bytes(parsed.payload)
    target = envelope.normalize_target(header["to"], workspace)

    out = envelope.stamp(parsed, sender=sender, workspace=workspace, user=user, target=target)

    expected_header = {**header, "to": target, "from": sender, "ws": workspace, "user": user}
    stamped = envelope.parse(out)
    assert stamped.header == expected_header
    assert out[stamped.payload_offset :] == original_payload
    assert envelope.decode(out) == {**expected_header, **(extra or {})}


@PROPERTY_SETTINGS
@given(data=st.binary(max_size=64))
def test_property_parse_raises_only_envelope_error(data):
    try:
        env = envelope.parse(data)
    except EnvelopeError:
        return
    assert isinstance(env, Envelope)
    assert isinstance(env.header, dict) and isinstance(env.header["to"], str) and env.header["to"]
    assert 0 < env.payload_offset <= len(data)


@PROPERTY_SETTINGS
@given(data=st.binary(max_size=64))
def test_property_parse_of_map_prefixed_bytes_raises_only_envelope_error(data):
    # Bias towards the interesting inputs: a header that starts as a map with a 'to' key.
    for frame in (b"\x81\xa2to" + data, b"\x82\xa2to" + data, b"\xde\x00\x02" + data):
        try:
            envelope.parse(frame)
        except EnvelopeError:
            pass
        try:
            envelope.decode(frame)
        except EnvelopeError:
            pass


@PROPERTY_SETTINGS
@given(header=headers(), extra=EXTRAS, cut=st.integers(min_value=0))
def test_property_truncated_header_is_an_envelope_error(header, extra, cut):
    frame = envelope.encode(header, extra)
    header_len = envelope.parse(frame).payload_offset
    # Any strict prefix of a msgpack object is incomplete (the format is self-delimiting). The
    # message is "truncated ..." or, for very short prefixes, msgpack's own length-limit error.
    with pytest.raises(EnvelopeError):
        envelope.parse(frame[: cut % header_len])


FRAMES = st.one_of(
    st.builds(lambda h, e: envelope.encode(h, e), headers(), EXTRAS),  # whole messages
    st.builds(lambda h, n: envelope.encode(h)[:n], headers(), st.integers(0, 8)),  # truncated headers
    st.binary(max_size=40),  # garbage
    st.builds(
        lambda h, n: envelope.encode(h, {"data": b"x" * n}), headers(), st.sampled_from([16_000, 16_384, 40_000])
    ),  # either side of the header-prefix limit
    st.builds(
        lambda h, n: envelope.encode({**h, "pad": "p" * 20_000}, {"data": b"x"})[:n],
        headers(),
        st.sampled_from([12_000, 17_000, 10**6]),
    ),  # a header longer than the prefix, whole or cut
)


@PROPERTY_SETTINGS
@given(sequence=st.lists(FRAMES, min_size=1, max_size=12))
def test_property_parse_of_a_sequence_is_independent_per_frame(sequence):
    # parse reuses one unpacker between small frames: a bad or large frame must not leak into the next.
    for frame in sequence:
        expected = routable_header(frame)
        if expected is None:
            with pytest.raises(EnvelopeError):
                envelope.parse(frame)
        else:
            env = envelope.parse(frame)
            assert (env.header, env.payload_offset) == expected
            assert env.frame is frame


@pytest.mark.parametrize("header_size", [50, 1000, 1100, 16000, 17000, 40000])
@pytest.mark.parametrize("payload_size", [0, 10, 5000, 70000])
def test_headers_of_every_size_parse_alike(header_size: int, payload_size: int) -> None:
    # The first look (1 KiB), the reused unpacker's limit (16 KiB) and the fresh one beyond.
    header = {"type": "event", "to": "ws/b", "data": "d" * header_size}
    extra = pack({"args": [b"p" * payload_size]}) if payload_size else b""
    frame = pack(header) + extra
    env = envelope.parse(frame)
    assert env.header == header and bytes(env.payload) == extra
    with pytest.raises(EnvelopeError):
        envelope.parse(pack(header)[:-1])  # cut inside the header, at every size
    assert envelope.parse(pack({"to": "ws/c"})).header == {"to": "ws/c"}  # the next frame starts clean
