// Reconnection: the router closes a v4 client's socket (as a restarted worker would); hypha-rpc
// reconnects through rhizomorph-client's socket class, which negotiates v4 again.
import assert from "node:assert/strict";
import { test } from "node:test";
import { wireProtocol, wireStats } from "../src/index.js";
import { address, assertSameBytes, eventually, live, openV4, payload, peers, registerPeer } from "./helpers.js";

async function closeFromRouter(server, control) {
  const socket = server.rpc._connection._websocket;
  assert.ok(await control.close_client(address(server)), "the router found the client");
  await eventually(() => server.rpc._connection._websocket !== socket && wireProtocol(server) === 4, {
    timeout: 30000,
    what: "a new v4 socket",
  });
}

test("a provider whose socket the router closed reconnects on v4 and serves again", live, async () => {
  const provider = await openV4();
  const consumer = await openV4();
  const control = await consumer.getService(peers.control);
  const mine = await registerPeer(provider, "survivor");
  const echo = await consumer.getService(mine.id);
  assert.equal(await echo.echo(1), 1);
  const framesBefore = wireStats(provider).framesIn;
  await closeFromRouter(provider, control);
  await eventually(async () => (await (await consumer.getService(mine.id)).echo("again")) === "again", {
    timeout: 30000,
    what: "the service registered again",
  });
  const again = await consumer.getService(mine.id);
  assert.deepEqual(await Promise.all([...Array(50).keys()].map((i) => again.echo(i))), [...Array(50).keys()]);
  assertSameBytes(await again.echo(payload()), payload()); // a stream each way on the new socket
  const stats = wireStats(provider);
  assert.ok(stats.framesIn > framesBefore && stats.streamsIn >= 1 && stats.streamsOut >= 1, JSON.stringify(stats));
  assert.equal(wireStats(provider).batching.depth, 0);
});

test("a consumer whose socket the router closed calls a Python v4 peer again, 2 MB included", live, async () => {
  const consumer = await openV4();
  const control = await consumer.getService(peers.control);
  const py = await consumer.getService(peers.py_v4);
  assert.equal(await py.echo("before"), "before");
  await closeFromRouter(consumer, control);
  await eventually(async () => (await py.echo("after")) === "after", { timeout: 30000, what: "calls work again" });
  const big = payload();
  assertSameBytes(await py.echo(big), big);
  const items = [];
  for await (const item of await py.count(100)) items.push(item.i);
  assert.deepEqual(items, [...Array(100).keys()]);
});
