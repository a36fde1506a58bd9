// What both entry points export.

export { Client, connect, type PublishOptions, type SubscribeOpts, type RequestOptions, type ServiceOptions, type ServiceHandle } from "./client.js";
export { Call } from "./calls.js";
export { Msg } from "./msg.js";
export { Subscription } from "./subscription.js";
export { ServiceRequest, type ServiceHandler, type ServiceResult } from "./service.js";
export { Codec, JSON_CONTENT_TYPE, MSGPACK_CONTENT_TYPE, type Payload } from "./codec.js";
export type { ConnectOptions } from "./options.js";
export { Headers, type HeadersInit } from "./proto/headers.js";
export { MittoError, DecodeError, Status, statusName, isRetryable, isCallerError } from "./proto/status.js";
export { Kind, Feature } from "./proto/constants.js";
export type { HealthReport, StatsReport } from "./proto/body.js";
export { isValidSubject, isValidFilter, subjectMatches } from "./proto/subject.js";
export { SUBPROTOCOL } from "./transport/websocket.js";
export * as proto from "./proto/index.js";
