// A subscription: a bounded queue of messages read as an async iterator, or handed to a callback.

import type { SubscribeOptions } from "./proto/body.js";
import type { MittoError } from "./proto/status.js";
import type { Msg } from "./msg.js";

/** What a subscription asks of its client. */
export interface SubOwner {
  unsubscribeSid(sid: number, after?: number): void;
  grantCredit(sid: number, n: number): void;
}

export class Subscription implements AsyncIterable<Msg> {
  private queue: Msg[] = [];
  private head = 0;
  private waiter: ((r: IteratorResult<Msg>) => void) | undefined;
  private waiterFail: ((e: unknown) => void) | undefined;
  private done = false;
  private error: MittoError | undefined;
  private consumed = 0;
  private resolveClosed!: (err: MittoError | undefined) => void;
  /** Messages dropped because the queue held `maxPending` (the client kept none of them). */
  dropped = 0;
  /** Messages delivered so far. */
  received = 0;
  /** Resolves when the subscription ends: undefined after unsubscribe or close, else why. */
  readonly closed: Promise<MittoError | undefined>;

  /** @internal */
  constructor(
    private readonly owner: SubOwner,
    readonly sid: number,
    readonly subject: string,
    /** @internal The options as sent, for resubscribing after a reconnect. */
    readonly options: SubscribeOptions,
    private readonly maxPending: number,
    private readonly callback?: (err: MittoError | undefined, m: Msg | undefined) => void,
  ) {
    this.closed = new Promise((r) => (this.resolveClosed = r));
  }

  /** @internal A delivery from the connection. */
  push(m: Msg): void {
    if (this.done) return;
    this.received++;
    if (this.callback !== undefined) {
      try {
        this.callback(undefined, m);
      } finally {
        this.consumedOne();
      }
      return;
    }
    if (this.waiter !== undefined) {
      const w = this.waiter;
      this.waiter = undefined;
      this.consumedOne();
      w({ value: m, done: false });
      return;
    }
    if (this.queue.length - this.head >= this.maxPending) {
      this.dropped++;
      return;
    }
    this.queue.push(m);
  }

  /** @internal Ends the subscription (unsubscribed, refused, connection closed). */
  end(err?: MittoError): void {
    if (this.done) return;
    this.done = true;
    this.error = err;
    if (this.callback !== undefined && err !== undefined) this.callback(err, undefined);
    if (this.waiter !== undefined) {
      const w = this.waiter;
      const f = this.waiterFail;
      this.waiter = undefined;
      this.waiterFail = undefined;
      if (err !== undefined && this.head >= this.queue.length) f?.(err);
      else w({ value: undefined, done: true });
    }
    this.resolveClosed(err);
  }

  get isClosed(): boolean {
    return this.done;
  }

  /** Messages waiting to be read. */
  get pending(): number {
    return this.queue.length - this.head;
  }

  /** Ends the subscription now, or after `after` more messages. */
  unsubscribe(after?: number): void {
    if (this.done) return;
    this.owner.unsubscribeSid(this.sid, after);
    if (after === undefined) this.end();
  }

  private consumedOne(): void {
    const credit = this.options.credit;
    if (credit === 0) return;
    // Grant credit back in halves of the initial window, as the Rust client does.
    const step = Math.max(1, credit >> 1);
    if (++this.consumed >= step) {
      this.owner.grantCredit(this.sid, this.consumed);
      this.consumed = 0;
    }
  }

  /** The next message, or undefined once the subscription ended and its queue is empty. */
  async next(): Promise<Msg | undefined> {
    const r = await this.nextResult();
    return r.done ? undefined : r.value;
  }

  private nextResult(): Promise<IteratorResult<Msg>> {
    if (this.head < this.queue.length) {
      const m = this.queue[this.head++] as Msg;
      if (this.head > 1024 && this.head * 2 > this.queue.length) {
        this.queue = this.queue.slice(this.head);
        this.head = 0;
      }
      this.consumedOne();
      return Promise.resolve({ value: m, done: false });
    }
    if (this.done) {
      if (this.error !== undefined) return Promise.reject(this.error);
      return Promise.resolve({ value: undefined, done: true });
    }
    if (this.waiter !== undefined) return Promise.reject(new TypeError("one reader at a time"));
    return new Promise((resolve, reject) => {
      this.waiter = resolve;
      this.waiterFail = reject;
    });
  }

  [Symbol.asyncIterator](): AsyncIterator<Msg> {
    return {
      next: () => this.nextResult(),
      return: async () => {
        this.unsubscribe();
        return { value: undefined, done: true };
      },
    };
  }
}
