/**
 * Protocol v2: one lobby joined over a shared connection (`client.join(lobby)`).
 *
 * A room keeps, for its lobby, the epoch (from `joined`) and the offset of the last message seen,
 * so that after a reconnect the client rejoins it with `since` / `epoch` and nothing is missed.
 * The client routes the frames that name the room's lobby to it.
 */

import { Emitter } from "./emitter.js";
import type {
  FrameId,
  JoinedFrame,
  LeftFrame,
  MemberJoinedFrame,
  MemberLeftFrame,
  MessageFrame,
  PresenceFrame,
  RecoveredFrame,
} from "./protocol.js";

/**
 * An error answer (the server's `error` frame: `code` is its code, e.g. `lobby_full`), or one of
 * the client's own: `timeout` (no answer in time), `connection_lost` (the connection closed after
 * the request was sent: it may or may not have been done), `closed` (the client was closed, or
 * closed for good by the server), `dropped` (the outgoing queue was full), `left` (the room ended),
 * `unsupported` (a v2 request on a v1 client).
 */
export class SwitchboardError extends Error {
  readonly code: string;
  /** The request's id, when it had one. */
  readonly id: FrameId | undefined;
  constructor(code: string, message: string, id?: FrameId) {
    super(message);
    this.name = "SwitchboardError";
    this.code = code;
    this.id = id;
  }
}

/**
 * - `joining`: `join()` was called; no `joined` yet (the join frame is sent once connected).
 * - `joined`: in the lobby.
 * - `rejoining`: the connection was lost; the room is rejoined (with `since` / `epoch`) after the
 *   next `welcome`.
 * - `left`: ended (`leave()`, the server's `left`, a failed rejoin, or the client closed).
 */
export type RoomState = "joining" | "joined" | "rejoining" | "left";

/**
 * Why a room ended: `left` (its `leave()`), the server's reasons (`kicked`, `removed`,
 * `not_allowed`), `rejoin_failed` (the join after a reconnect was refused: `code` says why, e.g.
 * `not_allowed`, `lobby_full`, or `timeout`), or `closed` (the client was closed, or the server
 * closed the connection for good).
 */
export interface RoomLeftEvent {
  type: "left";
  lobby: string;
  reason: string;
  /** With `rejoin_failed`: the error code of the refused rejoin. */
  code?: string;
}

export interface RoomEvents {
  message: MessageFrame;
  member_joined: MemberJoinedFrame;
  member_left: MemberLeftFrame;
  /** Every `presence` list of this lobby (also the answers to `presence()`). */
  presence: PresenceFrame;
  /** Every (re)join: `rejoin` is true after a reconnect. */
  joined: JoinedFrame & { rejoin: boolean };
  /** After a rejoin that asked for missed messages: `ok: false` means some were lost. */
  recovered: RecoveredFrame;
  /** The room ended (it receives nothing more). */
  left: RoomLeftEvent;
}

/** What a room needs from its client (internal). */
export interface RoomHost {
  request(
    frame: { type: string; [field: string]: unknown },
    options?: { timeoutMs?: number },
  ): Promise<{ type: string; [field: string]: unknown }>;
  leaveRoom(room: Room, options: { timeoutMs?: number }): Promise<void>;
}

export class Room extends Emitter<RoomEvents> {
  readonly lobby: string;
  private readonly host: RoomHost;
  private _state: RoomState = "joining";
  private _epoch: string | null = null;
  private _lastOffset = 0;
  private _joined: JoinedFrame | null = null;
  private _lastRecovery: RecoveredFrame | null = null;
  /** The rejoin in flight asked for recovery (`since` / `epoch`). */
  private resuming = false;

  /** @internal Created by `SwitchboardClient.join()`. */
  constructor(host: RoomHost, lobby: string) {
    super();
    this.host = host;
    this.lobby = lobby;
  }

  get state(): RoomState {
    return this._state;
  }

  /** The lobby's history epoch (from the last `joined`), or null before the first. */
  get epoch(): string | null {
    return this._epoch;
  }

  /** The offset of the last message seen (or the last `joined`'s, if none since). */
  get lastOffset(): number {
    return this._lastOffset;
  }

  /** The last `joined` frame. */
  get joined(): JoinedFrame | null {
    return this._joined;
  }

  /** The last `recovered` frame of this room, or null. */
  get lastRecovery(): RecoveredFrame | null {
    return this._lastRecovery;
  }

  /**
   * Broadcasts to the lobby; resolves with the offset the lobby gave the message (from the
   * server's `ack`). Queued while the connection is down (sent after the rejoin).
   */
  async broadcast(
    data: unknown,
    options: { excludeSelf?: boolean; timeoutMs?: number } = {},
  ): Promise<number> {
    this.assertActive();
    const frame: { type: string; [field: string]: unknown } = { type: "broadcast", lobby: this.lobby, data };
    if (options.excludeSelf) frame.exclude_self = true;
    const ack = await this.host.request(frame, { timeoutMs: options.timeoutMs });
    const offset = typeof ack.offset === "number" ? ack.offset : 0;
    // Excluded from it, this connection never receives its own message: when everything before
    // it was seen, count it as seen, so a rejoin does not ask for it again.
    if (options.excludeSelf && offset === this._lastOffset + 1 && this._state !== "left") {
      this._lastOffset = offset;
    }
    return offset;
  }

  /** Asks for the lobby's users (resolves with the list; also emitted as `presence`). */
  async presence(options: { timeoutMs?: number } = {}): Promise<string[]> {
    this.assertActive();
    const answer = await this.host.request({ type: "presence", lobby: this.lobby }, options);
    return Array.isArray(answer.users) ? (answer.users as string[]) : [];
  }

  /**
   * Leaves the lobby. The room ends at once (it is not rejoined after a reconnect, and emits
   * `left` with reason `left`); resolves when the server confirmed (or at once when not
   * connected: the server forgets a closed connection's lobbies).
   */
  leave(options: { timeoutMs?: number } = {}): Promise<void> {
    if (this._state === "left") return Promise.resolve();
    return this.host.leaveRoom(this, options);
  }

  private assertActive(): void {
    if (this._state === "left") {
      throw new SwitchboardError("left", `switchboard: room ${this.lobby} was left`);
    }
  }

  // ---- driven by the client (internal) ----

  /** @internal The join frame for the next (re)join: with `since` / `epoch` once joined. */
  joinFrame(): { type: string; lobby: string; since?: number; epoch?: string } {
    const frame: { type: string; lobby: string; since?: number; epoch?: string } = {
      type: "join",
      lobby: this.lobby,
    };
    this.resuming = this._epoch !== null;
    if (this._epoch !== null) {
      frame.since = this._lastOffset;
      frame.epoch = this._epoch;
    }
    return frame;
  }

  /** @internal The connection was lost: rejoin after the next `welcome`. */
  connectionLost(): void {
    if (this._state === "joined") this._state = "rejoining";
  }

  /** @internal A `joined` for this lobby. */
  onJoined(frame: JoinedFrame): void {
    if (this._state === "left") return;
    const rejoin = this._joined !== null;
    const offset = typeof frame.offset === "number" ? frame.offset : 0;
    if (frame.epoch !== this._epoch || !this.resuming) {
      // First join, or the lobby's history was lost (a new epoch): tracking restarts here.
      this._epoch = typeof frame.epoch === "string" ? frame.epoch : null;
      this._lastOffset = offset;
    }
    this.resuming = false;
    this._joined = frame;
    this._state = "joined";
    this.emit("joined", { ...frame, rejoin });
  }

  /** @internal Frames naming this lobby: `message`, `member_joined`, `member_left`, `presence`, `recovered`. */
  onFrame(frame: { type: string; [field: string]: unknown }): void {
    if (this._state === "left") return;
    switch (frame.type) {
      case "message": {
        const offset = frame.offset;
        if (typeof offset === "number" && this._epoch !== null) {
          if (offset > this._lastOffset) {
            this._lastOffset = offset;
          } else {
            // The server never repeats an offset: a smaller one means the lobby's numbering
            // restarted under a new epoch. Deliver it and forget the old epoch (as v1 does).
            this._epoch = null;
            this._lastOffset = 0;
          }
        }
        this.emit("message", frame as unknown as MessageFrame);
        break;
      }
      case "recovered": {
        const recovered = frame as unknown as RecoveredFrame;
        this._lastRecovery = recovered;
        const baseline = this._joined?.offset;
        if (!recovered.ok && typeof baseline === "number" && baseline > this._lastOffset) {
          this._lastOffset = baseline;
        }
        this.emit("recovered", recovered);
        break;
      }
      case "member_joined":
      case "member_left":
      case "presence":
        // eslint-disable-next-line @typescript-eslint/no-explicit-any
        this.emit(frame.type, frame as any);
        break;
    }
  }

  /** @internal The room ended (emits `left` once). */
  end(event: RoomLeftEvent): void {
    if (this._state === "left") return;
    this._state = "left";
    this.emit("left", event);
  }
}

export type { LeftFrame };
