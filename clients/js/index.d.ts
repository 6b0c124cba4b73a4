// Types of @chat/client (hand-written; src/*.js is the implementation).
// The frames are those of docs/PROTOCOL.md (versions 1 and 2) and docs/protocol-notes.md.

/** A WebSocket constructor as browsers and the `ws` package provide it. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: any }) => void) | null;
  onclose: ((ev: { code: number; reason?: string }) => void) | null;
  onerror: ((ev: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  /** ws (Node) only: drops the TCP connection without a close handshake. */
  terminate?(): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ClientOptions {
  /** ws://host:port/stage or wss://{api-id}.execute-api.{region}.amazonaws.com/{stage} */
  url: string;
  /** Display name (the `name` query parameter); ignored by the server when a token is given. */
  name?: string;
  /** A JWT (the `token` query parameter). */
  token?: string;
  /** Default: globalThis.WebSocket. In Node before 22, pass the `ws` package's. */
  WebSocket?: WebSocketConstructor;
  /** Milliseconds a call waits for its reply, including any wait for the connection. Default 10000. */
  timeout?: number;
  /** Milliseconds from send() to its ack, across reconnects; 0: no limit. Default 30000. */
  sendTimeout?: number;
  /** Sends queued or in flight (all rooms) at most; past it send() rejects with queue_full. Default 100. */
  maxQueue?: number;
  /** Reconnect delay: base * 2^(attempt-1) capped at backoffCap, then equal jitter. Defaults 500, 15000. */
  backoffBase?: number;
  backoffCap?: number;
  /** A `ping` action this often (API Gateway closes a connection idle for 10 minutes). Default 240000; 0: none. */
  pingInterval?: number;
  /** No frame at all this long after a ping: the connection is dropped and reopened. Default 20000. */
  pongTimeout?: number;
  /** A planned reconnect after this long (API Gateway closes at 2 hours). Default 6900000; 0: none. */
  maxConnectionAge?: number;
  /** How long a gap in a room's seq may stay open before it is fetched. Default 1000. */
  gapTimeout?: number;
  /** Keep lobby (every connection starts in it). false: leave it at every connect. Default true. */
  lobby?: boolean;
  /** Also retry when the first connection fails (default false: connect fails, so a bad URL is seen). */
  retryFirstConnect?: boolean;
  /** Prefix of the requestIds this client makes. Default 'c'. */
  requestIdPrefix?: string;
}

export type ConnectionState = 'disconnected' | 'connecting' | 'connected' | 'reconnecting' | 'closed';

export interface StateChange {
  state: ConnectionState;
  previous: ConnectionState;
  /** The close code of the connection that ended (1006: lost without a close frame). */
  code?: number;
  reason?: string;
  /** reconnecting: the attempt (1, 2, ...), its delay in ms and when it starts (epoch ms). */
  attempt?: number;
  delay?: number;
  retryAt?: number;
  /** reconnecting: a planned reconnect before the connection's lifetime (delay 0). */
  planned?: boolean;
  /** closed: why, when the first connection failed. */
  error?: ChatError;
}

export interface Member {
  name: string;
  userId?: string;
}

export interface Reactions {
  [emoji: string]: { count: number };
}

/** A message object (in `message` events, `history` and `joined`). */
export interface Message {
  room: string;
  id: string;
  ts: number;
  seq?: number;
  sender?: Member;
  text?: string;
  clientMsgId?: string;
  editedAt?: number;
  reactions?: Reactions;
  /** A tombstone: no text, no sender. */
  deleted?: true;
}

export interface MessageEvent extends Message {
  type: 'message';
  /** Given from a recovery page (a rejoin, or a gap's fetch), not live. */
  recovered?: boolean;
}
export interface MessageUpdatedEvent {
  type: 'messageUpdated';
  room: string;
  id: string;
  text: string;
  editedAt: number;
  seq: number;
  recovered?: boolean;
}
export interface MessageDeletedEvent {
  type: 'messageDeleted';
  room: string;
  id: string;
  seq: number;
  recovered?: boolean;
}
export interface ReactionsEvent {
  type: 'reactions';
  room: string;
  id: string;
  reactions: Reactions;
  seq: number;
  recovered?: boolean;
}
export type RoomEvent = MessageEvent | MessageUpdatedEvent | MessageDeletedEvent | ReactionsEvent;

export interface PresenceEvent { type: 'presence'; room: string; event: 'join' | 'leave'; member: Member }
export interface TypingEvent { type: 'typing'; room: string; member: Member }
/** The user's other connection marked the room read up to `id`. */
export interface ReadEvent { type: 'read'; room: string; id: string }
/** Another user opened a direct room with this one. */
export interface DirectEvent { type: 'direct'; room: string; from: Member }
export interface RemovedEvent { type: 'removed'; room: string; reason: 'banned' | 'revoked' | string }

export interface JoinedEvent {
  room: string;
  reply: Joined;
  /** A rejoin (with sinceSeq) rather than the room's first join. */
  rejoin: boolean;
  /** The server's latest seq was before this client's: its store was reset; seq starts over. */
  reset?: true;
}
export interface RejoinFailedEvent { room: string; error: ChatError }

export interface ClientEvents {
  state: StateChange;
  message: MessageEvent;
  messageUpdated: MessageUpdatedEvent;
  messageDeleted: MessageDeletedEvent;
  reactions: ReactionsEvent;
  presence: PresenceEvent;
  typing: TypingEvent;
  read: ReadEvent;
  direct: DirectEvent;
  removed: RemovedEvent;
  /** A room is joined (first join or rejoin) and in step: its missed events were given. */
  joined: JoinedEvent;
  /** A room could not be joined again after a reconnect; it is no longer kept. */
  rejoinFailed: RejoinFailedEvent;
  /** An error that answers no call: an unsolicited `error` frame, API Gateway's error frame (gateway: true), a typing notice refused. */
  error: ChatError;
  /** Every frame from the server, as parsed, before it is handled. */
  frame: Record<string, unknown>;
}

// Replies ------------------------------------------------------------------------------------

export interface Ack {
  type: 'ack';
  requestId?: string;
  room: string;
  id: string;
  ts: number;
  seq?: number;
  clientMsgId: string;
  /** Settled from the message found stored (its ack was lost with a connection). */
  recovered?: boolean;
}
export interface Joined {
  type: 'joined';
  requestId: string;
  room: string;
  members: Member[];
  seq?: number;
  /** Without sinceSeq: the latest messages, oldest first. */
  history?: Message[];
  /** With sinceSeq: the events after it (also given as events). */
  events?: RoomEvent[];
  hasMore: boolean;
  lastRead?: string;
  unread?: number;
  occupancy?: number;
}
export interface Left { type: 'left'; requestId?: string; room: string }
export interface History {
  type: 'history';
  requestId: string;
  room: string;
  messages?: Message[];
  events?: RoomEvent[];
  hasMore: boolean;
}
export interface Members { type: 'members'; requestId: string; room: string; members: Member[]; occupancy?: number }
export interface Updated { type: 'updated'; requestId: string; room: string; id: string; seq: number }
export interface Deleted { type: 'deleted'; requestId: string; room: string; id: string; seq: number }
export interface Reacted { type: 'reacted'; requestId: string; room: string; id: string }
export interface Read { type: 'read'; requestId: string; room: string; id: string }
export interface RoomSummary { room: string; unread: number; last?: Message }
export interface Rooms { type: 'rooms'; requestId: string; rooms: RoomSummary[] }
export interface Pong { type: 'pong'; requestId: string }

export interface CallOptions { timeout?: number }
export interface SendOptions {
  /** Reuse one to retry a send that failed (the server answers a retry without a second message). */
  clientMsgId?: string;
  /** Overrides the sendTimeout option. */
  timeout?: number;
}
export interface HistoryOptions extends CallOptions {
  before?: string;
  after?: string;
  afterSeq?: number;
  limit?: number;
}

// Errors -------------------------------------------------------------------------------------

export type ServerErrorCode =
  | 'bad_request' | 'unknown_action' | 'not_member' | 'payload_too_large' | 'rate_limited'
  | 'limit_exceeded' | 'forbidden' | 'internal';
export type ClientErrorCode =
  | 'timeout' | 'disconnected' | 'closed' | 'queue_full' | 'connect_failed' | 'left' | 'removed';

export declare const CLIENT_CODES: readonly ClientErrorCode[];

export declare class ChatError extends Error {
  constructor(code: string, message?: string, details?: Record<string, unknown>);
  name: 'ChatError';
  /** The protocol's error code, or one of the client's own. */
  code: ServerErrorCode | ClientErrorCode | (string & {});
  requestId?: string;
  action?: string;
  /** The call's fields (without requestId). */
  request?: Record<string, unknown>;
  room?: string;
  /** sendMessage: the clientMsgId to retry with. */
  clientMsgId?: string;
  /** The server's own words (the error frame's `message`). */
  serverMessage?: string;
  /** API Gateway's "Internal server error" frame (a failed integration). */
  gateway?: boolean;
  /** Refused by the client before anything was sent. */
  local?: boolean;
  /** removed: banned or revoked. */
  reason?: string;
  /** connect_failed: how the connection closed. */
  closeCode?: number;
  closeReason?: string;
}

// The client ---------------------------------------------------------------------------------

export declare class ChatClient {
  constructor(options: ClientOptions);
  readonly options: Required<Omit<ClientOptions, 'name' | 'token' | 'WebSocket'>> & ClientOptions;
  /** Settles with the first connection. */
  readonly ready: Promise<void>;
  readonly state: ConnectionState;
  readonly connected: boolean;
  /** Who this client is, as far as it knows (token claims, name, then the server's echo). */
  readonly me: Member;
  /** Reconnect attempts since the connection was last open. */
  readonly attempt: number;
  /** Sends queued or in flight. */
  readonly pendingSends: number;
  /** Rooms kept joined across reconnects, in the order joined. */
  readonly roomNames: string[];
  isJoined(room: string): boolean;
  /** The seq up to which every event of the room has been given (null before its first join). */
  syncedSeq(room: string): number | null;

  on<K extends keyof ClientEvents>(type: K, handler: (ev: ClientEvents[K]) => void): () => void;
  once<K extends keyof ClientEvents>(type: K, handler: (ev: ClientEvents[K]) => void): () => void;
  off<K extends keyof ClientEvents>(type: K, handler: (ev: ClientEvents[K]) => void): void;

  connect(): Promise<void>;
  /** While waiting to reconnect, or disconnected: try now, from the first backoff step. */
  reconnect(): Promise<void>;
  /** Closes the connection, keeps rooms and queued sends; connect() resumes with recovery. */
  disconnect(): void;
  /** Closes for good; everything waiting is rejected with `closed`. */
  close(): void;

  join(room: string, options?: CallOptions): Promise<Joined>;
  leave(room: string, options?: CallOptions): Promise<Left>;
  openDirect(userId: string, options?: CallOptions): Promise<Joined>;
  send(room: string, text: string, options?: SendOptions): Promise<Ack>;
  history(room: string, options?: HistoryOptions): Promise<History>;
  members(room: string, options?: CallOptions): Promise<Members>;
  edit(room: string, id: string, text: string, options?: CallOptions): Promise<Updated>;
  delete(room: string, id: string, options?: CallOptions): Promise<Deleted>;
  react(room: string, id: string, emoji: string, options?: CallOptions): Promise<Reacted>;
  unreact(room: string, id: string, emoji: string, options?: CallOptions): Promise<Reacted>;
  markRead(room: string, id: string, options?: CallOptions): Promise<Read>;
  rooms(options?: CallOptions): Promise<Rooms>;
  ping(options?: CallOptions): Promise<Pong>;
  /** Sends a typing notice (no reply); false when not connected or the room is not joined yet. */
  typing(room: string): boolean;
  /** Any action that answers, for what has no method of its own. */
  request<T = Record<string, unknown>>(action: string, fields?: Record<string, unknown>, options?: CallOptions): Promise<T>;
}

/** Creates a client and starts connecting (`client.ready` settles with the first connection). */
export declare function connect(options: ClientOptions): ChatClient;

export declare const DEFAULTS: Readonly<Required<Omit<ClientOptions, 'url' | 'name' | 'token' | 'WebSocket'>>>;
export declare const LOBBY: 'lobby';
export declare const MAX_FRAME_BYTES: number;
export declare function decodeJwtClaims(token: string): Record<string, unknown> | null;
export declare function randomId(): string;

/** One room's sequence of events as a client has given them (exported for its own tests). */
export declare class RoomSequence {
  synced: number | null;
  readonly started: boolean;
  readonly gap: boolean;
  readonly target: number;
  has(seq: number): boolean;
  offer(seq: number, item: object): boolean;
  expect(seq: number): void;
  start(seq: number, historySeqs: number[]): object[];
  drain(coveredTo?: number | null): object[];
  skip(): object[];
}
