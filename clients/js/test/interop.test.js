// rhizomorph-client against a real router: with itself, with the released hypha-rpc JS client,
// with Python peers on v3 (hypha_rpc) and v4 (rhizomorph.client), and with a router whose v4 is off.
import assert from "node:assert/strict";
import { test } from "node:test";
import { connectToServer, wireProtocol, wireStats } from "../src/index.js";
import {
  address,
  assertSameBytes,
  eventually,
  live,
  messagesTo,
  openReleased,
  openV4,
  payload,
  peers,
  registerPeer,
  settled,
  v3RouterUrl,
} from "./helpers.js";

const big = payload();

test("v4 is confirmed, shown in server.config and advertised in the built-in service", live, async () => {
  const server = await openV4();
  const other = await openReleased();
  assert.equal(server.config.wire_protocol, 4);
  assert.equal(wireProtocol(server), 4);
  const builtin = await other.getService(`${address(server)}:built-in`);
  assert.equal(builtin.config.wire_protocol, 4);
  assert.equal(builtin.config.api_version, 3); // v4 is never advertised as api_version
  assert.equal(wireProtocol(other), 3);
});

test("a burst between two v4 clients arrives whole and in order, in fewer frames", live, async () => {
  const sender = await openV4();
  const target = await openV4();
  const received = [];
  target.rpc.on("seq", (message) => received.push(message.data));
  await Promise.all([settled(sender), settled(target)]); // their answers would count as messages in
  const before = { in: wireStats(target), out: wireStats(sender) };
  await Promise.all([...Array(300).keys()].map((i) => sender.emit({ type: "seq", to: address(target), data: i })));
  await eventually(() => received.length === 300, { what: "300 events" });
  assert.deepEqual(received, [...Array(300).keys()]);
  const after = { in: wireStats(target), out: wireStats(sender) };
  const framesIn = after.in.framesIn - before.in.framesIn;
  const framesOut = after.out.framesOut - before.out.framesOut;
  assert.equal(after.in.messagesIn - before.in.messagesIn, 300);
  assert.ok(framesOut <= 300 / 5, `the sender wrote ${framesOut} frames for 300 messages`);
  assert.ok(framesIn < 300, `the router wrote ${framesIn} frames for 300 messages`);
});

test("a lone call on an idle connection is flushed at once, not after the batch timer", live, async () => {
  const provider = await openV4();
  const consumer = await openV4({ batching: { timeout_ms: 2000 } }); // a timer wait would show
  const { id } = await registerPeer(provider);
  const echo = await consumer.getService(id);
  await new Promise((resolve) => setTimeout(resolve, 50)); // let the connection go idle
  const reasons = { ...wireStats(consumer).batching.reasons };
  const started = performance.now();
  assert.equal(await echo.echo("now"), "now");
  assert.ok(performance.now() - started < 1500, "the call waited for the 2 s timer");
  assert.equal(wireStats(consumer).batching.reasons.idle, reasons.idle + 1);
  assert.equal(wireStats(consumer).batching.reasons.timer, reasons.timer);
});

test("v4 and the released JS client (v3) call each other, 2 MB included, without streams", live, async () => {
  const v4 = await openV4();
  const v3 = await openReleased();
  const onV4 = await registerPeer(v4, "on-v4");
  const onV3 = await registerPeer(v3, "on-v3");
  const streams = wireStats(v4).streamsOut + wireStats(v4).streamsIn;
  assert.equal(await (await v3.getService(onV4.id)).echo("hi"), "hi");
  assert.equal(await (await v4.getService(onV3.id)).echo("hi"), "hi");
  assertSameBytes(await (await v3.getService(onV4.id)).echo(big), big);
  assertSameBytes(await (await v4.getService(onV3.id)).echo(big), big);
  assert.equal(wireStats(v4).streamsOut + wireStats(v4).streamsIn, streams); // message_cache both ways
});

test("v4 and a Python v3 peer call each other, 2 MB included, without streams", live, async () => {
  const v4 = await openV4();
  const mine = await registerPeer(v4, "for-py-v3");
  const py = await v4.getService(peers.py_v3);
  const streams = wireStats(v4).streamsOut + wireStats(v4).streamsIn;
  assert.deepEqual(await py.echo({ a: [1, 2] }), { a: [1, 2] });
  assertSameBytes(await py.echo(big), big);
  assertSameBytes(await py.call_echo(mine.id, big), big); // Python calls the JS service
  assert.equal(wireStats(v4).streamsOut + wireStats(v4).streamsIn, streams);
});

test("v4 and a Python v4 peer stream 2 MB each way as one chunk stream per message", live, async () => {
  const v4 = await openV4();
  const mine = await registerPeer(v4, "for-py-v4");
  const py = await v4.getService(peers.py_v4);
  const before = wireStats(v4);
  assertSameBytes(await py.echo(big), big);
  let now = wireStats(v4);
  assert.deepEqual([now.streamsOut - before.streamsOut, now.streamsIn - before.streamsIn], [1, 1]);
  // JS -> Python (the call), Python -> JS (its call), JS -> Python (the result), Python -> JS.
  assertSameBytes(await py.call_echo(mine.id, big), big);
  now = wireStats(v4);
  assert.deepEqual([now.streamsOut - before.streamsOut, now.streamsIn - before.streamsIn], [3, 3]);
});

test("small calls are not held up behind a 2 MB stream", live, async () => {
  const v4 = await openV4();
  const py = await v4.getService(peers.py_v4);
  const order = [];
  const large = py.echo(payload(8 * 1024 * 1024)).then((result) => order.push(`large ${result.length}`));
  await new Promise((resolve) => setTimeout(resolve, 5));
  const small = Promise.all([...Array(10).keys()].map((i) => py.echo(i))).then((r) => order.push(`small ${r.length}`));
  await Promise.all([large, small]);
  assert.deepEqual(order, ["small 10", `large ${8 * 1024 * 1024}`]);
});

test("v4 consumes a Python v4 generator in windows, a Python v3 one item by item", live, async () => {
  const v4 = await openV4();
  for (const [name, windowed] of [["py_v4", true], ["py_v3", false]]) {
    const py = await v4.getService(peers[name]);
    const producer = peers[name].split(":")[0];
    const before = await messagesTo(v4, producer);
    const items = [];
    for await (const item of await py.count(300)) items.push(item.i);
    assert.deepEqual(items, [...Array(300).keys()]);
    const calls = (await messagesTo(v4, producer)) - before;
    if (windowed) assert.ok(calls < 60, `${calls} messages to the producer for 300 items`);
    else assert.ok(calls >= 300, `${calls} messages to a v3 producer for 300 items`);
  }
});

test("a Python v4 consumer takes a JS generator in windows; the released JS client item by item", live, async () => {
  const v4 = await openV4();
  const mine = await registerPeer(v4, "gen-for-py");
  const py = await v4.getService(peers.py_v4);
  let before = await messagesTo(v4, address(v4));
  const items = await py.consume(mine.id, 300);
  assert.deepEqual(items.map((item) => item.i), [...Array(300).keys()]);
  assert.ok((await messagesTo(v4, address(v4))) - before < 60, "windowed: a few calls for 300 items");
  const v3 = await openReleased();
  before = await messagesTo(v4, address(v4));
  const fromV3 = [];
  for await (const item of await (await v3.getService(mine.id)).count(100)) fromV3.push(item.i);
  assert.deepEqual(fromV3, [...Array(100).keys()]);
  assert.ok((await messagesTo(v4, address(v4))) - before >= 100, "v3 ignores the window and pulls");
});

test("v4 consumes a released JS client's generator (no windows offered)", live, async () => {
  const v4 = await openV4();
  const v3 = await openReleased();
  const theirs = await registerPeer(v3, "gen-on-v3");
  const items = [];
  for await (const item of await (await v4.getService(theirs.id)).count(50)) items.push(item.i);
  assert.deepEqual(items, [...Array(50).keys()]);
});

test("leaving a windowed generator early closes it at the producer, both directions", live, async () => {
  const v4 = await openV4();
  const py = await v4.getService(peers.py_v4);
  const closedBefore = await py.closed();
  const seen = [];
  for await (const item of await py.endless()) {
    seen.push(item);
    if (seen.length === 50) break;
  }
  assert.deepEqual(seen, [...Array(50).keys()]);
  await eventually(async () => (await py.closed()) === closedBefore + 1, { what: "the Python generator closed" });
  const mine = await registerPeer(v4, "endless-for-py");
  assert.deepEqual(await py.consume_some(mine.id, 40), [...Array(40).keys()]);
  await eventually(() => mine.state.closed === 1, { what: "the JS generator closed" });
});

test("on a router without v4 the client falls back to v3 and everything still works", live, async () => {
  const v4 = await openV4({ server_url: v3RouterUrl });
  const v3 = await openReleased({ server_url: v3RouterUrl });
  assert.equal(v4.config.wire_protocol, undefined);
  assert.equal(wireProtocol(v4), 3);
  assert.equal(wireStats(v4).batching, null);
  const mine = await registerPeer(v4, "fallback");
  const builtin = await v3.getService(`${address(v4)}:built-in`);
  assert.equal(builtin.config.wire_protocol, 3); // says what it speaks: peers keep message_cache
  const echo = await v3.getService(mine.id);
  assert.deepEqual(await Promise.all([...Array(20).keys()].map((i) => echo.echo(i))), [...Array(20).keys()]);
  assertSameBytes(await echo.echo(big), big);
  const items = [];
  for await (const item of await (await v4.getService(mine.id)).count(40)) items.push(item.i);
  assert.equal(items.length, 40);
  const stats = wireStats(v4);
  assert.equal(stats.framesIn, stats.messagesIn); // one message per frame, as on any v3 connection
  assert.equal(stats.framesOut, stats.messagesOut);
  assert.equal(stats.streamsIn + stats.streamsOut + stats.dropped, 0);
});

test("wire_protocol: 3 stays on v3 on a v4 router", live, async () => {
  const server = await openV4({ wire_protocol: 3 });
  assert.equal(server.config.wire_protocol, undefined);
  assert.equal(wireProtocol(server), 3);
  const py = await server.getService(peers.py_v4);
  assertSameBytes(await py.echo(big), big); // message_cache, as the released client does
  assert.equal(wireStats(server).streamsOut, 0);
});

test("hypha-rpc's other exports come through unchanged", async () => {
  const module = await import("../src/index.js");
  const hypha = await import("hypha-rpc");
  assert.equal(module.RPC, hypha.RPC);
  assert.equal(module.API_VERSION, 3);
  assert.notEqual(module.connectToServer, hypha.connectToServer);
  assert.equal(typeof connectToServer, "function");
});
