// Calls and events against the real server: replies correlated by requestId, typed events, error
// replies as ChatError with the protocol's code, timeouts, API Gateway's error frame.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { ChatClient, ChatError } from '../src/index.js';
import {
  eachBackend, startServer, startProxy, client, nextEvent, rawClient, storedHistory, count, sleep, waitFor,
} from './support.mjs';

eachBackend((backend) => {
  let server;
  before(async () => { server = await startServer({ backend }); });
  after(async () => { await server?.cleanup(); });

  test('connect, join, send: the ack resolves the call, every member gets the message event', { timeout: 60_000 }, async () => {
    const alice = new ChatClient({ url: server.wsUrl, name: 'alice', WebSocket });
    const states = [];
    alice.on('state', (s) => states.push(s.state));
    assert.equal(alice.state, 'disconnected');
    alice.connect();
    const bob = client(server.wsUrl, { name: 'bob' });
    await alice.ready;
    await bob.ready;
    assert.equal(alice.state, 'connected');
    assert.deepEqual(states, ['connecting', 'connected']);
    const joined = await alice.join('calls');
    assert.equal(joined.type, 'joined');
    assert.equal(joined.room, 'calls');
    assert.ok(Number.isInteger(joined.seq));
    await bob.join('calls');
    const onBob = nextEvent(bob, 'message', (m) => m.room === 'calls');
    const onAlice = nextEvent(alice, 'message', (m) => m.room === 'calls');
    const ack = await alice.send('calls', 'hello from alice');
    assert.equal(ack.type, 'ack');
    assert.match(ack.id, /^[0-9a-f-]{36}$/);
    assert.ok(Number.isInteger(ack.seq));
    assert.ok(typeof ack.clientMsgId === 'string' && ack.clientMsgId.length > 0, 'a clientMsgId is made for every send');
    const m = await onBob;
    assert.equal(m.text, 'hello from alice');
    assert.equal(m.id, ack.id);
    assert.equal(m.seq, ack.seq);
    assert.equal(m.sender.name, 'alice');
    assert.equal((await onAlice).id, ack.id, 'the sender gets its own message too');

    const members = await alice.members('calls');
    assert.deepEqual(members.members.map((x) => x.name).sort(), ['alice', 'bob']);
    const history = await bob.history('calls', { limit: 10 });
    assert.deepEqual(history.messages.map((x) => x.text), ['hello from alice']);

    // typing and presence
    const typing = nextEvent(bob, 'typing', (t) => t.room === 'calls');
    assert.equal(alice.typing('calls'), true);
    assert.equal((await typing).member.name, 'alice');
    const carol = client(server.wsUrl, { name: 'carol' });
    const presence = nextEvent(alice, 'presence', (p) => p.room === 'calls' && p.member.name === 'carol');
    await carol.join('calls');
    assert.equal((await presence).event, 'join');
    const leave = nextEvent(alice, 'presence', (p) => p.room === 'calls' && p.event === 'leave');
    assert.equal((await carol.leave('calls')).type, 'left');
    assert.equal((await leave).member.name, 'carol');
    assert.deepEqual(carol.roomNames, ['lobby']);

    // edit, react, delete: replies, and events with their seq to every member
    const updated = nextEvent(bob, 'messageUpdated', (u) => u.id === ack.id);
    const up = await alice.edit('calls', ack.id, 'hello, edited');
    assert.equal(up.type, 'updated');
    assert.equal((await updated).text, 'hello, edited');
    const reactions = nextEvent(bob, 'reactions', (r) => r.id === ack.id);
    assert.equal((await bob.react('calls', ack.id, '👍')).type, 'reacted');
    assert.deepEqual((await reactions).reactions, { '👍': { count: 1 } });
    const unreacted = nextEvent(alice, 'reactions', (r) => r.id === ack.id && !r.reactions['👍']);
    await bob.unreact('calls', ack.id, '👍');
    await unreacted;
    const deleted = nextEvent(bob, 'messageDeleted', (d) => d.id === ack.id);
    assert.equal((await alice.delete('calls', ack.id)).type, 'deleted');
    assert.equal((await deleted).room, 'calls');
    const read = await bob.markRead('calls', ack.id);
    assert.equal(read.type, 'read');
    const rooms = await bob.rooms();
    assert.deepEqual(rooms.rooms.map((r) => r.room), ['lobby', 'calls']);
    assert.equal((await bob.ping()).type, 'pong');
    // The seqs of the room's events, given in order to bob.
    assert.ok(bob.syncedSeq('calls') >= up.seq);
    alice.close();
  });

  test('error replies reject with a ChatError carrying the protocol code; the connection goes on', { timeout: 60_000 }, async () => {
    const alice = client(server.wsUrl, { name: 'alice-err' });
    const bob = client(server.wsUrl, { name: 'bob-err' });
    await alice.ready;
    await bob.ready;
    await assert.rejects(alice.join('no spaces!'), (e) => e instanceof ChatError && e.code === 'bad_request'
      && e.action === 'joinRoom' && typeof e.requestId === 'string');
    assert.ok(!alice.roomNames.includes('no spaces!'), 'a refused join is not kept');
    await assert.rejects(alice.history('elsewhere'), { code: 'not_member', room: 'elsewhere' });
    await assert.rejects(alice.request('dance'), { code: 'unknown_action' });
    await assert.rejects(alice.send('elsewhere', 'x'), { code: 'not_member', local: true });
    await assert.rejects(alice.send('lobby', 'x'.repeat(4001)), { code: 'payload_too_large' });
    await assert.rejects(alice.send('lobby', '😀'.repeat(9000)), (e) => e.code === 'payload_too_large' && e.local === true);
    const ack = await bob.send('lobby', 'bob writes this');
    await assert.rejects(alice.edit('lobby', ack.id, 'not yours'), { code: 'forbidden' });
    await assert.rejects(alice.delete('lobby', '0190a3d2-0000-7000-8000-000000000000'), { code: 'bad_request' });
    // An error frame that answers nothing of ours is an `error` event.
    const errorEvent = nextEvent(alice, 'error');
    alice._receive({ type: 'error', code: 'internal', message: 'internal error' });
    assert.equal((await errorEvent).code, 'internal');
    assert.equal(alice.state, 'connected');
    assert.equal((await alice.send('lobby', 'still here')).type, 'ack');
  });

  test('a call whose reply never comes is rejected with timeout; later calls work', { timeout: 60_000 }, async () => {
    const proxy = await startProxy(`ws://127.0.0.1:${server.port}`);
    try {
      const alice = client(proxy.wsUrl, { name: 'alice-to', timeout: 800 });
      await alice.ready;
      await alice.join('lobby');
      proxy.toClient = (f) => f?.type !== 'members';
      const t0 = Date.now();
      await assert.rejects(alice.members('lobby'), (e) => e instanceof ChatError && e.code === 'timeout' && e.action === 'members');
      assert.ok(Date.now() - t0 >= 700, 'after the timeout');
      proxy.toClient = null;
      assert.equal((await alice.members('lobby')).type, 'members');
      // A late reply to a timed-out call changes nothing.
      assert.equal(alice.state, 'connected');
      // A call made while offline waits for the connection, within its timeout.
      proxy.down();
      await waitFor(() => alice.state === 'reconnecting', { what: 'reconnecting' });
      await assert.rejects(alice.members('lobby', { timeout: 300 }), { code: 'timeout' });
      const later = alice.members('lobby', { timeout: 20_000 });
      proxy.up();
      assert.equal((await later).type, 'members');
    } finally {
      await proxy.close();
    }
  });

  test("API Gateway's error frame fails every waiting call; a retry with the same clientMsgId is stored once", { timeout: 60_000 }, async () => {
    const proxy = await startProxy(`ws://127.0.0.1:${server.port}`);
    try {
      const alice = client(proxy.wsUrl, { name: 'alice-gw' });
      await alice.ready;
      await alice.join('gw');
      let exploded = false;
      proxy.toServer = (f, conn) => {
        if (!exploded && f?.action === 'sendMessage' && f.text === 'explode') {
          exploded = true;
          conn.client.send('{"message": "Internal server error", "connectionId":"L0SM9cOFvHcCIhw=", "requestId":"Qyi3UG41tjMFlUg="}');
          return false;
        }
        return undefined;
      };
      const errorEvent = nextEvent(alice, 'error', (e) => e.gateway === true);
      const err = await alice.send('gw', 'explode').catch((e) => e);
      assert.ok(err instanceof ChatError);
      assert.equal(err.code, 'internal');
      assert.equal(err.gateway, true);
      assert.ok(err.clientMsgId);
      await errorEvent;
      assert.equal(alice.state, 'connected');
      const ack = await alice.send('gw', 'explode', { clientMsgId: err.clientMsgId });
      assert.equal(ack.clientMsgId, err.clientMsgId);
      // And once more (a retry of a stored one): the same ack, nothing stored twice.
      const again = await alice.send('gw', 'explode', { clientMsgId: err.clientMsgId });
      assert.equal(again.id, ack.id);
      const stored = (await storedHistory(server.wsUrl, 'gw')).map((m) => m.text);
      assert.equal(count(stored, 'explode'), 1);
    } finally {
      await proxy.close();
    }
  });

  test('close() rejects what waits and stops for good; a bad address fails the first connect', { timeout: 60_000 }, async () => {
    const alice = client(server.wsUrl, { name: 'alice-close' });
    await alice.ready;
    alice.disconnect();
    assert.equal(alice.state, 'disconnected');
    const queued = alice.send('lobby', 'never sent');
    const asked = alice.members('lobby');
    alice.close();
    await assert.rejects(queued, { code: 'closed' });
    await assert.rejects(asked, { code: 'closed' });
    assert.equal(alice.state, 'closed');
    await assert.rejects(alice.connect(), { code: 'closed' });

    const wrong = new ChatClient({ url: `ws://127.0.0.1:${server.port}/not-a-stage`, name: 'x', WebSocket });
    const states = [];
    wrong.on('state', (s) => states.push(s.state));
    wrong.connect();
    await assert.rejects(wrong.ready, (e) => e instanceof ChatError && e.code === 'connect_failed');
    assert.equal(wrong.state, 'closed');
    await sleep(700);
    assert.deepEqual(states, ['connecting', 'closed'], 'no retry of a first connection that failed');

    const raw = await rawClient(server.wsUrl, 'raw');
    await raw.close();
  });
});
