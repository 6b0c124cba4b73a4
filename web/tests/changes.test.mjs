// Browser tests: edits and deletes of messages (version 2), shown live.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launchBrowser, T, timelineSel, waitForText, withChatOn } from './helpers.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

/** Opens a plain WebSocket in `page` as `name`; returns a handle for `call(frame)` in the page. */
async function openSocket(page, wsUrl, name) {
  await page.evaluate(async ({ wsUrl, name }) => {
    const ws = new WebSocket(`${wsUrl}?name=${encodeURIComponent(name)}`);
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
    let n = 0;
    window.__call = (frame) => new Promise((resolve) => {
      const requestId = `t-${++n}`;
      const onMsg = (ev) => {
        const f = JSON.parse(ev.data);
        if (f.requestId === requestId) { ws.removeEventListener('message', onMsg); resolve(f); }
      };
      ws.addEventListener('message', onMsg);
      ws.send(JSON.stringify({ ...frame, requestId }));
    });
  }, { wsUrl, name });
  return (frame) => page.evaluate((frame) => window.__call(frame), frame);
}

const messageIn = (page, room, text) => page.locator(`${timelineSel(room)} [data-testid=message]`).filter({ hasText: text });

test('an edit and a delete of a message show live', { timeout: 180_000 }, async () => {
  await withChatOn(browser, async (s, server) => {
    const seeder = await s.seeder();
    const call = await openSocket(seeder, server.wsUrl, 'editor');
    const typo = await call({ action: 'sendMessage', text: 'teh typo' });
    const regret = await call({ action: 'sendMessage', text: 'something to take back' });
    assert.equal(typo.type, 'ack');

    const alice = await s.openChat('alice');
    await waitForText(alice, 'lobby', 'something to take back');

    // Live: the new text with "(edited)"; the deleted one says so, and its text is gone.
    assert.equal((await call({ action: 'editMessage', room: 'lobby', id: typo.id, text: 'the typo, fixed' })).type, 'updated');
    await waitForText(alice, 'lobby', 'the typo, fixed');
    await messageIn(alice, 'lobby', 'the typo, fixed').locator('[data-testid=message-edited]').waitFor({ timeout: T });
    assert.equal((await call({ action: 'deleteMessage', room: 'lobby', id: regret.id })).type, 'deleted');
    await alice.locator(`${timelineSel('lobby')} [data-testid=message-deleted]`).waitFor({ timeout: T });
    assert.equal(await messageIn(alice, 'lobby', 'something to take back').count(), 0);

  });
});
