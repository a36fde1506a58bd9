// The conformance vectors of spec/vectors, valid and invalid, whole and split at every byte.

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import {
  DELIVERY_NAMES,
  type DecodedFrame,
  DecodeError,
  Decoder,
  FEATURE_NAMES,
  FLAG_NAMES,
  type Frame,
  type HeaderEntry,
  type Hello,
  POLICY_NAMES,
  type SubscribeOptions,
  decompress,
  encodeFrame,
  encodeHealth,
  encodeHello,
  encodeStats,
  encodeSubscribeOptions,
  frameTypeName,
  frameTypeOf,
  fromHex,
  limits,
  statusName,
  toHex,
} from "../src/proto/index.js";

const dir = fileURLToPath(new URL("../../../spec/vectors/", import.meta.url));
const load = (f: string) => JSON.parse(readFileSync(dir + f, "utf8"));
const frames = load("frames.json");
const invalid = load("invalid.json");

interface VLimits {
  max_payload?: number;
  max_headers?: number;
  max_subject?: number;
}
const toLimits = (l?: VLimits) =>
  limits({
    ...(l?.max_payload !== undefined && { maxPayload: l.max_payload }),
    ...(l?.max_headers !== undefined && { maxHeaders: l.max_headers }),
    ...(l?.max_subject !== undefined && { maxSubject: l.max_subject }),
  });

function decodeAll(chunks: Uint8Array[], l?: VLimits): (DecodedFrame | DecodeError)[] {
  const d = new Decoder(toLimits(l));
  const out: (DecodedFrame | DecodeError)[] = [];
  for (const c of chunks) {
    d.push(c);
    for (let r = d.next(); r !== null; r = d.next()) {
      out.push(r);
      if (r instanceof DecodeError && r.fatal) return out;
    }
  }
  return out;
}

function flagNames(flags: number): string[] {
  return FLAG_NAMES.filter((_, i) => (flags & (1 << i)) !== 0);
}

function frameJson(f: Frame) {
  return {
    type: frameTypeName(f.type),
    flags: flagNames(f.flags),
    kind: f.kind,
    id: f.id.toString(),
    aux: f.aux,
    status: f.status,
    subject: f.subject,
    headers: f.headers.map((h: HeaderEntry) => ({ key: h.key, value_hex: toHex(h.value) })),
    payload_hex: toHex(f.payload),
  };
}

function bodyJson(f: DecodedFrame): unknown {
  const b = f.body;
  switch (frameTypeName(f.type)) {
    case "HELLO": {
      const h = b as Hello;
      return {
        major: h.major,
        minor: h.minor,
        flags: h.flags,
        features: h.features,
        feature_names: FEATURE_NAMES.filter((_, i) => (h.features & (1 << i)) !== 0),
        max_payload: h.maxPayload,
        max_headers: h.maxHeaders,
        keepalive_ms: h.keepaliveMs,
        name: h.name,
        client_id: h.clientId,
        session: h.session,
        user: h.user,
        auth_hex: toHex(h.auth),
      };
    }
    case "SUBSCRIBE":
    case "REGISTER": {
      const o = b as SubscribeOptions;
      return {
        delivery: DELIVERY_NAMES[o.delivery],
        policy: POLICY_NAMES[o.policy],
        max_pending: o.maxPending,
        ack_wait_ms: o.ackWaitMs,
        max_deliver: o.maxDeliver,
        credit: o.credit,
        queue: o.queue === "" ? null : o.queue,
        durable: o.durable === "" ? null : o.durable,
      };
    }
    case "UNSUBSCRIBE":
      return { after: b };
    case "NACK":
      return { delay_ms: b };
    case "CREDIT":
      return { credit: b };
    case "ERROR":
    case "CLOSE":
      return { reason: b };
    case "HEALTH": {
      if (b === undefined) return undefined;
      const h = b as { state: string; uptimeMs: number; server: string; detail?: string };
      return { state: h.state, uptime_ms: h.uptimeMs, server: h.server, ...(h.detail !== undefined && { detail: h.detail }) };
    }
    case "STATS":
      return b;
    default:
      return undefined;
  }
}

describe("frames.json", () => {
  for (const v of frames.vectors) {
    it(v.name, () => {
      const bytes = fromHex(v.hex);
      const got = decodeAll([bytes], v.limits);
      expect(got).toHaveLength(1);
      const f = got[0] as DecodedFrame;
      expect(f).not.toBeInstanceOf(DecodeError);
      expect(frameJson(f)).toEqual(v.frame);
      if (v.body !== undefined) expect(bodyJson(f)).toEqual(v.body);
      if (v.decompressed_hex !== undefined) {
        expect(toHex(decompress(f.payload, toLimits(v.limits).maxPayload))).toBe(v.decompressed_hex);
      }
      // Re-encoding the decoded fields gives the same bytes.
      expect(toHex(encodeFrame(f))).toBe(v.hex);
      // Every split point gives the same frame.
      for (let i = 0; i <= bytes.length; i++) {
        const split = decodeAll([bytes.slice(0, i), bytes.slice(i)], v.limits);
        expect(split).toHaveLength(1);
        expect(frameJson(split[0] as Frame)).toEqual(v.frame);
      }
    });
  }

  it("typed bodies re-encode byte for byte", () => {
    for (const v of frames.vectors) {
      const f = decodeAll([fromHex(v.hex)], v.limits)[0] as DecodedFrame;
      const name = frameTypeName(f.type);
      let enc: Uint8Array | undefined;
      if (name === "HELLO") enc = encodeHello(f.body as Hello);
      if (name === "SUBSCRIBE" || name === "REGISTER") enc = encodeSubscribeOptions(f.body as SubscribeOptions);
      if (name === "HEALTH" && f.body !== undefined) enc = encodeHealth(f.body as never);
      if (name === "STATS" && f.body !== undefined) enc = encodeStats(f.body as never);
      if (enc !== undefined) expect(toHex(enc), v.name).toBe(v.frame.payload_hex);
    }
  });

  it("the whole stream byte by byte", () => {
    const vs = frames.vectors.filter((v: { limits?: unknown }) => v.limits === undefined);
    const all = vs.flatMap((v: { hex: string }) => [...fromHex(v.hex)]);
    const d = new Decoder();
    const got: DecodedFrame[] = [];
    for (const b of all) {
      d.push(new Uint8Array([b]));
      for (let r = d.next(); r !== null; r = d.next()) {
        expect(r).not.toBeInstanceOf(DecodeError);
        got.push(r as DecodedFrame);
      }
    }
    expect(d.end()).toBeNull();
    expect(got.map(frameJson)).toEqual(vs.map((v: { frame: unknown }) => v.frame));
  });

  it("covers every frame type and flag", () => {
    const types = new Set(frames.vectors.map((v: { frame: { type: string } }) => v.frame.type));
    for (let t = 1; t <= 0x14; t++) expect(types.has(frameTypeName(t))).toBe(true);
    expect(frameTypeOf("UNREGISTER")).toBe(0x14);
  });
});

const PING_77 = "4d49544f0100080000000000000000" + "4d" + "0".repeat(32);

describe("invalid.json", () => {
  for (const v of invalid.vectors) {
    it(v.name, () => {
      const bytes = fromHex(v.hex);
      const check = (e: unknown) => {
        expect(e).toBeInstanceOf(DecodeError);
        const err = e as DecodeError;
        expect(err.code).toBe(v.error.code);
        expect(err.status).toBe(v.error.status);
        expect(statusName(err.status)).toBe(v.error.status_name);
        expect(err.fatal).toBe(v.error.fatal);
        expect(err.id.toString()).toBe(v.error.id);
      };
      for (let i = 0; i <= bytes.length; i++) {
        const d = new Decoder(toLimits(v.limits));
        d.push(bytes.slice(0, i));
        let r = d.next();
        d.push(bytes.slice(i));
        if (r === null) r = d.next();
        if (v.eof) {
          expect(r).toBeNull();
          r = d.end();
        }
        check(r);
        if (v.error.fatal) {
          d.push(fromHex(PING_77));
          check(d.next());
        } else {
          // The bad frame (or the header of an oversize one) is consumed: a frame sent after
          // the whole declared extent decodes normally.
          const view = new DataView(bytes.buffer);
          const declared = bytes.length >= 32 ? 32 + view.getUint16(22) + view.getUint32(24) + view.getUint32(28) : 0;
          if (declared === bytes.length) {
            d.push(fromHex(PING_77));
            const next = d.next() as Frame;
            expect(next).not.toBeInstanceOf(DecodeError);
            expect(next.id).toBe(77n);
          }
        }
      }
    });
  }
});
