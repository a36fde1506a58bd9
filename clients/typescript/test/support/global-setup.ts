// Builds the `mitto` binary and the Rust RPC example once per run (MITTO_BIN and
// MITTO_RPC_SERVER_BIN point at prebuilt ones instead).

import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import type { TestProject } from "vitest/node";

export const ROOT = resolve(import.meta.dirname, "../../../..");

export default function setup(project: TestProject): void {
  let mitto = process.env.MITTO_BIN;
  let rpc = process.env.MITTO_RPC_SERVER_BIN;
  if (mitto === undefined || rpc === undefined) {
    const target = process.env.CARGO_TARGET_DIR ?? resolve(ROOT, "target");
    const args = ["build", "-q", "-p", "mitto-cli", "-p", "mitto", "--bin", "mitto", "--example", "rpc_server"];
    execFileSync("cargo", args, { cwd: ROOT, stdio: "inherit" });
    mitto ??= resolve(target, "debug/mitto");
    rpc ??= resolve(target, "debug/examples/rpc_server");
  }
  for (const b of [mitto, rpc]) if (!existsSync(b)) throw new Error(`missing binary ${b}`);
  project.provide("mittoBin", mitto);
  project.provide("rpcServerBin", rpc);
}

declare module "vitest" {
  export interface ProvidedContext {
    mittoBin: string;
    rpcServerBin: string;
  }
}
