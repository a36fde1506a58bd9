// What the connection needs from a transport: ordered bytes both ways, and when it ended.

/** An open byte stream (TCP, TLS, Unix socket) or message stream (WebSocket) to one peer. */
export interface Transport {
  /**
   * True when the transport carries messages (WebSocket): every message must hold whole frames,
   * and one that ends inside a frame is a protocol error.
   */
  readonly messages: boolean;
  /** Sends bytes: one or more whole frames. The transport may keep `data` until it is sent. */
  write(data: Uint8Array): void;
  /** Bytes accepted by `write` and not yet handed to the operating system. */
  readonly buffered: number;
  /** Closes the transport; `onClose` follows. */
  close(): void;
  /** Set by the connection before any byte is delivered. */
  onData: (chunk: Uint8Array) => void;
  /** Called once, when the transport ended; `err` says why when it was not a clean close. */
  onClose: (err?: Error) => void;
}

/** Options a dialer may use. */
export interface DialOptions {
  /** TLS: CA certificates to trust (PEM), for a self-signed broker. */
  ca?: string | Uint8Array | (string | Uint8Array)[];
  /** TLS: server name to verify, when it differs from the URL's host. */
  servername?: string;
  /** TLS: set false to skip certificate verification (tests only). */
  rejectUnauthorized?: boolean;
  /** How long to wait for the transport to open, ms. */
  timeoutMs: number;
  /** WebSocket: the constructor to use instead of the platform's. */
  WebSocket?: unknown;
}

/** Opens a transport to a parsed URL. */
export type Dialer = (url: ParsedUrl, opts: DialOptions) => Promise<Transport>;

/** A mitto URL taken apart. */
export interface ParsedUrl {
  scheme: "tcp" | "tls" | "unix" | "ws" | "wss";
  host: string;
  port: number;
  /** Unix socket path, or the WebSocket URL's path and query. */
  path: string;
  /** The URL as given (for messages). */
  text: string;
}
