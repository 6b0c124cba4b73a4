// The connection's limits as API Gateway sets them (idle timeout, lifetime), scaled down with the
// server's own flags: a keep-alive, a planned reconnect before the lifetime, a dead connection
// found by its missing pong, and the server's `removed`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  eachBackend, startServer, startProxy, client, rawClient, seed, storedHistory, waitFor, sleep,
} from './support.mjs';

const texts = (list) => list.map((m) => m.text);

function messagesOf(c, room) {
  const list = [];
  c.on('message', (m) => { if (m.room === room) list.push(m); });
  return list;
}

eachBackend((backend) => {
  test('idle timeout: the keep-alive keeps the connection open; without it the server closes it (1001) and the client reconnects transparently', { timeout: 120_000 }, async () => {
    const server = await startServer({ backend, args: ['--idle-timeout', '1s'] });
    try {
      const kept = client(server.wsUrl, { name: 'kept', pingInterval: 300 });
      const bare = client(server.wsUrl, { name: 'bare', pingInterval: 0 });
      const keptStates = [];
      const bareStates = [];
      kept.on('state', (s) => keptStates.push(s));
      bare.on('state', (s) => bareStates.push(s));
      const got = messagesOf(bare, 'lobby');
      await kept.ready;
      await bare.ready;
      await bare.join('lobby');
      await kept.join('lobby');
      await waitFor(() => bareStates.some((s) => s.state === 'reconnecting'), { what: 'the idle close', timeout: 10_000 });
      assert.equal(bareStates.find((s) => s.state === 'reconnecting').code, 1001);
      await sleep(2500);
      assert.deepEqual(keptStates.map((s) => s.state), ['connected'], 'the kept one never left the connected state');
      assert.equal(kept.state, 'connected');
      // The bare one keeps being closed and reconnecting; nothing sent to it meanwhile is lost.
      await kept.send('lobby', 'while bare comes and goes');
      await waitFor(() => texts(got).includes('while bare comes and goes'), { what: 'the message' });
      assert.equal(texts(got).filter((t) => t === 'while bare comes and goes').length, 1);
      kept.close();
      bare.close();
    } finally {
      await server.cleanup();
    }
  });

  test('lifetime: a planned reconnect before the server\'s limit, with nothing lost; past the limit the server\'s 1001 is handled too', { timeout: 120_000 }, async () => {
    const server = await startServer({ backend, args: ['--max-lifetime', '3s'] });
    try {
      const planned = client(server.wsUrl, { name: 'planned', maxConnectionAge: 1200 });
      const unplanned = client(server.wsUrl, { name: 'unplanned', maxConnectionAge: 0 });
      const plannedStates = [];
      const unplannedStates = [];
      planned.on('state', (s) => plannedStates.push(s));
      unplanned.on('state', (s) => unplannedStates.push(s));
      const gotPlanned = messagesOf(planned, 'life');
      const gotUnplanned = messagesOf(unplanned, 'life');
      await planned.ready;
      await unplanned.ready;
      await planned.join('life');
      await unplanned.join('life');
      // 4.5 s of messages, about 4 a second, each from a new connection of bob's (his own
      // would reach the lifetime too).
      const sent = [];
      for (let i = 0; i < 18; i++) {
        const text = `tick ${String(i).padStart(2, '0')}`;
        await seed(server.wsUrl, 'life', [text], 'bob');
        sent.push(text);
        await sleep(200);
      }
      await waitFor(() => gotPlanned.length === sent.length && gotUnplanned.length === sent.length, { what: 'every tick' });
      assert.deepEqual(texts(gotPlanned), sent);
      assert.deepEqual(texts(gotUnplanned), sent);
      const plannedReconnects = plannedStates.filter((s) => s.state === 'reconnecting');
      assert.ok(plannedReconnects.length >= 3, `planned reconnects (${plannedReconnects.length})`);
      assert.ok(plannedReconnects.every((s) => s.planned === true && s.delay === 0), 'each planned, at once');
      const serverCloses = unplannedStates.filter((s) => s.state === 'reconnecting');
      assert.ok(serverCloses.length >= 1 && serverCloses.every((s) => s.code === 1001), 'the server closed it with 1001');
      assert.deepEqual(texts(await storedHistory(server.wsUrl, 'life')), sent);
      planned.close();
      unplanned.close();
    } finally {
      await server.cleanup();
    }
  });

  test('a connection dead without saying so (no frame comes back): the missing pong drops it, and the client reconnects and recovers', { timeout: 120_000 }, async () => {
    const server = await startServer({ backend });
    const proxy = await startProxy(`ws://127.0.0.1:${server.port}`);
    try {
      const alice = client(proxy.wsUrl, { name: 'alice', pingInterval: 300, pongTimeout: 600 });
      const got = messagesOf(alice, 'lobby');
      const states = [];
      alice.on('state', (s) => states.push(s));
      await alice.ready;
      await alice.join('lobby');
      proxy.freeze();
      const bob = await rawClient(server.wsUrl, 'bob');
      await bob.sendAll('lobby', ['while frozen']);
      await waitFor(() => states.some((s) => s.state === 'reconnecting'), { what: 'the drop' });
      assert.equal(states.find((s) => s.state === 'reconnecting').reason, 'no reply to ping');
      await waitFor(() => texts(got).includes('while frozen'), { what: 'the recovery' });
      assert.equal(got.length, 1);
      assert.equal(got[0].recovered, true);
      await bob.close();
      alice.close();
    } finally {
      await proxy.close();
      await server.cleanup();
    }
  });

  test('removed from a room: the room is dropped, its queued sends are rejected, it is not rejoined', { timeout: 120_000 }, async () => {
    const server = await startServer({ backend });
    const proxy = await startProxy(`ws://127.0.0.1:${server.port}`);
    try {
      const alice = client(proxy.wsUrl, { name: 'alice', sendTimeout: 0 });
      await alice.ready;
      await alice.join('banned-here');
      // The server API's ban is not built yet (protocol-notes): the frame is injected.
      proxy.toServer = (f) => (f?.action === 'sendMessage' ? false : undefined); // held in flight
      const inFlight = alice.send('banned-here', 'never acknowledged');
      const queued = alice.send('banned-here', 'queued behind it');
      await sleep(100);
      const removed = new Promise((resolve) => alice.on('removed', resolve));
      proxy.inject(JSON.stringify({ type: 'removed', room: 'banned-here', reason: 'banned' }));
      assert.equal((await removed).reason, 'banned');
      await assert.rejects(inFlight, { code: 'removed' });
      await assert.rejects(queued, { code: 'removed' });
      assert.ok(!alice.roomNames.includes('banned-here'));
      proxy.toServer = null;
      proxy.cut();
      await waitFor(() => alice.isJoined('lobby'), { what: 'rejoined' });
      assert.equal(proxy.fromClients.filter((f) => f.action === 'joinRoom' && f.room === 'banned-here').length, 1);
      alice.close();
    } finally {
      await proxy.close();
      await server.cleanup();
    }
  });
});
