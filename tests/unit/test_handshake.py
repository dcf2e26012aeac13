"""Unit tests for rhizomorph/protocol/handshake.py: auth frame, tokens, authentication, connection_info."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from rhizomorph.protocol import handshake
from rhizomorph.protocol.handshake import (
    ACCESS,
    RECONNECTION,
    AuthRequest,
    HandshakeError,
    Identity,
    TokenIssuer,
    authenticate,
    connection_info,
    parse_auth,
)

SECRET = "unit-test-secret-0123456789abcdef"


def issuer() -> TokenIssuer:
    return TokenIssuer(SECRET)


def user_identity(**overrides) -> Identity:
    values = dict(
        workspace="ws-alice",
        client_id="c1",
        user_id="alice",
        is_anonymous=False,
        roles=["user"],
        workspaces={"ws-alice": "a"},
        email="alice@example.org",
    )
    values.update(overrides)
    return Identity(**values)


# -- parse_auth -------------------------------------------------------------------------------


def test_parse_auth_python_client_frame():
    req = parse_auth(
        json.dumps({"client_id": "provider", "workspace": None, "token": None, "reconnection_token": None})
    )
    assert req == AuthRequest(client_id="provider", workspace=None, token=None, reconnection_token=None)


def test_parse_auth_js_client_frame_with_missing_keys():
    req = parse_auth('{"client_id": "jsprov", "reconnection_token": null}')
    assert req == AuthRequest(client_id="jsprov")


def test_parse_auth_all_fields():
    req = parse_auth(
        json.dumps({"client_id": "c", "workspace": "team", "token": "T", "reconnection_token": "R", "extra": "ignored"})
    )
    assert (req.client_id, req.workspace, req.token, req.reconnection_token) == ("c", "team", "T", "R")


def test_parse_auth_empty_strings_become_none():
    req = parse_auth('{"client_id": "", "workspace": "", "token": "", "reconnection_token": ""}')
    assert req == AuthRequest()


@pytest.mark.parametrize("text", ["not json", "{", "", "{'client_id': 'x'}"])
def test_parse_auth_rejects_non_json(text):
    with pytest.raises(HandshakeError, match="not valid JSON"):
        parse_auth(text)


def test_parse_auth_rejects_binary_frame():
    with pytest.raises(HandshakeError, match="text frame"):
        parse_auth(b'{"client_id": "x"}')


@pytest.mark.parametrize("text", ["[]", '"client"', "42", "null", "true"])
def test_parse_auth_rejects_non_object(text):
    with pytest.raises(HandshakeError, match="JSON object"):
        parse_auth(text)


@pytest.mark.parametrize(
    "key, value",
    [("client_id", 5), ("workspace", ["ws"]), ("token", {"a": 1}), ("reconnection_token", True), ("client_id", 1.5)],
)
def test_parse_auth_rejects_wrong_types(key, value):
    with pytest.raises(HandshakeError, match=f"'{key}' must be a string"):
        parse_auth(json.dumps({key: value}))


@pytest.mark.parametrize("client_id", ["a/b", "a:b", "a*", "a b", "tab\there", "new\nline", "app@id", "x" * 257])
def test_parse_auth_rejects_bad_client_id(client_id):
    with pytest.raises(HandshakeError, match="invalid client_id"):
        parse_auth(json.dumps({"client_id": client_id}))


@pytest.mark.parametrize("client_id", ["a", "provider-1", "Client_2.x", "x" * 256, "ünïcode"])
def test_parse_auth_accepts_good_client_id(client_id):
    assert parse_auth(json.dumps({"client_id": client_id})).client_id == client_id


@pytest.mark.parametrize("workspace", ["*", "a/b", "ws:x", "w s"])
def test_parse_auth_rejects_bad_workspace(workspace):
    with pytest.raises(HandshakeError, match="invalid workspace"):
        parse_auth(json.dumps({"workspace": workspace}))


def test_parse_auth_rejects_oversized_frame():
    text = json.dumps({"client_id": "c", "pad": "x" * handshake.MAX_AUTH_FRAME})
    with pytest.raises(HandshakeError, match="too large"):
        parse_auth(text)


# -- TokenIssuer ------------------------------------------------------------------------------


def test_issue_and_verify_round_trip():
    ident = user_identity()
    token = issuer().issue(ident, kind=ACCESS, lifetime=60, client_id="c9")
    claims = issuer().verify(token, kind=ACCESS)
    assert claims["typ"] == ACCESS
    assert claims["sub"] == "alice"
    assert claims["cws"] == "ws-alice"
    assert claims["ws"] == {"ws-alice": "a"}
    assert claims["cid"] == "c9"
    assert claims["email"] == "alice@example.org"
    assert claims["anon"] is False
    assert claims["iss"] == "rhizomorph"
    assert claims["exp"] - claims["iat"] == 60


def test_issue_without_client_id_has_no_cid():
    claims = issuer().verify(issuer().issue(user_identity(), kind=ACCESS, lifetime=60), kind=ACCESS)
    assert "cid" not in claims


def test_tokens_are_unique():
    ident = user_identity()
    now = time.time()
    a = issuer().issue(ident, kind=ACCESS, lifetime=60, now=now)
    b = issuer().issue(ident, kind=ACCESS, lifetime=60, now=now)
    assert a != b  # jti differs


@pytest.mark.parametrize("issued, expected", [(RECONNECTION, ACCESS), (ACCESS, RECONNECTION)])
def test_verify_rejects_kind_mismatch(issued, expected):
    token = issuer().issue(user_identity(), kind=issued, lifetime=60, client_id="c1")
    with pytest.raises(HandshakeError, match="wrong token type"):
        issuer().verify(token, kind=expected)


def test_verify_rejects_expired_token():
    token = issuer().issue(user_identity(), kind=ACCESS, lifetime=-10)
    with pytest.raises(HandshakeError, match="expired"):
        issuer().verify(token, kind=ACCESS)


def test_verify_rejects_token_expired_long_ago():
    token = issuer().issue(user_identity(), kind=RECONNECTION, lifetime=100, now=time.time() - 1000, client_id="c")
    with pytest.raises(HandshakeError, match="reconnection token has expired"):
        issuer().verify(token, kind=RECONNECTION)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_verify_rejects_tampered_payload():
    token = issuer().issue(user_identity(), kind=ACCESS, lifetime=60)
    head, payload, signature = token.split(".")
    claims = json.loads(_unb64(payload))
    claims["ws"] = {"*": "a"}  # privilege escalation attempt
    forged = ".".join([head, _b64(json.dumps(claims).encode()), signature])
    with pytest.raises(HandshakeError, match="invalid access token"):
        issuer().verify(forged, kind=ACCESS)


def test_verify_rejects_tampered_signature():
    token = issuer().issue(user_identity(), kind=ACCESS, lifetime=60)
    head, payload, signature = token.split(".")
    raw = bytearray(_unb64(signature))
    raw[0] ^= 0xFF
    with pytest.raises(HandshakeError, match="invalid access token"):
        issuer().verify(".".join([head, payload, _b64(bytes(raw))]), kind=ACCESS)


def test_verify_rejects_other_secret():
    token = TokenIssuer("another-secret-of-sufficient-length!").issue(user_identity(), kind=ACCESS, lifetime=60)
    with pytest.raises(HandshakeError, match="invalid access token"):
        issuer().verify(token, kind=ACCESS)


def test_verify_rejects_other_issuer():
    token = TokenIssuer(SECRET, issuer="someone-else").issue(user_identity(), kind=ACCESS, lifetime=60)
    with pytest.raises(HandshakeError, match="invalid access token"):
        issuer().verify(token, kind=ACCESS)


def test_verify_rejects_unsigned_token():
    claims = {
        "iss": "rhizomorph",
        "typ": ACCESS,
        "sub": "x",
        "exp": int(time.time()) + 60,
        "cws": "w",
        "ws": {"*": "a"},
    }
    token = jwt.encode(claims, None, algorithm="none")
    with pytest.raises(HandshakeError, match="invalid access token"):
        issuer().verify(token, kind=ACCESS)


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c"])
def test_verify_rejects_garbage(token):
    with pytest.raises(HandshakeError, match="invalid reconnection token"):
        issuer().verify(token, kind=RECONNECTION)


# -- Identity ---------------------------------------------------------------------------------


def test_identity_permissions():
    ident = user_identity(workspaces={"ws-alice": "a", "team": "r", "lab": "rw"})
    assert ident.address == "ws-alice/c1"
    assert ident.can("ws-alice", "a") and ident.can("ws-alice", "r")
    assert ident.can("team", "r") and not ident.can("team", "rw")
    assert ident.can("lab", "rw") and not ident.can("lab", "a")
    assert not ident.can("other", "r")
    assert ident.permission("other") is None


def test_identity_wildcard_permission():
    ident = user_identity(workspaces={"*": "rw"})
    assert ident.can("anything", "rw")
    assert not ident.can("anything", "a")


# -- authenticate -----------------------------------------------------------------------------


def test_anonymous_gets_own_workspace_with_admin():
    ident, reconnect = authenticate(AuthRequest(client_id="c1"), issuer())
    assert reconnect is False
    assert ident.is_anonymous is True
    assert ident.client_id == "c1"
    assert ident.user_id.startswith("anonymouz-")
    assert ident.workspace == f"ws-user-{ident.user_id}"
    assert ident.workspace.startswith("ws-user-anonymouz-")
    assert ident.workspaces == {ident.workspace: "a"}
    assert ident.can(ident.workspace, "a")
    assert ident.roles == ["anonymous"]


def test_anonymous_users_get_distinct_workspaces():
    a, _ = authenticate(AuthRequest(client_id="c1"), issuer())
    b, _ = authenticate(AuthRequest(client_id="c1"), issuer())
    assert a.workspace != b.workspace


def test_anonymous_without_client_id_gets_a_generated_one():
    ident, _ = authenticate(AuthRequest(), issuer())
    assert ident.client_id
    assert handshake.valid_name(ident.client_id)


def test_anonymous_may_not_join_another_workspace():
    with pytest.raises(HandshakeError, match="Workspace team does not exist or is not accessible"):
        authenticate(AuthRequest(client_id="c1", workspace="team"), issuer())


def test_token_naming_its_own_workspace_is_accepted():
    first, _ = authenticate(AuthRequest(client_id="c1"), issuer())
    token = issuer().issue(first, kind=ACCESS, lifetime=60)
    ident, _ = authenticate(AuthRequest(client_id="c2", token=token, workspace=first.workspace), issuer())
    assert ident.workspace == first.workspace


def test_reconnection_token_restores_workspace_and_client_id():
    first, _ = authenticate(AuthRequest(client_id="prov"), issuer())
    token = issuer().issue(first, kind=RECONNECTION, lifetime=60, client_id=first.client_id)

    again, reconnect = authenticate(AuthRequest(reconnection_token=token), issuer())
    assert reconnect is True
    assert again.workspace == first.workspace
    assert again.client_id == "prov"
    assert again.user_id == first.user_id
    assert again.is_anonymous is True
    assert again.workspaces == first.workspaces

    # The Python client re-sends its client_id and workspace with the token.
    again2, reconnect2 = authenticate(
        AuthRequest(client_id="prov", workspace=first.workspace, reconnection_token=token), issuer()
    )
    assert reconnect2 is True and again2.address == first.address


def test_reconnection_token_takes_precedence_over_access_token():
    first, _ = authenticate(AuthRequest(client_id="prov"), issuer())
    rtoken = issuer().issue(first, kind=RECONNECTION, lifetime=60, client_id="prov")
    atoken = issuer().issue(user_identity(), kind=ACCESS, lifetime=60)
    ident, reconnect = authenticate(AuthRequest(token=atoken, reconnection_token=rtoken), issuer())
    assert reconnect is True
    assert ident.workspace == first.workspace


def test_reconnection_token_for_another_client_id_is_refused():
    first, _ = authenticate(AuthRequest(client_id="prov"), issuer())
    token = issuer().issue(first, kind=RECONNECTION, lifetime=60, client_id="prov")
    with pytest.raises(HandshakeError, match="another client id"):
        authenticate(AuthRequest(client_id="intruder", reconnection_token=token), issuer())


def test_reconnection_token_for_another_workspace_is_refused():
    first, _ = authenticate(AuthRequest(client_id="prov"), issuer())
    token = issuer().issue(first, kind=RECONNECTION, lifetime=60, client_id="prov")
    with pytest.raises(HandshakeError, match="another workspace"):
        authenticate(AuthRequest(client_id="prov", workspace="elsewhere", reconnection_token=token), issuer())


def test_reconnection_token_without_client_id_is_refused():
    first, _ = authenticate(AuthRequest(client_id="prov"), issuer())
    token = issuer().issue(first, kind=RECONNECTION, lifetime=60)  # no cid claim
    with pytest.raises(HandshakeError, match="no workspace or client id"):
        authenticate(AuthRequest(reconnection_token=token), issuer())


def test_access_token_cannot_be_used_as_reconnection_token():
    token = issuer().issue(user_identity(), kind=ACCESS, lifetime=60, client_id="c1")
    with pytest.raises(HandshakeError, match="wrong token type"):
        authenticate(AuthRequest(client_id="c1", reconnection_token=token), issuer())


def test_expired_reconnection_token_is_refused():
    first, _ = authenticate(AuthRequest(client_id="prov"), issuer())
    token = issuer().issue(first, kind=RECONNECTION, lifetime=-10, client_id="prov")
    with pytest.raises(HandshakeError, match="expired"):
        authenticate(AuthRequest(reconnection_token=token), issuer())


def test_access_token_identity():
    token = issuer().issue(user_identity(), kind=ACCESS, lifetime=60)
    ident, reconnect = authenticate(AuthRequest(client_id="c7", token=token), issuer())
    assert reconnect is False
    assert ident.workspace == "ws-alice"
    assert ident.client_id == "c7"
    assert ident.user_id == "alice"
    assert ident.is_anonymous is False
    assert ident.email == "alice@example.org"
    assert ident.roles == ["user"]
    assert isinstance(ident.expires_at, float) and ident.expires_at > time.time()


def test_access_token_with_workspace_permission_joins_that_workspace():
    token = issuer().issue(user_identity(workspaces={"ws-alice": "a", "team": "r"}), kind=ACCESS, lifetime=60)
    ident, _ = authenticate(AuthRequest(client_id="c1", workspace="team", token=token), issuer())
    assert ident.workspace == "team"
    assert ident.address == "team/c1"
    assert ident.can("team", "r") and not ident.can("team", "rw")


def test_access_token_without_permission_for_requested_workspace_is_refused():
    token = issuer().issue(user_identity(workspaces={"ws-alice": "a"}), kind=ACCESS, lifetime=60)
    with pytest.raises(HandshakeError, match="Workspace team does not exist or is not accessible"):
        authenticate(AuthRequest(client_id="c1", workspace="team", token=token), issuer())


def test_access_token_bound_to_another_client_id_is_refused():
    token = issuer().issue(user_identity(), kind=ACCESS, lifetime=60, client_id="bound")
    with pytest.raises(HandshakeError, match="bound to another client id"):
        authenticate(AuthRequest(client_id="other", token=token), issuer())
    ident, _ = authenticate(AuthRequest(client_id="bound", token=token), issuer())
    assert ident.client_id == "bound"


def test_access_token_from_other_secret_is_refused():
    token = TokenIssuer("a-completely-different-secret-key!!").issue(user_identity(), kind=ACCESS, lifetime=60)
    with pytest.raises(HandshakeError, match="invalid access token"):
        authenticate(AuthRequest(client_id="c1", token=token), issuer())


def test_token_with_bad_permission_level_is_refused():
    token = issuer().issue(user_identity(workspaces={"ws-alice": "root"}), kind=ACCESS, lifetime=60)
    with pytest.raises(HandshakeError, match="bad workspace permissions"):
        authenticate(AuthRequest(client_id="c1", token=token), issuer())


# -- connection_info --------------------------------------------------------------------------


def test_connection_info_fields():
    ident, _ = authenticate(AuthRequest(client_id="provider"), issuer())
    rtoken = issuer().issue(ident, kind=RECONNECTION, lifetime=172800.0, client_id=ident.client_id)
    info = connection_info(
        ident,
        manager_id="manager-abc",
        public_base_url="http://127.0.0.1:9527",
        server_version="0.21.135",
        reconnection_token=rtoken,
        token_lifetime=172800.0,
        worker_id="w0",
    )

    assert info["type"] == "connection_info"
    assert info["workspace"] == ident.workspace
    assert info["manager_id"] == "manager-abc"
    assert info["client_id"] == "provider"
    assert info["reconnection_token"] == rtoken
    assert info["reconnection_token_life_time"] == 172800.0
    assert info["public_base_url"] == info["local_base_url"] == "http://127.0.0.1:9527"
    assert info["hypha_version"] == "0.21.135"
    assert info["rhizomorph_worker"] == "w0"

    user = info["user"]
    assert user["id"] == ident.user_id
    assert user["is_anonymous"] is True
    assert user["roles"] == ["anonymous"]
    assert user["scope"] == {
        "current_workspace": ident.workspace,
        "workspaces": {ident.workspace: "a"},
        "client_id": "provider",
        "extra_scopes": None,
    }
    # The JS client deep-copies the context through JSON; the whole frame must serialise.
    assert json.loads(json.dumps(info)) == info

    # The reconnection token in the reply really restores this identity.
    again, _ = authenticate(AuthRequest(reconnection_token=info["reconnection_token"]), issuer())
    assert again.address == ident.address


def test_user_info_is_a_copy():
    ident = user_identity()
    info = ident.user_info()
    info["roles"].append("admin")
    info["scope"]["workspaces"]["other"] = "a"
    assert ident.roles == ["user"]
    assert ident.workspaces == {"ws-alice": "a"}


def test_error_frame():
    assert json.loads(handshake.error_frame("nope")) == {"type": "error", "message": "nope"}


# -- wire_protocol opt-in ---------------------------------------------------------------------


def test_parse_auth_wire_protocol_defaults_to_3():
    assert parse_auth('{"client_id": "c"}').wire_protocol == 3


def test_parse_auth_wire_protocol_opt_in():
    assert parse_auth('{"client_id": "c", "wire_protocol": 4}').wire_protocol == 4


@pytest.mark.parametrize("value", ['"4"', "true", "4.0", "null", "[4]"])
def test_parse_auth_wire_protocol_must_be_an_integer(value):
    with pytest.raises(HandshakeError, match="'wire_protocol' must be an integer"):
        parse_auth(f'{{"client_id": "c", "wire_protocol": {value}}}')


def test_connection_info_mentions_wire_protocol_only_for_v4():
    ident = user_identity()
    common = dict(
        manager_id="m",
        public_base_url="http://h:1",
        server_version="v",
        reconnection_token="t",
        token_lifetime=1.0,
        worker_id="w",
    )
    assert "wire_protocol" not in connection_info(ident, **common)
    assert "wire_protocol" not in connection_info(ident, wire_protocol=3, **common)
    assert connection_info(ident, wire_protocol=4, **common)["wire_protocol"] == 4
