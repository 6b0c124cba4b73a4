// The binary serves the client's files as they are in web/static, and the client library that
// app.js imports as they are in clients/js/src (no build step between them).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { startServer, ASSETS, STATIC_DIR, WEB_FROM_DISK } from './helpers.mjs';

test('the binary serves index.html, app.js, style.css and the client library, as built from web/static and clients/js/src', { timeout: 60_000 }, async () => {
  const server = await startServer();
  try {
    for (const [urlPath, [file, type]] of Object.entries(ASSETS)) {
      const res = await fetch(new URL(urlPath, server.url));
      assert.equal(res.status, 200, `${urlPath} status`);
      assert.equal(res.headers.get('content-type').split(';')[0], type.split(';')[0], `${urlPath} content type`);
      const body = await res.text();
      if (!WEB_FROM_DISK) {
        const disk = await readFile(path.join(STATIC_DIR, file), 'utf8');
        assert.ok(body === disk, `${urlPath} is web/static/${file} (rebuild the binary after changing the client)`);
      }
    }
    const html = await readFile(path.join(STATIC_DIR, 'index.html'), 'utf8');
    assert.match(html, /<link rel="icon" href="data:,">/);
    assert.match(html, /src="\/app\.js"/);
    assert.match(html, /href="\/style\.css"/);
    // Nothing from elsewhere: no absolute http(s) URLs in the client at all.
    assert.match(html, /<script type="module" src="\/app\.js">/);
    for (const file of Object.values(ASSETS).map(([f]) => f)) {
      const text = await readFile(path.join(STATIC_DIR, file), 'utf8');
      const urls = (text.match(/https?:\/\/[^\s'"`)]+/g) || []).filter((u) => !/^https?:\/\/$/.test(u));
      assert.deepEqual(urls, [], `${file} names no outside address`);
      assert.doesNotMatch(text, /innerHTML|outerHTML|insertAdjacentHTML|document\.write/, `${file} never parses HTML from strings`);
    }
  } finally {
    await server.cleanup();
  }
});
