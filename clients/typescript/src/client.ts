// The client: one connection at a time to a broker or an RPC server, with subscriptions,
// requests, services and RPC calls that outlive a lost connection when they can.

import { Call, type CallOwner } from "./calls.js";
import { type Payload, toBytes } from "./codec.js";
import { Connection } from "./conn.js";
import { Msg, type MsgOwner } from "./msg.js";
import { type ConnectOptions, type Resolved, resolve } from "./options.js";
import {
  Delivery,
  type HealthReport,
  type Hello,
  Policy,
  type StatsReport,
  type SubscribeOptions,
  encodeSubscribeOptions,
  encodeU32,
  hello,
} from "./proto/body.js";
import { Feature, Flag, FrameType, HELLO_RESUMED, WellKnown, frameTypeName } from "./proto/constants.js";
import type { DecodedFrame } from "./proto/decoder.js";
import { type Frame, frame } from "./proto/frame.js";
import { Headers, type HeadersInit, u64Value } from "./proto/headers.js";
import { DecodeError, MittoError, Status } from "./proto/status.js";
import { subjectError, subjectMatches } from "./proto/subject.js";
import { encodeUtf8 } from "./proto/utf8.js";
import { ServiceCalls, type ServiceHandler } from "./service.js";
import { Subscription, type SubOwner } from "./subscription.js";
import type { DialOptions, Dialer, ParsedUrl, Transport } from "./transport/types.js";
import { parseUrl } from "./url.js";

/** Transports by scheme, filled in by the entry point (Node or browser). */
export const dialers: Partial<Record<ParsedUrl["scheme"], Dialer>> = {};

export interface PublishOptions {
  headers?: HeadersInit;
  kind?: number;
  urgent?: boolean;
  /** A `reply-to` subject for the receivers' answers. */
  replyTo?: string;
}

export interface SubscribeOpts {
  /** Join this queue group: each message goes to one member. */
  queue?: string;
  /**
   * Durable name (protocol 1.1): the broker keeps this subscription's messages, those not yet
   * acknowledged included, for the next subscriber of the same name and user.
   */
  durable?: string;
  /** At-least-once: every message must be `ack()`ed (or `nack()`ed) or it comes again. */
  ack?: boolean;
  ackWaitMs?: number;
  maxDeliver?: number;
  /** Broker-side queue bound and slow-consumer policy. */
  maxPending?: number;
  policy?: "block" | "drop-oldest" | "drop-newest" | "disconnect";
  /** Flow control: the broker sends at most this many messages ahead of what was read. */
  credit?: number;
  /** Messages are handed to this function instead of the async iterator. */
  callback?: (err: MittoError | undefined, m: Msg | undefined) => void;
}

export interface RequestOptions {
  /** ms; sent as the `deadline` header; the call fails with TIMEOUT and CANCEL goes out. */
  timeoutMs?: number;
  /** Aborting it cancels the call: CANCEL reaches the responder. */
  signal?: AbortSignal;
  headers?: HeadersInit;
  kind?: number;
}

export interface ServiceOptions {
  /** Service group: the broker sends each request to one member. */
  queue?: string;
  /** Bound of the requests in flight to this instance, at the broker. */
  maxPending?: number;
}

const POLICY: Record<NonNullable<SubscribeOpts["policy"]>, number> = {
  block: Policy.BLOCK,
  "drop-oldest": Policy.DROP_OLDEST,
  "drop-newest": Policy.DROP_NEWEST,
  disconnect: Policy.DISCONNECT,
};

interface Registered {
  iid: number;
  filter: string;
  options: SubscribeOptions;
  handler: ServiceHandler;
}

interface Waiting {
  resolve: (f: DecodedFrame) => void;
  reject: (e: MittoError) => void;
}

/** A registered service; `stop()` unregisters it. */
export interface ServiceHandle {
  readonly subject: string;
  stop(): Promise<void>;
}

const NO_HEADERS: Frame["headers"] = [];

/** Literal subjects already found valid (a publisher repeats a few). */
const validLiterals = new Set<string>();

function checkSubject(s: string, filter: boolean): void {
  if (!filter && validLiterals.has(s)) return;
  const why = subjectError(s, filter);
  if (why !== null) throw new MittoError(Status.INVALID_SUBJECT, `invalid subject ${JSON.stringify(s)}: ${why}`);
  if (!filter) {
    if (validLiterals.size >= 4096) validLiterals.clear();
    validLiterals.add(s);
  }
}

/** Connects to `url` (tcp://, tls://, unix://, ws://, wss://, or host:port) and says HELLO. */
export async function connect(url: string, options: ConnectOptions = {}): Promise<Client> {
  const c = new Client(parseUrl(url), resolve(options));
  await c.open();
  return c;
}

export class Client implements MsgOwner, SubOwner, CallOwner {
  private conn: Connection | undefined;
  private hello: Hello | undefined;
  private session = "";
  private nextId = 1n;
  private nextSid = 1;
  private readonly subs = new Map<number, Subscription>();
  /** Subscriptions the broker's session holds (sent on this session). */
  private readonly known = new Set<number>();
  private readonly services = new Map<number, Registered>();
  private readonly calls = new Map<bigint, Call>();
  private readonly waiting = new Map<bigint, Waiting>();
  private readonly serving: ServiceCalls;
  private backlog: Frame[] = [];
  private backlogBytes = 0;
  private state: "connecting" | "open" | "reconnecting" | "closed" = "connecting";
  private resolveClosed!: (err: MittoError | undefined) => void;
  /** Resolves when the client is closed for good: undefined after `close()`, else why. */
  readonly closed: Promise<MittoError | undefined>;
  /** Times the connection came back. */
  reconnects = 0;

  /** @internal use `connect()` */
  constructor(
    readonly url: ParsedUrl,
    private readonly opts: Resolved,
  ) {
    this.closed = new Promise((r) => (this.resolveClosed = r));
    this.serving = new ServiceCalls(
      {
        sendResponse: (id, status, payload) => this.send(frame({ type: FrameType.RESPONSE, id, status, payload })),
        sendStreamItem: (id, payload) => this.send(frame({ type: FrameType.STREAM, id, payload })),
      },
      opts.maxServiceInFlight,
    );
  }

  /** The values agreed in the handshake (features, limits, keepalive, session). */
  get info(): Hello | undefined {
    return this.hello;
  }

  get maxPayload(): number {
    return this.hello?.maxPayload ?? 67_108_864;
  }

  get isClosed(): boolean {
    return this.state === "closed";
  }

  /** @internal */
  async open(): Promise<void> {
    await this.dialAndHello();
    this.state = "open";
  }

  private async dialAndHello(): Promise<boolean> {
    const dial = dialers[this.url.scheme];
    if (dial === undefined) {
      throw new MittoError(Status.UNSUPPORTED_FEATURE, `${this.url.scheme}:// is not available here`);
    }
    const dialOpts: DialOptions = { timeoutMs: this.opts.timeoutMs };
    if (this.opts.ca !== undefined) dialOpts.ca = this.opts.ca;
    if (this.opts.servername !== undefined) dialOpts.servername = this.opts.servername;
    if (this.opts.rejectUnauthorized !== undefined) dialOpts.rejectUnauthorized = this.opts.rejectUnauthorized;
    if (this.opts.WebSocket !== undefined) dialOpts.WebSocket = this.opts.WebSocket;
    const t: Transport = await dial(this.url, dialOpts);
    const conn = new Connection(t);
    let features = Feature.STREAMING | Feature.BATCHING | Feature.ACKS | Feature.FLOW_CONTROL | Feature.SESSION_RESUME;
    if (this.opts.compression) features |= Feature.COMPRESSION_LZ4;
    const offer = hello({
      features,
      maxPayload: this.opts.maxPayload,
      keepaliveMs: this.opts.keepaliveMs,
      name: this.opts.name,
      clientId: this.opts.clientId,
      session: this.session,
      user: this.opts.user ?? "",
      auth: encodeUtf8(this.opts.password ?? this.opts.token ?? ""),
    });
    const agreed = await conn.handshake(offer, this.opts.timeoutMs, {
      frame: (f) => this.onFrame(f),
      badFrame: (e) => this.onBadFrame(e),
      closed: (e) => this.onClosed(conn, e),
    });
    this.conn = conn;
    this.hello = agreed;
    const resumed = this.session !== "" && (agreed.flags & HELLO_RESUMED) !== 0 && agreed.session === this.session;
    this.session = agreed.session;
    return resumed;
  }

  // ---- sending ----

  private send(f: Frame): void {
    if (this.state === "closed") throw new MittoError(Status.UNAVAILABLE, "the client is closed");
    if (this.conn === undefined || this.state !== "open") {
      if (f.type === FrameType.PUBLISH || f.type === FrameType.UNSUBSCRIBE || f.type === FrameType.ACK || f.type === FrameType.NACK) {
        const n = f.payload.length + 64;
        if (this.backlogBytes + n > this.opts.reconnectBufferBytes) {
          throw new MittoError(Status.UNAVAILABLE, "reconnecting, and the reconnect buffer is full");
        }
        this.backlog.push(f);
        this.backlogBytes += n;
        return;
      }
      throw new MittoError(Status.UNAVAILABLE, "not connected (reconnecting)");
    }
    this.conn.send(f);
  }

  private id(): bigint {
    return this.nextId++;
  }

  private expectAck(id: bigint): Promise<DecodedFrame> {
    return new Promise((resolve, reject) => this.waiting.set(id, { resolve, reject }));
  }

  /** Publishes a message; returns once it is queued (use `flush` to wait for the broker). */
  publish(subject: string, data?: Payload, opts?: PublishOptions): void {
    checkSubject(subject, false);
    this.send(this.publishFrame(subject, data, opts, 0n, 0));
  }

  /** Publishes with ACK_REQUIRED: resolves when the broker accepted the message. */
  async publishAcked(subject: string, data?: Payload, opts?: PublishOptions): Promise<void> {
    checkSubject(subject, false);
    const id = this.id();
    const acked = this.expectAck(id);
    try {
      this.send(this.publishFrame(subject, data, opts, id, Flag.ACK_REQUIRED));
    } catch (e) {
      this.waiting.delete(id);
      throw e;
    }
    await acked;
  }

  private publishFrame(subject: string, data: Payload | undefined, opts: PublishOptions | undefined, id: bigint, flags: number): Frame {
    // An object literal, not frame(): this is the publishing hot path.
    const f: Frame = { type: FrameType.PUBLISH, flags, kind: 0, id, aux: 0, status: 0, subject, headers: NO_HEADERS, payload: toBytes(data) };
    if (opts !== undefined) {
      if (opts.urgent) f.flags |= Flag.URGENT;
      if (opts.kind !== undefined) f.kind = opts.kind;
      if (opts.headers !== undefined || opts.replyTo !== undefined) {
        const h = new Headers(opts.headers);
        if (opts.replyTo !== undefined) h.set("reply-to", opts.replyTo);
        f.headers = h.entries;
      }
    }
    return f;
  }

  /** Subscribes to a subject filter; read the messages with `for await` or a callback. */
  subscribe(subject: string, opts: SubscribeOpts = {}): Subscription & { ready: Promise<void> } {
    checkSubject(subject, true);
    const options: SubscribeOptions = {
      delivery: opts.ack ? Delivery.AT_LEAST_ONCE : Delivery.AT_MOST_ONCE,
      policy: opts.policy === undefined ? Policy.SERVER_DEFAULT : POLICY[opts.policy],
      maxPending: opts.maxPending ?? 0,
      ackWaitMs: opts.ackWaitMs ?? 0,
      maxDeliver: opts.maxDeliver ?? 0,
      credit: opts.credit ?? 0,
      queue: opts.queue ?? "",
      durable: opts.durable ?? "",
    };
    const sid = this.nextSid++;
    const sub = new Subscription(this, sid, subject, options, this.opts.maxPendingMessages, opts.callback) as Subscription & {
      ready: Promise<void>;
    };
    this.subs.set(sid, sub);
    sub.ready = this.state === "open" ? this.sendSubscribe(sub) : Promise.resolve();
    sub.ready.catch(() => {});
    return sub;
  }

  private sendSubscribe(sub: Subscription): Promise<void> {
    this.known.add(sub.sid);
    const id = this.id();
    const acked = this.expectAck(id);
    try {
      this.send(
        frame({
          type: FrameType.SUBSCRIBE,
          flags: Flag.ACK_REQUIRED,
          id,
          aux: sub.sid,
          subject: sub.subject,
          payload: encodeSubscribeOptions(sub.options),
        }),
      );
    } catch (e) {
      this.waiting.delete(id);
      return Promise.reject(e);
    }
    return acked.then(
      () => undefined,
      (e: MittoError) => {
        this.subs.delete(sub.sid);
        this.known.delete(sub.sid);
        sub.end(e);
        throw e;
      },
    );
  }

  /** @internal */
  unsubscribeSid(sid: number, after?: number): void {
    if (after === undefined) {
      this.subs.delete(sid);
      this.known.delete(sid);
    }
    try {
      this.send(frame({ type: FrameType.UNSUBSCRIBE, aux: sid, payload: after === undefined ? new Uint8Array(0) : encodeU32(after) }));
    } catch {
      // closed: nothing to unsubscribe from
    }
  }

  /** @internal */
  grantCredit(sid: number, n: number): void {
    if (this.state === "open") this.conn?.send(frame({ type: FrameType.CREDIT, aux: sid, payload: encodeU32(n) }));
  }

  /** @internal */
  respondTo(m: Msg, data: Uint8Array, headers?: Headers): void {
    const to = m.replyTo;
    if (to === undefined) throw new MittoError(Status.BAD_REQUEST, "the message has no reply-to header");
    const h = new Headers(headers);
    const corr = m.headers.get("correlation-id");
    if (corr !== undefined && !h.has("correlation-id")) h.append("correlation-id", corr);
    this.send(frame({ type: FrameType.PUBLISH, subject: to, headers: h.entries, payload: data }));
  }

  /** @internal */
  ackDelivery(m: Msg): void {
    this.send(frame({ type: FrameType.ACK, id: m.id, aux: m.sid }));
  }

  /** @internal */
  nackDelivery(m: Msg, delayMs?: number): void {
    this.send(frame({ type: FrameType.NACK, id: m.id, aux: m.sid, payload: delayMs === undefined ? new Uint8Array(0) : encodeU32(delayMs) }));
  }

  // ---- requests and RPC ----

  private open_(subject: string, data: Payload | undefined, opts: RequestOptions, start: boolean): Call {
    checkSubject(subject, false);
    if (this.state !== "open") throw new MittoError(Status.UNAVAILABLE, "not connected");
    if (opts.signal?.aborted) throw new MittoError(Status.CANCELLED, `${subject}: cancelled before it was sent`);
    const timeout = opts.timeoutMs ?? this.opts.requestTimeoutMs;
    const id = this.id();
    const call = new Call(this, id, subject, timeout, opts.signal);
    const h = new Headers(opts.headers);
    if (timeout > 0 && !h.has("deadline")) h.append("deadline", u64Value(BigInt(timeout) * 1000n));
    this.calls.set(id, call);
    try {
      this.send(
        frame({
          type: FrameType.REQUEST,
          flags: start ? Flag.START : 0,
          kind: opts.kind ?? 0,
          id,
          subject,
          headers: h.entries,
          payload: toBytes(data),
        }),
      );
    } catch (e) {
      this.calls.delete(id);
      call.finish(e as MittoError);
      throw e;
    }
    return call;
  }

  /**
   * A request through the broker (to a registered service, or to subscribers that answer on
   * `reply-to`), or a unary RPC call to a server. NO_RESPONDERS when nobody answers.
   */
  async request(subject: string, data?: Payload, opts: RequestOptions = {}): Promise<Msg> {
    return this.open_(subject, data, opts, false).response;
  }

  /** Alias of `request` for RPC calls. */
  call(subject: string, data?: Payload, opts: RequestOptions = {}): Promise<Msg> {
    return this.request(subject, data, opts);
  }

  /** A server-streaming call: iterate the returned call for the items; `response` ends it. */
  serverStream(subject: string, data?: Payload, opts: RequestOptions = {}): Call {
    return this.open_(subject, data, opts, false);
  }

  /** A client-streaming call: `send` items, `end()`, then await `response`. */
  clientStream(subject: string, opts: RequestOptions = {}): Call {
    return this.open_(subject, undefined, opts, true);
  }

  /** A bidirectional call: `send` / `end` and iterate at once. */
  bidi(subject: string, opts: RequestOptions = {}): Call {
    return this.open_(subject, undefined, opts, true);
  }

  /** @internal */
  sendStream(id: bigint, data: Uint8Array, end: boolean): void {
    this.send(frame({ type: FrameType.STREAM, id, flags: end ? Flag.END : 0, payload: data }));
  }

  /** @internal */
  sendCancel(id: bigint): void {
    if (this.state === "open") {
      try {
        this.conn?.send(frame({ type: FrameType.CANCEL, id }));
      } catch {
        // the connection ended meanwhile
      }
    }
  }

  /** @internal */
  grantStreamCredit(id: bigint, n: number): void {
    if (this.state === "open") this.conn?.send(frame({ type: FrameType.CREDIT, id, payload: encodeU32(n) }));
  }

  /** @internal */
  forget(id: bigint): void {
    this.calls.delete(id);
  }

  // ---- services ----

  /** Registers a service instance: requests to `subject` (a filter) run `handler`. */
  async service(subject: string, handler: ServiceHandler, opts: ServiceOptions = {}): Promise<ServiceHandle> {
    checkSubject(subject, true);
    const iid = this.nextSid++;
    const reg: Registered = {
      iid,
      filter: subject,
      options: { delivery: 0, policy: 0, maxPending: opts.maxPending ?? 0, ackWaitMs: 0, maxDeliver: 0, credit: 0, queue: opts.queue ?? "", durable: "" },
      handler,
    };
    this.services.set(iid, reg);
    try {
      await this.sendRegister(reg);
    } catch (e) {
      this.services.delete(iid);
      throw e;
    }
    return {
      subject,
      stop: async () => {
        if (!this.services.delete(iid)) return;
        const id = this.id();
        const acked = this.expectAck(id);
        this.send(frame({ type: FrameType.UNREGISTER, flags: Flag.ACK_REQUIRED, id, aux: iid }));
        await acked;
      },
    };
  }

  private sendRegister(reg: Registered): Promise<DecodedFrame> {
    const id = this.id();
    const acked = this.expectAck(id);
    this.send(
      frame({
        type: FrameType.REGISTER,
        flags: Flag.ACK_REQUIRED,
        id,
        aux: reg.iid,
        subject: reg.filter,
        payload: encodeSubscribeOptions(reg.options),
      }),
    );
    return acked;
  }

  // ---- queries, flush, close ----

  private query(type: number): Promise<DecodedFrame> {
    const id = this.id();
    const got = this.expectAck(id);
    const timer = setTimeout(() => this.failWaiting(id, new MittoError(Status.TIMEOUT, `no ${frameTypeName(type)} reply`)), this.opts.requestTimeoutMs);
    this.send(frame({ type, id }));
    return got.finally(() => clearTimeout(timer));
  }

  /** The server's HEALTH report. */
  async health(): Promise<HealthReport> {
    return (await this.query(FrameType.HEALTH)).body as HealthReport;
  }

  /** The server's STATS counters. */
  async stats(): Promise<StatsReport> {
    return (await this.query(FrameType.STATS)).body as StatsReport;
  }

  /** Resolves once the server has read everything sent before (a PING round trip). */
  async flush(): Promise<void> {
    if (this.state !== "open" || this.conn === undefined) throw new MittoError(Status.UNAVAILABLE, "not connected");
    await this.conn.ping(this.opts.requestTimeoutMs);
  }

  /** Unsubscribes and unregisters everything, lets calls in flight finish, flushes, closes. */
  async drain(): Promise<void> {
    for (const reg of [...this.services.values()]) {
      this.services.delete(reg.iid);
      this.send(frame({ type: FrameType.UNREGISTER, aux: reg.iid }));
    }
    for (const sub of [...this.subs.values()]) sub.unsubscribe();
    const calls = [...this.calls.values()].map((c) => c.response.catch(() => undefined));
    await Promise.all(calls);
    if (this.state === "open") await this.flush();
    await this.close();
  }

  /** Closes the connection (CLOSE, status OK); everything pending fails with UNAVAILABLE. */
  async close(): Promise<void> {
    if (this.state === "closed") return;
    const conn = this.conn;
    this.state = "closed";
    conn?.close();
    this.shutdown(undefined);
  }

  private shutdown(err: MittoError | undefined): void {
    this.state = "closed";
    const why = err ?? new MittoError(Status.UNAVAILABLE, "the client was closed");
    this.failInFlight(why);
    for (const s of this.subs.values()) s.end(err);
    this.subs.clear();
    this.backlog = [];
    this.resolveClosed(err);
  }

  private failInFlight(why: MittoError): void {
    for (const c of [...this.calls.values()]) c.finish(why);
    this.calls.clear();
    for (const [id, w] of [...this.waiting]) {
      this.waiting.delete(id);
      w.reject(why);
    }
    this.serving.abortAll();
  }

  private failWaiting(id: bigint, e: MittoError): boolean {
    const w = this.waiting.get(id);
    if (w === undefined) return false;
    this.waiting.delete(id);
    w.reject(e);
    return true;
  }

  // ---- what arrives ----

  private onFrame(f: DecodedFrame): void {
    switch (f.type) {
      case FrameType.EVENT: {
        const sub = this.subs.get(f.aux);
        if (sub !== undefined) sub.push(new Msg(f, this));
        return;
      }
      case FrameType.RESPONSE: {
        const c = this.calls.get(f.id);
        if (c === undefined) return;
        if (f.status === Status.OK) c.finish(undefined, new Msg(f, this));
        else c.finish(new MittoError(f.status, new TextDecoder().decode(f.payload) || "the call failed"));
        return;
      }
      case FrameType.STREAM:
        this.calls.get(f.id)?.item(f.payload, (f.flags & Flag.END) !== 0);
        return;
      case FrameType.CREDIT:
        if (f.aux === 0 && !this.serving.credit(f.id, f.body as number)) this.calls.get(f.id)?.credit(f.body as number);
        return;
      case FrameType.ACK:
      case FrameType.HEALTH:
      case FrameType.STATS: {
        const w = this.waiting.get(f.id);
        if (w !== undefined) {
          this.waiting.delete(f.id);
          w.resolve(f);
        }
        return;
      }
      case FrameType.ERROR:
        return this.onError(f);
      case FrameType.REQUEST:
        return this.onRequest(f);
      case FrameType.CANCEL:
        this.serving.cancel(f.id);
        return;
      default:
        this.send(frame({ type: FrameType.ERROR, id: f.id, status: Status.UNEXPECTED_FRAME, payload: encodeUtf8(`a client does not take ${frameTypeName(f.type)}`) }));
    }
  }

  private onError(f: DecodedFrame): void {
    const err = new MittoError(f.status, (f.body as string) || "error");
    if (f.id !== 0n) {
      if (this.failWaiting(f.id, err)) return;
      const c = this.calls.get(f.id);
      if (c !== undefined) return c.finish(err);
    }
    if (f.aux !== 0) {
      const sub = this.subs.get(f.aux);
      if (sub !== undefined) {
        this.subs.delete(f.aux);
        this.known.delete(f.aux);
        sub.end(err);
      }
    }
  }

  private onBadFrame(e: DecodeError): void {
    // The frame is gone; whatever it answered fails with the decode error.
    if (e.id === 0n) return;
    if (this.failWaiting(e.id, e)) return;
    this.calls.get(e.id)?.finish(e);
  }

  private onRequest(f: DecodedFrame): void {
    for (const reg of this.services.values()) {
      if (subjectMatches(reg.filter, f.subject)) return this.serving.start(f, reg.handler);
    }
    this.send(frame({ type: FrameType.RESPONSE, id: f.id, status: Status.NO_RESPONDERS, payload: encodeUtf8(`no service for ${f.subject} here`) }));
  }

  private onClosed(conn: Connection, err: MittoError | undefined): void {
    if (conn !== this.conn || this.state === "closed") return;
    this.conn = undefined;
    const lost = err ?? new MittoError(Status.UNAVAILABLE, "connection closed");
    // Calls are never resumed (section 8.5): they fail as retryable.
    this.failInFlight(new MittoError(Status.UNAVAILABLE, `connection lost: ${lost.reason}`));
    const protocol = err instanceof DecodeError || err?.status === Status.PROTOCOL_ERROR;
    if (!this.opts.reconnect || protocol || err === undefined) {
      this.shutdown(lost);
      return;
    }
    this.state = "reconnecting";
    this.opts.onDisconnect?.(lost);
    void this.reconnectLoop(lost);
  }

  private async reconnectLoop(lost: MittoError): Promise<void> {
    let delay = this.opts.reconnectDelayMs;
    let last: unknown = lost;
    for (let attempt = 1; attempt <= this.opts.maxReconnectAttempts; attempt++) {
      await new Promise((r) => setTimeout(r, delay));
      if (this.state !== "reconnecting") return;
      delay = Math.min(delay * 2, this.opts.reconnectMaxDelayMs);
      let resumed: boolean;
      try {
        resumed = await this.dialAndHello();
      } catch (e) {
        last = e;
        if (e instanceof MittoError && (e.status === Status.UNAUTHORIZED || e.status === Status.FORBIDDEN)) break;
        continue;
      }
      if (this.state !== "reconnecting") {
        this.conn?.close();
        return;
      }
      this.state = "open";
      this.reconnects++;
      this.restore(resumed);
      this.opts.onReconnect?.(resumed);
      return;
    }
    this.shutdown(last instanceof MittoError ? last : new MittoError(Status.UNAVAILABLE, `cannot reconnect: ${String(last)}`));
  }

  /** After a reconnect: subscriptions (unless the session was resumed), services, the backlog. */
  private restore(resumed: boolean): void {
    if (!resumed) this.known.clear();
    for (const sub of this.subs.values()) {
      if (!this.known.has(sub.sid)) this.sendSubscribe(sub).catch(() => {});
    }
    for (const reg of this.services.values()) this.sendRegister(reg).catch(() => {});
    const backlog = this.backlog;
    this.backlog = [];
    this.backlogBytes = 0;
    for (const f of backlog) {
      try {
        this.send(f);
      } catch {
        // refused (too large for the new limits): dropped with the rest of this connection's fate
      }
    }
  }
}

export { WellKnown };
