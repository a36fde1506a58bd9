// Bodies of control frames (section 7): HELLO, subscribe options, the u32 bodies, reasons,
// HEALTH and STATS reports.

import { decode as decodeMsgpack, encode as encodeMsgpack } from "@msgpack/msgpack";
import { VERSION_MAJOR, VERSION_MINOR } from "./constants.js";
import { hasSpaceOrControl } from "./subject.js";
import { decodeUtf8, encodeUtf8 } from "./utf8.js";

/** The HELLO body (section 7.1): an offer (client) or the agreed values (reply). */
export interface Hello {
  major: number;
  minor: number;
  flags: number;
  features: number;
  maxPayload: number;
  maxHeaders: number;
  keepaliveMs: number;
  name: string;
  clientId: string;
  session: string;
  user: string;
  auth: Uint8Array;
}

export function hello(h: Partial<Hello>): Hello {
  return {
    major: VERSION_MAJOR,
    minor: VERSION_MINOR,
    flags: 0,
    features: 0,
    maxPayload: 0,
    maxHeaders: 0,
    keepaliveMs: 0,
    name: "",
    clientId: "",
    session: "",
    user: "",
    auth: new Uint8Array(0),
    ...h,
  };
}

export function encodeHello(h: Hello): Uint8Array {
  const strs = [h.name, h.clientId, h.session, h.user].map(encodeUtf8);
  const fields = [...strs, h.auth];
  for (const f of fields) if (f.length > 0xffff) throw new RangeError("HELLO field over 65535 bytes");
  const out = new Uint8Array(20 + fields.reduce((n, f) => n + 2 + f.length, 0));
  const v = new DataView(out.buffer);
  out[0] = h.major;
  out[1] = h.minor;
  v.setUint16(2, h.flags);
  v.setUint32(4, h.features >>> 0);
  v.setUint32(8, h.maxPayload >>> 0);
  v.setUint32(12, h.maxHeaders >>> 0);
  v.setUint32(16, h.keepaliveMs >>> 0);
  let off = 20;
  for (const f of fields) {
    v.setUint16(off, f.length);
    out.set(f, off + 2);
    off += 2 + f.length;
  }
  return out;
}

/** Parses a HELLO body, or returns why it is malformed. */
export function parseHello(p: Uint8Array): Hello | string {
  if (p.length < 20) return "truncated";
  const v = new DataView(p.buffer, p.byteOffset, p.byteLength);
  let off = 20;
  const field = (): Uint8Array | null => {
    if (off + 2 > p.length) return null;
    const n = v.getUint16(off);
    if (off + 2 + n > p.length) return null;
    const f = p.subarray(off + 2, off + 2 + n);
    off += 2 + n;
    return f;
  };
  const strs: string[] = [];
  for (const name of ["name", "client_id", "session", "user"]) {
    const f = field();
    if (f === null) return "truncated";
    const s = decodeUtf8(f);
    if (s === null) return `${name} is not UTF-8`;
    strs.push(s);
  }
  const auth = field();
  if (auth === null) return "truncated";
  return {
    major: p[0] as number,
    minor: p[1] as number,
    flags: v.getUint16(2),
    features: v.getUint32(4),
    maxPayload: v.getUint32(8),
    maxHeaders: v.getUint32(12),
    keepaliveMs: v.getUint32(16),
    name: strs[0] as string,
    clientId: strs[1] as string,
    session: strs[2] as string,
    user: strs[3] as string,
    auth,
  };
}

/** Delivery modes (section 7.2). */
export const Delivery = { AT_MOST_ONCE: 0, AT_LEAST_ONCE: 1 } as const;
export const DELIVERY_NAMES = ["AtMostOnce", "AtLeastOnce"] as const;

/** Slow-consumer policies (section 7.2). */
export const Policy = { SERVER_DEFAULT: 0, BLOCK: 1, DROP_OLDEST: 2, DROP_NEWEST: 3, DISCONNECT: 4 } as const;
export const POLICY_NAMES = ["ServerDefault", "Block", "DropOldest", "DropNewest", "Disconnect"] as const;

/** SUBSCRIBE / REGISTER options (section 7.2). */
export interface SubscribeOptions {
  delivery: number;
  policy: number;
  maxPending: number;
  ackWaitMs: number;
  maxDeliver: number;
  credit: number;
  queue: string;
  /** 1.1: the durable name ("" for none), sent after the queue group only when set. */
  durable: string;
}

export function subscribeOptions(o: Partial<SubscribeOptions> = {}): SubscribeOptions {
  return { delivery: 0, policy: 0, maxPending: 0, ackWaitMs: 0, maxDeliver: 0, credit: 0, queue: "", durable: "", ...o };
}

/** Encodes options: an empty body when every field is at its default (the vectors rely on it). */
export function encodeSubscribeOptions(o: SubscribeOptions): Uint8Array {
  if (
    o.delivery === 0 &&
    o.policy === 0 &&
    o.maxPending === 0 &&
    o.ackWaitMs === 0 &&
    o.maxDeliver === 0 &&
    o.credit === 0 &&
    o.queue === "" &&
    o.durable === ""
  ) {
    return new Uint8Array(0);
  }
  const q = encodeUtf8(o.queue);
  if (q.length > 0xffff) throw new RangeError("queue group over 65535 bytes");
  const d = encodeUtf8(o.durable);
  if (d.length > 255) throw new RangeError("durable name over 255 bytes");
  const out = new Uint8Array(22 + q.length + (d.length > 0 ? 2 + d.length : 0));
  const v = new DataView(out.buffer);
  out[0] = o.delivery;
  out[1] = o.policy;
  v.setUint32(4, o.maxPending >>> 0);
  v.setUint32(8, o.ackWaitMs >>> 0);
  v.setUint32(12, o.maxDeliver >>> 0);
  v.setUint32(16, o.credit >>> 0);
  v.setUint16(20, q.length);
  out.set(q, 22);
  if (d.length > 0) {
    v.setUint16(22 + q.length, d.length);
    out.set(d, 24 + q.length);
  }
  return out;
}

export function parseSubscribeOptions(p: Uint8Array): SubscribeOptions | string {
  if (p.length === 0) return subscribeOptions();
  if (p.length < 22) return "truncated";
  const v = new DataView(p.buffer, p.byteOffset, p.byteLength);
  const delivery = p[0] as number;
  const policy = p[1] as number;
  if (delivery > 1) return "unknown delivery mode";
  if (policy > 4) return "unknown slow-consumer policy";
  const qlen = v.getUint16(20);
  if (22 + qlen > p.length) return "truncated";
  const queue = decodeUtf8(p, 22, 22 + qlen);
  if (queue === null) return "queue is not UTF-8";
  if (hasSpaceOrControl(queue)) return "queue group has whitespace or control characters";
  // 1.1: when anything follows the queue group, it is a whole durable name.
  let durable = "";
  const at = 22 + qlen;
  if (p.length > at) {
    if (at + 2 > p.length) return "truncated";
    const dlen = v.getUint16(at);
    if (at + 2 + dlen > p.length) return "truncated";
    const name = decodeUtf8(p, at + 2, at + 2 + dlen);
    if (name === null) return "durable name is not UTF-8";
    if (hasSpaceOrControl(name)) return "durable name has whitespace or control characters";
    if (dlen > 255) return "durable name is longer than 255 bytes";
    durable = name;
  }
  return {
    delivery,
    policy,
    maxPending: v.getUint32(4),
    ackWaitMs: v.getUint32(8),
    maxDeliver: v.getUint32(12),
    credit: v.getUint32(16),
    queue,
    durable,
  };
}

export function encodeU32(n: number): Uint8Array {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, n >>> 0);
  return out;
}

export function readU32(p: Uint8Array): number {
  return new DataView(p.buffer, p.byteOffset, 4).getUint32(0);
}

/** A HEALTH report (section 7.6). */
export interface HealthReport {
  state: string;
  uptimeMs: number | bigint;
  server: string;
  detail?: string;
}

/** STATS: counter name to value. */
export type StatsReport = Record<string, number | bigint>;

const MSGPACK_OPTS = { useBigInt64: true } as const;

function stringKey(k: unknown): string {
  if (typeof k !== "string") throw new TypeError("map keys must be strings");
  return k;
}

function msgpackMap(p: Uint8Array): Map<string, unknown> | null {
  let v: unknown;
  try {
    v = decodeMsgpack(p, { ...MSGPACK_OPTS, mapKeyConverter: stringKey });
  } catch {
    return null;
  }
  if (v === null || typeof v !== "object" || Array.isArray(v) || v instanceof Uint8Array) return null;
  return new Map(Object.entries(v as Record<string, unknown>));
}

function uint(v: unknown): number | bigint | null {
  if (typeof v === "number") return Number.isInteger(v) && v >= 0 ? v : null;
  if (typeof v === "bigint") return v >= 0n ? (v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v) : null;
  return null;
}

export function parseHealth(p: Uint8Array): HealthReport | string {
  const m = msgpackMap(p);
  if (m === null) return "not a health report map";
  const state = m.get("state");
  const up = uint(m.get("uptime_ms"));
  const server = m.get("server");
  const detail = m.get("detail");
  if (typeof state !== "string" || up === null || typeof server !== "string") return "not a health report map";
  if (state !== "serving" && state !== "not_serving" && state !== "draining") return "unknown health state";
  if (detail !== undefined && typeof detail !== "string") return "not a health report map";
  const r: HealthReport = { state, uptimeMs: up, server };
  if (detail !== undefined) r.detail = detail;
  return r;
}

export function parseStats(p: Uint8Array): StatsReport | string {
  const m = msgpackMap(p);
  if (m === null) return "not a map of counters";
  const out: StatsReport = {};
  for (const [k, v] of m) {
    const n = uint(v);
    if (n === null) return "not a map of counters";
    out[k] = n;
  }
  return out;
}

export function encodeHealth(r: HealthReport): Uint8Array {
  const m: Record<string, unknown> = { state: r.state, uptime_ms: r.uptimeMs, server: r.server };
  if (r.detail !== undefined) m.detail = r.detail;
  return encodeMsgpack(m, MSGPACK_OPTS);
}

export function encodeStats(r: StatsReport): Uint8Array {
  const m: Record<string, unknown> = {};
  for (const k of Object.keys(r).sort()) m[k] = r[k];
  return encodeMsgpack(m, MSGPACK_OPTS);
}
