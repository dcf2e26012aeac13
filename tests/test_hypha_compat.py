"""The released hypha-rpc Python client against a real router on a real Ray runtime."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter

import pytest

from tests.helpers import eventually, on_two_workers


def echo_service(service_id: str = "echo", visibility: str = "public") -> dict:
    return {"id": service_id, "config": {"visibility": visibility}, "echo": lambda x: x}


async def test_cross_workspace_echo_small_medium_and_2mb(connect):
    provider = await connect()
    consumer = await connect()
    assert provider.config.workspace != consumer.config.workspace
    assert provider.config.workspace.startswith("ws-user-anonymouz-")
    info = await provider.register_service(echo_service())
    full_id = f"{provider.config.workspace}/{provider.config.client_id}:echo"
    assert info["id"] == full_id

    echo = await consumer.get_service(full_id)
    for size in (10, 20_000, 2_000_000):
        payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
        assert await echo.echo(payload) == payload


async def test_same_workspace_bare_name_list_and_unregister(connect):
    provider = await connect()
    token = await provider.generate_token()
    consumer = await connect(workspace=provider.config.workspace, token=token)
    assert consumer.config.workspace == provider.config.workspace

    await provider.register_service(echo_service("twin", visibility="protected"))
    twin = await consumer.get_service("twin")
    assert await twin.echo("hello") == "hello"

    listed = await consumer.list_services()
    ids = {s["id"] for s in listed}
    assert f"{provider.config.workspace}/{provider.config.client_id}:twin" in ids

    await provider.unregister_service("twin")
    with pytest.raises(Exception, match="(?i)not found"):
        await consumer.get_service("twin")


async def test_protected_service_is_refused_to_another_workspace(connect):
    provider = await connect()
    stranger = await connect()
    workspace = provider.config.workspace
    await provider.register_service(echo_service("private", visibility="protected"))
    # Hypha's words (get_service_info in hypha/core/workspace.py): permission denied, not "not found".
    for service_id in (f"{workspace}/{provider.config.client_id}:private", f"{workspace}/private"):
        with pytest.raises(Exception, match=f"Permission denied for non-public service in workspace {workspace}"):
            await stranger.get_service(service_id)
        with pytest.raises(Exception, match="Permission denied for non-public service"):
            await stranger.get_service_info(service_id)
    assert all(not s["id"].endswith(":private") for s in await stranger.list_services(workspace))


async def test_service_not_found_in_hyphas_words(connect):
    server = await connect()
    workspace = server.config.workspace
    with pytest.raises(Exception, match=re.escape(f"Service not found: {workspace}/*:nope@*")):
        await server.get_service("nope")
    with pytest.raises(Exception, match=re.escape(f"Service not found: {workspace}/someone:nope@an-app")):
        await server.get_service(f"{workspace}/someone:nope@an-app")


async def test_remote_error_callback_and_async_generator(connect):
    provider = await connect()
    consumer = await connect()

    def fail(message):
        raise ValueError(f"boom {message}")

    async def call_me_back(callback, value):
        return await callback(value * 2)

    async def count(n):
        for i in range(n):
            yield i

    await provider.register_service(
        {
            "id": "tools",
            "config": {"visibility": "public"},
            "fail": fail,
            "call_me_back": call_me_back,
            "count": count,
        }
    )
    tools = await consumer.get_service(f"{provider.config.workspace}/{provider.config.client_id}:tools")

    with pytest.raises(Exception, match="boom 3"):
        await tools.fail(3)

    seen = []

    def on_value(value):
        seen.append(value)
        return value + 1

    assert await tools.call_me_back(on_value, 21) == 43
    assert seen == [42]

    items = [item async for item in await tools.count(25)]
    assert items == list(range(25))


async def test_call_after_provider_disconnects_is_rejected_fast(connect):
    provider = await connect()
    consumer = await connect()
    await provider.register_service(echo_service())
    echo = await consumer.get_service(f"{provider.config.workspace}/{provider.config.client_id}:echo")
    assert await echo.echo(1) == 1
    await provider.disconnect()

    started = time.monotonic()
    # Either the router's synthetic reject ("Target peer … is not connected"), or, when the
    # peer_not_found for the departed provider arrived first, the client's own refusal.
    with pytest.raises(Exception, match="(?i)not connected|client disconnected"):
        await echo.echo(2)
    assert time.monotonic() - started < 1.0


async def test_server_closed_socket_reconnects_with_same_identity(connect, router):
    provider = await connect()
    consumer = await connect()
    workspace, client_id = provider.config.workspace, provider.config.client_id
    await provider.register_service(echo_service())
    full_id = f"{workspace}/{client_id}:echo"
    worker = router.workers[provider.config.rhizomorph_worker]
    address = f"{workspace}/{client_id}"

    closed = await worker.close_client.remote(address)
    assert closed

    async def reregistered() -> bool:
        try:
            echo = await consumer.get_service(full_id)
            return await echo.echo("again") == "again"
        except Exception:
            return False

    await eventually(reregistered, timeout=20, interval=0.3)
    assert provider.config.workspace == workspace
    assert provider.config.client_id == client_id
    assert await provider.echo("still here") == "still here"


async def test_two_workers_route_across_the_worker_hop(router2, connect):
    a, b = await on_two_workers(lambda: connect(router2.url))
    wa, wb = a.config.rhizomorph_worker, b.config.rhizomorph_worker
    await a.register_service(echo_service("on-a"))
    await b.register_service(echo_service("on-b"))
    from_b = await b.get_service(f"{a.config.workspace}/{a.config.client_id}:on-a")
    from_a = await a.get_service(f"{b.config.workspace}/{b.config.client_id}:on-b")
    assert await from_b.echo(b"x" * 300_000) == b"x" * 300_000
    assert await asyncio.gather(*(from_a.echo(i) for i in range(50))) == list(range(50))

    stats = {s["worker_id"]: s for s in router2.stats()}
    assert stats[wa]["peer_calls"][wb] > 0 and stats[wb]["peer_calls"][wa] > 0


async def test_broadcast_reaches_subscribers_of_the_workspace_only(connect):
    sender = await connect()
    token = await sender.generate_token()
    listener = await connect(workspace=sender.config.workspace, token=token)
    unsubscribed = await connect(workspace=sender.config.workspace, token=await sender.generate_token())
    outsider = await connect()

    received: dict[str, list] = {"listener": [], "unsubscribed": [], "outsider": []}
    listener.on("weather", lambda msg: received["listener"].append(msg["data"]))
    unsubscribed.on("weather", lambda msg: received["unsubscribed"].append(msg["data"]))
    outsider.on("weather", lambda msg: received["outsider"].append(msg["data"]))
    await listener.subscribe("weather")
    await outsider.subscribe("weather")

    result = sender.emit({"type": "weather", "to": "*", "data": {"sky": "blue"}})
    if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
        await result
    await eventually(lambda: received["listener"] == [{"sky": "blue"}], timeout=5)
    await asyncio.sleep(0.3)  # give a wrong delivery the time to show up
    assert received["outsider"] == []
    assert received["unsubscribed"] == []


async def test_disconnect_broadcasts_client_disconnected_and_removes_services(connect):
    provider = await connect()
    watcher = await connect(workspace=provider.config.workspace, token=await provider.generate_token())
    await provider.register_service(echo_service("leaving", visibility="protected"))
    gone = []
    watcher.on("client_disconnected", lambda msg: gone.append(msg["data"]))
    await watcher.subscribe("client_disconnected")
    client_id = provider.config.client_id
    await provider.disconnect()
    await eventually(lambda: any(d["id"] == client_id for d in gone), timeout=5)
    assert gone[-1]["workspace"] == provider.config.workspace
    assert all(not s["id"].endswith(":leaving") for s in await watcher.list_services())


async def test_manager_echo_ping_and_bad_workspace_request(connect, router):
    from hypha_rpc import connect_to_server

    server = await connect()
    assert await server.echo({"a": [1, 2]}) == {"a": [1, 2]}
    assert await server.ping(server.config.client_id) == "pong"
    # Hypha's ping_client answers a failure instead of raising.
    gone = f"{server.config.workspace}/nobody"
    assert await server.ping(gone) == f"Failed to ping client {gone}: Target peer {gone} is not connected"
    other = await connect()
    elsewhere = f"{other.config.workspace}/{other.config.client_id}"
    assert await server.ping(elsewhere) == (
        f"Failed to ping client {elsewhere}: Permission denied for workspace {other.config.workspace}"
    )
    # Hypha's words (hypha/core/store.py, load_or_create_workspace); hypha-rpc's test_connect_to_server.
    with pytest.raises(Exception, match=f"Workspace {server.config.workspace} does not exist or is not accessible"):
        await connect_to_server({"server_url": router.url, "workspace": server.config.workspace})


async def test_call_in_flight_to_a_client_that_leaves_fails_at_once_in_any_workspace(connect):
    provider = await connect()
    caller = await connect()  # another workspace: it gets no client_disconnected event
    started = asyncio.Event()

    async def slow():
        started.set()
        await asyncio.sleep(30)
        return "too late"

    await provider.register_service({"id": "slow", "config": {"visibility": "public"}, "run": slow})
    svc = await caller.get_service(f"{provider.config.workspace}/{provider.config.client_id}:slow")
    call = asyncio.ensure_future(svc.run())
    await asyncio.wait_for(started.wait(), 10)
    await provider.disconnect()
    began = time.monotonic()
    with pytest.raises(Exception, match="(?i)disconnected|not connected"):
        await asyncio.wait_for(call, 10)
    assert time.monotonic() - began < 3.0  # not the 20 s method timeout


# -- the manager as Hypha's: schemas, webrtc, large calls, case conversion, modes, wording -------


async def test_every_manager_function_carries_a_schema_named_as_its_key(connect):
    """hypha-rpc's own test_schema: each callable of the workspace-manager proxy has a
    ``__schema__`` whose name is its key (the manager's own and those the client adds)."""
    server = await connect()
    callables = [k for k in server if callable(server[k])]
    assert {"get_service", "list_services", "echo", "generate_token", "get_router_stats"} <= set(callables)
    for key in callables:
        schema = getattr(server[key], "__schema__", None)
        assert schema is not None, key
        assert schema["name"] == key
    get_service = server.get_service.__schema__
    assert get_service["parameters"]["required"] == ["service_id"]
    assert "case_conversion" in get_service["parameters"]["properties"]["config"]["properties"]


WEBRTC_CONFIG = {"ice_servers": [{"urls": ["stun:127.0.0.1:9"]}]}  # loopback only, no public STUN server


@pytest.mark.parametrize("webrtc", [True, "auto"])
async def test_webrtc_clients_connect_and_get_services(connect, webrtc):
    provider = await connect(webrtc=webrtc, webrtc_config=WEBRTC_CONFIG)
    consumer = await connect(
        webrtc=webrtc,
        webrtc_config=WEBRTC_CONFIG,
        workspace=provider.config.workspace,
        token=await provider.generate_token(),
    )
    assert provider.get_service.__schema__["name"] == "get_service"
    await provider.register_service(echo_service("rtc-echo"))
    svc = await consumer.get_service(f"{provider.config.client_id}:rtc-echo")
    # The offer and answer went through the router; the call itself took the peer connection.
    assert getattr(svc, "_webrtc", False) is True
    assert await svc.echo("over the peer link") == "over the peer link"


def manager_cache(router) -> list[dict]:
    return [s["message_cache"] for s in router.stats()]


@pytest.mark.parametrize("size", [300_000, 2_000_000])
async def test_manager_calls_larger_than_a_chunk_go_through_its_built_in_service(connect, router, size):
    server = await connect()
    payload = bytes(range(256)) * (size // 256)
    assert await server.echo(payload) == payload  # chunked to the manager, and (2 MB) back
    assert all(c == {"callers": 0, "bytes": 0} for c in manager_cache(router))


async def test_a_v4_client_sends_large_manager_calls_the_same_way(router):
    from rhizomorph.client import connect_to_server as connect_v4
    from rhizomorph.client import wire_protocol

    server = await connect_v4({"server_url": router.url, "method_timeout": 20})
    try:
        assert wire_protocol(server) == 4  # v4 streams go to v4 peers only: the manager gets message_cache
        payload = b"v4" * 400_000
        assert await server.echo(payload) == payload
    finally:
        await server.disconnect()


async def test_a_service_with_large_docs_registers_and_is_fetched_whole(connect):
    provider = await connect()
    consumer = await connect()
    docs = "A long manual. " * 40_000  # 600 KB: the registration, the provider's answer and the reply are chunked
    await provider.register_service({**echo_service("manual"), "docs": docs})
    info = await consumer.get_service_info(f"{provider.config.workspace}/manual")
    assert info["docs"] == docs
    svc = await consumer.get_service(f"{provider.config.workspace}/manual")
    assert svc.docs == docs
    assert await svc.echo("read it") == "read it"


async def test_numpy_array_through_the_manager(connect):
    np = pytest.importorskip("numpy")
    server = await connect()
    image = np.random.rand(512, 512)  # 2 MB: hypha-rpc's test_numpy_transmission
    echoed = await server.echo(image)
    assert isinstance(echoed, np.ndarray) and echoed.shape == (512, 512) and (echoed == image).all()


async def test_chunks_a_caller_leaves_behind_go_when_it_disconnects(connect, router):
    server = await connect()
    worker = server.config.rhizomorph_worker
    builtin = await server.rpc.get_remote_service(f"*/{server.config.manager_id}:built-in")
    assert builtin.config.api_version == 3
    await builtin.message_cache.create("left-behind", False)
    await builtin.message_cache.set("left-behind", 0, b"x" * 100_000, False)
    stats = {s["worker_id"]: s["message_cache"] for s in router.stats()}
    assert stats[worker]["callers"] == 1 and stats[worker]["bytes"] >= 100_000
    await server.disconnect()

    def freed() -> bool:
        return {s["worker_id"]: s["message_cache"] for s in router.stats()}[worker]["bytes"] == 0

    await eventually(freed, timeout=10)


@pytest.fixture(scope="module")
def small_router(ray_runtime):
    """A router whose manager holds at most 1 MB of chunks per caller (its max_message_size)."""
    from rhizomorph import Config, Deployment

    deployment = Deployment(Config(port=0, workers=1, max_message_size=1_000_000)).start()
    yield deployment
    deployment.stop()


async def test_a_caller_over_the_message_cache_bound_gets_an_error(connect, small_router):
    server = await connect(small_router.url)
    assert await server.echo(b"y" * 600_000) == b"y" * 600_000  # under the bound: fine
    with pytest.raises(Exception, match="message cache limit: a caller may hold at most 1000000 bytes"):
        await server.echo(b"z" * 1_500_000)
    assert await server.echo("still served") == "still served"
    assert manager_cache(small_router) == [{"callers": 0, "bytes": 0}]  # the client removed its partial message


async def test_case_conversion_renames_the_services_keys(connect):
    """hypha-rpc's test_case_conversion."""
    provider = await connect()

    def hello(name, key=12, context=None):
        """Say hello."""
        return "Hello " + name

    info = await provider.register_service(
        {"id": "hello-world", "config": {"visibility": "protected", "run_in_executor": True}, "HelloWorld": hello}
    )
    svc = await provider.get_service(info["id"])
    assert await svc.HelloWorld("world") == "Hello world"
    svc = await provider.get_service(info["id"], case_conversion="camel")
    assert await svc.helloWorld("world") == "Hello world"
    assert svc.config["runInExecutor"] is True and svc.config["workspace"] == provider.config.workspace
    svc = await provider.get_service(info["id"], {"case_conversion": "snake"})
    assert await svc.hello_world("world") == "Hello world"
    svc = await provider.get_service(info["id"], case_conversion="camel+snake")
    assert await svc.helloWorld("a") == await svc.hello_world("a") == "Hello a"
    with pytest.raises(Exception, match="case_conversion must be one of camel, snake"):
        await provider.get_service(info["id"], case_conversion="kebab")


async def test_get_service_modes_that_ask_the_providers(connect):
    owner = await connect()
    workspace, token = owner.config.workspace, await owner.generate_token()
    providers = [await connect(workspace=workspace, token=token, client_id=f"mode-p{i}") for i in range(3)]
    loads = [0.5, 0.1, 0.9]
    for i, provider in enumerate(providers):
        service = {"id": "pool", "who": lambda i=i: i, "get_load": lambda i=i: loads[i], "get_priority": lambda i=i: i}
        if i == 2:
            service["get_health"] = lambda: "ok"
        await provider.register_service(service)

    async def who(mode: str) -> int:
        return await (await owner.get_service("pool", mode=mode)).who()

    assert await who("min_load") == 1
    assert await who("select:min:get_load") == 1
    assert await who("select:max:get_priority") == 2
    assert await who("select:first_success:get_health") == 2  # the others lack it: skipped
    assert {await who("select:min:no_such_function") for _ in range(30)} == {0, 1, 2}  # none answers: random
    assert {await who("native:random") for _ in range(30)} == {0, 1, 2}  # one worker: all are native
    assert (await owner.get_service_info("pool", {"mode": "min_load"}))["id"].endswith("mode-p1:pool")
    with pytest.raises(Exception, match="Multiple services found for pool"):
        await owner.get_service("pool")
    with pytest.raises(Exception, match="Invalid mode: fastest"):
        await owner.get_service("pool", mode="fastest")
    with pytest.raises(Exception, match="Invalid select mode format"):
        await owner.get_service("pool", mode="select:min")


@pytest.mark.slow
@pytest.mark.timeout(600)  # 1,000 connections on a shared 2-core machine: ~45 s to connect alone
async def test_one_name_eight_providers_spreads_a_thousand_callers(router2, connect):
    """8 providers of one service name on two workers, 1,000 callers (each its own connection,
    arriving over ~5 s) each fetch it with get_service and call it once. ``random`` spreads them
    evenly; ``min_load`` asks every provider's get_load (its calls in flight, plus 1,000 for the
    two that say they are busy) and sends nobody to the busy two. How min_load fares against
    providers that are really slow: benchmarks/load_spread.md."""
    owner = await connect(router2.url)
    workspace, token = owner.config.workspace, await owner.generate_token()
    in_flight, probes = [0] * 8, [0] * 8
    for i in range(8):
        provider = await connect(router2.url, workspace=workspace, token=token, client_id=f"spread-p{i}")

        async def work(i=i):
            in_flight[i] += 1
            try:
                await asyncio.sleep(0.02)
                return i
            finally:
                in_flight[i] -= 1

        def get_load(i=i):
            probes[i] += 1
            return in_flight[i] + (1000 if i < 2 else 0)

        await provider.register_service(
            {"id": "spread", "config": {"visibility": "public"}, "work": work, "get_load": get_load}
        )
    window = asyncio.Semaphore(50)

    async def caller():
        async with window:
            return await connect(router2.url, method_timeout=120)

    callers = await asyncio.gather(*(caller() for _ in range(1000)))

    async def one_call(index: int, server, mode: str) -> int:
        await asyncio.sleep(index * 0.005)
        # All 1,009 clients share this process: a probe waits its turn behind everyone's calls.
        svc = await server.get_service(f"{workspace}/spread", mode=mode, select_timeout=30)
        return await svc.work()

    spread = {}
    for mode in ("random", "min_load"):
        started = time.monotonic()
        served = Counter(await asyncio.gather(*(one_call(i, c, mode) for i, c in enumerate(callers))))
        spread[mode] = [served[i] for i in range(8)]
        print(f"{mode}: calls per provider {spread[mode]} in {time.monotonic() - started:.1f} s")
    assert sum(spread["random"]) == sum(spread["min_load"]) == 1000
    assert all(60 <= n <= 200 for n in spread["random"])  # 125 each expected; sd ~10.5
    assert spread["min_load"][:2] == [0, 0]
    assert all(n >= 60 for n in spread["min_load"][2:])  # ~167 each among the six
    assert probes == [1000] * 8  # every min_load caller asked every provider once


async def test_the_manager_id_of_an_earlier_start_still_reaches_the_manager(connect):
    """After a restart (a new server id) hypha-rpc keeps calling the manager id it first got: the
    router answers it, as that id, which is the only sender hypha-rpc takes the answer from."""
    client = await connect()
    earlier = await client.rpc.get_remote_service("*/manager-earlierstart:default")
    assert await earlier.echo("still here") == "still here"
    listed = await earlier.list_services("public")
    assert any(s["id"].endswith(":hypha-login") for s in listed)
