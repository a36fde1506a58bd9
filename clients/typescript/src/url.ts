// mitto URLs: tcp://host:port, tls://host:port, unix:///path, ws://host:port/path, wss://...,
// and a bare host:port, which means tcp.

import { Status, MittoError } from "./proto/status.js";
import type { ParsedUrl } from "./transport/types.js";

const DEFAULT_PORT: Record<string, number> = { tcp: 4747, tls: 4747, ws: 80, wss: 443 };

function bad(text: string, why: string): MittoError {
  return new MittoError(Status.BAD_REQUEST, `invalid URL ${JSON.stringify(text)}: ${why}`);
}

export function parseUrl(text: string): ParsedUrl {
  let t = text.trim();
  if (!t.includes("://")) t = `tcp://${t}`;
  const scheme = t.slice(0, t.indexOf("://"));
  if (scheme === "unix") {
    const path = t.slice("unix://".length);
    if (path.length === 0) throw bad(text, "unix:// needs a socket path");
    return { scheme, host: "", port: 0, path, text };
  }
  if (scheme !== "tcp" && scheme !== "tls" && scheme !== "ws" && scheme !== "wss") {
    throw bad(text, `unknown scheme ${scheme}:// (expected tcp, tls, unix, ws or wss)`);
  }
  let u: URL;
  try {
    // A scheme WHATWG URL knows no default port for, so that an explicit :80 is kept.
    u = new URL(t.replace(/^[a-z]+:/, "x-mitto:"));
  } catch {
    throw bad(text, "cannot parse host and port");
  }
  if (u.hostname === "") throw bad(text, "no host");
  const port = u.port === "" ? (DEFAULT_PORT[scheme] as number) : Number(u.port);
  const host = u.hostname.startsWith("[") ? u.hostname.slice(1, -1) : u.hostname;
  const path = scheme === "ws" || scheme === "wss" ? `${u.pathname || "/"}${u.search}` : "";
  return { scheme, host, port, path, text };
}
