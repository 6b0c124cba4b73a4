// Test support: the real chat binary on either back end, moto for the Lambda one, a WebSocket
// proxy that can drop, hold, inject and cut, and a raw client that sees the server as it is.
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe } from 'node:test';
import WebSocket, { WebSocketServer } from 'ws';
import { connect } from '../src/index.js';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(here, '..', '..', '..');
export const CHAT_BIN = process.env.CHAT_BIN || path.join(REPO, 'target', 'debug', 'chat');
/** Back ends to run every test on: CHAT_BACKENDS=embedded,lambda (the default: both). */
export const BACKENDS = (process.env.CHAT_BACKENDS || 'embedded,lambda').split(',').map((b) => b.trim()).filter(Boolean);
for (const b of BACKENDS) {
  if (b !== 'embedded' && b !== 'lambda') throw new Error(`CHAT_BACKENDS: unknown back end ${b}`);
}
/** Generous: a shared 2-core machine, and moto behind the Lambda back end. */
export const T = 30_000;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export { sleep };

export async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// ---------------------------------------------------------------------------------------------
// moto (DynamoDB) for the Lambda back end: the one scripts/test started (AWS_ENDPOINT_URL_DYNAMODB),
// else one of this test file's own.

let motoEndpoint = process.env.AWS_ENDPOINT_URL_DYNAMODB || null;
let motoProc = null;

async function ensureMoto() {
  if (motoEndpoint) return motoEndpoint;
  const port = await freePort();
  motoProc = spawn('moto_server', ['-H', '127.0.0.1', '-p', String(port)], { stdio: 'ignore' });
  motoProc.unref(); // the test process ends when its tests do, and takes moto with it
  const failed = new Promise((_, reject) => motoProc.once('error', (e) => reject(new Error(
    `the lambda back end needs moto_server (pip install 'moto[server]==5.2.1'): ${e.message}`))));
  const url = `http://127.0.0.1:${port}`;
  const ready = (async () => {
    for (let i = 0; i < 300; i++) {
      try {
        const res = await fetch(`${url}/moto-api/`);
        if (res.ok || res.status < 500) return url;
      } catch { /* not yet */ }
      await sleep(100);
    }
    throw new Error('moto_server did not answer within 30 s');
  })();
  motoEndpoint = await Promise.race([ready, failed]);
  // Not an after() hook: called from a suite's before(), that would end it with that suite.
  process.once('exit', () => motoProc?.kill());
  return motoEndpoint;
}

// ---------------------------------------------------------------------------------------------
// The chat binary

const LISTENING = /listening on http:\/\/127\.0\.0\.1:(\d+)\//;

/**
 * `chat serve` on 127.0.0.1 with the given back end. `restart()` stops it and starts it again on
 * the same port with the same store (data directory, or DynamoDB tables).
 */
export async function startServer({ backend = 'embedded', args = [] } = {}) {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'chat-js-'));
  const tag = path.basename(dataDir).replace(/[^A-Za-z0-9]/g, '');
  const env = { ...process.env, NO_COLOR: '1' };
  const backendArgs = [];
  if (backend === 'lambda') {
    const endpoint = await ensureMoto();
    Object.assign(env, {
      AWS_ENDPOINT_URL_DYNAMODB: endpoint, AWS_REGION: 'us-east-1',
      AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test',
    });
    // moto is not atomic per request as DynamoDB is (a cancelled transaction's rollback can
    // erase a write made meanwhile, e.g. a message sent to another room at the same moment):
    // the chat sends it one request at a time.
    backendArgs.push('--backend', 'lambda', '--create-tables', '--dynamodb-one-at-a-time',
      '--websocket-table', `js-${tag}-WebSocketConnections`, '--messages-table', `js-${tag}-ChatMessages`);
  }
  const server = {
    backend, dataDir, port: 0, proc: null, output: '',
    get wsUrl() { return `ws://127.0.0.1:${this.port}/dev`; },
    get httpUrl() { return `http://127.0.0.1:${this.port}`; },
    async start() {
      // A restart on the same port may race the old socket's release: retry a few times.
      let lastErr;
      for (let i = 0; i < 10; i++) {
        try {
          await spawnOnce(this);
          return this;
        } catch (e) {
          lastErr = e;
          if (!this.port) break;
          await sleep(300);
        }
      }
      throw lastErr;
    },
    async stop() {
      const proc = this.proc;
      this.proc = null;
      if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(t);
    },
    async restart() {
      await this.stop();
      await this.start();
    },
    async cleanup() {
      await this.stop();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
  const argv = ['serve', '--data-dir', dataDir, ...backendArgs, ...args];
  function spawnOnce(s) {
    return new Promise((resolve, reject) => {
      const proc = spawn(CHAT_BIN, [...argv, '--addr', `127.0.0.1:${s.port}`], { stdio: ['ignore', 'pipe', 'pipe'], env });
      let out = '';
      let done = false;
      const timer = setTimeout(() => finish(new Error(`server did not start within ${T} ms:\n${out}`)), T);
      function finish(err) {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (err) {
          proc.kill('SIGKILL');
          reject(err);
        } else {
          resolve();
        }
      }
      const onData = (chunk) => {
        out += chunk.toString();
        if (out.length > 200_000) out = out.slice(-100_000);
        s.output = out;
        const m = out.match(LISTENING);
        if (m && !done) {
          s.port = Number(m[1]);
          s.proc = proc;
          finish(null);
        }
      };
      proc.stdout.on('data', onData);
      proc.stderr.on('data', onData);
      proc.on('error', (e) => finish(new Error(`cannot start ${CHAT_BIN}: ${e.message}`)));
      proc.on('exit', (code, signal) => finish(new Error(`server exited early (${code ?? signal}):\n${out}`)));
    });
  }
  await server.start();
  return server;
}

/** Runs `fn` once per back end, each in a `describe` of its own. */
export function eachBackend(fn) {
  for (const backend of BACKENDS) describe(`${backend} back end`, () => fn(backend));
}

// ---------------------------------------------------------------------------------------------
// Clients

/** A library client in Node (ws as its WebSocket), closed at the end of the test file. */
const clients = new Set();
after(() => { for (const c of clients) c.close(); });

export function client(url, options = {}) {
  const c = connect({ url, WebSocket, ...options });
  clients.add(c);
  return c;
}

/** Resolves with the next event of `type` that matches `pred`. */
export function nextEvent(c, type, pred = () => true, timeout = T) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { off(); reject(new Error(`no ${type} event within ${timeout} ms`)); }, timeout);
    const off = c.on(type, (ev) => {
      if (!pred(ev)) return;
      clearTimeout(timer);
      off();
      resolve(ev);
    });
  });
}

/** Collects events of some types, in the order given. */
export function record(c, types) {
  const events = [];
  for (const type of types) c.on(type, (ev) => events.push({ type, ...ev }));
  return events;
}

export async function waitFor(pred, { timeout = T, what = 'a condition' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    if (await pred()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

/**
 * A plain WebSocket client that speaks raw frames: another user, and a view of the server that
 * does not go through the library under test.
 */
export async function rawClient(url, name) {
  const ws = new WebSocket(`${url}?name=${encodeURIComponent(name)}`);
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  let n = 0;
  const waiting = new Map();
  const frames = [];
  ws.on('message', (data) => {
    const f = JSON.parse(String(data));
    frames.push(f);
    if (f.requestId && waiting.has(f.requestId)) {
      waiting.get(f.requestId)(f);
      waiting.delete(f.requestId);
    }
  });
  const raw = {
    ws,
    frames,
    request(frame) {
      const requestId = `raw-${++n}`;
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          waiting.delete(requestId);
          reject(new Error(`raw ${frame.action}: no reply within ${T} ms`));
        }, T);
        waiting.set(requestId, (f) => {
          clearTimeout(timer);
          resolve(f);
        });
        ws.send(JSON.stringify({ ...frame, requestId }));
      });
    },
    async join(room) {
      const f = await raw.request({ action: 'joinRoom', room });
      if (f.type !== 'joined') throw new Error(`join ${room}: ${JSON.stringify(f)}`);
      return f;
    },
    /** Sends each text after the previous one's ack (within the rate limit's burst). */
    async sendAll(room, texts) {
      const acks = [];
      for (const text of texts) {
        const f = await raw.request({ action: 'sendMessage', room, text });
        if (f.type !== 'ack') throw new Error(`send: ${JSON.stringify(f)}`);
        acks.push(f);
      }
      return acks;
    },
    close() {
      return new Promise((resolve) => {
        if (ws.readyState === WebSocket.CLOSED) return resolve();
        ws.once('close', resolve);
        ws.close();
      });
    },
  };
  return raw;
}

/** Sends texts from fresh raw connections of `name`, 15 per connection (the burst allows 20). */
export async function seed(url, room, texts, name = 'seeder') {
  for (let i = 0; i < texts.length; i += 15) {
    const raw = await rawClient(url, name);
    if (room !== 'lobby') await raw.join(room);
    await raw.sendAll(room, texts.slice(i, i + 15));
    await raw.close();
  }
}

/** The room's whole stored history, oldest first, read over a raw connection. */
export async function storedHistory(url, room) {
  const raw = await rawClient(url, 'reader');
  if (room !== 'lobby') await raw.join(room);
  let all = [];
  let before;
  for (;;) {
    const f = await raw.request({ action: 'history', room, limit: 100, ...(before ? { before } : {}) });
    if (f.type !== 'history') throw new Error(`history: ${JSON.stringify(f)}`);
    all = f.messages.concat(all);
    if (!f.hasMore || !f.messages.length) break;
    before = f.messages[0].id;
  }
  await raw.close();
  return all;
}

export function count(list, value) {
  return list.filter((x) => x === value).length;
}

// ---------------------------------------------------------------------------------------------
// A WebSocket proxy between the library and the server

/**
 * Forwards each WebSocket connection to `target` (a ws://host:port base), frame by frame.
 * `toServer(frame, conn)` / `toClient(frame, conn)` may return false (drop it), a string (send
 * that instead), or nothing (forward it). `cut()` kills every connection at the TCP level (no
 * close frame: the client sees 1006); `down()` also refuses new ones until `up()`.
 */
export async function startProxy(target) {
  let proxy;
  // While down, handshakes are refused (503), as a server that is away.
  const wss = new WebSocketServer({
    host: '127.0.0.1', port: 0, verifyClient: (_info, cb) => cb(!proxy.isDown, 503),
  });
  await new Promise((r) => wss.once('listening', r));
  const conns = new Set();
  proxy = {
    port: wss.address().port,
    get wsUrl() { return `ws://127.0.0.1:${this.port}/dev`; },
    target,
    toServer: null,
    toClient: null,
    isDown: false,
    connections: 0,
    /** Frames sent by clients (parsed), in order. */
    fromClients: [],
    conns,
    cut() {
      for (const c of conns) {
        c.client.terminate();
        c.upstream.terminate();
      }
      conns.clear();
    },
    down() {
      this.isDown = true;
      this.cut();
    },
    up() {
      this.isDown = false;
    },
    /** Stops forwarding in both directions, sockets left open (a connection dead silently). */
    freeze() {
      for (const c of conns) c.frozen = true;
    },
    /** Sends a frame (text) to every client as if the server had. */
    inject(text) {
      for (const c of conns) if (c.client.readyState === WebSocket.OPEN) c.client.send(text);
    },
    close() {
      this.cut();
      return new Promise((r) => wss.close(() => r()));
    },
  };
  wss.on('connection', (clientWs, req) => {
    if (proxy.isDown) {
      clientWs.terminate();
      return;
    }
    proxy.connections += 1;
    const upstream = new WebSocket(`${proxy.target}${req.url}`);
    const conn = { client: clientWs, upstream, frozen: false, early: [] };
    conns.add(conn);
    const relay = (hook, text, to) => {
      if (conn.frozen) return;
      let out = text;
      if (hook) {
        let parsed;
        try { parsed = JSON.parse(text); } catch { parsed = null; }
        const r = hook(parsed, conn, text);
        if (r === false) return;
        if (typeof r === 'string') out = r;
      }
      if (to.readyState === WebSocket.OPEN) to.send(out);
    };
    clientWs.on('message', (data) => {
      const text = String(data);
      try { proxy.fromClients.push(JSON.parse(text)); } catch { /* not JSON */ }
      if (upstream.readyState !== WebSocket.OPEN) conn.early.push(text);
      else relay(proxy.toServer, text, upstream);
    });
    upstream.on('open', () => {
      for (const text of conn.early.splice(0)) relay(proxy.toServer, text, upstream);
    });
    upstream.on('message', (data) => relay(proxy.toClient, String(data), clientWs));
    const closeBoth = (code) => {
      conns.delete(conn);
      const ok = code === 1000 || (code >= 1001 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
      for (const s of [clientWs, upstream]) {
        if (s.readyState === WebSocket.CLOSED) continue;
        if (ok && s.readyState === WebSocket.OPEN) s.close(code);
        else s.terminate();
      }
    };
    upstream.on('close', (code) => closeBoth(code));
    clientWs.on('close', (code) => closeBoth(code));
    upstream.on('error', () => closeBoth(1006));
    clientWs.on('error', () => closeBoth(1006));
  });
  return proxy;
}
