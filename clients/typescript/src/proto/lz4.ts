// Decompression of COMPRESSED payloads (section 12): a 4-byte length prefix, then one raw LZ4
// block. The block decoder is written here, bounds-checked on every read and write, because the
// JavaScript LZ4 packages decode blocks without checking them against a peer's lies.

import { Status, MittoError } from "./status.js";

function corrupt(why: string): MittoError {
  return new MittoError(Status.BAD_REQUEST, `compressed payload is corrupt: ${why}`);
}

/** The length prefix of a compressed payload (the decoder already checked it has 4 bytes). */
export function uncompressedLength(p: Uint8Array): number {
  return new DataView(p.buffer, p.byteOffset, 4).getUint32(0);
}

/** Decompresses a COMPRESSED payload; `maxPayload` bounds what the prefix may ask for. */
export function decompress(p: Uint8Array, maxPayload: number): Uint8Array {
  if (p.length < 4) throw corrupt("missing length prefix");
  const n = uncompressedLength(p);
  if (n > maxPayload) {
    throw new MittoError(Status.PAYLOAD_TOO_LARGE, `payload of ${n} bytes exceeds the limit of ${maxPayload}`);
  }
  const out = new Uint8Array(n);
  const end = decodeBlock(p, 4, out);
  if (end !== n) throw corrupt("length prefix does not match the block");
  return out;
}

/** Decodes the LZ4 block `src[from..]` into `out`; returns the bytes written. */
function decodeBlock(src: Uint8Array, from: number, out: Uint8Array): number {
  let s = from;
  let d = 0;
  const send = src.length;
  if (s >= send) throw corrupt("invalid LZ4 block");
  for (;;) {
    const token = src[s++] as number;
    let lit = token >>> 4;
    if (lit === 15) {
      for (;;) {
        if (s >= send) throw corrupt("invalid LZ4 block");
        const b = src[s++] as number;
        lit += b;
        if (b !== 255) break;
      }
    }
    if (s + lit > send) throw corrupt("invalid LZ4 block");
    if (d + lit > out.length) throw corrupt("length prefix does not match the block");
    out.set(src.subarray(s, s + lit), d);
    s += lit;
    d += lit;
    if (s === send) return d; // the last sequence has literals only
    if (s + 2 > send) throw corrupt("invalid LZ4 block");
    const offset = (src[s] as number) | ((src[s + 1] as number) << 8);
    s += 2;
    if (offset === 0 || offset > d) throw corrupt("invalid LZ4 block");
    let len = (token & 15) + 4;
    if ((token & 15) === 15) {
      for (;;) {
        if (s >= send) throw corrupt("invalid LZ4 block");
        const b = src[s++] as number;
        len += b;
        if (b !== 255) break;
      }
    }
    if (d + len > out.length) throw corrupt("length prefix does not match the block");
    let m = d - offset;
    if (offset >= len) {
      out.copyWithin(d, m, m + len);
      d += len;
    } else {
      for (let i = 0; i < len; i++) out[d++] = out[m++] as number;
    }
  }
}
