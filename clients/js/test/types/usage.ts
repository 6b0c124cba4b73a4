// Compiled (not run) by package.test.mjs: index.d.ts describes what an application writes.
import { connect, ChatClient, ChatError, type Ack, type MessageEvent, type StateChange } from '../../index.js';

declare const WS: new (url: string) => any;

async function main(): Promise<void> {
  const client: ChatClient = connect({ url: 'ws://127.0.0.1:8080/dev', name: 'ada', WebSocket: WS, timeout: 5000 });
  const off = client.on('message', (m: MessageEvent) => {
    const text: string | undefined = m.text;
    const seq: number | undefined = m.seq;
    void text; void seq; void m.recovered;
  });
  off();
  client.on('state', (s: StateChange) => { if (s.state === 'reconnecting') void s.delay; });
  client.on('error', (e) => { const code: string = e.code; void code; });
  client.on('joined', (j) => { void j.reply.members; void j.rejoin; });
  await client.ready;
  const joined = await client.join('ops');
  void joined.history?.[0]?.id;
  try {
    const ack: Ack = await client.send('ops', 'hello', { clientMsgId: 'x-1' });
    await client.edit('ops', ack.id, 'hello again');
    await client.react('ops', ack.id, '👍');
    await client.markRead('ops', ack.id);
    const page = await client.history('ops', { afterSeq: ack.seq ?? 0, limit: 10 });
    void page.events;
  } catch (e) {
    if (e instanceof ChatError && e.code === 'rate_limited') void e.clientMsgId;
  }
  const rooms = await client.rooms();
  void rooms.rooms.map((r) => r.unread);
  const dm = await client.openDirect('u-bob');
  void dm.room;
  client.typing('ops');
  await client.request<{ type: 'pong' }>('ping');
  client.close();
}
void main;
