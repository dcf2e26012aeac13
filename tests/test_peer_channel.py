"""Workers of one node talk over a Unix socket (found through Ray); Ray calls remain the fallback."""

from __future__ import annotations

import asyncio

from rhizomorph import Config, Deployment
from rhizomorph.actors import channel
from tests.helpers import on_two_workers


async def test_channel_delivers_batches_in_order_over_a_unix_socket():
    received = []
    server = channel.ChannelServer(received.extend)
    path = await server.start()
    sender = channel.Channel(path)
    try:
        for i in range(50):
            await sender.send([(f"ws/c{i}", None, bytes([i]) * 10), ("ws/*", "evt", b"")])
        for _ in range(100):
            if len(received) == 100:
                break
            await asyncio.sleep(0.01)
        assert [item[0] for item in received[::2]] == [f"ws/c{i}" for i in range(50)]
        assert received[1] == ("ws/*", "evt", b"")
    finally:
        sender.close()
        await server.close()


async def test_large_frames_cross_the_socket_byte_for_byte():
    """A batch goes out as its prefix and body (``writelines``); the reader decodes batches whole
    in a read straight from it and buffers the rest: every frame arrives as it was sent."""
    received = []
    server = channel.ChannelServer(received.extend)
    path = await server.start()
    sender = channel.Channel(path)
    big = bytes(range(256)) * 2400  # ~600 KB: a batch over several reads
    sent = [("ws/a", None, big), ("ws/b", None, b"x" * 100), ("ws/c", None, big[::-1])]
    try:
        await sender.send(sent[:1])
        assert sender.try_send(sent[1:])
        for _ in range(200):
            if len(received) == len(sent):
                break
            await asyncio.sleep(0.01)
        assert received == sent
    finally:
        sender.close()
        await server.close()


def test_same_node_workers_use_the_socket(router2):
    kinds = [kind for stats in router2.stats() for kind in stats["peer_channels"].values()]
    assert kinds == ["socket", "socket"]


async def test_ray_channel_still_routes_across_workers(ray_runtime):
    from hypha_rpc import connect_to_server

    deployment = Deployment(Config(port=0, workers=2, peer_channel="ray")).start()
    clients = []
    try:
        assert [k for s in deployment.stats() for k in s["peer_channels"].values()] == ["ray", "ray"]

        async def connect_one():
            server = await connect_to_server({"server_url": deployment.url})
            clients.append(server)
            return server

        a, b = await on_two_workers(connect_one)
        await a.register_service({"id": "echo", "config": {"visibility": "public"}, "echo": lambda x: x})
        echo = await b.get_service(f"{a.config.workspace}/{a.config.client_id}:echo")
        assert await asyncio.gather(*(echo.echo(i) for i in range(20))) == list(range(20))
    finally:
        for server in clients:
            await server.disconnect()
        deployment.stop()
