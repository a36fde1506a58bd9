// In a real browser: Debian's Chromium, driven by playwright-core (never a downloaded browser),
// loads a page that bundles the client, connects to `mitto server` over ws://, subscribes,
// publishes and makes a request that a Rust responder (`mitto reply`) answers.
//
// The broker's WebSocket listener is detected: until `mitto server --listen ws://...` is
// accepted this test is skipped, loudly.

import { existsSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connect } from "../src/index.js";
import { bundlePage } from "./browser/bundle.js";
import { type Broker, mittoBackground, startBroker } from "./support/broker.js";

const CHROMIUM = [process.env.CHROMIUM_BIN, "/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => p !== undefined && existsSync(p));

let broker: Broker | undefined;
let skipWhy: string | undefined;

beforeAll(async () => {
  broker = await startBroker(["tcp://127.0.0.1:0", "ws://127.0.0.1:0"]);
  if (CHROMIUM === undefined) skipWhy = "no Chromium (apt-get install chromium, or set CHROMIUM_BIN)";
});
afterAll(async () => broker?.stop());

describe("browser", () => {
  it("the page bundles for the browser without Node modules", async () => {
    const js = await bundlePage();
    expect(js).toContain("mitto.v1");
    expect(js).not.toMatch(/require\(["']node:/);
  });

  it("a Chromium page exchanges messages with Rust and Node through the broker over ws://", async (ctx) => {
    if (skipWhy !== undefined) {
      console.warn(`\n!!! SKIPPED: the Chromium page test: ${skipWhy}\n`);
      ctx.skip();
      return;
    }
    const [tcp, ws] = broker!.urls as [string, string];
    const responder = mittoBackground(["reply", "rust.upper", "--command", "tr a-z A-Z", "--url", tcp]);
    // A Node client on the same WebSocket listener sees what the page publishes.
    const node = await connect(ws, { name: "node-watcher" });
    const watched = node.subscribe("browser.hello");
    await watched.ready;
    const js = await bundlePage();
    const http: Server = createServer((req, res) => {
      if (req.url?.startsWith("/page.js")) {
        res.writeHead(200, { "content-type": "text/javascript" }).end(js);
      } else {
        res.writeHead(200, { "content-type": "text/html" }).end('<!doctype html><meta charset="utf-8"><script src="/page.js"></script>');
      }
    });
    await new Promise<void>((r) => http.listen(0, "127.0.0.1", r));
    const { chromium } = await import("playwright-core");
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
    try {
      const page = await browser.newPage();
      const port = (http.address() as AddressInfo).port;
      // The responder may need a moment to subscribe: the page's request is retried by reloading.
      let result: { done: boolean; error?: string; received?: string[]; reply?: string } = { done: false };
      for (let i = 0; i < 20; i++) {
        await page.goto(`http://127.0.0.1:${port}/?url=${encodeURIComponent(ws)}&service=rust.upper`);
        await page.waitForFunction(() => (window as unknown as { mittoResult?: { done: boolean } }).mittoResult?.done === true, undefined, { timeout: 15_000 });
        result = await page.evaluate(() => (window as unknown as { mittoResult: typeof result }).mittoResult);
        if (result.error === undefined || !/no.responders/i.test(result.error)) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(result.error).toBeUndefined();
      expect(result.received).toEqual(["browser.hello:102,114,111,109,32,116,104,101,32,112,97,103,101", "browser.bytes:0,1,2,255"]);
      expect(result.reply).toBe("BROWSER");
      expect((await watched.next())?.string()).toBe("from the page");
    } finally {
      await node.close();
      await browser.close();
      await new Promise((r) => http.close(r));
      responder.proc.kill("SIGTERM");
    }
  });
});
