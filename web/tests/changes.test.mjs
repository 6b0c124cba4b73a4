// Browser tests: edits, deletes and reactions (version 2), live, from the page, and from history.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launchBrowser, T, timelineSel, waitForText, withChatOn, sendViaUi } from './helpers.mjs';

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

test('editing, deleting and reacting from the page', { timeout: 180_000 }, async () => {
  await withChatOn(browser, async (s) => {
    const alice = await s.openChat('alice');
    const bob = await s.openChat('bob');
    await sendViaUi(alice, 'see you at noon');
    await sendViaUi(alice, 'a message to regret');
    await waitForText(bob, 'lobby', 'a message to regret');

    // Bob has no edit or delete on Alice's messages; Alice has them on hers.
    const onBob = messageIn(bob, 'lobby', 'see you at noon');
    await onBob.hover();
    assert.equal(await onBob.locator('[data-testid=edit-message]').count(), 0);
    // (By id: while it is edited, its text is in an input, which `hasText` does not see.)
    const id = await messageIn(alice, 'lobby', 'see you at noon').getAttribute('data-id');
    const mine = alice.locator(`${timelineSel('lobby')} [data-testid=message][data-id="${id}"]`);
    await mine.hover();
    await mine.locator('[data-testid=edit-message]').click();
    const input = mine.locator('[data-testid=edit-input]');
    await input.fill('see you at one');
    await input.press('Enter');
    for (const page of [alice, bob]) {
      await waitForText(page, 'lobby', 'see you at one');
      await messageIn(page, 'lobby', 'see you at one').locator('[data-testid=message-edited]').waitFor({ timeout: T });
    }

    // Bob reacts from the message's tools; both see the count; a click on the chip takes it back.
    const target = messageIn(bob, 'lobby', 'see you at one');
    await target.hover();
    await target.locator('[data-testid=react-button][data-emoji="👍"]').click();
    const chipOnAlice = messageIn(alice, 'lobby', 'see you at one').locator('[data-testid=reaction][data-emoji="👍"]');
    await chipOnAlice.waitFor({ timeout: T });
    assert.equal(await chipOnAlice.getAttribute('data-count'), '1');
    await sendReactionFrom(alice, chipOnAlice);
    await chipOnAlice.and(alice.locator('[data-count="2"]')).waitFor({ timeout: T });
    const chipOnBob = target.locator('[data-testid=reaction][data-emoji="👍"]');
    await chipOnBob.and(bob.locator('[data-count="2"]')).waitFor({ timeout: T });
    await chipOnBob.click();
    await chipOnAlice.and(alice.locator('[data-count="1"]')).waitFor({ timeout: T });

    // Alice deletes her other message: gone for both, with a notice in its place.
    const regret = messageIn(alice, 'lobby', 'a message to regret');
    await regret.hover();
    await regret.locator('[data-testid=delete-message]').click();
    for (const page of [alice, bob]) {
      await page.locator(`${timelineSel('lobby')} [data-testid=message-deleted]`).waitFor({ timeout: T });
      assert.equal(await messageIn(page, 'lobby', 'a message to regret').count(), 0);
    }

    // A page opened now shows the edit, the reaction and the tombstone from history.
    const carol = await s.openChat('carol');
    await waitForText(carol, 'lobby', 'see you at one');
    await messageIn(carol, 'lobby', 'see you at one').locator('[data-testid=message-edited]').waitFor({ timeout: T });
    const chipOnCarol = messageIn(carol, 'lobby', 'see you at one').locator('[data-testid=reaction][data-emoji="👍"]');
    assert.equal(await chipOnCarol.getAttribute('data-count'), '1');
    await carol.locator(`${timelineSel('lobby')} [data-testid=message-deleted]`).waitFor({ timeout: T });
  });
});

/** Clicks a reaction chip (it is always shown, no hover needed). */
async function sendReactionFrom(page, chip) {
  await chip.click();
}
