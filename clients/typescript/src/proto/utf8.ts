// UTF-8 text: an ASCII fast path (subjects and header names usually are) over TextDecoder /
// TextEncoder, and strict validation (invalid UTF-8 from a peer is an error, never replaced).

const strict = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const encoder = new TextEncoder();

/** Decodes `b[start..end)` as UTF-8, or returns null if it is not valid UTF-8. */
export function decodeUtf8(b: Uint8Array, start = 0, end = b.length): string | null {
  const n = end - start;
  if (n <= 64) {
    let s = "";
    let i = start;
    for (; i < end; i++) {
      const c = b[i] as number;
      if (c >= 0x80) break;
      s += String.fromCharCode(c);
    }
    if (i === end) return s;
  }
  try {
    return strict.decode(b.subarray(start, end));
  } catch {
    return null;
  }
}

/** The UTF-8 bytes of `s`. */
export function encodeUtf8(s: string): Uint8Array {
  const n = s.length;
  if (n <= 64) {
    const out = new Uint8Array(n);
    let i = 0;
    for (; i < n; i++) {
      const c = s.charCodeAt(i);
      if (c >= 0x80) break;
      out[i] = c;
    }
    if (i === n) return out;
  }
  return encoder.encode(s);
}

/** Lower-case hex of bytes. */
export function toHex(b: Uint8Array): string {
  let s = "";
  for (const x of b) s += x.toString(16).padStart(2, "0");
  return s;
}

/** Bytes of a hex string (even length, no separators). */
export function fromHex(h: string): Uint8Array {
  const out = new Uint8Array(h.length >> 1);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(h.substr(i * 2, 2), 16);
  return out;
}
