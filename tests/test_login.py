"""hypha-rpc's ``login()`` against a real router: the ``public/hypha-login`` service, its login
page with the local identity provider, reports over HTTP, and the token it gives on connect.
Two gateway workers share the port, so a login started on one is often finished on the other."""

from __future__ import annotations

import getpass
import re
from typing import Any

import httpx
import pytest
from hypha_rpc import connect_to_server, login

from rhizomorph import Config, Deployment


def http_base(deployment: Deployment) -> str:
    return deployment.url.replace("ws://", "http://")


async def approve_in_browser(context: dict[str, Any]) -> None:
    """What a user does with the login URL: open the page, press Approve."""
    async with httpx.AsyncClient(timeout=20) as http:
        page = await http.get(context["login_url"])
        assert page.status_code == 200, page.text
        code = re.search(r"name='code' value='([0-9a-f]+)'", page.text).group(1)
        approve_url = context["login_url"].split("?", 1)[0] + "approve"
        done = await http.post(approve_url, data={"key": context["key"], "code": code})
        assert done.status_code == 200 and "Logged in" in done.text, done.text


@pytest.mark.parametrize("attempt", range(3))
async def test_login_with_the_local_provider_gives_a_token_of_the_local_user(router2, attempt):
    token = await login({"server_url": router2.url, "login_callback": approve_in_browser, "login_timeout": 20})
    user = getpass.getuser()
    server = await connect_to_server({"server_url": router2.url, "token": token})
    try:
        assert server.config.workspace == f"ws-user-{user}"
        assert server.config.user["id"] == user and not server.config.user["is_anonymous"]
    finally:
        await server.disconnect()


async def test_a_token_reported_over_http_is_what_login_returns_and_the_profile_on_request(router2, connect):
    issuer = await connect(router2.url)
    token = await issuer.generate_token()

    async def report(context: dict[str, Any]) -> None:
        async with httpx.AsyncClient(timeout=20) as http:
            answer = await http.get(context["report_url"], params={"key": context["key"], "token": token})
            assert answer.status_code == 200, answer.text

    assert await login({"server_url": router2.url, "login_callback": report, "login_timeout": 20}) == token
    profile = await login({"server_url": router2.url, "login_callback": report, "login_timeout": 20, "profile": True})
    assert profile["token"] == token and profile["user_id"] == issuer.config.user["id"]


async def test_the_service_is_listed_in_public_and_refuses_what_is_no_login(router2, connect):
    client = await connect(router2.url)
    listed = await client.list_services("public")
    assert [s["id"] for s in listed if s["id"].endswith(":hypha-login")] == [
        f"public/{router2.config.manager_id}:hypha-login"
    ]
    service = await client.get_service("public/hypha-login")
    assert service.check.__schema__["name"] == "check"
    started = await service.start()
    assert await service.check(started["key"], timeout=0) is None
    with pytest.raises(Exception, match="not accepted"):
        await service.report(started["key"], "forged")
    with pytest.raises(Exception, match="Login timeout, waited for 0.2 seconds"):
        await service.check(started["key"], timeout=0.2)
    with pytest.raises(Exception, match="Invalid key"):
        await service.check("n0w0-nothing", timeout=0)

    async with httpx.AsyncClient(timeout=20) as http:
        # The page refuses a Host that is not this machine (a foreign name rebound to 127.0.0.1).
        page = await http.get(started["login_url"], headers={"Host": "rebound.example"})
        assert page.status_code == 403
        # Without the page's code an approval does nothing.
        forged = await http.post(
            f"{http_base(router2)}/public/apps/hypha-login/approve", data={"key": started["key"], "code": "0" * 64}
        )
        assert forged.status_code == 403
    assert await service.check(started["key"], timeout=0) is None


async def test_a_router_without_a_login_provider_has_no_login_service(ray_runtime):
    deployment = Deployment(Config(port=0, workers=1, login_provider="none")).start()
    try:
        server = await connect_to_server({"server_url": deployment.url})
        try:
            with pytest.raises(Exception, match="not found"):
                await server.get_service("public/hypha-login")
        finally:
            await server.disconnect()
        async with httpx.AsyncClient(timeout=20) as http:
            assert (await http.get(f"{http_base(deployment)}/public/apps/hypha-login/?key=x")).status_code == 404
    finally:
        deployment.stop()
