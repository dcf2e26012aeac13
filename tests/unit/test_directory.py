"""rhizomorph/protocol/directory.py: the replica, and the callers it remembers, bounded."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rhizomorph.protocol.directory import DirectoryReplica


def test_callers_of_a_client_that_leaves_are_returned_once():
    replica = DirectoryReplica()
    replica.apply([("ws/t", "w2")])
    replica.note_call("ws/a", "ws/t")
    replica.note_call("ws/b", "ws/t")
    replica.note_call("ws/a", "ws/t")

    assert replica.apply([("ws/t", None)]) == [("ws/t", {"ws/a", "ws/b"})]
    assert replica.apply([("ws/t", None)]) == [("ws/t", set())]
    assert replica.callers_of == {} and replica.targets_of == {}


def test_each_caller_remembers_at_most_its_bound_the_oldest_forgotten_first():
    replica = DirectoryReplica(max_targets_per_caller=3)
    for i in range(5):
        replica.note_call("ws/a", f"ws/t{i}")
    replica.note_call("ws/b", "ws/t0")

    assert list(replica.targets_of["ws/a"]) == ["ws/t2", "ws/t3", "ws/t4"]
    assert replica.callers_of["ws/t0"] == {"ws/b"} and "ws/t1" not in replica.callers_of
    replica.note_call("ws/a", "ws/t0")  # called again: remembered again, as the newest
    assert list(replica.targets_of["ws/a"]) == ["ws/t3", "ws/t4", "ws/t0"]


def test_a_caller_that_leaves_is_forgotten_everywhere():
    replica = DirectoryReplica()
    for i in range(3):
        replica.note_call("ws/a", f"ws/t{i}")
    replica.note_call("ws/b", "ws/t0")

    replica.forget_caller("ws/a")

    assert replica.callers_of == {"ws/t0": {"ws/b"}}
    assert replica.targets_of == {"ws/b": {"ws/t0": None}}
    assert replica.apply([("ws/t1", None)]) == [("ws/t1", set())]


def test_a_refused_call_is_not_remembered():
    replica = DirectoryReplica()
    replica.note_call("ws/a", "ws/nobody")
    replica.note_call("ws/a", "ws/t")

    replica.forget_call("ws/a", "ws/nobody")
    replica.forget_call("ws/a", "ws/never-called")
    replica.forget_call("ws/stranger", "ws/t")

    assert replica.callers_of == {"ws/t": {"ws/a"}}
    assert replica.targets_of == {"ws/a": {"ws/t": None}}


def test_the_bound_must_be_positive():
    with pytest.raises(ValueError):
        DirectoryReplica(max_targets_per_caller=0)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["note", "refused", "left", "departed"]),
            st.sampled_from(["ws/a", "ws/b", "ws/c"]),
            st.integers(0, 6),
        ),
        max_size=60,
    )
)
def test_the_two_indexes_always_agree_and_stay_bounded(operations):
    replica = DirectoryReplica(max_targets_per_caller=3)
    for operation, caller, n in operations:
        target = f"ws/t{n}"
        if operation == "note":
            replica.note_call(caller, target)
        elif operation == "refused":
            replica.forget_call(caller, target)
        elif operation == "left":
            replica.forget_caller(caller)
        else:
            replica.apply([(target, None)])
    pairs = {(c, t) for t, callers in replica.callers_of.items() for c in callers}
    assert pairs == {(c, t) for c, targets in replica.targets_of.items() for t in targets}
    assert all(callers for callers in replica.callers_of.values())
    assert all(0 < len(targets) <= 3 for targets in replica.targets_of.values())
