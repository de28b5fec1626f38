/** Frames of protocol v1 (see docs/protocol.md) and v2 (one socket in many lobbies). */

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
/** A client frame's optional id, echoed by an `error` the frame caused. */
export type FrameId = string | number;

export interface WelcomeFrame {
  type: "welcome";
  connection_id: string;
  user_id: string;
  lobby: string;
  ping_interval_ms: number;
  server_time: number;
  protocol: number;
  presence_events: boolean;
  /** The lobby's last assigned message offset (0 if none yet). Servers with recovery. */
  offset?: number;
  /** The lobby's history epoch: changes whenever history is lost (a restart). */
  epoch?: string;
  /**
   * v2: how many lobbies one connection may be in. (A v2 `welcome` has no lobby fields:
   * `lobby`, `presence_events`, `offset` and `epoch` come in each lobby's `joined`.)
   */
  max_lobbies?: number;
  /** When the token expires (ms since the epoch, server clock); absent when it never does. */
  token_expires_at?: number;
}
export interface HealthPingFrame {
  type: "health_ping";
  timestamp: number;
}
export interface MessageFrame<T = unknown> {
  type: "message";
  lobby: string;
  /** The sending user, or null when the backend sent it. */
  from: string | null;
  data: T;
  /** The message's offset in the lobby (1, 2, ...), within the welcome's `epoch`. */
  offset?: number;
}
export interface DirectFrame<T = unknown> {
  type: "direct";
  from: string | null;
  data: T;
}
export interface PresenceFrame {
  type: "presence";
  lobby: string;
  users: string[];
  /** v2: the id of the `presence` request answered. */
  id?: FrameId;
}
export interface MemberJoinedFrame {
  type: "member_joined";
  lobby: string;
  user_id: string;
}
export interface MemberLeftFrame {
  type: "member_left";
  lobby: string;
  user_id: string;
}
export interface ErrorFrame {
  type: "error";
  code: string;
  message: string;
  id?: FrameId;
}
export interface GoodbyeFrame {
  type: "goodbye";
  code: number;
  reason: string;
  retry_after_ms: number;
}

/**
 * After a reconnect that asked for missed messages (`since` / `epoch`, or SSE's
 * `Last-Event-ID`): `ok` is true when every missed message was replayed (they came before this
 * frame, as `message` events), false when the history did not reach back that far or the epoch
 * changed (a server restart): the application should then resync its state.
 */
export interface RecoveredFrame {
  type: "recovered";
  ok: boolean;
  /** v2: the lobby recovered. */
  lobby?: string;
}

/** v2: the answer to `join` (and, without `id`, to a lobby in the connect URL). */
export interface JoinedFrame {
  type: "joined";
  lobby: string;
  /** The lobby's last assigned message offset (0 if none yet). */
  offset: number;
  /** The lobby's history epoch. */
  epoch: string;
  presence_events: boolean;
  id?: FrameId;
}

/**
 * v2: a lobby was left. With an `id`: the answer to `leave` (reason `left`). Without: the server
 * ended the membership (`kicked`, `removed` by the backend, `not_allowed` by a refreshed token).
 */
export interface LeftFrame {
  type: "left";
  lobby: string;
  reason: string;
  id?: FrameId;
}

/** v2: the success answer to a frame with an `id` (other than join, leave and presence). */
export interface AckFrame {
  type: "ack";
  id: FrameId;
  /** A broadcast's: the offset the lobby gave the message. */
  offset?: number;
  /** A refresh's: the new token's expiry (absent when it never expires). */
  token_expires_at?: number;
}

/**
 * v2: the answer to an `rpc`: the backend's result. (A failed call is an `error` with the id,
 * `rpc_failed` when the backend failed or did not answer in time.)
 */
export interface RpcResultFrame<T = unknown> {
  type: "rpc_result";
  id: FrameId;
  data: T;
}

export type ServerFrame =
  | WelcomeFrame
  | HealthPingFrame
  | MessageFrame
  | DirectFrame
  | PresenceFrame
  | MemberJoinedFrame
  | MemberLeftFrame
  | ErrorFrame
  | GoodbyeFrame
  | RecoveredFrame
  | JoinedFrame
  | LeftFrame
  | AckFrame
  | RpcResultFrame;

/** Any client frame: the protocol's own and application messages (any other `type`). */
export interface ClientFrame {
  type: string;
  id?: FrameId;
  [field: string]: unknown;
}
