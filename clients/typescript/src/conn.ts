// One connection: a transport, the decoder, the outbound buffer (frames written in one batch
// per turn of the event loop), the handshake, keepalive and close. The client above it sees
// whole frames and one `closed` notice.

import {
  DEFAULT_MAX_HEADERS,
  DEFAULT_MAX_PAYLOAD,
  Flag,
  FrameType,
  HANDSHAKE_MAX_FRAME,
  HEADER_LEN,
  MAX_SUBJECT,
  frameTypeName,
} from "./proto/constants.js";
import { type Hello, encodeHello, encodeHealth, encodeStats } from "./proto/body.js";
import { type DecodedFrame, Decoder } from "./proto/decoder.js";
import { type Frame, encodeInto, encodedLength, frame, subjectBytes } from "./proto/frame.js";
import { headersLength } from "./proto/headers.js";
import { DecodeError, MittoError, Status } from "./proto/status.js";
import { encodeUtf8 } from "./proto/utf8.js";
import type { Transport } from "./transport/types.js";

/** What the connection hands up. */
export interface ConnEvents {
  /** Every frame after the handshake that the connection does not answer itself. */
  frame(f: DecodedFrame): void;
  /** A frame of the peer's was refused (already answered with ERROR); `id` is its id. */
  badFrame(e: DecodeError): void;
  /** The connection ended: `err` undefined after our own close, else why. */
  closed(err: MittoError | undefined): void;
}

const MIN_BATCH = 64 * 1024;

/** ERROR, CLOSE and a failed RESPONSE: frames whose status is what the receiver acts on. */
function isAnswer(f: Frame): boolean {
  return f.type === FrameType.ERROR || f.type === FrameType.CLOSE || (f.type === FrameType.RESPONSE && f.status !== Status.OK);
}

const d = (x: number, def: number) => (x === 0 ? def : x);

/** The agreement of section 8.2, computed from the client's offer and the server's reply. */
export function agree(offer: Hello, reply: Hello): Hello {
  const k =
    offer.keepaliveMs === 0 ? reply.keepaliveMs : reply.keepaliveMs === 0 ? offer.keepaliveMs : Math.min(offer.keepaliveMs, reply.keepaliveMs);
  return {
    ...reply,
    minor: Math.min(offer.minor, reply.minor),
    features: offer.features & reply.features,
    maxPayload: Math.min(d(offer.maxPayload, DEFAULT_MAX_PAYLOAD), d(reply.maxPayload, DEFAULT_MAX_PAYLOAD)),
    maxHeaders: Math.min(d(offer.maxHeaders, DEFAULT_MAX_HEADERS), d(reply.maxHeaders, DEFAULT_MAX_HEADERS)),
    keepaliveMs: k,
  };
}

export class Connection {
  private readonly decoder = new Decoder();
  private out = new Uint8Array(MIN_BATCH);
  private outView = new DataView(this.out.buffer);
  private outLen = 0;
  private flushQueued = false;
  private pingId = 0n;
  private lastRecv = Date.now();
  private keepalive: ReturnType<typeof setInterval> | undefined;
  private ended = false;
  private events: ConnEvents | undefined;
  private pings = new Map<bigint, (err?: MittoError) => void>();
  agreed: Hello | undefined;
  readonly stats = { msgsIn: 0, msgsOut: 0, bytesIn: 0, bytesOut: 0 };

  constructor(private readonly transport: Transport) {}

  get maxPayload(): number {
    return this.agreed?.maxPayload ?? DEFAULT_MAX_PAYLOAD;
  }

  /** Sends HELLO and waits for the reply; on success frames flow to `events`. */
  handshake(offer: Hello, timeoutMs: number, events: ConnEvents): Promise<Hello> {
    return new Promise((resolve, reject) => {
      let done = false;
      const finish = (err: MittoError | undefined, agreed?: Hello) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (err !== undefined) {
          this.ended = true;
          this.transport.close();
          reject(err);
          return;
        }
        this.agreed = agreed as Hello;
        this.decoder.limits.maxPayload = this.agreed.maxPayload;
        this.decoder.limits.maxHeaders = this.agreed.maxHeaders;
        this.events = events;
        this.transport.onClose = (e) => this.lost(e);
        if (this.agreed.keepaliveMs > 0) this.startKeepalive(this.agreed.keepaliveMs);
        resolve(this.agreed);
      };
      const timer = setTimeout(
        () => finish(new MittoError(Status.TIMEOUT, `no HELLO reply in ${timeoutMs} ms`)),
        timeoutMs,
      );
      // Until the reply, the first frame decides (section 8.1).
      this.events = {
        frame: (f) => {
          if (f.type === FrameType.HELLO && (f.flags & Flag.REPLY) !== 0) {
            const reply = f.body as Hello;
            if (reply.major !== offer.major) {
              finish(new MittoError(Status.UNSUPPORTED_VERSION, `the server speaks protocol ${reply.major}.x`));
            } else {
              finish(undefined, agree(offer, reply));
            }
          } else if (f.type === FrameType.ERROR || f.type === FrameType.CLOSE) {
            finish(new MittoError(f.status === 0 ? Status.UNAVAILABLE : f.status, (f.body as string) || "the server refused the connection"));
          } else {
            this.sendError(f.id, Status.UNEXPECTED_FRAME, `the first frame must be a HELLO reply, not ${frameTypeName(f.type)}`);
            this.sendClose(Status.UNEXPECTED_FRAME, "unexpected frame during the handshake");
            finish(new MittoError(Status.UNEXPECTED_FRAME, `the server answered HELLO with ${frameTypeName(f.type)}`));
          }
        },
        badFrame: (e) => finish(e),
        closed: (e) => finish(e ?? new MittoError(Status.UNAVAILABLE, "connection closed during the handshake")),
      };
      this.transport.onData = (chunk) => this.input(chunk);
      this.transport.onClose = (e) =>
        finish(
          this.truncation() ??
            (e instanceof MittoError
              ? e
              : new MittoError(Status.UNAVAILABLE, `connection closed during the handshake${e ? `: ${e.message}` : ""}`)),
        );
      this.send(frame({ type: FrameType.HELLO, payload: encodeHello(offer) }));
    });
  }

  /** Queues a frame for the next batch; throws PAYLOAD_TOO_LARGE when it breaks the limits. */
  send(f: Frame): void {
    if (this.ended) throw new MittoError(Status.UNAVAILABLE, "the connection is closed");
    if (isAnswer(f)) f = this.fit(f);
    if (f.payload.length > this.maxPayload) {
      throw new MittoError(Status.PAYLOAD_TOO_LARGE, `payload of ${f.payload.length} bytes exceeds the limit of ${this.maxPayload}`);
    }
    if (f.headers.length > 0) {
      const h = headersLength(f.headers);
      const max = this.agreed?.maxHeaders ?? DEFAULT_MAX_HEADERS;
      if (h > max) throw new MittoError(Status.PAYLOAD_TOO_LARGE, `headers block of ${h} bytes exceeds the limit of ${max}`);
    }
    if (f.subject.length > 0 && subjectBytes(f.subject).length > MAX_SUBJECT) {
      throw new MittoError(Status.PAYLOAD_TOO_LARGE, `subject over ${MAX_SUBJECT} bytes`);
    }
    const n = encodedLength(f);
    if (this.outLen + n > this.out.length) this.grow(n);
    this.outLen = encodeInto(f, this.out, this.outView, this.outLen);
    this.stats.msgsOut++;
    this.stats.bytesOut += n;
    if (!this.flushQueued) {
      this.flushQueued = true;
      queueMicrotask(() => this.flush());
    }
  }

  /**
   * An answer that carries a status is never refused for its size: its reason is cut at a UTF-8
   * boundary and its headers left out until it fits the peer's limits.
   */
  private fit(f: Frame): Frame {
    const maxPayload = this.maxPayload;
    const maxHeaders = this.agreed?.maxHeaders ?? DEFAULT_MAX_HEADERS;
    let out = f;
    if (f.headers.length > 0 && headersLength(f.headers) > maxHeaders) out = { ...out, headers: [] };
    if (out.payload.length > maxPayload) {
      const compressed = (out.flags & Flag.COMPRESSED) !== 0;
      let n = compressed ? 0 : maxPayload;
      // Back up to the start of a UTF-8 character (a byte that is not 10xxxxxx).
      while (n > 0 && ((out.payload[n] as number) & 0xc0) === 0x80) n--;
      out = { ...out, flags: out.flags & ~Flag.COMPRESSED, payload: out.payload.subarray(0, n) };
    }
    return out;
  }

  /** Bytes queued here or in the transport, not yet sent. */
  get backlog(): number {
    return this.outLen + this.transport.buffered;
  }

  private grow(n: number): void {
    if (this.outLen === 0 && n <= this.out.length) return;
    let cap = this.out.length;
    while (cap < this.outLen + n) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.out.subarray(0, this.outLen));
    this.out = next;
    this.outView = new DataView(next.buffer);
  }

  /**
   * A WebSocket message holds whole frames and is at most the largest frame the peer accepts
   * (the handshake's until HELLO completes): the batch goes out in as many messages as needed.
   */
  private writeMessages(): void {
    const a = this.agreed;
    const max = a === undefined ? HANDSHAKE_MAX_FRAME : HEADER_LEN + MAX_SUBJECT + a.maxHeaders + a.maxPayload;
    const v = this.outView;
    let start = 0;
    let at = 0;
    while (at < this.outLen) {
      const len = HEADER_LEN + v.getUint16(at + 22) + v.getUint32(at + 24) + v.getUint32(at + 28);
      if (at > start && at + len - start > max) {
        this.transport.write(this.out.slice(start, at));
        start = at;
      }
      at += len;
    }
    this.transport.write(this.out.slice(start, this.outLen));
  }

  /** Writes the batch now. */
  flush(): void {
    this.flushQueued = false;
    if (this.outLen === 0 || this.ended) return;
    // The transport may hold the bytes until sent: hand it a copy and keep the buffer.
    if (this.transport.messages) this.writeMessages();
    else this.transport.write(this.out.slice(0, this.outLen));
    this.outLen = 0;
    if (this.out.length > 16 * MIN_BATCH) {
      this.out = new Uint8Array(MIN_BATCH);
      this.outView = new DataView(this.out.buffer);
    }
  }

  /** A PING round trip: everything sent before it has been read by the peer. */
  ping(timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const id = ++this.pingId;
      const timer = setTimeout(() => {
        this.pings.delete(id);
        reject(new MittoError(Status.TIMEOUT, `no PONG in ${timeoutMs} ms`));
      }, timeoutMs);
      this.pings.set(id, (err) => {
        clearTimeout(timer);
        if (err === undefined) resolve();
        else reject(err);
      });
      try {
        this.send(frame({ type: FrameType.PING, id }));
      } catch (e) {
        clearTimeout(timer);
        this.pings.delete(id);
        reject(e);
      }
    });
  }

  /** Graceful close: CLOSE as the last frame, then the transport. */
  close(status: number = Status.OK, reason = ""): void {
    if (this.ended) return;
    this.sendClose(status, reason);
    this.ended = true;
    this.stopKeepalive();
    this.transport.close();
    this.failPings(new MittoError(Status.UNAVAILABLE, "the connection was closed"));
    const ev = this.events;
    this.events = undefined;
    ev?.closed(undefined);
  }

  private sendClose(status: number, reason: string): void {
    try {
      this.send(frame({ type: FrameType.CLOSE, status, payload: encodeUtf8(reason) }));
      this.flush();
    } catch {
      // already ended
    }
  }

  private sendError(id: bigint, status: number, reason: string): void {
    try {
      this.send(frame({ type: FrameType.ERROR, id, status, payload: encodeUtf8(reason) }));
    } catch {
      // already ended
    }
  }

  private input(chunk: Uint8Array): void {
    if (this.ended) return;
    this.lastRecv = Date.now();
    this.stats.bytesIn += chunk.length;
    this.decoder.push(chunk);
    for (;;) {
      const r = this.decoder.next();
      if (r === null) break;
      if (r instanceof DecodeError) {
        this.sendError(r.id, r.status, r.reason);
        if (r.fatal) return this.fatal(r);
        this.events?.badFrame(r);
        continue;
      }
      this.stats.msgsIn++;
      this.dispatch(r);
      if (this.ended) return;
    }
    if (this.transport.messages && !this.decoder.atBoundary) {
      this.sendError(0n, Status.PROTOCOL_ERROR, "a WebSocket message ended inside a frame");
      this.fatal(new DecodeError("truncated", "a WebSocket message ended inside a frame", 0n));
    }
  }

  private fatal(e: DecodeError): void {
    this.sendClose(e.status, "the byte stream can no longer be trusted");
    this.end(e);
  }

  private dispatch(f: DecodedFrame): void {
    switch (f.type) {
      case FrameType.PING:
        this.send(frame({ type: FrameType.PONG, id: f.id, payload: f.payload }));
        return;
      case FrameType.PONG: {
        const done = this.pings.get(f.id);
        if (done !== undefined) {
          this.pings.delete(f.id);
          done();
        }
        return;
      }
      case FrameType.HEALTH:
      case FrameType.STATS:
        if ((f.flags & Flag.REPLY) === 0 && this.agreed !== undefined) {
          const payload =
            f.type === FrameType.HEALTH
              ? encodeHealth({ state: "serving", uptimeMs: Math.round(performance.now()), server: "mitto-ts/0.1.0" })
              : encodeStats({ bytes_in: this.stats.bytesIn, bytes_out: this.stats.bytesOut, msgs_in: this.stats.msgsIn, msgs_out: this.stats.msgsOut });
          this.send(frame({ type: f.type, flags: Flag.REPLY, id: f.id, payload }));
          return;
        }
        break;
      case FrameType.CLOSE:
        if (this.agreed !== undefined) {
          const status = f.status === Status.OK ? Status.UNAVAILABLE : f.status;
          this.end(new MittoError(status, `the server closed the connection${f.body ? `: ${f.body as string}` : ""}`));
          return;
        }
        break;
      case FrameType.HELLO:
        if (this.agreed !== undefined) {
          this.sendError(f.id, Status.UNEXPECTED_FRAME, "HELLO after the handshake");
          return;
        }
        break;
    }
    this.events?.frame(f);
  }

  private startKeepalive(k: number): void {
    this.keepalive = setInterval(() => {
      if (Date.now() - this.lastRecv > 2 * k) {
        this.end(new MittoError(Status.UNAVAILABLE, `nothing received for ${2 * k} ms`));
        return;
      }
      try {
        this.send(frame({ type: FrameType.PING, id: ++this.pingId }));
      } catch {
        // ended meanwhile
      }
    }, k);
    (this.keepalive as { unref?: () => void }).unref?.();
  }

  private stopKeepalive(): void {
    if (this.keepalive !== undefined) clearInterval(this.keepalive);
    this.keepalive = undefined;
  }

  private failPings(err: MittoError): void {
    const waiting = [...this.pings.values()];
    this.pings.clear();
    for (const w of waiting) w(err);
  }

  /** The stream ended inside a frame: the fatal `truncated` error (section 14.2), or null. */
  private truncation(): DecodeError | null {
    return this.ended ? null : this.decoder.end();
  }

  /** The transport ended without our close. */
  private lost(e?: Error): void {
    if (this.ended && this.events === undefined) return;
    const t = this.truncation();
    if (t !== null) {
      // The peer may have shut down only its sending side: tell it why (section 14.1).
      this.sendError(0n, t.status, t.reason);
      this.sendClose(t.status, "the byte stream can no longer be trusted");
      return this.end(t);
    }
    this.end(e instanceof MittoError ? e : new MittoError(Status.UNAVAILABLE, `connection lost${e ? `: ${e.message}` : ""}`));
  }

  private end(err: MittoError): void {
    const wasEnded = this.ended;
    this.ended = true;
    this.stopKeepalive();
    if (!wasEnded) this.transport.close();
    this.failPings(err);
    const ev = this.events;
    this.events = undefined;
    ev?.closed(err);
  }
}
