"""What is measured: scenarios (payloads and topology), modes, and the suites that combine them.

A *case* is one scenario in one mode. Every case runs on every (contender, client) pair.

Modes:
- ``sequential``: one caller, one call in flight (round-trip latency).
- ``concurrent``: one caller, 32 calls in flight.
- ``burst``: one caller, every call of a pass in flight at once (an unbounded burst).
- ``events``: fire-and-forget events, point to point (one sender, one receiver) or, for
  fan-out, broadcast ``to: "*"`` to N subscribers.
- fan-in is the ``sequential`` mode with many callers, each with its own connection.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import msgpack

SEQUENTIAL, CONCURRENT, BURST, EVENTS = "sequential", "concurrent", "burst", "events"
CONCURRENCY = 32
MIXED_SEED = 20240607
MIXED_COUNT = 250


@dataclass(frozen=True)
class Scenario:
    name: str
    count: int  #: calls, or events published (fan-out: each reaches every subscriber)
    size: int = 0  #: fixed payload size in bytes; 0 means the mixed dashboard set
    subscribers: int = 0  #: fan-out receivers
    callers: int = 1  #: fan-in connections
    modes: tuple[str, ...] = (SEQUENTIAL, CONCURRENT, EVENTS)

    @property
    def messages(self) -> int:
        """How many messages ``payloads()`` returns (the mixed set has at most ``MIXED_COUNT``)."""
        return self.count if self.size else min(self.count, MIXED_COUNT)

    def payloads(self) -> list[Any]:
        """The messages of one run, in send order (deterministic)."""
        if self.size:
            block = bytes(range(256))
            body = block * (self.size // 256) + block[: self.size % 256]
            return [body] * self.count
        return mixed_messages(MIXED_COUNT)[: self.count]


@dataclass(frozen=True)
class Case:
    scenario: Scenario
    mode: str
    #: A repeat measures each pair's *pass* (the scenario's messages once) in turn, round after
    #: round, until the pairs' passes have lasted this many seconds each on average (0: one
    #: round); a run is a pair's passes of one repeat (``run.run_case``, ``report.merge_passes``).
    min_run_s: float = 0.0

    @property
    def id(self) -> str:
        return f"{self.scenario.name}/{self.mode}"

    @property
    def concurrency(self) -> int:
        """Calls in flight per caller: a burst puts every call of a pass in flight at once."""
        if self.mode == BURST:
            return self.scenario.messages
        return CONCURRENCY if self.mode == CONCURRENT else 1

    @property
    def broadcast(self) -> bool:
        return self.scenario.subscribers > 0


@dataclass(frozen=True)
class Suite:
    name: str
    scenarios: tuple[Scenario, ...]
    repeats: int
    #: Upper bound on one measured run, seconds; a run that hits it is recorded as timed out.
    run_timeout: float = 60.0
    notes: tuple[str, ...] = field(default=())
    #: Each measured run's minimum length, seconds (``Case.min_run_s``); 0: one pass per run.
    min_run_s: float = 0.0

    def cases(self) -> list[Case]:
        return [Case(s, mode, self.min_run_s) for s in self.scenarios for mode in s.modes]


def payload_size(obj: Any) -> int:
    """Bytes counted for one message: raw length of bytes, else its msgpack size."""
    if isinstance(obj, (bytes, bytearray)):
        return len(obj)
    return len(msgpack.packb(obj, use_bin_type=True))


def _fan_out(n: int, events: int) -> Scenario:
    return Scenario(f"fanout-{n}", events, size=1024, subscribers=n, modes=(EVENTS,))


def _fan_in(callers: int, calls: int) -> Scenario:
    return Scenario(f"fanin-{callers}", calls, size=1024, callers=callers, modes=(SEQUENTIAL,))


SUITES: dict[str, Suite] = {
    "smoke": Suite(
        "smoke",
        (
            Scenario("small", 20, size=256),
            Scenario("medium", 5, size=20_000),
            Scenario("large", 2, size=2_000_000),
            Scenario("mixed", 25),
            _fan_out(3, 10),
            _fan_in(4, 20),
        ),
        repeats=1,
        run_timeout=20.0,
    ),
    "quick": Suite(
        "quick",
        (
            Scenario("small", 500, size=256),
            Scenario("medium", 150, size=20_000),
            Scenario("large", 8, size=2_000_000),
            Scenario("mixed", MIXED_COUNT),
            _fan_out(20, 100),
            _fan_in(16, 400),
        ),
        repeats=3,
        run_timeout=60.0,
        notes=("counts scaled down from the full suite to fit a few minutes on 2 cores",),
    ),
    "full": Suite(
        "full",
        (
            Scenario("small", 2000, size=256),
            Scenario("medium", 500, size=20_000),
            Scenario("large", 20, size=2_000_000),
            Scenario("mixed", MIXED_COUNT),
            _fan_out(50, 200),
            _fan_out(1000, 20),
            _fan_in(100, 2000),
        ),
        repeats=5,
        run_timeout=180.0,
    ),
}


# -- the hypha-rpc batching report's table ---------------------------------------------------------
#: What hypha-rpc's batching report claims batching gains, per scenario (never measured there).
CLAIMED_GAIN: dict[str, float] = {"small": 0.48, "medium": 0.26, "large": 0.05, "mixed": 0.34}
CLAIM_MODES = (CONCURRENT, BURST)


def _claim_scenarios(small: int, medium: int, large: int, mixed: int) -> tuple[Scenario, ...]:
    return (
        Scenario("small", small, size=256, modes=CLAIM_MODES),
        Scenario("medium", medium, size=20_000, modes=CLAIM_MODES),
        Scenario("large", large, size=2_000_000, modes=CLAIM_MODES),
        Scenario("mixed", mixed, modes=CLAIM_MODES),
    )


#: The report's four scenarios as echo calls (``benchmarks/bench_claims.py``): its own counts in
#: ``quick`` and ``full`` (2000 x 256 B, 500 x 20 KB, 20 x 2 MB, 250 dashboard messages), tiny in ``smoke``.
#: One pass over them lasts a few tenths of a second, too short for a ratio or a CPU reading to hold
#: from repeat to repeat: a run is passes until ``min_run_s``, interleaved with the other pairs' (smoke: one pass).
CLAIM_SUITES: dict[str, Suite] = {
    "smoke": Suite("smoke", _claim_scenarios(20, 5, 2, 25), repeats=1, run_timeout=30.0),
    "quick": Suite("quick", _claim_scenarios(2000, 500, 20, MIXED_COUNT), repeats=5, run_timeout=120.0, min_run_s=1.5),
    "full": Suite("full", _claim_scenarios(2000, 500, 20, MIXED_COUNT), repeats=5, run_timeout=180.0, min_run_s=4.0),
}

# -- the mixed "dashboard" set --------------------------------------------------------------------
_SERVICES = ("ingest", "trainer", "scheduler", "viewer", "storage", "auth", "gpu-node", "notebook")
_STATES = ("ok", "ok", "ok", "ok", "degraded", "down")


def mixed_messages(count: int = MIXED_COUNT, seed: int = MIXED_SEED) -> list[dict[str, Any]]:
    """Dashboard-like traffic: mostly small status dicts, some numeric arrays, some metadata.

    Per message, by a fixed-seed draw: 60 % ``status`` (~80-110 B), 20 % ``series`` (float32
    samples as raw bytes, 1-192 KB), 10 % ``points`` (float lists, 50-2000 pairs, ~1-36 KB),
    10 % ``meta`` (nested metadata with text, ~2-6 KB).
    """
    rng = random.Random(seed)
    return [_mixed_one(rng, i) for i in range(count)]


def _mixed_one(rng: random.Random, i: int) -> dict[str, Any]:
    draw = rng.random()
    if draw < 0.6:
        return {
            "kind": "status",
            "seq": i,
            "service": rng.choice(_SERVICES),
            "state": rng.choice(_STATES),
            "cpu": round(rng.random(), 3),
            "mem_mb": rng.randint(50, 32000),
            "ts": 1.7e9 + i * 0.5,
            "tags": rng.sample(("prod", "eu", "us", "canary", "batch", "gpu"), rng.randint(0, 3)),
        }
    if draw < 0.8:
        n = int(256 * 192 ** rng.random())  # log-uniform 256 .. 49152 float32 samples
        return {
            "kind": "series",
            "seq": i,
            "name": f"{rng.choice(_SERVICES)}.latency",
            "dtype": "float32",
            "shape": [n],
            "data": rng.randbytes(4 * n),
        }
    if draw < 0.9:
        n = rng.randint(50, 2000)
        return {
            "kind": "points",
            "seq": i,
            "x": [round(k * 0.1, 1) for k in range(n)],
            "y": [rng.gauss(0.0, 1.0) for _ in range(n)],
        }
    params = {
        f"param_{k}": rng.choice((rng.random(), rng.randint(0, 10**6), f"value-{rng.randint(0, 999)}"))
        for k in range(rng.randint(20, 60))
    }
    return {
        "kind": "meta",
        "seq": i,
        "experiment": {
            "id": f"exp-{rng.randint(0, 9999)}",
            "owner": "bench",
            "labels": {"team": "imaging", "stage": "review"},
        },
        "params": params,
        "notes": " ".join(
            rng.choice(("cell", "stain", "tile", "zarr", "model", "run")) for _ in range(rng.randint(300, 1000))
        ),
    }
