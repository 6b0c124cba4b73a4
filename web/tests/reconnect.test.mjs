// Browser tests: the server restarts under an open page.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import {
  startServer, launchBrowser, Session, seed, roomTexts, waitForText, sendViaUi, joinViaUi, switchTo,
  waitOnline, waitJoined, serverHistory, count, timelineSel, WS_CONNECT_FAILED,
} from './helpers.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

const offline = (page) => page.locator('[data-testid=connection-status][data-state=offline]').waitFor();

test('server restart: the page says it is offline, reconnects, shows what it missed once, and sends what was typed offline once', { timeout: 300_000 }, async () => {
  let server = await startServer();
  const { port, dataDir } = server;
  const s = new Session(browser, server);
  try {
    const alice = await s.openChat('alice');
    const bob = await s.openChat('bob');
    await joinViaUi(alice, 'ops');
    await joinViaUi(bob, 'ops');
    await switchTo(alice, 'lobby');
    await sendViaUi(alice, 'before restart, lobby');
    await waitForText(bob, 'lobby', 'before restart, lobby');
    await sendViaUi(bob, 'before restart, ops');
    await switchTo(bob, 'lobby');
    await waitForText(alice, 'ops', 'before restart, ops');
    // Read it, so that ops has nothing unread before the restart.
    await switchTo(alice, 'ops');
    await switchTo(alice, 'lobby');
    assert.equal(await alice.locator('[data-testid=unread]').count(), 0);

    // --- First restart: alice stays away until others have talked. -----------------------------
    await server.stop();
    await offline(alice);
    const banner = alice.locator('[data-testid=connection-banner]');
    await banner.waitFor();
    assert.match(await banner.textContent(), /offline/i);
    // It keeps trying on its own (with backoff) while the server is down.
    await alice.waitForFunction(() => window.chatDebug.attempts >= 3, null, { timeout: 60_000 });
    // Hold alice's next attempt so that messages are sent while she is away.
    await alice.evaluate(() => window.chatDebug.pauseReconnect(true));
    await bob.evaluate(() => window.chatDebug.pauseReconnect(true));

    // Typed while offline: shown as sending…, not sent.
    await sendViaUi(alice, 'typed while offline');
    const pending = alice.locator('[data-testid=pending-message]').filter({ hasText: 'typed while offline' });
    await pending.waitFor();
    assert.match(await pending.locator('[data-testid=pending-status]').textContent(), /sending…/);

    server = await startServer({ port, dataDir });
    s.server = server;
    // 110 messages while alice is away: more than one page of recovery (100), so the client has
    // to fetch the rest with `after`.
    const missed = Array.from({ length: 110 }, (_, i) => `missed ${String(i).padStart(3, '0')}`);
    const seeder = await s.newPage();
    await seeder.goto(server.url);
    await seed(seeder, server.wsUrl, 'lobby', missed, 'carol');
    await seed(seeder, server.wsUrl, 'ops', ['missed in ops'], 'carol');

    await alice.evaluate(() => window.chatDebug.pauseReconnect(false));
    await bob.evaluate(() => window.chatDebug.pauseReconnect(false));
    await waitOnline(alice);
    await waitOnline(bob);
    await banner.waitFor({ state: 'hidden' });
    await waitForText(alice, 'lobby', 'missed 109');
    await waitForText(alice, 'lobby', 'typed while offline');
    await pending.waitFor({ state: 'detached' });
    await waitForText(bob, 'lobby', 'typed while offline');
    // ops was not in view: its missed message counts as unread.
    const opsBadge = alice.locator('[data-testid=room-button][data-room="ops"] [data-testid=unread]');
    await opsBadge.waitFor();
    assert.equal(await opsBadge.textContent(), '1');
    await switchTo(alice, 'ops');
    await waitForText(alice, 'ops', 'missed in ops');
    await switchTo(alice, 'lobby');

    // Everything exactly once, in order.
    const shown = await roomTexts(alice, 'lobby');
    for (const t of [...missed, 'before restart, lobby', 'typed while offline']) {
      assert.equal(count(shown, t), 1, `"${t}" shown once (shown ${count(shown, t)} times)`);
    }
    assert.deepEqual(shown.filter((t) => t.startsWith('missed ')), missed);
    assert.equal(shown.at(-1), 'typed while offline');
    assert.deepEqual(await roomTexts(alice, 'ops'), ['before restart, ops', 'missed in ops']);
    const onBob = await roomTexts(bob, 'lobby');
    assert.equal(count(onBob, 'typed while offline'), 1);
    assert.equal(count(onBob, 'missed 000'), 1);
    assert.equal(await alice.locator('[data-testid=pending-message]').count(), 0);
    const stored = (await serverHistory(seeder, server.wsUrl, 'lobby')).map((m) => m.text);
    assert.equal(count(stored, 'typed while offline'), 1, 'stored once on the server');

    // Still a working chat.
    await sendViaUi(bob, 'bob after the restart');
    await waitForText(alice, 'lobby', 'bob after the restart');

    // --- Second restart: nothing held, the page finds the server again by itself. --------------
    await server.stop();
    await offline(alice);
    await sendViaUi(alice, 'typed during the second outage');
    server = await startServer({ port, dataDir });
    s.server = server;
    await waitOnline(alice, 60_000);
    await waitJoined(alice, 'lobby', 60_000);
    await waitForText(bob, 'lobby', 'typed during the second outage', 60_000);
    await waitForText(alice, 'lobby', 'typed during the second outage', 60_000);
    await alice.locator('[data-testid=pending-message]').first().waitFor({ state: 'detached' });
    await sendViaUi(bob, 'and once more');
    await waitForText(alice, 'lobby', 'and once more');
    const final = await roomTexts(alice, 'lobby');
    assert.equal(count(final, 'typed during the second outage'), 1);
    assert.equal(count(final, 'typed while offline'), 1);
    assert.equal(new Set(final).size, final.length, 'no duplicates at all');
    assert.equal(await alice.locator(`${timelineSel('lobby')} [data-testid=message]`).count(), final.length);

    // Chromium itself logs each WebSocket that could not connect while the server was down;
    // that is the browser's report, not an error of the page. Nothing else is allowed.
    await s.finish({ allow: [WS_CONNECT_FAILED] });
  } catch (e) {
    await s.close();
    throw e;
  } finally {
    await server.stop();
    await rm(dataDir, { recursive: true, force: true });
  }
});

test('a message whose ack never arrived is shown and stored once after the reconnect', { timeout: 180_000 }, async () => {
  const server = await startServer();
  const s = new Session(browser, server);
  try {
    const bob = await s.openChat('bob');
    const alice = await s.newPage();
    // Put a hand between alice's page and the server: it can swallow frames and cut the line.
    let swallow = null;
    let swallowed = 0;
    let line = null;
    const fromAlice = [];
    await alice.routeWebSocket(/\/dev(\?|$)/, (ws) => {
      const upstream = ws.connectToServer();
      line = { ws, upstream };
      ws.onMessage((m) => {
        fromAlice.push(String(m));
        upstream.send(m);
      });
      upstream.onMessage((m) => {
        if (swallow && typeof m === 'string' && (m.includes('"type":"ack"') || m.includes(swallow))) {
          swallowed += 1;
          return;
        }
        ws.send(m);
      });
    });
    await alice.goto(server.url);
    await alice.locator('#name-input').fill('alice');
    await alice.locator('#connect-button').click();
    await waitOnline(alice);
    await waitJoined(alice, 'lobby');

    /** alice sends `text`; the server stores and broadcasts it, but alice hears nothing back. */
    const sendUnacked = async (text) => {
      swallow = text;
      swallowed = 0;
      await sendViaUi(alice, text);
      await waitForText(bob, 'lobby', text);
      const deadline = Date.now() + 30_000;
      while (swallowed < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      assert.equal(swallowed, 2, 'echo and ack swallowed');
      swallow = null;
      const pending = alice.locator('[data-testid=pending-message]').filter({ hasText: text });
      assert.match(await pending.locator('[data-testid=pending-status]').textContent(), /sending…/);
      return pending;
    };
    const cutTheLine = async () => {
      line.upstream.close();
      line.ws.close();
      await offline(alice);
      await waitOnline(alice);
      await waitJoined(alice, 'lobby');
    };

    // 1. After the reconnect, the message is among those missed (joined.history): found there by
    //    its clientMsgId, not sent again.
    const first = await sendUnacked('first: the ack of this one is lost');
    await cutTheLine();
    await waitForText(alice, 'lobby', 'first: the ack of this one is lost');
    await first.waitFor({ state: 'detached' });

    // 2. bob talks after it: alice's page holds bob's message but not hers (seq k+1 without k),
    //    so her recovery starts from the last seq before the gap and finds hers among the
    //    events, by its clientMsgId: not sent again. (The version 1 client resumed after the
    //    newest id it held, missed hers and sent it again.)
    const second = await sendUnacked('second: the ack of this one is lost too');
    await sendViaUi(bob, 'bob talks after it');
    await waitForText(alice, 'lobby', 'bob talks after it');
    await cutTheLine();
    await waitForText(alice, 'lobby', 'second: the ack of this one is lost too');
    await second.waitFor({ state: 'detached' });

    await sendViaUi(alice, 'and the next one');
    await waitForText(bob, 'lobby', 'and the next one');
    await waitForText(alice, 'lobby', 'and the next one');
    const expected = [
      'first: the ack of this one is lost', 'second: the ack of this one is lost too', 'bob talks after it',
      'and the next one',
    ];
    assert.deepEqual(await roomTexts(alice, 'lobby'), expected);
    assert.deepEqual(await roomTexts(bob, 'lobby'), expected);
    const stored = (await serverHistory(await s.seeder(), server.wsUrl, 'lobby')).map((m) => m.text);
    assert.deepEqual(stored, expected);
    // What alice's page sent: each once; and each recovery asked from a seq.
    const frames = fromAlice.map((f) => JSON.parse(f));
    const sends = (text) => frames.filter((f) => f.action === 'sendMessage' && f.text === text);
    assert.equal(sends('first: the ack of this one is lost').length, 1);
    assert.equal(sends('second: the ack of this one is lost too').length, 1);
    const rejoins = frames.filter((f) => f.action === 'joinRoom' && f.room === 'lobby' && f.sinceSeq !== undefined);
    assert.equal(rejoins.length, 2, 'two recoveries, by sinceSeq');
    await s.finish();
  } catch (e) {
    await s.close();
    throw e;
  } finally {
    await server.cleanup();
  }
});

test('messages typed quickly go one at a time per room, each after the last one\'s ack, in the order typed', { timeout: 180_000 }, async () => {
  const server = await startServer();
  const s = new Session(browser, server);
  try {
    const bob = await s.openChat('bob');
    const alice = await s.newPage();
    // Everything between alice's page and the server, in order; acks held back 300 ms, so that
    // a page that did not wait for them would be seen sending the next one first.
    const log = [];
    await alice.routeWebSocket(/\/dev(\?|$)/, (ws) => {
      const upstream = ws.connectToServer();
      ws.onMessage((m) => {
        const f = JSON.parse(String(m));
        if (f.action === 'sendMessage') log.push(`send ${f.text}`);
        upstream.send(m);
      });
      upstream.onMessage((m) => {
        const f = typeof m === 'string' ? JSON.parse(m) : {};
        if (f.type === 'ack') {
          setTimeout(() => { log.push(`ack ${f.seq}`); ws.send(m); }, 300);
        } else {
          ws.send(m);
        }
      });
    });
    await alice.goto(server.url);
    await alice.locator('#name-input').fill('alice');
    await alice.locator('#connect-button').click();
    await waitOnline(alice);
    await waitJoined(alice, 'lobby');
    const texts = ['one', 'two', 'three', 'four'];
    for (const text of texts) await sendViaUi(alice, text);
    for (const text of texts) await waitForText(bob, 'lobby', text);
    await waitForText(alice, 'lobby', 'four');
    const deadline = Date.now() + 10_000;
    while (log.filter((l) => l.startsWith('ack')).length < 4 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.deepEqual(log, ['send one', 'ack 1', 'send two', 'ack 2', 'send three', 'ack 3', 'send four', 'ack 4']);
    assert.deepEqual(await roomTexts(bob, 'lobby'), texts);
    await s.finish();
  } catch (e) {
    await s.close();
    throw e;
  } finally {
    await server.cleanup();
  }
});
