// The WebSocket transport: subprotocol `mitto.v1`, binary messages of whole frames; a text
// message is a protocol error. Works with the browser's WebSocket, Node's built-in one (22+)
// and the `ws` package; wss:// with `ca` / `servername` / `rejectUnauthorized` needs `ws`
// (Node's built-in WebSocket takes no TLS options; a browser uses its own trust store).

import { Status, MittoError } from "../proto/status.js";
import type { DialOptions, ParsedUrl, Transport } from "./types.js";

export const SUBPROTOCOL = "mitto.v1";

/** Close codes (RFC 6455): 1002 protocol error, 1003 unsupported data (a text message). */
export const CLOSE_PROTOCOL_ERROR = 1002;
export const CLOSE_UNSUPPORTED_DATA = 1003;

/** The part of the WebSocket API used here (the DOM's, Node's and ws's all have it). */
export interface WebSocketLike {
  binaryType: string;
  readonly protocol: string;
  readonly bufferedAmount: number;
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
}

/** TLS options for wss:// in Node, as the `ws` package's constructor takes them (third argument). */
export interface WebSocketTlsOptions {
  ca?: DialOptions["ca"];
  servername?: string;
  rejectUnauthorized?: boolean;
}

export type WebSocketConstructor = new (url: string, protocols: string | string[], options?: WebSocketTlsOptions) => WebSocketLike;

class WsTransport implements Transport {
  readonly messages = true;
  onData: (chunk: Uint8Array) => void = () => {};
  onClose: (err?: Error) => void = () => {};
  private ended = false;

  constructor(private readonly ws: WebSocketLike) {
    ws.onmessage = (ev) => {
      const d = ev.data;
      if (d instanceof ArrayBuffer) return this.onData(new Uint8Array(d));
      if (ArrayBuffer.isView(d)) return this.onData(new Uint8Array(d.buffer, d.byteOffset, d.byteLength));
      // A text message (or anything not binary) carries no mitto frames.
      this.fail(CLOSE_UNSUPPORTED_DATA, "text messages are not mitto frames", "the peer sent a WebSocket text message; mitto frames travel in binary messages");
    };
    ws.onerror = () => {};
    ws.onclose = (ev) => {
      if (ev.code === 1000 || ev.code === 1005) this.end();
      else this.end(new MittoError(Status.UNAVAILABLE, `WebSocket closed with code ${ev.code}${ev.reason ? `: ${ev.reason}` : ""}`));
    };
  }

  get buffered(): number {
    return this.ws.bufferedAmount;
  }

  write(data: Uint8Array): void {
    if (this.ws.readyState === 1) this.ws.send(data);
  }

  close(): void {
    try {
      this.ws.close(1000);
    } catch {
      // already closing
    }
    // The peer's close handshake may never come.
    const t = setTimeout(() => this.end(), 1000) as { unref?: () => void };
    t.unref?.();
  }

  /** Ends the connection over bad input: close code and reason to the peer, error to the client. */
  fail(code: number, reason: string, message: string): void {
    try {
      this.ws.close(code, reason);
    } catch {
      // already closing
    }
    this.end(new MittoError(Status.PROTOCOL_ERROR, message));
  }

  private end(err?: Error): void {
    if (this.ended) return;
    this.ended = true;
    this.ws.onmessage = null;
    this.onClose(err);
  }
}

async function defaultWebSocket(): Promise<WebSocketConstructor> {
  const g = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (g !== undefined) return g;
  try {
    // Node before 22 has no WebSocket of its own; the optional `ws` package provides one.
    const mod = (await import("ws")) as unknown as { WebSocket: WebSocketConstructor };
    return mod.WebSocket;
  } catch {
    throw new MittoError(Status.UNSUPPORTED_FEATURE, "no WebSocket here: install the `ws` package or use Node 22+");
  }
}

async function wsPackage(): Promise<WebSocketConstructor> {
  try {
    const mod = (await import("ws")) as unknown as { WebSocket: WebSocketConstructor };
    return mod.WebSocket;
  } catch {
    throw new MittoError(
      Status.UNSUPPORTED_FEATURE,
      "wss:// with ca, servername or rejectUnauthorized needs the `ws` package (Node's own WebSocket takes no TLS options)",
    );
  }
}

/** The TLS options given for a wss:// URL, or undefined when there are none. */
function tlsOptions(url: ParsedUrl, opts: DialOptions): WebSocketTlsOptions | undefined {
  if (url.scheme !== "wss") return undefined;
  const o: WebSocketTlsOptions = {};
  if (opts.ca !== undefined) o.ca = opts.ca;
  if (opts.servername !== undefined) o.servername = opts.servername;
  if (opts.rejectUnauthorized !== undefined) o.rejectUnauthorized = opts.rejectUnauthorized;
  return Object.keys(o).length === 0 ? undefined : o;
}

/**
 * The ws:// and wss:// dialer. `node`: this is Node, where wss:// TLS options are applied
 * through the `ws` package; elsewhere (a browser) they are refused, since the page cannot
 * change what the browser trusts.
 */
export function dialWebSocket(env: { node: boolean } = { node: false }): (url: ParsedUrl, opts: DialOptions) => Promise<Transport> {
  return async (url, opts) => {
    const tls = tlsOptions(url, opts);
    let WS = opts.WebSocket as WebSocketConstructor | undefined;
    if (WS === undefined && tls !== undefined) {
      if (!env.node) {
        throw new MittoError(
          Status.UNSUPPORTED_FEATURE,
          "ca, servername and rejectUnauthorized apply to wss:// in Node only: a browser verifies the server with its own trust store",
        );
      }
      WS = await wsPackage();
    }
    WS ??= await defaultWebSocket();
    const host = url.host.includes(":") ? `[${url.host}]` : url.host;
    const target = `${url.scheme}://${host}:${url.port}${url.path}`;
    return new Promise((resolve, reject) => {
      let ws: WebSocketLike;
      try {
        ws = tls === undefined ? new WS(target, SUBPROTOCOL) : new WS(target, SUBPROTOCOL, tls);
      } catch (e) {
        reject(new MittoError(Status.BAD_REQUEST, `cannot open ${url.text}: ${(e as Error).message}`));
        return;
      }
      ws.binaryType = "arraybuffer";
      const timer = setTimeout(() => {
        ws.onclose = null;
        ws.close();
        reject(new MittoError(Status.UNAVAILABLE, `cannot connect to ${url.text}: no answer in ${opts.timeoutMs} ms`));
      }, opts.timeoutMs);
      // Node's and ws's error events say why (a certificate not trusted); a browser's do not.
      let why = "";
      ws.onerror = (ev) => {
        const m = (ev as { message?: unknown } | null)?.message;
        if (typeof m === "string") why = m;
      };
      ws.onclose = (ev) => {
        clearTimeout(timer);
        const closed = `WebSocket closed (${ev.code}${ev.reason ? ` ${ev.reason}` : ""})`;
        reject(new MittoError(Status.UNAVAILABLE, `cannot connect to ${url.text}: ${why === "" ? closed : `${why}; ${closed}`}`));
      };
      ws.onopen = () => {
        clearTimeout(timer);
        if (ws.protocol !== SUBPROTOCOL) {
          ws.onclose = null;
          ws.close(CLOSE_PROTOCOL_ERROR, "subprotocol mitto.v1 required");
          reject(new MittoError(Status.PROTOCOL_ERROR, `${url.text} did not accept the WebSocket subprotocol ${SUBPROTOCOL}`));
          return;
        }
        resolve(new WsTransport(ws));
      };
    });
  };
}
