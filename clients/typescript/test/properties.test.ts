// Property tests of the codec: round trips, every split, garbage never throws or hangs.

import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  DecodeError,
  Decoder,
  type DecodedFrame,
  type Frame,
  FrameType,
  Headers,
  encodeFrame,
  encodeHello,
  encodeSubscribeOptions,
  frame,
  hello,
  parseHello,
  parseSubscribeOptions,
  subscribeOptions,
  isValidSubject,
} from "../src/proto/index.js";

const token = fc.stringMatching(/^[a-zA-Z0-9_\-:é東]{1,8}$/);
const subject = fc.array(token, { minLength: 1, maxLength: 5 }).map((t) => t.join("."));
const bytes = fc.uint8Array({ maxLength: 300 });
const headerPair = fc.tuple(
  fc.oneof(fc.constantFrom("content-type", "reply-to", "correlation-id", "traceparent"), fc.stringMatching(/^x-[a-z]{1,10}$/)),
  fc.string({ maxLength: 40 }),
);

const message = fc.record({
  type: fc.constantFrom(FrameType.PUBLISH, FrameType.REQUEST, FrameType.EVENT),
  id: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
  aux: fc.integer({ min: 1, max: 0xffffffff }),
  kind: fc.oneof(fc.integer({ min: 0, max: 5 }), fc.integer({ min: 128, max: 255 })),
  urgent: fc.boolean(),
  subject,
  headers: fc.array(headerPair, { maxLength: 4 }),
  payload: bytes,
});

function decodeOne(chunks: Uint8Array[]): DecodedFrame {
  const d = new Decoder();
  const out: DecodedFrame[] = [];
  for (const c of chunks) {
    d.push(c);
    for (let r = d.next(); r !== null; r = d.next()) {
      if (r instanceof DecodeError) throw r;
      out.push(r);
    }
  }
  expect(out).toHaveLength(1);
  return out[0] as DecodedFrame;
}

describe("codec properties", () => {
  it("messages round trip, split anywhere", () => {
    fc.assert(
      fc.property(message, fc.nat(), (m, at) => {
        const f: Frame = frame({
          type: m.type,
          id: m.id,
          aux: m.aux,
          kind: m.kind,
          flags: m.urgent ? 0x04 : 0,
          subject: m.subject,
          headers: new Headers(m.headers).entries,
          payload: m.payload,
        });
        const enc = encodeFrame(f);
        const cut = at % (enc.length + 1);
        const g = decodeOne([enc.slice(0, cut), enc.slice(cut)]);
        expect(g.id).toBe(m.id);
        expect(g.subject).toBe(m.subject);
        expect(g.kind).toBe(m.kind);
        expect([...g.payload]).toEqual([...m.payload]);
        expect(g.headers.map((h) => h.key)).toEqual(f.headers.map((h) => h.key));
        expect(encodeFrame(g)).toEqual(enc);
      }),
      { numRuns: 300 },
    );
  });

  it("HELLO and subscribe bodies round trip", () => {
    fc.assert(
      fc.property(
        fc.record({
          features: fc.integer({ min: 0, max: 0xff }),
          maxPayload: fc.nat(),
          keepaliveMs: fc.nat(),
          name: fc.string(),
          clientId: fc.string(),
          session: fc.string(),
          user: fc.string(),
          auth: fc.uint8Array({ maxLength: 40 }),
        }),
        (h) => {
          const enc = encodeHello(hello(h));
          expect(encodeHello(parseHello(enc) as never)).toEqual(enc);
        },
      ),
    );
    fc.assert(
      fc.property(
        fc.record({
          delivery: fc.integer({ min: 0, max: 1 }),
          policy: fc.integer({ min: 0, max: 4 }),
          maxPending: fc.nat(),
          credit: fc.nat(),
          queue: fc.stringMatching(/^[a-z]{0,10}$/),
        }),
        (o) => {
          const opts = subscribeOptions(o);
          expect(parseSubscribeOptions(encodeSubscribeOptions(opts))).toEqual(opts);
        },
      ),
    );
  });

  it("garbage never throws and ends with an error or need-more", () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 80 }), { maxLength: 6 }), fc.boolean(), (chunks, magic) => {
        const d = new Decoder({ maxPayload: 1024 });
        if (magic) d.push(new Uint8Array([0x4d, 0x49, 0x54, 0x4f, 0x01]));
        let steps = 0;
        for (const c of chunks) {
          d.push(c);
          for (let r = d.next(); r !== null; r = d.next()) {
            if (++steps > 1000) throw new Error("the decoder does not progress");
            if (r instanceof DecodeError && r.fatal) return;
          }
        }
        const e = d.end();
        if (e !== null) expect(e).toBeInstanceOf(DecodeError);
      }),
      { numRuns: 2000 },
    );
  });

  it("generated subjects are valid literals", () => {
    fc.assert(fc.property(subject, (s) => isValidSubject(s)));
  });
});
