// The two v4 abilities of hypha-rpc's RPC object, used only between v4 peers (the Python
// client's _V4RPC does the same, docs/protocol-v4.md):
//
// - a large message to a v4 peer travels as one chunk stream instead of `message_cache` calls
//   (one round trip per 256 KiB); v3 peers still get `message_cache`;
// - generators stream in windows: the consumer asks for up to GENERATOR_WINDOW items per call
//   and keeps the next window in flight while it consumes (back-pressure: at most two windows
//   are out). v3 consumers ignore the extra key and pull item by item.
//
// hypha-rpc's connectToServer constructs its RPC itself, so the abilities are added to that
// one instance (its own methods, the originals called underneath); other hypha-rpc clients in
// the same page or process are untouched. Each ability checks, when it is used, that the
// client's current socket is a confirmed v4 one: after a reconnection to a v3 router they stop.

import { RhizomorphWebSocket, WIRE_PROTOCOL } from "./socket.js";

export const GENERATOR_WINDOW = 32; // items a consumer asks for per round trip
const MAX_WINDOW = 1024; // the most a producer hands out per call, whatever it is asked

const isStop = (item) => item !== null && typeof item === "object" && item._rtype === "stop_iteration";

/** The client's socket if it speaks v4 now, else null. */
export function v4Socket(rpc) {
  const socket = rpc && rpc._connection && rpc._connection._websocket;
  return socket instanceof RhizomorphWebSocket && socket.wireProtocol === WIRE_PROTOCOL ? socket : null;
}

export function addV4Abilities(rpc) {
  const builtin = rpc._services["built-in"];
  if (builtin && builtin.config) {
    // Peers read it with get_service("<ws>/<client>:built-in") before chunking; api_version
    // stays 3. A getter: it says what the current connection speaks, also after reconnecting.
    Object.defineProperty(builtin.config, "wire_protocol", {
      get: () => (v4Socket(rpc) ? WIRE_PROTOCOL : 3),
      enumerable: true,
      configurable: true,
    });
  }

  const sendChunks = rpc._send_chunks;
  rpc._send_chunks = async function (data, targetId, sessionId) {
    const socket = v4Socket(this);
    if (socket !== null) {
      const remote = await this.get_remote_service(`${targetId}:built-in`);
      if (remote && remote.config && remote.config.wire_protocol === WIRE_PROTOCOL) {
        await socket.sendStream(data);
        return;
      }
    }
    await sendChunks.call(this, data, targetId, sessionId);
  };

  const encode = rpc._encode;
  rpc._encode = async function (aObject, sessionId, localWorkspace) {
    const encoded = await encode.call(this, aObject, sessionId, localWorkspace);
    if (encoded && encoded._rtype === "generator" && typeof encoded._rmethod === "string" && v4Socket(this)) {
      offerWindows(this, encoded);
    }
    return encoded;
  };

  const decode = rpc._decode;
  rpc._decode = async function (aObject, remoteParent, localParent, remoteWorkspace, localWorkspace) {
    if (
      aObject &&
      aObject._rtype === "generator" &&
      typeof aObject._rwindow_method === "string" &&
      !(this._codecs.generator && this._codecs.generator.decoder) &&
      v4Socket(this)
    ) {
      const remote = (method) =>
        this._generate_remote_method(
          { _rtype: "method", _rserver: aObject._rserver, _rtarget: aObject._rtarget, _rmethod: method, _rpromise: "*" },
          remoteParent,
          localParent,
          remoteWorkspace,
          localWorkspace,
        );
      const close = typeof aObject._rclose_method === "string" ? remote(aObject._rclose_method) : null;
      return windowed(remote(aObject._rwindow_method), close);
    }
    return decode.call(this, aObject, remoteParent, localParent, remoteWorkspace, localWorkspace);
  };
}

/** The producer side: store a window method beside hypha-rpc's next-item method and name it
 *  in the encoded generator (`_rwindow_method`). */
function offerWindows(rpc, encoded) {
  const dot = encoded._rmethod.lastIndexOf(".");
  const session = encoded._rmethod.slice(0, dot);
  const objectId = encoded._rmethod.slice(dot + 1);
  const store = rpc._get_session_store(session, false);
  const nextItem = store && store[objectId];
  if (typeof nextItem !== "function") return;
  const windowKey = `${objectId}:window`;
  const closeKey = `${objectId}:close`;
  const forget = () => delete store[windowKey];
  store[windowKey] = windowOf(nextItem, forget);
  const close = store[closeKey];
  if (typeof close === "function") {
    store[closeKey] = async () => {
      forget();
      return await close();
    };
  }
  encoded._rwindow_method = `${session}.${windowKey}`;
}

/** Up to `count` items per call, ending with the stop marker when the generator is done. */
export function windowOf(nextItem, onDone = () => {}) {
  return async (count = GENERATOR_WINDOW) => {
    const size = Math.max(1, Math.min(Math.trunc(Number(count)) || GENERATOR_WINDOW, MAX_WINDOW));
    const items = [];
    for (let i = 0; i < size; i++) {
      const item = await nextItem();
      items.push(item);
      if (isStop(item)) {
        onDone();
        break;
      }
    }
    return items;
  };
}

/** The consumer side: yields items while the next window is already on its way. Leaving
 *  early (break, return, an error) asks the producer to close its generator. */
export async function* windowed(window, close) {
  let pending = window(GENERATOR_WINDOW);
  let finished = false;
  try {
    for (;;) {
      const items = await pending;
      if (!Array.isArray(items)) throw new Error(`a generator window answered ${typeof items}, not a list`);
      finished = items.length === 0 || isStop(items[items.length - 1]);
      if (!finished) pending = window(GENERATOR_WINDOW);
      for (const item of items) {
        if (isStop(item)) return;
        yield item;
      }
      if (finished) return;
    }
  } finally {
    if (!finished) {
      pending.catch(() => {}); // the window in flight is not wanted any more
      if (close !== null) {
        try {
          await close();
        } catch {
          // the producer may be gone already: nothing left to close
        }
      }
    }
  }
}
