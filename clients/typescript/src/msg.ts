// A message received on a subscription, or the reply to a request.

import { Codec } from "./codec.js";
import { Flag, WellKnown } from "./proto/constants.js";
import type { DecodedFrame } from "./proto/decoder.js";
import { Headers } from "./proto/headers.js";
import { decompress } from "./proto/lz4.js";

/** What a message can do back through its client (respond, ack, nack). */
export interface MsgOwner {
  respondTo(m: Msg, data: Uint8Array, headers?: Headers): void;
  ackDelivery(m: Msg): void;
  nackDelivery(m: Msg, delayMs?: number): void;
  readonly maxPayload: number;
}

export class Msg {
  private _data: Uint8Array | undefined;
  private _headers: Headers | undefined;
  private settled = false;

  /** @internal */
  constructor(
    private readonly f: DecodedFrame,
    private readonly owner: MsgOwner | undefined,
  ) {}

  /** The subject it was published to ("" for a reply). */
  get subject(): string {
    return this.f.subject;
  }
  /** The subscription id it matched (0 for a reply). */
  get sid(): number {
    return this.f.aux;
  }
  /** The delivery id (what ACK / NACK name). */
  get id(): bigint {
    return this.f.id;
  }
  /** The message kind byte. */
  get kind(): number {
    return this.f.kind;
  }
  /** The status of a reply (0 for a message). */
  get status(): number {
    return this.f.status;
  }
  get urgent(): boolean {
    return (this.f.flags & Flag.URGENT) !== 0;
  }
  /** True for a delivery of an at-least-once subscription: `ack()` or `nack()` it. */
  get needsAck(): boolean {
    return (this.f.flags & Flag.ACK_REQUIRED) !== 0;
  }
  get headers(): Headers {
    if (this._headers === undefined) this._headers = Headers.fromEntries(this.f.headers);
    return this._headers;
  }
  /** The payload (decompressed if it came compressed); a view into the received bytes. */
  get data(): Uint8Array {
    if (this._data === undefined) {
      this._data =
        (this.f.flags & Flag.COMPRESSED) !== 0 ? decompress(this.f.payload, this.owner?.maxPayload ?? 67_108_864) : this.f.payload;
    }
    return this._data;
  }
  /** The `reply-to` header, if any. */
  get replyTo(): string | undefined {
    if (this.f.headers.length === 0) return undefined;
    for (const h of this.f.headers) if (h.id === WellKnown.REPLY_TO) return this.headers.getText("reply-to");
    return undefined;
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
  /** Answers a request received on a subscription: publishes to its `reply-to`. */
  respond(data: Uint8Array | string = new Uint8Array(0), headers?: Headers): void {
    if (this.owner === undefined) throw new TypeError("this message cannot be answered");
    this.owner.respondTo(this, typeof data === "string" ? Codec.text.encode(data) : data, headers);
  }
  /** Acknowledges an at-least-once delivery (once; later calls do nothing). */
  ack(): void {
    if (!this.needsAck || this.settled || this.owner === undefined) return;
    this.settled = true;
    this.owner.ackDelivery(this);
  }
  /** Asks for redelivery, no sooner than `delayMs` if given. */
  nack(delayMs?: number): void {
    if (!this.needsAck || this.settled || this.owner === undefined) return;
    this.settled = true;
    this.owner.nackDelivery(this, delayMs);
  }
}
