"""The ``public/hypha-login`` service without Ray or sockets: sessions (rhizomorph/protocol/login.py),
two workers' login services handing sessions to each other (rhizomorph/gateway/login.py), and
the local identity provider's page (rhizomorph/gateway/login_providers.py)."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest

from rhizomorph.config import Config
from rhizomorph.gateway.http_server import HttpRequest
from rhizomorph.gateway.login import LoginService, login_service
from rhizomorph.gateway.login_providers import IdentityProvider, LocalProvider, LoginUser, load_provider
from rhizomorph.protocol import login
from rhizomorph.protocol.handshake import ACCESS, AuthRequest, HandshakeError, Identity, TokenIssuer, authenticate
from rhizomorph.protocol.login import LoginError, LoginSessions

SECRET = "a test secret of at least thirty-two bytes"


# -- sessions ----------------------------------------------------------------------------------


def test_a_session_key_names_its_worker_and_ends_when_its_report_is_taken():
    sessions = LoginSessions("n0w1")
    session = sessions.start("ws/a", now=0.0, workspace="ws-x", expires_in=60)
    assert login.key_owner(session.key) == "n0w1" and (session.workspace, session.expires_in) == ("ws-x", 60.0)
    assert sessions.take(session.key, 1.0) is None  # no report yet: still open
    sessions.report(session.key, {"token": "t"}, 2.0)
    assert sessions.take(session.key, 3.0) == {"token": "t"}
    with pytest.raises(LoginError, match="Invalid key"):
        sessions.take(session.key, 4.0)


def test_a_session_expires_after_the_login_time():
    sessions = LoginSessions("w", lifetime=10)
    key = sessions.start("ws/a", now=0.0).key
    sessions.get(key, 9.9)
    with pytest.raises(LoginError, match="Invalid key, key does not exist or expired"):
        sessions.report(key, {"token": "t"}, 10.0)
    assert len(sessions) == 0


def test_open_sessions_are_bounded_per_caller_and_per_worker():
    sessions = LoginSessions("w", max_sessions=3, max_per_caller=2)
    sessions.start("ws/a", 0.0)
    sessions.start("ws/a", 0.0)
    with pytest.raises(LoginError, match="too many logins in progress for ws/a"):
        sessions.start("ws/a", 0.0)
    sessions.start("ws/b", 0.0)
    with pytest.raises(LoginError, match="too many logins in progress on this server"):
        sessions.start("ws/c", 0.0)
    sessions.start("ws/c", now=sessions.lifetime)  # the first ones expired meanwhile


@pytest.mark.parametrize("key", [None, 3, "", "nodash", "-x", "w-"])
def test_what_is_no_session_key_names_no_worker(key: Any):
    assert login.key_owner(key) is None


@pytest.mark.parametrize("expires_in", [0, -1, "60", True, float("inf")])
def test_a_token_lifetime_must_be_a_positive_number(expires_in: Any):
    with pytest.raises(LoginError, match="expires_in"):
        LoginSessions("w").start("ws/a", 0.0, expires_in=expires_in)


def test_the_start_answer_has_hyphas_urls():
    answer = login.start_answer("http://127.0.0.1:9527", "w-k", "ws-x", 60.0)
    assert answer == {
        "login_url": "http://127.0.0.1:9527/public/apps/hypha-login/?key=w-k&workspace=ws-x&expires_in=60",
        "key": "w-k",
        "report_url": "http://127.0.0.1:9527/public/services/hypha-login/report",
        "check_url": "http://127.0.0.1:9527/public/services/hypha-login/check",
    }


# -- who may approve a local login -------------------------------------------------------------

LOCAL = {"host": "127.0.0.1:9527"}


@pytest.mark.parametrize(
    ("bound", "client", "headers", "refused"),
    [
        ("127.0.0.1", "127.0.0.1", LOCAL, None),
        ("localhost", "::1", {"host": "[::1]:9527", "origin": "http://localhost:9527"}, None),
        ("127.0.0.1", "127.0.0.1", {**LOCAL, "origin": "null"}, None),
        ("0.0.0.0", "127.0.0.1", LOCAL, "bound to loopback"),
        ("127.0.0.1", "10.0.0.5", LOCAL, "only from this machine"),
        ("127.0.0.1", None, LOCAL, "only from this machine"),
        ("127.0.0.1", "127.0.0.1", {"host": "attacker.example:9527"}, "Host header"),
        ("127.0.0.1", "127.0.0.1", {}, "Host header"),
        ("127.0.0.1", "127.0.0.1", {**LOCAL, "x-forwarded-for": "10.0.0.5"}, "through a proxy"),
        ("127.0.0.1", "127.0.0.1", {**LOCAL, "forwarded": "for=10.0.0.5"}, "through a proxy"),
        ("127.0.0.1", "127.0.0.1", {**LOCAL, "origin": "https://attacker.example"}, "a page of this machine"),
        ("127.0.0.1", "127.0.0.1", {**LOCAL, "origin": "file://"}, "a page of this machine"),
    ],
)
def test_only_requests_of_this_machine_may_approve_a_local_login(bound, client, headers, refused):
    reason = login.local_refusal(bound, client, headers)
    assert (reason is None) if refused is None else (refused in reason)


def test_the_approval_code_is_bound_to_the_key_and_the_secret():
    code = login.approval_code(SECRET, "w-k")
    assert login.approval_valid(SECRET, "w-k", code)
    assert not login.approval_valid(SECRET, "w-other", code)
    assert not login.approval_valid("another secret", "w-k", code)


# -- two workers' login services ---------------------------------------------------------------


class StaticProvider(IdentityProvider):
    """A provider that accepts one credential (a stand-in for an identity provider's token)."""

    name = "static"

    async def verify(self, credential: str) -> LoginUser | None:
        return LoginUser("carol", email="carol@example.org") if credential == "idp-token-of-carol" else None


def two_workers(provider: IdentityProvider | None = None) -> dict[str, LoginService]:
    """Login services of workers w1 and w2 whose forwarding calls each other's ``serve``, as
    ``Peers.login`` and ``GatewayWorker.login`` do over Ray."""
    issuer = TokenIssuer(SECRET)
    services: dict[str, LoginService] = {}

    async def forward(owner: str, op: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        if owner not in services:
            return {"error": "Invalid key, key does not exist or expired"}
        try:
            return {"value": await services[owner].serve(op, kwargs)}
        except LoginError as exc:
            return {"error": str(exc)}

    for worker_id in ("w1", "w2"):
        services[worker_id] = LoginService(
            worker_id,
            manager_id="manager-test",
            issuer=issuer,
            base_url="http://127.0.0.1:9527",
            provider=provider or LocalProvider(Config(jwt_secret=SECRET, login_local_user="alice")),
            forward=forward,
        )
    return services


def client(workspace: str = "ws-user-bob", user_id: str = "bob") -> Identity:
    return Identity(
        workspace=workspace, client_id="c", user_id=user_id, is_anonymous=False, workspaces={workspace: "a"}
    )


def token_for(identity: Identity, lifetime: float = 600) -> str:
    return TokenIssuer(SECRET).issue(identity, kind=ACCESS, lifetime=lifetime)


def verified(token: str) -> Identity:
    identity, _ = authenticate(AuthRequest(client_id="checker", token=token), TokenIssuer(SECRET))
    return identity


async def test_a_login_started_on_one_worker_is_reported_on_another_and_checked_with_the_same_token():
    services = two_workers()
    anonymous = client("ws-user-anon", "anon")
    started = await services["w1"].start(anonymous)
    token = token_for(client())

    waiting = asyncio.ensure_future(services["w1"].check(anonymous, started["key"], timeout=5))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await services["w2"].call(anonymous, "report", [], {"key": started["key"], "token": token})

    assert await asyncio.wait_for(waiting, 2) == token  # a token of ours comes back as it was reported
    with pytest.raises(LoginError, match="Invalid key"):  # the session ended with the check
        await services["w2"].check(anonymous, started["key"], timeout=0)
    assert not services["w1"]._reported


async def test_check_without_waiting_says_none_until_the_report_and_the_profile_on_request():
    services = two_workers()
    anonymous = client("ws-user-anon", "anon")
    key = (await services["w2"].start(anonymous))["key"]
    assert await services["w1"].check(anonymous, key, timeout=0) is None
    await services["w1"].report(anonymous, key, token_for(client()), nickname="bobby")

    profile = await services["w1"].check(anonymous, key, timeout=0, profile=True)
    assert set(profile) == set(login.PROFILE_FIELDS)
    assert (profile["user_id"], profile["nickname"], profile["workspace"]) == ("bob", "bobby", None)


async def test_a_check_that_waits_too_long_fails_in_hyphas_words():
    services = two_workers()
    anonymous = client("ws-user-anon", "anon")
    key = (await services["w1"].start(anonymous))["key"]
    with pytest.raises(LoginError, match="Login timeout, waited for 0.05 seconds"):
        await services["w2"].check(anonymous, key, timeout=0.05)
    assert not services["w1"]._reported  # nothing left behind for a check that gave up


async def test_a_report_of_what_is_no_token_is_refused_and_the_session_stays_open():
    services = two_workers()
    anonymous = client("ws-user-anon", "anon")
    key = (await services["w1"].start(anonymous))["key"]
    with pytest.raises(LoginError, match="not accepted"):
        await services["w1"].report(anonymous, key, "not-a-token")
    expired = TokenIssuer(SECRET).issue(client(), kind=ACCESS, lifetime=-10)
    with pytest.raises(LoginError, match="expired"):
        await services["w1"].report(anonymous, key, expired)
    assert await services["w1"].check(anonymous, key, timeout=0) is None


async def test_reports_for_unknown_or_foreign_keys_are_refused():
    services = two_workers()
    anonymous = client("ws-user-anon", "anon")
    for key in ("w1-nothing", "w9-gone", "garbage", 12):
        with pytest.raises(LoginError, match="Invalid key"):
            await services["w2"].report(anonymous, key, token_for(client()))


async def test_a_login_that_asks_for_a_workspace_gets_a_token_scoped_to_it():
    services = two_workers()
    anonymous = client("ws-user-anon", "anon")
    bob = client()
    bob.workspaces["shared"] = "rw"
    key = (await services["w1"].start(anonymous, workspace="shared", expires_in=120))["key"]
    await services["w2"].report(anonymous, key, token_for(bob))
    scoped = verified(await services["w1"].check(anonymous, key, timeout=0))
    assert (scoped.user_id, scoped.workspace, scoped.workspaces) == ("bob", "shared", {"shared": "rw"})
    assert scoped.expires_at is not None

    key = (await services["w1"].start(anonymous, workspace="elsewhere"))["key"]
    with pytest.raises(LoginError, match="Invalid permission for the workspace elsewhere"):
        await services["w2"].report(anonymous, key, token_for(bob))


async def test_a_scoped_token_keeps_the_client_binding_and_never_outlives_the_reported_one():
    services = two_workers()
    anonymous = client("ws-user-anon", "anon")
    bob = client()
    bound = TokenIssuer(SECRET).issue(bob, kind=ACCESS, lifetime=60, client_id="only-this")
    key = (await services["w1"].start(anonymous, workspace="ws-user-bob", expires_in=10**6))["key"]
    await services["w1"].report(anonymous, key, bound)
    scoped = await services["w1"].check(anonymous, key, timeout=0)
    with pytest.raises(HandshakeError, match="bound to another client id"):
        authenticate(AuthRequest(client_id="another", token=scoped), TokenIssuer(SECRET))
    identity, _ = authenticate(AuthRequest(client_id="only-this", token=scoped), TokenIssuer(SECRET))
    assert identity.expires_at is not None and identity.expires_at <= time.time() + 61


async def test_a_credential_the_provider_accepts_becomes_a_token_of_the_router():
    services = two_workers(StaticProvider(Config()))
    anonymous = client("ws-user-anon", "anon")
    key = (await services["w1"].start(anonymous))["key"]
    await services["w2"].report(anonymous, key, "idp-token-of-carol", email="forged@example.org")
    profile = await services["w1"].check(anonymous, key, timeout=0, profile=True)
    carol = verified(profile["token"])
    assert (carol.user_id, carol.workspace, carol.workspaces) == ("carol", "ws-user-carol", {"ws-user-carol": "a"})
    assert profile["email"] == "carol@example.org"  # the provider's word, not the report's


async def test_the_service_answers_unknown_functions_and_bad_arguments_with_errors():
    service = two_workers()["w1"]
    with pytest.raises(LoginError, match="Method not found: hypha-login.logout"):
        await service.call(client(), "logout", [], {})
    with pytest.raises(LoginError, match="bad arguments for check"):
        await service.call(client(), "check", [], {})
    with pytest.raises(LoginError, match="timeout must be a number"):
        await service.call(client(), "check", ["w1-x"], {"timeout": "soon"})


def test_the_service_is_found_by_hyphas_ids_and_listed_in_public_only():
    service = two_workers()["w1"]
    for service_id in ("public/hypha-login", "public/*:hypha-login", "public/manager-test:hypha-login@app"):
        assert service.names(service_id, "ws-user-bob")
    assert service.names("hypha-login", "public")
    for service_id in ("hypha-login", "public/other:hypha-login", "ws/hypha-login", None):
        assert not service.names(service_id, "ws-user-bob")
    bob = client()
    assert service.listed("public", bob) and service.listed({"workspace": "public", "type": "functions"}, bob)
    assert not service.listed(None, bob) and not service.listed({"workspace": "public", "type": "asgi"}, bob)

    described = service.service_dict("*/manager-test")
    assert described["id"] == "public/manager-test:hypha-login"
    assert described["config"]["visibility"] == "public"
    for name in ("start", "check", "report"):
        assert described[name]["_rtarget"] == "*/manager-test"
        assert described[name]["_rmethod"] == f"services.hypha-login.{name}"
        assert described[name]["_rschema"]["name"] == name


# -- the local provider's page -----------------------------------------------------------------


class FakeReply:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = ""

    async def send(self, status: int, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        self.status, self.headers, self.body = status, dict(headers), body.decode()


def page_request(
    method: str, query: str = "", body: str = "", client_host: str = "127.0.0.1", **headers: str
) -> HttpRequest:
    all_headers = {"host": "127.0.0.1:9527", **{k.replace("_", "-"): v for k, v in headers.items()}}
    if body:
        all_headers["content-type"] = "application/x-www-form-urlencoded"
    return HttpRequest(
        method=method,
        path="/public/apps/hypha-login/",
        query=query,
        headers=all_headers,
        raw_headers=[],
        body=body.encode(),
        client=(client_host, 50000),
    )


async def open_page(service: LoginService, key: str, **options: Any) -> FakeReply:
    reply = FakeReply()
    await service.handle_http(page_request("GET", f"key={key}", **options), reply, "/")  # type: ignore[arg-type]
    return reply


async def approve(service: LoginService, key: str, code: str, **options: Any) -> FakeReply:
    reply = FakeReply()
    request = page_request("POST", body=f"key={key}&code={code}", **options)
    await service.handle_http(request, reply, "/approve")  # type: ignore[arg-type]
    return reply


async def test_the_local_page_approves_a_login_as_the_local_user():
    services = two_workers()
    anonymous = client("ws-user-anon", "anon")
    key = (await services["w1"].start(anonymous))["key"]

    page = await open_page(services["w2"], key)
    assert page.status == 200 and "alice" in page.body
    assert page.headers["X-Frame-Options"] == "DENY" and "Access-Control-Allow-Origin" not in page.headers
    code = re.search(r"name='code' value='([0-9a-f]+)'", page.body).group(1)

    assert (await approve(services["w2"], key, "0" * 64)).status == 403
    assert await services["w1"].check(anonymous, key, timeout=0) is None
    done = await approve(services["w2"], key, code, origin="http://127.0.0.1:9527")
    assert done.status == 200 and "Logged in as <b>alice</b>" in done.body

    alice = verified(await services["w1"].check(anonymous, key, timeout=0))
    assert (alice.user_id, alice.workspace, alice.is_anonymous) == ("alice", "ws-user-alice", False)


async def test_the_local_page_refuses_other_machines_expired_logins_and_foreign_pages():
    services = two_workers()
    anonymous = client("ws-user-anon", "anon")
    key = (await services["w1"].start(anonymous))["key"]
    code = login.approval_code(SECRET, key)

    assert (await open_page(services["w1"], key, client_host="192.168.1.7")).status == 403
    assert (await open_page(services["w1"], key, host="rebound.example:9527")).status == 403
    assert (await open_page(services["w1"], "w1-unknown")).status == 404
    assert (await approve(services["w1"], key, code, origin="https://attacker.example")).status == 403
    assert (await approve(services["w1"], key, code, client_host="10.1.1.1")).status == 403
    assert await services["w1"].check(anonymous, key, timeout=0) is None  # none of those logged in

    await services["w1"].check(anonymous, key, timeout=0)
    services["w1"].sessions.expire(float("inf"))
    assert (await approve(services["w2"], key, code)).status == 404  # the login ended before the approval


async def test_the_local_provider_serves_nothing_on_a_router_bound_beyond_loopback():
    provider = LocalProvider(Config(host="0.0.0.0", jwt_secret=SECRET, login_local_user="alice"))
    services = two_workers(provider)
    key = (await services["w1"].start(client()))["key"]
    reply = await open_page(services["w1"], key)
    assert reply.status == 403 and "bound to loopback" in reply.body


# -- choosing a provider -----------------------------------------------------------------------


def test_providers_are_chosen_by_name_or_import_path():
    config = Config(login_local_user="alice")
    assert load_provider("none", config) is None and load_provider("", config) is None
    local = load_provider("local", config)
    assert isinstance(local, LocalProvider) and local.user.user_id == "alice"
    custom = load_provider("tests.unit.test_login:StaticProvider", config)
    # (pytest imported this file under another module name: compare by name)
    assert type(custom).__name__ == "StaticProvider" and custom.config is config
    assert login_service(Config(login_provider="none"), "w1", TokenIssuer(SECRET), forward=None) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("ldap", "use local, none or 'package.module:Attribute'"),
        ("no_such_module_here:Provider", "cannot import"),
        ("tests.unit.test_login:Missing", "has no Missing"),
        ("tests.unit.test_login:SECRET", "not an identity provider"),
    ],
)
def test_a_provider_name_that_names_nothing_usable_is_a_clear_error(spec: str, problem: str):
    with pytest.raises(ValueError, match=re.escape(problem)):
        load_provider(spec, Config())


def test_the_local_user_must_be_a_valid_name():
    for name in ("a/b", "a b", "a:b", "*"):
        with pytest.raises(ValueError, match="login_local_user"):
            LocalProvider(Config(login_local_user=name))
