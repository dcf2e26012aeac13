// The v4 transport: a WebSocket class for hypha-rpc's `WebSocketClass` option.
//
// hypha-rpc's connectToServer builds its WebsocketRPCConnection itself, with `new
// config.WebSocketClass(url)`, and then uses only the browser WebSocket surface: send(),
// close(), readyState and the on* handlers. This class wraps a real WebSocket with that
// surface. It adds `wire_protocol: 4` to the auth frame (the first text frame); once the
// router confirms v4 in connection_info, binary sends go through an Outbox (batched per the
// rules of batching.js) and incoming batch frames and chunk streams are split and joined back
// into the single messages hypha-rpc expects. Until then, and for good if the router answers
// v3 (Hypha, or a router with v4 off), every frame passes through unchanged.

import * as frames from "./frames.js";
import { Outbox } from "./outbox.js";

export const WIRE_PROTOCOL = 4;
/** Bytes per chunk frame of a streamed message (as the Python client). */
export const CHUNK_SIZE = 256 * 1024;

/** Counts of one client's traffic, across its reconnections. Binary frames only: the JSON
 *  control frames (auth, connection_info, ping) are neither frames nor messages here. */
export class WireStats {
  constructor() {
    this.framesIn = 0; // WebSocket frames received
    this.messagesIn = 0; // RPC messages handed to hypha-rpc (a stream counts once)
    this.framesOut = 0;
    this.messagesOut = 0;
    this.bytesIn = 0;
    this.bytesOut = 0;
    this.streamsIn = 0;
    this.streamsOut = 0;
    this.dropped = 0; // broken v4 frames or streams (logged)
    this.unsent = 0; // queued messages still unsent when the socket closed
  }
}

const quiet = { warn() {}, error() {} };

export class RhizomorphWebSocket {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;

  /**
   * @param {string} url
   * @param {string | string[] | undefined} protocols
   * @param {{Inner: typeof WebSocket, policy: import("./batching.js").BatchPolicy, announce: boolean,
   *          stats: WireStats, logger?: object | null}} options
   */
  constructor(url, protocols, { Inner, policy, announce, stats, logger }) {
    this.onopen = null;
    this.onmessage = null;
    this.onerror = null;
    this.onclose = null;
    this.wireProtocol = 3;
    this.stats = stats;
    this._policy = policy;
    this._announce = announce;
    this._logger = logger === null ? quiet : logger || console;
    this._outbox = null; // set once the router confirms v4
    this._streams = new frames.StreamAssembler();
    this._nextStreamId = 1;
    this._binaryType = "arraybuffer";
    const ws = protocols === undefined ? new Inner(url) : new Inner(url, protocols);
    ws.binaryType = "arraybuffer";
    ws.onopen = (event) => this.onopen && this.onopen(event);
    ws.onerror = (event) => this.onerror && this.onerror(event);
    ws.onclose = (event) => this._closed(event);
    ws.onmessage = (event) => this._receive(event.data);
    this._ws = ws;
  }

  get readyState() {
    return this._ws.readyState;
  }

  get bufferedAmount() {
    return this._ws.bufferedAmount + (this._outbox ? this._outbox.batcher.bufferedBytes : 0);
  }

  get url() {
    return this._ws.url;
  }

  get protocol() {
    return this._ws.protocol;
  }

  get extensions() {
    return this._ws.extensions;
  }

  get binaryType() {
    return this._binaryType;
  }

  set binaryType(value) {
    // hypha-rpc asks for "arraybuffer"; frames are always read as ArrayBuffer underneath.
    this._binaryType = value;
  }

  send(data) {
    if (typeof data === "string") {
      this._ws.send(this._announce ? withWireProtocol(data) : data);
      return;
    }
    const bytes = frames.asBytes(data);
    if (this._outbox === null) {
      this._write(bytes);
    } else if (!this._outbox.put(bytes)) {
      throw new Error("Connection is closed");
    }
    this.stats.messagesOut += 1;
  }

  /** Send one large message as a chunk stream (v4 only). A chunk is queued only once the
   *  previous write went out and nothing else waits, so small messages sent meanwhile go
   *  out between chunks. */
  async sendStream(message, chunkSize = CHUNK_SIZE) {
    const outbox = this._outbox;
    if (outbox === null) throw new Error("streams need a v4 connection");
    const bytes = frames.asBytes(message);
    const streamId = this._nextStreamId++;
    const count = Math.max(1, Math.ceil(bytes.length / chunkSize));
    this.stats.messagesOut += 1;
    this.stats.streamsOut += 1;
    for (let index = 0; index < count; index++) {
      await outbox.waitBelow(1);
      const data = bytes.subarray(index * chunkSize, (index + 1) * chunkSize);
      if (!outbox.put(frames.encodeChunk(streamId, index, index === count - 1, data))) {
        throw new Error("Connection is closed");
      }
    }
  }

  close(code, reason) {
    if (this._outbox !== null) {
      this._outbox.flushNow(); // what was sent before close() still goes, as on a plain WebSocket
      this._outbox.close();
    }
    this._ws.close(code, reason);
  }

  /** This connection's send-side batching counts (null on v3). */
  batchMetrics() {
    return this._outbox ? this._outbox.metrics() : null;
  }

  _write(bytes) {
    this._ws.send(bytes);
    this.stats.framesOut += 1;
    this.stats.bytesOut += bytes.length;
  }

  _closed(event) {
    if (this._outbox !== null) this.stats.unsent += this._outbox.close().length;
    if (this.onclose) this.onclose(event);
  }

  _receive(data) {
    if (typeof data === "string") {
      if (this._announce && this._outbox === null) this._confirm(data);
      this._deliver(data);
      return;
    }
    const bytes = frames.asBytes(data);
    this.stats.framesIn += 1;
    this.stats.bytesIn += bytes.length;
    if (!frames.isV4(bytes)) {
      this._deliver(data);
      return;
    }
    if (this._outbox === null) {
      this._drop("a v4 frame on a v3 connection");
      return;
    }
    let parts;
    try {
      parts = frames.isStream(bytes) ? [bytes] : frames.decodeBatch(bytes);
    } catch (error) {
      this._drop(error.message);
      return;
    }
    for (const part of parts) {
      if (!frames.isStream(part)) {
        this._deliver(part);
        continue;
      }
      let whole;
      try {
        whole = this._streams.add(part);
      } catch (error) {
        this._drop(error.message); // a broken stream is dropped, not the connection
        continue;
      }
      if (whole !== null) {
        this.stats.streamsIn += 1;
        this._deliver(whole);
      }
    }
  }

  _confirm(text) {
    if (!text.includes('"connection_info"')) return;
    let info;
    try {
      info = JSON.parse(text);
    } catch {
      return; // hypha-rpc reports what it cannot parse
    }
    if (info && info.type === "connection_info" && info.wire_protocol === WIRE_PROTOCOL) {
      this.wireProtocol = WIRE_PROTOCOL;
      this._outbox = new Outbox(
        (frame) => this._write(frame),
        () => this._ws.bufferedAmount,
        this._policy,
      );
    }
  }

  _deliver(data) {
    if (typeof data !== "string") this.stats.messagesIn += 1;
    if (!this.onmessage) return;
    try {
      this.onmessage({ type: "message", data, target: this });
    } catch (error) {
      // As with separate frames, one message that fails to be handled does not cost the others.
      this._logger.error("rhizomorph-client: a message handler failed:", error);
    }
  }

  _drop(reason) {
    this.stats.dropped += 1;
    this._logger.warn(`rhizomorph-client: dropped a v4 frame: ${reason}`);
  }
}

/** A WebSocket class for hypha-rpc's `WebSocketClass` option, bound to one client's options. */
export function socketClass(options) {
  return class extends RhizomorphWebSocket {
    constructor(url, protocols) {
      super(url, protocols, options);
    }
  };
}

/** Add `wire_protocol: 4` to the auth frame: the only text frame with a client_id and no type. */
export function withWireProtocol(text) {
  let message;
  try {
    message = JSON.parse(text);
  } catch {
    return text;
  }
  if (message && typeof message === "object" && "client_id" in message && !("type" in message)) {
    message.wire_protocol = WIRE_PROTOCOL;
    return JSON.stringify(message);
  }
  return text;
}
