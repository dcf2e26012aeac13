// rhizomorph-client: the released hypha-rpc JavaScript client, speaking rhizomorph's API v4.
//
//   import { connectToServer } from "rhizomorph-client";
//   const server = await connectToServer({ server_url: "ws://127.0.0.1:9527" });
//   server.config.wire_protocol; // 4 once the router confirmed v4 (absent on a v3 router)
//
// connectToServer takes hypha-rpc's options and returns what hypha-rpc's returns; the RPC
// layer (encoding, promises, heartbeats, message_cache, reconnection) is hypha-rpc's own,
// which is the compatibility contract with v3 peers. Only the transport is replaced, through
// hypha-rpc's `WebSocketClass` option (socket.js), and two abilities are added to the RPC
// object for v4 peers (v4rpc.js). Everything else hypha-rpc exports is exported unchanged.

import * as hypha from "hypha-rpc";
import { BatchPolicy } from "./batching.js";
import { RhizomorphWebSocket, WireStats, socketClass } from "./socket.js";
import { addV4Abilities } from "./v4rpc.js";

export * from "hypha-rpc";
export { BatchPolicy, Batcher, PRESETS } from "./batching.js";
export { RhizomorphWebSocket, WireStats, CHUNK_SIZE, WIRE_PROTOCOL } from "./socket.js";
export { GENERATOR_WINDOW } from "./v4rpc.js";
export * as frames from "./frames.js";

/**
 * Connect as an API v4 client; same options and result as hypha-rpc's connectToServer, plus:
 *
 * - `batching`: the client's own send-side batching, a preset name ("latency", "balanced",
 *   "throughput") or `{enabled, timeout_ms, max_messages, max_size}` (default: balanced);
 * - `wire_protocol`: 4 (default) asks for v4; 3 stays on v3 (the same transport, passing every
 *   frame through, so pages can compare).
 *
 * `WebSocketClass` (e.g. the `ws` package's) is wrapped; without it the global WebSocket is
 * used (Node 20 needs --experimental-websocket; Node 22 and browsers have it).
 */
export async function connectToServer(config = {}) {
  const { batching, wire_protocol: wire = 4, ...options } = config;
  if (options.transport === "http") return await hypha.connectToServer(options); // no v4 over HTTP
  const Inner = options.WebSocketClass || (options.server && options.server.WebSocketClass) || globalThis.WebSocket;
  if (typeof Inner !== "function") {
    throw new Error(
      "rhizomorph-client needs a WebSocket class: pass WebSocketClass, or run Node 20 with --experimental-websocket",
    );
  }
  const stats = new WireStats();
  options.WebSocketClass = socketClass({
    Inner,
    policy: BatchPolicy.from(batching),
    announce: Number(wire) >= 4,
    stats,
    logger: options.logger,
  });
  const server = await hypha.connectToServer(options);
  addV4Abilities(server.rpc);
  clients.set(server, stats);
  return server;
}

const clients = new WeakMap(); // server -> WireStats

function socketOf(server) {
  const socket = server && server.rpc && server.rpc._connection && server.rpc._connection._websocket;
  return socket instanceof RhizomorphWebSocket ? socket : null;
}

/** The wire protocol a connected client speaks now: 4 when the router accepted v4, else 3. */
export function wireProtocol(server) {
  const socket = socketOf(server);
  return socket ? socket.wireProtocol : 3;
}

/** What went over the wire since connecting (across reconnections): frames and messages each
 *  way, and the current connection's send-side batching counts (null on v3). */
export function wireStats(server) {
  const stats = clients.get(server);
  if (!stats) throw new Error("not a client of rhizomorph-client's connectToServer");
  const socket = socketOf(server);
  return { ...stats, wireProtocol: wireProtocol(server), batching: socket ? socket.batchMetrics() : null };
}
