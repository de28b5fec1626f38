export { SwitchboardClient } from "./client.js";
export type {
  ClientEvents,
  ClientOptions,
  ConnectionState,
  DisconnectEvent,
  DroppedEvent,
  StateChange,
  Timers,
  TransportKind,
  TransportOption,
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
export { Room, SwitchboardError } from "./room.js";
export type { RoomEvents, RoomLeftEvent, RoomState } from "./room.js";
export { refreshDelay, refreshRetryDelay, REFRESH_FRACTION, REFRESH_MARGIN_MS, REFRESH_MIN_DELAY_MS } from "./refresh.js";
export { refusalClose, SseSocket, SSE_EVENT_TYPES } from "./sse.js";
export type { EventSourceConstructor, EventSourceLike, FetchLike, TransportCloseEvent } from "./sse.js";
export type * from "./protocol.js";

/** The protocol version this client speaks by default (`protocol: 2` in the options for v2). */
export const PROTOCOL_VERSION = 1;
/** The protocol versions this client speaks. */
export const PROTOCOL_VERSIONS: readonly number[] = [1, 2];
