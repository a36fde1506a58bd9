// Status codes (section 13) and the typed errors built on them.

/** Status codes 0..=21; unknown codes are passed through as numbers. */
export const Status = {
  OK: 0,
  NOT_FOUND: 1,
  METHOD_NOT_FOUND: 2,
  EXECUTION_ERROR: 3,
  TIMEOUT: 4,
  QUOTA_EXCEEDED: 5,
  BACKPRESSURE_REJECTION: 6,
  UNAUTHORIZED: 7,
  FORBIDDEN: 8,
  CANCELLED: 9,
  NO_RESPONDERS: 10,
  BAD_REQUEST: 11,
  PAYLOAD_TOO_LARGE: 12,
  UNSUPPORTED_VERSION: 13,
  PROTOCOL_ERROR: 14,
  UNAVAILABLE: 15,
  INTERNAL: 16,
  INVALID_SUBJECT: 17,
  UNSUPPORTED_FEATURE: 18,
  SLOW_CONSUMER: 19,
  ALREADY_EXISTS: 20,
  UNEXPECTED_FRAME: 21,
} as const;

const NAMES = [
  "ok",
  "not_found",
  "method_not_found",
  "execution_error",
  "timeout",
  "quota_exceeded",
  "backpressure_rejection",
  "unauthorized",
  "forbidden",
  "cancelled",
  "no_responders",
  "bad_request",
  "payload_too_large",
  "unsupported_version",
  "protocol_error",
  "unavailable",
  "internal",
  "invalid_subject",
  "unsupported_feature",
  "slow_consumer",
  "already_exists",
  "unexpected_frame",
] as const;

const RETRYABLE = new Set<number>([4, 5, 6, 10, 15, 19]);
const CALLER_ERROR = new Set<number>([1, 2, 7, 8, 11, 12, 13, 17, 18, 20, 21]);

/** The canonical lower-case name of a status, or `status_<n>` for an undefined one. */
export function statusName(status: number): string {
  return NAMES[status] ?? `status_${status}`;
}

/** Whether the same operation may succeed if tried again later (section 13). */
export function isRetryable(status: number): boolean {
  return RETRYABLE.has(status);
}

/** Whether the sender's input is at fault (section 13). */
export function isCallerError(status: number): boolean {
  return CALLER_ERROR.has(status);
}

/**
 * Every failure the client reports: a status code from the spec and a reason for humans.
 * Match on `status` (or the `is*` helpers), never on the reason text.
 */
export class MittoError extends Error {
  override readonly name: string = "MittoError";
  constructor(
    readonly status: number,
    readonly reason: string,
    options?: { cause?: unknown },
  ) {
    super(`${statusName(status)}: ${reason}`, options);
  }
  get statusName(): string {
    return statusName(this.status);
  }
  get retryable(): boolean {
    return isRetryable(this.status);
  }
  get callerError(): boolean {
    return isCallerError(this.status);
  }
  isTimeout(): boolean {
    return this.status === Status.TIMEOUT;
  }
  isNoResponders(): boolean {
    return this.status === Status.NO_RESPONDERS;
  }
  isCancelled(): boolean {
    return this.status === Status.CANCELLED;
  }
}

/** The decode error kinds of section 14.3, one-to-one with the vectors' `code`. */
export type DecodeErrorCode =
  | "bad_magic"
  | "unsupported_version"
  | "unknown_frame_type"
  | "reserved_flags"
  | "flag_not_allowed"
  | "reserved_kind"
  | "payload_too_large"
  | "headers_too_large"
  | "subject_too_long"
  | "missing_subject"
  | "unexpected_subject"
  | "subject_not_utf8"
  | "invalid_subject"
  | "malformed_headers"
  | "malformed_body"
  | "missing_subscription_id"
  | "decompression"
  | "truncated";

const CODE_STATUS: Record<DecodeErrorCode, number> = {
  bad_magic: Status.PROTOCOL_ERROR,
  unsupported_version: Status.UNSUPPORTED_VERSION,
  truncated: Status.PROTOCOL_ERROR,
  payload_too_large: Status.PAYLOAD_TOO_LARGE,
  headers_too_large: Status.PAYLOAD_TOO_LARGE,
  subject_too_long: Status.PAYLOAD_TOO_LARGE,
  unknown_frame_type: Status.UNSUPPORTED_FEATURE,
  reserved_flags: Status.BAD_REQUEST,
  flag_not_allowed: Status.BAD_REQUEST,
  reserved_kind: Status.BAD_REQUEST,
  missing_subscription_id: Status.BAD_REQUEST,
  missing_subject: Status.BAD_REQUEST,
  unexpected_subject: Status.BAD_REQUEST,
  subject_not_utf8: Status.INVALID_SUBJECT,
  invalid_subject: Status.INVALID_SUBJECT,
  malformed_headers: Status.BAD_REQUEST,
  malformed_body: Status.BAD_REQUEST,
  decompression: Status.BAD_REQUEST,
};

/** A frame (or the byte stream) the decoder refused; `fatal` means the stream is lost. */
export class DecodeError extends MittoError {
  override readonly name: string = "DecodeError";
  readonly fatal: boolean;
  constructor(
    readonly code: DecodeErrorCode,
    reason: string,
    /** The id the ERROR frame answering it carries: the frame's, or 0 when unknown. */
    readonly id: bigint,
  ) {
    super(CODE_STATUS[code], reason);
    this.fatal = code === "bad_magic" || code === "unsupported_version" || code === "truncated";
  }
}
