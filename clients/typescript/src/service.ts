// Service instances this client registered (REGISTER): requests the broker routes here run the
// handler; CANCEL and the deadline abort it; a returned async iterable streams the response.

import { Codec, type Payload, toBytes } from "./codec.js";
import { INITIAL_STREAM_CREDIT, WellKnown } from "./proto/constants.js";
import type { DecodedFrame } from "./proto/decoder.js";
import { Headers, readU64Value } from "./proto/headers.js";
import { Flag } from "./proto/constants.js";
import { Status, MittoError } from "./proto/status.js";

/** A request as a service handler sees it. */
export class ServiceRequest {
  private _headers: Headers | undefined;
  /** @internal */
  constructor(
    private readonly f: DecodedFrame,
    /** Aborted when the caller cancels or the deadline passes; `reason` is a MittoError. */
    readonly signal: AbortSignal,
    /** The deadline as `Date.now()` milliseconds, when the request carries one. */
    readonly deadline: number | undefined,
  ) {}
  get subject(): string {
    return this.f.subject;
  }
  get data(): Uint8Array {
    return this.f.payload;
  }
  get kind(): number {
    return this.f.kind;
  }
  get headers(): Headers {
    if (this._headers === undefined) this._headers = Headers.fromEntries(this.f.headers);
    return this._headers;
  }
  string(): string {
    return Codec.text.decode(this.data);
  }
  json<T = unknown>(): T {
    return Codec.json.decode<T>(this.data);
  }
  msgpack<T = unknown>(): T {
    return Codec.msgpack.decode<T>(this.data);
  }
}

/** A handler's answer: a payload, nothing (empty), or items of a streamed response. */
export type ServiceResult = Payload | void | undefined | AsyncIterable<Payload>;
export type ServiceHandler = (req: ServiceRequest) => ServiceResult | Promise<ServiceResult>;

/** What the service layer asks of its client. */
export interface ServiceOwner {
  sendResponse(id: bigint, status: number, payload: Uint8Array): void;
  sendStreamItem(id: bigint, payload: Uint8Array): void;
}

interface Running {
  ctl: AbortController;
  answered: boolean;
  credit: number;
  creditWaiters: (() => void)[];
  timer: ReturnType<typeof setTimeout> | undefined;
}

/** The requests in flight to this client's services, by the broker's call id. */
export class ServiceCalls {
  private running = new Map<bigint, Running>();

  constructor(
    private readonly owner: ServiceOwner,
    private readonly maxInFlight: number,
  ) {}

  get inFlight(): number {
    return this.running.size;
  }

  /** Runs `handler` for the REQUEST `f`. */
  start(f: DecodedFrame, handler: ServiceHandler): void {
    if (this.running.has(f.id)) return;
    if ((f.flags & Flag.START) !== 0) {
      this.owner.sendResponse(f.id, Status.UNSUPPORTED_FEATURE, Codec.text.encode("this service takes no request stream"));
      return;
    }
    if (this.running.size >= this.maxInFlight) {
      this.owner.sendResponse(f.id, Status.BACKPRESSURE_REJECTION, Codec.text.encode("too many requests in flight"));
      return;
    }
    const ctl = new AbortController();
    const r: Running = { ctl, answered: false, credit: INITIAL_STREAM_CREDIT, creditWaiters: [], timer: undefined };
    this.running.set(f.id, r);
    let deadline: number | undefined;
    for (const h of f.headers) {
      if (h.id === WellKnown.DEADLINE) {
        const us = readU64Value(h.value);
        const ms = Number(us / 1000n);
        deadline = Date.now() + ms;
        r.timer = setTimeout(() => this.abort(f.id, Status.TIMEOUT, "the deadline passed"), Math.min(ms, 2_147_483_647));
        break;
      }
    }
    const req = new ServiceRequest(f, ctl.signal, deadline);
    void this.run(f.id, r, req, handler);
  }

  /** CANCEL from the caller (through the broker). */
  cancel(id: bigint): void {
    this.abort(id, Status.CANCELLED, "cancelled by the caller");
  }

  /** CREDIT for a streamed response. */
  credit(id: bigint, n: number): boolean {
    const r = this.running.get(id);
    if (r === undefined) return false;
    r.credit += n;
    const ws = r.creditWaiters;
    r.creditWaiters = [];
    for (const w of ws) w();
    return true;
  }

  /** The connection is gone: abort every handler (their answers have nowhere to go). */
  abortAll(): void {
    for (const id of [...this.running.keys()]) this.abort(id, Status.UNAVAILABLE, "connection lost", false);
  }

  private abort(id: bigint, status: number, why: string, answer = true): void {
    const r = this.running.get(id);
    if (r === undefined) return;
    r.ctl.abort(new MittoError(status, why));
    if (answer) this.answer(id, r, status, Codec.text.encode(why));
    else this.forget(id, r);
  }

  private forget(id: bigint, r: Running): void {
    if (r.timer !== undefined) clearTimeout(r.timer);
    this.running.delete(id);
    const ws = r.creditWaiters;
    r.creditWaiters = [];
    for (const w of ws) w();
  }

  private answer(id: bigint, r: Running, status: number, payload: Uint8Array): void {
    if (r.answered) return;
    r.answered = true;
    this.forget(id, r);
    try {
      this.owner.sendResponse(id, status, payload);
    } catch (e) {
      // An answer the connection refuses (too large) still owes the caller a RESPONSE.
      if (e instanceof MittoError && e.status !== Status.UNAVAILABLE) {
        try {
          this.owner.sendResponse(id, e.status, Codec.text.encode(e.reason));
        } catch {
          // the connection is gone
        }
      }
    }
  }

  private async run(id: bigint, r: Running, req: ServiceRequest, handler: ServiceHandler): Promise<void> {
    try {
      const out = await handler(req);
      if (out !== null && typeof out === "object" && Symbol.asyncIterator in out) {
        for await (const item of out as AsyncIterable<Payload>) {
          while (r.credit === 0 && !r.answered) await new Promise<void>((w) => r.creditWaiters.push(w));
          if (r.answered) return;
          r.credit--;
          this.owner.sendStreamItem(id, toBytes(item));
        }
        this.answer(id, r, Status.OK, new Uint8Array(0));
        return;
      }
      this.answer(id, r, Status.OK, toBytes(out as Payload | undefined));
    } catch (e) {
      if (e instanceof MittoError) this.answer(id, r, e.status === 0 ? Status.EXECUTION_ERROR : e.status, Codec.text.encode(e.reason));
      else this.answer(id, r, Status.EXECUTION_ERROR, Codec.text.encode(e instanceof Error ? e.message : String(e)));
    }
  }
}
