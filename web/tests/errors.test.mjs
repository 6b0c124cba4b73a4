// Browser tests: every error the server can send is shown to the person in words.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, launchBrowser, Session, T, waitForText, sendViaUi, joinViaUi, timelineSel,
  roomTexts, serverHistory, count, WS_CONNECT_FAILED,
  withChatOn,
} from './helpers.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

const withChat = (fn, finishOpts) => withChatOn(browser, fn, finishOpts);

/** Waits for an error toast of `code` and returns its text. */
async function toastText(page, code) {
  const t = page.locator(`[data-testid=error-toast][data-code="${code}"]`).first();
  await t.waitFor({ timeout: T });
  return (await t.locator('.toast-text').textContent()).trim();
}

async function dismissToasts(page) {
  await page.evaluate(() => document.querySelector('[data-testid=toasts]').replaceChildren());
}

test('rate limited, too long, bad room name, not a member, unknown action, too many rooms: all in words', { timeout: 300_000 }, async () => {
  await withChat(async (s, server) => {
    const alice = await s.openChat('alice');
    const bob = await s.openChat('bob');

    // rate_limited: many messages at once through the composer (a burst of 20 is allowed, then
    // 10 a second: 60 leaves room for a slow server that refills while it works).
    const BURST = 60;
    await alice.evaluate((n) => {
      const input = document.getElementById('message-input');
      const form = document.getElementById('composer');
      for (let i = 0; i < n; i++) {
        input.value = `burst ${i}`;
        form.requestSubmit();
      }
    }, BURST);
    const limited = await toastText(alice, 'rate_limited');
    assert.match(limited, /too fast/i);
    const failed = alice.locator('[data-testid=pending-message][data-state=failed]');
    await alice.waitForFunction(() => document.querySelectorAll('[data-testid=pending-message][data-state=failed]').length >= 1
      && document.querySelectorAll('[data-testid=pending-message][data-state=sent]').length === 0);
    const nFailed = await failed.count();
    assert.ok(nFailed >= 1 && nFailed <= BURST - 20, `some of the burst was refused (${nFailed})`);
    assert.match(await failed.first().locator('[data-testid=pending-status]').textContent(), /too fast/i);
    // Every message is either delivered or shown as not sent; none twice.
    const delivered = (await roomTexts(alice, 'lobby')).filter((t) => t.startsWith('burst '));
    assert.equal(delivered.length + nFailed, BURST);
    assert.equal(new Set(delivered).size, delivered.length);
    // Retry, after the allowance refills: delivered once.
    const retryText = (await failed.first().locator('[data-testid=message-text]').textContent());
    await alice.waitForTimeout(1500); // let the allowance refill (10 a second)
    await failed.first().locator('[data-testid=retry]').click();
    await waitForText(alice, 'lobby', retryText);
    await waitForText(bob, 'lobby', retryText);
    assert.equal(count(await roomTexts(bob, 'lobby'), retryText), 1);
    // The rest can be discarded.
    while (await failed.count() > 0) await failed.first().locator('[data-testid=discard]').click();
    await dismissToasts(alice);

    // payload_too_large: 4001 characters (4000 is fine).
    await alice.waitForTimeout(1500);
    await sendViaUi(alice, 'y'.repeat(4000));
    await waitForText(bob, 'lobby', 'y'.repeat(4000));
    const long = 'x'.repeat(4001);
    await alice.locator('#message-input').fill(long);
    assert.equal(await alice.locator('[data-testid=char-count]').textContent(), '4001/4000');
    await alice.locator('#message-input').press('Enter');
    const tooLong = await toastText(alice, 'payload_too_large');
    assert.match(tooLong, /too long/i);
    assert.match(tooLong, /4000/);
    await alice.locator('[data-testid=pending-message][data-state=failed] [data-testid=edit]').click();
    assert.equal((await alice.locator('#message-input').inputValue()).length, 4001);
    await alice.locator('#message-input').fill('');
    await dismissToasts(alice);
    // Far too long for one frame (the server would close the connection): refused in the page,
    // with the same words, and the connection stays up.
    await sendViaUi(alice, '😀'.repeat(9000));
    assert.match(await toastText(alice, 'payload_too_large'), /too long \(9000 characters/);
    await alice.locator('[data-testid=pending-message][data-state=failed] [data-testid=discard]').click();
    await alice.locator('[data-testid=connection-status][data-state=online]').waitFor();
    await dismissToasts(alice);

    // bad_request: an invalid room name.
    await alice.locator('#join-room-input').fill('no spaces allowed!');
    await alice.locator('#join-room-input').press('Enter');
    const badRoom = await toastText(alice, 'bad_request');
    assert.match(badRoom, /no spaces allowed!/);
    assert.match(badRoom, /letters, digits/);
    assert.equal(await alice.locator('[data-testid=room-button][data-room="no spaces allowed!"]').count(), 0);
    await dismissToasts(alice);

    // not_member: asking for the history of a room alice is not in.
    await alice.evaluate(() => window.chatDebug.sendRaw({ action: 'history', room: 'elsewhere' }));
    const notMember = await toastText(alice, 'not_member');
    assert.match(notMember, /not a member/i);
    assert.match(notMember, /elsewhere/);
    await dismissToasts(alice);

    // unknown_action
    await alice.evaluate(() => window.chatDebug.sendRaw({ action: 'dance' }));
    assert.match(await toastText(alice, 'unknown_action'), /did not understand/i);
    await dismissToasts(alice);

    // limit_exceeded: 50 rooms per connection, lobby included.
    for (let i = 1; i <= 49; i++) await joinViaUi(alice, `room-${i}`);
    await alice.locator('#join-room-input').fill('room-50');
    await alice.locator('#join-room-input').press('Enter');
    const tooMany = await toastText(alice, 'limit_exceeded');
    assert.match(tooMany, /too many rooms/i);
    assert.match(tooMany, /room-50/);
    assert.equal(await alice.locator('[data-testid=room-button][data-room="room-50"]').count(), 0);
    assert.equal(await alice.locator('[data-testid=room-button]').count(), 50);
    await dismissToasts(alice);

    // internal cannot be caused from the UI; its words are still there.
    await alice.evaluate(() => window.chatDebug.receive({ type: 'error', code: 'internal', message: 'internal error' }));
    assert.match(await toastText(alice, 'internal'), /went wrong on the server/i);

    // Nothing above was stored twice or at all when refused.
    const stored = (await serverHistory(await s.seeder(), server.wsUrl, 'lobby')).map((m) => m.text);
    assert.equal(count(stored, retryText), 1);
    assert.equal(count(stored, long), 0);
    assert.ok(await alice.locator(`${timelineSel('lobby')}`).count());
  });
});

test('a refused connection says "could not connect"', { timeout: 120_000 }, async () => {
  await withChat(async (s, server) => {
    const page = await s.newPage();
    // A path that is no stage: the handshake is refused, the browser can read nothing of why,
    // so the page only knows that it could not connect.
    await page.goto(`${server.url}?server=${encodeURIComponent(`ws://127.0.0.1:${server.port}/not-a-stage/deeper`)}`);
    await page.locator('#name-input').fill('alice');
    await page.locator('#connect-button').click();
    const err = page.locator('[data-testid=login-error]');
    await err.waitFor();
    assert.match(await err.textContent(), /could not connect/i);
    // The address is remembered in the field, to be corrected.
    assert.match(await page.locator('#server-input').inputValue(), /not-a-stage/);

    // Corrected, it connects, and the settings are remembered for the next visit.
    await page.locator('#server-input').fill(server.wsUrl);
    await page.locator('#connect-button').click();
    await page.locator('[data-testid=connection-status][data-state=online]').waitFor();
    await page.goto(server.url);
    assert.equal(await page.locator('#name-input').inputValue(), 'alice');
    assert.equal(await page.locator('#server-input').inputValue(), server.wsUrl);

    // A name the server would refuse is caught before connecting.
    await page.locator('#name-input').fill('x'.repeat(33));
    await page.locator('#connect-button').click();
    assert.match(await page.locator('[data-testid=login-error]').textContent(), /32 characters/);

    // ?name= and ?server= in the address start the chat directly.
    await page.goto(`${server.url}?name=bob&server=${encodeURIComponent(server.wsUrl)}`);
    await page.locator('[data-testid=connection-status][data-state=online]').waitFor();
    assert.equal(await page.locator('[data-testid=me-name]').textContent(), 'bob');
  }, { allow: [WS_CONNECT_FAILED] });
});

test("API Gateway's error frame for a failed integration is shown, and fails the waiting request", { timeout: 120_000 }, async () => {
  await withChat(async (s, server) => {
    const bob = await s.openChat('bob');
    const page = await s.newPage();
    // The real server behind; the first sendMessage of "explode" gets, instead of its ack, the
    // frame API Gateway sends when a Lambda function fails (its own requestId, not ours).
    let exploded = false;
    await page.routeWebSocket(/\/dev(\?|$)/, (ws) => {
      const backend = ws.connectToServer();
      ws.onMessage((message) => {
        const frame = JSON.parse(message);
        if (!exploded && frame.action === 'sendMessage' && frame.text === 'explode') {
          exploded = true;
          ws.send('{"message": "Internal server error", "connectionId":"L0SM9cOFvHcCIhw=", "requestId":"Qyi3UG41tjMFlUg="}');
          return;
        }
        backend.send(message);
      });
    });
    await page.goto(server.url);
    await page.locator('#name-input').fill('alice');
    await page.locator('#connect-button').click();
    await page.locator('[data-testid=connection-status][data-state=online]').waitFor();

    await sendViaUi(page, 'explode');
    const shown = await toastText(page, 'gateway');
    assert.match(shown, /Internal server error/);
    // The message waits no more: it is shown as not sent, and can be retried.
    const failed = page.locator('[data-testid=pending-message][data-state=failed]');
    await failed.waitFor();
    // The connection goes on, and the retry is delivered once.
    assert.equal(await page.locator('[data-testid=connection-status]').getAttribute('data-state'), 'online');
    await failed.locator('[data-testid=retry]').click();
    await waitForText(page, 'lobby', 'explode');
    await waitForText(bob, 'lobby', 'explode');
    assert.equal(count(await roomTexts(bob, 'lobby'), 'explode'), 1);
  });
});
