// Browser tests: unread badges that agree across the tabs of one user (markRead and the read
// event), and lobby's number of connections.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { launchBrowser, T, sendViaUi, joinViaUi, switchTo, waitForText, waitOnline, waitJoined, withChatOn } from './helpers.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

const SECRET = 'browser-reads-secret-0123456789abcdef';

/** An HS256 token for `sub`, valid for an hour. */
function token(sub, name, rooms = []) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, name, rooms, exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`;
}

async function openAs(s, server, sub, name, rooms = []) {
  const page = await s.newPage();
  // With a token in its URL, the page connects at once (the token names the user).
  await page.goto(`${server.url}?token=${encodeURIComponent(token(sub, name, rooms))}`);
  await waitOnline(page);
  await waitJoined(page, 'lobby');
  return page;
}

const badge = (page, room) => page.locator(`[data-testid=room-button][data-room="${room}"] [data-testid=unread]`);

test('two tabs of one user agree on what is unread; lobby shows how many are connected', { timeout: 180_000 }, async () => {
  process.env.CHAT_JWT_SECRET = SECRET;
  try {
    await withChatOn(browser, async (s, server) => {
      const alice = await openAs(s, server, 'u-alice', 'alice', ['private.team-*']);
      const tab1 = await openAs(s, server, 'u-bob', 'bob');
      const tab2 = await openAs(s, server, 'u-bob', 'bob');
      for (const page of [alice, tab1, tab2]) await joinViaUi(page, 'team');
      // Bob's tabs look at lobby; team fills up.
      await switchTo(tab1, 'lobby');
      await switchTo(tab2, 'lobby');
      for (const text of ['one', 'two', 'three']) await sendViaUi(alice, text);
      for (const tab of [tab1, tab2]) {
        await badge(tab, 'team').filter({ hasText: '3' }).waitFor({ timeout: T });
      }
      // Bob reads team in one tab: the other's badge goes too.
      await switchTo(tab1, 'team');
      await waitForText(tab1, 'team', 'three');
      await badge(tab1, 'team').waitFor({ state: 'detached', timeout: T });
      await badge(tab2, 'team').waitFor({ state: 'detached', timeout: T });
      // A new message that Bob reads in the tab showing team leaves no badge in the other.
      await sendViaUi(alice, 'four');
      await waitForText(tab1, 'team', 'four');
      await waitForText(tab2, 'team', 'four');
      await badge(tab2, 'team').waitFor({ state: 'detached', timeout: T });
      assert.equal(await badge(tab1, 'team').count(), 0);
      // Both elsewhere: the next one counts in both, once.
      await switchTo(tab1, 'lobby');
      await sendViaUi(alice, 'five');
      for (const tab of [tab1, tab2]) {
        await waitForText(tab, 'team', 'five');
        await badge(tab, 'team').filter({ hasText: '1' }).waitFor({ timeout: T });
      }

      // A private room: Alice's token grants it, and the page shows it as private; Bob's does
      // not, and he is told why.
      await joinViaUi(alice, 'private.team-a');
      const lock = alice.locator('[data-testid=room-button][data-room="private.team-a"] .room-hash');
      assert.equal(await lock.textContent(), '🔒');
      await tab1.locator('#join-room-input').fill('private.team-a');
      await tab1.locator('#join-room-input').press('Enter');
      const refusal = tab1.locator('[data-testid=error-toast][data-code="forbidden"]').first();
      await refusal.waitFor({ timeout: T });
      assert.match(await refusal.textContent(), /private/);

      // A direct message: Alice opens it from Bob in lobby's members; it shows as "@bob" on
      // her page and, opened for him, "@alice" on both of Bob's tabs.
      await switchTo(alice, 'lobby');
      const bobInMembers = alice.locator('[data-testid=member-list] [data-testid=member][data-name="bob"]');
      await bobInMembers.locator('[data-testid=direct-message]').click();
      const dmButton = (page, label) => page.locator('[data-testid=room-button]').filter({ hasText: label });
      await dmButton(alice, '@bob').waitFor({ timeout: T });
      await sendViaUi(alice, 'a word in private');
      for (const tab of [tab1, tab2]) {
        await dmButton(tab, '@alice').waitFor({ timeout: T });
      }
      const dm = await dmButton(tab1, '@alice').getAttribute('data-room');
      assert.match(dm, /^dm\./);
      await waitForText(tab1, dm, 'a word in private');

      // lobby: three connections.
      await switchTo(alice, 'lobby');
      const occupancy = alice.locator('[data-testid=occupancy]');
      await occupancy.filter({ hasText: '3 connected' }).waitFor({ timeout: T });
    });
  } finally {
    delete process.env.CHAT_JWT_SECRET;
  }
});

test('a user banned from a room by the server API sees it go, with a notice, on every tab', { timeout: 180_000 }, async () => {
  const API_KEY = 'browser-api-key-0123456789';
  process.env.CHAT_JWT_SECRET = SECRET;
  process.env.CHAT_API_KEY = API_KEY;
  try {
    await withChatOn(browser, async (s, server) => {
      const alice = await openAs(s, server, 'u-alice', 'alice');
      const tab1 = await openAs(s, server, 'u-bob', 'bob');
      const tab2 = await openAs(s, server, 'u-bob', 'bob');
      for (const page of [alice, tab1, tab2]) await joinViaUi(page, 'team');
      await sendViaUi(alice, 'before the ban');
      for (const tab of [tab1, tab2]) await waitForText(tab, 'team', 'before the ban');

      const ban = await fetch(`${server.url}api/rooms/team/bans/u-bob`, {
        method: 'PUT', headers: { authorization: `Bearer ${API_KEY}` },
      });
      assert.equal(ban.status, 204, await ban.text());

      const teamButton = (page) => page.locator('[data-testid=room-button][data-room="team"]');
      for (const tab of [tab1, tab2]) {
        const notice = tab.locator('[data-testid=error-toast][data-code="removed"]').first();
        await notice.waitFor({ timeout: T });
        assert.match(await notice.textContent(), /removed from team: you are banned/);
        await teamButton(tab).waitFor({ state: 'detached', timeout: T });
        await tab.locator('[data-testid=timeline][data-room="team"]').waitFor({ state: 'detached', timeout: T });
      }
      // Alice keeps the room; Bob's pages show nothing more of it.
      assert.equal(await teamButton(alice).count(), 1);
      await sendViaUi(alice, 'after the ban');
      // The room is not remembered: a reload does not try to rejoin it, and a join is refused.
      await tab1.reload();
      await waitOnline(tab1);
      await waitJoined(tab1, 'lobby');
      assert.equal(await teamButton(tab1).count(), 0);
      await tab1.locator('#join-room-input').fill('team');
      await tab1.locator('#join-room-input').press('Enter');
      await tab1.locator('[data-testid=error-toast][data-code="forbidden"]').first().waitFor({ timeout: T });
      assert.equal(await teamButton(tab1).count(), 0);
      assert.equal(await tab2.getByText('after the ban').count(), 0);
    });
  } finally {
    delete process.env.CHAT_JWT_SECRET;
    delete process.env.CHAT_API_KEY;
  }
});
