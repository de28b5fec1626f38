/** Frames of protocol v1 (see docs/protocol.md). */

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
  | RecoveredFrame;

/** Any client frame: the protocol's own and application messages (any other `type`). */
export interface ClientFrame {
  type: string;
  id?: FrameId;
  [field: string]: unknown;
}
