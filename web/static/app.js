// Browser client for the chat protocol (see PROTOCOL.md): the page only.
//
// The connection is the client library's (clients/js, served as /client/*.js): calls correlated
// by requestId, reconnect with backoff and jitter, rejoin with recovery by seq (every message
// once, in seq order), one send per room in flight and idempotent resends, the keep-alive and
// the planned reconnect before API Gateway's 2-hour limit. This file is what a person sees:
//   settings    — server URL, name and token: query parameters, then localStorage, then defaults
//   state       — rooms (messages keyed by id, members, typing, unread), pending sends
//   connection  — the library's client, its states shown (status, banner)
//   events      — one handler per event of the library
//   rendering   — incremental DOM updates; user data only ever goes through textContent
//   UI wiring   — forms, keyboard, room switching, scrolling up for older messages
//
// A small handle, window.chatDebug, exists for the browser tests (pause reconnecting, send a raw
// frame); it changes nothing in normal use.
import { ChatClient, randomId } from '/client/index.js';

(() => {
  // ---------------------------------------------------------------------------------------------
  // Constants

  const LOBBY = 'lobby';
  const MAX_TEXT = 4000;
  const PAGE = 50; // history page size when scrolling up
  const TYPING_SEND_EVERY = 2000;
  const TYPING_SHOW_FOR = 4000;
  /** Messages typed offline that wait for the connection, at most (the library's bound). */
  const MAX_QUEUED = 1000;
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
    timeout: 'The server did not answer in time. Please try again.',
    disconnected: 'The connection dropped before the server answered. Please try again.',
    queue_full: 'Too many messages are waiting for the connection. Wait until it is back.',
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

  // ---------------------------------------------------------------------------------------------
  // State

  /** @type {ReturnType<typeof newState>} */
  let state = null;
  /** @type {ChatClient|null} the connection (the client library) */
  let client = null;

  function newState() {
    return {
      rooms: new Map(), // name -> room
      roomOrder: [], // names, in the order shown
      current: null,
      pending: new Map(), // clientMsgId -> pending send, in creation order
      myReactions: new Map(), // message id -> the emojis this user reacted with (as far as this page knows)
      directNames: new Map(), // direct room -> the other user's name
      countdownTimer: 0,
      holdReconnect: false,
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
      joined: false, // joined and in step on the current connection (the library's `joined`)
      historyLoaded: false,
      hasMoreOlder: false,
      loadingOlder: false,
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

  /** Who we are: from the token, the name, or how the server named us in our own messages. */
  const me = () => (client ? client.me : { name: settings.name });

  function isMine(sender) {
    if (!sender || !state) return false;
    const self = me();
    if (self.userId) return sender.userId === self.userId;
    return !sender.userId && sender.name === self.name;
  }

  // ---------------------------------------------------------------------------------------------
  // Connection: the library keeps it; the page shows its states.

  function isOpen() {
    return !!(client && client.connected);
  }

  /** A call's failure, in words, to the person (quiet ones say nothing). */
  function callFailed(err, req, { quiet = false } = {}) {
    if (!state || state.stopped || !err) return;
    if (err.code === 'closed') return; // signed out
    const code = typeof err.code === 'string' ? err.code : 'internal';
    // API Gateway's failure frame is told once, by the `error` event.
    if (!quiet && !err.gateway) toast(describeError(code, req, err.serverMessage), code);
  }

  function connect() {
    let c;
    try {
      c = new ChatClient({
        url: settings.server,
        name: settings.name || undefined,
        token: settings.token || undefined,
        // A message typed offline waits for the connection however long it takes, as before.
        sendTimeout: 0,
        maxQueue: MAX_QUEUED,
        // lobby is one of the page's rooms like any other: left with the leave button.
        lobby: state.rooms.has(LOBBY),
      });
    } catch (e) {
      failBeforeConnected(`Could not connect: ${e && e.message ? e.message : 'bad server URL'}`);
      return;
    }
    client = c;
    const live = (fn) => (ev) => { if (client === c && state && !state.stopped) fn(ev); };
    c.on('state', live(onState));
    c.on('joined', live(onJoined));
    c.on('rejoinFailed', live(onRejoinFailed));
    c.on('message', live(onMessage));
    c.on('messageUpdated', live(onChange));
    c.on('messageDeleted', live(onChange));
    c.on('reactions', live(onChange));
    c.on('presence', live(onPresence));
    c.on('typing', live(onTyping));
    c.on('read', live(onRead));
    c.on('direct', live(onDirect));
    c.on('removed', live(onRemoved));
    c.on('error', live(onServerError));
    c.connect().catch(() => { /* told by the `closed` state */ });
    // lobby and the rooms remembered from last time, joined as soon as the connection is open.
    for (const name of state.roomOrder) joinRoom(name, { remembered: true });
  }

  function onState(ev) {
    clearInterval(state.countdownTimer);
    switch (ev.state) {
      case 'connecting':
        setStatus('connecting');
        break;
      case 'connected':
        setStatus('online');
        hideBanner();
        break;
      case 'reconnecting': {
        onDisconnected();
        // A planned reconnect (before the server's 2-hour limit) happens at once: nothing to say.
        if (ev.planned) return;
        setStatus('offline');
        if (state.holdReconnect) {
          client.disconnect();
          return;
        }
        const reason = ev.previous === 'connected' ? describeClose(ev.code) : 'Could not connect to the server.';
        const tick = () => {
          const secs = Math.max(0, Math.ceil((ev.retryAt - Date.now()) / 1000));
          showBanner(`${reason} You are offline. Reconnecting${secs > 0 ? ` in ${secs} s` : ''}…`, true);
        };
        tick();
        state.countdownTimer = setInterval(tick, 1000);
        break;
      }
      case 'disconnected':
        onDisconnected();
        setStatus('offline');
        showBanner('You are offline.', false);
        break;
      case 'closed':
        if (ev.error) failBeforeConnected('Could not connect to the server. Check the server address, your name and your token, then try again.');
        break;
      default:
        break;
    }
  }

  function describeClose(code) {
    switch (code) {
      case 1001: return 'The server closed the connection (idle or too long).';
      case 1007: return 'The connection was closed: the server received invalid text.';
      case 1009: return 'The connection was closed: a message was too big.';
      default: return 'Connection lost.';
    }
  }

  function onDisconnected() {
    for (const room of state.rooms.values()) {
      room.joined = false;
      room.dom.timeline.dataset.joined = 'false';
      room.loadingOlder = false;
      for (const t of room.typing.values()) clearTimeout(t.timer);
      room.typing.clear();
      updateHistoryStart(room);
    }
    // Anything sent but not acknowledged goes again (the library resends it with the same
    // clientMsgId once the room is joined again; the server answers a retry without a second
    // broadcast).
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

  function reconnectNow() {
    if (!client || isOpen()) return;
    client.reconnect().catch(() => {});
  }

  function teardown() {
    if (!state) return;
    state.stopped = true;
    clearInterval(state.countdownTimer);
    clearInterval(state.lobbyMembersTimer);
    const c = client;
    client = null;
    if (c) c.close();
    for (const room of state.rooms.values()) {
      for (const t of room.typing.values()) clearTimeout(t.timer);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Events of the connection

  /** An error that answers none of our calls: API Gateway's failure frame, or a stray error. */
  function onServerError(err) {
    if (err.gateway) {
      toast(`The server failed to handle a request (${err.serverMessage || 'Internal server error'}). Please try again.`, 'gateway');
      return;
    }
    const code = typeof err.code === 'string' ? err.code : 'internal';
    toast(describeError(code, err.action ? { action: err.action, ...(err.request || {}) } : null, err.serverMessage), code);
  }

  /** Joins a room (the person's, a remembered one, a direct one); the room shows once joined. */
  function joinRoom(name, { userInitiated = false, remembered = false } = {}) {
    if (!client) return;
    client.join(name).then(() => {
      if (!state || state.stopped) return;
      const room = state.rooms.get(name);
      if (room && userInitiated) {
        switchRoom(room.name);
        addNotice(room, 'You joined this room.');
      }
    }, (err) => {
      if (!state || state.stopped || err.code === 'closed') return;
      const req = { action: 'joinRoom', room: name };
      const room = state.rooms.get(name);
      if (err.code === 'timeout' && remembered) return; // still trying; it shows when joined
      callFailed(err, req);
      // A remembered room that could not be joined stays shown, not joined.
      if (room && !room.joined && (err.code === 'not_member' || err.code === 'limit_exceeded' || err.code === 'bad_request' || err.code === 'forbidden')) {
        addNotice(room, `Could not rejoin this room: ${describeError(err.code, req, err.serverMessage)}`, 'error');
      }
    });
  }

  function onRejoinFailed({ room: name, error }) {
    const room = state.rooms.get(name);
    if (!room) return;
    const words = describeError(error.code, { action: 'joinRoom', room: name }, error.serverMessage);
    toast(words, error.code);
    addNotice(room, `Could not rejoin this room: ${words}`, 'error');
  }

  /** A room joined (the first time, or again after a reconnect) and in step. */
  function onJoined({ room: name, reply: f, rejoin }) {
    const room = state.rooms.get(name) || addRoom(name);
    room.joined = true;
    room.dom.timeline.dataset.joined = 'true';
    setMembers(room, f.members);
    room.occupancy = Number.isInteger(f.occupancy) ? f.occupancy : null;
    // The server's count of what this user has not read, on every tab alike. (A guest's read
    // state is its connection's: after a reconnect the server knows nothing of it, and this
    // page's own count is the better one.)
    if (typeof f.lastRead === 'string') room.lastRead = f.lastRead;
    if (me().userId && Number.isInteger(f.unread) && room !== currentRoom()) {
      room.unread = f.unread;
      renderRoomList();
    }
    // After a reconnect, what was missed came as events already (once, in order); the first
    // join brings the latest history.
    if (!rejoin) {
      const history = Array.isArray(f.history) ? f.history : [];
      prependOrMerge(room, history);
      if (!room.historyLoaded) {
        room.historyLoaded = true;
        room.hasMoreOlder = !!f.hasMore;
      }
    }
    updateHistoryStart(room);
    if (room === currentRoom()) {
      followBottom(room);
      fillViewport(room);
      renderMembers();
    }
    for (const p of state.pending.values()) if (p.room === name) renderPendingState(p);
    saveStored();
    markRoomRead(room);
  }

  /// A live edit or delete of a message, or its reactions (version 2).
  function onChange(f) {
    const room = state.rooms.get(f.room);
    if (!room) return;
    applyChange(room, f);
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

  function onMessage(f) {
    const room = state.rooms.get(f.room);
    if (!room) return;
    // A tombstone (found deleted by a recovery): the message goes, if it is shown.
    if (f.deleted === true && room.msgs.has(f.id)) {
      applyChange(room, { type: 'messageDeleted', id: f.id });
      return;
    }
    const mine = isMine(f.sender) || (f.clientMsgId && state.pending.has(f.clientMsgId));
    const isNew = addMessage(room, f);
    if (!isNew) return;
    clearTypingFor(room, f.sender);
    if (!mine && f.deleted !== true) countUnread(room, 1);
    markRoomRead(room);
    if (room === currentRoom() && (room.atBottom || mine)) scrollToBottom(room);
    else if (room === currentRoom()) $('jump-latest').hidden = false;
  }

  /** A page of older messages (scrolling up). */
  function onHistory(room, f) {
    const messages = Array.isArray(f.messages) ? f.messages : [];
    room.loadingOlder = false;
    room.hasMoreOlder = !!f.hasMore && messages.length > 0;
    prependOrMerge(room, messages);
    updateHistoryStart(room);
    fillViewport(room);
  }

  function refreshMembers(name) {
    client.members(name).then((f) => {
      if (!state || state.stopped) return;
      const room = state.rooms.get(f.room);
      if (!room) return;
      setMembers(room, f.members);
      if (Number.isInteger(f.occupancy)) room.occupancy = f.occupancy;
      if (room === currentRoom()) renderMembers();
    }, (err) => callFailed(err, { action: 'members', room: name }, { quiet: err.code === 'timeout' || err.code === 'disconnected' }));
  }

  /// `read`: the reply to our markRead, or another tab or device of ours read the room up to
  /// `id`; what is unread here is what came after it.
  function onRead(f) {
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
    joinRoom(f.room);
  }

  /// The server took this user out of a room (a ban, or a revoked grant of a private room): the
  /// room goes from the list, and from the rooms remembered for next time, with a notice.
  function onRemoved(f) {
    if (typeof f.room !== 'string' || !state.rooms.has(f.room)) return;
    const why = f.reason === 'banned' ? 'you are banned from it'
      : (f.reason === 'revoked' ? 'your access to it was revoked' : 'the server removed you');
    toast(`You were removed from ${roomLabel(f.room)}: ${why}.`, 'removed');
    removeRoom(f.room);
  }

  /// Opens the direct room with a member (a signed-in user), and shows it.
  function openDirect(member) {
    if (!member || !member.userId || !client) return;
    client.openDirect(member.userId).then((f) => {
      if (!state || state.stopped) return;
      state.directNames.set(f.room, member.name);
      const room = state.rooms.get(f.room) || addRoom(f.room);
      renderRoomList();
      switchRoom(room.name);
      addNotice(room, 'You joined this room.');
    }, (err) => callFailed(err, { action: 'openDirect', userId: member.userId }));
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
      if (!state || !client || room !== currentRoom() || !room.joined || !room.ids.length) return;
      const latest = room.ids[room.ids.length - 1];
      if (room.lastRead && latest <= room.lastRead) return;
      if (room.markedUpTo && latest <= room.markedUpTo) return;
      room.markedUpTo = latest;
      // A read mark that did not go through costs a badge at most: nothing to tell the user.
      client.markRead(room.name, latest).then((f) => { if (state && !state.stopped) onRead(f); }, () => {});
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
    if (room.joined) refreshMembers(name);
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
        !mine && member.userId && me().userId ? directButton(member) : null);
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
      del.addEventListener('click', () => change('deleteMessage', msg, () => client.delete(msg.room, msg.id)));
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
    if (!isOpen()) return;
    change(had ? 'unreact' : 'react', msg, () => (had ? client.unreact(msg.room, msg.id, emoji) : client.react(msg.room, msg.id, emoji)));
    if (had) mine.delete(emoji); else mine.add(emoji);
  }

  /** An edit, a delete or a reaction: the event shows it; a refusal is told in words. */
  function change(action, msg, call) {
    if (!client) return;
    call().catch((err) => callFailed(err, { action, room: msg.room, id: msg.id }));
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
        if (value.trim() && value !== msg.text) change('editMessage', msg, () => client.edit(msg.room, msg.id, value));
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
    client.history(room.name, { before, limit: PAGE }).then((f) => {
      if (state && !state.stopped && state.rooms.get(room.name) === room) onHistory(room, f);
    }, (err) => {
      room.loadingOlder = false;
      if (err.code !== 'rate_limited' && err.code !== 'internal' && err.code !== 'timeout' && err.code !== 'disconnected') room.hasMoreOlder = false;
      updateHistoryStart(room);
      callFailed(err, { action: 'history', room: room.name }, { quiet: err.code === 'disconnected' });
    });
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
    const cid = randomId();
    const p = {
      cid, room: room.name, text, state: 'queued', error: null, code: null, el: null,
    };
    state.pending.set(cid, p);
    p.el = renderPending(p);
    room.dom.pending.append(p.el);
    scrollToBottom(room);
    transmit(p);
    renderPendingState(p);
  }

  /// Hands the message to the library, which sends one at a time per room, the next after the
  /// previous one's ack (on AWS each frame is its own Lambda invocation, so two pipelined
  /// messages may be stored in either order), keeps it while offline, and sends it again with
  /// the same clientMsgId after a reconnect unless it was stored.
  function transmit(p) {
    if (!client) return;
    p.state = 'sent';
    p.error = null;
    client.send(p.room, p.text, { clientMsgId: p.cid }).then(
      (ack) => { if (state && !state.stopped) onAck(p, ack); },
      (err) => { if (state && !state.stopped) onSendFailed(p, err); },
    );
  }

  function onAck(p, ack) {
    const room = state.rooms.get(p.room);
    // The echo usually came first (and showed it); if not, the ack says enough to show it.
    if (room && typeof ack.id === 'string' && !room.msgs.has(ack.id)) {
      addMessage(room, {
        room: p.room, id: ack.id, ts: ack.ts, sender: me(), text: p.text, clientMsgId: p.cid,
      });
      if (room === currentRoom()) scrollToBottom(room);
    }
    resolvePending(p.cid);
  }

  function onSendFailed(p, err) {
    // Signed out, discarded, or its room left (and so gone from the page).
    if (err.code === 'closed' || err.code === 'left' || state.pending.get(p.cid) !== p) return;
    const code = typeof err.code === 'string' ? err.code : 'internal';
    const words = describeError(code, { action: 'sendMessage', text: p.text, room: p.room }, err.serverMessage);
    p.state = 'failed';
    p.error = words;
    p.code = code;
    renderPendingState(p);
    // API Gateway's failure frame is told once, by the library's `error` event.
    if (!err.gateway) toast(words, code);
  }

  function resolvePending(cid) {
    const p = state.pending.get(cid);
    if (!p) return;
    state.pending.delete(cid);
    if (p.el) p.el.remove();
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
        p.el.classList.remove('failed');
        transmit(p); // the same clientMsgId: stored once, whatever happened to the first try
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
    if (state.stopped) return; // could not even start (a bad URL)
    // With a token, the name comes from its claims.
    $('me-name').textContent = me().name || '(from your token)';
    clearInterval(state.lobbyMembersTimer);
    // lobby has no presence events; refresh its member list now and then while it is in view
    state.lobbyMembersTimer = setInterval(() => {
      const room = currentRoom();
      if (room && room.name === LOBBY && room.joined && document.visibilityState === 'visible') {
        refreshMembers(LOBBY);
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
      client.typing(room.name);
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
    joinRoom(name, { userInitiated: true });
    input.value = '';
  }

  function onLeaveClick() {
    const room = currentRoom();
    if (!room) return;
    const name = room.name;
    // Not kept by the connection (its rejoin was refused): nothing to tell the server.
    if (!client || !client.roomNames.includes(name)) {
      removeRoom(name);
      return;
    }
    client.leave(name).then(() => removeRoom(name), (err) => {
      callFailed(err, { action: 'leaveRoom', room: name });
      removeRoom(name); // the connection keeps it no more either way
    });
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
    $('reconnect-now').addEventListener('click', () => reconnectNow());
    $('sign-out').addEventListener('click', () => {
      teardown();
      showLogin('');
    });
    $('rooms-toggle').addEventListener('click', () => toggleDrawer('sidebar-open', $('rooms-toggle')));
    $('sidebar-close').addEventListener('click', closeDrawers);
    $('members-toggle').addEventListener('click', () => {
      toggleDrawer('members-open', $('members-toggle'));
      const room = currentRoom();
      if (room && room.joined && document.body.classList.contains('members-open')) refreshMembers(room.name);
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
      if (document.visibilityState === 'visible' && state && !state.stopped && !isOpen() && !state.holdReconnect) {
        reconnectNow();
      }
    });
    window.addEventListener('online', () => {
      if (state && !state.stopped && !isOpen() && !state.holdReconnect) {
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
    /**
     * Stops (true) or resumes (false) reconnecting; resuming reconnects at once when offline.
     * Held while offline, the connection stays down (the library's disconnect()) until resumed.
     */
    pauseReconnect(on) {
      if (!state || !client) return;
      state.holdReconnect = !!on;
      if (on) {
        if (!isOpen()) client.disconnect();
      } else if (!isOpen() && !state.stopped) {
        reconnectNow();
      }
    },
    /** Sends a raw frame as a call of the library; its error reply is told like the page's own. */
    sendRaw(frame) {
      if (!isOpen()) return null;
      const { action, ...fields } = frame;
      client.request(action, fields).catch((err) => callFailed(err, { ...frame }));
      return true;
    },
    /** Handles a frame as if the server had sent it. */
    receive(frame) {
      if (client) client._receive(frame);
    },
    get online() { return isOpen(); },
    /** Reconnect attempts since the connection was last open. */
    get attempts() { return client ? client.attempt : 0; },
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
