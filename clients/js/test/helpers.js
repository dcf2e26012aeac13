// What the router tests share. tests/test_js_client.py starts a router, a router with v4 off and
// Python peers, and says where they are in the environment; without it the router tests skip.
import assert from "node:assert/strict";
import { after } from "node:test";
import { connectToServer as connectReleased } from "hypha-rpc";
import { connectToServer } from "../src/index.js";

export const routerUrl = process.env.RHIZOMORPH_URL;
export const v3RouterUrl = process.env.RHIZOMORPH_V3_URL;
export const peers = JSON.parse(process.env.RHIZOMORPH_PEERS || "{}");
/** Options of a test that needs the router. */
export const live = routerUrl ? {} : { skip: "RHIZOMORPH_URL is not set: run through tests/test_js_client.py" };

const opened = [];
after(async () => {
  await Promise.allSettled(opened.map((server) => server.disconnect()));
});

/** A rhizomorph-client (v4) client, closed after the file's tests. */
export async function openV4(options = {}) {
  const server = await connectToServer({ server_url: routerUrl, method_timeout: 30, logger: null, ...options });
  opened.push(server);
  return server;
}

/** Once the calls a client's connect left in flight have their answers (hypha-rpc sends some of
 * them from a task: an answer may still be on its way when connect returns). */
export async function settled(server) {
  const stores = new Set(["services", "message_cache"]);
  await eventually(() => Object.keys(server.rpc._object_store).every((key) => stores.has(key)), {
    what: "connect's own calls answered",
  });
}

/** A client of the released hypha-rpc JavaScript package (v3), closed after the file's tests. */
export async function openReleased(options = {}) {
  const server = await connectReleased({ server_url: routerUrl, method_timeout: 30, logger: null, ...options });
  opened.push(server);
  return server;
}

export const address = (server) => `${server.config.workspace}/${server.config.client_id}`;

export async function eventually(check, { timeout = 15000, interval = 100, what = "condition" } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    try {
      if (await check()) return;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`${what} not met within ${timeout} ms`);
    await new Promise((resolve) => setTimeout(resolve, interval));
  }
}

/** 2 MiB that differ byte to byte, so a misplaced chunk shows. */
export function payload(size = 2 * 1024 * 1024) {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = (i * 31 + (i >> 10)) & 0xff;
  return bytes;
}

export function assertSameBytes(actual, expected) {
  assert.ok(actual instanceof Uint8Array, `expected bytes, got ${Object.prototype.toString.call(actual)}`);
  assert.equal(actual.length, expected.length);
  assert.ok(Buffer.from(actual.buffer, actual.byteOffset, actual.length).equals(Buffer.from(expected)), "bytes differ");
}

/** Messages the router delivered to `target` so far (its per-target batching counts, read
 *  through the Python `control` service: the manager shows a client only its own workspace). */
export async function messagesTo(server, target) {
  const control = await server.getService(peers.control);
  return await control.messages_to(target);
}

/** A public service on `server`: echo, a counting generator and an endless one. */
export async function registerPeer(server, id = "js-peer") {
  const state = { closed: 0 };
  const info = await server.registerService({
    id,
    config: { visibility: "public" },
    echo: (value) => value,
    count: async function* (n) {
      for (let i = 0; i < n; i++) yield { i };
    },
    endless: async function* () {
      try {
        for (let i = 0; ; i++) yield i;
      } finally {
        state.closed += 1;
      }
    },
  });
  return { id: info.id, state };
}
