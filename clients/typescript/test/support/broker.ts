// A real `mitto server` (and the Rust RPC example) started by a test on free ports, stopped at
// teardown.

import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { inject } from "vitest";

export interface Running {
  /** URLs the process printed, in order. */
  urls: string[];
  proc: ChildProcess;
  stop(): Promise<void>;
  /** Output so far (for failure messages). */
  log(): string;
}

/** Starts `bin args` and waits until it printed `count` lines matching `pattern`. */
export function start(bin: string, args: string[], pattern: RegExp, count: number, env: Record<string, string> = {}): Promise<Running> {
  return new Promise((resolve, reject) => {
    const proc = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } });
    let out = "";
    const urls: string[] = [];
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`${bin} did not start in time:\n${out}`));
    }, 20_000);
    const stop = () =>
      new Promise<void>((done) => {
        if (proc.exitCode !== null || proc.signalCode !== null) return done();
        proc.once("exit", () => done());
        proc.kill("SIGTERM");
        setTimeout(() => proc.kill("SIGKILL"), 3000).unref();
      });
    const onData = (b: Buffer) => {
      out += b.toString();
      if (urls.length >= count) return;
      for (const line of b.toString().split("\n")) {
        const m = pattern.exec(line);
        if (m !== null && urls.length < count) urls.push(m[1] as string);
      }
      if (urls.length >= count) {
        clearTimeout(timer);
        resolve({ urls, proc, stop, log: () => out });
      }
    };
    proc.stdout?.on("data", onData);
    proc.stderr?.on("data", (b: Buffer) => (out += b.toString()));
    proc.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${bin} exited with ${code}:\n${out}`));
    });
  });
}

export interface Broker extends Running {
  dir: string;
}

/**
 * A broker listening on the given URLs (`tcp://127.0.0.1:0` style: the OS picks the ports);
 * `config` is extra TOML.
 */
export async function startBroker(listen: string[], config = "", extraArgs: string[] = []): Promise<Broker> {
  const dir = mkdtempSync(join(tmpdir(), "mitto-ts-"));
  const args = ["server", "--monitor", ""];
  for (const l of listen) args.push("--listen", l.replace("$DIR", dir));
  if (config !== "") {
    writeFileSync(join(dir, "mitto.toml"), config);
    args.push("--config", join(dir, "mitto.toml"));
  }
  args.push(...extraArgs);
  const r = await start(inject("mittoBin"), args, /listening on (\S+)/, listen.length, { MITTO_LOG: "warn" });
  return {
    ...r,
    dir,
    stop: async () => {
      await r.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The Rust RPC example server on a free TCP port. */
export async function startRpcServer(url = "tcp://127.0.0.1:0"): Promise<Running> {
  return start(inject("rpcServerBin"), [url], /^(\w+:\/\/\S+)$/, 1);
}

/** Runs the `mitto` CLI to completion; resolves with stdout. */
export function mittoCli(args: string[], timeoutMs = 15_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const proc = spawn(inject("mittoBin"), args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    proc.stdout.on("data", (b: Buffer) => (out += b.toString()));
    proc.stderr.on("data", (b: Buffer) => (err += b.toString()));
    const timer = setTimeout(() => proc.kill("SIGKILL"), timeoutMs);
    proc.once("exit", (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`mitto ${args.join(" ")} exited with ${code}: ${err}`));
    });
  });
}

/** A CLI process left running (a subscriber, a responder); `lines` collects its stdout. */
export function mittoBackground(args: string[]): { proc: ChildProcess; lines: string[]; stderr: () => string; exited: Promise<number | null> } {
  const proc = spawn(inject("mittoBin"), args, { stdio: ["ignore", "pipe", "pipe"] });
  const lines: string[] = [];
  let err = "";
  let buf = "";
  proc.stdout?.on("data", (b: Buffer) => {
    buf += b.toString();
    const parts = buf.split("\n");
    buf = parts.pop() ?? "";
    lines.push(...parts);
  });
  proc.stderr?.on("data", (b: Buffer) => (err += b.toString()));
  const exited = new Promise<number | null>((r) => proc.once("exit", (c) => r(c)));
  return { proc, lines, stderr: () => err, exited };
}

/** Waits until `cond()` holds, polling; fails after `ms`. For conditions, never for timing. */
export async function until(cond: () => boolean, ms = 10_000, what = "condition"): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
