// Bundles the page script with the browser entry point (no Node modules may creep in).

import { build } from "esbuild";
import { fileURLToPath } from "node:url";

export async function bundlePage(): Promise<string> {
  const r = await build({
    entryPoints: [fileURLToPath(new URL("./page.ts", import.meta.url))],
    bundle: true,
    write: false,
    format: "iife",
    platform: "browser",
    target: "es2022",
    logLevel: "silent",
  });
  return r.outputFiles[0]!.text;
}
