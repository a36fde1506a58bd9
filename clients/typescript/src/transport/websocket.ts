// The WebSocket transport: subprotocol `mitto.v1`, binary messages of whole frames; a text
// message is a protocol error. Works with the browser's WebSocket, Node's built-in one (22+)
// and the `ws` package.

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

export type WebSocketConstructor = new (url: string, protocols: string | string[]) => WebSocketLike;

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

export function dialWebSocket(): (url: ParsedUrl, opts: DialOptions) => Promise<Transport> {
  return async (url, opts) => {
    const WS = (opts.WebSocket as WebSocketConstructor | undefined) ?? (await defaultWebSocket());
    const host = url.host.includes(":") ? `[${url.host}]` : url.host;
    const target = `${url.scheme}://${host}:${url.port}${url.path}`;
    return new Promise((resolve, reject) => {
      let ws: WebSocketLike;
      try {
        ws = new WS(target, SUBPROTOCOL);
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
      ws.onerror = () => {};
      ws.onclose = (ev) => {
        clearTimeout(timer);
        reject(new MittoError(Status.UNAVAILABLE, `cannot connect to ${url.text}: WebSocket closed (${ev.code}${ev.reason ? ` ${ev.reason}` : ""})`));
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
