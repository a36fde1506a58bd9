// TCP, TLS and Unix-socket transports on node:net and node:tls.

import * as net from "node:net";
import * as tls from "node:tls";
import { Status, MittoError } from "../proto/status.js";
import type { DialOptions, ParsedUrl, Transport } from "./types.js";

class SocketTransport implements Transport {
  readonly messages = false;
  onData: (chunk: Uint8Array) => void = () => {};
  onClose: (err?: Error) => void = () => {};
  private closed = false;

  constructor(private readonly sock: net.Socket) {
    sock.setNoDelay(true);
    sock.on("data", (b: Buffer) => this.onData(b));
    let error: Error | undefined;
    sock.on("error", (e) => {
      error = e;
    });
    sock.on("close", () => {
      if (this.closed) return;
      this.closed = true;
      this.onClose(error);
    });
  }

  get buffered(): number {
    return this.sock.writableLength;
  }

  write(data: Uint8Array): void {
    if (!this.sock.destroyed) this.sock.write(data);
  }

  close(): void {
    // end() flushes what was written (the CLOSE frame) before the FIN.
    this.sock.end();
    setTimeout(() => this.sock.destroy(), 1000).unref();
  }
}

export function dialSocket(url: ParsedUrl, opts: DialOptions): Promise<Transport> {
  return new Promise((resolve, reject) => {
    let sock: net.Socket;
    const event = url.scheme === "tls" ? "secureConnect" : "connect";
    if (url.scheme === "unix") {
      sock = net.connect({ path: url.path });
    } else if (url.scheme === "tls") {
      const o: tls.ConnectionOptions = { host: url.host, port: url.port };
      // SNI carries host names only; an IP address is still verified against the certificate.
      const name = opts.servername ?? (net.isIP(url.host) === 0 ? url.host : undefined);
      if (name !== undefined) o.servername = name;
      if (opts.ca !== undefined) o.ca = opts.ca as tls.ConnectionOptions["ca"];
      if (opts.rejectUnauthorized !== undefined) o.rejectUnauthorized = opts.rejectUnauthorized;
      sock = tls.connect(o);
    } else {
      sock = net.connect({ host: url.host, port: url.port });
    }
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new MittoError(Status.UNAVAILABLE, `cannot connect to ${url.text}: no answer in ${opts.timeoutMs} ms`));
    }, opts.timeoutMs);
    const onError = (e: Error) => {
      clearTimeout(timer);
      reject(new MittoError(Status.UNAVAILABLE, `cannot connect to ${url.text}: ${e.message}`, { cause: e }));
    };
    sock.once("error", onError);
    sock.once(event, () => {
      clearTimeout(timer);
      sock.off("error", onError);
      resolve(new SocketTransport(sock));
    });
  });
}
