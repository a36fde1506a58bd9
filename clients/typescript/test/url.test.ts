// mitto URLs as the client reads them.

import { describe, expect, it } from "vitest";
import { parseUrl } from "../src/url.js";

describe("URLs", () => {
  it("a bare host:port is tcp", () => {
    expect(parseUrl("127.0.0.1:4747")).toMatchObject({ scheme: "tcp", host: "127.0.0.1", port: 4747 });
    expect(parseUrl("localhost")).toMatchObject({ scheme: "tcp", host: "localhost", port: 4747 });
  });
  it("an explicit port is kept, even a scheme's usual one", () => {
    expect(parseUrl("tcp://h:80").port).toBe(80);
    expect(parseUrl("wss://h:443/x").port).toBe(443);
    expect(parseUrl("ws://h").port).toBe(80);
  });
  it("ws paths and queries, IPv6, Unix paths", () => {
    expect(parseUrl("ws://127.0.0.1:4748/mitto?x=1")).toMatchObject({ scheme: "ws", path: "/mitto?x=1" });
    expect(parseUrl("ws://127.0.0.1:4748")).toMatchObject({ path: "/" });
    expect(parseUrl("tcp://[::1]:9")).toMatchObject({ host: "::1", port: 9 });
    expect(parseUrl("unix:///tmp/m.sock")).toMatchObject({ scheme: "unix", path: "/tmp/m.sock" });
  });
  it("refuses unknown schemes and missing parts with BAD_REQUEST", () => {
    expect(() => parseUrl("http://h:1")).toThrow(/unknown scheme/);
    expect(() => parseUrl("unix://")).toThrow(/socket path/);
    expect(() => parseUrl("tcp://:5")).toThrow();
  });
});
