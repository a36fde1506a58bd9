// Authentication and permissions (over TCP and WebSocket), TLS with a generated certificate (tls:// and wss://), and reconnect (session resumed
// through a cut proxy; subscriptions restored on a restarted broker).

import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import * as net from "node:net";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { type Client, Status, connect } from "../src/index.js";
import { dialWebSocket } from "../src/transport/websocket.js";
import { parseUrl } from "../src/url.js";
import { type Broker, startBroker, until } from "./support/broker.js";

const stops: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const s of stops.splice(0).reverse()) await s();
});
async function broker(listen: string[], config = ""): Promise<Broker> {
  const b = await startBroker(listen, config);
  stops.push(() => b.stop());
  return b;
}
async function client(url: string, opts = {}): Promise<Client> {
  const c = await connect(url, opts);
  stops.push(() => c.close());
  return c;
}

const USERS = `
[[users]]
name = "alice"
password = "wonderland"
publish = ["allowed.>"]
subscribe = ["allowed.>"]
`;

describe.each(["tcp", "ws"])("authentication and permissions over %s", (scheme) => {
  it("a wrong password is refused with UNAUTHORIZED", async () => {
    const b = await broker([`${scheme}://127.0.0.1:0`], USERS);
    await expect(connect(b.urls[0]!, { user: "alice", password: "nope", reconnect: false })).rejects.toMatchObject({
      status: Status.UNAUTHORIZED,
    });
    await expect(connect(b.urls[0]!, { reconnect: false })).rejects.toMatchObject({ status: Status.UNAUTHORIZED });
  });

  it("a denied subject: FORBIDDEN to publish and to subscribe, the rest works", async () => {
    const b = await broker([`${scheme}://127.0.0.1:0`], USERS);
    const a = await client(b.urls[0]!, { user: "alice", password: "wonderland" });
    const ok = a.subscribe("allowed.x");
    await ok.ready;
    await expect(a.publishAcked("secret.x", "no")).rejects.toMatchObject({ status: Status.FORBIDDEN });
    const denied = a.subscribe("secret.>");
    await expect(denied.ready).rejects.toMatchObject({ status: Status.FORBIDDEN });
    expect(await denied.closed).toMatchObject({ status: Status.FORBIDDEN });
    await a.publishAcked("allowed.x", "yes");
    expect((await ok.next())?.string()).toBe("yes");
  });

  it("a token", async () => {
    const b = await broker([`${scheme}://127.0.0.1:0`], `token = "s3cret"`);
    await expect(connect(b.urls[0]!, { token: "wrong", reconnect: false })).rejects.toMatchObject({ status: Status.UNAUTHORIZED });
    const a = await client(b.urls[0]!, { token: "s3cret" });
    await a.flush();
  });
});

describe("TLS", () => {
  it("connects over tls:// with a generated certificate and verifies it", async () => {
    const dir = (await broker(["tcp://127.0.0.1:0"])).dir;
    const cert = join(dir, "cert.pem");
    const key = join(dir, "key.pem");
    execFileSync("openssl", [
      "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
      "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key, "-out", cert,
    ], { stdio: "ignore" });
    const b = await broker(["tls://127.0.0.1:0"], `[tls]\ncert = "${cert}"\nkey = "${key}"\n`);
    const url = b.urls[0]!;
    expect(url.startsWith("tls://")).toBe(true);
    const ca = readFileSync(cert, "utf8");
    const a = await client(url, { ca });
    const sub = a.subscribe("tls.x");
    await sub.ready;
    a.publish("tls.x", "secret");
    expect((await sub.next())?.string()).toBe("secret");
    // Without the CA the certificate is not trusted.
    await expect(connect(url, { reconnect: false })).rejects.toMatchObject({ status: Status.UNAVAILABLE });
  });
});

describe("wss:// with TLS options (Node)", () => {
  it("trusts a private CA and verifies the server name given, through the ws package", async () => {
    const dir = (await broker(["tcp://127.0.0.1:0"])).dir;
    const cert = join(dir, "cert.pem");
    const key = join(dir, "key.pem");
    // Issued to a name only: the URL's address matches it only through `servername`.
    execFileSync("openssl", [
      "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=mitto.test",
      "-addext", "subjectAltName=DNS:mitto.test", "-keyout", key, "-out", cert,
    ], { stdio: "ignore" });
    const b = await broker(["wss://127.0.0.1:0"], `[tls]\ncert = "${cert}"\nkey = "${key}"\n`);
    const url = b.urls[0]!;
    expect(url.startsWith("wss://127.0.0.1:")).toBe(true);
    const ca = readFileSync(cert, "utf8");
    const a = await client(url, { ca, servername: "mitto.test" });
    const sub = a.subscribe("wss.x");
    await sub.ready;
    a.publish("wss.x", "secret");
    expect((await sub.next())?.string()).toBe("secret");
    // The certificate does not name the address; without the CA it is not trusted at all.
    await expect(connect(url, { ca, reconnect: false })).rejects.toMatchObject({
      status: Status.UNAVAILABLE,
      message: expect.stringMatching(/altnames/),
    });
    await expect(connect(url, { servername: "mitto.test", reconnect: false })).rejects.toMatchObject({
      status: Status.UNAVAILABLE,
      message: expect.stringMatching(/self-signed certificate/),
    });
    // Verification off (tests only) lets the same server in.
    const c = await client(url, { rejectUnauthorized: false });
    await c.flush();
  });

  it("the browser entry refuses TLS options instead of ignoring them", async () => {
    const dial = dialWebSocket();
    const url = parseUrl("wss://127.0.0.1:1/");
    await expect(dial(url, { timeoutMs: 1000, ca: "-----BEGIN CERTIFICATE-----" })).rejects.toMatchObject({
      status: Status.UNSUPPORTED_FEATURE,
      message: expect.stringMatching(/trust store/),
    });
  });
});

/** A TCP proxy the test can cut, to lose a connection without stopping the broker. */
async function proxy(target: string): Promise<{ url: string; cut(): void; close(): Promise<void> }> {
  const u = new URL(target.replace("tcp:", "http:"));
  const socks = new Set<net.Socket>();
  const server = net.createServer((c) => {
    const up = net.connect(Number(u.port), u.hostname);
    socks.add(c).add(up);
    c.pipe(up).pipe(c);
    const end = () => {
      c.destroy();
      up.destroy();
    };
    c.on("error", end).on("close", end);
    up.on("error", end).on("close", end);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `tcp://127.0.0.1:${port}`,
    cut: () => {
      for (const s of socks) s.destroy();
      socks.clear();
    },
    close: () => {
      for (const s of socks) s.destroy();
      return new Promise((r) => server.close(() => r()));
    },
  };
}

describe("reconnect", () => {
  it("resumes the session after a lost connection: subscriptions and the messages meanwhile", async () => {
    const b = await broker(["tcp://127.0.0.1:0"]);
    const p = await proxy(b.urls[0]!);
    stops.push(() => p.close());
    let resumedFlag: boolean | undefined;
    const a = await client(p.url, { reconnectDelayMs: 50, onReconnect: (r: boolean) => (resumedFlag = r) });
    const pub = await client(b.urls[0]!);
    const sub = a.subscribe("resume.x");
    await sub.ready;
    pub.publish("resume.x", "before");
    expect((await sub.next())?.string()).toBe("before");
    p.cut();
    await until(() => a.reconnects === 1, 10_000, "the reconnect");
    expect(resumedFlag).toBe(true);
    pub.publish("resume.x", "after");
    expect((await sub.next())?.string()).toBe("after");
  });

  it("restores subscriptions on a restarted broker and sends the publishes buffered meanwhile", async () => {
    const port = await new Promise<number>((r) => {
      const s = net.createServer().listen(0, "127.0.0.1", () => {
        const p = (s.address() as net.AddressInfo).port;
        s.close(() => r(p));
      });
    });
    const url = `tcp://127.0.0.1:${port}`;
    const first = await startBroker([url]);
    let firstStopped = false;
    stops.push(() => (firstStopped ? undefined : first.stop()));
    const a = await client(url, { reconnectDelayMs: 50 });
    const sub = a.subscribe("restart.>");
    await sub.ready;
    const disconnected = new Promise<void>((r) => (a as unknown as { opts: { onDisconnect: () => void } }).opts.onDisconnect = r);
    first.proc.kill("SIGKILL");
    firstStopped = true;
    await disconnected;
    a.publish("restart.buffered", "while away");
    const second = await broker([url]);
    void second;
    await until(() => a.reconnects === 1, 15_000, "the reconnect");
    expect((await sub.next())?.string()).toBe("while away");
    const pub = await client(url);
    pub.publish("restart.new", "fresh");
    expect((await sub.next())?.string()).toBe("fresh");
  });
});
