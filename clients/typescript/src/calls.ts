// Calls this client opened: unary requests and the three streaming forms (section 10), with
// deadlines, cancellation and per-call stream credit.

import { Codec } from "./codec.js";
import { INITIAL_STREAM_CREDIT } from "./proto/constants.js";
import { Status, MittoError } from "./proto/status.js";
import type { Msg } from "./msg.js";

/** What a call asks of its client. */
export interface CallOwner {
  sendStream(id: bigint, data: Uint8Array, end: boolean): void;
  sendCancel(id: bigint): void;
  grantStreamCredit(id: bigint, n: number): void;
  forget(id: bigint): void;
}

/** Credit the caller grants back after this many items consumed (section 10.5). */
const GRANT_STEP = 32;

/**
 * One call in flight. `response` settles with the RESPONSE (or the failure); for a streamed
 * response, iterate the call for its items; for a streamed request, `send` items and `end`.
 */
export class Call implements AsyncIterable<Uint8Array> {
  readonly response: Promise<Msg>;
  private resolveResponse!: (m: Msg) => void;
  private rejectResponse!: (e: MittoError) => void;
  private items: Uint8Array[] = [];
  private itemsHead = 0;
  private waiter: ((r: IteratorResult<Uint8Array>) => void) | undefined;
  private waiterFail: ((e: unknown) => void) | undefined;
  private granted = INITIAL_STREAM_CREDIT; // items the callee may still send us
  private consumed = 0;
  private sendCredit = INITIAL_STREAM_CREDIT; // items we may still send
  private creditWaiters: (() => void)[] = [];
  private ended = false; // our request stream is finished
  private finished = false; // the call is over
  private failure: MittoError | undefined;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private onAbort: (() => void) | undefined;

  /** @internal */
  constructor(
    private readonly owner: CallOwner,
    readonly id: bigint,
    readonly subject: string,
    timeoutMs: number,
    private readonly signal?: AbortSignal,
  ) {
    this.response = new Promise((res, rej) => {
      this.resolveResponse = res;
      this.rejectResponse = rej;
    });
    // A caller that only iterates the items must not see an unhandled rejection.
    this.response.catch(() => {});
    if (timeoutMs > 0) {
      this.timer = setTimeout(() => this.abandon(new MittoError(Status.TIMEOUT, `${subject}: no response in ${timeoutMs} ms`)), timeoutMs);
    }
    if (signal !== undefined) {
      this.onAbort = () => this.abandon(new MittoError(Status.CANCELLED, `${subject}: cancelled by the caller`, { cause: signal.reason }));
      signal.addEventListener("abort", this.onAbort, { once: true });
    }
  }

  get done(): boolean {
    return this.finished;
  }

  /** Cancels the call: CANCEL goes to the callee, the call fails locally with CANCELLED. */
  cancel(reason = "cancelled by the caller"): void {
    this.abandon(new MittoError(Status.CANCELLED, `${this.subject}: ${reason}`));
  }

  /** Sends one item of a streamed request; waits while the callee has granted no credit. */
  async send(data: Uint8Array | string): Promise<void> {
    const bytes = typeof data === "string" ? Codec.text.encode(data) : data;
    while (this.sendCredit === 0 && !this.finished && !this.ended) {
      await new Promise<void>((r) => this.creditWaiters.push(r));
    }
    if (this.failure !== undefined) throw this.failure;
    if (this.finished) throw new MittoError(Status.UNAVAILABLE, `${this.subject}: the call is over`);
    if (this.ended) throw new MittoError(Status.BAD_REQUEST, `${this.subject}: the request stream was ended`);
    this.sendCredit--;
    this.owner.sendStream(this.id, bytes, false);
  }

  /** Ends the request stream (STREAM with END, no item: allowed without credit). */
  end(): void {
    if (this.ended || this.finished) return;
    this.ended = true;
    this.owner.sendStream(this.id, new Uint8Array(0), true);
  }

  /** @internal A STREAM frame from the callee. */
  item(data: Uint8Array, end: boolean): void {
    if (this.finished) return;
    if (data.length === 0 && end) return;
    if (this.granted === 0) {
      // More items than granted: the callee broke flow control (section 10.5).
      this.owner.sendCancel(this.id);
      this.finish(new MittoError(Status.PROTOCOL_ERROR, `${this.subject}: the callee sent more stream items than it had credit for`));
      return;
    }
    this.granted--;
    if (this.waiter !== undefined) {
      const w = this.waiter;
      this.waiter = undefined;
      this.consumedOne();
      w({ value: data, done: false });
    } else {
      this.items.push(data);
    }
  }

  /** @internal A CREDIT frame from the callee. */
  credit(n: number): void {
    this.sendCredit += n;
    const ws = this.creditWaiters;
    this.creditWaiters = [];
    for (const w of ws) w();
  }

  /** @internal RESPONSE arrived (status OK or not), or the call failed. */
  finish(err: MittoError | undefined, reply?: Msg): void {
    if (this.finished) return;
    this.finished = true;
    this.failure = err;
    if (this.timer !== undefined) clearTimeout(this.timer);
    if (this.onAbort !== undefined) this.signal?.removeEventListener("abort", this.onAbort);
    this.owner.forget(this.id);
    if (err !== undefined) this.rejectResponse(err);
    else this.resolveResponse(reply as Msg);
    const ws = this.creditWaiters;
    this.creditWaiters = [];
    for (const w of ws) w();
    if (this.waiter !== undefined) {
      const w = this.waiter;
      const f = this.waiterFail;
      this.waiter = undefined;
      this.waiterFail = undefined;
      if (err !== undefined) f?.(err);
      else w({ value: undefined, done: true });
    }
  }

  private abandon(err: MittoError): void {
    if (this.finished) return;
    this.owner.sendCancel(this.id);
    this.finish(err);
  }

  private consumedOne(): void {
    if (++this.consumed >= GRANT_STEP && !this.finished) {
      this.granted += this.consumed;
      this.owner.grantStreamCredit(this.id, this.consumed);
      this.consumed = 0;
    }
  }

  private nextItem(): Promise<IteratorResult<Uint8Array>> {
    if (this.itemsHead < this.items.length) {
      const v = this.items[this.itemsHead++] as Uint8Array;
      if (this.itemsHead === this.items.length) {
        this.items = [];
        this.itemsHead = 0;
      }
      this.consumedOne();
      return Promise.resolve({ value: v, done: false });
    }
    if (this.finished) {
      return this.failure !== undefined ? Promise.reject(this.failure) : Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => {
      this.waiter = resolve;
      this.waiterFail = reject;
    });
  }

  [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    return {
      next: () => this.nextItem(),
      return: async () => {
        if (!this.finished) this.cancel("the caller stopped reading the stream");
        return { value: undefined, done: true };
      },
    };
  }
}
