// Checks every frame that the end-to-end suite's clients sent and received (the log that
// CHAT_FRAME_LOG makes, see crates/chat-local/tests/e2e/support.rs) against docs/asyncapi.yaml.
//
// - A received frame must conform to exactly one server frame of the `receive` operation, the
//   one its `type` names (the gateway's failure frame is the one without `type`). A frame whose
//   `type` is given with --foreign-type is not the protocol's (the tests post such frames
//   through the management API, which sends any body) and is only counted.
// - A sent frame that is JSON with a known `action` must conform to that action's schema, unless
//   it is one of the suite's malformed frames: those the schema refuses must be refused by the
//   server too, that is, the same client received an `error` with code `bad_request` or
//   `payload_too_large` for it (echoing its `requestId` when it had a valid one), or the frame
//   was over 32 KiB (the gateway closes the connection with 1009 without reading it). Sent frames
//   that are not JSON, not objects or name no known action are counted and skipped.
// - An empty or missing log fails: a check that checked nothing is a failure.
//
// Usage: node check-frames.mjs [--doc docs/asyncapi.yaml] [--foreign-type TYPE]... LOG...
import { createReadStream, existsSync, statSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseDocument, buildValidators, describeErrors } from './schemas.mjs';

const FRAME_LIMIT = 32 * 1024;
const REFUSAL_CODES = new Set(['bad_request', 'payload_too_large']);
const MAX_SHOWN = 20;

let docPath = fileURLToPath(new URL('../asyncapi.yaml', import.meta.url));
const foreignTypes = new Set();
const logs = [];
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--doc') docPath = args[++i];
  else if (args[i] === '--foreign-type') foreignTypes.add(args[++i]);
  else logs.push(args[i]);
}
if (logs.length === 0) {
  console.error('usage: node check-frames.mjs [--doc FILE] [--foreign-type TYPE]... LOG...');
  process.exit(2);
}
for (const log of logs) {
  if (!existsSync(log) || statSync(log).size === 0) {
    console.error(`${log}: missing or empty: no frame was recorded, so nothing was checked`);
    process.exit(1);
  }
}

const { document, errors } = await parseDocument(docPath);
if (errors.length > 0 || !document) {
  console.error(`${docPath} does not parse; run validate.mjs`);
  process.exit(1);
}
const { actions, frames } = buildValidators(document);
const actionByName = new Map(actions.map((m) => [m.discriminator, m]));
const frameByType = new Map(frames.map((m) => [m.discriminator, m]));

const count = (map, key) => map.set(key, (map.get(key) ?? 0) + 1);
const received = new Map();
const foreign = new Map();
const sent = new Map();
const refusedAsExpected = new Map();
const skipped = new Map();
let overLimit = 0;
let otherRefusals = 0;
let lines = 0;
const failures = [];
// Per client: its sent frames that the schema refuses, waiting for the server's refusal.
const pending = new Map();

const shorten = (value) => {
  const text = typeof value === 'string' ? value : JSON.stringify(value);
  return text.length > 600 ? `${text.slice(0, 600)}... (${text.length} characters)` : text;
};
const fail = (where, what, frame, details = '') => {
  failures.push(`${where}: ${what}\n    frame: ${shorten(frame)}${details ? '\n' + details : ''}`);
};
// The requestId an error echoes: a string of at most 64 code points, else none.
const echoKey = (frame) =>
  typeof frame.requestId === 'string' && [...frame.requestId].length <= 64
    ? frame.requestId
    : null;
const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

function checkReceived(where, client, entry) {
  if (!('frame' in entry)) {
    fail(where, 'the server sent a frame that is not JSON', entry.raw);
    return;
  }
  const frame = entry.frame;
  if (!isObject(frame)) {
    fail(where, 'the server sent a frame that is not a JSON object', frame);
    return;
  }
  if (typeof frame.type === 'string' && foreignTypes.has(frame.type)) {
    count(foreign, frame.type);
    return;
  }
  const selected = 'type' in frame ? frameByType.get(frame.type) : frameByType.get(null);
  const matches = frames.filter((m) => m.validate(frame));
  if (!selected) {
    fail(where, `no server frame of type ${JSON.stringify(frame.type)} in the document`, frame);
  } else if (!matches.includes(selected)) {
    selected.validate(frame);
    fail(where, `does not conform to ${selected.key}`, frame, describeErrors(selected.validate.errors));
  } else if (matches.length > 1) {
    fail(where, `conforms to several server frames: ${matches.map((m) => m.key).join(', ')}`, frame);
  } else {
    count(received, selected.name);
  }
  if (frame.type === 'error' && REFUSAL_CODES.has(frame.code)) {
    const waiting = pending.get(client) ?? [];
    const key = typeof frame.requestId === 'string' ? frame.requestId : null;
    const at = waiting.findIndex((p) => p.key === key);
    if (at >= 0) {
      const [refused] = waiting.splice(at, 1);
      count(refusedAsExpected, refused.action);
    } else {
      otherRefusals += 1;
    }
  }
}

function checkSent(where, client, entry) {
  if (!('frame' in entry)) {
    count(skipped, 'not JSON');
    return;
  }
  const frame = entry.frame;
  if (!isObject(frame)) {
    count(skipped, 'not a JSON object');
    return;
  }
  const action = actionByName.get(typeof frame.action === 'string' ? frame.action : undefined);
  if (!action) {
    count(skipped, 'no known action');
    return;
  }
  if (action.validate(frame)) {
    count(sent, action.name);
    return;
  }
  if (entry.bytes > FRAME_LIMIT) {
    overLimit += 1;
    return;
  }
  const waiting = pending.get(client) ?? [];
  waiting.push({
    key: echoKey(frame),
    action: action.name,
    where,
    frame,
    errors: describeErrors(action.validate.errors),
  });
  pending.set(client, waiting);
}

for (const log of logs) {
  const input = createInterface({ input: createReadStream(log), crlfDelay: Infinity });
  let number = 0;
  for await (const line of input) {
    number += 1;
    if (line.trim() === '') continue;
    lines += 1;
    const where = `${log}:${number}`;
    let entry;
    try {
      entry = JSON.parse(line);
    } catch (e) {
      fail(where, `the log line is not JSON (${e.message})`, line);
      continue;
    }
    const client = `${log}#${entry.client}`;
    if (entry.dir === 'in') checkReceived(where, client, entry);
    else if (entry.dir === 'out') checkSent(where, client, entry);
    else fail(where, `the log line has no dir "in" or "out"`, line);
  }
}
for (const waiting of pending.values()) {
  for (const p of waiting) {
    fail(p.where, `${p.action}: a frame that its schema refuses, but the server did not refuse ` +
      `it (no bad_request or payload_too_large error for it on that client)`, p.frame, p.errors);
  }
}

const listed = (map) =>
  [...map.entries()].sort((a, b) => b[1] - a[1]).map(([k, n]) => `${k} ${n}`).join(', ') || 'none';
const total = (map) => [...map.values()].reduce((a, b) => a + b, 0);
console.log(`frame check of ${logs.join(', ')} against ${docPath}: ${lines} frames`);
console.log(`  received, conforming: ${total(received)} (${listed(received)})`);
if (foreign.size > 0) {
  console.log(`  received, not the protocol's (--foreign-type): ${total(foreign)} (${listed(foreign)})`);
}
console.log(`  sent, conforming: ${total(sent)} (${listed(sent)})`);
console.log(`  sent, malformed on purpose and refused by the server: ${total(refusedAsExpected)} ` +
  `(${listed(refusedAsExpected)}); over 32 KiB, closed unread: ${overLimit}`);
console.log(`  sent, skipped: ${total(skipped)} (${listed(skipped)})`);
const unseen = [
  ...frames.filter((m) => !received.has(m.name)).map((m) => m.name),
  ...actions.filter((m) => !sent.has(m.name)).map((m) => `${m.name} (action)`),
];
console.log(`  in the document but not seen conforming in this log: ${unseen.join(', ') || 'none'}`);
console.log(`  bad_request or payload_too_large errors for frames the schemas accept or cannot ` +
  `judge (unknown action, not JSON, a rule no schema holds): ${otherRefusals}`);
if (failures.length > 0) {
  for (const f of failures.slice(0, MAX_SHOWN)) console.error(f);
  if (failures.length > MAX_SHOWN) console.error(`... and ${failures.length - MAX_SHOWN} more`);
  console.error(`${failures.length} frame(s) do not conform to ${docPath}`);
  process.exit(1);
}
if (total(received) === 0 || total(sent) === 0) {
  console.error('no received or no sent frame was checked: a check that checked nothing fails');
  process.exit(1);
}
console.log(`${total(received) + total(sent)} frames conform, 0 do not`);
