// Reconnect and recovery against the real server: a restart, a connection killed under the
// client, acks that never came, events out of seq order or lost: every message given once, in
// seq order, and every send stored once.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  eachBackend, startServer, startProxy, client, rawClient, seed, storedHistory, count, waitFor, sleep,
} from './support.mjs';

/** Messages given by `c`, per room, in the order given. */
function collect(c) {
  const byRoom = new Map();
  c.on('message', (m) => {
    if (!byRoom.has(m.room)) byRoom.set(m.room, []);
    byRoom.get(m.room).push(m);
  });
  return (room) => byRoom.get(room) || [];
}

function assertOnceInSeqOrder(messages, what) {
  const ids = messages.map((m) => m.id);
  assert.equal(new Set(ids).size, ids.length, `${what}: no message given twice`);
  for (let i = 1; i < messages.length; i++) {
    assert.ok(messages[i].seq > messages[i - 1].seq, `${what}: seq order (${messages[i - 1].seq} then ${messages[i].seq})`);
  }
}

const texts = (list) => list.map((m) => m.text);

eachBackend((backend) => {
  test('server restart: the client reconnects by itself and recovers what was sent meanwhile (more than a page) once, in order; what it queued is sent once', { timeout: 180_000 }, async () => {
    const server = await startServer({ backend });
    try {
      const alice = client(server.wsUrl, { name: 'alice', sendTimeout: 0 });
      const got = collect(alice);
      const states = [];
      alice.on('state', (s) => states.push(s));
      await alice.ready;
      await alice.join('lobby');
      await alice.join('ops');
      await seed(server.wsUrl, 'lobby', ['before the restart'], 'bob');
      await waitFor(() => got('lobby').length === 1, { what: 'the first message' });

      // 1. The server goes away; alice queues sends; she is held offline (as a page in the
      //    background) while the server comes back and others talk.
      await server.stop();
      await waitFor(() => alice.state === 'reconnecting', { what: 'reconnecting' });
      const queued = [
        alice.send('lobby', 'typed while down 1'),
        alice.send('lobby', 'typed while down 2'),
        alice.send('ops', 'typed in ops while down'),
      ];
      await waitFor(() => states.filter((s) => s.state === 'reconnecting').length >= 3, { what: 'three attempts' });
      alice.disconnect();
      await server.start();
      const missed = Array.from({ length: 120 }, (_, i) => `missed ${String(i).padStart(3, '0')}`);
      await seed(server.wsUrl, 'lobby', missed, 'carol');
      await seed(server.wsUrl, 'ops', ['missed in ops'], 'carol');
      await alice.connect();
      const acks = await Promise.all(queued);
      assert.deepEqual(acks.map((a) => a.type), ['ack', 'ack', 'ack']);
      await waitFor(() => got('lobby').length === 1 + 120 + 2 && got('ops').length === 2, { what: 'every message' });
      assert.deepEqual(texts(got('lobby')), ['before the restart', ...missed, 'typed while down 1', 'typed while down 2']);
      assert.deepEqual(texts(got('ops')), ['missed in ops', 'typed in ops while down']);
      assertOnceInSeqOrder(got('lobby'), 'lobby');
      assert.ok(got('lobby').slice(1, 121).every((m) => m.recovered === true), 'the missed ones came from the recovery');

      // 2. A second restart, nothing held: the client finds the server again by itself.
      await server.stop();
      await waitFor(() => alice.state === 'reconnecting', { what: 'reconnecting' });
      const during = alice.send('lobby', 'typed during the second outage');
      await server.start();
      await seed(server.wsUrl, 'lobby', ['after the second restart'], 'bob');
      await during;
      await waitFor(() => texts(got('lobby')).includes('after the second restart')
        && texts(got('lobby')).includes('typed during the second outage'), { what: 'the second outage\'s messages' });
      assertOnceInSeqOrder(got('lobby'), 'lobby');

      const stored = texts(await storedHistory(server.wsUrl, 'lobby'));
      for (const t of ['typed while down 1', 'typed while down 2', 'typed during the second outage']) {
        assert.equal(count(stored, t), 1, `"${t}" stored once`);
      }
      assert.deepEqual(texts(got('lobby')), stored, 'alice holds exactly what the server stored, in its order');
    } finally {
      await server.cleanup();
    }
  });

  test('a killed connection (TCP cut, no close frame): reconnect, recovery, and a send whose ack was lost is not sent twice', { timeout: 180_000 }, async () => {
    const server = await startServer({ backend });
    const proxy = await startProxy(`ws://127.0.0.1:${server.port}`);
    try {
      const alice = client(proxy.wsUrl, { name: 'alice', sendTimeout: 0 });
      const got = collect(alice);
      await alice.ready;
      await alice.join('lobby');
      const bob = await rawClient(server.wsUrl, 'bob');
      const bobSees = (text) => bob.frames.some((f) => f.type === 'message' && f.text === text);

      // 1. Echo and ack of alice's message are lost; the connection is cut: the recovery finds
      //    the message stored (by its clientMsgId), so it is not sent again.
      proxy.toClient = (f) => !(f && (f.type === 'ack' || (f.type === 'message' && f.text === 'ack lost')));
      const first = alice.send('lobby', 'ack lost');
      await waitFor(() => bobSees('ack lost'), { what: 'bob sees it' });
      await sleep(100);
      proxy.toClient = null;
      proxy.cut();
      const ack1 = await first;
      assert.equal(ack1.recovered, true, 'settled from the recovery');
      await waitFor(() => texts(got('lobby')).includes('ack lost'), { what: 'alice shows it' });

      // 2. The frame never reached the server; the connection is cut: sent again, with the
      //    same clientMsgId, on the next connection.
      let dropped = null;
      proxy.toServer = (f) => {
        if (f?.action === 'sendMessage' && f.text === 'never arrived' && !dropped) {
          dropped = f;
          return false;
        }
        return undefined;
      };
      const second = alice.send('lobby', 'never arrived');
      await waitFor(() => dropped, { what: 'the dropped frame' });
      proxy.toServer = null;
      proxy.cut();
      const ack2 = await second;
      assert.equal(ack2.clientMsgId, dropped.clientMsgId);
      const sends = proxy.fromClients.filter((f) => f.action === 'sendMessage' && f.text === 'never arrived');
      assert.equal(sends.length, 2);
      assert.equal(sends[1].clientMsgId, sends[0].clientMsgId, 'resent with the same clientMsgId');
      assert.equal(proxy.fromClients.filter((f) => f.action === 'sendMessage' && f.text === 'ack lost').length, 1);

      // 3. Away while bob talks: the missed messages come once, in order.
      proxy.down();
      await waitFor(() => alice.state === 'reconnecting', { what: 'reconnecting' });
      await bob.sendAll('lobby', ['while cut 1', 'while cut 2', 'while cut 3']);
      proxy.up();
      await waitFor(() => texts(got('lobby')).includes('while cut 3'), { what: 'the missed messages' });

      const stored = texts(await storedHistory(server.wsUrl, 'lobby'));
      assert.deepEqual(stored, ['ack lost', 'never arrived', 'while cut 1', 'while cut 2', 'while cut 3']);
      assert.deepEqual(texts(got('lobby')), stored);
      assertOnceInSeqOrder(got('lobby'), 'lobby');
      const rejoins = proxy.fromClients.filter((f) => f.action === 'joinRoom' && f.room === 'lobby' && f.sinceSeq !== undefined);
      assert.equal(rejoins.length, 3, 'each reconnect recovered by sinceSeq');
      await bob.close();
    } finally {
      await proxy.close();
      await server.cleanup();
    }
  });

  test('events that arrive out of seq order are given in seq order; one that never arrives is fetched and given once', { timeout: 120_000 }, async () => {
    const server = await startServer({ backend });
    const proxy = await startProxy(`ws://127.0.0.1:${server.port}`);
    try {
      const alice = client(proxy.wsUrl, { name: 'alice', gapTimeout: 300 });
      const got = collect(alice);
      await alice.ready;
      await alice.join('order');
      const bob = await rawClient(server.wsUrl, 'bob');
      await bob.join('order');

      // "one" is held back until "two" has been delivered: alice receives 2 before 1 (as two
      // fan-outs on AWS may interleave), and gives 1 then 2.
      let held = null;
      let conn = null;
      proxy.toClient = (f, c, text) => {
        if (f?.type === 'message' && f.text === 'one') {
          held = text;
          conn = c;
          return false;
        }
        if (f?.type === 'message' && f.text === 'two') {
          setTimeout(() => conn.client.send(held), 50);
        }
        // "four" never reaches alice: the gap before "five" is fetched (history afterSeq).
        if (f?.type === 'message' && f.text === 'four') return false;
        return undefined;
      };
      await bob.sendAll('order', ['one', 'two', 'three']);
      await waitFor(() => got('order').length === 3, { what: 'three messages' });
      assert.deepEqual(texts(got('order')), ['one', 'two', 'three']);
      await bob.sendAll('order', ['four', 'five']);
      await waitFor(() => got('order').length === 5, { what: 'five messages' });
      assert.deepEqual(texts(got('order')), ['one', 'two', 'three', 'four', 'five']);
      assert.equal(got('order')[3].recovered, true, '"four" came from the gap\'s fetch');
      assertOnceInSeqOrder(got('order'), 'order');
      const fetches = proxy.fromClients.filter((f) => f.action === 'history' && f.afterSeq !== undefined);
      assert.equal(fetches.length, 1, 'one fetch of the gap');
      assert.equal(fetches[0].afterSeq, got('order')[2].seq);
      await bob.close();
    } finally {
      await proxy.close();
      await server.cleanup();
    }
  });

  test('messages that arrive live while a rejoin is being answered are given once, not again from the recovery page', { timeout: 120_000 }, async () => {
    const server = await startServer({ backend });
    const proxy = await startProxy(`ws://127.0.0.1:${server.port}`);
    try {
      const alice = client(proxy.wsUrl, { name: 'alice' });
      const got = collect(alice);
      await alice.ready;
      await alice.join('lobby');
      const bob = await rawClient(server.wsUrl, 'bob');
      await bob.sendAll('lobby', ['before']);
      await waitFor(() => got('lobby').length === 1, { what: 'the first message' });
      // After the cut, the rejoin (joinRoom with sinceSeq) is held back while bob's messages
      // reach alice live (lobby holds every connection from its start); then it goes, and its
      // page holds them again.
      let releaseJoined = null;
      proxy.toServer = (f, c, text) => {
        if (f?.action === 'joinRoom' && f.room === 'lobby' && f.sinceSeq !== undefined && !releaseJoined) {
          releaseJoined = () => c.upstream.send(text);
          return false;
        }
        return undefined;
      };
      proxy.cut();
      await waitFor(() => releaseJoined, { what: 'the held rejoin' });
      await bob.sendAll('lobby', ['live 1', 'live 2']);
      await waitFor(() => got('lobby').length === 3, { what: 'the live messages' });
      assert.deepEqual(texts(got('lobby')), ['before', 'live 1', 'live 2']);
      const rejoined = new Promise((resolve) => alice.once('joined', resolve));
      releaseJoined();
      const ev = await rejoined;
      assert.deepEqual(ev.reply.events.map((e) => e.text), ['live 1', 'live 2'], 'the page holds them again');
      await alice.send('lobby', 'after the rejoin');
      await waitFor(() => got('lobby').length >= 4, { what: 'the last message' });
      await sleep(200);
      assert.deepEqual(texts(got('lobby')), ['before', 'live 1', 'live 2', 'after the rejoin']);
      assertOnceInSeqOrder(got('lobby'), 'lobby');
      await bob.close();
    } finally {
      await proxy.close();
      await server.cleanup();
    }
  });
});
