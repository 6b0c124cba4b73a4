// Sends: one per room in flight (the order rule that holds on API Gateway too), a bounded queue
// while offline, and a send that cannot be delivered in time.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { ChatError } from '../src/index.js';
import {
  eachBackend, startServer, startProxy, client, storedHistory, count, waitFor, sleep,
} from './support.mjs';

eachBackend((backend) => {
  let server;
  before(async () => { server = await startServer({ backend }); });
  after(async () => { await server?.cleanup(); });

  test('sends to a room go one at a time, each after the previous ack, in call order; another room is not held up', { timeout: 120_000 }, async () => {
    const proxy = await startProxy(`ws://127.0.0.1:${server.port}`);
    try {
      // Acks held back 150 ms: a client that did not wait for them would be seen sending the
      // next one first.
      const log = [];
      proxy.toServer = (f) => {
        if (f?.action === 'sendMessage') log.push(`send ${f.room} ${f.text}`);
      };
      proxy.toClient = (f, c, text) => {
        if (f?.type === 'ack') {
          setTimeout(() => {
            log.push(`ack ${f.room} ${f.seq}`);
            c.client.send(text);
          }, 150);
          return false;
        }
        return undefined;
      };
      const alice = client(proxy.wsUrl, { name: 'alice' });
      await alice.ready;
      await alice.join('ordered');
      await alice.join('other');
      const texts = ['one', 'two', 'three', 'four'];
      const calls = texts.map((t) => alice.send('ordered', t));
      const elsewhere = alice.send('other', 'meanwhile');
      const acks = await Promise.all(calls);
      await elsewhere;
      const inRoom = log.filter((l) => l.includes(' ordered '));
      assert.deepEqual(inRoom, [
        'send ordered one', `ack ordered ${acks[0].seq}`, 'send ordered two', `ack ordered ${acks[1].seq}`,
        'send ordered three', `ack ordered ${acks[2].seq}`, 'send ordered four', `ack ordered ${acks[3].seq}`,
      ]);
      assert.ok(log.indexOf('send other meanwhile') < log.indexOf(`ack ordered ${acks[0].seq}`),
        "the other room's send did not wait for this room's ack");
      for (let i = 1; i < acks.length; i++) assert.ok(acks[i].seq > acks[i - 1].seq);
      assert.deepEqual((await storedHistory(server.wsUrl, 'ordered')).map((m) => m.text), texts);
    } finally {
      await proxy.close();
    }
  });

  test('a full send queue: while offline, sends queue up to maxQueue, then are refused with queue_full; the queued ones go in order once back', { timeout: 120_000 }, async () => {
    const proxy = await startProxy(`ws://127.0.0.1:${server.port}`);
    try {
      const alice = client(proxy.wsUrl, { name: 'alice-q', maxQueue: 5, sendTimeout: 0 });
      await alice.ready;
      await alice.join('queue');
      proxy.down();
      await waitFor(() => alice.state === 'reconnecting', { what: 'reconnecting' });
      const queued = [1, 2, 3, 4, 5].map((i) => alice.send('queue', `queued ${i}`));
      assert.equal(alice.pendingSends, 5);
      const refused = await alice.send('queue', 'one too many').catch((e) => e);
      assert.ok(refused instanceof ChatError);
      assert.equal(refused.code, 'queue_full');
      assert.equal(refused.local, true);
      assert.ok(refused.clientMsgId);
      assert.equal(alice.pendingSends, 5, 'the refused one takes no place');
      await sleep(300);
      proxy.up();
      const acks = await Promise.all(queued);
      assert.equal(alice.pendingSends, 0);
      for (let i = 1; i < acks.length; i++) assert.ok(acks[i].seq > acks[i - 1].seq);
      const stored = (await storedHistory(server.wsUrl, 'queue')).map((m) => m.text);
      assert.deepEqual(stored, ['queued 1', 'queued 2', 'queued 3', 'queued 4', 'queued 5']);
      assert.equal(count(stored, 'one too many'), 0);
      // Room again once some went: the queue takes sends again.
      assert.equal((await alice.send('queue', 'room again')).type, 'ack');
    } finally {
      await proxy.close();
    }
  });

  test('a send that is not acknowledged within sendTimeout is rejected with timeout, and not sent later', { timeout: 120_000 }, async () => {
    const proxy = await startProxy(`ws://127.0.0.1:${server.port}`);
    try {
      const alice = client(proxy.wsUrl, { name: 'alice-t', sendTimeout: 400 });
      await alice.ready;
      await alice.join('late');
      proxy.down();
      await waitFor(() => alice.state === 'reconnecting', { what: 'reconnecting' });
      const err = await alice.send('late', 'too late').catch((e) => e);
      assert.equal(err.code, 'timeout');
      assert.equal(alice.pendingSends, 0);
      proxy.up();
      await alice.connect();
      await alice.join('late');
      assert.equal((await alice.send('late', 'in time')).type, 'ack');
      assert.equal(proxy.fromClients.filter((f) => f.action === 'sendMessage' && f.text === 'too late').length, 0);
      assert.deepEqual((await storedHistory(server.wsUrl, 'late')).map((m) => m.text), ['in time']);
    } finally {
      await proxy.close();
    }
  });

  test('leaving a room rejects its queued sends (left); a rejoin that is refused is told (rejoinFailed)', { timeout: 120_000 }, async () => {
    const proxy = await startProxy(`ws://127.0.0.1:${server.port}`);
    try {
      const alice = client(proxy.wsUrl, { name: 'alice-l', sendTimeout: 0 });
      await alice.ready;
      await alice.join('gone');
      proxy.down();
      await waitFor(() => alice.state === 'reconnecting', { what: 'reconnecting' });
      const queued = alice.send('gone', 'never');
      await alice.leave('gone');
      await assert.rejects(queued, { code: 'left' });
      assert.ok(!alice.roomNames.includes('gone'));
      // A room whose rejoin the server refuses (here: limit_exceeded, forced by the proxy).
      await alice.join('refused').catch(() => {});
      proxy.up();
      await alice.connect();
      await waitFor(() => alice.isJoined('refused'), { what: 'joined' });
      proxy.toClient = (f) => {
        if (f?.type === 'joined' && f.room === 'refused') {
          return JSON.stringify({ type: 'error', requestId: f.requestId, code: 'forbidden', message: 'forbidden here' });
        }
        return undefined;
      };
      const failed = new Promise((resolve) => alice.on('rejoinFailed', resolve));
      proxy.cut();
      const ev = await failed;
      assert.equal(ev.room, 'refused');
      assert.equal(ev.error.code, 'forbidden');
      assert.ok(!alice.roomNames.includes('refused'));
      assert.equal(proxy.fromClients.filter((f) => f.action === 'joinRoom' && f.room === 'gone').length, 1, 'a room left is not rejoined');
    } finally {
      await proxy.close();
    }
  });
});
