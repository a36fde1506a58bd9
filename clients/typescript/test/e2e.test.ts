// End to end against a real `mitto server`: pub/sub, acknowledged delivery and request/reply on
// TCP and WebSocket, the rest on TCP; Unix sockets too (TLS: e2e-security.test.ts).

import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type Client, Codec, MittoError, Status, connect } from "../src/index.js";
import { type Broker, startBroker, until } from "./support/broker.js";

let broker: Broker;
let tcp: string;
let unix: string;
let ws: string;

beforeAll(async () => {
  broker = await startBroker(["tcp://127.0.0.1:0", "unix://$DIR/mitto.sock", "ws://127.0.0.1:0/mitto"]);
  [tcp, unix, ws] = broker.urls as [string, string, string];
});

/** The transports the suites below run on. */
const NETS: [string, () => string][] = [
  ["tcp", () => tcp],
  ["ws", () => ws],
];
afterAll(async () => broker?.stop());

const clients: Client[] = [];
async function clientAt(url: string, opts = {}): Promise<Client> {
  const c = await connect(url, opts);
  clients.push(c);
  return c;
}
const client = (url = tcp, opts = {}) => clientAt(url, opts);
// Each test's clients go with it: the suites run on each transport against one broker, and a
// queue group member or service left from a run on another transport would take its share.
afterEach(async () => {
  for (const c of clients.splice(0)) await c.close();
});

describe.each([
  ["tcp", () => tcp],
  ["unix", () => unix],
  ["ws", () => ws],
])("pub/sub over %s", (_name, url) => {
  it("publishes to an exact subject and a wildcard", async () => {
    const a = await client(url());
    const b = await client(url());
    const exact = b.subscribe("orders.eu.created");
    const star = b.subscribe("orders.*.created");
    const rest = b.subscribe("orders.>");
    await Promise.all([exact.ready, star.ready, rest.ready]);
    a.publish("orders.eu.created", "one", { headers: { "content-type": "text/plain", "x-trace": "t1" } });
    a.publish("orders.us.deleted", "two");
    await a.flush();
    const m1 = await exact.next();
    expect(m1?.string()).toBe("one");
    expect(m1?.subject).toBe("orders.eu.created");
    expect(m1?.headers.getText("content-type")).toBe("text/plain");
    expect(m1?.headers.getText("x-trace")).toBe("t1");
    expect((await star.next())?.string()).toBe("one");
    expect((await rest.next())?.string()).toBe("one");
    expect((await rest.next())?.string()).toBe("two");
    expect(star.pending).toBe(0);
  });
});

describe.each(NETS)("pub/sub over %s", (_net, url) => {
  // Every client of this suite on the transport under test.
  const client = (at?: string, opts = {}) => clientAt(at ?? url(), opts);
  it("delivers in publish order, payloads byte for byte", async () => {
    const a = await client();
    const sub = a.subscribe("seq.>");
    await sub.ready;
    const n = 500;
    for (let i = 0; i < n; i++) a.publish(`seq.${i % 3}`, new Uint8Array([i & 255, i >> 8, 0, 255]));
    const got: number[] = [];
    for await (const m of sub) {
      got.push(m.data[0]! | (m.data[1]! << 8));
      expect(m.data[3]).toBe(255);
      if (got.length === n) break;
    }
    expect(got).toEqual([...Array(n).keys()]);
  });

  it("spreads a queue group: each message to one member", async () => {
    const pub = await client();
    const w1 = await client();
    const w2 = await client();
    const s1 = w1.subscribe("jobs.run", { queue: "workers" });
    const s2 = w2.subscribe("jobs.run", { queue: "workers" });
    await Promise.all([s1.ready, s2.ready]);
    for (let i = 0; i < 200; i++) pub.publish("jobs.run", String(i));
    await pub.flush();
    await until(() => s1.received + s2.received === 200, 10_000, "200 deliveries");
    await w1.flush();
    await w2.flush();
    expect(s1.received + s2.received).toBe(200);
    const seen = new Set<string>();
    for (const s of [s1, s2]) while (s.pending > 0) seen.add((await s.next())!.string());
    expect(seen.size).toBe(200);
  });

  it("unsubscribe after n messages", async () => {
    const a = await client();
    const sub = a.subscribe("auto.unsub");
    await sub.ready;
    sub.unsubscribe(3);
    for (let i = 0; i < 10; i++) a.publish("auto.unsub", String(i));
    await until(() => sub.received >= 3, 10_000, "three deliveries");
    await a.flush();
    await a.flush();
    expect(sub.received).toBe(3);
  });

  it("callback subscriptions and JSON / MessagePack helpers", async () => {
    const a = await client();
    const got: unknown[] = [];
    const sub = a.subscribe("codec.*", { callback: (_e, m) => got.push(m!.subject.endsWith("json") ? m!.json() : m!.msgpack()) });
    await sub.ready;
    a.publish("codec.json", Codec.json.encode({ id: 1, tags: ["a"] }), { headers: { "content-type": Codec.json.contentType } });
    a.publish("codec.msgpack", Codec.msgpack.encode({ id: 2 }), { headers: { "content-type": Codec.msgpack.contentType } });
    await until(() => got.length === 2);
    expect(got).toEqual([{ id: 1, tags: ["a"] }, { id: 2 }]);
  });

  it("an invalid subject is refused locally with INVALID_SUBJECT", async () => {
    const a = await client();
    expect(() => a.publish("a.*", "x")).toThrow(MittoError);
    expect(() => a.publish("a..b", "x")).toThrow(/invalid subject/);
    expect(() => a.subscribe("a.>.b")).toThrow(expect.objectContaining({ status: Status.INVALID_SUBJECT }));
  });

  it("a burst larger than the largest frame goes out whole (over ws: in several messages)", async () => {
    // 1 KiB payloads: the agreed frame is about 70 KB, the burst 200 KB, sent in one tick.
    const a = await client(undefined, { maxPayload: 1024 });
    const sub = a.subscribe("burst");
    await sub.ready;
    const payload = new Uint8Array(1000).fill(7);
    for (let i = 0; i < 200; i++) a.publish("burst", payload);
    await a.flush();
    await until(() => sub.received === 200, 10_000, "200 deliveries");
    expect((await sub.next())?.data.length).toBe(1000);
  });

  it("a payload over the negotiated limit is refused before sending", async () => {
    const a = await client(undefined, { maxPayload: 1024 });
    expect(a.info?.maxPayload).toBe(1024);
    expect(() => a.publish("big", new Uint8Array(1025))).toThrow(expect.objectContaining({ status: Status.PAYLOAD_TOO_LARGE }));
    a.publish("big", new Uint8Array(1024));
    await a.flush();
  });
});

describe.each(NETS)("acknowledged delivery over %s", (_net, url) => {
  // Every client of this suite on the transport under test.
  const client = (at?: string, opts = {}) => clientAt(at ?? url(), opts);
  it("publishAcked resolves on the broker's ACK", async () => {
    const a = await client();
    await a.publishAcked("acked.one", "x");
    await expect(a.publishAcked("acked.two", "y")).resolves.toBeUndefined();
  });

  it("an at-least-once subscription redelivers what was nacked, not what was acked", async () => {
    const a = await client();
    const sub = a.subscribe("alo.x", { ack: true, ackWaitMs: 60_000 });
    await sub.ready;
    a.publish("alo.x", "first");
    a.publish("alo.x", "second");
    const m1 = (await sub.next())!;
    const m2 = (await sub.next())!;
    expect(m1.needsAck).toBe(true);
    m1.ack();
    m2.nack();
    const again = (await sub.next())!;
    expect(again.string()).toBe("second");
    again.ack();
    await a.flush();
    expect(sub.pending).toBe(0);
  });

  it("flow control: the broker sends no more than the credit granted", async () => {
    const a = await client();
    const pub = await client();
    const sub = a.subscribe("fc.x", { credit: 4 });
    await sub.ready;
    for (let i = 0; i < 20; i++) pub.publish("fc.x", String(i));
    await pub.flush();
    await until(() => sub.received >= 4, 10_000, "the initial credit's deliveries");
    await a.flush();
    await a.flush();
    // Nothing read yet: only the initial credit arrived.
    expect(sub.received).toBe(4);
    const got: string[] = [];
    for await (const m of sub) {
      got.push(m.string());
      if (got.length === 20) break;
    }
    expect(got).toEqual([...Array(20).keys()].map(String));
  });
});

describe.each(NETS)("request/reply over %s", (_net, url) => {
  // Every client of this suite on the transport under test.
  const client = (at?: string, opts = {}) => clientAt(at ?? url(), opts);
  it("a TypeScript service answers requests; headers and kinds pass", async () => {
    const svc = await client();
    const caller = await client();
    await svc.service("svc.upper", (req) => req.string().toUpperCase());
    const r = await caller.request("svc.upper", "hello");
    expect(r.string()).toBe("HELLO");
  });

  it("a subscriber answers on reply-to", async () => {
    const responder = await client();
    const caller = await client();
    const sub = responder.subscribe("inbox.echo", { callback: (_e, m) => m!.respond(`echo:${m!.string()}`) });
    await sub.ready;
    const r = await caller.request("inbox.echo", "hi");
    expect(r.string()).toBe("echo:hi");
  });

  it("no responders", async () => {
    const a = await client();
    await expect(a.request("nobody.home", "x")).rejects.toMatchObject({ status: Status.NO_RESPONDERS });
  });

  it("a handler's failure reaches the caller with its status", async () => {
    const svc = await client();
    const caller = await client();
    await svc.service("svc.fail", () => {
      throw new MittoError(Status.FORBIDDEN, "not you");
    });
    await expect(caller.request("svc.fail")).rejects.toMatchObject({ status: Status.FORBIDDEN, reason: "not you" });
  });

  it("a failure whose reason is over the agreed limit keeps its status, its reason cut at a character", async () => {
    const svc = await client(undefined, { maxPayload: 1024 });
    const caller = await client();
    await svc.service("svc.long", () => {
      throw new MittoError(Status.FORBIDDEN, "é".repeat(3000));
    });
    const e = (await caller.request("svc.long").catch((x: unknown) => x)) as MittoError;
    expect(e.status).toBe(Status.FORBIDDEN);
    expect(e.reason).toBe("é".repeat(512));
  });

  it("the deadline: the caller fails with TIMEOUT and the responder is aborted", async () => {
    const svc = await client();
    const caller = await client();
    let aborted: unknown;
    await svc.service("svc.slow", (req) => new Promise((_res, rej) => req.signal.addEventListener("abort", () => rej((aborted = req.signal.reason)))));
    await expect(caller.request("svc.slow", "x", { timeoutMs: 200 })).rejects.toMatchObject({ status: Status.TIMEOUT });
    await until(() => aborted !== undefined, 10_000, "the responder's abort");
    expect(aborted).toBeInstanceOf(MittoError);
  });

  it("AbortSignal cancel reaches the responder through the broker", async () => {
    const svc = await client();
    const caller = await client();
    let started = false;
    let cancelled: MittoError | undefined;
    await svc.service("svc.cancel", (req) => {
      started = true;
      return new Promise((_res, rej) =>
        req.signal.addEventListener("abort", () => {
          cancelled = req.signal.reason as MittoError;
          rej(cancelled);
        }),
      );
    });
    const ctl = new AbortController();
    const call = caller.request("svc.cancel", "x", { signal: ctl.signal, timeoutMs: 30_000 });
    await until(() => started, 10_000, "the handler to start");
    ctl.abort();
    await expect(call).rejects.toMatchObject({ status: Status.CANCELLED });
    await until(() => cancelled !== undefined, 10_000, "CANCEL at the responder");
    expect(cancelled?.status).toBe(Status.CANCELLED);
  });

  it("a queue group of services: each request to one instance", async () => {
    const s1 = await client();
    const s2 = await client();
    const caller = await client();
    const counts = [0, 0];
    await s1.service("svc.grp", () => String(++counts[0]!), { queue: "g" });
    await s2.service("svc.grp", () => String(++counts[1]!), { queue: "g" });
    await Promise.all([...Array(40)].map(() => caller.request("svc.grp")));
    expect(counts[0]! + counts[1]!).toBe(40);
  });

  it("a service streams its response", async () => {
    const svc = await client();
    const caller = await client();
    await svc.service("svc.count", async function* (req) {
      const n = Number(req.string());
      for (let i = 0; i < n; i++) yield String(i);
    });
    const call = caller.serverStream("svc.count", "100");
    const items: string[] = [];
    for await (const x of call) items.push(new TextDecoder().decode(x));
    expect(items).toEqual([...Array(100).keys()].map(String));
    await expect(call.response).resolves.toBeDefined();
  });
});

describe("queries", () => {
  it("health and stats", async () => {
    const a = await client();
    const h = await a.health();
    expect(h.state).toBe("serving");
    const s = await a.stats();
    expect(typeof s.msgs_in === "number" || typeof s.msgs_in === "bigint").toBe(true);
  });
});

describe("lifecycle", () => {
  it("drain lets the subscription end and closes", async () => {
    const a = await client();
    const sub = a.subscribe("drain.x");
    await sub.ready;
    await a.drain();
    expect(await sub.closed).toBeUndefined();
    expect(a.isClosed).toBe(true);
    expect(() => a.publish("drain.x", "late")).toThrow(expect.objectContaining({ status: Status.UNAVAILABLE }));
  });

  it("close fails calls in flight with UNAVAILABLE", async () => {
    const svc = await client();
    const a = await client();
    await svc.service("svc.never", () => new Promise(() => {}));
    const call = a.request("svc.never", "x", { timeoutMs: 30_000 });
    await a.close();
    await expect(call).rejects.toMatchObject({ status: Status.UNAVAILABLE });
  });
});
