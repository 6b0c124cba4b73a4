// Shared helpers for the browser tests: start the chat binary, drive Chromium, seed messages.
import { spawn } from 'node:child_process';
import { mkdtemp, rm, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(here, '..', '..');
export const CHAT_BIN = process.env.CHAT_BIN || path.join(REPO, 'target', 'debug', 'chat');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const STATIC_DIR = path.join(REPO, 'web', 'static');
/**
 * The binary embeds web/static at build time. WEB_FROM_DISK=1 makes the pages load the files from
 * web/static instead (for working on the client without rebuilding the server).
 */
export const WEB_FROM_DISK = process.env.WEB_FROM_DISK === '1';
/** The client library that app.js imports (clients/js/src, served under /client/). */
export const CLIENT_DIR = path.join(REPO, 'clients', 'js', 'src');
export const CLIENT_FILES = ['index.js', 'client.js', 'errors.js', 'emitter.js', 'sequence.js'];
/** URL path -> [file (relative to web/static), content type]. */
export const ASSETS = {
  '/': ['index.html', 'text/html; charset=utf-8'],
  '/app.js': ['app.js', 'text/javascript; charset=utf-8'],
  '/style.css': ['style.css', 'text/css; charset=utf-8'],
  ...Object.fromEntries(CLIENT_FILES.map((f) => [`/client/${f}`,
    [path.relative(path.join(REPO, 'web', 'static'), path.join(CLIENT_DIR, f)), 'text/javascript; charset=utf-8']])),
};

/** Generous, because the machine is a shared 2-core box. */
export const T = 30_000;

const LISTENING = /listening on http:\/\/127\.0\.0\.1:(\d+)\//;

/**
 * Starts `chat serve` on 127.0.0.1 (port 0 unless given) with a fresh data directory (unless
 * given) and resolves once it prints its address.
 */
export async function startServer({ port = 0, dataDir } = {}) {
  const dir = dataDir || (await mkdtemp(path.join(os.tmpdir(), 'chat-web-')));
  // A restart on the same port may race the old socket's release: retry a few times.
  let lastErr;
  for (let attempt = 0; attempt < 10; attempt++) {
    try {
      return await spawnServer(port, dir, !dataDir);
    } catch (e) {
      lastErr = e;
      if (!port) break;
      await new Promise((r) => setTimeout(r, 300));
    }
  }
  throw lastErr;
}

function spawnServer(port, dataDir, ownsDir) {
  return new Promise((resolve, reject) => {
    const proc = spawn(CHAT_BIN, ['serve', '--addr', `127.0.0.1:${port}`, '--data-dir', dataDir], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, NO_COLOR: '1' },
    });
    let output = '';
    let done = false;
    const timer = setTimeout(() => {
      if (done) return;
      done = true;
      proc.kill('SIGKILL');
      reject(new Error(`server did not print its address within ${T} ms:\n${output}`));
    }, T);
    const onData = (chunk) => {
      output += chunk.toString();
      if (output.length > 200_000) output = output.slice(-100_000);
      const m = output.match(LISTENING);
      if (m && !done) {
        done = true;
        clearTimeout(timer);
        const p = Number(m[1]);
        resolve({
          proc,
          port: p,
          dataDir,
          url: `http://127.0.0.1:${p}/`,
          wsUrl: `ws://127.0.0.1:${p}/dev`,
          output: () => output,
          async stop() {
            await stopProcess(proc);
          },
          async cleanup() {
            await stopProcess(proc);
            if (ownsDir) await rm(dataDir, { recursive: true, force: true });
          },
        });
      }
    };
    proc.stdout.on('data', onData);
    proc.stderr.on('data', onData);
    proc.on('error', (e) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      reject(new Error(`cannot start ${CHAT_BIN}: ${e.message}`));
    });
    proc.on('exit', (code, signal) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      reject(new Error(`server exited early (${code ?? signal}):\n${output}`));
    });
  });
}

async function stopProcess(proc) {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGTERM');
  const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

export async function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run',
      // A document fulfilled by the test (WEB_FROM_DISK) has no IP address, so Chromium would
      // treat it as public and block its WebSockets to 127.0.0.1.
      ...(WEB_FROM_DISK ? ['--disable-features=LocalNetworkAccessChecks'] : []),
    ],
  });
}

/** The message Chromium itself logs when a WebSocket cannot connect (not the app's doing). */
export const WS_CONNECT_FAILED = /^WebSocket connection to 'ws:\/\/127\.0\.0\.1:\d+\/[^']*' failed/;

/**
 * One test's browser pages. Every page's console errors and uncaught exceptions are collected;
 * `finish()` asserts there were none and closes everything.
 */
export class Session {
  constructor(browser, server) {
    this.browser = browser;
    this.server = server;
    this.pages = [];
    this.contexts = [];
  }

  async newPage({ viewport = { width: 1280, height: 800 } } = {}) {
    const context = await this.browser.newContext({ viewport });
    context.setDefaultTimeout(T);
    this.contexts.push(context);
    const errors = [];
    if (WEB_FROM_DISK) {
      await context.route(/^http:\/\/127\.0\.0\.1:\d+\/(app\.js|style\.css|client\/[a-z]+\.js)?(\?.*)?$/, async (route) => {
        const { pathname } = new URL(route.request().url());
        const [file, type] = ASSETS[pathname];
        await route.fulfill({ status: 200, contentType: type, body: await readFile(path.join(STATIC_DIR, file)) });
      });
    }
    const page = await context.newPage();
    // The client makes no request anywhere but the chat server.
    page.on('request', (r) => {
      const u = r.url();
      if (!/^(ws|http):\/\/127\.0\.0\.1:\d+\//.test(u) && !u.startsWith('data:') && u !== 'about:blank') {
        errors.push({ kind: 'external request', text: u });
      }
    });
    page.on('console', (m) => {
      if (m.type() === 'error') errors.push({ kind: 'console', text: m.text(), url: m.location().url });
    });
    page.on('pageerror', (e) => errors.push({ kind: 'pageerror', text: String(e && e.stack ? e.stack : e) }));
    const entry = { page, context, errors };
    this.pages.push(entry);
    return page;
  }

  /** Opens the client, signs in through the form with `name`, and waits until lobby is joined. */
  async openChat(name, opts = {}) {
    const page = await this.newPage(opts);
    await page.goto(this.server.url);
    await page.locator('#name-input').fill(name);
    await page.locator('#connect-button').click();
    await waitOnline(page);
    await waitJoined(page, 'lobby');
    return page;
  }

  /** A page on the server's origin that only seeds (raw WebSockets from the page itself). */
  async seeder() {
    if (!this._seeder) {
      this._seeder = await this.newPage();
      await this._seeder.goto(this.server.url);
    }
    return this._seeder;
  }

  /** All errors of every page, except those matching `allow` (browser-generated noise). */
  errors(allow = []) {
    const out = [];
    for (const { errors } of this.pages) {
      for (const e of errors) {
        if (e.kind === 'console' && allow.some((re) => re.test(e.text))) continue;
        out.push(`${e.kind}: ${e.text}`);
      }
    }
    return out;
  }

  async finish({ allow = [] } = {}) {
    const errs = this.errors(allow);
    for (const c of this.contexts) await c.close().catch(() => {});
    assert.deepEqual(errs, [], 'no console errors and no page errors');
  }

  async close() {
    for (const c of this.contexts) await c.close().catch(() => {});
  }
}

export async function waitOnline(page, timeout = T) {
  await page.locator('[data-testid=connection-status][data-state=online]').waitFor({ timeout });
}

export async function waitJoined(page, room, timeout = T) {
  await page.locator(`[data-testid=timeline][data-room="${room}"][data-joined="true"]`)
    .waitFor({ state: 'attached', timeout });
}

export function timelineSel(room) {
  return `[data-testid=timeline][data-room="${room}"]`;
}

/** Texts of the delivered (not pending) messages shown in a room, in display order. */
export async function roomTexts(page, room) {
  return page.$$eval(`${timelineSel(room)} [data-testid=message] [data-testid=message-text]`,
    (els) => els.map((e) => e.textContent));
}

/** Waits until the room shows a delivered message with exactly this text. */
export async function waitForText(page, room, text, timeout = T) {
  await page.waitForFunction(([sel, t]) => [...document.querySelectorAll(sel)].some((e) => e.textContent === t),
    [`${timelineSel(room)} [data-testid=message] [data-testid=message-text]`, text], { timeout, polling: 100 });
}

export async function waitForCount(page, room, n, timeout = T) {
  await page.waitForFunction(([sel, k]) => document.querySelectorAll(sel).length >= k,
    [`${timelineSel(room)} [data-testid=message]`, n], { timeout, polling: 100 });
}

/** Types a message in the composer and presses Enter. */
export async function sendViaUi(page, text) {
  const input = page.locator('#message-input');
  await input.fill(text);
  await input.press('Enter');
}

/** Joins a room through the sidebar form and waits until it is joined and in view. */
export async function joinViaUi(page, room) {
  await page.locator('#join-room-input').fill(room);
  await page.locator('#join-room-input').press('Enter');
  await waitJoined(page, room);
  await page.locator(`[data-testid=room-button][data-room="${room}"][aria-current="true"]`).waitFor();
}

export async function switchTo(page, room) {
  await page.locator(`[data-testid=room-button][data-room="${room}"]`).click();
  await page.locator(`[data-testid=room-button][data-room="${room}"][aria-current="true"]`).waitFor();
}

/**
 * Sends `texts` to `room` over plain WebSockets opened by `page` itself, in order, each after the
 * previous one's ack. A new connection every 20 messages stays within the burst allowance.
 */
export async function seed(page, wsUrl, room, texts, name = 'seeder') {
  await page.evaluate(async ({ wsUrl, room, texts, name }) => {
    const open = () => new Promise((resolve, reject) => {
      const ws = new WebSocket(`${wsUrl}?name=${encodeURIComponent(name)}`);
      ws.onopen = () => resolve(ws);
      ws.onerror = () => reject(new Error('seed: cannot connect'));
    });
    let n = 0;
    const call = (ws, frame) => new Promise((resolve) => {
      const requestId = `seed-${++n}`;
      const onMsg = (ev) => {
        const f = JSON.parse(ev.data);
        if (f.requestId === requestId) {
          ws.removeEventListener('message', onMsg);
          resolve(f);
        }
      };
      ws.addEventListener('message', onMsg);
      ws.send(JSON.stringify({ ...frame, requestId }));
    });
    for (let i = 0; i < texts.length; i += 20) {
      const ws = await open();
      if (room !== 'lobby') {
        const j = await call(ws, { action: 'joinRoom', room });
        if (j.type !== 'joined') throw new Error(`seed: join failed: ${JSON.stringify(j)}`);
      }
      for (const text of texts.slice(i, i + 20)) {
        const a = await call(ws, { action: 'sendMessage', room, text });
        if (a.type !== 'ack') throw new Error(`seed: send failed: ${JSON.stringify(a)}`);
      }
      const closed = new Promise((r) => { ws.onclose = r; });
      ws.close();
      await closed;
    }
  }, { wsUrl, room, texts, name });
}

/** Reads a room's whole stored history (oldest first) over a plain WebSocket from `page`. */
export async function serverHistory(page, wsUrl, room) {
  return page.evaluate(async ({ wsUrl, room }) => {
    const ws = await new Promise((resolve, reject) => {
      const s = new WebSocket(`${wsUrl}?name=reader`);
      s.onopen = () => resolve(s);
      s.onerror = () => reject(new Error('history: cannot connect'));
    });
    let n = 0;
    const call = (frame) => new Promise((resolve) => {
      const requestId = `h-${++n}`;
      const onMsg = (ev) => {
        const f = JSON.parse(ev.data);
        if (f.requestId === requestId) {
          ws.removeEventListener('message', onMsg);
          resolve(f);
        }
      };
      ws.addEventListener('message', onMsg);
      ws.send(JSON.stringify({ ...frame, requestId }));
    });
    if (room !== 'lobby') await call({ action: 'joinRoom', room });
    let all = [];
    let before;
    for (;;) {
      const f = await call({ action: 'history', room, limit: 100, ...(before ? { before } : {}) });
      if (f.type !== 'history') throw new Error(`history failed: ${JSON.stringify(f)}`);
      all = f.messages.concat(all);
      if (!f.hasMore || !f.messages.length) break;
      before = f.messages[0].id;
    }
    ws.close();
    return all;
  }, { wsUrl, room });
}

export function count(list, value) {
  return list.filter((x) => x === value).length;
}

/** Runs `fn` with a fresh server and a session on `browser` whose pages must log no errors. */
export async function withChatOn(browser, fn, finishOpts) {
  const server = await startServer();
  const s = new Session(browser, server);
  try {
    await fn(s, server);
    await s.finish(finishOpts);
  } catch (e) {
    await s.close();
    throw e;
  } finally {
    await server.cleanup();
  }
}
