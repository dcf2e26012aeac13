// API v4 binary frames (docs/protocol-v4.md), the same bytes as rhizomorph/protocol/frames.py.
//
// A v3 frame always starts with a msgpack map; v4 frames start with 0xc1, the one byte msgpack
// never uses, and the second byte says which v4 frame it is. Integers are big-endian.
//
//   batch frame: 0xc1 'B' (u32 length, message)*          several whole v3 messages, in order
//   chunk frame: 0xc1 'S' stream_id:u64 index:u32 flags:u8 data   one slice of a large message
//
// Everything here takes and returns Uint8Array; split messages are views into the frame.

export const MAGIC = 0xc1;
export const BATCH = 0x42; // "B"
export const STREAM = 0x53; // "S"
/** Per-message overhead of a batch frame (the length prefix). */
export const OVERHEAD = 4;
export const CHUNK_HEADER = 2 + 8 + 4 + 1;
export const LAST = 0x01;
/** The sender went away mid-stream: the receiver drops what arrived. */
export const ABORT = 0x02;

export class FrameError extends Error {
  constructor(message) {
    super(message);
    this.name = "FrameError";
  }
}

/** A Uint8Array over any binary a WebSocket or msgpack hands us (no copy). */
export function asBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new TypeError(`not binary data: ${Object.prototype.toString.call(data)}`);
}

export function isV4(frame) {
  return frame.length > 0 && frame[0] === MAGIC;
}

export function isStream(frame) {
  return frame.length > 1 && frame[0] === MAGIC && frame[1] === STREAM;
}

export function isBatch(frame) {
  return frame.length > 1 && frame[0] === MAGIC && frame[1] === BATCH;
}

export function encodeBatch(messages) {
  let size = 2;
  for (const message of messages) size += OVERHEAD + message.length;
  const frame = new Uint8Array(size);
  const view = new DataView(frame.buffer);
  frame[0] = MAGIC;
  frame[1] = BATCH;
  let offset = 2;
  for (const message of messages) {
    view.setUint32(offset, message.length);
    frame.set(message, offset + OVERHEAD);
    offset += OVERHEAD + message.length;
  }
  return frame;
}

/** The messages of a batch frame, as views into it; FrameError if it is not a whole batch. */
export function decodeBatch(frame) {
  if (!isBatch(frame)) throw new FrameError("not a v4 batch frame");
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  const messages = [];
  let offset = 2;
  const end = frame.length;
  while (offset < end) {
    if (offset + OVERHEAD > end) throw new FrameError("truncated length in batch frame");
    const length = view.getUint32(offset);
    offset += OVERHEAD;
    if (offset + length > end) throw new FrameError("truncated message in batch frame");
    messages.push(frame.subarray(offset, offset + length));
    offset += length;
  }
  return messages;
}

/** One chunk frame; `streamId` is a BigInt or a safe integer. */
export function encodeChunk(streamId, index, last, data, { abort = false } = {}) {
  const frame = new Uint8Array(CHUNK_HEADER + data.length);
  const view = new DataView(frame.buffer);
  frame[0] = MAGIC;
  frame[1] = STREAM;
  view.setBigUint64(2, BigInt(streamId));
  view.setUint32(10, index);
  frame[14] = (last ? LAST : 0) | (abort ? ABORT : 0);
  frame.set(data, CHUNK_HEADER);
  return frame;
}

/** `{streamId (BigInt), index, flags, data}` of a chunk frame; `data` is a view into it. */
export function decodeChunk(frame) {
  if (frame.length < CHUNK_HEADER || !isStream(frame)) throw new FrameError("not a v4 chunk frame");
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  return {
    streamId: view.getBigUint64(2),
    index: view.getUint32(10),
    flags: frame[14],
    data: frame.subarray(CHUNK_HEADER),
  };
}

/** Cut a message into the chunk frames of one stream (at least one chunk, even when empty). */
export function splitStream(message, streamId, chunkSize) {
  if (!(chunkSize >= 1)) throw new RangeError("chunkSize must be positive");
  const count = Math.max(1, Math.ceil(message.length / chunkSize));
  const chunks = [];
  for (let i = 0; i < count; i++) {
    chunks.push(encodeChunk(streamId, i, i === count - 1, message.subarray(i * chunkSize, (i + 1) * chunkSize)));
  }
  return chunks;
}

/** Joins the chunks of concurrent streams; a gap or an unknown stream is a FrameError. */
export class StreamAssembler {
  constructor(maxStreams = 64) {
    this._parts = new Map(); // stream id -> views into the chunk frames
    this._maxStreams = maxStreams;
  }

  get size() {
    return this._parts.size;
  }

  /** Feed one chunk frame; returns the whole message when its last chunk arrives, else null. */
  add(frame) {
    const { streamId, index, flags, data } = decodeChunk(frame);
    if (flags & ABORT) {
      this._parts.delete(streamId);
      return null;
    }
    let parts = this._parts.get(streamId);
    if (parts === undefined) {
      if (index !== 0) throw new FrameError(`stream ${streamId} starts at chunk ${index}`);
      if (this._parts.size >= this._maxStreams) throw new FrameError("too many concurrent streams");
      parts = [];
      this._parts.set(streamId, parts);
    } else if (index !== parts.length) {
      this._parts.delete(streamId);
      throw new FrameError(`stream ${streamId}: chunk ${index} after ${parts.length - 1}`);
    }
    parts.push(data);
    if (!(flags & LAST)) return null;
    this._parts.delete(streamId);
    if (parts.length === 1) return parts[0];
    let size = 0;
    for (const part of parts) size += part.length;
    const whole = new Uint8Array(size);
    let offset = 0;
    for (const part of parts) {
      whole.set(part, offset);
      offset += part.length;
    }
    return whole;
  }
}
