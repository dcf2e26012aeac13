// Per-target batching (no I/O): when to flush the send buffer, and how much. The rules are
// those of rhizomorph/protocol/batching.py, which the router applies to its own targets:
//
// - A message at least `maxSize` bytes long bypasses batching: it is flushed alone (after the
//   messages queued before it, which keeps the order).
// - A message longer than half of `maxSize` leaves at once, with the messages queued before it
//   (reason "half"): no later message of at least its size could join its flush, so waiting for
//   the writer's turn or the timer gains nothing (`full()` is true while one is buffered).
// - When the socket is idle (its last flush left the buffer empty), the next flush happens at
//   once: a lone call pays no batching delay (reason "idle").
// - Messages that arrive while a write is in flight accumulate. What happens after the write is
//   the policy's `wait`:
//   - "socket" (the default): they leave as soon as the socket is free, in flushes of at most
//     `maxMessages` messages and `maxSize` bytes ("free"); no message waits for a timer while
//     the socket could take it.
//   - "timer" (the hypha-rpc batching report's rule): the buffer is flushed as soon as it holds
//     `maxMessages` messages ("count") or `maxSize` bytes ("size"), and at the latest
//     `timeoutMs` after its oldest message arrived ("timer").
// - With batching disabled every message is flushed alone ("unbatched").
//
// Times are milliseconds from any monotonic clock, passed in, so the rules are tested with a
// fake clock; outbox.js drives a Batcher from the event loop.

export const FLUSH_REASONS = ["idle", "free", "count", "size", "half", "timer", "large", "unbatched"];
/** What a busy target's batch waits for once its socket is free (see above). */
export const WAITS = ["socket", "timer"];
/** Upper bounds of the batch-size histogram buckets (messages per flush). */
export const BATCH_SIZE_BUCKETS = [1, 2, 5, 10, 20, 50, 100];
const ALONE = Number.MAX_SAFE_INTEGER; // the batching size of a frame that must be flushed alone

export class BatchPolicy {
  /** Accepts the Python names (`timeout_ms`, `max_messages`, `max_size`, `wait`) or camelCase ones. */
  constructor(options = {}) {
    const pick = (snake, camel, fallback) => options[snake] ?? options[camel] ?? fallback;
    this.enabled = Boolean(options.enabled ?? true);
    this.timeoutMs = Number(pick("timeout_ms", "timeoutMs", 10));
    this.maxMessages = Number(pick("max_messages", "maxMessages", 10));
    this.maxSize = Number(pick("max_size", "maxSize", 32768));
    this.wait = String(options.wait ?? "socket");
    if (!(this.timeoutMs >= 0) || !(this.maxMessages >= 1) || !(this.maxSize >= 1) || !WAITS.includes(this.wait)) {
      throw new RangeError(`invalid batch policy: ${JSON.stringify(options)}`);
    }
    Object.freeze(this);
  }

  /** A policy from a preset name, an options object, a BatchPolicy, or nothing (balanced). */
  static from(value) {
    if (value instanceof BatchPolicy) return value;
    if (typeof value === "string") {
      if (!(value in PRESETS)) throw new RangeError(`unknown batching preset: ${value}`);
      return PRESETS[value];
    }
    return new BatchPolicy(value || {});
  }
}

export const PRESETS = Object.freeze({
  latency: new BatchPolicy({ timeout_ms: 5, max_messages: 5, max_size: 32768 }),
  balanced: new BatchPolicy(),
  throughput: new BatchPolicy({ timeout_ms: 20, max_messages: 20, max_size: 65536 }),
});

/** What the batcher did, in the shape of the router's per-target metrics. */
export class BatchMetrics {
  constructor() {
    this.messages = 0;
    this.batchedMessages = 0; // messages that left in a flush of more than one
    this.flushes = 0;
    this.bytes = 0;
    this.reasons = Object.fromEntries(FLUSH_REASONS.map((r) => [r, 0]));
    this.sizes = new Map(); // bucket upper bound (or Infinity) -> flushes
    this.maxDepth = 0;
  }

  record(count, size, reason) {
    this.flushes += 1;
    this.messages += count;
    this.bytes += size;
    if (count > 1) this.batchedMessages += count;
    this.reasons[reason] += 1;
    const bucket = BATCH_SIZE_BUCKETS.find((b) => count <= b) ?? Infinity;
    this.sizes.set(bucket, (this.sizes.get(bucket) || 0) + 1);
  }

  asDict() {
    const sizes = {};
    for (const bucket of [...this.sizes.keys()].sort((a, b) => a - b)) {
      sizes[bucket === Infinity ? "+Inf" : String(bucket)] = this.sizes.get(bucket);
    }
    return {
      messages: this.messages,
      batched_messages: this.batchedMessages,
      flushes: this.flushes,
      bytes: this.bytes,
      reasons: { ...this.reasons },
      batch_sizes: sizes,
      max_depth: this.maxDepth,
    };
  }
}

export class Batcher {
  constructor(policy) {
    this.metrics = new BatchMetrics();
    this._frames = [];
    this._sizes = []; // batching size of each frame (ALONE for a lone one)
    this._arrivals = [];
    this._head = 0; // index of the oldest buffered frame (a queue without shift())
    this._bytes = 0;
    this._idle = true; // the last flush emptied the buffer
    this.policy = policy;
  }

  get policy() {
    return this._policy;
  }

  set policy(policy) {
    this._policy = BatchPolicy.from(policy);
    this._half = Math.floor(this._policy.maxSize / 2); // a frame longer than this closes its flush
    // Buffered frames longer than half of maxSize (lone ones included): a count, so that full()
    // (asked on every send) does not scan the buffer.
    this._big = 0;
    for (let i = this._head; i < this._sizes.length; i++) if (this._sizes[i] > this._half) this._big += 1;
  }

  get length() {
    return this._frames.length - this._head;
  }

  get bufferedBytes() {
    return this._bytes;
  }

  /** Buffer a frame; `alone` frames (chunks of a stream) never share a flush. */
  add(frame, now, alone = false) {
    this._arrivals.push(now);
    this._frames.push(frame);
    const size = alone ? ALONE : frame.length;
    this._sizes.push(size);
    if (size > this._half) this._big += 1;
    this._bytes += frame.length;
    if (this.length > this.metrics.maxDepth) this.metrics.maxDepth = this.length;
  }

  /** Whether the buffer's head is a flush no later message could join ("count", "size",
   *  "half", "large", or batching off): it may leave at once, before the writer's turn. */
  full() {
    const policy = this._policy;
    if (this.length === 0) return false;
    // A frame longer than half of maxSize either ends the head flush or lies beyond it.
    return this._big > 0 || !policy.enabled || this.length >= policy.maxMessages || this._bytes >= policy.maxSize;
  }

  /** Whether what is buffered makes a flush without the timer (`full`, or anything with
   *  wait "socket"): a writer waiting for the timer is worth waking only then. */
  complete() {
    return this.length > 0 && (this._policy.wait === "socket" || this.full());
  }

  /** When the timer forces a flush of what is buffered (null: nothing to wait for). */
  deadline() {
    const policy = this._policy;
    if (this.length === 0 || this._idle || !policy.enabled || policy.wait === "socket") return null;
    return this._arrivals[this._head] + policy.timeoutMs;
  }

  /** The next flush due at `now` (the socket is free): `{frames, reason}`, or null to wait. */
  take(now) {
    if (this.length === 0) {
      this._idle = true;
      return null;
    }
    const policy = this._policy;
    const head = this._head;
    if (!policy.enabled) return this._pop(1, "unbatched");
    if (this._sizes[head] >= policy.maxSize) return this._pop(1, "large");
    let count = 0;
    let size = 0;
    for (let i = head; i < this._sizes.length; i++) {
      const frameSize = this._sizes[i];
      if (frameSize >= policy.maxSize || count === policy.maxMessages || size + frameSize > policy.maxSize) break;
      count += 1;
      size += frameSize;
    }
    let reason;
    if (count === policy.maxMessages) reason = "count";
    else if (count < this.length) reason = this._sizes[head + count] < policy.maxSize ? "size" : "large";
    else if (size >= policy.maxSize) reason = "size"; // exactly full: no further message could join it
    else if (this._big > 0) reason = "half"; // the whole buffer, holding a frame none of its size could join
    else if (this._idle) reason = "idle";
    else if (policy.wait === "socket") reason = "free";
    else if (now >= this._arrivals[head] + policy.timeoutMs) reason = "timer";
    else return null;
    return this._pop(count, reason);
  }

  _pop(count, reason) {
    const start = this._head;
    const frames = this._frames.slice(start, start + count);
    this._head += count;
    let size = 0;
    for (const frame of frames) size += frame.length;
    for (let i = start; i < start + count; i++) if (this._sizes[i] > this._half) this._big -= 1;
    this._bytes -= size;
    if (this._head === this._frames.length || this._head > 1024) this._compact();
    this.metrics.record(count, size, reason);
    // Until a write leaves the buffer empty, later messages gather behind it (see `wait`).
    this._idle = false;
    return { frames, reason };
  }

  _compact() {
    this._frames.splice(0, this._head);
    this._sizes.splice(0, this._head);
    this._arrivals.splice(0, this._head);
    this._head = 0;
  }

  /** The socket finished writing a flush; an empty buffer means it is idle again. */
  written() {
    if (this.length === 0) this._idle = true;
  }

  /** Everything still buffered (the socket is gone, or closing). */
  drain() {
    const frames = this._frames.slice(this._head);
    this._frames = [];
    this._sizes = [];
    this._arrivals = [];
    this._head = 0;
    this._bytes = 0;
    this._big = 0;
    return frames;
  }
}
