"""rhizomorph/protocol/limits.py without sockets: a fake clock drives every limit."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rhizomorph.config import Config
from rhizomorph.protocol import limits
from rhizomorph.protocol.handshake import HandshakeError
from rhizomorph.protocol.limits import Breach, IdleTimer, InboundPolicy, TokenBucket, TooManyConnections, check_capacity


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- token bucket -------------------------------------------------------------------------------


def test_bucket_starts_full_and_allows_a_burst():
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=5, clock=clock)
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]


def test_bucket_refills_at_its_rate():
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=5, clock=clock)
    for _ in range(5):
        bucket.take()
    clock.advance(0.25)  # 2.5 tokens
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    clock.advance(0.05)  # 0.5 + 0.5 = 1 token
    assert bucket.take()


def test_bucket_never_holds_more_than_its_burst():
    clock = FakeClock()
    bucket = TokenBucket(rate=1000, burst=3, clock=clock)
    clock.advance(3600)
    assert bucket.tokens == 3
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def test_bucket_take_several_tokens_is_all_or_nothing():
    clock = FakeClock()
    bucket = TokenBucket(rate=1, burst=4, clock=clock)
    assert bucket.take(3)
    assert not bucket.take(2)
    assert bucket.tokens == pytest.approx(1)


def test_bucket_ignores_a_clock_going_backwards():
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=2, clock=clock)
    bucket.take(), bucket.take()
    clock.advance(-5)
    assert not bucket.take()
    clock.advance(0.1)  # measured from the backwards reading: one token, not a 5 s debt
    assert bucket.take()


def test_bucket_take_with_explicit_now_does_not_read_the_clock():
    reads = []
    bucket = TokenBucket(10, 1, clock=lambda: reads.append(1) or 0.0)
    reads.clear()
    assert bucket.take(now=0.0)
    assert not bucket.take(now=0.05)
    assert bucket.take(now=0.2)
    assert reads == []


@pytest.mark.parametrize("rate, burst", [(0, 10), (-1, 10), (10, 0), (10, 0.5)])
def test_bucket_rejects_meaningless_parameters(rate, burst):
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=1e5),
    burst=st.integers(min_value=1, max_value=1000),
    steps=st.lists(st.tuples(st.floats(min_value=0, max_value=2), st.integers(min_value=1, max_value=50)), max_size=40),
)
def test_property_bucket_never_admits_more_than_burst_plus_refill(rate, burst, steps):
    """Over any schedule, admitted frames <= burst + rate * elapsed (and nothing is lost: a
    connection under the rate is never refused)."""
    clock = FakeClock(0.0)
    bucket = TokenBucket(rate, burst, clock=clock)
    admitted = 0
    for pause, frames in steps:
        clock.advance(pause)
        admitted += sum(bucket.take() for _ in range(frames))
        assert admitted <= burst + rate * clock.now + 1e-6


@settings(max_examples=100, deadline=None)
@given(
    rate=st.floats(min_value=1, max_value=1e4),
    burst=st.integers(min_value=1, max_value=100),
    frames=st.integers(min_value=1, max_value=500),
)
def test_property_a_sender_at_the_rate_is_never_refused(rate, burst, frames):
    clock = FakeClock(0.0)
    bucket = TokenBucket(rate, burst, clock=clock)
    for _ in range(frames):
        clock.advance(1.0 / rate)
        assert bucket.take()


# -- idle timer ---------------------------------------------------------------------------------


def test_idle_timer_counts_down_and_touch_resets_it():
    clock = FakeClock()
    idle = IdleTimer(10, clock=clock)
    clock.advance(4)
    assert idle.remaining() == pytest.approx(6)
    idle.touch()
    clock.advance(9)
    assert idle.remaining() == pytest.approx(1)
    clock.advance(2)
    assert idle.remaining() == pytest.approx(-1)


@pytest.mark.parametrize("timeout", [0, -1])
def test_idle_timer_disabled(timeout):
    clock = FakeClock()
    idle = IdleTimer(timeout, clock=clock)
    clock.advance(1e9)
    assert idle.remaining() == math.inf


# -- inbound policy -----------------------------------------------------------------------------


def test_policy_closes_with_1008_when_the_rate_is_exceeded():
    clock = FakeClock()
    policy = InboundPolicy(rate=100, burst=3, idle_timeout=600, clock=clock)
    assert [policy.on_frame() for _ in range(3)] == [None] * 3
    breach = policy.on_frame()
    assert breach == Breach(1008, "message rate limit exceeded (100/s, burst 3)")
    clock.advance(0.01)
    assert policy.on_frame() is None  # the socket layer closes on the first breach anyway


def test_policy_rate_limit_disabled_with_zero_rate():
    policy = InboundPolicy(rate=0, burst=0, idle_timeout=0, clock=FakeClock())
    assert policy.bucket is None
    assert all(policy.on_frame() is None for _ in range(100_000))


def test_policy_idle_breach_is_1001_and_frames_reset_it():
    clock = FakeClock()
    policy = InboundPolicy(rate=0, burst=0, idle_timeout=30, clock=clock)
    clock.advance(29)
    assert policy.idle_breach() is None
    policy.on_frame()
    clock.advance(29)
    assert policy.idle_breach() is None
    assert policy.idle_remaining() == pytest.approx(1)
    clock.advance(1)
    assert policy.idle_breach() == Breach(1001, "idle timeout (30 s without a message)")


def test_policy_reads_the_clock_once_per_frame():
    reads = 0

    def clock() -> float:
        nonlocal reads
        reads += 1
        return 0.0

    policy = InboundPolicy(rate=10, burst=10, idle_timeout=10, clock=clock)
    reads = 0
    policy.on_frame()
    assert reads == 1


# -- connection cap -----------------------------------------------------------------------------


def test_capacity_allows_up_to_the_limit():
    check_capacity(0, 2)
    check_capacity(1, 2)
    with pytest.raises(TooManyConnections) as refused:
        check_capacity(2, 2)
    assert refused.value.close_code == 1013
    assert refused.value.error_frame is True
    assert "try again later" in str(refused.value) and "limit 2" in str(refused.value)


def test_capacity_refusal_is_a_handshake_error_and_quiet_for_reconnects():
    with pytest.raises(HandshakeError) as refused:
        check_capacity(5, 5, reconnecting=True)
    assert refused.value.error_frame is False  # hypha-rpc would stop reconnecting on an error frame


@pytest.mark.parametrize("limit", [0, -1])
def test_capacity_unlimited(limit):
    check_capacity(10**9, limit)


# -- close reason -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_property_close_reason_fits_a_close_frame(text):
    reason = limits.close_reason(text)
    assert len(reason.encode("utf-8")) <= 123
    if len(text.encode("utf-8", "replace")) <= 123:
        assert reason.encode("utf-8") == text.encode("utf-8", "replace")


# -- configuration ------------------------------------------------------------------------------


def test_limit_defaults_are_documented_and_generous():
    config = Config()
    assert config.max_connections_per_worker == 10000
    assert config.message_rate == 20000.0 and config.message_burst == 40000
    assert config.idle_timeout == 600.0
    assert config.max_message_size == 16 * 1024 * 1024
    assert config.handshake_timeout == 10.0
    assert config.max_services_per_client == 1000
    # Every limit appears in the README's configuration table and in docs/security.md.
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    security = (root / "docs" / "security.md").read_text()
    for name in (
        "max_connections_per_worker",
        "message_rate",
        "message_burst",
        "idle_timeout",
        "max_message_size",
        "handshake_timeout",
        "max_services_per_client",
    ):
        assert f"`{name}`" in readme, name
        assert f"`{name}`" in security, name


def test_limits_can_be_set_from_the_environment():
    config = Config.from_env(
        {
            "RHIZOMORPH_MAX_CONNECTIONS_PER_WORKER": "7",
            "RHIZOMORPH_MESSAGE_RATE": "200",
            "RHIZOMORPH_MESSAGE_BURST": "2000",
            "RHIZOMORPH_IDLE_TIMEOUT": "0",
        }
    )
    assert (config.max_connections_per_worker, config.message_rate, config.message_burst, config.idle_timeout) == (
        7,
        200.0,
        2000,
        0.0,
    )
    assert {f.name for f in dataclasses.fields(Config)} >= {
        "max_connections_per_worker",
        "message_rate",
        "message_burst",
        "idle_timeout",
    }
