// The package as an application gets it: `npm pack`, installed into a scratch project, imported
// by name, used against the real server on each back end; and its types compile.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile, readdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { eachBackend, startServer } from './support.mjs';

const run = promisify(execFile);
const PKG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const WS_MODULE = pathToFileURL(path.join(PKG, 'node_modules', 'ws', 'wrapper.mjs')).href;

let scratch;
before(async () => {
  scratch = await mkdtemp(path.join(os.tmpdir(), 'chat-client-pack-'));
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', scratch], { cwd: PKG });
  const [info] = JSON.parse(stdout);
  const files = info.files.map((f) => f.path).sort();
  assert.deepEqual(files.filter((f) => !f.startsWith('src/')),
    ['README.md', 'index.d.ts', 'package.json'], 'the tarball holds the library, its types and README only');
  assert.ok(files.includes('src/index.js'));
  assert.ok(!files.some((f) => f.startsWith('test/')), 'no tests in the package');
  const tarball = path.join(scratch, info.filename);
  await writeFile(path.join(scratch, 'package.json'), JSON.stringify({ name: 'scratch', private: true, type: 'module' }));
  await run('npm', ['install', '--no-audit', '--no-fund', '--offline', tarball], { cwd: scratch });
  const installed = await readdir(path.join(scratch, 'node_modules'));
  assert.deepEqual(installed.filter((n) => !n.startsWith('.')), ['@chat'], 'no runtime dependency came with it');
});
after(async () => { if (scratch) await rm(scratch, { recursive: true, force: true }); });

test('the types compile against an application\'s use of them (tsc --strict)', { timeout: 120_000 }, async () => {
  await run(path.join(PKG, 'node_modules', '.bin', 'tsc'), ['-p', path.join(PKG, 'test', 'types')], { cwd: PKG });
});

eachBackend((backend) => {
  let server;
  before(async () => { server = await startServer({ backend }); });
  after(async () => { await server?.cleanup(); });

  test('the installed package imports by name and chats', { timeout: 60_000 }, async () => {
    const script = path.join(scratch, `use-${backend}.mjs`);
    await writeFile(script, `
      import { connect, ChatError } from '@chat/client';
      import WebSocket from ${JSON.stringify(WS_MODULE)};
      const url = process.argv[2];
      const a = connect({ url, name: 'packed-a', WebSocket });
      const b = connect({ url, name: 'packed-b', WebSocket });
      await Promise.all([a.ready, b.ready]);
      await a.join('packed');
      await b.join('packed');
      const seen = new Promise((r) => b.on('message', (m) => { if (m.room === 'packed') r(m); }));
      const ack = await a.send('packed', 'from the tarball');
      const m = await seen;
      const refused = await a.join('bad name!').catch((e) => e);
      console.log(JSON.stringify({ same: m.id === ack.id, text: m.text, error: refused instanceof ChatError && refused.code }));
      a.close();
      b.close();
    `);
    const { stdout } = await run(process.execPath, [script, server.wsUrl], { cwd: scratch, timeout: 50_000 });
    assert.deepEqual(JSON.parse(stdout.trim()), { same: true, text: 'from the tarball', error: 'bad_request' });
  });
});
