"""Property tests of the parsers on random input (no sockets): the auth frame (``parse_auth``, then
``authenticate``) only ever raises ``HandshakeError``; ``envelope.decode`` only ever raises
``EnvelopeError`` (tests/unit/test_envelope.py covers ``parse`` on random bytes); the oracle of
the live flood (tests/test_fuzz.py) agrees with the parser on the flood's frames."""

from __future__ import annotations

import json
import random
import time

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rhizomorph.protocol import envelope, handshake
from rhizomorph.protocol import frames as v4frames
from rhizomorph.protocol.envelope import EnvelopeError, encode
from rhizomorph.protocol.handshake import HandshakeError, TokenIssuer
from tests.fuzz_frames import AUTH_KEYS, garbage_frame, v4_frame
from tests.wire_oracle import batch_messages, expects_error

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SECRET = "fuzz-secret-0123456789abcdef-0123456789"  # >= 32 bytes: PyJWT warns below

INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what msgpack can carry
JSON = st.recursive(
    st.none() | st.booleans() | INT64 | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)


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


@PROPERTY
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_property_oracle_agrees_with_the_parser_on_generated_garbage(seed):
    rng = random.Random(seed)
    for frame in (garbage_frame(rng, "nowhere") for _ in range(20)):
        try:
            envelope.parse(frame)
            routable = frame[:1] != b"\xc1"
        except EnvelopeError:
            routable = False
        assert expects_error(frame) == (not routable), frame
    for frame in (v4_frame(rng) for _ in range(10)):
        try:
            split = v4frames.decode_batch(frame)
        except v4frames.FrameError:
            split = None
        assert batch_messages(frame) == split
