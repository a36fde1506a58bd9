// The protocol core: no I/O, no timers. Everything above it works on frames.

export * from "./constants.js";
export * from "./status.js";
export * from "./subject.js";
export * from "./headers.js";
export * from "./body.js";
export * from "./frame.js";
export * from "./decoder.js";
export { decompress, uncompressedLength } from "./lz4.js";
export { decodeUtf8, encodeUtf8, toHex, fromHex } from "./utf8.js";
