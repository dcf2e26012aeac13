// The send side of a v4 connection: a Batcher driven from the event loop, one writer.
//
// The Python client and the router use rhizomorph/gateway/delivery.py, where a write is "in
// flight" until `await websocket.send()` returns. A browser WebSocket's send() returns at
// once, so here a write is in flight until the next turn of the event loop (a macrotask), and
// for as long as the socket holds more than `highWater` unsent bytes (its bufferedAmount):
// the same thing websockets' send() waits for in Python. Messages produced meanwhile wait for
// company, by the rules of batching.js. A batch that is full when its last message arrives
// (`Batcher.full`) is written at once in `put`, when no write is in flight and the socket is
// below `highWater`: as in rhizomorph/gateway/delivery.py, it does not wait for the writer's turn.

import { Batcher } from "./batching.js";
import { MAGIC, encodeBatch } from "./frames.js";

const HIGH_WATER = 64 * 1024; // unsent bytes in the socket before the writer waits (as websockets' write limit)
const DRAIN_POLL_MS = 2; // how often a writer waiting for bufferedAmount to fall looks again

/** Run `fn` on the next turn of the event loop, with no timer clamping (setTimeout(0) is
 *  clamped to 4 ms when nested and throttled in background tabs; a MessageChannel is not). */
export const nextTurn = (() => {
  if (typeof setImmediate === "function") return (fn) => setImmediate(fn);
  if (typeof MessageChannel === "function") {
    const channel = new MessageChannel();
    const queue = [];
    channel.port1.onmessage = () => queue.shift()();
    return (fn) => {
      queue.push(fn);
      channel.port2.postMessage(0);
    };
  }
  return (fn) => setTimeout(fn, 0);
})();

const turn = () => new Promise((resolve) => nextTurn(resolve));
const hidden = () => typeof document !== "undefined" && document.visibilityState === "hidden";
const monotonic = () => performance.now();

export class Outbox {
  /**
   * @param {(frame: Uint8Array) => void} write writes one WebSocket frame
   * @param {() => number} buffered the socket's unsent bytes (bufferedAmount)
   * @param {import("./batching.js").BatchPolicy} policy
   */
  constructor(write, buffered, policy, { clock = monotonic } = {}) {
    this.batcher = new Batcher(policy);
    this.framesWritten = 0;
    this._write = write;
    this._buffered = buffered;
    this._clock = clock;
    this._writer = null;
    this._wake = null; // set while the writer waits for the batch timer
    this._inFlight = false; // the writer's last write has not gone out yet
    this._waiters = []; // senders pacing themselves (waitBelow)
    this._closed = false;
  }

  get depth() {
    return this.batcher.length;
  }

  get closed() {
    return this._closed;
  }

  /** Queue one frame; false if the connection is gone (the caller tells the sender). */
  put(frame) {
    if (this._closed) return false;
    // A chunk of a stream is not a message: it never shares a batch frame (docs/protocol-v4.md).
    const batcher = this.batcher;
    batcher.add(frame, this._clock(), frame[0] === MAGIC);
    if (!this._inFlight && batcher.full() && this._buffered() <= HIGH_WATER) {
      this._writeFull();
      if (batcher.length === 0 || this._closed) return true;
    }
    if (this._writer === null) {
      this._writer = turn().then(() => this._drain());
    } else if (this._wake !== null && this.batcher.complete()) {
      this._wake(); // else the writer sleeps on: the timer, or a later message, wakes it
    }
    return true;
  }

  _writeFull() {
    const batcher = this.batcher;
    try {
      while (batcher.full() && this._buffered() <= HIGH_WATER) {
        this._send(batcher.take(this._clock()).frames);
        batcher.written();
      }
    } catch (error) {
      this._closed = true; // the socket failed under us; its close handler follows
      return;
    }
    this._progress();
    // A writer asleep on the timer has nothing left: it ends, the next put starts one.
    if (batcher.length === 0 && this._wake !== null) this._wake();
  }

  async _drain() {
    const batcher = this.batcher;
    try {
      while (!this._closed) {
        const flush = batcher.take(this._clock());
        if (flush === null) {
          const deadline = batcher.deadline();
          if (deadline === null) break; // idle: the next put starts a new writer
          await this._waitUntil(deadline);
          continue;
        }
        this._inFlight = true;
        this._send(flush.frames);
        await this._writable();
        this._inFlight = false;
        batcher.written();
        this._progress();
      }
    } catch (error) {
      this._closed = true; // the socket failed under us; its close handler follows
    } finally {
      this._inFlight = false;
      this._writer = null;
      this._progress();
    }
  }

  _send(frames) {
    this._write(frames.length > 1 ? encodeBatch(frames) : frames[0]);
    this.framesWritten += 1;
  }

  async _writable() {
    await turn();
    while (!this._closed && this._buffered() > HIGH_WATER) {
      await new Promise((resolve) => setTimeout(resolve, DRAIN_POLL_MS));
    }
  }

  _waitUntil(deadline) {
    // A hidden page's timers are throttled to about one a second: there, flush on the next turn.
    const delay = hidden() ? -1 : deadline - this._clock();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        if (this._wake === done) this._wake = null;
        resolve();
      };
      const timer = delay >= 0 ? setTimeout(done, delay) : null;
      this._wake = done;
      if (timer === null) nextTurn(done);
    });
  }

  _progress() {
    const waiters = this._waiters;
    this._waiters = [];
    for (const resolve of waiters) resolve();
  }

  /** Wait until fewer than `depth` frames are queued and the last write went out (a paced
   *  sender's flow control: a stream queues its next chunk only then). */
  async waitBelow(depth) {
    while (this.batcher.length >= depth && !this._closed) {
      await new Promise((resolve) => this._waiters.push(resolve));
    }
  }

  /** Write everything still queued now, one frame each, in order (before a clean close:
   *  nothing sent before `close()` is lost, as with a plain WebSocket). */
  flushNow() {
    for (const frame of this.batcher.drain()) {
      this._write(frame);
      this.framesWritten += 1;
    }
  }

  /** Stop sending; returns the frames that were never written. */
  close() {
    this._closed = true;
    if (this._wake !== null) this._wake();
    this._progress();
    return this.batcher.drain();
  }

  metrics() {
    return { ...this.batcher.metrics.asDict(), depth: this.depth, frames_written: this.framesWritten, wire: "v4" };
  }
}
