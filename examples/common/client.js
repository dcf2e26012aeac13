// The client the example pages connect with: rhizomorph-client (hypha-rpc's own RPC on API v4:
// batch frames, chunked large messages) by default; `?wire=3` keeps the same client on v3, one
// message per frame, as the released hypha-rpc client speaks, to compare the two.
import { connectToServer, wireStats } from "/lib/rhizomorph-client.mjs";

export const requestedWire = new URL(location.href).searchParams.get("wire") === "3" ? 3 : 4;

export function connect(options) {
  return connectToServer({ ...options, wire_protocol: requestedWire });
}

/** Frames and messages each way since connecting, and the wire protocol spoken now. */
export function wireSummary(server) {
  const s = wireStats(server);
  return {
    protocol: s.wireProtocol, framesIn: s.framesIn, messagesIn: s.messagesIn,
    framesOut: s.framesOut, messagesOut: s.messagesOut,
  };
}

/** "v4 · 120 frames / 410 messages in" for a page's status line. */
export function describeWire(wire) {
  return `v${wire.protocol} · ${wire.framesIn} frames / ${wire.messagesIn} messages in, ` +
    `${wire.framesOut} / ${wire.messagesOut} out`;
}
