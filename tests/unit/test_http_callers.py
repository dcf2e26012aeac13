"""The callers of HTTP requests (rhizomorph/gateway/http_callers.py) on a router with a fake registry:
one per credential, shared while in use, closed when idle, over the bound, or past their token."""

from __future__ import annotations

import asyncio

import pytest

from rhizomorph.config import Config
from rhizomorph.gateway.http_callers import Callers
from rhizomorph.gateway.router import Router
from rhizomorph.protocol.handshake import ACCESS, HandshakeError, Identity
from tests.unit.test_router import FakeRegistry


def _router() -> tuple[Router, FakeRegistry]:
    registry = FakeRegistry()
    return Router(Config(), "w0", registry), registry  # type: ignore[arg-type]


def _token(router: Router, workspace: str, user: str = "alice", lifetime: float = 3600) -> str:
    identity = Identity(
        workspace=workspace, client_id="x", user_id=user, is_anonymous=False, workspaces={workspace: "rw"}
    )
    return router.issuer.issue(identity, kind=ACCESS, lifetime=lifetime)


async def test_one_caller_per_credential_and_one_for_anonymous_requests() -> None:
    router, _ = _router()
    callers = Callers(router, method_timeout=5)
    token_a, token_b = _token(router, "ws-a"), _token(router, "ws-b", "bob")
    try:
        async with callers.use(token_a, "ws-a") as first, callers.use(token_a, "ws-a") as again:
            assert first is again and first.address.startswith("ws-a/http-")
            assert first.identity.user_id == "alice" and router.holds(first.address)
        async with callers.use(token_b, "ws-a") as other:  # bob's token does not grant ws-a
            assert other is not first and other.identity.workspace == "ws-b"
        async with callers.use(None, "ws-a") as anonymous, callers.use(None, "ws-b") as anonymous_too:
            assert anonymous is anonymous_too and anonymous.identity.is_anonymous
            assert anonymous.identity.workspace.startswith("ws-user-anonymouz-")
        # The caller speaks to the manager through the router like any client.
        assert (await first.manager.echo("hi")) == "hi"
        assert callers.opened == 3
    finally:
        await callers.close()
    assert router.connection_count() == 0


async def test_concurrent_first_requests_open_one_caller() -> None:
    router, _ = _router()
    callers = Callers(router, method_timeout=5)
    token = _token(router, "ws-a")

    async def use() -> str:
        async with callers.use(token, "ws-a") as caller:
            return caller.address

    try:
        addresses = await asyncio.gather(*(use() for _ in range(5)))
        assert len(set(addresses)) == 1 and callers.opened == 1
    finally:
        await callers.close()


async def test_idle_callers_are_closed_and_released() -> None:
    router, registry = _router()
    callers = Callers(router, method_timeout=5, idle_ttl=0.2)
    async with callers.use(None, None) as caller:
        address = caller.address
        await asyncio.sleep(0.5)  # in use: not idle, however long
        assert router.holds(address)
    for _ in range(100):
        if not router.holds(address):
            break
        await asyncio.sleep(0.05)
    assert not router.holds(address) and address in registry.released and len(callers) == 0
    await callers.close()


async def test_past_the_bound_the_least_recently_used_idle_caller_goes() -> None:
    router, _ = _router()
    callers = Callers(router, method_timeout=5, max_callers=2)
    tokens = [_token(router, f"ws-{i}", f"user-{i}") for i in range(3)]
    try:
        async with callers.use(tokens[0], None) as held:
            async with callers.use(tokens[1], None) as idle:
                pass
            async with callers.use(tokens[2], None):
                pass
            await asyncio.sleep(0.1)
            assert not held.closed  # in use: kept, although the oldest
            assert idle.closed and not router.holds(idle.address)
        assert len(callers) == 2
    finally:
        await callers.close()


async def test_a_caller_does_not_outlive_its_token() -> None:
    router, _ = _router()
    callers = Callers(router, method_timeout=5)
    token = _token(router, "ws-a", lifetime=1.5)
    try:
        async with callers.use(token, "ws-a") as caller:
            pass
        await asyncio.sleep(2.1)
        with pytest.raises(HandshakeError, match="expired"):
            async with callers.use(token, "ws-a"):
                pass
        assert caller.closed
        with pytest.raises(HandshakeError, match="invalid access token"):
            async with callers.use("garbage", "ws-a"):
                pass
    finally:
        await callers.close()
