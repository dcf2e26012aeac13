"""rhizomorph/gateway/stats.py: the counts a departure adds to."""

from __future__ import annotations

import tracemalloc

from rhizomorph.gateway import stats
from rhizomorph.gateway.stats import CloseCodes, DepartedTotals
from rhizomorph.protocol.batching import BatchMetrics


def departing_metrics(i: int) -> BatchMetrics:
    metrics = BatchMetrics()
    metrics.record(1, 100 + i, "idle")
    metrics.record(3, 300, "count")
    metrics.record(70, 7000, "size")
    metrics.max_depth = i % 17
    return metrics


def test_the_departed_totals_are_the_sum_of_the_departed_clients_metrics():
    totals, expected = DepartedTotals(), BatchMetrics()
    for i in range(50):
        totals.merge(departing_metrics(i))
        expected.merge(departing_metrics(i))
    assert totals.metrics().as_dict() == expected.as_dict()
    assert totals.metrics().sizes == expected.sizes and totals.metrics().reasons == +expected.reasons


def test_close_codes_are_counted_by_name_with_none_for_no_code():
    codes = CloseCodes()
    for code in (1000, 1000, None, 4321, 1006, 4321, 4321):
        codes.add(code)
    assert codes.as_dict() == {"1000": 2, "1006": 1, "none": 1, "4321": 3}
    assert CloseCodes().as_dict() == {}


def _traced_in(snapshot: tracemalloc.Snapshot, *filenames: str) -> int:
    return sum(stat.count for stat in snapshot.statistics("filename") if stat.traceback[0].filename in filenames)


def test_a_wave_of_departures_leaves_no_object_behind_in_the_counts():
    # The last departure's counts, were they int objects (or the first close code's name), would
    # sit in the wave's memory and keep it (gateway/memory.py).
    totals, codes = DepartedTotals(), CloseCodes()
    metrics = [departing_metrics(i) for i in range(500)]
    tracemalloc.start()
    try:
        before = _traced_in(tracemalloc.take_snapshot(), stats.__file__)
        for one in metrics:
            totals.merge(one)
            codes.add(1000)
        assert _traced_in(tracemalloc.take_snapshot(), stats.__file__) == before
    finally:
        tracemalloc.stop()
    assert codes.as_dict() == {"1000": 500} and totals.metrics().flushes == 1500
