// Wire constants of the mitto protocol (spec/PROTOCOL.md sections 1.4, 3, 4, 8.3).

export const MAGIC = new Uint8Array([0x4d, 0x49, 0x54, 0x4f]); // "MITO"
export const VERSION_MAJOR = 1;
export const VERSION_MINOR = 1; // protocol 1.1 (the spec's changelog)
export const HEADER_LEN = 32;
export const DEFAULT_MAX_PAYLOAD = 67_108_864;
export const DEFAULT_MAX_HEADERS = 65_536;
export const MAX_SUBJECT = 4096;
/** The largest frame before the handshake completes (section 8.1): 32 + 256 + 1,024 + 4,096. */
export const HANDSHAKE_MAX_FRAME = 5408;
export const INITIAL_STREAM_CREDIT = 64;

/** Frame types (section 3.1). */
export const FrameType = {
  HELLO: 0x01,
  SUBSCRIBE: 0x02,
  UNSUBSCRIBE: 0x03,
  PUBLISH: 0x04,
  EVENT: 0x05,
  ACK: 0x06,
  ERROR: 0x07,
  PING: 0x08,
  PONG: 0x09,
  CLOSE: 0x0a,
  REQUEST: 0x0b,
  RESPONSE: 0x0c,
  STREAM: 0x0d,
  CANCEL: 0x0e,
  CREDIT: 0x0f,
  NACK: 0x10,
  HEALTH: 0x11,
  STATS: 0x12,
  REGISTER: 0x13,
  UNREGISTER: 0x14,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

const TYPE_NAMES: readonly string[] = [
  "",
  "HELLO",
  "SUBSCRIBE",
  "UNSUBSCRIBE",
  "PUBLISH",
  "EVENT",
  "ACK",
  "ERROR",
  "PING",
  "PONG",
  "CLOSE",
  "REQUEST",
  "RESPONSE",
  "STREAM",
  "CANCEL",
  "CREDIT",
  "NACK",
  "HEALTH",
  "STATS",
  "REGISTER",
  "UNREGISTER",
];

/** The upper-case name of a frame type, or `0x<tt>` for an undefined one. */
export function frameTypeName(t: number): string {
  return (t > 0 && TYPE_NAMES[t]) || `0x${t.toString(16).padStart(2, "0")}`;
}

/** The frame type of an upper-case name, or undefined. */
export function frameTypeOf(name: string): number | undefined {
  const i = TYPE_NAMES.indexOf(name);
  return i > 0 ? i : undefined;
}

export function isDefinedType(t: number): boolean {
  return t >= 0x01 && t <= 0x14;
}

/** Flag bits (section 4.1). */
export const Flag = {
  ACK_REQUIRED: 0x01,
  COMPRESSED: 0x02,
  URGENT: 0x04,
  START: 0x08,
  END: 0x10,
  REPLY: 0x20,
} as const;
export const RESERVED_FLAGS = 0xc0;
export const FLAG_NAMES = ["ACK_REQUIRED", "COMPRESSED", "URGENT", "START", "END", "REPLY"] as const;

const MSG = Flag.ACK_REQUIRED | Flag.COMPRESSED | Flag.URGENT;
const PAYLOAD = Flag.COMPRESSED | Flag.URGENT;
/** Flags each frame type allows, indexed by type (table 3.1). */
export const ALLOWED_FLAGS: readonly number[] = [
  0,
  Flag.REPLY, // HELLO
  Flag.ACK_REQUIRED, // SUBSCRIBE
  Flag.ACK_REQUIRED, // UNSUBSCRIBE
  MSG, // PUBLISH
  MSG, // EVENT
  0, // ACK
  0, // ERROR
  0, // PING
  0, // PONG
  0, // CLOSE
  PAYLOAD | Flag.START, // REQUEST
  PAYLOAD, // RESPONSE
  PAYLOAD | Flag.END, // STREAM
  0, // CANCEL
  0, // CREDIT
  0, // NACK
  Flag.REPLY, // HEALTH
  Flag.REPLY, // STATS
  Flag.ACK_REQUIRED, // REGISTER
  Flag.ACK_REQUIRED, // UNREGISTER
];

/** What each type says about the subject: 0 none, 1 literal, 2 filter. */
export const SUBJECT_RULE: readonly number[] = [
  0, 0, 2, 0, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0,
];

/** Types whose `aux` must be non-zero (a subscription or service instance id). */
export function needsSid(t: number): boolean {
  return (
    t === FrameType.SUBSCRIBE ||
    t === FrameType.UNSUBSCRIBE ||
    t === FrameType.EVENT ||
    t === FrameType.REGISTER ||
    t === FrameType.UNREGISTER
  );
}

/** Message kinds (section 4.2); 6..=127 are reserved, 128..=255 the application's. */
export const Kind = {
  NONE: 0,
  EVENT: 1,
  COMMAND: 2,
  STATE: 3,
  LOG: 4,
  METRIC: 5,
} as const;

/** Feature bits (section 8.3). */
export const Feature = {
  STREAMING: 0x01,
  BATCHING: 0x02,
  PRIORITY: 0x04,
  COMPRESSION_LZ4: 0x08,
  ACKS: 0x10,
  FLOW_CONTROL: 0x20,
  SESSION_RESUME: 0x40,
  TRACE_CONTEXT: 0x80,
} as const;
export const FEATURE_NAMES = [
  "STREAMING",
  "BATCHING",
  "PRIORITY",
  "COMPRESSION_LZ4",
  "ACKS",
  "FLOW_CONTROL",
  "SESSION_RESUME",
  "TRACE_CONTEXT",
] as const;

/** HELLO body flag: the session was resumed (server's reply only). */
export const HELLO_RESUMED = 0x0001;

/** Well-known header compact ids (section 6.2). */
export const WellKnown = {
  CONTENT_TYPE: 1,
  CORRELATION_ID: 2,
  REPLY_TO: 3,
  DEADLINE: 4,
  TRACEPARENT: 5,
  TRACESTATE: 6,
  TTL: 7,
  AUTH: 8,
  /** 1.1: how many times the broker delivered the message (u32, 4 bytes); on redeliveries. */
  DELIVERY_COUNT: 9,
} as const;
export const WELL_KNOWN_NAMES = [
  "",
  "content-type",
  "correlation-id",
  "reply-to",
  "deadline",
  "traceparent",
  "tracestate",
  "ttl",
  "auth",
  "delivery-count",
] as const;

/** The compact id of a well-known name in any ASCII case, or 0. */
export function wellKnownId(name: string): number {
  if (name.length < 3 || name.length > 14) return 0;
  // ASCII case only: Unicode case mapping (the Kelvin sign, dotted I) must not match.
  const lower = name.replace(/[A-Z]/g, (c) => String.fromCharCode(c.charCodeAt(0) | 0x20));
  for (let i = 1; i < WELL_KNOWN_NAMES.length; i++) {
    if (WELL_KNOWN_NAMES[i] === lower) return i;
  }
  return 0;
}
