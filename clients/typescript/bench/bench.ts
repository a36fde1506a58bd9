// Node benchmarks: mitto-ts through `mitto server` beside nats.js through nats-server, in the
// same run on the same machine. pub -> sub (one publisher, one subscriber connection, N
// messages of each size) and request/reply (sequential round trips to a responder in this
// process, with percentiles).
//
//   npx tsx bench/bench.ts [--quick] [--count N] [--json]
//
// MITTO_BIN (default target/release/mitto, built if missing) and NATS_SERVER_BIN (default
// nats-server on PATH or /usr/sbin/nats-server) name the servers.

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import * as net from "node:net";
import { resolve } from "node:path";
import { connect as natsConnect } from "nats";
import { connect } from "../src/index.js";

const args = process.argv.slice(2);
const quick = args.includes("--quick");
const asJson = args.includes("--json");
const countArg = args.indexOf("--count");
const COUNT = countArg >= 0 ? Number(args[countArg + 1]) : quick ? 20_000 : 500_000;
const RR = quick ? 2_000 : 20_000;
const SIZES = [16, 128];
const ROOT = resolve(import.meta.dirname, "../../..");

function freePort(): Promise<number> {
  return new Promise((r) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => r(p));
    });
  });
}

async function waitPort(port: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const ok = await new Promise<boolean>((r) => {
      const s = net.connect(port, "127.0.0.1", () => (s.destroy(), r(true)));
      s.on("error", () => r(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nothing listens on ${port}`);
}

function mittoBin(): string {
  if (process.env.MITTO_BIN) return process.env.MITTO_BIN;
  const bin = resolve(ROOT, "target/release/mitto");
  if (!existsSync(bin)) execFileSync("cargo", ["build", "--release", "-q", "-p", "mitto-cli"], { cwd: ROOT, stdio: "inherit" });
  return bin;
}

function natsBin(): string {
  if (process.env.NATS_SERVER_BIN) return process.env.NATS_SERVER_BIN;
  return existsSync("/usr/sbin/nats-server") ? "/usr/sbin/nats-server" : "nats-server";
}

interface Row {
  system: string;
  scenario: string;
  size: number;
  count: number;
  msgs_per_s: number;
  p50_us?: number;
  p99_us?: number;
}

/** The small API both clients are driven through. */
interface Sys {
  name: string;
  pub(subject: string, data: Uint8Array): void;
  sub(subject: string, n: number): Promise<void>; // resolves after n messages
  ready(): Promise<void>; // the subscription is active at the server
  serve(subject: string): Promise<void>;
  req(subject: string, data: Uint8Array): Promise<unknown>;
  close(): Promise<void>;
}

async function mittoSys(url: string): Promise<Sys> {
  const p = await connect(url, { name: "bench-pub" });
  const s = await connect(url, { name: "bench-sub" });
  let pending: Promise<void> = Promise.resolve();
  return {
    name: "mitto-ts",
    pub: (subj, d) => p.publish(subj, d),
    sub: (subj, n) => {
      let got = 0;
      let done!: () => void;
      const finished = new Promise<void>((r) => (done = r));
      const sub = s.subscribe(subj, { callback: () => ++got === n && (sub.unsubscribe(), done()) });
      pending = sub.ready;
      return finished;
    },
    ready: async () => {
      await pending;
    },
    serve: async (subj) => {
      await s.service(subj, (req) => req.data);
    },
    req: (subj, d) => p.request(subj, d),
    close: async () => {
      await p.close();
      await s.close();
    },
  };
}

async function natsSys(port: number): Promise<Sys> {
  const p = await natsConnect({ servers: `127.0.0.1:${port}`, name: "bench-pub" });
  const s = await natsConnect({ servers: `127.0.0.1:${port}`, name: "bench-sub" });
  return {
    name: "nats.js",
    pub: (subj, d) => p.publish(subj, d),
    sub: (subj, n) =>
      new Promise((r) => {
        let got = 0;
        const sub = s.subscribe(subj, { callback: () => ++got === n && (sub.unsubscribe(), r()) });
      }),
    ready: () => s.flush(),
    serve: async (subj) => {
      s.subscribe(subj, { callback: (_e, m) => m.respond(m.data) });
      await s.flush();
    },
    req: (subj, d) => p.request(subj, d, { timeout: 10_000 }),
    close: async () => {
      await p.close();
      await s.close();
    },
  };
}

async function pubSub(sys: Sys, size: number, n: number): Promise<Row> {
  const data = new Uint8Array(size).fill(7);
  const done = sys.sub("bench.ps", n);
  await sys.ready();
  const t0 = process.hrtime.bigint();
  // Publish in slices, yielding between them so the socket drains (both clients buffer).
  for (let i = 0; i < n; ) {
    const end = Math.min(n, i + 1000);
    for (; i < end; i++) sys.pub("bench.ps", data);
    await new Promise((r) => setImmediate(r));
  }
  await done;
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  return { system: sys.name, scenario: "pub->sub", size, count: n, msgs_per_s: Math.round(n / secs) };
}

async function reqRep(sys: Sys, size: number, n: number): Promise<Row> {
  const data = new Uint8Array(size).fill(7);
  await sys.serve("bench.rr");
  for (let i = 0; i < 200; i++) await sys.req("bench.rr", data);
  const lat = new Float64Array(n);
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    const s = process.hrtime.bigint();
    await sys.req("bench.rr", data);
    lat[i] = Number(process.hrtime.bigint() - s) / 1000;
  }
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  lat.sort();
  return {
    system: sys.name,
    scenario: "request/reply",
    size,
    count: n,
    msgs_per_s: Math.round(n / secs),
    p50_us: Math.round(lat[Math.floor(n * 0.5)]!),
    p99_us: Math.round(lat[Math.floor(n * 0.99)]!),
  };
}

async function main(): Promise<void> {
  const procs: ChildProcess[] = [];
  const stop = () => procs.forEach((p) => p.kill("SIGTERM"));
  process.on("exit", stop);
  const mPort = await freePort();
  procs.push(spawn(mittoBin(), ["server", "--listen", `tcp://127.0.0.1:${mPort}`, "--monitor", ""], { stdio: "ignore", env: { ...process.env, MITTO_LOG: "warn" } }));
  const nPort = await freePort();
  procs.push(spawn(natsBin(), ["-a", "127.0.0.1", "-p", String(nPort)], { stdio: "ignore" }));
  await waitPort(mPort);
  await waitPort(nPort);
  const rows: Row[] = [];
  for (const make of [() => mittoSys(`tcp://127.0.0.1:${mPort}`), () => natsSys(nPort)]) {
    for (const size of SIZES) {
      const sys = await make();
      rows.push(await pubSub(sys, size, COUNT));
      await sys.close();
    }
    const sys = await make();
    rows.push(await reqRep(sys, 16, RR));
    await sys.close();
  }
  if (asJson) {
    console.log(JSON.stringify({ node: process.version, quick, rows }, null, 1));
  } else {
    console.log(`node ${process.version}${quick ? " (quick)" : ""}`);
    console.log("system     scenario        size  count      msgs/s      p50 us  p99 us");
    for (const r of rows) {
      console.log(
        `${r.system.padEnd(10)} ${r.scenario.padEnd(15)} ${String(r.size).padStart(4)}  ${String(r.count).padStart(8)}  ${String(r.msgs_per_s).padStart(10)}  ${String(r.p50_us ?? "").padStart(7)} ${String(r.p99_us ?? "").padStart(7)}`,
      );
    }
    for (const sc of ["pub->sub", "request/reply"]) {
      for (const size of sc === "pub->sub" ? SIZES : [16]) {
        const m = rows.find((r) => r.system === "mitto-ts" && r.scenario === sc && r.size === size);
        const n = rows.find((r) => r.system === "nats.js" && r.scenario === sc && r.size === size);
        if (m && n) console.log(`${sc} ${size} B: mitto-ts / nats.js = ${(m.msgs_per_s / n.msgs_per_s).toFixed(2)}x msgs/s`);
      }
    }
  }
  stop();
  process.exit(0);
}

void main();
