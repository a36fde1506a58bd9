// A frame as values, and its encoding (sections 1.2 and 2).

import { HEADER_LEN, MAGIC, VERSION_MAJOR } from "./constants.js";
import { type HeaderEntry, headersLength, writeHeaders } from "./headers.js";
import { encodeUtf8 } from "./utf8.js";

/** One decoded or to-be-encoded frame. */
export interface Frame {
  type: number;
  flags: number;
  kind: number;
  id: bigint;
  aux: number;
  status: number;
  /** "" when the frame has none. */
  subject: string;
  headers: HeaderEntry[];
  /** As on the wire (still compressed when COMPRESSED is set); a view, not a copy, when decoded. */
  payload: Uint8Array;
}

const EMPTY = new Uint8Array(0);
const NO_HEADERS: HeaderEntry[] = [];

export function frame(f: Partial<Frame> & { type: number }): Frame {
  return {
    flags: 0,
    kind: 0,
    id: 0n,
    aux: 0,
    status: 0,
    subject: "",
    headers: NO_HEADERS,
    payload: EMPTY,
    ...f,
  };
}

const subjectCache = new Map<string, Uint8Array>();

/** The UTF-8 bytes of a subject, remembered for the subjects a program uses again and again. */
export function subjectBytes(s: string): Uint8Array {
  let b = subjectCache.get(s);
  if (b === undefined) {
    b = encodeUtf8(s);
    if (subjectCache.size >= 4096) subjectCache.clear();
    subjectCache.set(s, b);
  }
  return b;
}

/** Bytes `f` takes on the wire. */
export function encodedLength(f: Frame): number {
  return HEADER_LEN + subjectBytes(f.subject).length + headersLength(f.headers) + f.payload.length;
}

/** Writes `f` into `out` at `off` (which must have room for `encodedLength(f)`); returns the end. */
export function encodeInto(f: Frame, out: Uint8Array, view: DataView, off: number): number {
  const subj = f.subject.length === 0 ? EMPTY : subjectBytes(f.subject);
  const hlen = f.headers.length === 0 ? 0 : headersLength(f.headers);
  out.set(MAGIC, off);
  out[off + 4] = VERSION_MAJOR;
  out[off + 5] = f.flags;
  out[off + 6] = f.type;
  out[off + 7] = f.kind;
  view.setBigUint64(off + 8, f.id);
  view.setUint32(off + 16, f.aux >>> 0);
  view.setUint16(off + 20, f.status);
  view.setUint16(off + 22, subj.length);
  view.setUint32(off + 24, hlen);
  view.setUint32(off + 28, f.payload.length);
  let o = off + HEADER_LEN;
  if (subj.length > 0) {
    out.set(subj, o);
    o += subj.length;
  }
  if (hlen > 0) o = writeHeaders(out, view, o, f.headers);
  if (f.payload.length > 0) {
    out.set(f.payload, o);
    o += f.payload.length;
  }
  return o;
}

/** Encodes one frame into a new buffer. */
export function encodeFrame(f: Frame): Uint8Array {
  const out = new Uint8Array(encodedLength(f));
  encodeInto(f, out, new DataView(out.buffer), 0);
  return out;
}
