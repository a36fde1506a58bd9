// Bad input from a peer over TCP and WebSocket: garbage, a text message, a truncated frame, an
// oversize length. Each gives a clear error (status and reason), and nothing hangs.

import { afterEach, describe, expect, it } from "vitest";
import { type Client, MittoError, Status, connect } from "../src/index.js";
import { FrameType, encodeFrame, frame } from "../src/proto/index.js";
import { type Fake, fakeTcp, fakeWs, helloReply } from "./support/fake.js";

const fakes: Fake[] = [];
const clients: Client[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) await c.close();
  for (const f of fakes.splice(0)) await f.close();
});
const track = <T extends Fake>(f: T): T => (fakes.push(f), f);

const GARBAGE = new TextEncoder().encode("HTTP/1.1 400 Bad Request\r\n\r\n");
/** A header declaring a 4 GiB payload, and nothing after it. */
const OVERSIZE = encodeFrame(frame({ type: FrameType.EVENT, aux: 1, subject: "a", id: 9n })).slice(0, 32);
new DataView(OVERSIZE.buffer).setUint32(28, 0xffffffff);
new DataView(OVERSIZE.buffer).setUint16(22, 0);

const opts = { timeoutMs: 3000, reconnect: false };

describe.each([
  ["tcp", fakeTcp],
  ["ws", (on: Parameters<typeof fakeTcp>[0]) => fakeWs(on)],
] as const)("handshake over %s", (_name, fake) => {
  it("garbage instead of a HELLO reply: PROTOCOL_ERROR, bad magic", async () => {
    const f = track(await fake((p) => p.send(GARBAGE)));
    const e = await connect(f.url, opts).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(MittoError);
    expect(e).toMatchObject({ status: Status.PROTOCOL_ERROR });
    expect(String(e)).toMatch(/bad magic/);
  });

  it("a truncated frame, then the end: PROTOCOL_ERROR", async () => {
    const f = track(
      await fake((p) => {
        p.send(helloReply().slice(0, 40));
        setTimeout(() => p.end(), 20);
      }),
    );
    const e = await connect(f.url, opts).catch((x: unknown) => x);
    expect(e).toMatchObject({ status: Status.PROTOCOL_ERROR });
  });

  it("an oversize length: PAYLOAD_TOO_LARGE from the header alone", async () => {
    const f = track(await fake((p) => p.send(OVERSIZE)));
    const e = await connect(f.url, opts).catch((x: unknown) => x);
    expect(e).toMatchObject({ status: Status.PAYLOAD_TOO_LARGE });
  });

  it("a server that never answers: TIMEOUT", async () => {
    const f = track(await fake(() => {}));
    const e = await connect(f.url, { ...opts, timeoutMs: 300 }).catch((x: unknown) => x);
    expect(e).toMatchObject({ status: Status.TIMEOUT });
  });

  it("ERROR then CLOSE: the server's status and reason", async () => {
    const f = track(
      await fake((p, fr) => {
        p.send(encodeFrame(frame({ type: FrameType.ERROR, id: fr.id, status: Status.UNAUTHORIZED, payload: new TextEncoder().encode("who are you") })));
        p.send(encodeFrame(frame({ type: FrameType.CLOSE, status: Status.UNAUTHORIZED })));
      }),
    );
    const e = await connect(f.url, opts).catch((x: unknown) => x);
    expect(e).toMatchObject({ status: Status.UNAUTHORIZED, reason: "who are you" });
  });
});

describe("after the handshake", () => {
  it("TCP: garbage closes the client with PROTOCOL_ERROR after ERROR + CLOSE to the peer; calls fail", async () => {
    let peer: { received: { type: number; status: number }[]; send: (b: Uint8Array) => void } | undefined;
    const f = track(
      await fakeTcp((p, fr) => {
        peer = p;
        if (fr.type === FrameType.HELLO) p.send(helloReply(fr.id));
        if (fr.type === FrameType.REQUEST) p.send(GARBAGE);
      }),
    );
    const c = await connect(f.url, opts);
    clients.push(c);
    await expect(c.request("x.y", "z")).rejects.toMatchObject({ status: Status.UNAVAILABLE });
    expect(await c.closed).toMatchObject({ status: Status.PROTOCOL_ERROR });
    await new Promise((r) => setTimeout(r, 50));
    const kinds = peer!.received.map((x) => x.type);
    expect(kinds).toContain(FrameType.ERROR);
    expect(kinds[kinds.length - 1]).toBe(FrameType.CLOSE);
  });

  it("TCP: an oversize frame is skipped as it arrives; the connection goes on", async () => {
    const f = track(
      await fakeTcp((p, fr) => {
        if (fr.type === FrameType.HELLO) p.send(helloReply(fr.id, { maxPayload: 1024 }));
        if (fr.type === FrameType.SUBSCRIBE) {
          p.send(encodeFrame(frame({ type: FrameType.ACK, id: fr.id })));
          const big = encodeFrame(frame({ type: FrameType.EVENT, id: 1n, aux: fr.aux, subject: "big", payload: new Uint8Array(5000) }));
          for (let i = 0; i < big.length; i += 700) p.send(big.subarray(i, i + 700));
          p.send(encodeFrame(frame({ type: FrameType.EVENT, id: 2n, aux: fr.aux, subject: "small", payload: new Uint8Array([1]) })));
        }
        if (fr.type === FrameType.PING) p.send(encodeFrame(frame({ type: FrameType.PONG, id: fr.id })));
      }),
    );
    const c = await connect(f.url, { ...opts, maxPayload: 1024 });
    clients.push(c);
    const sub = c.subscribe("x.>");
    await sub.ready;
    const m = await sub.next();
    expect(m?.subject).toBe("small");
    await c.flush();
    expect(c.isClosed).toBe(false);
  });

  it("WebSocket: a text message closes with 1003 and PROTOCOL_ERROR", async () => {
    const f = track(
      await fakeWs((p, fr) => {
        if (fr.type === FrameType.HELLO) p.send(helloReply(fr.id));
        if (fr.type === FrameType.PING) p.send("PONG, in text");
      }),
    );
    const c = await connect(f.url, opts);
    clients.push(c);
    await expect(c.flush()).rejects.toBeInstanceOf(MittoError);
    const why = await c.closed;
    expect(why).toMatchObject({ status: Status.PROTOCOL_ERROR });
    expect(why?.reason).toMatch(/text message/);
    await new Promise((r) => setTimeout(r, 100));
    expect(f.peers[0]?.closeCode).toBe(1003);
  });

  it("WebSocket: a message that ends inside a frame is a protocol error", async () => {
    const f = track(
      await fakeWs((p, fr) => {
        if (fr.type === FrameType.HELLO) p.send(helloReply(fr.id));
        if (fr.type === FrameType.PING) p.send(encodeFrame(frame({ type: FrameType.PONG, id: fr.id, payload: new Uint8Array(10) })).slice(0, 35));
      }),
    );
    const c = await connect(f.url, opts);
    clients.push(c);
    await expect(c.flush()).rejects.toBeInstanceOf(MittoError);
    expect(await c.closed).toMatchObject({ status: Status.PROTOCOL_ERROR });
  });

  it("WebSocket: several whole frames in one message", async () => {
    const f = track(
      await fakeWs((p, fr) => {
        if (fr.type === FrameType.HELLO) p.send(helloReply(fr.id));
        if (fr.type === FrameType.SUBSCRIBE) {
          const parts = [
            encodeFrame(frame({ type: FrameType.ACK, id: fr.id })),
            encodeFrame(frame({ type: FrameType.EVENT, id: 1n, aux: fr.aux, subject: "a.b", payload: new Uint8Array([1]) })),
            encodeFrame(frame({ type: FrameType.EVENT, id: 2n, aux: fr.aux, subject: "a.c", payload: new Uint8Array([2]) })),
          ];
          const all = new Uint8Array(parts.reduce((n, x) => n + x.length, 0));
          let o = 0;
          for (const x of parts) all.set(x, (o += x.length) - x.length);
          p.send(all);
        }
      }),
    );
    const c = await connect(f.url, opts);
    clients.push(c);
    const sub = c.subscribe("a.>");
    await sub.ready;
    expect((await sub.next())?.data[0]).toBe(1);
    expect((await sub.next())?.data[0]).toBe(2);
    expect(f.peers[0]!.received[0]!.type).toBe(FrameType.HELLO);
  });

  it("WebSocket: a server without the mitto.v1 subprotocol is refused", async () => {
    const f = track(await fakeWs(() => {}, { protocol: false }));
    const e = await connect(f.url, opts).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(MittoError);
  });
});
