"""Fuzzing the gateway's input surface.

1. Property tests of the parsers (no sockets): the auth frame (``parse_auth``, then
   ``authenticate``) only ever raises ``HandshakeError``; ``envelope.decode`` only ever raises
   ``EnvelopeError`` (tests/unit/test_envelope.py covers ``parse`` on random bytes).
2. A live flood (``slow``): over 100,000 malformed, truncated, oversized and random frames
   from raw sockets at one gateway worker, while a hypha-rpc client keeps calling a service
   through it. The worker must not crash or restart, must answer every frame as
   docs/protocol.md says (one error text frame per unroutable frame, a reject or
   ``peer_not_found`` per undeliverable call, nothing for the rest), and every good call must
   succeed.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
import msgpack
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rhizomorph import Config, Deployment
from rhizomorph.protocol import envelope, handshake
from rhizomorph.protocol import frames as v4frames
from rhizomorph.protocol.envelope import EnvelopeError, encode
from rhizomorph.protocol.handshake import HandshakeError, TokenIssuer
from tests.conftest import eventually
from tests.test_wire import RawClient
from tests.wire_oracle import routable_header

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SECRET = "fuzz-secret-0123456789abcdef-0123456789"  # >= 32 bytes: PyJWT warns below

INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what msgpack can carry
JSON = st.recursive(
    st.none() | st.booleans() | INT64 | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)
AUTH_KEYS = ["client_id", "workspace", "token", "reconnection_token", "wire_protocol"]


@st.composite
def auth_objects(draw) -> dict:
    """JSON objects shaped like auth frames, with any value in the fields the router reads."""
    data = draw(st.dictionaries(st.text(max_size=6), st.integers() | st.text(max_size=6), max_size=2))
    for key in draw(st.lists(st.sampled_from(AUTH_KEYS), unique=True)):
        data[key] = draw(st.text(max_size=40) | JSON)
    return data


def _authenticate_text(text: str | bytes, issuer: TokenIssuer) -> None:
    """The whole handshake minus the socket: must succeed or raise HandshakeError."""
    request = handshake.parse_auth(text)
    identity, _ = handshake.authenticate(request, issuer)
    assert identity.workspace and identity.client_id


@PROPERTY
@given(text=st.text() | st.binary(max_size=40))
def test_property_parse_auth_raises_only_handshake_error(text):
    try:
        handshake.parse_auth(text)
    except HandshakeError:
        pass


@PROPERTY
@given(data=auth_objects())
def test_property_auth_objects_authenticate_or_raise_handshake_error(data):
    try:
        _authenticate_text(json.dumps(data), TokenIssuer(SECRET))
    except HandshakeError:
        pass


CLAIM_KEYS = ["iss", "typ", "sub", "anon", "roles", "email", "ws", "cws", "cid", "exp", "iat", "nbf", "jti"]


@st.composite
def token_claims(draw, kind: str, values: st.SearchStrategy) -> dict:
    """A token the router could have signed, with a few claims removed or replaced."""
    claims = {
        "iss": "rhizomorph",
        "typ": handshake.RECONNECTION if kind == "reconnection_token" else handshake.ACCESS,
        "sub": "u1",
        "anon": False,
        "roles": [],
        "email": None,
        "ws": {"ws-x": "rw"},
        "cws": "ws-x",
        "cid": "c1",
        "iat": int(time.time()),
        "exp": int(time.time()) + 3600,
        "jti": "j",
    }
    for key in draw(st.lists(st.sampled_from(CLAIM_KEYS), unique=True, min_size=1, max_size=3)):
        if draw(st.booleans()):
            claims.pop(key, None)
        elif key == "ws":
            claims[key] = draw(
                st.dictionaries(st.text(max_size=8), st.sampled_from(["r", "rw", "a"]) | values, max_size=3) | values
            )
        else:
            claims[key] = draw(values)
    return claims


def _check_signed_token(claims: dict, kind: str, extra: dict) -> None:
    # Signed as raw JWS: PyJWT's own encoder refuses some claim types (a non-string "iss").
    token = jwt.api_jws.PyJWS().encode(json.dumps(claims).encode(), SECRET, algorithm="HS256")
    try:
        _authenticate_text(json.dumps({kind: token, **extra}), TokenIssuer(SECRET))
    except HandshakeError:
        pass


KINDS = st.sampled_from(["token", "reconnection_token"])
EXTRA_AUTH = st.dictionaries(
    st.sampled_from(["client_id", "workspace"]), st.sampled_from(["c1", "ws-x", "other"]), max_size=2
)


@PROPERTY
@given(data=st.data(), kind=KINDS, extra=EXTRA_AUTH)
def test_property_signed_tokens_with_missing_or_wrong_claims_raise_handshake_error(data, kind, extra):
    """Tokens with the router's signature but missing or wrong claims are refused cleanly."""
    _check_signed_token(data.draw(token_claims(kind, st.text(max_size=12))), kind, extra)


@pytest.mark.parametrize("claim, value", [("roles", 5), ("roles", True), ("ws", {"ws-x": ["rw"]})])
def test_signed_tokens_with_odd_claim_types_raise_handshake_error(claim, value):
    claims = {
        "iss": "rhizomorph",
        "typ": handshake.ACCESS,
        "sub": "u1",
        "ws": {"ws-x": "rw"},
        "cws": "ws-x",
        "exp": int(time.time()) + 3600,
        claim: value,
    }
    _check_signed_token(claims, "token", {})


@PROPERTY
@given(
    header=st.dictionaries(st.text(max_size=8), JSON, max_size=4),
    to=st.text(min_size=1, max_size=10),
    payload=st.binary(max_size=64),
)
def test_property_decode_with_any_payload_raises_only_envelope_error(header, to, payload):
    frame = encode({**header, "to": to}) + payload
    try:
        message = envelope.decode(frame)
    except EnvelopeError:
        return
    assert isinstance(message, dict) and "to" in message


@PROPERTY
@given(data=st.binary(max_size=128))
def test_property_decode_of_any_bytes_raises_only_envelope_error(data):
    try:
        envelope.decode(data)
    except EnvelopeError:
        pass


# -- the oracle the live flood checks answers against ------------------------------------------------


def expects_error(frame: bytes) -> bool:
    """docs/protocol.md: a binary frame on a v3 connection whose header cannot be routed — not
    msgpack, not a map, no non-empty string ``to``, a non-string ``type``, or a v4 frame — gets
    exactly one error text frame. Written from the spec, not from rhizomorph.protocol.envelope."""
    return frame[:1] == b"\xc1" or routable_header(frame) is None


def batch_messages(frame: bytes) -> list[bytes] | None:
    """docs/protocol-v4.md: ``0xc1 'B' (u32 length, message)*``; ``None`` unless exactly that."""
    if frame[:2] != b"\xc1B":
        return None
    messages, offset = [], 2
    while offset < len(frame):
        if offset + 4 > len(frame):
            return None
        length = int.from_bytes(frame[offset : offset + 4], "big")
        offset += 4
        if offset + length > len(frame):
            return None
        messages.append(frame[offset : offset + length])
        offset += length
    return messages


def expected_v4_errors(frame: bytes) -> int:
    """Error text frames a v4 connection gets for one binary frame (chunk frames not included):
    one for a frame that is not a whole batch, else one per unroutable message in it."""
    if frame[:1] != b"\xc1":
        return int(expects_error(frame))
    messages = batch_messages(frame)
    if messages is None:
        return 1
    return sum(expects_error(message) for message in messages)


@PROPERTY
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_property_oracle_agrees_with_the_parser_on_generated_garbage(seed):
    rng = random.Random(seed)
    for frame in (_garbage_frame(rng, "nowhere") for _ in range(20)):
        try:
            envelope.parse(frame)
            routable = frame[:1] != b"\xc1"
        except EnvelopeError:
            routable = False
        assert expects_error(frame) == (not routable), frame
    for frame in (_v4_frame(rng) for _ in range(10)):
        try:
            split = v4frames.decode_batch(frame)
        except v4frames.FrameError:
            split = None
        assert batch_messages(frame) == split


# -- frame generators --------------------------------------------------------------------------------

MAP_PREFIXES = set(range(0x80, 0x90)) | {0xDE, 0xDF}
NON_MAP_PREFIXES = [b for b in range(256) if b not in MAP_PREFIXES]


def _template(rng: random.Random, tag: str) -> bytes:
    """A valid frame of the kinds hypha-rpc sends, addressed to nobody in particular."""
    kind = rng.randrange(3)
    if kind == 0:
        header = {"type": "fuzz-event", "to": "*", "data": rng.randbytes(rng.randrange(20))}
    elif kind == 1:
        header = {"type": "method", "to": f"{tag}-{rng.randrange(10**6)}", "method": "services.a.b"}
    else:
        header = {"type": "fuzz-event", "to": f"{tag}-{rng.randrange(10**6)}", "from": "forged/x", "ws": "forged"}
    extra = {"args": [rng.randrange(1000), rng.randbytes(rng.randrange(40))]} if rng.random() < 0.5 else None
    return encode(header, extra)


def _garbage_frame(rng: random.Random, tag: str) -> bytes:
    """One malformed, truncated, mutated or random binary frame (classified by ``expects_error``)."""
    kind = rng.randrange(7)
    if kind == 0:  # random bytes that cannot start a map
        return bytes([rng.choice(NON_MAP_PREFIXES)]) + rng.randbytes(rng.randrange(64))
    if kind == 1:  # a valid header cut short
        frame = _template(rng, tag)
        header_len = envelope.parse(frame).payload_offset
        return frame[: rng.randrange(header_len)]
    if kind == 2:  # well-formed msgpack that is not a map, maybe with junk after it
        value = rng.choice([[1, 2, 3], 7, -1, "to", b"\x81", None, True, 1.5, [{"to": "x"}]])
        return msgpack.packb(value) + rng.randbytes(rng.randrange(8))
    if kind == 3:  # a map with no usable 'to', or a non-string 'type'
        header = rng.choice(
            [
                {"type": "method"},
                {"to": 5},
                {"to": ""},
                {"to": ["a"]},
                {"to": None},
                {"to": "x", "type": 3},
                {"to": "x", "type": ["method"]},
                {1: "to"},
                {},
            ]
        )
        return msgpack.packb(header) + rng.randbytes(rng.randrange(8))
    if kind == 4:  # a map header with random contents
        return bytes([rng.choice(sorted(MAP_PREFIXES))]) + rng.randbytes(rng.randrange(48))
    if kind == 5:  # random empty, v4-looking or one-byte frames
        return rng.choice([b"", b"\xc1", b"\xc1B", b"\xc1B\x00\x00\x00\x05abc", bytes([rng.randrange(256)])])
    frame = bytearray(_template(rng, tag))  # bit flips in a valid frame
    for _ in range(rng.randrange(1, 4)):
        frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
    return bytes(frame)


def _v4_frame(rng: random.Random) -> bytes:
    """A v4 frame for a v4 connection: batches of garbage, cut batches, unknown v4 kinds."""
    roll = rng.random()
    if roll < 0.1:  # not a batch (and not a chunk frame: streams keep state, they are not fuzzed here)
        return (
            b"\xc1" + bytes([rng.choice([b for b in range(256) if b not in b"BS"])]) + rng.randbytes(rng.randrange(16))
        )
    if roll < 0.2:
        return _garbage_frame(rng, "nowhere")
    messages = [
        _garbage_frame(rng, "nowhere") if rng.random() < 0.7 else _template(rng, "nowhere")
        for _ in range(rng.randrange(0, 12))
    ]
    batch = b"\xc1B" + b"".join(len(m).to_bytes(4, "big") + m for m in messages)
    if roll < 0.4:  # cut short, sometimes (harmlessly) on a message boundary
        return batch[: rng.randrange(2, len(batch) + 1)]
    return batch


def _garbage_text(rng: random.Random) -> str:
    """Text frames after the handshake that the router ignores (no ping, no refresh_token)."""
    kind = rng.randrange(4)
    if kind == 0:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(40)))
    if kind == 1:
        return json.dumps({"type": rng.choice(["pong", "error", "hello", 5, None]), "x": rng.random()})
    if kind == 2:
        return json.dumps([rng.random()])
    return json.dumps({"type": "ping", "pad": "x" * 1000})  # over 1000 characters: ignored


def _bad_auth_frames(rng: random.Random, count: int) -> list[str | bytes]:
    """Auth frames that must all be refused with an error frame and close 1008."""
    other_secret = jwt.encode(
        {"sub": "x", "typ": "access", "exp": 2**40, "iss": "rhizomorph"},
        "not-the-router-secret-0123456789abcdef",
        algorithm="HS256",
    )
    makers = [
        lambda: "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(1, 30))) + "{",
        lambda: json.dumps(rng.choice([[1], "x", 5, None, True])),
        lambda: json.dumps({rng.choice(AUTH_KEYS[:4]): rng.choice([5, [1], {"a": 1}, True])}),
        lambda: json.dumps({"client_id": rng.choice(["a/b", "a:b", "*", "a b", "x" * 300])}),
        lambda: json.dumps({"token": rng.choice(["garbage", "a.b.c", other_secret])}),
        lambda: json.dumps({"reconnection_token": "x" * rng.randrange(1, 200)}),
        # A refused workspace named in 2-byte characters: the close reason must be
        # cut to 123 bytes, not 123 characters.
        lambda: json.dumps({"workspace": "é" * rng.randrange(100, 250)}),
        lambda: json.dumps({"pad": "x" * 17000}),  # over the 16 KiB auth frame limit
        lambda: rng.randbytes(rng.randrange(1, 30)),  # a binary first frame
    ]
    return [makers[i % len(makers)]() for i in range(count)]


# -- the live flood ----------------------------------------------------------------------------------

MAX_MESSAGE_SIZE = 256 * 1024
GARBAGE_CONNECTIONS = 5
GARBAGE_FRAMES = 18_000  # per connection; < message_burst, so the rate limit never interferes
BAD_AUTH_CONNECTIONS = 300
OVERSIZED_CONNECTIONS = 3
V4_FRAMES = 5000


@dataclass
class Tally:
    """What one raw connection sent and got back."""

    sent: int = 0
    expected_errors: int = 0
    expected_replies: int = 0  # binary: rejects and peer_not_found
    errors: int = 0
    replies: int = 0
    other_text: list[Any] = field(default_factory=list)
    error_messages: set[str] = field(default_factory=set)


async def _read_all(client: RawClient, tally: Tally) -> None:
    try:
        async for frame in client.ws:
            if isinstance(frame, str):
                message = json.loads(frame)
                if message.get("type") == "error":
                    tally.errors += 1
                    tally.error_messages.add(message["message"].split(":")[0])
                else:
                    tally.other_text.append(message)
            else:
                tally.replies += 1
    except websockets.ConnectionClosed:
        pass


async def _flood(client: RawClient, frames: list[bytes | str], tally: Tally) -> None:
    for frame in frames:
        await client.ws.send(frame)
        tally.sent += 1


def _garbage_plan(rng: random.Random, tally: Tally) -> list[bytes | str]:
    frames: list[bytes | str] = []
    for _ in range(GARBAGE_FRAMES):
        roll = rng.random()
        if roll < 0.05:
            frames.append(_garbage_text(rng))
            continue
        if roll < 0.052:  # large random frames, under max_message_size
            frame = bytes([rng.choice(NON_MAP_PREFIXES)]) + rng.randbytes(rng.randrange(50_000, MAX_MESSAGE_SIZE - 1))
        else:
            frame = _garbage_frame(rng, "nowhere")
        tally.expected_errors += expects_error(frame)
        frames.append(frame)
    return frames


def _v4_plan(rng: random.Random, tally: Tally) -> list[bytes]:
    frames = [_v4_frame(rng) for _ in range(V4_FRAMES)]
    tally.expected_errors = sum(expected_v4_errors(frame) for frame in frames)
    return frames


def _deterministic_plan(rng: random.Random, manager_id: str, tally: Tally) -> list[bytes]:
    """Well-formed frames whose answers docs/protocol.md fixes exactly."""
    kinds = (
        [("call_ghost", True)] * 300
        + [("resolve_ghost", True)] * 300
        + [("event_ghost", False)] * 200
        + [("call_other_ws", True)] * 2000
        + [("event_other_ws", False)] * 1500
        + [("event_own_ws", False)] * 1500
        + [("manager_unknown", True)] * 100
        + [("manager_garbage", False)] * 100
    )
    rng.shuffle(kinds)
    frames = []
    for i, (kind, answered) in enumerate(kinds):
        if kind == "call_ghost":  # -> <session>.reject "Target peer ... is not connected"
            frame = encode(
                {"type": "method", "to": f"ghost-{i}", "method": "services.a.b", "session": f"g{i}"},
                {"args": [i], "promise": "*"},
            )
        elif kind == "resolve_ghost":  # no session -> peer_not_found
            frame = encode({"type": "method", "to": f"ghost-{i}", "method": f"s{i}.resolve"}, {"args": [i]})
        elif kind == "event_ghost":  # events are fire-and-forget
            frame = encode({"type": "fuzz-event", "to": f"ghost-{i}", "data": i})
        elif kind == "call_other_ws":  # broadcast to another workspace, refused -> reject
            frame = encode({"type": "method", "to": "other-ws/*", "method": "m", "session": f"o{i}"})
        elif kind == "event_other_ws":
            frame = encode({"type": "fuzz-event", "to": "other-ws/*"})
        elif kind == "event_own_ws":  # nobody in the workspace subscribed
            frame = encode({"type": "fuzz-event", "to": "*", "data": rng.randbytes(8)})
        elif kind == "manager_unknown":  # -> reject "Method not found"
            frame = encode(
                {"type": "method", "to": f"*/{manager_id}", "method": "services.default.nope", "session": f"m{i}"},
                {"args": [], "promise": "*"},
            )
        else:  # a valid header with an undecodable payload: the manager drops it (logged)
            frame = (
                encode(
                    {"type": "method", "to": f"*/{manager_id}", "method": "services.default.echo", "session": f"x{i}"}
                )
                + b"\xc1\xc1garbage"
            )
        tally.expected_replies += answered
        frames.append(frame)
    return frames


async def _bad_handshake(url: str, auth: str | bytes, results: list[tuple[int | None, str | None]]) -> None:
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(auth)
        error = None
        try:
            while True:
                frame = await asyncio.wait_for(ws.recv(), 15)
                if isinstance(frame, str):
                    error = json.loads(frame).get("message")
        except websockets.ConnectionClosed as closed:
            results.append((closed.rcvd.code if closed.rcvd else None, error))


async def _oversized(url: str, results: list[int | None]) -> None:
    client = await RawClient.connect(url)
    try:
        await client.ws.send(b"\x81\xa2to\xa1x" + b"\x00" * MAX_MESSAGE_SIZE)
        while True:
            await asyncio.wait_for(client.ws.recv(), 15)
    except websockets.ConnectionClosed as closed:
        results.append(closed.rcvd.code if closed.rcvd else None)
    finally:
        await client.ws.close()


@pytest.fixture(scope="module")
def fuzzed(ray_runtime):
    deployment = Deployment(Config(port=0, workers=1, max_message_size=MAX_MESSAGE_SIZE, log_level="WARNING")).start()
    yield deployment
    deployment.stop()


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_gateway_survives_a_flood_of_bad_frames_while_serving_good_calls(fuzzed):
    from hypha_rpc import connect_to_server

    config = fuzzed.config
    assert GARBAGE_FRAMES < config.message_burst  # the flood must meet the parsers, not the rate limit
    before = (await asyncio.to_thread(fuzzed.stats))[0]
    rng = random.Random(20240601)

    # The well-behaved pair: a provider and a caller in another workspace.
    provider = await connect_to_server({"server_url": fuzzed.url, "method_timeout": 30})
    caller = await connect_to_server({"server_url": fuzzed.url, "method_timeout": 30})
    await provider.register_service({"id": "echo", "config": {"visibility": "public"}, "echo": lambda x: x})
    echo = await caller.get_service(f"{provider.config.workspace}/echo")

    # Raw peers: garbage, deterministic, read-only broadcaster.
    garbage = [await RawClient.connect(fuzzed.url) for _ in range(GARBAGE_CONNECTIONS)]
    steady = await RawClient.connect(fuzzed.url)
    admin = await RawClient.connect(fuzzed.url)
    call = {
        "type": "method",
        "to": f"*/{admin.info['manager_id']}",
        "method": "services.default.generate_token",
        "session": "tok",
    }
    await admin.ws.send(encode(call, {"args": [{"permission": "r"}], "promise": "*"}))
    read_only_token = (await admin.next_binary())["args"][0]
    reader = await RawClient.connect(fuzzed.url, token=read_only_token, workspace=admin.info["workspace"])
    v4 = await RawClient.connect(fuzzed.url, wire_protocol=4)
    assert v4.info.get("wire_protocol") == 4

    tallies = [Tally() for _ in garbage]
    plans: list[tuple[RawClient, list, Tally]] = [
        (client, _garbage_plan(rng, tally), tally) for client, tally in zip(garbage, tallies)
    ]
    steady_tally = Tally()
    plans.append((steady, _deterministic_plan(rng, admin.info["manager_id"], steady_tally), steady_tally))
    reader_tally = Tally(expected_errors=4000)
    plans.append((reader, [encode({"type": "fuzz-event", "to": "*", "data": i}) for i in range(4000)], reader_tally))
    v4_tally = Tally()
    plans.append((v4, _v4_plan(rng, v4_tally), v4_tally))
    bad_auths = _bad_auth_frames(rng, BAD_AUTH_CONNECTIONS)
    total = sum(len(p[1]) for p in plans) + len(bad_auths) + OVERSIZED_CONNECTIONS
    assert total >= 100_000

    stop = asyncio.Event()
    good_calls: list[Any] = []

    async def keep_calling() -> None:
        i = 0
        while not stop.is_set() or i < 20:
            value = {"i": i, "blob": bytes(i % 251) * (i % 7), "text": "é" * (i % 13), "nested": [[i]]}
            assert await echo.echo(value) == value
            good_calls.append(i)
            i += 1

    started = time.monotonic()
    readers = [asyncio.ensure_future(_read_all(client, tally)) for client, _, tally in plans]
    good = asyncio.ensure_future(keep_calling())
    handshake_results: list[tuple[int | None, str | None]] = []
    oversized_results: list[int | None] = []

    async def bad_handshakes() -> None:
        for start in range(0, len(bad_auths), 25):
            await asyncio.gather(
                *(_bad_handshake(fuzzed.url, auth, handshake_results) for auth in bad_auths[start : start + 25])
            )

    await asyncio.gather(
        *(_flood(client, frames, tally) for client, frames, tally in plans),
        bad_handshakes(),
        *(_oversized(fuzzed.url, oversized_results) for _ in range(OVERSIZED_CONNECTIONS)),
    )
    sent_in = time.monotonic() - started

    def all_answered() -> bool:
        return all(t.errors >= t.expected_errors and t.replies >= t.expected_replies for _, _, t in plans)

    await eventually(all_answered, timeout=120, interval=0.2)
    await asyncio.sleep(0.5)  # anything beyond the expected answers would arrive now
    answered_in = time.monotonic() - started
    stop.set()
    await asyncio.wait_for(good, 60)

    print(
        f"\n{total} bad frames sent in {sent_in:.1f} s, all answered after {answered_in:.1f} s; "
        f"{len(good_calls)} good calls meanwhile"
    )
    for _, frames, tally in plans:
        assert tally.sent == len(frames)
        assert tally.errors == tally.expected_errors, tally
        assert tally.other_text == [], tally.other_text[:5]
    for tally in tallies:
        assert tally.error_messages == {"unroutable frame"}, tally.error_messages
    assert steady_tally.replies == steady_tally.expected_replies == 2700
    assert reader_tally.error_messages == {"permission denied"}
    assert reader_tally.replies == 0
    assert v4_tally.error_messages <= {"unroutable frame"} and v4_tally.expected_errors > V4_FRAMES
    assert sorted(code for code, _ in handshake_results) == [1008] * BAD_AUTH_CONNECTIONS
    assert all(error for _, error in handshake_results)  # each refusal came with its error frame
    assert oversized_results == [1009] * OVERSIZED_CONNECTIONS
    assert len(good_calls) >= 20

    # The worker is the same process, still answers, and holds exactly the connections left open.
    after = (await asyncio.to_thread(fuzzed.stats))[0]
    assert after["pid"] == before["pid"]
    for client, _, _ in plans:
        await client.ws.close()
    await admin.ws.close()
    await asyncio.gather(*readers)

    async def only_good_clients_left() -> bool:
        return (await asyncio.to_thread(fuzzed.stats))[0]["connections"] == 2

    await eventually(only_good_clients_left, timeout=20)
    assert await echo.echo("still fine") == "still fine"
    await caller.disconnect()
    await provider.disconnect()
