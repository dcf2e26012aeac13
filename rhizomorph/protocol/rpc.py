"""The small slice of the hypha-rpc call protocol the router speaks as a peer (sans-I/O).

Only the workspace manager decodes messages; these helpers turn a decoded call into
arguments and build the reply and call frames it sends back.
"""

from __future__ import annotations

from typing import Any

from rhizomorph.protocol.envelope import encode


def call_arguments(message: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """Split a decoded call into positional and keyword arguments.

    Python marks kwargs with ``with_kwargs`` (the last arg is the kwargs dict); JS marks the
    last dict with ``_rkwargs: true``.
    """
    args = list(message.get("args") or [])
    kwargs: dict[str, Any] = {}
    if message.get("with_kwargs") and args and isinstance(args[-1], dict):
        kwargs = dict(args.pop())
    elif args and isinstance(args[-1], dict) and args[-1].get("_rkwargs"):
        kwargs = dict(args.pop())
    kwargs.pop("_rkwargs", None)
    return args, kwargs


def reply_methods(message: dict[str, Any]) -> tuple[str, str] | None:
    """The resolve/reject method ids a call expects, or ``None`` if it wants no reply."""
    promise = message.get("promise")
    if promise == "*":
        session = message.get("session")
        if not isinstance(session, str):
            return None
        return f"{session}.resolve", f"{session}.reject"
    if isinstance(promise, dict):
        try:
            return promise["resolve"]["_rmethod"], promise["reject"]["_rmethod"]
        except (KeyError, TypeError):
            return None
    return None


def error_value(message: str) -> dict[str, Any]:
    return {"_rtype": "error", "_rvalue": message, "_rtrace": ""}


def callback_frame(
    *,
    sender: str,
    target: str,
    method: str,
    value: Any,
    workspace: str,
    user: dict[str, Any],
    parent: str | None = None,
) -> bytes:
    """A fire-and-forget call (resolve, reject, heartbeat) from the router to a client."""
    header = {"type": "method", "from": sender, "to": target, "method": method, "ws": workspace, "user": user}
    if parent:
        header["parent"] = parent
    return encode(header, {"args": [value]})


def heartbeat_frame(*, sender: str, target: str, session: str, workspace: str, user: dict[str, Any]) -> bytes:
    header = {
        "type": "method",
        "from": sender,
        "to": target,
        "method": f"{session}.heartbeat",
        "ws": workspace,
        "user": user,
        "parent": session,
    }
    return encode(header)


def call_frame(
    *,
    sender: str,
    target: str,
    method: str,
    args: list[Any],
    session: str,
    reply_target: str,
    workspace: str,
    user: dict[str, Any],
) -> bytes:
    """A call from the router to a client, with an explicit promise whose callbacks come back."""

    def callback(name: str) -> dict[str, Any]:
        return {"_rtype": "method", "_rtarget": reply_target, "_rmethod": f"{session}.{name}", "_rpromise": False}

    header = {
        "type": "method",
        "from": sender,
        "to": target,
        "method": method,
        "session": session,
        "ws": workspace,
        "user": user,
    }
    return encode(header, {"args": args, "promise": {"resolve": callback("resolve"), "reject": callback("reject")}})


def absolutize_targets(value: Any, workspace: str) -> Any:
    """Rewrite every bare ``_rtarget`` (JS providers write ``"client"``) to ``"<ws>/client"``."""
    if isinstance(value, dict):
        out = {k: absolutize_targets(v, workspace) for k, v in value.items()}
        target = out.get("_rtarget")
        if "_rtype" in out and isinstance(target, str) and "/" not in target:
            out["_rtarget"] = f"{workspace}/{target}"
        return out
    if isinstance(value, list):
        return [absolutize_targets(v, workspace) for v in value]
    return value


def remote_error_message(value: Any) -> str:
    """The message of an encoded remote error (what a client rejects with)."""
    if isinstance(value, dict) and value.get("_rtype") == "error":
        return str(value.get("_rvalue"))
    return str(value)


def method_ref(
    target: str, method: str, name: str, doc: str | None = None, schema: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An encoded function of the router's own services, as hypha-rpc encodes one it serves."""
    ref: dict[str, Any] = {
        "_rtype": "method",
        "_rtarget": target,
        "_rmethod": method,
        "_rpromise": "*",
        "_rname": name,
        "_rdoc": doc,
    }
    if schema is not None:
        ref["_rschema"] = schema
    return ref


CASE_CONVERSIONS = ("camel", "snake", "camel+snake", "snake+camel")


def camel_case(key: str) -> str:
    """hypha-rpc's rule: without ``_`` only the first letter is lowered; with it, the parts
    after the first are title-cased (``get_load`` -> ``getLoad``, ``HelloWorld`` -> ``helloWorld``)."""
    if "_" not in key:
        return key[:1].lower() + key[1:]
    first, *rest = key.split("_")
    return first + "".join(part.title() for part in rest)


def snake_case(key: str) -> str:
    """hypha-rpc's rule: ``_`` before every capital, lowered, leading ``_`` stripped
    (``getLoad`` -> ``get_load``, ``HelloWorld`` -> ``hello_world``)."""
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in key).lstrip("_")


def convert_case(value: Any, case: str) -> Any:
    """Rename the keys of an encoded service as Hypha's ``get_service(..., case_conversion=...)``.

    Keys of plain dicts are renamed, recursively; lists are left as they are, as are encoded
    objects (``_rtype``), whose keys are the protocol's. A renamed function also gets the new
    name in ``_rname`` and its ``_rschema``, as hypha-rpc's own client-side conversion does.
    ``camel+snake`` keeps both spellings.
    """
    if case not in CASE_CONVERSIONS:
        raise ValueError(f"case_conversion must be one of {', '.join(CASE_CONVERSIONS)}, not {case!r}")
    if not isinstance(value, dict) or "_rtype" in value:
        return value
    cases = [case] if case in _SPELLINGS else list(_SPELLINGS)  # both: camel first, then snake
    out: dict[str, Any] = {}
    for key, item in value.items():
        for each in cases:
            new_key = _SPELLINGS[each](key) if isinstance(key, str) and key else key
            out[new_key] = _renamed(convert_case(item, each), new_key)
    return out


_SPELLINGS = {"camel": camel_case, "snake": snake_case}


def _renamed(item: Any, key: Any) -> Any:
    if not (isinstance(item, dict) and item.get("_rtype") == "method" and isinstance(key, str)):
        return item
    if item.get("_rname") == key:
        return item
    item = {**item, "_rname": key}
    if isinstance(item.get("_rschema"), dict):
        item["_rschema"] = {**item["_rschema"], "name": key}
    return item
