// Signed-in users (a JWT): who the client is, private rooms, direct rooms (openDirect and the
// direct event), read marks told to the user's other connections, and a direct room rejoined
// after a reconnect.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import {
  eachBackend, startServer, startProxy, client, nextEvent, waitFor,
} from './support.mjs';

const SECRET = 'js-client-secret-0123456789abcdef';

function token(sub, name, rooms = []) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, name, rooms, exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`;
}

eachBackend((backend) => {
  let server;
  let proxy;
  before(async () => {
    server = await startServer({ backend, args: ['--jwt-secret', SECRET] });
    proxy = await startProxy(`ws://127.0.0.1:${server.port}`);
  });
  after(async () => {
    await proxy?.close();
    await server?.cleanup();
  });

  test('a token names the user; private rooms need a grant; openDirect and direct; read goes to the other connections', { timeout: 120_000 }, async () => {
    const alice = client(proxy.wsUrl, { token: token('u-alice', 'Alice', ['private.team-*']) });
    const alice2 = client(server.wsUrl, { token: token('u-alice', 'Alice') });
    const bob = client(server.wsUrl, { token: token('u-bob', 'Bob') });
    assert.deepEqual(alice.me, { name: 'Alice', userId: 'u-alice' }, 'known from the token before connecting');
    await Promise.all([alice.ready, alice2.ready, bob.ready]);

    assert.equal((await alice.join('private.team-1')).type, 'joined');
    await assert.rejects(bob.join('private.team-1'), { code: 'forbidden' });

    // openDirect: alice gets `joined` for the pair's room; bob is told with `direct`.
    const told = nextEvent(bob, 'direct');
    const dm = await alice.openDirect('u-bob');
    assert.equal(dm.type, 'joined');
    assert.match(dm.room, /^dm\./);
    assert.ok(alice.roomNames.includes(dm.room));
    const direct = await told;
    assert.equal(direct.room, dm.room);
    assert.deepEqual(direct.from, { name: 'Alice', userId: 'u-alice' });
    await bob.join(direct.room);
    const toBob = nextEvent(bob, 'message', (m) => m.room === dm.room);
    const ack = await alice.send(dm.room, 'just between us');
    assert.equal((await toBob).sender.userId, 'u-alice');

    // markRead on one connection: the user's other connection in the room hears `read`.
    await alice2.join(dm.room);
    const read = nextEvent(alice2, 'read', (r) => r.room === dm.room);
    assert.equal((await alice.markRead(dm.room, ack.id)).type, 'read');
    assert.equal((await read).id, ack.id);

    // A reconnect rejoins the direct room (by joinRoom, with sinceSeq) and recovers it.
    proxy.down();
    await waitFor(() => alice.state === 'reconnecting', { what: 'reconnecting' });
    await bob.send(dm.room, 'while you were away');
    const recovered = nextEvent(alice, 'message', (m) => m.room === dm.room && m.text === 'while you were away');
    proxy.up();
    assert.equal((await recovered).recovered, true);
    assert.ok(alice.isJoined(dm.room) || (await waitFor(() => alice.isJoined(dm.room), { what: 'rejoined' })) === undefined);
    const rooms = await alice.rooms();
    assert.deepEqual(rooms.rooms.map((r) => r.room).sort(), ['lobby', 'private.team-1', dm.room].sort());
  });
});
