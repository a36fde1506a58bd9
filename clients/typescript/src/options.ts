// Connection options and their defaults.

import type { WebSocketConstructor } from "./transport/websocket.js";

export interface ConnectOptions {
  /** Name sent in HELLO. */
  name?: string;
  /** Token authentication (HELLO `auth`, empty user). */
  token?: string;
  /** User/password authentication. */
  user?: string;
  password?: string;
  /** Stable client id (for session resume); a random one when absent. */
  clientId?: string;
  /** Connect and handshake timeout, ms (default 10 000). */
  timeoutMs?: number;
  /** Default request timeout, ms (default 10 000); sent as the `deadline` header. */
  requestTimeoutMs?: number;
  /** Keepalive interval proposed in HELLO, ms (default 30 000; 0 proposes none). */
  keepaliveMs?: number;
  /** Largest payload this client accepts, bytes (0 or absent: the protocol's 64 MiB). */
  maxPayload?: number;
  /** Offer LZ4 compression (received compressed payloads are decompressed on read). */
  compression?: boolean;
  /** Reconnect after a lost connection (default true), resuming the session. */
  reconnect?: boolean;
  /** Most reconnect attempts in a row before giving up (default: no limit). */
  maxReconnectAttempts?: number;
  /** First wait between reconnect attempts, ms (default 100; doubles up to `reconnectMaxDelayMs`). */
  reconnectDelayMs?: number;
  reconnectMaxDelayMs?: number;
  /** Bytes of publishes kept while reconnecting (default 8 MiB); beyond, publish throws. */
  reconnectBufferBytes?: number;
  /** Messages a subscription queues for a reader that has not caught up (default 65 536). */
  maxPendingMessages?: number;
  /** Requests a service instance runs at once (default 1024). */
  maxServiceInFlight?: number;
  /**
   * TLS: CA certificate(s) to trust, PEM, for tls:// and, in Node, wss:// (through the `ws`
   * package). A browser uses its own trust store: there these options are refused.
   */
  ca?: string | Uint8Array | (string | Uint8Array)[];
  /** TLS: server name to verify when it differs from the URL's host (tls://, and wss:// in Node). */
  servername?: string;
  /** TLS: verify the certificate (default true; tls://, and wss:// in Node). */
  rejectUnauthorized?: boolean;
  /**
   * WebSocket constructor to use instead of the platform's (or the `ws` package's); with TLS
   * options on wss:// it gets them as its third argument, as `ws` takes them.
   */
  WebSocket?: WebSocketConstructor;
  /** Told when the connection was lost and when it came back. */
  onDisconnect?: (err: Error) => void;
  onReconnect?: (resumed: boolean) => void;
}

export type Resolved = Required<Omit<ConnectOptions, "token" | "user" | "password" | "ca" | "servername" | "WebSocket" | "onDisconnect" | "onReconnect" | "rejectUnauthorized">> &
  Pick<ConnectOptions, "token" | "user" | "password" | "ca" | "servername" | "WebSocket" | "onDisconnect" | "onReconnect" | "rejectUnauthorized">;

function randomId(): string {
  const b = new Uint8Array(12);
  globalThis.crypto.getRandomValues(b);
  return "ts-" + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

export function resolve(o: ConnectOptions): Resolved {
  return {
    name: "mitto-ts",
    clientId: randomId(),
    timeoutMs: 10_000,
    requestTimeoutMs: 10_000,
    keepaliveMs: 30_000,
    maxPayload: 0,
    compression: false,
    reconnect: true,
    maxReconnectAttempts: Number.POSITIVE_INFINITY,
    reconnectDelayMs: 100,
    reconnectMaxDelayMs: 2_000,
    reconnectBufferBytes: 8 * 1024 * 1024,
    maxPendingMessages: 65_536,
    maxServiceInFlight: 1024,
    ...Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)),
  } as Resolved;
}
