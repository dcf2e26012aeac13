// The transport without a router: frames, batching rules, the outbox and the socket wrapper,
// with fake clocks and fake sockets. RHIZOMORPH_VECTORS (written by tests/test_js_client.py
// with the Python modules) holds frames and batcher decisions the JS code must reproduce.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { Batcher, BatchPolicy, PRESETS } from "../src/batching.js";
import * as frames from "../src/frames.js";
import { Outbox } from "../src/outbox.js";
import { RhizomorphWebSocket, WireStats, withWireProtocol } from "../src/socket.js";
import { windowOf, windowed } from "../src/v4rpc.js";

const vectorsFile = process.env.RHIZOMORPH_VECTORS;
const vectors = vectorsFile ? JSON.parse(readFileSync(vectorsFile, "utf8")) : null;
const withVectors = vectors ? {} : { skip: "RHIZOMORPH_VECTORS is not set: run through tests/test_js_client.py" };
const hex = (bytes) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString("hex");
const unhex = (text) => new Uint8Array(Buffer.from(text, "hex"));
const bytes = (n, fill = 1) => new Uint8Array(n).fill(fill);
const turn = () => new Promise((resolve) => setImmediate(resolve));

test("batch frames: the bytes of rhizomorph/protocol/frames.py, both ways", withVectors, () => {
  const messages = vectors.batch.messages.map(unhex);
  assert.equal(hex(frames.encodeBatch(messages)), vectors.batch.frame);
  assert.deepEqual(frames.decodeBatch(unhex(vectors.batch.frame)).map(hex), vectors.batch.messages);
});

test("chunk streams: the bytes of frames.split_stream, and reassembly of them", withVectors, () => {
  const { message, stream_id: streamId, chunk_size: chunkSize, chunks } = vectors.stream;
  const made = frames.splitStream(unhex(message), BigInt(streamId), chunkSize);
  assert.deepEqual(made.map(hex), chunks);
  const assembler = new frames.StreamAssembler();
  const results = chunks.map((chunk) => assembler.add(unhex(chunk)));
  assert.ok(results.slice(0, -1).every((r) => r === null));
  assert.equal(hex(results.at(-1)), message);
  const abort = frames.decodeChunk(unhex(vectors.abort));
  assert.deepEqual([abort.streamId, abort.index, abort.flags], [7n, 3, frames.ABORT]);
  assert.equal(hex(frames.encodeChunk(7, 3, false, new Uint8Array(0), { abort: true })), vectors.abort);
});

test("the batcher decides every flush as the Python Batcher did", withVectors, () => {
  for (const { policy, events } of vectors.batcher) {
    const batcher = new Batcher(new BatchPolicy(policy));
    events.forEach((event, i) => {
      if (event.op === "add") {
        batcher.add(bytes(event.size), event.now, event.alone);
      } else if (event.op === "written") {
        batcher.written();
      } else {
        const flush = batcher.take(event.now);
        const got = flush === null ? null : [flush.frames.length, flush.reason];
        assert.deepEqual(got, event.flush, `step ${i}`);
        assert.equal(batcher.complete(), event.complete, `step ${i}: complete`);
        assert.equal(batcher.full(), event.full, `step ${i}: full`);
        const deadline = batcher.deadline();
        if (deadline === null || event.deadline === null) assert.equal(deadline, event.deadline, `step ${i}`);
        else assert.ok(Math.abs(deadline - event.deadline) < 1e-6, `step ${i}: deadline ${deadline}`);
      }
    });
  }
});

test("broken frames and streams are errors, not guesses", () => {
  const frame = frames.encodeBatch([bytes(10)]);
  assert.throws(() => frames.decodeBatch(frame.subarray(0, 8)), frames.FrameError);
  assert.throws(() => frames.decodeBatch(frame.subarray(0, 4)), frames.FrameError);
  assert.throws(() => frames.decodeBatch(bytes(4, 0x82)), frames.FrameError);
  assert.throws(() => frames.decodeChunk(frame), frames.FrameError);
  const chunks = frames.splitStream(bytes(100), 9, 40);
  const gap = new frames.StreamAssembler();
  assert.equal(gap.add(chunks[0]), null);
  assert.throws(() => gap.add(chunks[2]), /chunk 2 after 0/);
  assert.equal(gap.size, 0);
  assert.throws(() => new frames.StreamAssembler().add(chunks[1]), /starts at chunk 1/);
  const few = new frames.StreamAssembler(1);
  few.add(frames.splitStream(bytes(100), 1, 40)[0]);
  assert.throws(() => few.add(frames.splitStream(bytes(100), 2, 40)[0]), /too many/);
  const aborted = new frames.StreamAssembler();
  aborted.add(chunks[0]);
  assert.equal(aborted.add(frames.encodeChunk(9, 1, false, new Uint8Array(0), { abort: true })), null);
  assert.equal(aborted.size, 0);
  assert.equal(frames.splitStream(new Uint8Array(0), 3, 10).length, 1); // an empty message is one chunk
});

test("the default wait rule: what piles up during a write leaves once the socket is free", () => {
  assert.equal(new BatchPolicy().wait, "socket");
  assert.throws(() => new BatchPolicy({ wait: "never" }), RangeError);
  const b = new Batcher(new BatchPolicy({ timeout_ms: 10, max_messages: 3, max_size: 100 }));
  b.add(bytes(10), 0);
  assert.equal(b.take(0).reason, "idle");
  for (const size of [10, 10, 10, 10, 60, 40, 5]) b.add(bytes(size), 1);
  assert.ok(b.complete());
  assert.equal(b.deadline(), null); // nothing waits for a timer
  b.written();
  const flushes = [];
  for (let flush = b.take(1); flush !== null; flush = b.take(1)) flushes.push([flush.frames.length, flush.reason]);
  assert.deepEqual(flushes, [
    [3, "count"],
    [2, "size"],
    [2, "free"],
  ]);
});

test("a message over half of maxSize leaves at once, with those before it", () => {
  for (const wait of ["timer", "socket"]) {
    const b = new Batcher(new BatchPolicy({ timeout_ms: 10, max_messages: 3, max_size: 100, wait }));
    b.add(bytes(10), 0);
    b.take(0); // a write is under way: the target is not idle
    b.add(bytes(10), 1);
    b.add(bytes(50), 1);
    assert.ok(!b.full()); // half, not more: a second 50 could still join
    b.add(bytes(51), 1);
    assert.ok(b.full() && b.complete());
    b.written();
    const first = b.take(1);
    assert.deepEqual([first.frames.length, first.reason], [2, "size"]); // 10 + 50 + 51 > 100
    assert.ok(b.full());
    assert.equal(b.take(1).reason, "half"); // before the timer, under either wait
    assert.ok(!b.full());
    assert.equal(b.take(1), null);
    assert.equal(b.metrics.asDict().reasons.half, 1);
    b.policy = { max_size: 100 };
    b.add(bytes(60), 2);
    assert.ok(b.full());
    b.policy = { max_size: 200 }; // a new policy recounts: 60 is under half of 200
    assert.ok(!b.full());
  }
});

test("batching rules with a fake clock: idle, count, size, timer, large, unbatched", () => {
  const policy = new BatchPolicy({ timeout_ms: 10, max_messages: 3, max_size: 100, wait: "timer" });
  const b = new Batcher(policy);
  b.add(bytes(10), 0);
  assert.deepEqual(b.take(0).reason, "idle"); // a lone message on an idle socket: at once
  b.add(bytes(10), 1);
  b.add(bytes(10), 1);
  assert.equal(b.take(2), null); // a write was in flight: wait for company
  assert.equal(b.deadline(), 11);
  assert.equal(b.take(11).reason, "timer");
  b.add(bytes(10), 12);
  b.add(bytes(10), 12);
  b.add(bytes(10), 12);
  b.add(bytes(10), 12);
  assert.ok(b.complete());
  const count = b.take(12);
  assert.deepEqual([count.frames.length, count.reason], [3, "count"]);
  b.add(bytes(95), 13);
  assert.equal(b.take(13).reason, "size"); // 10 + 95 does not fit in 100
  b.add(bytes(100), 14);
  assert.equal(b.take(14).reason, "large"); // the 95 goes: a large message waits behind it
  assert.equal(b.take(14).reason, "large"); // which goes alone
  b.written();
  assert.equal(b.take(15), null); // empty: idle again
  const off = new Batcher(new BatchPolicy({ enabled: false }));
  off.add(bytes(1), 0);
  off.add(bytes(1), 0);
  assert.equal(off.take(0).reason, "unbatched");
  assert.equal(off.metrics.asDict().reasons.unbatched, 1);
  assert.equal(PRESETS.throughput.maxMessages, 20);
  assert.throws(() => new BatchPolicy({ max_messages: 0 }), RangeError);
  assert.throws(() => BatchPolicy.from("fastest"), RangeError);
});

function fakeSocket() {
  const written = [];
  return { written, write: (frame) => written.push(frame), buffered: () => 0 };
}

test("outbox: a lone message goes at once, a burst goes in batch frames, chunks go alone", async () => {
  const socket = fakeSocket();
  const outbox = new Outbox(socket.write, socket.buffered, new BatchPolicy({ max_messages: 10, wait: "timer" }));
  outbox.put(bytes(5, 0x81));
  await turn();
  assert.equal(socket.written.length, 1);
  assert.equal(socket.written[0][0], 0x81); // one message: a plain v3 frame
  await turn();
  await turn();
  for (let i = 0; i < 25; i++) outbox.put(Uint8Array.of(0x81, i));
  assert.equal(socket.written.length, 3, "full batches leave in put, before the writer's turn");
  outbox.put(frames.encodeChunk(1, 0, true, bytes(3)));
  for (let i = 0; i < 8; i++) await turn();
  const sent = socket.written.slice(1);
  assert.equal(sent.length, 4);
  assert.ok(frames.isBatch(sent[0]) && frames.isBatch(sent[1]) && frames.isBatch(sent[2]), "batch frames");
  const messages = sent.flatMap((f) => (frames.isBatch(f) ? frames.decodeBatch(f) : [f]));
  assert.deepEqual(messages.slice(0, 25).map((m) => m[1]), [...Array(25).keys()]); // in order
  assert.ok(frames.isStream(sent[3])); // the chunk alone, last
  // 10 + 10 (count), then the last 5 at once: a chunk waits behind them (large), then the chunk.
  assert.deepEqual(outbox.metrics().reasons, { idle: 1, free: 0, count: 2, size: 0, half: 0, timer: 0, large: 2, unbatched: 0 });
  outbox.put(bytes(3));
  await turn();
  outbox.put(bytes(3)); // the previous write is in flight: this one waits for company or the timer
  const timed = Date.now();
  while (outbox.metrics().reasons.timer === 0 && Date.now() - timed < 1000) await new Promise((r) => setTimeout(r, 2));
  assert.equal(outbox.metrics().reasons.timer, 1);
  assert.ok(Date.now() - timed >= 9, "not before the 10 ms timer");
});

test("outbox: a full batch leaves in put and wakes a writer asleep on the timer", async () => {
  const socket = fakeSocket();
  const outbox = new Outbox(socket.write, socket.buffered, new BatchPolicy({ timeout_ms: 1000, max_messages: 3, wait: "timer" }));
  outbox.put(Uint8Array.of(0x81, 0));
  await turn(); // idle: written at once; the write is in flight until the next turn
  outbox.put(Uint8Array.of(0x81, 1));
  outbox.put(Uint8Array.of(0x81, 2)); // during the write: they wait for company (the 1 s timer)
  for (let i = 0; i < 4; i++) await turn();
  assert.equal(socket.written.length, 1);
  outbox.put(Uint8Array.of(0x81, 3)); // full: written in put
  assert.equal(socket.written.length, 2);
  outbox.put(Uint8Array.of(0x81, 4)); // the buffer was empty: idle again, not behind the old timer
  for (let i = 0; i < 4; i++) await turn();
  const messages = socket.written.flatMap((f) => (frames.isBatch(f) ? frames.decodeBatch(f) : [f]));
  assert.deepEqual(messages.map((m) => m[1]), [0, 1, 2, 3, 4]);
});

test("outbox: flushNow writes what waits, close refuses more and wakes paced senders", async () => {
  const socket = fakeSocket();
  const outbox = new Outbox(socket.write, socket.buffered, new BatchPolicy({ timeout_ms: 1000, wait: "timer" }));
  outbox.put(bytes(3));
  await turn();
  outbox.put(bytes(3)); // while the first is "in flight": waits for the 1 s timer
  outbox.put(bytes(3));
  await turn();
  await turn();
  assert.equal(socket.written.length, 1);
  outbox.flushNow();
  assert.equal(socket.written.length, 3);
  outbox.put(bytes(3));
  const paced = outbox.waitBelow(1);
  assert.equal(outbox.close().length, 1);
  await paced; // resolves: nobody waits forever on a closed connection
  assert.equal(outbox.put(bytes(3)), false);
});

class FakeInner {
  static last = null;
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.readyState = 1;
    this.bufferedAmount = 0;
    FakeInner.last = this;
  }
  send(data) {
    this.sent.push(data);
  }
  close() {
    this.readyState = 3;
    this.onclose({ code: 1000, reason: "" });
  }
  receive(data) {
    this.onmessage({ data });
  }
}

function wrapped(announce = true) {
  const stats = new WireStats();
  const socket = new RhizomorphWebSocket("ws://x", undefined, {
    Inner: FakeInner,
    policy: new BatchPolicy(),
    announce,
    stats,
    logger: null,
  });
  const received = [];
  socket.onmessage = (event) => received.push(event.data);
  return { socket, inner: FakeInner.last, received, stats };
}

test("socket: announces v4, passes frames through until the router confirms it", async () => {
  const { socket, inner, received, stats } = wrapped();
  socket.send(JSON.stringify({ client_id: "c", workspace: null, token: null, reconnection_token: null }));
  assert.equal(JSON.parse(inner.sent[0]).wire_protocol, 4);
  assert.equal(withWireProtocol('{"type":"ping"}'), '{"type":"ping"}'); // only the auth frame
  socket.send(Uint8Array.of(0x81, 1));
  assert.equal(inner.sent.length, 2); // not confirmed yet: straight through
  inner.receive(frames.encodeBatch([Uint8Array.of(0x81)]).buffer);
  assert.equal(received.length, 0); // a v4 frame before v4 was agreed is dropped
  assert.equal(stats.dropped, 1);
  inner.receive(JSON.stringify({ type: "connection_info", workspace: "w", wire_protocol: 4 }));
  assert.equal(socket.wireProtocol, 4);
  inner.receive(frames.encodeBatch([Uint8Array.of(0x81, 1), Uint8Array.of(0x81, 2)]).buffer);
  const stream = frames.splitStream(bytes(10, 7), 5, 4);
  for (const chunk of stream) inner.receive(chunk.buffer);
  assert.deepEqual(received.slice(1).map((m) => Array.from(m)), [[0x81, 1], [0x81, 2], Array.from(bytes(10, 7))]);
  assert.equal(stats.framesIn, 5);
  assert.equal(stats.messagesIn, 3);
  socket.send(Uint8Array.of(0x81, 3));
  socket.send(Uint8Array.of(0x81, 4));
  await turn();
  assert.ok(frames.isBatch(frames.asBytes(inner.sent.at(-1)))); // both in one batch frame
  socket.send(Uint8Array.of(0x81, 5));
  socket.close(1000, "bye"); // what was sent before close() still goes
  assert.deepEqual(Array.from(inner.sent.at(-1)), [0x81, 5]);
  assert.throws(() => socket.send(Uint8Array.of(0x81, 6)), /closed/);
});

test("socket: a v3 answer keeps it on v3; wire_protocol 3 never asks", () => {
  const v3 = wrapped();
  v3.inner.receive(JSON.stringify({ type: "connection_info", workspace: "w" }));
  v3.socket.send(Uint8Array.of(0x81, 1));
  assert.equal(v3.socket.wireProtocol, 3);
  assert.equal(v3.inner.sent.length, 1);
  const off = wrapped(false);
  off.socket.send(JSON.stringify({ client_id: "c" }));
  assert.equal(JSON.parse(off.inner.sent[0]).wire_protocol, undefined);
  off.inner.receive(JSON.stringify({ type: "connection_info", wire_protocol: 4 }));
  assert.equal(off.socket.wireProtocol, 3);
});

test("generator windows: the producer hands out up to count items, the consumer keeps one window ahead", async () => {
  let produced = 0;
  const stop = { _rtype: "stop_iteration" };
  const next = async () => (produced < 70 ? produced++ : stop);
  let done = false;
  const window = windowOf(next, () => (done = true));
  assert.equal((await window(5)).length, 5);
  assert.equal((await window(100000)).length, 65 + 1); // capped at 1024, ends with the stop marker
  assert.ok(done);
  produced = 0;
  const calls = [];
  const remoteWindow = async (count) => {
    calls.push(produced);
    return await windowOf(next)(count);
  };
  const items = [];
  for await (const item of windowed(remoteWindow, null)) items.push(item);
  assert.deepEqual(items, [...Array(70).keys()]);
  assert.deepEqual(calls, [0, 32, 64]); // each window asked for before the previous was consumed
  let closed = 0;
  produced = 0;
  for await (const item of windowed(remoteWindow, async () => closed++)) if (item === 40) break;
  assert.equal(closed, 1); // leaving early closes the producer
});
