// Browser client for the chat protocol (see PROTOCOL.md, version 1).
//
// Plain JavaScript, no framework, no build step. Layout of this file:
//   settings    — server URL, name and token: query parameters, then localStorage, then defaults
//   state       — rooms (messages keyed by id, members, typing, unread), pending sends, requests
//   connection  — one WebSocket, reconnect with capped exponential backoff and jitter, keep-alive
//   frames      — one handler per server frame type
//   rendering   — incremental DOM updates; user data only ever goes through textContent
//   UI wiring   — forms, keyboard, room switching, scrolling up for older messages
//
// A small handle, window.chatDebug, exists for the browser tests (pause reconnecting, send a raw
// frame); it changes nothing in normal use.
'use strict';

(() => {
  // ---------------------------------------------------------------------------------------------
  // Constants

  const LOBBY = 'lobby';
  const MAX_TEXT = 4000;
  const MAX_FRAME_BYTES = 32 * 1024; // a bigger frame makes the server close the connection (1009)
  const PAGE = 50; // history page size when scrolling up
  const CATCHUP_PAGE = 100; // history page size when catching up after a reconnect
  const TYPING_SEND_EVERY = 2000;
  const TYPING_SHOW_FOR = 4000;
  const BACKOFF_BASE = 500;
  const BACKOFF_CAP = 15000;
  const PING_EVERY = 4 * 60 * 1000; // the server closes idle connections after 10 minutes
  const PONG_WITHIN = 20000;
  const TOAST_FOR = 10000;
  const GROUP_WITHIN = 5 * 60 * 1000;
  const STORE_KEY = 'chat.settings.v1';

  /** How long the room in view stays quiet before it is marked read. */
  const MARK_READ_AFTER_MS = 400;

  /** The reactions offered on every message. */
  const QUICK_REACTIONS = ['👍', '❤️', '😂', '🎉'];

  const ERROR_WORDS = {
    rate_limited: 'You are sending messages too fast. Wait a moment, then try again.',
    payload_too_large: 'That message is too long: 4000 characters at most.',
    not_member: 'You are not a member of that room (any more). Join it first.',
    bad_request: 'The server could not accept that request.',
    limit_exceeded: 'You are in too many rooms (50 at most). Leave one before joining another.',
    internal: 'Something went wrong on the server. Please try again.',
    unknown_action: 'The server did not understand that request (this client may be out of date).',
    forbidden: 'You may not do that in this room: it is private, or the message is not yours.',
  };

  // ---------------------------------------------------------------------------------------------
  // Small helpers

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === 'class') node.className = v;
        else if (k === 'text') node.textContent = v;
        else if (k === 'dataset') Object.assign(node.dataset, v);
        else node.setAttribute(k, v === true ? '' : String(v));
      }
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c); // strings become text nodes: never parsed as HTML
    }
    return node;
  }

  function uuid() {
    if (window.crypto && typeof crypto.randomUUID === 'function') return crypto.randomUUID();
    // randomUUID needs a secure context; getRandomValues does not.
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  const codePoints = (s) => {
    let n = 0;
    for (const _ of s) n++; // eslint-disable-line no-unused-vars
    return n;
  };

  function lowerBound(sorted, value) {
    let lo = 0;
    let hi = sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (sorted[mid] < value) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
  const dateTimeFmt = new Intl.DateTimeFormat(undefined, {
    month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit',
  });
  const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'medium' });

  function formatTs(ts) {
    const d = new Date(ts);
    if (Number.isNaN(d.getTime())) return '';
    const now = new Date();
    const sameDay = d.getFullYear() === now.getFullYear() && d.getMonth() === now.getMonth()
      && d.getDate() === now.getDate();
    return sameDay ? timeFmt.format(d) : dateTimeFmt.format(d);
  }

  function memberKey(m) {
    if (!m) return '';
    return m.userId ? `u:${m.userId}` : `n:${m.name}`;
  }

  function decodeJwtClaims(token) {
    try {
      const part = token.split('.')[1];
      if (!part) return null;
      const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
      const bin = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
      const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
      const claims = JSON.parse(new TextDecoder().decode(bytes));
      return claims && typeof claims === 'object' ? claims : null;
    } catch {
      return null;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Settings

  function defaultServer() {
    if (location.protocol === 'http:' || location.protocol === 'https:') {
      const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
      return `${scheme}//${location.host}/dev`;
    }
    return 'ws://127.0.0.1:8080/dev';
  }

  function loadStored() {
    try {
      const raw = localStorage.getItem(STORE_KEY);
      const v = raw ? JSON.parse(raw) : null;
      return v && typeof v === 'object' ? v : {};
    } catch {
      return {};
    }
  }

  function saveStored() {
    try {
      localStorage.setItem(STORE_KEY, JSON.stringify({
        server: settings.server,
        name: settings.name,
        token: settings.token,
        rooms: state ? state.roomOrder.slice() : undefined,
      }));
    } catch {
      // Storage may be disabled (private mode); settings then last for this page only.
    }
  }

  const query = new URLSearchParams(location.search);
  const stored = loadStored();
  const settings = {
    server: query.get('server') || stored.server || defaultServer(),
    name: query.get('name') ?? stored.name ?? '',
    token: query.get('token') ?? stored.token ?? '',
  };
  const storedRooms = Array.isArray(stored.rooms) ? stored.rooms.filter((r) => typeof r === 'string') : [];

  function normalizeServer(raw) {
    let s = String(raw || '').trim();
    if (!s) return defaultServer();
    if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(s)) s = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${s}`;
    const u = new URL(s); // throws on nonsense
    if (u.protocol === 'http:') u.protocol = 'ws:';
    else if (u.protocol === 'https:') u.protocol = 'wss:';
    if (u.protocol !== 'ws:' && u.protocol !== 'wss:') throw new Error('The server URL must start with ws:// or wss://.');
    return u.toString().replace(/\/$/, '');
  }

  function validateName(name, hasToken) {
    if (!name) return hasToken ? null : 'Pick a name first.';
    if (codePoints(name) > 32) return 'Names are at most 32 characters long.';
    if (/\p{C}/u.test(name)) return 'Names cannot contain control or invisible formatting characters.';
    return null;
  }

  function socketUrl() {
    const u = new URL(settings.server);
    if (settings.name) u.searchParams.set('name', settings.name);
    if (settings.token) u.searchParams.set('token', settings.token);
    return u.toString();
  }

  // ---------------------------------------------------------------------------------------------
  // State

  /** @type {ReturnType<typeof newState>} */
  let state = null;

  function newState() {
    return {
      me: { name: settings.name, userId: undefined },
      rooms: new Map(), // name -> room
      roomOrder: [], // names, in the order shown
      current: null,
      pending: new Map(), // clientMsgId -> pending send, in creation order
      awaitingAck: new Map(), // room -> clientMsgId of its message sent and not yet acknowledged
      requests: new Map(), // requestId -> what it asked (for relating replies and errors)
      myReactions: new Map(), // message id -> the emojis this user reacted with (as far as this page knows)
      directNames: new Map(), // direct room -> the other user's name
      seq: 0,
      // connection
      socket: null,
      gen: 0,
      opened: false,
      everConnected: false,
      attempt: 0,
      reconnectTimer: 0,
      reconnectAt: 0,
      countdownTimer: 0,
      holdReconnect: false,
      pingTimer: 0,
      pongTimer: 0,
      lastTypingSent: 0,
      lobbyMembersTimer: 0,
      stopped: false,
    };
  }

  function newRoom(name) {
    const timeline = el('div', {
      class: 'timeline', role: 'log', 'aria-label': `Messages in ${name}`, tabindex: '0',
      'data-testid': 'timeline', dataset: { room: name, joined: 'false' },
    });
    const top = el('div', { class: 'history-start', 'data-testid': 'history-start' });
    const items = el('div', { class: 'items', 'data-testid': 'items' });
    const pending = el('div', { class: 'pending-items', 'data-testid': 'pending-items' });
    timeline.append(top, items, pending);
    timeline.hidden = true;
    const room = {
      name,
      ids: [], // message ids, sorted (UUID v7 sorts in storage order)
      msgs: new Map(), // id -> message
      els: new Map(), // id -> element
      joined: false, // confirmed by `joined` on the current connection
      historyLoaded: false,
      hasMoreOlder: false,
      loadingOlder: false,
      catchingUp: false,
      // The room's seq up to which this client holds every message (the `sinceSeq` of the next
      // rejoin), and the seqs it holds past it. Live messages of a room can arrive out of seq
      // order (two senders' fan-outs interleave), so only a gap-free run moves it.
      syncedSeq: null,
      heldSeqs: new Set(),
      members: new Map(), // memberKey -> { member, count }
      typing: new Map(), // memberKey -> { member, timer }
      unread: 0,
      atBottom: true,
      savedTop: 0,
      dom: { timeline, top, items, pending },
      listItem: null,
    };
    timeline.addEventListener('scroll', () => onTimelineScroll(room), { passive: true });
    $('timelines').append(timeline);
    return room;
  }

  const oldestId = (room) => (room.ids.length ? room.ids[0] : null);

  function isMine(sender) {
    if (!sender || !state) return false;
    if (state.me.userId) return sender.userId === state.me.userId;
    return !sender.userId && sender.name === state.me.name;
  }

  // ---------------------------------------------------------------------------------------------
  // Connection

  function isOpen() {
    return !!(state && state.socket && state.opened && state.socket.readyState === WebSocket.OPEN);
  }

  function nextRequestId() {
    state.seq += 1;
    return `r${state.gen}-${state.seq}`;
  }

  /** Sends an action; returns its requestId, or null when not connected. */
  function send(action, fields, meta) {
    if (!isOpen()) return null;
    const requestId = nextRequestId();
    const frame = { action, ...fields, requestId };
    state.requests.set(requestId, { action, ...fields, ...meta });
    state.socket.send(JSON.stringify(frame));
    return requestId;
  }

  function connect() {
    if (!state || state.stopped) return;
    clearTimeout(state.reconnectTimer);
    clearInterval(state.countdownTimer);
    state.reconnectTimer = 0;
    let ws;
    try {
      ws = new WebSocket(socketUrl());
    } catch (e) {
      failBeforeConnected(`Could not connect: ${e && e.message ? e.message : 'bad server URL'}`);
      return;
    }
    state.gen += 1;
    state.socket = ws;
    state.opened = false;
    setStatus('connecting');

    ws.onopen = () => {
      if (ws !== state.socket) return;
      state.opened = true;
      state.everConnected = true;
      state.attempt = 0;
      setStatus('online');
      hideBanner();
      startKeepAlive();
      // The server puts every connection in lobby without a `joined`; joining explicitly
      // fetches lobby's members and history. After a reconnect, `sinceSeq` asks only for what
      // was missed.
      for (const name of state.roomOrder) {
        const room = state.rooms.get(name);
        const sinceSeq = room.syncedSeq;
        send('joinRoom', sinceSeq != null ? { room: name, sinceSeq } : { room: name }, { sinceSeq });
      }
      if (!state.rooms.has(LOBBY)) send('leaveRoom', { room: LOBBY }, { silent: true });
    };

    ws.onmessage = (ev) => {
      if (ws !== state.socket) return;
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return; // not ours to interpret
      }
      if (frame && typeof frame === 'object') handleFrame(frame);
    };

    ws.onerror = () => {
      // A close event always follows; handled there.
    };

    ws.onclose = (ev) => onSocketClosed(ws, ev);
  }

  function onSocketClosed(ws, ev) {
    if (ws !== state.socket) return;
    const wasOpen = state.opened;
    state.socket = null;
    state.opened = false;
    stopKeepAlive();
    onDisconnected();
    if (!wasOpen && !state.everConnected) {
      failBeforeConnected('Could not connect to the server. Check the server address, your name and your token, then try again.');
      return;
    }
    scheduleReconnect(wasOpen ? describeClose(ev) : 'Could not connect to the server.');
  }

  function describeClose(ev) {
    switch (ev.code) {
      case 1001: return 'The server closed the connection (idle or too long).';
      case 1007: return 'The connection was closed: the server received invalid text.';
      case 1009: return 'The connection was closed: a message was too big.';
      default: return 'Connection lost.';
    }
  }

  function onDisconnected() {
    state.requests.clear();
    state.awaitingAck.clear();
    for (const room of state.rooms.values()) {
      room.joined = false;
      room.dom.timeline.dataset.joined = 'false';
      room.loadingOlder = false;
      room.catchingUp = false;
      for (const t of room.typing.values()) clearTimeout(t.timer);
      room.typing.clear();
      updateHistoryStart(room);
    }
    // Anything sent but not acknowledged goes again, with the same clientMsgId, once the room
    // is joined on the next connection; the server answers a retry without a second broadcast.
    for (const p of state.pending.values()) {
      if (p.state === 'sent') p.state = 'queued';
      renderPendingState(p);
    }
    renderTyping();
  }

  function failBeforeConnected(message) {
    teardown();
    showLogin(message);
  }

  function scheduleReconnect(reason) {
    if (state.stopped) return;
    setStatus('offline');
    if (state.holdReconnect) {
      showBanner(`${reason} You are offline.`, false);
      return;
    }
    state.attempt += 1;
    const exp = Math.min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (state.attempt - 1));
    const delay = Math.round(exp / 2 + Math.random() * (exp / 2)); // "equal jitter"
    state.reconnectAt = Date.now() + delay;
    state.reconnectTimer = setTimeout(connect, delay);
    const tick = () => {
      const secs = Math.max(0, Math.ceil((state.reconnectAt - Date.now()) / 1000));
      showBanner(`${reason} You are offline. Reconnecting${secs > 0 ? ` in ${secs} s` : ''}…`, true);
    };
    tick();
    clearInterval(state.countdownTimer);
    state.countdownTimer = setInterval(tick, 1000);
  }

  function reconnectNow() {
    if (!state || isOpen() || (state.socket && state.socket.readyState === WebSocket.CONNECTING)) return;
    connect();
  }

  function startKeepAlive() {
    stopKeepAlive();
    state.pingTimer = setInterval(() => {
      if (!isOpen()) return;
      send('ping', {});
      clearTimeout(state.pongTimer);
      const ws = state.socket;
      state.pongTimer = setTimeout(() => {
        // No answer: the connection is dead without having said so (sleep, network change).
        // Closing it cleanly could wait long for the other side: give it up now.
        if (ws !== state.socket) return;
        ws.onclose = null;
        try { ws.close(); } catch { /* already closing */ }
        onSocketClosed(ws, { code: 1006 });
      }, PONG_WITHIN);
    }, PING_EVERY);
  }

  function stopKeepAlive() {
    clearInterval(state.pingTimer);
    clearTimeout(state.pongTimer);
  }

  function teardown() {
    if (!state) return;
    state.stopped = true;
    clearTimeout(state.reconnectTimer);
    clearInterval(state.countdownTimer);
    clearInterval(state.lobbyMembersTimer);
    stopKeepAlive();
    const ws = state.socket;
    state.socket = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try { ws.close(); } catch { /* already closing */ }
    }
    for (const room of state.rooms.values()) {
      for (const t of room.typing.values()) clearTimeout(t.timer);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Frames from the server

  function handleFrame(f) {
    if (isGatewayError(f)) return onGatewayError(f);
    switch (f.type) {
      case 'joined': return onJoined(f);
      case 'message': return onMessage(f);
      case 'messageUpdated': return onChange(f);
      case 'messageDeleted': return onChange(f);
      case 'ack': return onAck(f);
      case 'history': return onHistory(f);
      case 'members': return onMembers(f);
      case 'presence': return onPresence(f);
      case 'typing': return onTyping(f);
      case 'left': return onLeft(f);
      case 'pong': return onPong(f);
      case 'updated': case 'deleted': case 'reacted': return takeRequest(f);
      case 'reactions': return onChange(f);
      case 'read': return onRead(f);
      case 'direct': return onDirect(f);
      case 'rooms': return takeRequest(f);
      case 'error': return onError(f);
      default: return undefined; // newer server, unknown frame: ignore
    }
  }

  // API Gateway's own frame when the integration behind a request failed (an error, a crash, its
  // 29 s timeout): {"message": "Internal server error", "connectionId", "requestId"}. Its
  // requestId is API Gateway's, not ours, so it names none of our requests. Every request still
  // waiting fails: API Gateway runs a connection's frames concurrently, so "the oldest" would
  // be a guess that can leave the failed one waiting forever, while failing one that was fine
  // only costs a retry, and retries are safe (sendMessage is idempotent on clientMsgId, the
  // others read or repeat). A late answer to a failed request is then ignored.
  function isGatewayError(f) {
    return f.type === undefined && typeof f.message === 'string'
      && typeof f.connectionId === 'string' && typeof f.requestId === 'string';
  }

  function onGatewayError(f) {
    toast(`The server failed to handle a request (${f.message}). Please try again.`, 'gateway');
    // The connection is alive: the keep-alive must not wait for a pong that will not come.
    clearTimeout(state.pongTimer);
    for (const requestId of [...state.requests.keys()]) {
      onError({ type: 'error', requestId, code: 'internal' }, { quiet: true });
    }
  }

  function takeRequest(f) {
    if (typeof f.requestId !== 'string') return null;
    const req = state.requests.get(f.requestId) || null;
    state.requests.delete(f.requestId);
    return req;
  }

  function onJoined(f) {
    const req = takeRequest(f);
    let room = state.rooms.get(f.room);
    if (!room) {
      if (!req || (req.action !== 'joinRoom' && req.action !== 'openDirect')) return; // not asked for by this client
      if (req.directName) state.directNames.set(f.room, req.directName);
      room = addRoom(f.room);
    }
    room.joined = true;
    room.dom.timeline.dataset.joined = 'true';
    setMembers(room, f.members);
    room.occupancy = Number.isInteger(f.occupancy) ? f.occupancy : null;
    // The server's count of what this user has not read, on every tab alike. (A guest's read
    // state is its connection's: after a reconnect the server knows nothing of it, and this
    // page's own count is the better one.)
    if (typeof f.lastRead === 'string') room.lastRead = f.lastRead;
    if (state.me.userId && Number.isInteger(f.unread) && room !== currentRoom()) {
      room.unread = f.unread;
      renderRoomList();
    }
    const sinceSeq = req ? req.sinceSeq : null;
    if (sinceSeq != null) {
      // Recovering after a reconnect: every event after `sinceSeq`, oldest first.
      const events = Array.isArray(f.events) ? f.events : [];
      addEvents(room, events);
      if (f.hasMore && events.length) fetchAfterSeq(room, events[events.length - 1].seq);
      // A whole page: every event up to the room's seq at the join is here, or is no event
      // (a seq whose writer failed, an edit of a message deleted since).
      else if (!f.hasMore && Number.isInteger(f.seq) && room.syncedSeq != null) {
        if (f.seq > room.syncedSeq) {
          room.syncedSeq = f.seq;
          for (const held of [...room.heldSeqs]) if (held <= f.seq) room.heldSeqs.delete(held);
          while (room.heldSeqs.delete(room.syncedSeq + 1)) room.syncedSeq += 1;
        }
      }
    } else {
      const history = Array.isArray(f.history) ? f.history : [];
      prependOrMerge(room, history);
      if (!room.historyLoaded) {
        room.historyLoaded = true;
        room.hasMoreOlder = !!f.hasMore;
      }
      // Every message up to the room's seq at the join is stored (older ones load by
      // scrolling); what comes after is in this page or arrives live.
      if (room.syncedSeq == null && Number.isInteger(f.seq)) room.syncedSeq = f.seq;
      for (const m of history) noteSeq(room, m.seq);
    }
    updateHistoryStart(room);
    if (req && req.userInitiated) {
      switchRoom(room.name);
      addNotice(room, 'You joined this room.');
    }
    if (room === currentRoom()) {
      followBottom(room);
      fillViewport(room);
      renderMembers();
    }
    flushPending(room);
    saveStored();
    markRoomRead(room);
  }

  /// A message of the room with this seq is held: the gap-free run moves on while it can.
  function noteSeq(room, seq) {
    if (room.syncedSeq == null || !Number.isInteger(seq) || seq <= room.syncedSeq) return;
    room.heldSeqs.add(seq);
    while (room.heldSeqs.delete(room.syncedSeq + 1)) room.syncedSeq += 1;
  }

  /// Recovered events, oldest first: messages, and edits and deletes of messages.
  function addEvents(room, events) {
    let fresh = 0;
    for (const e of events) {
      if (!e) continue;
      if (e.type === 'message') {
        if (e.deleted === true) applyChange(room, { type: 'messageDeleted', id: e.id });
        else if (addMessage(room, e)) fresh += !isMine(e.sender) ? 1 : 0;
      } else if (e.type === 'messageUpdated' || e.type === 'messageDeleted' || e.type === 'reactions') {
        applyChange(room, e);
      }
      noteSeq(room, e.seq);
    }
    countUnread(room, fresh);
  }

  /// A live edit or delete of a message (version 2).
  function onChange(f) {
    const room = state.rooms.get(f.room);
    if (!room) return;
    applyChange(room, f);
    noteSeq(room, f.seq);
  }

  /// Shows a message's new text ("edited"), or that it was deleted; a message not shown here
  /// (older than what was loaded) has nothing to change.
  function applyChange(room, f) {
    const msg = typeof f.id === 'string' ? room.msgs.get(f.id) : null;
    const node = msg ? room.els.get(msg.id) : null;
    if (!msg || !node) return;
    const text = node.querySelector('.text');
    if (f.type === 'messageDeleted') {
      msg.deleted = true;
      msg.text = '';
      msg.reactions = {};
      showDeleted(msg, node);
    } else if (f.type === 'reactions') {
      if (!msg.deleted && f.reactions && typeof f.reactions === 'object') {
        msg.reactions = f.reactions;
        renderReactions(msg, node);
      }
    } else if (!msg.deleted && typeof f.text === 'string') {
      msg.edited = true;
      msg.text = f.text;
      if (text) text.replaceChildren(renderText(f.text));
      const meta = node.querySelector('.meta');
      if (meta && !meta.querySelector('.edited')) {
        meta.append(el('span', { class: 'edited', 'data-testid': 'message-edited', text: '(edited)' }));
      }
    }
  }

  function fetchAfterSeq(room, afterSeq) {
    room.catchingUp = true;
    send('history', { room: room.name, afterSeq, limit: CATCHUP_PAGE }, { direction: 'afterSeq' });
  }

  function onMessage(f) {
    const room = state.rooms.get(f.room);
    if (!room) return;
    const mine = isMine(f.sender) || (f.clientMsgId && state.pending.has(f.clientMsgId));
    const isNew = addMessage(room, f);
    noteSeq(room, f.seq);
    if (!isNew) return;
    clearTypingFor(room, f.sender);
    if (!mine) countUnread(room, 1);
    markRoomRead(room);
    if (room === currentRoom() && (room.atBottom || mine)) scrollToBottom(room);
    else if (room === currentRoom()) $('jump-latest').hidden = false;
  }

  function onAck(f) {
    const req = takeRequest(f);
    const cid = f.clientMsgId || (req && req.clientMsgId);
    const p = cid ? state.pending.get(cid) : null;
    // Whether or not the echo came first (which already showed it), the room's next may go.
    if (!p) {
      ackArrived(f.room, cid);
      return;
    }
    const room = state.rooms.get(p.room);
    // The echo usually arrived first; a retry after a reconnect gets only the ack.
    if (room && typeof f.id === 'string' && !room.msgs.has(f.id)) {
      addMessage(room, {
        room: p.room, id: f.id, ts: f.ts, sender: { ...state.me }, text: p.text, clientMsgId: cid,
      });
      if (room === currentRoom()) scrollToBottom(room);
    }
    if (room) noteSeq(room, f.seq);
    resolvePending(cid);
    ackArrived(p.room, cid);
  }

  function onHistory(f) {
    const req = takeRequest(f);
    const room = state.rooms.get(f.room);
    if (!room || !req) return;
    const messages = Array.isArray(f.messages) ? f.messages : [];
    if (req.direction === 'afterSeq') {
      const events = Array.isArray(f.events) ? f.events : [];
      addEvents(room, events);
      if (f.hasMore && events.length) fetchAfterSeq(room, events[events.length - 1].seq);
      else room.catchingUp = false;
      if (room === currentRoom() && room.atBottom) scrollToBottom(room);
    } else {
      room.loadingOlder = false;
      room.hasMoreOlder = !!f.hasMore && messages.length > 0;
      prependOrMerge(room, messages);
      updateHistoryStart(room);
      fillViewport(room);
    }
  }

  function onMembers(f) {
    const req = takeRequest(f);
    void req;
    const room = state.rooms.get(f.room);
    if (!room) return;
    setMembers(room, f.members);
    if (Number.isInteger(f.occupancy)) room.occupancy = f.occupancy;
    if (room === currentRoom()) renderMembers();
  }

  /// `read`: the reply to our markRead, or another tab or device of ours read the room up to
  /// `id`; what is unread here is what came after it.
  function onRead(f) {
    takeRequest(f);
    const room = state.rooms.get(f.room);
    if (!room || typeof f.id !== 'string') return;
    if (!room.lastRead || f.id > room.lastRead) room.lastRead = f.id;
    if (room === currentRoom()) return;
    const after = room.ids.slice(lowerBound(room.ids, room.lastRead))
      .filter((id) => id > room.lastRead && !isMine(room.msgs.get(id).sender));
    room.unread = Math.min(room.unread, after.length);
    renderRoomList();
  }

  /// Another user opened a direct room with us: join it, so that it shows and its messages come.
  function onDirect(f) {
    if (typeof f.room !== 'string' || !f.from || typeof f.from.name !== 'string') return;
    state.directNames.set(f.room, f.from.name);
    const room = state.rooms.get(f.room);
    if (room && room.joined) return;
    send('joinRoom', { room: f.room });
  }

  /// Opens the direct room with a member (a signed-in user), and shows it.
  function openDirect(member) {
    if (!member || !member.userId) return;
    send('openDirect', { userId: member.userId }, { directName: member.name, userInitiated: true });
  }

  /** How a room is named in the list: a direct room by the other user. */
  function roomLabel(name) {
    if (!name.startsWith('dm.')) return name;
    return `@${state.directNames.get(name) || 'direct'}`;
  }

  /// Tells the server (and so our other tabs) that the room in view is read to its latest
  /// message, once per message.
  function markRoomRead(room) {
    if (!room || !room.joined || room !== currentRoom() || !room.ids.length) return;
    // Once a burst of messages has settled: one mark for many messages.
    if (room.markTimer) return;
    room.markTimer = setTimeout(() => {
      room.markTimer = 0;
      if (!state || room !== currentRoom() || !room.joined || !room.ids.length) return;
      const latest = room.ids[room.ids.length - 1];
      if (room.lastRead && latest <= room.lastRead) return;
      if (room.markedUpTo && latest <= room.markedUpTo) return;
      room.markedUpTo = latest;
      send('markRead', { room: room.name, id: latest });
    }, MARK_READ_AFTER_MS);
  }

  function onPresence(f) {
    const room = state.rooms.get(f.room);
    if (!room || !f.member) return;
    const key = memberKey(f.member);
    const entry = room.members.get(key);
    if (f.event === 'join') {
      if (entry) entry.count += 1;
      else room.members.set(key, { member: f.member, count: 1 });
      addNotice(room, `${f.member.name} joined`, 'join');
    } else if (f.event === 'leave') {
      if (entry) {
        entry.count -= 1;
        if (entry.count <= 0) room.members.delete(key);
      }
      clearTypingFor(room, f.member);
      addNotice(room, `${f.member.name} left`, 'leave');
    } else {
      return;
    }
    if (room === currentRoom()) {
      renderMembers();
      if (room.atBottom) scrollToBottom(room);
    }
  }

  function onTyping(f) {
    const room = state.rooms.get(f.room);
    if (!room || !f.member) return;
    const key = memberKey(f.member);
    const prev = room.typing.get(key);
    if (prev) clearTimeout(prev.timer);
    const timer = setTimeout(() => {
      room.typing.delete(key);
      if (room === currentRoom()) renderTyping();
    }, TYPING_SHOW_FOR);
    room.typing.set(key, { member: f.member, timer });
    if (room === currentRoom()) renderTyping();
  }

  function clearTypingFor(room, member) {
    const key = memberKey(member);
    const t = room.typing.get(key);
    if (!t) return;
    clearTimeout(t.timer);
    room.typing.delete(key);
    if (room === currentRoom()) renderTyping();
  }

  function onLeft(f) {
    takeRequest(f);
    removeRoom(f.room);
  }

  function onPong(f) {
    takeRequest(f);
    clearTimeout(state.pongTimer);
  }

  function onError(f, { quiet = false } = {}) {
    const req = takeRequest(f);
    const code = typeof f.code === 'string' ? f.code : 'internal';
    const words = describeError(code, req, f.message);
    // A read mark that did not go through costs a badge at most: nothing to tell the user.
    if (!quiet && !(req && req.action === 'markRead')) toast(words, code);
    if (!req) return;
    const room = req.room ? state.rooms.get(req.room) : null;
    switch (req.action) {
      case 'sendMessage': {
        const p = state.pending.get(req.clientMsgId);
        if (p) {
          p.state = 'failed';
          p.error = words;
          p.code = code;
          renderPendingState(p);
          // The next of the room goes; this one waits for the user's retry.
          ackArrived(p.room, p.cid);
        }
        break;
      }
      case 'history':
        if (room) {
          if (req.direction === 'afterSeq') room.catchingUp = false;
          else {
            room.loadingOlder = false;
            if (code !== 'rate_limited' && code !== 'internal') room.hasMoreOlder = false;
            updateHistoryStart(room);
          }
        }
        break;
      case 'joinRoom':
        // A failed re-join after a reconnect leaves the room shown but not joined.
        if (room && !room.joined && (code === 'not_member' || code === 'limit_exceeded' || code === 'bad_request' || code === 'forbidden')) {
          addNotice(room, `Could not rejoin this room: ${words}`, 'error');
        }
        break;
      default:
        break;
    }
  }

  function describeError(code, req, serverMessage) {
    const base = ERROR_WORDS[code] || `The server reported an error (${code}).`;
    const room = req && req.room;
    const detail = typeof serverMessage === 'string' && serverMessage.trim() ? ` (${serverMessage.trim()})` : '';
    if (!req) return code === 'bad_request' || code === 'unknown_action' ? base + detail : base;
    switch (req.action) {
      case 'editMessage':
      case 'deleteMessage':
        if (code === 'forbidden') return 'Only its sender can change a message (as a guest: from the connection that sent it).';
        return `Could not ${req.action === 'editMessage' ? 'edit' : 'delete'} the message: ${base}${detail}`;
      case 'react':
      case 'unreact':
        if (code === 'limit_exceeded') return 'That message has all the kinds of reaction it can hold (20).';
        return `Reaction not saved: ${base}`;
      case 'sendMessage':
        if (code === 'rate_limited') return 'Message not sent: you are sending messages too fast. Wait a moment, then retry.';
        if (code === 'payload_too_large') return `Message not sent: it is too long (${codePoints(req.text || '')} characters; 4000 at most).`;
        if (code === 'not_member') return `Message not sent: you are not a member of #${room}.`;
        if (code === 'bad_request') return `Message not sent: the server rejected it${detail}.`;
        return `Message not sent: ${base}`;
      case 'joinRoom':
        if (code === 'bad_request') {
          return `Cannot join "${room}": a room name is 1 to 64 letters, digits, dots, dashes or underscores.`;
        }
        if (code === 'limit_exceeded') return `Cannot join "${room}": ${base}`;
        if (code === 'forbidden') return `Cannot join "${room}": it is private, and you have no access to it.`;
        return `Cannot join "${room}": ${base}`;
      case 'leaveRoom':
        return `Cannot leave #${room}: ${base}`;
      case 'history':
        return `Could not load messages of #${room}: ${base}`;
      case 'members':
        return `Could not load the members of #${room}: ${base}`;
      case 'typing':
        return `Typing notice not sent: ${base}`;
      default:
        return base + detail;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Rooms

  function addRoom(name) {
    let room = state.rooms.get(name);
    if (room) return room;
    room = newRoom(name);
    state.rooms.set(name, room);
    if (name === LOBBY) state.roomOrder.unshift(name);
    else state.roomOrder.push(name);
    renderRoomList();
    return room;
  }

  function removeRoom(name) {
    const room = state.rooms.get(name);
    if (!room) return;
    for (const t of room.typing.values()) clearTimeout(t.timer);
    room.dom.timeline.remove();
    state.rooms.delete(name);
    state.roomOrder = state.roomOrder.filter((n) => n !== name);
    for (const [cid, p] of state.pending) {
      if (p.room === name) state.pending.delete(cid);
    }
    if (state.current === name) {
      state.current = null;
      const next = state.roomOrder[0];
      if (next) switchRoom(next);
      else renderEmpty();
    }
    renderRoomList();
    saveStored();
  }

  const currentRoom = () => (state && state.current ? state.rooms.get(state.current) || null : null);

  function switchRoom(name) {
    const room = state.rooms.get(name);
    if (!room) return;
    const prev = currentRoom();
    if (prev && prev !== room) {
      prev.savedTop = prev.dom.timeline.scrollTop;
      prev.dom.timeline.hidden = true;
    }
    state.current = name;
    room.dom.timeline.hidden = false;
    room.unread = 0;
    const label = name.startsWith('dm.') ? roomLabel(name) : `# ${name}`;
    $('room-title').textContent = label;
    $('room-title').title = name;
    $('message-input').placeholder = `Message ${name.startsWith('dm.') ? roomLabel(name) : `#${name}`}`;
    $('leave-room').disabled = false;
    $('composer').classList.remove('disabled');
    if (room.atBottom) scrollToBottom(room);
    else room.dom.timeline.scrollTop = room.savedTop;
    $('jump-latest').hidden = room.atBottom;
    renderRoomList();
    renderMembers();
    renderTyping();
    if (room.joined) send('members', { room: name });
    markRoomRead(room);
    fillViewport(room);
    closeDrawers();
  }

  function renderEmpty() {
    $('room-title').textContent = 'No room';
    $('message-input').placeholder = 'Join a room to chat';
    $('leave-room').disabled = true;
    $('composer').classList.add('disabled');
    renderMembers();
    renderTyping();
  }

  function countUnread(room, n) {
    if (!n || room === currentRoom()) return; // in view: nothing is unread
    room.unread += n;
    renderRoomList();
  }

  function renderRoomList() {
    const list = $('room-list');
    const items = [];
    let total = 0;
    for (const name of state.roomOrder) {
      const room = state.rooms.get(name);
      total += room.unread;
      const btn = el('button', {
        type: 'button', class: 'room-button', 'data-testid': 'room-button', dataset: { room: name },
        'aria-current': name === state.current ? 'true' : null,
      },
      el('span', { class: 'room-hash', 'aria-hidden': 'true', text: name.startsWith('private.') ? '🔒' : (name.startsWith('dm.') ? '' : '#') }),
      el('span', { class: 'room-name', text: roomLabel(name) }));
      if (room.unread > 0) {
        btn.append(el('span', {
          class: 'badge', 'data-testid': 'unread', 'aria-label': `${room.unread} unread`,
          text: room.unread > 99 ? '99+' : String(room.unread),
        }));
      }
      btn.addEventListener('click', () => switchRoom(name));
      items.push(el('li', { class: name === state.current ? 'room active' : 'room' }, btn));
    }
    list.replaceChildren(...items);
    const badge = $('rooms-toggle-badge');
    badge.hidden = total === 0;
    badge.textContent = total > 99 ? '99+' : String(total);
    document.title = total > 0 ? `(${total}) Chat` : 'Chat';
  }

  function setMembers(room, members) {
    room.members.clear();
    if (!Array.isArray(members)) return;
    for (const m of members) {
      if (!m || typeof m.name !== 'string') continue;
      const key = memberKey(m);
      const entry = room.members.get(key);
      if (entry) entry.count += 1;
      else room.members.set(key, { member: m, count: 1 });
    }
  }

  function renderMembers() {
    const room = currentRoom();
    const list = $('member-list');
    if (!room) {
      list.replaceChildren();
      $('member-count').textContent = '0';
      return;
    }
    const entries = [...room.members.values()].sort((a, b) => {
      const am = isMine(a.member) ? 0 : 1;
      const bm = isMine(b.member) ? 0 : 1;
      return am - bm || a.member.name.localeCompare(b.member.name);
    });
    list.replaceChildren(...entries.map(({ member }) => {
      const mine = isMine(member);
      return el('li', { class: mine ? 'member me' : 'member', 'data-testid': 'member', dataset: { name: member.name } },
        el('span', { class: 'avatar', 'aria-hidden': 'true', text: initial(member.name), dataset: { hue: String(hue(member.name)) } }),
        el('span', { class: 'member-name', text: member.name }),
        mine ? el('span', { class: 'you', text: '(you)' }) : null,
        !mine && member.userId && state.me.userId ? directButton(member) : null);
    }));
    // lobby: no presence event keeps its member list current; its number of connections is.
    if (Number.isInteger(room.occupancy)) {
      list.prepend(el('li', {
        class: 'occupancy', 'data-testid': 'occupancy',
        text: `${room.occupancy} connected`,
      }));
    }
    paintHues(list);
    $('member-count').textContent = String(entries.length);
  }

  function directButton(member) {
    const b = el('button', { type: 'button', class: 'tool direct', 'data-testid': 'direct-message', title: `Message ${member.name} directly`, text: 'Message' });
    b.addEventListener('click', () => openDirect(member));
    return b;
  }

  function renderTyping() {
    const box = $('typing-indicator');
    const room = currentRoom();
    const names = room ? [...room.typing.values()].map((t) => t.member.name) : [];
    let text = '';
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) text = 'Several people are typing…';
    box.textContent = text;
    box.classList.toggle('active', names.length > 0);
  }

  // ---------------------------------------------------------------------------------------------
  // Messages

  function validMessage(m) {
    return m && typeof m.id === 'string' && (typeof m.text === 'string' || m.deleted === true);
  }

  /** Inserts one message in id order; returns false for a duplicate (dedupe by id). */
  function addMessage(room, m) {
    if (!validMessage(m) || room.msgs.has(m.id)) return false;
    const msg = {
      id: m.id,
      room: room.name,
      ts: typeof m.ts === 'number' ? m.ts : Date.now(),
      sender: m.sender && typeof m.sender === 'object' ? m.sender : { name: '' },
      text: typeof m.text === 'string' ? m.text : '',
      clientMsgId: m.clientMsgId,
      edited: typeof m.editedAt === 'number',
      deleted: m.deleted === true,
      reactions: m.reactions && typeof m.reactions === 'object' ? m.reactions : {},
    };
    room.msgs.set(msg.id, msg);
    const i = lowerBound(room.ids, msg.id);
    room.ids.splice(i, 0, msg.id);
    const node = renderMessage(msg);
    room.els.set(msg.id, node);
    const nextId = room.ids[i + 1];
    if (nextId) room.dom.items.insertBefore(node, room.els.get(nextId));
    else room.dom.items.append(node);
    regroup(node);
    if (node.nextElementSibling) regroup(node.nextElementSibling);
    // Our own message coming back (echo, or found in history after a reconnect).
    if (msg.clientMsgId && state.pending.has(msg.clientMsgId)) {
      const p = state.pending.get(msg.clientMsgId);
      if (p.room === room.name && msg.text === p.text) {
        // Learn how the server names us (with a token, the name comes from its claims).
        if (typeof msg.sender.name === 'string') state.me.name = msg.sender.name;
        if (msg.sender.userId) state.me.userId = msg.sender.userId;
        node.classList.add('own');
        resolvePending(msg.clientMsgId);
      }
    }
    return true;
  }

  /** Adds a page of older (or initial) messages, keeping what the person sees in place. */
  function prependOrMerge(room, messages) {
    const tl = room.dom.timeline;
    const visible = !tl.hidden;
    const beforeH = visible ? tl.scrollHeight : 0;
    const beforeTop = visible ? tl.scrollTop : 0;
    for (const m of messages) addMessage(room, m);
    if (visible && !room.atBottom) tl.scrollTop = beforeTop + (tl.scrollHeight - beforeH);
    else if (visible) scrollToBottom(room);
  }

  const LINK_RE = /\bhttps?:\/\/[^\s<>"'`]+[^\s<>"'`.,;:!?)\]}]/gi;

  function renderText(text) {
    const frag = document.createDocumentFragment();
    let last = 0;
    for (const match of text.matchAll(LINK_RE)) {
      const url = match[0];
      if (match.index > last) frag.append(document.createTextNode(text.slice(last, match.index)));
      let ok = false;
      try {
        const u = new URL(url);
        ok = u.protocol === 'http:' || u.protocol === 'https:';
      } catch { ok = false; }
      if (ok) {
        frag.append(el('a', { href: url, target: '_blank', rel: 'noopener noreferrer nofollow', text: url }));
      } else {
        frag.append(document.createTextNode(url));
      }
      last = match.index + url.length;
    }
    if (last < text.length) frag.append(document.createTextNode(text.slice(last)));
    return frag;
  }

  function initial(name) {
    const first = [...(name || '?').trim()][0] || '?';
    return first.toUpperCase();
  }

  function hue(name) {
    let h = 2166136261; // FNV-1a, so that similar names get different colours
    for (const ch of name || '') {
      h ^= ch.codePointAt(0);
      h = Math.imul(h, 16777619);
    }
    return ((h >>> 0) % 24) * 15;
  }

  function paintHues(root) {
    for (const a of root.querySelectorAll('.avatar[data-hue]')) {
      a.style.setProperty('--hue', a.dataset.hue);
    }
  }

  function renderMessage(msg) {
    const mine = isMine(msg.sender);
    const name = typeof msg.sender.name === 'string' ? msg.sender.name : '?';
    const time = el('time', {
      class: 'ts', datetime: new Date(msg.ts).toISOString(), title: fullFmt.format(new Date(msg.ts)),
      text: formatTs(msg.ts),
    });
    const avatar = el('span', { class: 'avatar', 'aria-hidden': 'true', text: initial(name) });
    avatar.style.setProperty('--hue', String(hue(name)));
    const tools = el('div', { class: 'tools', 'data-testid': 'message-tools' },
      ...QUICK_REACTIONS.map((emoji) => {
        const b = el('button', { type: 'button', class: 'tool react', 'data-testid': 'react-button', title: `React with ${emoji}`, dataset: { emoji }, text: emoji });
        b.addEventListener('click', () => toggleReaction(msg, emoji));
        return b;
      }));
    if (mine) {
      const edit = el('button', { type: 'button', class: 'tool', 'data-testid': 'edit-message', text: 'Edit' });
      edit.addEventListener('click', () => startEdit(msg));
      const del = el('button', { type: 'button', class: 'tool', 'data-testid': 'delete-message', text: 'Delete' });
      del.addEventListener('click', () => send('deleteMessage', { room: msg.room, id: msg.id }));
      tools.append(edit, del);
    }
    const node = el('div', {
      class: mine ? 'msg own' : 'msg', 'data-testid': 'message',
      dataset: { id: msg.id, sender: name, senderKey: memberKey(msg.sender), ts: String(msg.ts) },
    },
    avatar,
    el('div', { class: 'bubble' },
      el('div', { class: 'meta' },
        el('span', { class: 'sender', 'data-testid': 'message-sender', text: name }),
        time,
        msg.edited ? el('span', { class: 'edited', 'data-testid': 'message-edited', text: '(edited)' }) : null),
      el('div', { class: 'text', 'data-testid': 'message-text' }, renderText(msg.text)),
      el('div', { class: 'reactions', 'data-testid': 'reactions' }),
      tools));
    renderReactions(msg, node);
    if (msg.deleted) showDeleted(msg, node);
    return node;
  }

  /** The reactions under a message: one chip per kind with its count; a click toggles one's own. */
  function renderReactions(msg, node) {
    const box = node.querySelector('.reactions');
    if (!box) return;
    const mine = state.myReactions.get(msg.id) || new Set();
    box.replaceChildren(...Object.entries(msg.reactions || {})
      .filter(([, r]) => r && Number.isInteger(r.count) && r.count > 0)
      .map(([emoji, r]) => {
        const chip = el('button', {
          type: 'button', class: mine.has(emoji) ? 'reaction mine' : 'reaction', 'data-testid': 'reaction',
          dataset: { emoji, count: String(r.count) }, title: `${r.count} × ${emoji}`,
        }, el('span', { class: 'emoji', text: emoji }), el('span', { class: 'count', text: String(r.count) }));
        chip.addEventListener('click', () => toggleReaction(msg, emoji));
        return chip;
      }));
  }

  function toggleReaction(msg, emoji) {
    if (msg.deleted) return;
    let mine = state.myReactions.get(msg.id);
    if (!mine) state.myReactions.set(msg.id, (mine = new Set()));
    const had = mine.has(emoji);
    if (send(had ? 'unreact' : 'react', { room: msg.room, id: msg.id, emoji }) === null) return;
    if (had) mine.delete(emoji); else mine.add(emoji);
  }

  /** Edits a message in place: Enter sends the new text, Escape gives up. */
  function startEdit(msg) {
    const room = state.rooms.get(msg.room);
    const node = room && room.els.get(msg.id);
    const text = node && node.querySelector('.text');
    if (!text || msg.deleted || node.querySelector('.edit-input')) return;
    const input = el('input', { class: 'edit-input', 'data-testid': 'edit-input', type: 'text', maxlength: '4000', 'aria-label': 'New text' });
    input.value = msg.text;
    const restore = () => text.replaceChildren(renderText(msg.text));
    input.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') { e.preventDefault(); restore(); }
      if (e.key === 'Enter' && !e.isComposing) {
        e.preventDefault();
        const value = input.value;
        if (value.trim() && value !== msg.text) send('editMessage', { room: msg.room, id: msg.id, text: value });
        restore();
      }
    });
    text.replaceChildren(input);
    input.focus();
  }

  function showDeleted(msg, node) {
    node.classList.add('deleted');
    const text = node.querySelector('.text');
    if (text) text.replaceChildren(el('em', { 'data-testid': 'message-deleted', text: 'message deleted' }));
    const reactions = node.querySelector('.reactions');
    if (reactions) reactions.replaceChildren();
    const tools = node.querySelector('.tools');
    if (tools) tools.remove();
  }

  /** Consecutive messages from one sender within a few minutes share one header. */
  function regroup(node) {
    if (!node || !node.classList.contains('msg')) return;
    const prev = node.previousElementSibling;
    const cont = !!prev && prev.classList.contains('msg')
      && prev.dataset.senderKey === node.dataset.senderKey
      && Math.abs(Number(node.dataset.ts) - Number(prev.dataset.ts)) < GROUP_WITHIN;
    node.classList.toggle('cont', cont);
  }

  function addNotice(room, text, kind) {
    const node = el('div', { class: `notice ${kind || ''}`.trim(), 'data-testid': 'notice', role: 'note' },
      el('span', { text }),
      el('time', { class: 'ts', text: formatTs(Date.now()) }));
    room.dom.items.append(node);
    if (room === currentRoom() && room.atBottom) scrollToBottom(room);
  }

  function updateHistoryStart(room) {
    const top = room.dom.top;
    let text;
    if (room.loadingOlder) text = 'Loading older messages…';
    else if (!room.historyLoaded) text = room.joined ? 'Loading…' : (isOpen() ? 'Joining…' : 'Waiting for the connection…');
    else if (room.hasMoreOlder) text = 'Scroll up for older messages';
    else text = `This is the beginning of #${room.name}.`;
    top.textContent = text;
    top.dataset.state = room.loadingOlder ? 'loading' : (room.historyLoaded && !room.hasMoreOlder ? 'start' : 'more');
  }

  function loadOlder(room) {
    if (!room.historyLoaded || !room.hasMoreOlder || room.loadingOlder || !room.joined || !isOpen()) return;
    const before = oldestId(room);
    if (!before) {
      room.hasMoreOlder = false;
      updateHistoryStart(room);
      return;
    }
    room.loadingOlder = true;
    updateHistoryStart(room);
    send('history', { room: room.name, before, limit: PAGE }, { direction: 'before' });
  }

  /** When the loaded messages do not fill the view, nothing can be scrolled: load more now. */
  function fillViewport(room) {
    if (room !== currentRoom()) return;
    const tl = room.dom.timeline;
    if (tl.scrollHeight <= tl.clientHeight + 40) loadOlder(room);
  }

  function onTimelineScroll(room) {
    if (room !== currentRoom()) return;
    const tl = room.dom.timeline;
    room.atBottom = tl.scrollHeight - tl.scrollTop - tl.clientHeight < 48;
    if (room.atBottom) $('jump-latest').hidden = true;
    if (tl.scrollTop < 120) loadOlder(room);
  }

  function scrollToBottom(room) {
    const tl = room.dom.timeline;
    tl.scrollTop = tl.scrollHeight;
    room.atBottom = true;
    if (room === currentRoom()) $('jump-latest').hidden = true;
  }

  function followBottom(room) {
    if (room.atBottom) scrollToBottom(room);
  }

  // ---------------------------------------------------------------------------------------------
  // Sending, with a queue that survives disconnects

  function sendText(text) {
    const room = currentRoom();
    if (!room) return;
    const cid = uuid();
    const p = {
      cid, room: room.name, text, state: 'queued', error: null, code: null, el: null,
    };
    state.pending.set(cid, p);
    p.el = renderPending(p);
    room.dom.pending.append(p.el);
    scrollToBottom(room);
    flushPending(room);
    renderPendingState(p);
  }

  /// Whether a message of this room is sent and not yet acknowledged. One at a time per room:
  /// on AWS each frame is its own Lambda invocation, so two pipelined messages may be stored in
  /// either order; the next goes after the previous one's ack, which keeps them in the order
  /// typed (PROTOCOL.md: a message sent after another's ack reaches everyone after it).
  function inFlight(roomName) {
    return state.awaitingAck.has(roomName);
  }

  function transmit(p) {
    const frameBytes = new TextEncoder().encode(JSON.stringify({
      action: 'sendMessage', room: p.room, text: p.text, clientMsgId: p.cid, requestId: 'r0000000-0000000',
    })).length;
    if (frameBytes > MAX_FRAME_BYTES) {
      // Sending it would only get the connection closed (and retried, and closed again).
      const words = describeError('payload_too_large', { action: 'sendMessage', text: p.text, room: p.room });
      p.state = 'failed';
      p.error = words;
      p.code = 'payload_too_large';
      renderPendingState(p);
      toast(words, 'payload_too_large');
      return;
    }
    const requestId = send('sendMessage', { room: p.room, text: p.text, clientMsgId: p.cid }, { clientMsgId: p.cid });
    if (requestId) {
      state.awaitingAck.set(p.room, p.cid);
      p.state = 'sent';
      p.error = null;
      renderPendingState(p);
    }
  }

  /// Sends the room's oldest queued message, unless one is in flight.
  function flushPending(room) {
    if (!room || !room.joined || !isOpen() || inFlight(room.name)) return;
    for (const p of state.pending.values()) {
      if (p.room === room.name && p.state === 'queued') {
        transmit(p);
        // Refused before it left (too long): the next one may go.
        if (p.state === 'sent') return;
      }
    }
  }

  function resolvePending(cid) {
    const p = state.pending.get(cid);
    if (!p) return;
    state.pending.delete(cid);
    if (p.el) p.el.remove();
  }

  /// The ack (or the refusal) of a room's message in flight came: the room's next may go. Not
  /// on its echo, which comes during the fan-out: only the ack says it reached everyone.
  function ackArrived(roomName, cid) {
    if (!roomName || state.awaitingAck.get(roomName) !== cid) return;
    state.awaitingAck.delete(roomName);
    flushPending(state.rooms.get(roomName));
  }

  function renderPending(p) {
    const status = el('span', { class: 'pending-status', 'data-testid': 'pending-status' });
    const actions = el('span', { class: 'pending-actions' });
    const node = el('div', {
      class: 'msg own pending', 'data-testid': 'pending-message', dataset: { clientMsgId: p.cid },
    },
    el('div', { class: 'bubble' },
      el('div', { class: 'text', 'data-testid': 'message-text' }, renderText(p.text)),
      el('div', { class: 'meta' }, status, actions)));
    return node;
  }

  function renderPendingState(p) {
    if (!p.el) return;
    const status = p.el.querySelector('.pending-status');
    const actions = p.el.querySelector('.pending-actions');
    p.el.dataset.state = p.state;
    if (p.state === 'failed') {
      p.el.classList.add('failed');
      status.textContent = p.error || 'Not sent.';
      const retry = el('button', { type: 'button', class: 'link-button', 'data-testid': 'retry', text: 'Retry' });
      retry.addEventListener('click', () => {
        p.state = 'queued';
        p.el.classList.remove('failed');
        flushPending(state.rooms.get(p.room));
        renderPendingState(p);
      });
      const edit = el('button', { type: 'button', class: 'link-button', 'data-testid': 'edit', text: 'Edit' });
      edit.addEventListener('click', () => {
        discard(p);
        const input = $('message-input');
        input.value = p.text;
        autoGrow();
        updateCharCount();
        input.focus();
      });
      const drop = el('button', { type: 'button', class: 'link-button', 'data-testid': 'discard', text: 'Discard' });
      drop.addEventListener('click', () => discard(p));
      actions.replaceChildren(
        p.code === 'payload_too_large' || p.code === 'bad_request' ? edit : retry, drop);
    } else {
      p.el.classList.remove('failed');
      status.textContent = isOpen() ? 'sending…' : 'sending… (waiting for the connection)';
      actions.replaceChildren();
    }
  }

  function discard(p) {
    state.pending.delete(p.cid);
    if (p.el) p.el.remove();
  }

  // ---------------------------------------------------------------------------------------------
  // Status, banner, toasts

  function setStatus(s) {
    const node = $('conn-status');
    node.dataset.state = s;
    node.textContent = s === 'online' ? 'Online' : s === 'connecting' ? 'Connecting…' : 'Offline';
    document.body.dataset.conn = s;
    if (state) for (const p of state.pending.values()) renderPendingState(p);
    if (state) for (const room of state.rooms.values()) updateHistoryStart(room);
  }

  function showBanner(text, showButton) {
    $('conn-banner-text').textContent = text;
    $('reconnect-now').hidden = !showButton;
    $('conn-banner').hidden = false;
  }

  function hideBanner() {
    $('conn-banner').hidden = true;
  }

  function toast(text, code) {
    const box = $('toasts');
    for (const t of box.children) {
      if (t.dataset.text === text) {
        const n = Number(t.dataset.count || '1') + 1;
        t.dataset.count = String(n);
        t.querySelector('.toast-count').textContent = `×${n}`;
        clearTimeout(Number(t.dataset.timer));
        t.dataset.timer = String(setTimeout(() => t.remove(), TOAST_FOR));
        return;
      }
    }
    const close = el('button', { type: 'button', class: 'icon-button', 'aria-label': 'Dismiss', text: '✕' });
    const node = el('div', {
      class: 'toast', role: 'alert', 'data-testid': 'error-toast', dataset: { code: code || '', text },
    }, el('span', { class: 'toast-text', text }), el('span', { class: 'toast-count' }), close);
    close.addEventListener('click', () => node.remove());
    node.dataset.timer = String(setTimeout(() => node.remove(), TOAST_FOR));
    box.append(node);
    while (box.children.length > 5) box.firstElementChild.remove();
  }

  // ---------------------------------------------------------------------------------------------
  // Sign-in screen and start

  function showLogin(errorText) {
    $('app').hidden = true;
    $('login').hidden = false;
    $('name-input').value = settings.name;
    $('server-input').value = settings.server;
    $('token-input').value = settings.token;
    if (settings.token || settings.server !== defaultServer()) $('advanced').open = true;
    const err = $('login-error');
    err.hidden = !errorText;
    err.textContent = errorText || '';
    if (errorText) $('advanced').open = true;
    $('name-input').focus();
  }

  function start() {
    teardown();
    $('timelines').replaceChildren();
    $('toasts').replaceChildren();
    state = newState();
    if (settings.token) {
      const claims = decodeJwtClaims(settings.token);
      if (claims && typeof claims.sub === 'string') {
        state.me = { name: typeof claims.name === 'string' ? claims.name : claims.sub, userId: claims.sub };
      }
    }
    $('me-name').textContent = state.me.name || '(from your token)';
    $('login').hidden = true;
    $('app').hidden = false;
    // lobby first, then the rooms remembered from last time
    addRoom(LOBBY);
    for (const r of storedRooms) if (/^[A-Za-z0-9_.-]{1,64}$/.test(r)) addRoom(r);
    storedRooms.length = 0;
    switchRoom(LOBBY);
    for (const room of state.rooms.values()) updateHistoryStart(room);
    hideBanner();
    connect();
    clearInterval(state.lobbyMembersTimer);
    // lobby has no presence events; refresh its member list now and then while it is in view
    state.lobbyMembersTimer = setInterval(() => {
      const room = currentRoom();
      if (room && room.name === LOBBY && room.joined && document.visibilityState === 'visible') {
        send('members', { room: LOBBY });
      }
    }, 15000);
    $('message-input').focus();
  }

  function onLoginSubmit(ev) {
    ev.preventDefault();
    const name = $('name-input').value.trim();
    const token = $('token-input').value.trim();
    let server;
    try {
      server = normalizeServer($('server-input').value);
    } catch (e) {
      showLogin(e instanceof TypeError ? 'That server URL is not valid.' : e.message);
      return;
    }
    const problem = validateName(name, !!token);
    if (problem) {
      settings.server = server;
      settings.token = token;
      showLogin(problem);
      return;
    }
    settings.name = name;
    settings.server = server;
    settings.token = token;
    saveStored();
    start();
  }

  // ---------------------------------------------------------------------------------------------
  // UI wiring

  function autoGrow() {
    const input = $('message-input');
    input.style.height = 'auto';
    input.style.height = `${Math.min(input.scrollHeight, 200)}px`;
  }

  function updateCharCount() {
    const n = codePoints($('message-input').value);
    const counter = $('char-count');
    counter.hidden = n < MAX_TEXT - 500;
    counter.textContent = `${n}/${MAX_TEXT}`;
    counter.classList.toggle('over', n > MAX_TEXT);
  }

  function submitComposer() {
    const input = $('message-input');
    const text = input.value;
    if (!text.trim() || !currentRoom()) return;
    sendText(text);
    input.value = '';
    autoGrow();
    updateCharCount();
  }

  function onComposerInput() {
    autoGrow();
    updateCharCount();
    const room = currentRoom();
    if (!room || !room.joined || !$('message-input').value.trim()) return;
    const now = Date.now();
    if (now - state.lastTypingSent >= TYPING_SEND_EVERY && isOpen()) {
      state.lastTypingSent = now;
      send('typing', { room: room.name });
    }
  }

  function onJoinSubmit(ev) {
    ev.preventDefault();
    const input = $('join-room-input');
    const name = input.value.trim().replace(/^#/, '');
    if (!name) return;
    if (state.rooms.has(name)) {
      switchRoom(name);
      input.value = '';
      return;
    }
    if (!isOpen()) {
      toast(`Cannot join "${name}" while offline. Try again when the connection is back.`, 'offline');
      return;
    }
    send('joinRoom', { room: name }, { userInitiated: true });
    input.value = '';
  }

  function onLeaveClick() {
    const room = currentRoom();
    if (!room) return;
    if (isOpen() && room.joined) send('leaveRoom', { room: room.name });
    else removeRoom(room.name); // not joined on the server anyway; nothing to rejoin later
  }

  function closeDrawers() {
    document.body.classList.remove('sidebar-open', 'members-open');
    $('rooms-toggle').setAttribute('aria-expanded', 'false');
    $('members-toggle').setAttribute('aria-expanded', 'false');
    $('scrim').hidden = true;
  }

  function toggleDrawer(cls, button) {
    const open = !document.body.classList.contains(cls);
    closeDrawers();
    if (open) {
      document.body.classList.add(cls);
      button.setAttribute('aria-expanded', 'true');
      $('scrim').hidden = false;
    }
  }

  function wire() {
    $('login-form').addEventListener('submit', onLoginSubmit);
    $('composer').addEventListener('submit', (ev) => {
      ev.preventDefault();
      submitComposer();
      $('message-input').focus();
    });
    const input = $('message-input');
    input.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing && ev.keyCode !== 229) {
        ev.preventDefault();
        submitComposer();
      }
    });
    input.addEventListener('input', onComposerInput);
    $('join-form').addEventListener('submit', onJoinSubmit);
    $('leave-room').addEventListener('click', onLeaveClick);
    $('reconnect-now').addEventListener('click', () => {
      if (state) state.attempt = 0;
      reconnectNow();
    });
    $('sign-out').addEventListener('click', () => {
      teardown();
      showLogin('');
    });
    $('rooms-toggle').addEventListener('click', () => toggleDrawer('sidebar-open', $('rooms-toggle')));
    $('sidebar-close').addEventListener('click', closeDrawers);
    $('members-toggle').addEventListener('click', () => {
      toggleDrawer('members-open', $('members-toggle'));
      const room = currentRoom();
      if (room && room.joined && document.body.classList.contains('members-open')) send('members', { room: room.name });
    });
    $('members-close').addEventListener('click', closeDrawers);
    $('scrim').addEventListener('click', closeDrawers);
    $('jump-latest').addEventListener('click', () => {
      const room = currentRoom();
      if (room) scrollToBottom(room);
    });
    document.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape') closeDrawers();
      if (!state || !ev.altKey || (ev.key !== 'ArrowUp' && ev.key !== 'ArrowDown')) return;
      const i = state.roomOrder.indexOf(state.current);
      const next = state.roomOrder[i + (ev.key === 'ArrowUp' ? -1 : 1)];
      if (next) {
        ev.preventDefault();
        switchRoom(next);
        $('message-input').focus();
      }
    });
    document.addEventListener('visibilitychange', () => {
      // Back to a page that was in the background (phones freeze timers): retry at once.
      if (document.visibilityState === 'visible' && state && !state.stopped && !state.socket && !state.holdReconnect) {
        state.attempt = 0;
        reconnectNow();
      }
    });
    window.addEventListener('online', () => {
      if (state && !state.stopped && !state.socket && !state.holdReconnect) {
        state.attempt = 0;
        reconnectNow();
      }
    });
    // The view shrinks when the composer grows, the keyboard opens or the window changes: keep
    // the newest message in sight when it was.
    const keepBottom = () => {
      const room = currentRoom();
      if (room) {
        if (room.atBottom) scrollToBottom(room);
        fillViewport(room);
      }
    };
    if (typeof ResizeObserver === 'function') new ResizeObserver(keepBottom).observe($('timelines'));
    else window.addEventListener('resize', keepBottom);
  }

  // Hooks for the browser tests. They only reach what a person could cause anyway.
  window.chatDebug = {
    /** Stops (true) or resumes (false) reconnecting; resuming reconnects at once when offline. */
    pauseReconnect(on) {
      if (!state) return;
      state.holdReconnect = !!on;
      if (on) {
        clearTimeout(state.reconnectTimer);
        clearInterval(state.countdownTimer);
        if (!state.socket) showBanner('You are offline.', false);
      } else if (!state.socket && !state.stopped) {
        state.attempt = 0;
        connect();
      }
    },
    /** Sends a raw frame on the open connection, remembered like the client's own requests. */
    sendRaw(frame) {
      if (!isOpen()) return null;
      const requestId = nextRequestId();
      const full = { ...frame, requestId };
      state.requests.set(requestId, { ...frame });
      state.socket.send(JSON.stringify(full));
      return requestId;
    },
    /** Handles a frame as if the server had sent it. */
    receive(frame) {
      if (state) handleFrame(frame);
    },
    get online() { return isOpen(); },
    /** Reconnect attempts since the connection was last open. */
    get attempts() { return state ? state.attempt : 0; },
    get pendingCount() { return state ? state.pending.size : 0; },
  };

  wire();
  const auto = query.has('name') || query.has('token');
  if (auto && !validateName(settings.name, !!settings.token)) {
    try {
      settings.server = normalizeServer(settings.server);
      saveStored();
      start();
    } catch {
      showLogin('That server URL is not valid.');
    }
  } else {
    showLogin('');
  }
})();
