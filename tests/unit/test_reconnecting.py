"""What a worker keeps for a client between its socket's close and its reconnect (pure)."""

from __future__ import annotations

from rhizomorph.protocol.reconnecting import Reconnecting, is_call
from tests.unit.test_limits_unit import FakeClock


def waits(grace: float = 5.0, max_bytes: int = 100, max_clients: int = 3) -> tuple[Reconnecting, FakeClock]:
    clock = FakeClock()
    return Reconnecting(grace, max_bytes, max_clients, clock=clock), clock


def test_calls_are_not_kept_replies_and_notices_are():
    assert is_call({"type": "method", "session": "s1"})
    assert is_call(None)  # unreadable: answered now
    assert not is_call({"type": "method", "method": "s1.resolve"})
    assert not is_call({"type": "peer_not_found", "peer_id": "ws/b"})


def test_what_is_kept_comes_back_in_order_and_the_wait_ends():
    state, _ = waits()
    assert not state.keep("ws/a", b"early")  # not waited for: the caller answers it
    state.left("ws/a")
    assert "ws/a" in state
    assert state.keep("ws/a", b"one") and state.keep("ws/a", b"two")
    assert state.back("ws/a") == [b"one", b"two"]
    assert "ws/a" not in state and state.back("ws/a") == []
    assert state.remaining() is None


def test_a_wait_ends_after_the_grace_with_what_it_kept():
    state, clock = waits(grace=5.0)
    state.left("ws/a")
    clock.advance(2.0)
    state.left("ws/b")
    state.keep("ws/a", b"for a")
    assert state.remaining() == 3.0
    clock.advance(2.9)
    assert state.expired() == []
    clock.advance(0.1)
    assert state.expired() == [("ws/a", [b"for a"])]
    assert "ws/a" not in state and "ws/b" in state
    assert state.remaining() == 2.0


def test_bytes_kept_per_client_are_bounded():
    state, _ = waits(max_bytes=10)
    state.left("ws/a")
    assert state.keep("ws/a", b"x" * 6)
    assert not state.keep("ws/a", b"x" * 5)  # would pass the bound: refused now
    assert state.keep("ws/a", b"x" * 4)
    assert state.kept("ws/a") == 2


def test_clients_waited_for_are_bounded_and_the_oldest_wait_ends_first():
    state, _ = waits(max_clients=2)
    state.left("ws/a")
    state.keep("ws/a", b"for a")
    state.left("ws/b")
    assert state.left("ws/c") == [("ws/a", [b"for a"])]
    assert len(state) == 2 and "ws/a" not in state


def test_leaving_again_keeps_what_was_kept_and_restarts_the_grace():
    state, clock = waits(grace=5.0)
    state.left("ws/a")
    state.keep("ws/a", b"kept")
    clock.advance(4.0)
    state.left("ws/a")
    clock.advance(4.0)
    assert state.expired() == []
    assert state.back("ws/a") == [b"kept"]


def test_a_grace_of_zero_waits_for_nobody():
    state, _ = waits(grace=0.0)
    assert state.left("ws/a") == []
    assert "ws/a" not in state and not state.keep("ws/a", b"x")
