// The streaming decoder (section 14.2): bytes in, frames or errors out, limits checked on the
// header before anything is buffered for a frame, the check order of the spec.

import {
  ALLOWED_FLAGS,
  DEFAULT_MAX_HEADERS,
  DEFAULT_MAX_PAYLOAD,
  FLAG_NAMES,
  Flag,
  FrameType,
  HEADER_LEN,
  MAX_SUBJECT,
  RESERVED_FLAGS,
  SUBJECT_RULE,
  VERSION_MAJOR,
  frameTypeName,
  isDefinedType,
  needsSid,
} from "./constants.js";
import { type Frame } from "./frame.js";
import { type HeaderEntry, parseHeaders } from "./headers.js";
import { parseHealth, parseHello, parseStats, parseSubscribeOptions } from "./body.js";
import { DecodeError, type DecodeErrorCode } from "./status.js";
import { subjectError } from "./subject.js";
import { decodeUtf8 } from "./utf8.js";

/** Decoder limits; a missing field is the protocol's default. */
export interface Limits {
  maxPayload: number;
  maxHeaders: number;
  maxSubject: number;
}

export function limits(l: Partial<Limits> = {}): Limits {
  return { maxPayload: DEFAULT_MAX_PAYLOAD, maxHeaders: DEFAULT_MAX_HEADERS, maxSubject: MAX_SUBJECT, ...l };
}

/** A decoded frame with its typed body, for the types that have one (section 7). */
export interface DecodedFrame extends Frame {
  body?: unknown;
}

const EMPTY = new Uint8Array(0);
const NO_HEADERS: HeaderEntry[] = [];
const MAGIC_BYTES = [0x4d, 0x49, 0x54, 0x4f];

/**
 * Feed bytes with `push`, take frames with `next` until it returns null ("need more bytes").
 * `next` returns a DecodeError instead of a frame for a bad frame: a non-fatal one has consumed
 * exactly that frame and decoding goes on; after a fatal one every call returns it again.
 * Payloads are views into the pushed chunks when a frame lies within one chunk.
 */
export class Decoder {
  private chunks: Uint8Array[] = [];
  private head = 0; // offset into chunks[0]
  private buffered = 0;
  private discard = 0;
  private failed: DecodeError | null = null;
  private hdr = new Uint8Array(HEADER_LEN);
  private hdrView = new DataView(this.hdr.buffer);
  private validSubjects = new Map<string, number>();
  limits: Limits;

  constructor(l: Partial<Limits> = {}) {
    this.limits = limits(l);
  }

  /** Bytes held, not yet decoded. */
  get pending(): number {
    return this.buffered;
  }

  /** Whether the decoder stands between frames (nothing buffered, nothing left to skip). */
  get atBoundary(): boolean {
    return this.buffered === 0 && this.discard === 0;
  }

  push(chunk: Uint8Array): void {
    if (this.failed !== null || chunk.length === 0) return;
    if (this.discard > 0) {
      const drop = Math.min(this.discard, chunk.length);
      this.discard -= drop;
      if (drop === chunk.length) return;
      chunk = chunk.subarray(drop);
    }
    this.chunks.push(chunk);
    this.buffered += chunk.length;
  }

  /** The next frame, a DecodeError, or null when more bytes are needed. */
  next(): DecodedFrame | DecodeError | null {
    if (this.failed !== null) return this.failed;
    if (this.discard > 0) return null;
    if (this.buffered < HEADER_LEN) {
      if (this.buffered > 0 && !this.magicPrefixOk()) return this.fail("bad_magic", "bad magic: not a mitto frame", 0n);
      return null;
    }
    const h = this.peekHeader();
    const v = this.hdrView;
    for (let i = 0; i < 4; i++) {
      if (h[i] !== MAGIC_BYTES[i]) return this.fail("bad_magic", "bad magic: not a mitto frame", 0n);
    }
    const id = v.getBigUint64(8);
    if (h[4] !== VERSION_MAJOR) return this.fail("unsupported_version", `unsupported protocol version ${h[4]}`, id);
    const subjectLen = v.getUint16(22);
    const headersLen = v.getUint32(24);
    const payloadLen = v.getUint32(28);
    const total = HEADER_LEN + subjectLen + headersLen + payloadLen;
    let over: DecodeError | null = null;
    if (payloadLen > this.limits.maxPayload) {
      over = new DecodeError("payload_too_large", `payload of ${payloadLen} bytes exceeds the limit of ${this.limits.maxPayload}`, id);
    } else if (headersLen > this.limits.maxHeaders) {
      over = new DecodeError("headers_too_large", `headers block of ${headersLen} bytes exceeds the limit of ${this.limits.maxHeaders}`, id);
    } else if (subjectLen > this.limits.maxSubject) {
      over = new DecodeError("subject_too_long", `subject of ${subjectLen} bytes exceeds the limit of ${this.limits.maxSubject}`, id);
    }
    if (over !== null) {
      const now = Math.min(total, this.buffered);
      this.skip(now);
      this.discard = total - now;
      return over;
    }
    if (this.buffered < total) return null;
    const type = h[6] as number;
    const flags = h[5] as number;
    const kind = h[7] as number;
    const aux = v.getUint32(16);
    const status = v.getUint16(20);
    const bytes = this.take(total);
    const err = (code: DecodeErrorCode, why: string) => new DecodeError(code, why, id);

    if (!isDefinedType(type)) return err("unknown_frame_type", `unknown frame type ${frameTypeName(type)}`);
    const name = frameTypeName(type);
    if ((flags & RESERVED_FLAGS) !== 0) {
      return err("reserved_flags", `reserved flag bits set: 0x${(flags & RESERVED_FLAGS).toString(16).padStart(2, "0")}`);
    }
    const bad = flags & ~(ALLOWED_FLAGS[type] as number);
    if (bad !== 0) {
      const bit = 31 - Math.clz32(bad & -bad);
      return err("flag_not_allowed", `flag ${FLAG_NAMES[bit]} is not valid on ${name}`);
    }
    if (kind >= 6 && kind <= 127) return err("reserved_kind", `reserved message kind ${kind}`);
    if (aux === 0 && needsSid(type)) return err("missing_subscription_id", `${name} requires a non-zero subscription id`);

    const rule = SUBJECT_RULE[type] as number;
    let subject = "";
    if (rule === 0 && subjectLen > 0) return err("unexpected_subject", `${name} must not carry a subject`);
    if (rule !== 0) {
      if (subjectLen === 0) return err("missing_subject", `${name} requires a subject`);
      const s = decodeUtf8(bytes, HEADER_LEN, HEADER_LEN + subjectLen);
      if (s === null) return err("subject_not_utf8", "subject is not valid UTF-8");
      // Most traffic repeats a few subjects: remember the ones already found valid.
      if (this.validSubjects.get(s) !== rule) {
        const why = subjectError(s, rule === 2);
        if (why !== null) return err("invalid_subject", `invalid subject: ${why}`);
        if (this.validSubjects.size >= 1024) this.validSubjects.clear();
        this.validSubjects.set(s, rule);
      }
      subject = s;
    }
    let headers = NO_HEADERS;
    const hStart = HEADER_LEN + subjectLen;
    if (headersLen > 0) {
      const parsed = parseHeaders(bytes, hStart, hStart + headersLen);
      if (typeof parsed === "string") return err("malformed_headers", `malformed headers: ${parsed}`);
      headers = parsed;
    }
    const payload = payloadLen === 0 ? EMPTY : bytes.subarray(hStart + headersLen, total);
    const f: DecodedFrame = { type, flags, kind, id, aux, status, subject, headers, payload };
    const body = parseBody(type, flags, payload);
    if (typeof body === "string") return err("malformed_body", `malformed ${name} body: ${body}`);
    if (body !== undefined) f.body = body.value;
    if ((flags & Flag.COMPRESSED) !== 0) {
      if (payloadLen < 4) return err("decompression", "compressed payload is corrupt: missing length prefix");
      const n = new DataView(payload.buffer, payload.byteOffset, 4).getUint32(0);
      if (n > this.limits.maxPayload) {
        return err("payload_too_large", `payload of ${n} bytes exceeds the limit of ${this.limits.maxPayload}`);
      }
    }
    return f;
  }

  /** End of stream: a `truncated` error if a frame was left unfinished, else null. */
  end(): DecodeError | null {
    if (this.failed !== null) return this.failed;
    if (this.buffered > 0 || this.discard > 0) {
      const left = this.buffered > 0 ? this.buffered : this.discard;
      return this.fail("truncated", `stream ended inside a frame (${left} bytes left over)`, 0n);
    }
    return null;
  }

  private fail(code: DecodeErrorCode, why: string, id: bigint): DecodeError {
    this.failed = new DecodeError(code, why, id);
    this.chunks = [];
    this.head = 0;
    this.buffered = 0;
    return this.failed;
  }

  private magicPrefixOk(): boolean {
    let i = 0;
    for (let c = 0; c < this.chunks.length && i < 4; c++) {
      const ch = this.chunks[c] as Uint8Array;
      for (let j = c === 0 ? this.head : 0; j < ch.length && i < 4; j++, i++) {
        if (ch[j] !== MAGIC_BYTES[i]) return false;
      }
    }
    return true;
  }

  /** The 32-byte header at the front, in `this.hdr`, without consuming it. */
  private peekHeader(): Uint8Array {
    let i = 0;
    for (let c = 0; i < HEADER_LEN; c++) {
      const ch = this.chunks[c] as Uint8Array;
      const from = c === 0 ? this.head : 0;
      const n = Math.min(ch.length - from, HEADER_LEN - i);
      this.hdr.set(ch.subarray(from, from + n), i);
      i += n;
    }
    return this.hdr;
  }

  /** Removes `n` buffered bytes: a view when they lie in one chunk, else one copy. */
  private take(n: number): Uint8Array {
    const first = this.chunks[0] as Uint8Array;
    let out: Uint8Array;
    if (first.length - this.head >= n) {
      out = first.subarray(this.head, this.head + n);
      this.skip(n);
      return out;
    }
    out = new Uint8Array(n);
    let i = 0;
    while (i < n) {
      const ch = this.chunks[0] as Uint8Array;
      const k = Math.min(ch.length - this.head, n - i);
      out.set(ch.subarray(this.head, this.head + k), i);
      i += k;
      this.skip(k);
    }
    return out;
  }

  private skip(n: number): void {
    this.buffered -= n;
    while (n > 0) {
      const ch = this.chunks[0] as Uint8Array;
      const left = ch.length - this.head;
      if (n < left) {
        this.head += n;
        return;
      }
      n -= left;
      this.chunks.shift();
      this.head = 0;
    }
    if (this.chunks.length > 0 && this.head === (this.chunks[0] as Uint8Array).length) {
      this.chunks.shift();
      this.head = 0;
    }
  }
}

/** Validates the body of a type that has one: undefined (no body), the value, or why not. */
function parseBody(type: number, flags: number, p: Uint8Array): { value: unknown } | string | undefined {
  switch (type) {
    case FrameType.HELLO: {
      const h = parseHello(p);
      return typeof h === "string" ? h : { value: h };
    }
    case FrameType.SUBSCRIBE:
    case FrameType.REGISTER: {
      const o = parseSubscribeOptions(p);
      return typeof o === "string" ? o : { value: o };
    }
    case FrameType.UNSUBSCRIBE:
    case FrameType.NACK:
      if (p.length === 0) return { value: null };
      if (p.length !== 4) return "body must be empty or 4 bytes";
      return { value: readU32(p) };
    case FrameType.CREDIT:
      if (p.length !== 4) return "body must be 4 bytes";
      return { value: readU32(p) };
    case FrameType.ERROR:
    case FrameType.CLOSE: {
      const r = decodeUtf8(p);
      return r === null ? "reason is not UTF-8" : { value: r };
    }
    case FrameType.HEALTH:
    case FrameType.STATS: {
      if ((flags & Flag.REPLY) === 0) return p.length === 0 ? undefined : "a query carries no body";
      const r = type === FrameType.HEALTH ? parseHealth(p) : parseStats(p);
      return typeof r === "string" ? r : { value: r };
    }
    default:
      return undefined;
  }
}

function readU32(p: Uint8Array): number {
  return ((p[0] as number) * 0x1000000 + (((p[1] as number) << 16) | ((p[2] as number) << 8) | (p[3] as number))) >>> 0;
}
