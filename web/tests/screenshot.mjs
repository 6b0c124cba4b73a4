// Saves docs/screenshot.png: the chat at 1280x800 with two rooms and two people talking.
// Usage: node screenshot.mjs   (CHAT_BIN and CHROMIUM as for the tests)
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import {
  REPO, startServer, launchBrowser, Session, sendViaUi, joinViaUi, switchTo, waitForText,
} from './helpers.mjs';

const out = path.join(REPO, 'docs', 'screenshot.png');
const server = await startServer();
const browser = await launchBrowser();
const s = new Session(browser, server);
try {
  const ada = await s.openChat('Ada');
  const grace = await s.openChat('Grace');

  const talk = async (from, to, room, text) => {
    await sendViaUi(from, text);
    await waitForText(to, room, text);
  };
  await talk(ada, grace, 'lobby', 'Morning! Is the staging deploy done?');
  await talk(grace, ada, 'lobby', 'Yes, finished ten minutes ago. All green.');
  await talk(grace, ada, 'lobby', 'The new history paging is in too: scroll up and older messages load.');
  await talk(ada, grace, 'lobby', 'Nice. Let\'s look at the reconnect logic in #design.');

  await joinViaUi(ada, 'design');
  await joinViaUi(grace, 'design');
  await talk(grace, ada, 'design', 'Backoff is exponential with jitter, capped at 15 s.');
  await talk(ada, grace, 'design', 'And messages typed while offline?\nQueued, then sent once with the same clientMsgId.');
  await switchTo(ada, 'lobby');
  await talk(grace, ada, 'design', 'Exactly. The server answers a retry with the same ack.');
  await switchTo(grace, 'lobby');
  await talk(grace, ada, 'lobby', 'Coffee first, back in five.');
  await grace.waitForTimeout(2100); // typing notices go out at most every 2 s
  await grace.locator('#message-input').pressSequentially('brb');
  await ada.locator('[data-testid=typing-indicator]').filter({ hasText: 'Grace is typing' }).waitFor();

  await mkdir(path.dirname(out), { recursive: true });
  await ada.screenshot({ path: out });
  const errs = s.errors();
  if (errs.length) throw new Error(`page errors: ${errs.join('\n')}`);
  console.log(`saved ${out}`);
} finally {
  await s.close();
  await browser.close();
  await server.cleanup();
}
