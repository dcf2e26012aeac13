"""The benchmarks' raw client writes a manager call as hypha-rpc does (Hypha's manager answers only that)."""

from __future__ import annotations

from benchmarks.wire import call_extra, frame, pack, split_frame, unpack_payload
from rhizomorph.protocol import rpc


def test_a_call_by_session_carries_the_heartbeat_interval():
    extra = call_extra(["x"], timeout=20.0)
    # Hypha's manager expands "*" into resolve/reject/heartbeat callbacks with `t` as the interval.
    assert extra == {"args": ["x"], "promise": "*", "t": 10.0}
    header = {"type": "method", "to": "*/manager", "method": "services.default.echo", "session": "b7"}
    message = bytes(frame(header, pack(extra)))
    decoded, offset = split_frame(message)
    assert decoded["session"] == "b7" and unpack_payload(message, offset) == extra
    assert rpc.reply_methods({**extra, "session": "b7"}) == ("b7.resolve", "b7.reject")
