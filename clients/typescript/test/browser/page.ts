// The browser test page's script (bundled with the browser entry point): connects to the broker
// over ws://, subscribes, publishes, and makes a request a Rust responder answers. What it saw
// goes to `window.mittoResult` for the test to read.

import { connect } from "../../src/browser.js";

interface Result {
  done: boolean;
  error?: string;
  received?: string[];
  reply?: string;
  features?: number;
}

const w = window as unknown as { mittoResult: Result };
w.mittoResult = { done: false };

async function main(): Promise<void> {
  const params = new URLSearchParams(location.search);
  const url = params.get("url") ?? "ws://127.0.0.1:4748";
  const nc = await connect(url, { name: "browser-page" });
  const sub = nc.subscribe("browser.>");
  await sub.ready;
  nc.publish("browser.hello", "from the page");
  nc.publish("browser.bytes", new Uint8Array([0, 1, 2, 255]));
  const received: string[] = [];
  for await (const m of sub) {
    received.push(`${m.subject}:${Array.from(m.data).join(",")}`);
    if (received.length === 2) break;
  }
  const reply = await nc.request(params.get("service") ?? "rust.upper", "browser", { timeoutMs: 5000 });
  w.mittoResult = { done: true, received, reply: reply.string(), features: nc.info?.features ?? 0 };
  await nc.close();
}

main().catch((e: unknown) => {
  w.mittoResult = { done: true, error: String(e) };
});
