// Validates docs/asyncapi.yaml: the AsyncAPI parser's diagnostics (any error fails), then that
// every payload compiles as a JSON Schema under Ajv's strict mode, that each client action and
// server frame is named once by its `action` or `type` const, and that every example of a
// message conforms to its payload.
// Usage: node validate.mjs [path/to/asyncapi.yaml]
import { fileURLToPath } from 'node:url';
import { parseDocument, buildValidators, describeErrors } from './schemas.mjs';

const path = process.argv[2] ?? fileURLToPath(new URL('../asyncapi.yaml', import.meta.url));
const { document, errors, diagnostics } = await parseDocument(path);
for (const line of diagnostics) console.log(line);
if (errors.length > 0 || !document) {
  console.error(`${path}: ${errors.length} error(s) from the AsyncAPI parser`);
  process.exit(1);
}

let failures = 0;
const fail = (message) => {
  failures += 1;
  console.error(message);
};
let validators;
try {
  validators = buildValidators(document);
} catch (e) {
  console.error(`${path}: a payload is not a valid JSON Schema for Ajv (strict): ${e.message}`);
  process.exit(1);
}
const { actions, frames } = validators;

for (const [list, field] of [[actions, 'action'], [frames, 'type']]) {
  const seen = new Map();
  for (const message of list) {
    const d = message.discriminator;
    // The gateway's failure frame is the one server frame without `type`.
    if (d === null && !(field === 'type' && message.name === 'internalServerError')) {
      fail(`${message.key}: its payload has no const ${field}`);
    }
    if (d !== null && message.name !== d) {
      fail(`${message.key}: named ${message.name} but its ${field} is ${d}`);
    }
    if (seen.has(d)) fail(`${message.key} and ${seen.get(d)} have the same ${field} ${d}`);
    seen.set(d, message.key);
    if (message.examples.length === 0) fail(`${message.key}: no example`);
    for (const example of message.examples) {
      if (!message.validate(example.payload)) {
        fail(`${message.key}: example ${example.name} does not conform:\n` +
          describeErrors(message.validate.errors));
      }
      for (const other of list) {
        if (other !== message && other.validate(example.payload)) {
          fail(`${message.key}: example ${example.name} also conforms to ${other.key}`);
        }
      }
    }
  }
}
if (failures > 0) {
  console.error(`${path}: ${failures} problem(s)`);
  process.exit(1);
}
const examples = [...actions, ...frames].reduce((n, m) => n + m.examples.length, 0);
console.log(`${path}: valid AsyncAPI ${document.version()}: ${actions.length} client actions, ` +
  `${frames.length} server frames, ${examples} examples conform`);
