"""rhizomorph/protocol/lookups.py with a fake clock: the negative cache and the per-connection
budget of registry lookups."""

from __future__ import annotations

from rhizomorph.protocol.lookups import Lookup, NegativeCache, UnknownTargets
from tests.unit.test_limits_unit import FakeClock


def test_a_missing_target_is_remembered_for_its_ttl_only():
    cache = NegativeCache(ttl=1.0, max_entries=10)
    cache.add("ws/x", now=100.0)

    assert cache.holds("ws/x", 100.5)
    assert not cache.holds("ws/x", 101.0)
    assert len(cache) == 0  # an expired entry is dropped when seen


def test_the_negative_cache_keeps_at_most_its_bound_dropping_the_oldest():
    cache = NegativeCache(ttl=10.0, max_entries=3)
    for i in range(5):
        cache.add(f"ws/t{i}", now=100.0 + i * 0.1)

    assert len(cache) == 3
    assert [cache.holds(f"ws/t{i}", 100.5) for i in range(5)] == [False, False, True, True, True]


def test_expired_entries_go_as_new_ones_arrive():
    cache = NegativeCache(ttl=1.0, max_entries=1000)
    for i in range(100):
        cache.add(f"ws/t{i}", now=100.0 + i * 0.1)

    assert len(cache) <= 11  # one second's worth


def test_a_refreshed_entry_lives_a_full_ttl_again():
    cache = NegativeCache(ttl=1.0, max_entries=10)
    cache.add("ws/x", now=100.0)
    cache.add("ws/y", now=100.2)
    cache.add("ws/x", now=100.5)

    assert not cache.holds("ws/y", 101.3)
    assert cache.holds("ws/x", 101.3)


def test_a_ttl_of_zero_remembers_nothing():
    cache = NegativeCache(ttl=0.0, max_entries=10)
    cache.add("ws/x", now=100.0)
    assert not cache.holds("ws/x", 100.0) and len(cache) == 0


def test_each_connection_gets_its_own_budget_of_lookups():
    clock = FakeClock()
    unknown = UnknownTargets(rate=10, burst=3, ttl=1.0, clock=clock)

    flooder = [unknown.check(f"ws/t{i}", "ws/flooder") for i in range(5)]
    assert flooder == [Lookup.ASK] * 3 + [Lookup.OVER_BUDGET] * 2
    assert unknown.check("ws/t9", "ws/other") is Lookup.ASK

    clock.advance(0.1)  # the rate refills one lookup
    assert [unknown.check(f"ws/u{i}", "ws/flooder") for i in range(2)] == [Lookup.ASK, Lookup.OVER_BUDGET]


def test_frames_of_peers_and_of_the_router_pay_no_budget():
    unknown = UnknownTargets(rate=1, burst=1, ttl=1.0, clock=FakeClock())
    assert [unknown.check(f"ws/t{i}", None) for i in range(5)] == [Lookup.ASK] * 5


def test_a_target_found_missing_is_refused_from_the_cache_for_everyone_without_budget():
    clock = FakeClock()
    unknown = UnknownTargets(rate=10, burst=1, ttl=1.0, clock=clock)

    assert unknown.check("ws/gone", "ws/a") is Lookup.ASK
    unknown.answered("ws/gone", found=False)
    assert [unknown.check("ws/gone", "ws/a") for _ in range(3)] == [Lookup.KNOWN_MISSING] * 3
    assert unknown.check("ws/gone", None) is Lookup.KNOWN_MISSING
    assert unknown.check("ws/other", "ws/a") is Lookup.OVER_BUDGET  # the cache hits cost nothing

    clock.advance(1.0)
    assert unknown.check("ws/gone", "ws/b") is Lookup.ASK  # expired: asked again


def test_a_target_found_is_not_refused_from_the_cache():
    clock = FakeClock()
    unknown = UnknownTargets(rate=10, burst=10, ttl=5.0, clock=clock)
    unknown.answered("ws/x", found=False)
    unknown.answered("ws/x", found=True)
    assert unknown.check("ws/x", "ws/a") is Lookup.ASK


def test_a_sender_that_leaves_takes_its_budget_with_it():
    unknown = UnknownTargets(rate=10, burst=1, ttl=1.0, clock=FakeClock())
    unknown.check("ws/t", "ws/a")
    assert unknown.senders == 1
    unknown.forget_sender("ws/a")
    assert unknown.senders == 0
    assert unknown.check("ws/t2", "ws/a") is Lookup.ASK  # a new connection of the same client starts full


def test_a_rate_of_zero_disables_the_budget():
    unknown = UnknownTargets(rate=0, burst=0, ttl=1.0, clock=FakeClock())
    assert [unknown.check(f"ws/t{i}", "ws/a") for i in range(100)] == [Lookup.ASK] * 100
    assert unknown.senders == 0


def test_the_reason_given_names_the_target_and_the_budget():
    unknown = UnknownTargets(rate=50, burst=200, ttl=1.0)
    reason = unknown.over_budget("ws/x")
    assert "ws/x" in reason and "50/s" in reason
