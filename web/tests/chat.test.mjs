// Browser tests: chatting, rooms, history, presence, typing, and rendering user data as text.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, launchBrowser, Session, T, seed, roomTexts, waitForText, waitForCount, sendViaUi,
  joinViaUi, switchTo, timelineSel, count,
  withChatOn,
} from './helpers.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

const withChat = (fn, finishOpts) => withChatOn(browser, fn, finishOpts);

test('two people chat in lobby and in a second room; a third person sees nothing of that room', { timeout: 180_000 }, async () => {
  await withChat(async (s, server) => {
    // Some history before anyone opens the page.
    const seeder = await s.seeder();
    await seed(seeder, server.wsUrl, 'lobby', ['earlier one', 'earlier two', 'earlier three'], 'old-timer');

    const alice = await s.openChat('alice');
    const bob = await s.openChat('bob');
    const carol = await s.openChat('carol');

    // The recent history is shown on arrival, oldest first.
    for (const p of [alice, bob, carol]) {
      await waitForText(p, 'lobby', 'earlier three');
      assert.deepEqual(await roomTexts(p, 'lobby'), ['earlier one', 'earlier two', 'earlier three']);
    }
    assert.equal(await alice.locator('[data-testid=me-name]').textContent(), 'alice');

    // Live in lobby, both ways.
    await sendViaUi(alice, 'hello from alice');
    await waitForText(bob, 'lobby', 'hello from alice');
    await waitForText(carol, 'lobby', 'hello from alice');
    await sendViaUi(bob, 'hi alice, bob here');
    await waitForText(alice, 'lobby', 'hi alice, bob here');
    await waitForText(carol, 'lobby', 'hi alice, bob here');

    // Own messages are marked as such, and none is left "sending…".
    const own = alice.locator(`${timelineSel('lobby')} [data-testid=message].own`);
    await own.filter({ hasText: 'hello from alice' }).waitFor();
    assert.equal(await alice.locator(`${timelineSel('lobby')} [data-testid=message]:not(.own)`).filter({ hasText: 'hi alice, bob here' }).count(), 1);
    await alice.locator('[data-testid=pending-message]').first().waitFor({ state: 'detached' });
    const senderOnBob = bob.locator(`${timelineSel('lobby')} [data-testid=message]`).filter({ hasText: 'hello from alice' });
    assert.equal(await senderOnBob.getAttribute('data-sender'), 'alice');
    assert.match(await senderOnBob.locator('time').textContent(), /\d/);

    // A second room: alice and bob join, carol does not.
    await joinViaUi(alice, 'side-room');
    await joinViaUi(bob, 'side-room');
    await sendViaUi(alice, 'secret plans in side-room');
    await waitForText(bob, 'side-room', 'secret plans in side-room');
    await sendViaUi(bob, 'bob agrees in side-room');
    await waitForText(alice, 'side-room', 'bob agrees in side-room');
    assert.deepEqual(await roomTexts(alice, 'side-room'), ['secret plans in side-room', 'bob agrees in side-room']);

    // Unread count on a room that is not in view, cleared when it is opened.
    await switchTo(bob, 'lobby');
    await sendViaUi(alice, 'ping while bob looks at lobby');
    const badge = bob.locator('[data-testid=room-button][data-room="side-room"] [data-testid=unread]');
    await badge.waitFor();
    assert.equal(await badge.textContent(), '1');
    await switchTo(bob, 'side-room');
    await badge.waitFor({ state: 'detached' });
    await waitForText(bob, 'side-room', 'ping while bob looks at lobby');

    // Messages in lobby still flow while side-room is in view elsewhere.
    await sendViaUi(alice, 'back to everyone'); // alice is in side-room: goes there
    await switchTo(alice, 'lobby');
    await sendViaUi(alice, 'lobby marker after the other traffic');
    // alice's messages reach every member in the order sent: once carol has the marker, she would
    // already have had every side-room message if she were a member.
    await waitForText(carol, 'lobby', 'lobby marker after the other traffic');
    const carolText = await carol.locator('body').innerText();
    const carolAll = await carol.evaluate(() => document.body.textContent);
    for (const t of ['secret plans', 'bob agrees', 'ping while bob', 'back to everyone', 'side-room']) {
      assert.ok(!carolText.includes(t), `carol must not see "${t}"`);
      assert.ok(!carolAll.includes(t), `carol's page must not hold "${t}"`);
    }
    assert.equal(await carol.locator(timelineSel('side-room')).count(), 0);
    assert.deepEqual(await roomTexts(carol, 'lobby'), [
      'earlier one', 'earlier two', 'earlier three', 'hello from alice', 'hi alice, bob here',
      'lobby marker after the other traffic',
    ]);

    // Leaving a room removes it from the list.
    await switchTo(bob, 'side-room');
    await bob.locator('[data-testid=leave-room]').click();
    await bob.locator('[data-testid=room-button][data-room="side-room"]').waitFor({ state: 'detached' });
    await bob.locator('[data-testid=room-button][data-room="lobby"][aria-current="true"]').waitFor();
  });
});

test('recent history on arrival; scrolling up loads older messages, without duplicates', { timeout: 180_000 }, async () => {
  await withChat(async (s, server) => {
    const texts = Array.from({ length: 120 }, (_, i) => `seed message ${String(i).padStart(3, '0')}`);
    await seed(await s.seeder(), server.wsUrl, 'lobby', texts);

    const alice = await s.openChat('alice');
    await waitForCount(alice, 'lobby', 50);
    assert.deepEqual(await roomTexts(alice, 'lobby'), texts.slice(70));
    const tl = alice.locator(timelineSel('lobby'));
    // Opened at the newest message.
    assert.ok(await tl.evaluate((e) => e.scrollHeight - e.scrollTop - e.clientHeight < 50), 'scrolled to the bottom');
    assert.match(await tl.locator('[data-testid=history-start]').textContent(), /older/i);

    // Scroll up with the mouse wheel: the previous 50 arrive and the view stays where it was.
    const anchor = tl.locator('[data-testid=message]').filter({ hasText: 'seed message 070' });
    await tl.hover();
    await alice.mouse.wheel(0, -100_000);
    await waitForCount(alice, 'lobby', 100);
    assert.deepEqual(await roomTexts(alice, 'lobby'), texts.slice(20));
    const stayed = await anchor.evaluate((m) => {
      const t = m.closest('[data-testid=timeline]');
      const top = m.getBoundingClientRect().top - t.getBoundingClientRect().top;
      return top > -50 && top < t.clientHeight;
    });
    assert.ok(stayed, 'the message that was at the top is still in view after the older page came in');

    // Up again: the last 20, and the start of the room.
    await tl.evaluate((e) => { e.scrollTop = 0; });
    await waitForCount(alice, 'lobby', 120);
    assert.deepEqual(await roomTexts(alice, 'lobby'), texts);
    await tl.locator('[data-testid=history-start][data-state=start]').waitFor();
    assert.match(await tl.locator('[data-testid=history-start]').textContent(), /beginning/i);

    // New messages still arrive at the bottom, once.
    await sendViaUi(alice, 'newest of all');
    await waitForText(alice, 'lobby', 'newest of all');
    const all = await roomTexts(alice, 'lobby');
    assert.equal(all.length, 121);
    assert.equal(all.at(-1), 'newest of all');
    assert.equal(new Set(all).size, all.length);
  });
});

test('presence, join and leave notices, and a typing indicator that goes away by itself', { timeout: 180_000 }, async () => {
  await withChat(async (s) => {
    const alice = await s.openChat('alice');
    const bob = await s.openChat('bob');
    const carol = await s.openChat('carol');

    await joinViaUi(alice, 'team');
    const members = (p) => p.$$eval('[data-testid=member-list] [data-testid=member]', (els) => els.map((e) => e.dataset.name).sort());
    await alice.waitForFunction(() => document.querySelectorAll('[data-testid=member-list] [data-testid=member]').length === 1);
    assert.deepEqual(await members(alice), ['alice']);

    // bob joins: alice gets a notice and a longer member list; bob sees both.
    await joinViaUi(bob, 'team');
    await alice.locator(`${timelineSel('team')} [data-testid=notice]`).filter({ hasText: 'bob joined' }).waitFor();
    await alice.locator('[data-testid=member-list] [data-testid=member][data-name="bob"]').waitFor();
    assert.deepEqual(await members(alice), ['alice', 'bob']);
    assert.deepEqual(await members(bob), ['alice', 'bob']);
    assert.equal(await alice.locator('[data-testid=member-count]').textContent(), '2');

    // bob types: alice sees it, then it disappears by itself.
    // Count the typing frames bob's page sends.
    await bob.evaluate(() => {
      window.__typingSent = 0;
      const orig = WebSocket.prototype.send;
      WebSocket.prototype.send = function send(data) {
        if (typeof data === 'string' && data.includes('"action":"typing"')) window.__typingSent += 1;
        return orig.call(this, data);
      };
    });
    const started = Date.now();
    await bob.locator('#message-input').pressSequentially('hello there', { delay: 40 });
    const typedFor = Date.now() - started;
    const indicator = alice.locator('[data-testid=typing-indicator]');
    await alice.waitForFunction(() => document.querySelector('[data-testid=typing-indicator]').textContent === 'bob is typing…');
    const sent = await bob.evaluate(() => window.__typingSent);
    assert.ok(sent >= 1 && sent <= Math.floor(typedFor / 2000) + 1, `typing sent at most every 2 s (sent ${sent} in ${typedFor} ms)`);
    await alice.waitForFunction(() => document.querySelector('[data-testid=typing-indicator]').textContent === '', null, { timeout: 15_000 });
    assert.equal(await indicator.textContent(), '');

    // Typing again shows it again; the message itself clears it at once.
    await bob.locator('#message-input').pressSequentially('!');
    await alice.waitForFunction(() => document.querySelector('[data-testid=typing-indicator]').textContent === 'bob is typing…');
    await bob.locator('#message-input').press('Enter');
    await waitForText(alice, 'team', 'hello there!');
    assert.equal(await indicator.textContent(), '');

    // carol joins and then closes her page: alice sees her come and go.
    await joinViaUi(carol, 'team');
    await alice.locator('[data-testid=member-list] [data-testid=member][data-name="carol"]').waitFor();
    await carol.context().close();
    await alice.locator(`${timelineSel('team')} [data-testid=notice]`).filter({ hasText: 'carol left' }).waitFor();
    await alice.locator('[data-testid=member-list] [data-testid=member][data-name="carol"]').waitFor({ state: 'detached' });

    // bob leaves with the button.
    await bob.locator('[data-testid=leave-room]').click();
    await alice.locator(`${timelineSel('team')} [data-testid=notice]`).filter({ hasText: 'bob left' }).waitFor();
    await alice.locator('[data-testid=member-list] [data-testid=member][data-name="bob"]').waitFor({ state: 'detached' });
    assert.deepEqual(await members(alice), ['alice']);
  });
});

test('message text and names are shown as text, never run as HTML', { timeout: 180_000 }, async () => {
  await withChat(async (s) => {
    // mallory first: lobby has no presence events, so alice's member list already holds her.
    const mallory = await s.openChat('<b>mallory</b>');
    const alice = await s.openChat('alice');
    const attack = '<img src=x onerror="window.__pwned=1">';
    await sendViaUi(mallory, attack);
    await waitForText(alice, 'lobby', attack);
    await waitForText(mallory, 'lobby', attack);

    // Shift+Enter makes a new line; Enter sends.
    const input = alice.locator('#message-input');
    await input.fill('');
    await input.pressSequentially('line one');
    await input.press('Shift+Enter');
    await input.pressSequentially('<script>window.__pwned=2</script>');
    await input.press('Enter');
    await waitForText(mallory, 'lobby', 'line one\n<script>window.__pwned=2</script>');

    for (const p of [alice, mallory]) {
      assert.equal(await p.evaluate(() => window.__pwned), undefined);
      assert.equal(await p.locator('[data-testid=timelines] img').count(), 0);
      assert.equal(await p.locator('[data-testid=timelines] script').count(), 0);
      assert.equal(await p.locator('[data-testid=timelines] b').count(), 0);
    }
    const fromMallory = alice.locator(`${timelineSel('lobby')} [data-testid=message]`).filter({ hasText: attack });
    assert.equal(await fromMallory.locator('[data-testid=message-sender]').textContent(), '<b>mallory</b>');
    assert.equal(count(await roomTexts(alice, 'lobby'), attack), 1);
    await alice.locator('[data-testid=member-list] [data-testid=member]').filter({ hasText: '<b>mallory</b>' }).first().waitFor();
    assert.equal(await alice.evaluate(() => window.__pwned), undefined);
  });
});

test('on a phone the rooms list folds away behind a button, and nothing overflows sideways', { timeout: 180_000 }, async () => {
  await withChat(async (s) => {
    const phone = { width: 390, height: 844 };
    const alice = await s.openChat('alice', { viewport: phone });
    const bob = await s.openChat('bob');
    await joinViaUi(bob, 'mobile');
    const inView = (loc) => loc.evaluate((e) => {
      const r = e.getBoundingClientRect();
      return r.right > 0 && r.left < window.innerWidth && r.width > 0;
    });
    const sidebar = alice.locator('[data-testid=sidebar]');
    assert.equal(await inView(sidebar), false, 'rooms list hidden on a phone');
    const toggle = alice.locator('[data-testid=rooms-toggle]');
    assert.ok(await toggle.isVisible());

    // Open the list, join a room there, and it folds away again.
    await toggle.click();
    await alice.waitForFunction(() => document.querySelector('[data-testid=sidebar]').getBoundingClientRect().left >= 0);
    await joinViaUi(alice, 'mobile');
    await alice.waitForFunction(() => document.querySelector('[data-testid=sidebar]').getBoundingClientRect().right <= 0);
    await sendViaUi(bob, 'a long line from a laptop that has to wrap on the phone without any sideways scrolling at all, '.repeat(3));
    await waitForText(alice, 'mobile', 'a long line from a laptop that has to wrap on the phone without any sideways scrolling at all, '.repeat(3));
    await sendViaUi(alice, 'typed on the phone');
    await waitForText(bob, 'mobile', 'typed on the phone');
    const overflow = await alice.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `no sideways overflow (${overflow}px)`);
    const composer = alice.locator('#message-input');
    assert.ok(await inView(composer));
    // The member list is one tap away too.
    await alice.locator('[data-testid=members-toggle]').click();
    await alice.locator('[data-testid=member-list] [data-testid=member][data-name="bob"]').waitFor();
    await alice.waitForFunction(() => {
      const r = document.querySelector('[data-testid=members-panel]').getBoundingClientRect();
      return r.right <= window.innerWidth + 1 && r.left < window.innerWidth;
    });
    await alice.keyboard.press('Escape');
    await alice.waitForFunction(() => document.querySelector('[data-testid=members-panel]').getBoundingClientRect().left >= window.innerWidth - 1);
  });
});
