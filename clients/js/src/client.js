// The chat client: one WebSocket to the chat server (PROTOCOL.md, versions 1 and 2), kept open.
//
//   calls        every action is a method returning a promise of its reply, correlated by
//                requestId, rejected with a ChatError on an `error` reply or a timeout;
//   rooms        the rooms the caller joined are joined again on every new connection, with
//                `sinceSeq`: what was missed is given once, in seq order (see sequence.js);
//   sends        one per room in flight, the next after the previous one's ack (the order rule
//                that holds on API Gateway too, docs/protocol-notes.md); queued while offline up
//                to a bound; one in flight when the connection drops goes again with the same
//                clientMsgId (the server answers a retry without sending it twice), unless the
//                recovery shows it stored already;
//   connection   reconnect with capped exponential backoff and equal jitter, a `ping` action
//                under API Gateway's 10-minute idle timeout (a lost pong drops the connection),
//                and a planned reconnect before its 2-hour limit.
//
// No dependency: a WebSocket constructor comes from the options or the platform.

import { ChatError } from './errors.js';
import { Emitter } from './emitter.js';
import { RoomSequence } from './sequence.js';

export const LOBBY = 'lobby';
/** A bigger frame makes the server close the connection (1009): refused before sending. */
export const MAX_FRAME_BYTES = 32 * 1024;
const RECOVERY_PAGE = 100;
const SEQ_EVENTS = new Set(['message', 'messageUpdated', 'messageDeleted', 'reactions']);
/** Calls that are safe to repeat on a new connection when the old one dropped before the reply. */
const REPEATABLE = new Set(['history', 'members', 'rooms', 'ping', 'openDirect']);
/** Join failures worth another try on the same connection. */
const TRANSIENT = new Set(['internal', 'timeout', 'rate_limited']);
const OPEN = 1; // WebSocket.OPEN, the same in browsers and in the ws package

export const DEFAULTS = Object.freeze({
  /** Milliseconds a call waits for its reply (including any wait for the connection). */
  timeout: 10_000,
  /** Milliseconds a send may take from the call to its ack, across reconnects; 0: no limit. */
  sendTimeout: 30_000,
  /** Sends waiting (queued or in flight, all rooms) at most; past it, send() is refused. */
  maxQueue: 100,
  /** Reconnect delays: base * 2^(attempt-1), capped, then "equal jitter" (half fixed, half random). */
  backoffBase: 500,
  backoffCap: 15_000,
  /** A `ping` this often keeps the connection under API Gateway's 10-minute idle timeout. */
  pingInterval: 4 * 60_000,
  /** No frame at all within this after a ping: the connection is dead; drop it and reconnect. */
  pongTimeout: 20_000,
  /** A planned reconnect after this long, before API Gateway's 2-hour limit closes it. */
  maxConnectionAge: 115 * 60_000,
  /** How long a gap in a room's seq may stay open before it is fetched with history afterSeq. */
  gapTimeout: 1_000,
  /** Stay in lobby (every connection starts in it). false: leave it at every connect. */
  lobby: true,
  /** Retry when the very first connection fails too (default: fail, so a bad URL is seen). */
  retryFirstConnect: false,
  requestIdPrefix: 'c',
});

const encoder = new TextEncoder();
const frameBytes = (frame) => encoder.encode(JSON.stringify(frame)).length;
/** Room for the longest requestId this client makes, when measuring a frame before sending it. */
const REQUEST_ID_ROOM = 'c'.repeat(32);

export function randomId() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  const b = new Uint8Array(16);
  if (c && typeof c.getRandomValues === 'function') c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** The claims of a JWT (not verified: only to know who we are before the server says). */
export function decodeJwtClaims(token) {
  try {
    const part = String(token).split('.')[1];
    if (!part) return null;
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const bin = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
    const bytes = Uint8Array.from(bin, (ch) => ch.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

function socketUrl(url, name, token) {
  const u = new URL(url);
  if (u.protocol !== 'ws:' && u.protocol !== 'wss:') throw new TypeError('url must start with ws:// or wss://');
  if (name) u.searchParams.set('name', name);
  if (token) u.searchParams.set('token', token);
  return u.toString();
}

function isGatewayError(f) {
  // API Gateway's frame when the integration failed: no `type`, its own requestId.
  return f.type === undefined && typeof f.message === 'string'
    && (typeof f.connectionId === 'string' || f.message === 'Internal server error');
}

export class ChatClient extends Emitter {
  /** @param {import('../index.js').ClientOptions} options */
  constructor(options) {
    super();
    if (!options || typeof options.url !== 'string') throw new TypeError('options.url is required');
    this.options = { ...DEFAULTS, ...options };
    const WS = options.WebSocket || globalThis.WebSocket;
    if (typeof WS !== 'function') {
      throw new TypeError('no WebSocket constructor: pass options.WebSocket (in Node before 22, the ws package)');
    }
    this._WebSocket = WS;
    this._url = socketUrl(options.url, options.name, options.token);
    const claims = options.token ? decodeJwtClaims(options.token) : null;
    this._me = claims && typeof claims.sub === 'string'
      ? { name: typeof claims.name === 'string' ? claims.name : claims.sub, userId: claims.sub }
      : { name: options.name || undefined };
    this._state = 'disconnected';
    this._ws = null;
    this._opened = false;
    this._everConnected = false;
    this._gen = 0;
    this._n = 0;
    this._attempt = 0;
    this._manual = false;
    this._reconnectTimer = 0;
    this._pingTimer = 0;
    this._ageTimer = 0;
    this._lastFrameAt = 0;
    /** @type {Map<string, object>} tracked rooms, in the order joined */
    this._rooms = new Map();
    /** @type {Map<string, object>} requests written on this connection, by requestId */
    this._pending = new Map();
    /** requests waiting for the connection (or for their room's rejoin) */
    this._outbox = [];
    this._sendCount = 0;
    this._connectWaiters = [];
    if (this.options.lobby) this._track(LOBBY);
    /** Settles with the first connection: resolved when open, rejected if it cannot be made. */
    this.ready = this._nextConnected();
    this._started = false;
  }

  // -------------------------------------------------------------------------------------------
  // Public state

  /** 'disconnected' | 'connecting' | 'connected' | 'reconnecting' | 'closed' */
  get state() { return this._state; }

  get connected() {
    return !!(this._ws && this._opened && this._ws.readyState === OPEN);
  }

  /** Who this client is, as far as it knows: from the token, the name, or the server's echo. */
  get me() { return { ...this._me }; }

  /** Reconnect attempts since the connection was last open. */
  get attempt() { return this._attempt; }

  /** Sends queued or in flight, all rooms. */
  get pendingSends() { return this._sendCount; }

  /** The rooms this client keeps joined (rejoined after every reconnect), in the order joined. */
  get roomNames() { return [...this._rooms.keys()]; }

  /** Whether the room is joined on the current connection and in step (recovery done). */
  isJoined(room) {
    const r = this._rooms.get(room);
    return !!r && this.connected && r.status === 'joined' && !r.recovering;
  }

  /** The highest seq up to which this client has given the room's every event (or null). */
  syncedSeq(room) {
    const r = this._rooms.get(room);
    return r ? r.seq.synced : null;
  }

  // -------------------------------------------------------------------------------------------
  // Connection

  /** Opens the connection (again, after disconnect()); resolves once it is open. */
  connect() {
    if (this._state === 'closed') return rejected(new ChatError('closed', 'the client is closed'));
    if (this.connected) return Promise.resolve();
    const waiter = this._started ? this._nextConnected() : this.ready;
    this._started = true;
    if (!this._ws) {
      this._attempt = 0;
      this._open();
    }
    return waiter;
  }

  /** While waiting to reconnect (or disconnected): try now, from the first backoff step. */
  reconnect() {
    return this.connect();
  }

  /**
   * Closes the connection but keeps the rooms and the queued sends: connect() resumes, with
   * recovery. Nothing reconnects until then.
   */
  disconnect() {
    if (this._state === 'closed') return;
    this._manual = true;
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = 0;
    if (this._ws) this._drop({ code: 1000, reason: 'disconnect()' }, true);
    else this._setState('disconnected');
  }

  /** Closes for good: every call waiting is rejected with `closed`. */
  close() {
    if (this._state === 'closed') return;
    this._shutdown(new ChatError('closed', 'the client was closed'), {});
  }

  // -------------------------------------------------------------------------------------------
  // Calls

  /**
   * Sends any action and resolves with its reply (for actions this class has no method for).
   * Only for actions that answer: a frame without a reply would time out.
   */
  request(action, fields = {}, { timeout = this.options.timeout } = {}) {
    return new Promise((resolve, reject) => {
      const details = { action, request: fields, room: fields.room, local: true };
      if (this._state === 'closed') return reject(new ChatError('closed', 'the client is closed', details));
      if (frameBytes({ action, ...fields, requestId: REQUEST_ID_ROOM }) > MAX_FRAME_BYTES) {
        return reject(new ChatError('payload_too_large', `${action}: the frame would be over ${MAX_FRAME_BYTES} bytes`, details));
      }
      const rec = { action, fields, timer: 0, settled: false };
      const settle = (fn, v) => {
        if (rec.settled) return;
        rec.settled = true;
        clearTimeout(rec.timer);
        const i = this._outbox.indexOf(rec);
        if (i >= 0) this._outbox.splice(i, 1);
        if (rec.requestId) this._pending.delete(rec.requestId);
        fn(v);
      };
      rec.onReply = (f) => settle(resolve, f);
      rec.onError = (e) => settle(reject, e);
      rec.onLost = () => {
        if (REPEATABLE.has(action)) return 'repeat';
        settle(reject, new ChatError('disconnected',
          `${action}: the connection dropped before the reply (it may or may not have been done)`,
          { action, request: fields, room: fields.room }));
        return 'drop';
      };
      if (timeout > 0) {
        rec.timer = setTimeout(() => settle(reject, new ChatError('timeout',
          `${action}: no reply within ${timeout} ms`, { action, request: fields, room: fields.room, requestId: rec.requestId })), timeout);
      }
      this._submit(rec);
    });
  }

  /**
   * Joins a room, and keeps it joined across reconnects. Resolves with the `joined` reply once
   * the room is in step. Joining a room joined already asks with sinceSeq (what was missed, as
   * events, is given as events too).
   */
  join(room, { timeout = this.options.timeout } = {}) {
    return new Promise((resolve, reject) => {
      if (this._state === 'closed') return reject(new ChatError('closed', 'the client is closed', { action: 'joinRoom', room }));
      const existing = this._rooms.get(room);
      const r = this._track(room);
      const waiter = { resolve, reject, timer: 0 };
      if (timeout > 0) {
        waiter.timer = setTimeout(() => {
          r.waiters = r.waiters.filter((w) => w !== waiter);
          reject(new ChatError('timeout', `joinRoom ${room}: not joined within ${timeout} ms`, { action: 'joinRoom', room }));
        }, timeout);
      }
      r.waiters.push(waiter);
      if (!existing || (r.status === 'joined' && !r.recovering)) this._sendJoin(r);
    });
  }

  /** Leaves a room: it is no longer rejoined, and its queued sends are rejected (`left`). */
  leave(room, { timeout = this.options.timeout } = {}) {
    const r = this._rooms.get(room);
    if (!r) return this.request('leaveRoom', { room }, { timeout });
    const joinedHere = r.status === 'joined' && this.connected;
    const joining = !!r.joinRequest;
    this._untrack(r, new ChatError('left', `left ${room}`, { room, action: 'leaveRoom' }));
    if (joinedHere && !joining) return this.request('leaveRoom', { room }, { timeout });
    // Not joined on the server (or its join answers later, and is then left at once).
    return Promise.resolve({ type: 'left', room });
  }

  /** Opens the direct room with a user (signed-in users only); resolves with its `joined`. */
  openDirect(userId, { timeout = this.options.timeout } = {}) {
    return this.request('openDirect', { userId }, { timeout }).then((f) => {
      if (!f || typeof f.room !== 'string') return f;
      const r = this._rooms.get(f.room);
      if (r && r.seq.started) {
        if (r.status !== 'joined') this._sendJoin(r);
        return f;
      }
      const room = this._track(f.room);
      return new Promise((resolve, reject) => {
        room.waiters.push({ resolve, reject, timer: 0 });
        if (room.joinRequest) return; // its own join will answer
        room.status = 'joined';
        this._onJoined(room, f, undefined);
      });
    });
  }

  /**
   * Sends a message; resolves with its ack ({room, id, ts, seq, clientMsgId}). Queued while
   * offline; one at a time per room; resent with the same clientMsgId after a reconnect.
   */
  send(room, text, { clientMsgId, timeout = this.options.sendTimeout } = {}) {
    return new Promise((resolve, reject) => {
      const cid = clientMsgId ?? randomId();
      const details = {
        action: 'sendMessage', room, clientMsgId: cid, request: { room, text, clientMsgId: cid }, local: true,
      };
      if (this._state === 'closed') return reject(new ChatError('closed', 'the client is closed', details));
      const r = this._rooms.get(room);
      if (!r) return reject(new ChatError('not_member', `not in ${room}: join it first`, details));
      if (typeof text !== 'string') return reject(new ChatError('bad_request', 'text must be a string', details));
      if (frameBytes({ action: 'sendMessage', room, text, clientMsgId: cid, requestId: REQUEST_ID_ROOM }) > MAX_FRAME_BYTES) {
        return reject(new ChatError('payload_too_large', `the message would make a frame over ${MAX_FRAME_BYTES} bytes`, details));
      }
      if (this._sendCount >= this.options.maxQueue) {
        return reject(new ChatError('queue_full', `${this._sendCount} messages are waiting already (maxQueue ${this.options.maxQueue})`, details));
      }
      const rec = {
        cid, room: r, text, resolve, reject, timer: 0, request: null, stored: null, settled: false,
      };
      r.sends.push(rec);
      this._sendCount += 1;
      if (timeout > 0) {
        rec.timer = setTimeout(() => this._settleSend(rec, new ChatError('timeout',
          `sendMessage: no ack within ${timeout} ms`, { ...details, local: undefined })), timeout);
      }
      this._flushSends(r);
    });
  }

  history(room, { before, after, afterSeq, limit, timeout } = {}) {
    return this.request('history', dropUndefined({ room, before, after, afterSeq, limit }), timeoutOpt(timeout, this));
  }

  members(room, opts) { return this.request('members', { room }, timeoutOpt(opts?.timeout, this)); }

  edit(room, id, text, opts) { return this.request('editMessage', { room, id, text }, timeoutOpt(opts?.timeout, this)); }

  delete(room, id, opts) { return this.request('deleteMessage', { room, id }, timeoutOpt(opts?.timeout, this)); }

  react(room, id, emoji, opts) { return this.request('react', { room, id, emoji }, timeoutOpt(opts?.timeout, this)); }

  unreact(room, id, emoji, opts) { return this.request('unreact', { room, id, emoji }, timeoutOpt(opts?.timeout, this)); }

  markRead(room, id, opts) { return this.request('markRead', { room, id }, timeoutOpt(opts?.timeout, this)); }

  /** The server's `rooms` reply: this connection's rooms with unread counts and last messages. */
  rooms(opts) { return this.request('rooms', {}, timeoutOpt(opts?.timeout, this)); }

  ping(opts) { return this.request('ping', {}, timeoutOpt(opts?.timeout, this)); }

  /**
   * Tells the room's other members that this user is typing. No reply: returns whether it was
   * sent (not while offline); an error reply comes as an `error` event.
   */
  typing(room) {
    if (!this._canTransmit(room)) return false;
    const rec = { action: 'typing', fields: { room }, timer: 0 };
    rec.onReply = () => clearTimeout(rec.timer);
    rec.onError = (e) => {
      clearTimeout(rec.timer);
      // Closed, or API Gateway's failure frame (told once, as an `error` event of its own).
      if (e.code !== 'closed' && !e.gateway) this.emit('error', e);
    };
    rec.onLost = () => { clearTimeout(rec.timer); return 'drop'; };
    this._transmit(rec);
    // Nothing answers a typing notice that went through: forget it after a while.
    rec.timer = setTimeout(() => this._pending.delete(rec.requestId), this.options.timeout);
    return true;
  }

  /** @internal Handles a frame as if the server had sent it (for tests of a page). */
  _receive(frame) {
    this._onFrame(frame);
  }

  // -------------------------------------------------------------------------------------------
  // The socket

  _open() {
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = 0;
    this._manual = false;
    this._started = true;
    let ws;
    try {
      ws = new this._WebSocket(this._url);
    } catch (e) {
      this._ws = null;
      this._afterClose(false, { code: 1006, reason: e && e.message ? e.message : 'cannot connect' });
      return;
    }
    this._gen += 1;
    this._ws = ws;
    this._opened = false;
    if (!this._everConnected) this._setState('connecting');
    ws.onopen = () => { if (ws === this._ws) this._onOpen(); };
    ws.onmessage = (ev) => { if (ws === this._ws) this._onData(ev.data); };
    ws.onerror = () => { /* a close event follows */ };
    ws.onclose = (ev) => { if (ws === this._ws) this._onClose({ code: ev.code, reason: ev.reason || undefined }); };
  }

  _onOpen() {
    this._opened = true;
    this._everConnected = true;
    this._attempt = 0;
    this._lastFrameAt = Date.now();
    this._setState('connected');
    const waiters = this._connectWaiters.splice(0);
    for (const w of waiters) w.resolve();
    this._startTimers();
    // Every connection starts in lobby, without a `joined`: joining explicitly fetches lobby's
    // members and history. Every other room is joined again, with sinceSeq once known.
    for (const room of this._rooms.values()) this._sendJoin(room);
    if (!this._rooms.has(LOBBY)) this._internal('leaveRoom', { room: LOBBY });
    this._flushOutbox();
  }

  _onData(data) {
    this._lastFrameAt = Date.now();
    if (typeof data !== 'string') return;
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      return;
    }
    if (f && typeof f === 'object' && !Array.isArray(f)) this._onFrame(f);
  }

  _onFrame(f) {
    this.emit('frame', f);
    if (isGatewayError(f)) {
      this._onGatewayError(f);
      return;
    }
    if (typeof f.requestId === 'string' && this._pending.has(f.requestId)) {
      const rec = this._pending.get(f.requestId);
      this._pending.delete(f.requestId);
      if (f.type === 'error') rec.onError(errorFrom(f, rec));
      else rec.onReply(f);
      return;
    }
    switch (f.type) {
      case 'message':
      case 'messageUpdated':
      case 'messageDeleted':
      case 'reactions':
        this._onSeqEvent(f);
        return;
      case 'presence':
      case 'typing':
        if (this._rooms.has(f.room)) this.emit(f.type, f);
        return;
      case 'read':
      case 'direct':
        this.emit(f.type, f);
        return;
      case 'removed':
        this._onRemoved(f);
        return;
      case 'error':
        this.emit('error', errorFrom(f, null));
        return;
      default:
        // A late reply (its call timed out), or a newer server's frame: only the `frame` event.
    }
  }

  /**
   * API Gateway's frame for a failed integration names none of our requests (its requestId is
   * its own), and a connection's frames run concurrently there: every request waiting fails
   * (retrying is safe: sends are idempotent by clientMsgId, the rest read or repeat).
   */
  _onGatewayError(f) {
    const err = new ChatError('internal', `the server failed to handle a request (${f.message})`,
      { gateway: true, serverMessage: f.message });
    const recs = [...this._pending.values()];
    this._pending.clear();
    for (const rec of recs) {
      rec.onError(new ChatError('internal', err.message, {
        gateway: true, serverMessage: f.message, action: rec.action, request: rec.fields, room: rec.fields.room,
      }));
    }
    this.emit('error', err);
  }

  _onClose(info) {
    const wasOpen = this._opened;
    this._ws = null;
    this._opened = false;
    this._connectionLost();
    this._afterClose(wasOpen, info);
  }

  _afterClose(wasOpen, info) {
    if (this._state === 'closed') return;
    if (this._manual) {
      this._setState('disconnected', info);
      return;
    }
    if (!wasOpen && !this._everConnected && !this.options.retryFirstConnect) {
      const err = new ChatError('connect_failed', 'could not connect to the server',
        { closeCode: info.code, closeReason: info.reason });
      this._shutdown(err, { error: err, ...info });
      return;
    }
    let delay = 0;
    if (!info.planned) {
      this._attempt += 1;
      const exp = Math.min(this.options.backoffCap, this.options.backoffBase * 2 ** (this._attempt - 1));
      delay = Math.round(exp / 2 + Math.random() * (exp / 2));
    }
    this._setState('reconnecting', { ...info, attempt: this._attempt, delay, retryAt: Date.now() + delay });
    this._reconnectTimer = setTimeout(() => this._open(), delay);
  }

  /** Ends the connection at once (no wait for a close handshake), then as if it had closed. */
  _drop(info, clean = false) {
    const ws = this._ws;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.onerror = () => {};
    try {
      if (!clean && typeof ws.terminate === 'function') ws.terminate();
      else ws.close(1000);
    } catch { /* closing already */ }
    this._onClose(info);
  }

  /** The connection is gone: what was in flight is repeated, rejected or resent. */
  _connectionLost() {
    clearInterval(this._pingTimer);
    clearTimeout(this._ageTimer);
    this._pingTimer = this._ageTimer = 0;
    const recs = [...this._pending.values()];
    this._pending.clear();
    const repeat = [];
    for (const rec of recs) {
      const what = rec.onLost ? rec.onLost() : 'drop';
      rec.requestId = undefined;
      if (what === 'repeat') repeat.push(rec);
    }
    this._outbox.unshift(...repeat);
    for (const room of this._rooms.values()) {
      room.status = 'joining';
      room.recovering = false;
      room.joinRequest = null;
      room.gapTries = 0;
      clearTimeout(room.retryTimer);
      clearTimeout(room.gapTimer);
      room.retryTimer = room.gapTimer = 0;
      const rec = room.inFlight;
      if (rec) {
        room.inFlight = null;
        rec.request = null;
        // Seen stored (its echo came, its ack did not): done. Otherwise it goes again.
        if (rec.stored) this._settleSend(rec, rec.stored);
      }
    }
  }

  _shutdown(err, info) {
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = 0;
    this._manual = true;
    const ws = this._ws;
    this._ws = null;
    this._opened = false;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      ws.onerror = () => {};
      try { ws.close(1000); } catch { /* closing already */ }
    }
    clearInterval(this._pingTimer);
    clearTimeout(this._ageTimer);
    this._setState('closed', info);
    for (const room of [...this._rooms.values()]) this._untrack(room, err);
    const recs = [...this._pending.values(), ...this._outbox];
    this._pending.clear();
    this._outbox = [];
    for (const rec of recs) rec.onError(err);
    for (const w of this._connectWaiters.splice(0)) w.reject(err);
  }

  _setState(state, info = {}) {
    const previous = this._state;
    this._state = state;
    this.emit('state', { ...info, state, previous });
  }

  _nextConnected() {
    const p = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
    p.catch(() => {}); // awaiting it still throws; not awaiting it is no unhandled rejection
    return p;
  }

  _startTimers() {
    const { pingInterval, pongTimeout, maxConnectionAge } = this.options;
    if (pingInterval > 0) this._pingTimer = setInterval(() => this._keepAlive(pongTimeout), pingInterval);
    if (maxConnectionAge > 0) this._ageTimer = setTimeout(() => this._plannedReconnect(), maxConnectionAge);
  }

  /** A `ping` action (API Gateway counts frames, not WebSocket pings, reportedly). */
  _keepAlive(pongTimeout) {
    if (!this.connected) return;
    const sentAt = Date.now();
    const gen = this._gen;
    const rec = this._internal('ping', {});
    if (!rec || !(pongTimeout > 0)) return;
    setTimeout(() => {
      if (gen !== this._gen || !this.connected) return;
      if (this._lastFrameAt > sentAt) return; // something came back: the connection lives
      // Nothing at all: dead without having said so (sleep, a network change). Closing it
      // cleanly could wait long for the other side: give it up now.
      this._drop({ code: 1006, reason: 'no reply to ping' });
    }, pongTimeout);
  }

  /** Before the server's lifetime limit: once no send is in flight, reconnect at once. */
  _plannedReconnect(waited = 0) {
    this._ageTimer = 0;
    if (!this.connected) return;
    const busy = [...this._rooms.values()].some((r) => r.inFlight || r.joinRequest || r.recovering);
    if (busy && waited < 5000) {
      this._ageTimer = setTimeout(() => this._plannedReconnect(waited + 100), 100);
      return;
    }
    this._drop({ code: 1000, reason: 'planned reconnect', planned: true }, true);
  }

  // -------------------------------------------------------------------------------------------
  // Requests

  _canTransmit(roomName) {
    if (!this.connected) return false;
    if (roomName === undefined) return true;
    const r = this._rooms.get(roomName);
    return !r || (r.status === 'joined' && !r.recovering);
  }

  _submit(rec) {
    if (this._canTransmit(rec.fields.room)) this._transmit(rec);
    else this._outbox.push(rec);
  }

  _flushOutbox() {
    for (const rec of [...this._outbox]) {
      if (!this.connected) return;
      if (this._canTransmit(rec.fields.room)) {
        this._outbox.splice(this._outbox.indexOf(rec), 1);
        this._transmit(rec);
      }
    }
  }

  _transmit(rec) {
    const requestId = `${this.options.requestIdPrefix}${this._gen}-${++this._n}`;
    rec.requestId = requestId;
    this._pending.set(requestId, rec);
    this._ws.send(JSON.stringify({ action: rec.action, ...rec.fields, requestId }));
  }

  /** A request of the client's own (a rejoin, a recovery page, a ping); its reply goes to `on`. */
  _internal(action, fields, { onReply = () => {}, onError = () => {}, timeout = this.options.timeout } = {}) {
    if (!this.connected) return null;
    const rec = { action, fields, timer: 0 };
    rec.onReply = (f) => { clearTimeout(rec.timer); onReply(f); };
    rec.onError = (e) => { clearTimeout(rec.timer); onError(e); };
    rec.onLost = () => { clearTimeout(rec.timer); return 'drop'; };
    this._transmit(rec);
    if (timeout > 0) {
      rec.timer = setTimeout(() => {
        if (this._pending.get(rec.requestId) !== rec) return;
        this._pending.delete(rec.requestId);
        onError(new ChatError('timeout', `${action}: no reply within ${timeout} ms`, { action, request: fields, room: fields.room }));
      }, timeout);
    }
    return rec;
  }

  // -------------------------------------------------------------------------------------------
  // Rooms

  _track(name) {
    let room = this._rooms.get(name);
    if (!room) {
      room = {
        name,
        status: 'joining', // 'joined' once this connection's `joined` came
        recovering: false, // a rejoin's pages of missed events are still coming
        everJoined: false,
        seq: new RoomSequence(),
        sends: [], // send records, in the order sent
        inFlight: null,
        waiters: [], // join() calls waiting
        joinRequest: null,
        retryTimer: 0,
        gapTimer: 0,
        gapTries: 0,
      };
      this._rooms.set(name, room);
    }
    return room;
  }

  _untrack(room, err) {
    if (this._rooms.get(room.name) !== room) return;
    this._rooms.delete(room.name);
    clearTimeout(room.retryTimer);
    clearTimeout(room.gapTimer);
    for (const w of room.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(err);
    }
    for (const rec of [...room.sends]) {
      this._settleSend(rec, new ChatError(err.code, err.message, {
        ...err, action: 'sendMessage', room: room.name, clientMsgId: rec.cid,
        request: { room: room.name, text: rec.text, clientMsgId: rec.cid },
      }));
    }
  }

  _sendJoin(room) {
    if (!this.connected || room.joinRequest || this._rooms.get(room.name) !== room) return;
    clearTimeout(room.retryTimer);
    room.retryTimer = 0;
    const sinceSeq = room.seq.started ? room.seq.synced : undefined;
    const fields = sinceSeq !== undefined ? { room: room.name, sinceSeq } : { room: room.name };
    if (sinceSeq !== undefined) room.recovering = true;
    room.joinRequest = this._internal('joinRoom', fields, {
      onReply: (f) => {
        room.joinRequest = null;
        if (this._rooms.get(room.name) !== room) {
          this._internal('leaveRoom', { room: room.name }); // left while joining
          return;
        }
        room.status = 'joined';
        this._onJoined(room, f, sinceSeq);
      },
      onError: (e) => {
        room.joinRequest = null;
        this._onJoinError(room, e);
      },
    });
  }

  _onJoined(room, f, sinceSeq) {
    room.lastJoined = f;
    if (sinceSeq === undefined && !room.seq.started) {
      const history = Array.isArray(f.history) ? f.history : [];
      for (const m of history) this._noticeOwn(room, m);
      // `joined` first (the caller learns of the room and its history), then what came live
      // after that history, in order.
      const later = room.seq.start(f.seq, history.map((m) => m.seq));
      this._roomReady(room, false, false, later);
    } else if (Number.isInteger(f.seq) && Number.isInteger(sinceSeq) && f.seq < sinceSeq) {
      // The room's latest is before what this client has seen: the server's store was reset
      // (a new data directory or table). Start over from what it has now.
      room.seq = new RoomSequence();
      room.recovering = false;
      this._give(room, room.seq.start(f.seq, []));
      this._roomReady(room, true, true);
    } else {
      room.recovering = true;
      this._takePage(room, f, Number.isInteger(f.seq) ? f.seq : 0, room.seq.synced);
    }
  }

  /**
   * A page of missed events (`joined` with sinceSeq, `history` with afterSeq), after `from`:
   * every event up to its last is in it, or is no event.
   */
  _takePage(room, f, joinedSeq, from) {
    const events = Array.isArray(f.events) ? f.events : [];
    for (const e of events) this._offer(room, e, true);
    const last = events.length && Number.isInteger(events[events.length - 1].seq) ? events[events.length - 1].seq : from;
    if (f.hasMore && events.length) {
      this._give(room, room.seq.drain(last));
      this._fetchPage(room, last, joinedSeq);
      return;
    }
    // The whole rest: every event up to the room's seq at the join is given, or is no event.
    this._give(room, room.seq.drain(Math.max(last ?? 0, joinedSeq)));
    room.recovering = false;
    this._roomReady(room, true);
  }

  _fetchPage(room, afterSeq, joinedSeq) {
    room.joinRequest = this._internal('history', { room: room.name, afterSeq, limit: RECOVERY_PAGE }, {
      onReply: (f) => {
        room.joinRequest = null;
        if (this._rooms.get(room.name) === room) this._takePage(room, f, joinedSeq, afterSeq);
      },
      onError: (e) => {
        room.joinRequest = null;
        if (this._rooms.get(room.name) !== room || !this.connected) return;
        if (TRANSIENT.has(e.code)) {
          room.retryTimer = setTimeout(() => {
            room.retryTimer = 0;
            if (this._rooms.get(room.name) === room && this.connected && room.recovering && !room.joinRequest) {
              this._fetchPage(room, room.seq.synced, joinedSeq);
            }
          }, 1000);
        } else {
          this._onJoinError(room, e);
        }
      },
    });
  }

  _roomReady(room, rejoin, reset = false, later = []) {
    room.everJoined = true;
    const reply = room.lastJoined;
    for (const w of room.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.resolve(reply);
    }
    this.emit('joined', reset ? { room: room.name, reply, rejoin, reset } : { room: room.name, reply, rejoin });
    this._give(room, later);
    this._flushSends(room);
    this._flushOutbox();
    this._armGap(room);
  }

  _onJoinError(room, err) {
    if (this._rooms.get(room.name) !== room) return;
    room.recovering = false;
    if (TRANSIENT.has(err.code) && this.connected) {
      room.retryTimer = setTimeout(() => {
        room.retryTimer = 0;
        this._sendJoin(room);
      }, 1000);
      return;
    }
    const wasJoined = room.everJoined;
    this._untrack(room, err);
    if (wasJoined) this.emit('rejoinFailed', { room: room.name, error: err });
    this._flushOutbox();
  }

  _onRemoved(f) {
    const room = typeof f.room === 'string' ? this._rooms.get(f.room) : null;
    if (room) {
      this._untrack(room, new ChatError('removed', `removed from ${f.room}${f.reason ? ` (${f.reason})` : ''}`,
        { room: f.room, reason: f.reason }));
    }
    this.emit('removed', f);
  }

  // -------------------------------------------------------------------------------------------
  // Events of rooms, in seq order

  _onSeqEvent(f) {
    const room = this._rooms.get(f.room);
    if (!room) return; // a room left: nothing more of it
    if (!Number.isInteger(f.seq)) {
      // A version 1 server: no order to keep, nothing to recover by.
      if (f.type === 'message') this._noticeOwn(room, f);
      this.emit(f.type, f);
      return;
    }
    this._offer(room, f, false);
    this._give(room, room.seq.drain());
    this._armGap(room);
  }

  /** A seq event, live or recovered: kept to be given in order, once. */
  _offer(room, e, recovered) {
    if (!e || !SEQ_EVENTS.has(e.type) || !Number.isInteger(e.seq)) return;
    if (e.type === 'message') this._noticeOwn(room, e);
    const item = recovered || e.room !== room.name ? { ...e, room: room.name, recovered } : e;
    room.seq.offer(e.seq, item);
  }

  _give(room, items) {
    for (const item of items) {
      if (this._rooms.get(room.name) !== room) return;
      this.emit(item.type, item);
    }
  }

  _armGap(room) {
    if (room.gapTimer || room.recovering || room.status !== 'joined' || !this.connected || !room.seq.gap) return;
    const wait = this.options.gapTimeout * 2 ** Math.min(room.gapTries, 4);
    room.gapTimer = setTimeout(() => {
      room.gapTimer = 0;
      this._fetchGap(room);
    }, wait);
  }

  /** A seq that stays missing (in flight when another overtook it, or lost): fetch it. */
  _fetchGap(room) {
    if (this._rooms.get(room.name) !== room || room.recovering || room.status !== 'joined' || !this.connected || !room.seq.gap) return;
    const afterSeq = room.seq.synced;
    const limit = Math.max(1, Math.min(RECOVERY_PAGE, room.seq.target - afterSeq));
    this._internal('history', { room: room.name, afterSeq, limit }, {
      onReply: (f) => {
        if (this._rooms.get(room.name) !== room) return;
        const before = room.seq.synced;
        const events = Array.isArray(f.events) ? f.events : [];
        for (const e of events) this._offer(room, e, true);
        const last = events.length ? events[events.length - 1].seq : null;
        this._give(room, room.seq.drain(last));
        if (room.seq.synced > before) {
          room.gapTries = 0;
        } else if (++room.gapTries >= 4) {
          this._give(room, room.seq.skip()); // what never comes is given up on
          room.gapTries = 0;
        }
        this._armGap(room);
      },
      onError: () => {
        room.gapTries += 1;
        this._armGap(room);
      },
    });
  }

  // -------------------------------------------------------------------------------------------
  // Sends

  _flushSends(room) {
    if (this._rooms.get(room.name) !== room || !this.connected || room.status !== 'joined' || room.recovering || room.inFlight) return;
    const rec = room.sends[0];
    if (!rec) return;
    if (rec.stored) {
      // Found stored in the recovery (its ack was lost): done, not sent again.
      this._settleSend(rec, rec.stored);
      return;
    }
    room.inFlight = rec;
    const req = { action: 'sendMessage', fields: { room: room.name, text: rec.text, clientMsgId: rec.cid } };
    req.onReply = (f) => {
      rec.request = null;
      this._noteAck(room, f);
      this._settleSend(rec, f);
    };
    req.onError = (e) => {
      rec.request = null;
      e.clientMsgId = rec.cid;
      this._settleSend(rec, e);
    };
    req.onLost = () => 'drop'; // _connectionLost puts it back in the queue
    rec.request = req;
    this._transmit(req);
  }

  /** Settles a send with its ack (or the stored message) or an error; the room's next goes. */
  _settleSend(rec, result) {
    if (rec.settled) return;
    rec.settled = true;
    clearTimeout(rec.timer);
    const room = rec.room;
    const i = room.sends.indexOf(rec);
    if (i >= 0) room.sends.splice(i, 1);
    this._sendCount -= 1;
    if (room.inFlight === rec) room.inFlight = null;
    if (rec.request && rec.request.requestId) this._pending.delete(rec.request.requestId);
    rec.request = null;
    if (result instanceof Error) rec.reject(result);
    else rec.resolve(result);
    this._flushSends(room);
  }

  _noteAck(room, f) {
    if (!f || !Number.isInteger(f.seq) || room.seq.has(f.seq) || room.seq.buffer.has(f.seq)) return;
    room.seq.expect(f.seq); // its echo has not come: if it never does, the gap is fetched
    this._armGap(room);
  }

  /** A message of ours (by clientMsgId and text): its send is stored. */
  _noticeOwn(room, m) {
    if (!m || typeof m.clientMsgId !== 'string' || !room.sends.length) return;
    const rec = room.sends.find((r) => r.cid === m.clientMsgId && r.text === m.text);
    if (!rec || rec.stored) return;
    rec.stored = {
      type: 'ack', room: room.name, id: m.id, ts: m.ts, seq: m.seq, clientMsgId: m.clientMsgId, recovered: true,
    };
    if (m.sender && typeof m.sender === 'object') {
      if (typeof m.sender.name === 'string') this._me.name = m.sender.name;
      if (typeof m.sender.userId === 'string') this._me.userId = m.sender.userId;
    }
    // In flight on this connection: its ack will come (the room's next waits for it).
    if (room.inFlight !== rec) this._settleSend(rec, rec.stored);
  }
}

function errorFrom(f, rec) {
  const code = typeof f.code === 'string' ? f.code : 'internal';
  const serverMessage = typeof f.message === 'string' ? f.message : undefined;
  const what = rec ? `${rec.action}: ` : '';
  return new ChatError(code, `${what}${code}${serverMessage ? ` (${serverMessage})` : ''}`, {
    requestId: typeof f.requestId === 'string' ? f.requestId : undefined,
    action: rec ? rec.action : undefined,
    request: rec ? rec.fields : undefined,
    room: rec ? rec.fields.room : (typeof f.room === 'string' ? f.room : undefined),
    serverMessage,
  });
}

function dropUndefined(o) {
  const out = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined && v !== null) out[k] = v;
  return out;
}

function timeoutOpt(timeout, client) {
  return { timeout: timeout ?? client.options.timeout };
}

function rejected(err) {
  return Promise.reject(err);
}

/** Creates a client and starts connecting; `client.ready` settles with the first connection. */
export function connect(options) {
  const client = new ChatClient(options);
  client.connect();
  return client;
}
