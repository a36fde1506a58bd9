// TypeScript <-> Rust through one broker, both ways, in one run, over TCP and over WebSocket: the
// `mitto` CLI (Rust client) publishing, subscribing, requesting and replying; and RPC calls to a
// Rust `mitto::Server`.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Client, Codec, Status, connect } from "../src/index.js";
import { type Broker, type Running, mittoBackground, mittoCli, startBroker, startRpcServer } from "./support/broker.js";

let broker: Broker;
let rpc: Running;
let calc: Client;

beforeAll(async () => {
  broker = await startBroker(["tcp://127.0.0.1:0", "ws://127.0.0.1:0"]);
  rpc = await startRpcServer();
  calc = await connect(rpc.urls[0]!);
});
afterAll(async () => {
  await calc?.close();
  await rpc?.stop();
  await broker?.stop();
});

describe.each([
  ["tcp", 0],
  ["ws", 1],
])("TypeScript <-> Rust through the broker over %s", (_net, which) => {
  // Both sides, the TypeScript client and the Rust CLI, on the transport under test.
  let url: string;
  let ts: Client;
  beforeAll(async () => {
    url = broker.urls[which]!;
    ts = await connect(url);
  });
  afterAll(async () => ts?.close());

  it("Rust publishes, TypeScript receives (headers included)", async () => {
    const sub = ts.subscribe("interop.r2t");
    await sub.ready;
    await mittoCli(["pub", "interop.r2t", "from rust", "--count", "3", "-H", "content-type=text/plain", "-H", "x-lang=rust", "--url", url]);
    for (let i = 0; i < 3; i++) {
      const m = (await sub.next())!;
      expect(m.string()).toBe("from rust");
      expect(m.headers.getText("content-type")).toBe("text/plain");
      expect(m.headers.getText("x-lang")).toBe("rust");
    }
  });

  it("TypeScript publishes, Rust receives", async () => {
    const sub = mittoBackground(["sub", "interop.t2r.*", "--count", "2", "--json", "--url", url]);
    // The CLI prints nothing until a message comes: publish until it has two.
    let delivered = 0;
    for (let i = 0; i < 100 && delivered < 2; i++) {
      ts.publish("interop.t2r.a", Codec.json.encode({ n: i }), { headers: { "content-type": "application/json" } });
      await ts.flush();
      await new Promise((r) => setTimeout(r, 50));
      delivered = sub.lines.length;
    }
    expect(await sub.exited).toBe(0);
    const first = JSON.parse(sub.lines[0]!);
    expect(first.subject).toBe("interop.t2r.a");
    expect(JSON.parse(first.payload)).toHaveProperty("n");
    expect(first.headers["content-type"]).toBe("application/json");
  });

  it("TypeScript requests, a Rust responder (mitto reply) answers", async () => {
    const r = mittoBackground(["reply", "interop.upper", "--command", "tr a-z A-Z", "--url", url]);
    try {
      let answer: string | undefined;
      for (let i = 0; i < 100 && answer === undefined; i++) {
        try {
          answer = (await ts.request("interop.upper", "shout", { timeoutMs: 5000 })).string();
        } catch (e) {
          if ((e as { status?: number }).status !== Status.NO_RESPONDERS) throw e;
          await new Promise((res) => setTimeout(res, 50));
        }
      }
      expect(answer).toBe("SHOUT");
    } finally {
      r.proc.kill("SIGTERM");
    }
  });

  it("Rust requests (mitto req), a TypeScript service answers", async () => {
    const svc = await ts.service("interop.ts.double", (req) => Codec.json.encode((req.json() as number) * 2));
    const out = await mittoCli(["req", "interop.ts.double", "21", "--url", url]);
    expect(out.trim()).toBe("42");
    await svc.stop();
    await expect(mittoCli(["req", "interop.ts.double", "21", "--url", url])).rejects.toThrow(/no.responders|no responders/i);
  });
});

describe("TypeScript -> Rust RPC server", () => {
  it("unary calls, typed JSON, and a failure status", async () => {
    expect((await calc.call("test.echo", "ping")).string()).toBe("ping");
    const sum = await calc.call("calc.add", Codec.json.encode([2, 40]), { headers: { "content-type": Codec.json.contentType } });
    expect(sum.json()).toBe(42);
    await expect(calc.call("test.fail")).rejects.toMatchObject({ status: Status.EXECUTION_ERROR });
    await expect(calc.call("no.such.method")).rejects.toMatchObject({ status: Status.METHOD_NOT_FOUND });
  });

  it("server streaming beyond the initial credit", async () => {
    const call = calc.serverStream("calc.fib", Codec.json.encode(90));
    const xs: number[] = [];
    for await (const x of call) xs.push(Codec.json.decode<number>(x));
    expect(xs).toHaveLength(90);
    expect(xs.slice(0, 8)).toEqual([0, 1, 1, 2, 3, 5, 8, 13]);
  });

  it("client streaming beyond the initial credit", async () => {
    const call = calc.clientStream("calc.sum");
    for (let i = 1; i <= 200; i++) await call.send(Codec.json.encode(i));
    call.end();
    expect((await call.response).json()).toBe(20100);
  });

  it("bidirectional", async () => {
    const call = calc.bidi("calc.running_total");
    const it = call[Symbol.asyncIterator]();
    const totals: number[] = [];
    for (const x of [5, 10, 20]) {
      await call.send(Codec.json.encode(x));
      totals.push(Codec.json.decode<number>((await it.next()).value));
    }
    call.end();
    expect(totals).toEqual([5, 15, 35]);
    await call.response;
  });

  it("cancel and deadline reach the Rust handler", async () => {
    const count = async (m: string) => Number((await calc.call(m)).string());
    const before = await count("test.abandoned");
    const started = await count("test.started");
    const ctl = new AbortController();
    const c = calc.call("test.wait", "", { signal: ctl.signal, timeoutMs: 60_000 });
    // Cancel once the handler runs, so that the cancel has a handler to reach.
    for (let i = 0; i < 200 && (await count("test.started")) === started; i++) await new Promise((r) => setTimeout(r, 20));
    ctl.abort();
    await expect(c).rejects.toMatchObject({ status: Status.CANCELLED });
    await expect(calc.call("test.wait", "", { timeoutMs: 300 })).rejects.toMatchObject({ status: Status.TIMEOUT });
    let after = before;
    for (let i = 0; i < 100 && after < before + 2; i++) {
      after = Number((await calc.call("test.abandoned")).string());
      if (after < before + 2) await new Promise((r) => setTimeout(r, 50));
    }
    expect(after).toBe(before + 2);
  });
});
