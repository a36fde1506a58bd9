// Payload helpers: bytes, text, JSON and MessagePack, with the `content-type` values the Rust
// side uses (`application/json`, `application/msgpack`).

import { decode as msgpackDecode, encode as msgpackEncode } from "@msgpack/msgpack";
import { Status, MittoError } from "./proto/status.js";
import { decodeUtf8, encodeUtf8 } from "./proto/utf8.js";

export const JSON_CONTENT_TYPE = "application/json";
export const MSGPACK_CONTENT_TYPE = "application/msgpack";

/** What may be sent as a payload: bytes as they are, a string as UTF-8. */
export type Payload = Uint8Array | string;

const EMPTY = new Uint8Array(0);

export function toBytes(p: Payload | undefined): Uint8Array {
  if (p === undefined) return EMPTY;
  return typeof p === "string" ? encodeUtf8(p) : p;
}

export const Codec = {
  json: {
    contentType: JSON_CONTENT_TYPE,
    encode(v: unknown): Uint8Array {
      return encodeUtf8(JSON.stringify(v));
    },
    decode<T = unknown>(b: Uint8Array): T {
      const s = decodeUtf8(b);
      if (s === null) throw new MittoError(Status.BAD_REQUEST, "JSON payload is not UTF-8");
      try {
        return JSON.parse(s) as T;
      } catch (e) {
        throw new MittoError(Status.BAD_REQUEST, `payload is not JSON: ${(e as Error).message}`);
      }
    },
  },
  msgpack: {
    contentType: MSGPACK_CONTENT_TYPE,
    encode(v: unknown): Uint8Array {
      return msgpackEncode(v);
    },
    decode<T = unknown>(b: Uint8Array): T {
      try {
        return msgpackDecode(b) as T;
      } catch (e) {
        throw new MittoError(Status.BAD_REQUEST, `payload is not MessagePack: ${(e as Error).message}`);
      }
    },
  },
  text: {
    contentType: "text/plain; charset=utf-8",
    encode(v: string): Uint8Array {
      return encodeUtf8(v);
    },
    decode(b: Uint8Array): string {
      const s = decodeUtf8(b);
      if (s === null) throw new MittoError(Status.BAD_REQUEST, "payload is not UTF-8");
      return s;
    },
  },
} as const;
