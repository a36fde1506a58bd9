// The headers block (section 6): compact well-known keys, free-form keys, repeats kept in order.

import { WELL_KNOWN_NAMES, WellKnown, wellKnownId } from "./constants.js";
import { Status, MittoError } from "./status.js";
import { hasSpaceOrControl } from "./subject.js";
import { decodeUtf8, encodeUtf8 } from "./utf8.js";

/** One entry: `id` 1..=255 is a compact key (well-known or reserved); 0 a free-form `key`. */
export interface HeaderEntry {
  readonly id: number;
  /** The well-known name, `#<id>` for a reserved compact id, or the free-form key. */
  readonly key: string;
  readonly value: Uint8Array;
}

export type HeaderValue = string | Uint8Array;
export type HeadersInit = Headers | Iterable<readonly [string, HeaderValue]> | Record<string, HeaderValue>;

/**
 * An ordered list of header entries. Well-known names (any ASCII case) go on the wire as their
 * compact ids; `get` returns the first entry with a key.
 */
export class Headers implements Iterable<[string, Uint8Array]> {
  readonly entries: HeaderEntry[];

  constructor(init?: HeadersInit) {
    this.entries = [];
    if (init === undefined) return;
    if (init instanceof Headers) {
      this.entries.push(...init.entries);
      return;
    }
    const list = Symbol.iterator in init ? (init as Iterable<readonly [string, HeaderValue]>) : Object.entries(init);
    for (const [k, v] of list) this.append(k, v);
  }

  /** Wraps entries already validated (decoded from the wire). */
  static fromEntries(entries: HeaderEntry[]): Headers {
    const h = new Headers();
    h.entries.push(...entries);
    return h;
  }

  get size(): number {
    return this.entries.length;
  }

  /** Appends an entry; throws BAD_REQUEST for a key or value the wire cannot carry. */
  append(key: string, value: HeaderValue): this {
    const v = typeof value === "string" ? encodeUtf8(value) : value;
    if (v.length > 0xffff) throw new MittoError(Status.BAD_REQUEST, `header ${key}: value over 65535 bytes`);
    const id = wellKnownId(key);
    if (id !== 0) {
      if ((id === WellKnown.DEADLINE || id === WellKnown.TTL) && v.length !== 8) {
        throw new MittoError(Status.BAD_REQUEST, `header ${key}: the value must be 8 bytes`);
      }
      if (id === WellKnown.DELIVERY_COUNT && v.length !== 4) {
        throw new MittoError(Status.BAD_REQUEST, `header ${key}: the value must be 4 bytes`);
      }
      this.entries.push({ id, key: WELL_KNOWN_NAMES[id] as string, value: v });
      return this;
    }
    const kb = encodeUtf8(key);
    if (kb.length === 0 || kb.length > 255) throw new MittoError(Status.BAD_REQUEST, `header key must be 1 to 255 bytes`);
    if (hasSpaceOrControl(key)) throw new MittoError(Status.BAD_REQUEST, `header key ${JSON.stringify(key)} has whitespace or a control character`);
    this.entries.push({ id: 0, key, value: v });
    return this;
  }

  /** Replaces every entry of `key` with one. */
  set(key: string, value: HeaderValue): this {
    this.delete(key);
    return this.append(key, value);
  }

  delete(key: string): this {
    const id = wellKnownId(key);
    for (let i = this.entries.length - 1; i >= 0; i--) {
      const e = this.entries[i] as HeaderEntry;
      if (id !== 0 ? e.id === id : e.id === 0 && e.key === key) this.entries.splice(i, 1);
    }
    return this;
  }

  /** The first value of `key` (a well-known name in any ASCII case, or a free-form key). */
  get(key: string): Uint8Array | undefined {
    const id = wellKnownId(key);
    for (const e of this.entries) {
      if (id !== 0 ? e.id === id : e.id === 0 && e.key === key) return e.value;
    }
    return undefined;
  }

  /** The first value of `key` as UTF-8 text (undefined when absent or not UTF-8). */
  getText(key: string): string | undefined {
    const v = this.get(key);
    return v === undefined ? undefined : (decodeUtf8(v) ?? undefined);
  }

  has(key: string): boolean {
    return this.get(key) !== undefined;
  }

  *[Symbol.iterator](): Iterator<[string, Uint8Array]> {
    for (const e of this.entries) yield [e.key, e.value];
  }
}

/** An 8-byte big-endian u64 value (deadline, ttl). */
export function u64Value(n: bigint | number): Uint8Array {
  const b = new Uint8Array(8);
  let x = BigInt(n);
  if (x < 0n) x = 0n;
  if (x > 0xffff_ffff_ffff_ffffn) x = 0xffff_ffff_ffff_ffffn;
  new DataView(b.buffer).setBigUint64(0, x);
  return b;
}

export function readU64Value(v: Uint8Array): bigint {
  return new DataView(v.buffer, v.byteOffset, v.byteLength).getBigUint64(0);
}

/** Bytes the entries take on the wire. */
export function headersLength(entries: readonly HeaderEntry[]): number {
  let n = 0;
  for (const e of entries) {
    n += 3 + e.value.length;
    if (e.id === 0) n += 1 + encodedKeyLength(e.key);
  }
  return n;
}

const keyCache = new Map<string, Uint8Array>();
function keyBytes(k: string): Uint8Array {
  let b = keyCache.get(k);
  if (b === undefined) {
    b = encodeUtf8(k);
    if (keyCache.size < 1024) keyCache.set(k, b);
  }
  return b;
}
function encodedKeyLength(k: string): number {
  return keyBytes(k).length;
}

/** Writes the entries at `off` of `out`; returns the offset after them. */
export function writeHeaders(out: Uint8Array, view: DataView, off: number, entries: readonly HeaderEntry[]): number {
  for (const e of entries) {
    out[off++] = e.id;
    if (e.id === 0) {
      const k = keyBytes(e.key);
      out[off++] = k.length;
      out.set(k, off);
      off += k.length;
    }
    view.setUint16(off, e.value.length);
    off += 2;
    out.set(e.value, off);
    off += e.value.length;
  }
  return off;
}

/** Parses and validates a headers block; returns the entries or why it is malformed. */
export function parseHeaders(b: Uint8Array, start: number, end: number): HeaderEntry[] | string {
  const out: HeaderEntry[] = [];
  let i = start;
  while (i < end) {
    const id = b[i++] as number;
    let key: string;
    if (id === 0) {
      if (i >= end) return "truncated key length";
      const klen = b[i++] as number;
      if (klen === 0) return "empty key";
      if (i + klen > end) return "key overruns the block";
      const k = decodeUtf8(b, i, i + klen);
      if (k === null) return "key is not UTF-8";
      if (hasSpaceOrControl(k)) return "whitespace or control character in key";
      if (wellKnownId(k) !== 0) return "well-known key sent in free form";
      key = k;
      i += klen;
    } else {
      key = id < WELL_KNOWN_NAMES.length ? (WELL_KNOWN_NAMES[id] as string) : `#${id}`;
    }
    if (i + 2 > end) return "truncated value length";
    const vlen = ((b[i] as number) << 8) | (b[i + 1] as number);
    i += 2;
    if (i + vlen > end) return "value overruns the block";
    if ((id === WellKnown.DEADLINE || id === WellKnown.TTL) && vlen !== 8) {
      return "deadline and ttl values must be 8 bytes";
    }
    if (id === WellKnown.DELIVERY_COUNT && vlen !== 4) {
      return "delivery-count values must be 4 bytes";
    }
    out.push({ id, key, value: b.subarray(i, i + vlen) });
    i += vlen;
  }
  return out;
}
