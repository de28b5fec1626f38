export { SwitchboardClient } from "./client.js";
export type {
  ClientEvents,
  ClientOptions,
  ConnectionState,
  DisconnectEvent,
  DroppedEvent,
  StateChange,
  Timers,
  WebSocketConstructor,
  WebSocketLike,
} from "./client.js";
export { backoffCap, backoffDelay, DEFAULT_BACKOFF } from "./backoff.js";
export type { BackoffOptions } from "./backoff.js";
export {
  CLIENT_LIVENESS_CODE,
  CLIENT_LIVENESS_REASON,
  CLOSE_CODES,
  closeCodeInfo,
  NO_RECONNECT_CODES,
  reconnectRule,
} from "./closeCodes.js";
export type { CloseCodeInfo, ReconnectRule } from "./closeCodes.js";
export { Emitter } from "./emitter.js";
export type * from "./protocol.js";

/** The protocol version this client speaks. */
export const PROTOCOL_VERSION = 1;
