"""Unit tests for rhizomorph/protocol/rpc.py: call arguments, reply methods, _rtarget rewriting, frames."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rhizomorph.protocol import envelope, rpc

USER = {"id": "root", "roles": ["admin"], "is_anonymous": False}


# -- call_arguments ---------------------------------------------------------------------------


def test_call_arguments_python_with_kwargs():
    message = {"args": ["ws/p:echo", {"config": {}}], "with_kwargs": True}
    assert rpc.call_arguments(message) == (["ws/p:echo"], {"config": {}})


def test_call_arguments_python_with_kwargs_only():
    message = {"args": [{"query": {"workspace": "w"}}], "with_kwargs": True}
    assert rpc.call_arguments(message) == ([], {"query": {"workspace": "w"}})


def test_call_arguments_js_rkwargs():
    message = {"args": ["svc", {"_rkwargs": True, "mode": "first"}]}
    assert rpc.call_arguments(message) == (["svc"], {"mode": "first"})


def test_call_arguments_with_kwargs_drops_rkwargs_marker_too():
    message = {"args": [1, {"_rkwargs": True, "a": 2}], "with_kwargs": True}
    assert rpc.call_arguments(message) == ([1], {"a": 2})


def test_call_arguments_plain_positional_dict_stays_positional():
    # JS positional get_service("id", {}) — a trailing dict without _rkwargs is an argument.
    message = {"args": ["ws/jsprov:echo", {}]}
    assert rpc.call_arguments(message) == (["ws/jsprov:echo", {}], {})
    message = {"args": [{"id": "svc", "config": {"visibility": "public"}}]}
    assert rpc.call_arguments(message) == ([{"id": "svc", "config": {"visibility": "public"}}], {})


def test_call_arguments_rkwargs_false_is_positional():
    message = {"args": [{"_rkwargs": False, "x": 1}]}
    assert rpc.call_arguments(message) == ([{"_rkwargs": False, "x": 1}], {})


def test_call_arguments_with_kwargs_but_last_arg_not_a_dict():
    message = {"args": [1, [2]], "with_kwargs": True}
    assert rpc.call_arguments(message) == ([1, [2]], {})


@pytest.mark.parametrize("message", [{}, {"args": None}, {"args": []}, {"args": [], "with_kwargs": True}])
def test_call_arguments_empty(message):
    assert rpc.call_arguments(message) == ([], {})


def test_call_arguments_does_not_mutate_the_message():
    message = {"args": ["a", {"_rkwargs": True, "k": 1}]}
    before = copy.deepcopy(message)
    args, kwargs = rpc.call_arguments(message)
    args.append("x")
    kwargs["y"] = 2
    assert message == before


# -- reply_methods ----------------------------------------------------------------------------


def test_reply_methods_compact_promise():
    assert rpc.reply_methods({"promise": "*", "session": "abc"}) == ("abc.resolve", "abc.reject")


def test_reply_methods_compact_promise_needs_a_session():
    assert rpc.reply_methods({"promise": "*"}) is None
    assert rpc.reply_methods({"promise": "*", "session": 5}) is None


def test_reply_methods_explicit_promise():
    promise = {
        "heartbeat": {"_rtype": "method", "_rtarget": "c", "_rmethod": "s1.heartbeat", "_rpromise": False},
        "interval": 15.0,
        "resolve": {"_rtype": "method", "_rtarget": "c", "_rmethod": "s1.resolve", "_rpromise": False},
        "reject": {"_rtype": "method", "_rtarget": "c", "_rmethod": "s1.reject", "_rpromise": False},
    }
    assert rpc.reply_methods({"promise": promise, "session": "ignored"}) == ("s1.resolve", "s1.reject")


@pytest.mark.parametrize(
    "message",
    [
        {},
        {"session": "s"},
        {"promise": None, "session": "s"},
        {"promise": True, "session": "s"},
        {"promise": {}},
        {"promise": {"resolve": {"_rmethod": "a"}}},
        {"promise": {"resolve": "a.resolve", "reject": "a.reject"}},
        {"promise": {"resolve": {"_rtype": "method"}, "reject": {"_rmethod": "a.reject"}}},
    ],
)
def test_reply_methods_none(message):
    assert rpc.reply_methods(message) is None


# -- absolutize_targets -----------------------------------------------------------------------


def method(target: str, name: str = "services.echo.echo") -> dict:
    return {"_rtype": "method", "_rtarget": target, "_rmethod": name, "_rpromise": "*"}


def test_absolutize_rewrites_bare_targets_recursively():
    service = {
        "id": "echo",
        "config": {"visibility": "public"},
        "echo": method("jsprov"),
        "nested": {"deeper": {"fn": method("jsprov", "services.echo.nested.deeper.fn")}},
        "list": [method("jsprov", "a"), [method("other", "b")], 3, "jsprov"],
    }
    out = rpc.absolutize_targets(service, "WSp")
    assert out["echo"]["_rtarget"] == "WSp/jsprov"
    assert out["nested"]["deeper"]["fn"]["_rtarget"] == "WSp/jsprov"
    assert out["list"][0]["_rtarget"] == "WSp/jsprov"
    assert out["list"][1][0]["_rtarget"] == "WSp/other"
    assert out["list"][2:] == [3, "jsprov"]
    assert out["id"] == "echo" and out["config"] == {"visibility": "public"}
    # Everything but the targets is preserved.
    assert out["echo"] == {**service["echo"], "_rtarget": "WSp/jsprov"}


def test_absolutize_keeps_absolute_targets():
    service = {"a": method("WSp/pyprov"), "b": method("*/manager-x"), "c": method("other-ws/client")}
    assert rpc.absolutize_targets(service, "WSp") == service


def test_absolutize_leaves_dicts_without_rtype_alone():
    value = {"_rtarget": "bare", "data": {"_rtarget": "also-bare"}}
    assert rpc.absolutize_targets(value, "WSp") == value


def test_absolutize_ignores_non_string_targets():
    value = {"_rtype": "method", "_rtarget": None}
    assert rpc.absolutize_targets(value, "WSp") == value


def test_absolutize_does_not_mutate_input():
    service = {"echo": method("jsprov"), "items": [method("jsprov")]}
    before = copy.deepcopy(service)
    rpc.absolutize_targets(service, "WSp")
    assert service == before


@pytest.mark.parametrize("value", [None, 3, "jsprov", b"bytes", 1.5])
def test_absolutize_scalars_pass_through(value):
    assert rpc.absolutize_targets(value, "WSp") == value


# -- frames -----------------------------------------------------------------------------------


def test_callback_frame_decodes():
    frame = rpc.callback_frame(
        sender="*/manager-x",
        target="ws1/c",
        method="s1.resolve",
        value={"ok": [1, 2]},
        workspace="ws1",
        user=USER,
        parent="s1",
    )
    header = envelope.parse(frame).header
    assert header == {
        "type": "method",
        "from": "*/manager-x",
        "to": "ws1/c",
        "method": "s1.resolve",
        "ws": "ws1",
        "user": USER,
        "parent": "s1",
    }
    assert envelope.decode(frame) == {**header, "args": [{"ok": [1, 2]}]}


def test_callback_frame_without_parent():
    frame = rpc.callback_frame(
        sender="*/m", target="ws1/c", method="s.reject", value=rpc.error_value("boom"), workspace="ws1", user=USER
    )
    message = envelope.decode(frame)
    assert "parent" not in message
    assert "session" not in message
    assert message["args"] == [{"_rtype": "error", "_rvalue": "boom", "_rtrace": ""}]


def test_callback_frame_none_value():
    frame = rpc.callback_frame(sender="*/m", target="ws1/c", method="s.resolve", value=None, workspace="ws1", user=USER)
    assert envelope.decode(frame)["args"] == [None]


def test_call_frame_decodes():
    frame = rpc.call_frame(
        sender="*/manager-x",
        target="WSp/prov",
        method="services.built-in.get_service",
        args=["echo"],
        session="sess9",
        reply_target="manager-x",
        workspace="WSp",
        user=USER,
    )
    header = envelope.parse(frame).header
    assert header == {
        "type": "method",
        "from": "*/manager-x",
        "to": "WSp/prov",
        "method": "services.built-in.get_service",
        "session": "sess9",
        "ws": "WSp",
        "user": USER,
    }
    message = envelope.decode(frame)
    assert message["args"] == ["echo"]
    assert message["promise"] == {
        "resolve": {"_rtype": "method", "_rtarget": "manager-x", "_rmethod": "sess9.resolve", "_rpromise": False},
        "reject": {"_rtype": "method", "_rtarget": "manager-x", "_rmethod": "sess9.reject", "_rpromise": False},
    }
    # What a client would answer to.
    assert rpc.reply_methods(message) == ("sess9.resolve", "sess9.reject")


def test_heartbeat_frame_decodes():
    frame = rpc.heartbeat_frame(sender="*/m", target="ws1/c", session="s1", workspace="ws1", user=USER)
    env = envelope.parse(frame)
    assert env.payload_offset == len(frame)
    assert env.header == {
        "type": "method",
        "from": "*/m",
        "to": "ws1/c",
        "method": "s1.heartbeat",
        "ws": "ws1",
        "user": USER,
        "parent": "s1",
    }


def test_remote_error_message():
    assert rpc.remote_error_message(rpc.error_value("boom")) == "boom"
    assert rpc.remote_error_message({"_rtype": "error", "_rvalue": 42}) == "42"
    assert rpc.remote_error_message("plain") == "plain"
    assert rpc.remote_error_message({"_rtype": "method"}) == "{'_rtype': 'method'}"


# -- case conversion --------------------------------------------------------------------------

IDENTIFIERS = st.text(alphabet="abcXYZ_09", min_size=1, max_size=12)


@given(IDENTIFIERS)
def test_key_spelling_matches_hypha_rpc(key):
    from hypha_rpc.utils import to_camel_case, to_snake_case

    assert rpc.camel_case(key) == to_camel_case(key)
    assert rpc.snake_case(key) == to_snake_case(key)


def function_ref(name, schema=True):
    ref = {"_rtype": "method", "_rtarget": "ws/p", "_rmethod": f"services.s.{name}", "_rname": name}
    if schema:
        ref["_rschema"] = {"name": name, "description": "d", "parameters": {"type": "object"}}
    return ref


SERVICE = {
    "id": "ws/p:s",
    "config": {"require_context": True, "visibility": "public"},
    "HelloWorld": function_ref("HelloWorld"),
    "nested_tools": {"get_load": function_ref("get_load", schema=False), "items": [{"some_key": 1}]},
    "an_array": function_ref("an_array"),
}


def test_convert_case_camel():
    out = rpc.convert_case(SERVICE, "camel")
    assert set(out) == {"id", "config", "helloWorld", "nestedTools", "anArray"}
    assert out["config"] == {"requireContext": True, "visibility": "public"}
    assert out["helloWorld"]["_rname"] == "helloWorld" and out["helloWorld"]["_rschema"]["name"] == "helloWorld"
    assert out["helloWorld"]["_rmethod"] == "services.s.HelloWorld"  # the provider still knows it by its name
    assert set(out["nestedTools"]) == {"getLoad", "items"}
    assert out["nestedTools"]["items"] == [{"some_key": 1}]  # lists are left alone, as in hypha-rpc
    assert "_rschema" not in out["nestedTools"]["getLoad"]


def test_convert_case_snake_and_both():
    snake = rpc.convert_case(SERVICE, "snake")
    assert set(snake) == {"id", "config", "hello_world", "nested_tools", "an_array"}
    both = rpc.convert_case(SERVICE, "camel+snake")
    assert {"helloWorld", "hello_world", "nestedTools", "nested_tools", "anArray", "an_array"} <= set(both)
    assert both["hello_world"]["_rname"] == "hello_world" and both["helloWorld"]["_rname"] == "helloWorld"
    assert rpc.convert_case(SERVICE, "snake+camel") == both


def test_convert_case_leaves_encoded_objects_and_input_alone():
    before = copy.deepcopy(SERVICE)
    encoded = {"_rtype": "ndarray", "_rvalue": b"", "_rshape": [1]}
    assert rpc.convert_case(encoded, "camel") is encoded
    rpc.convert_case(SERVICE, "camel")
    assert SERVICE == before


def test_convert_case_refuses_unknown_cases():
    with pytest.raises(ValueError, match="case_conversion must be one of"):
        rpc.convert_case(SERVICE, "kebab")


def test_method_ref():
    ref = rpc.method_ref("*/m", "services.default.echo", "echo", "Echo.", {"name": "echo"})
    assert ref == {
        "_rtype": "method",
        "_rtarget": "*/m",
        "_rmethod": "services.default.echo",
        "_rpromise": "*",
        "_rname": "echo",
        "_rdoc": "Echo.",
        "_rschema": {"name": "echo"},
    }
    assert "_rschema" not in rpc.method_ref("*/m", "services.x.y", "y")
