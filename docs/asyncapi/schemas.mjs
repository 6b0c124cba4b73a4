// Loads docs/asyncapi.yaml with the AsyncAPI parser and builds a validator (Ajv, strict) for the
// payload of every message of the `send` (client actions) and `receive` (server frames)
// operations. Shared by validate.mjs and check-frames.mjs.
import { readFile } from 'node:fs/promises';
import { Parser, DiagnosticSeverity } from '@asyncapi/parser';
import Ajv from 'ajv';

const SEVERITY = ['error', 'warning', 'info', 'hint'];

/** Parses the document; returns {document, errors, diagnostics}, diagnostics printable. */
export async function parseDocument(path) {
  const parser = new Parser();
  const source = await readFile(path, 'utf8');
  const { document, diagnostics } = await parser.parse(source, { source: path });
  const shown = diagnostics.map((d) => {
    const where = d.path && d.path.length ? d.path.join('.') : '(document)';
    const line = d.range ? `:${d.range.start.line + 1}` : '';
    return `${SEVERITY[d.severity] ?? d.severity} ${d.code}${line} at ${where}: ${d.message}`;
  });
  const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
  return { document, errors, diagnostics: shown };
}

/** The parser's annotations (`x-parser-schema-id`, ...) are no JSON Schema keywords. */
function stripParserKeys(value) {
  if (Array.isArray(value)) return value.map(stripParserKeys);
  if (value && typeof value === 'object') {
    const out = {};
    for (const [key, inner] of Object.entries(value)) {
      if (!key.startsWith('x-parser-')) out[key] = stripParserKeys(inner);
    }
    return out;
  }
  return value;
}

/**
 * One entry per message of an operation: {key, name, discriminator (its `type` or `action`
 * const, null when it has none), validate, examples}.
 */
function messagesOf(document, operationId, field, ajv) {
  const operation = document.operations().get(operationId);
  if (!operation) throw new Error(`the document has no operation ${operationId}`);
  return operation.messages().all().map((message) => {
    const payload = stripParserKeys(message.payload().json());
    const discriminator = payload.properties?.[field]?.const ?? null;
    const validate = ajv.compile(payload);
    const examples = message.examples().all().map((example) => ({
      name: example.name() ?? '(unnamed)',
      payload: example.payload(),
    }));
    return { key: message.id(), name: message.name(), discriminator, validate, examples };
  });
}

/** Validators of the client actions (`action`) and server frames (`type`). */
export function buildValidators(document) {
  // Strict mode: an unknown keyword (a misspelt one) is an error. Not strictRequired, since
  // JoinedFrame's oneOf requires properties declared beside it, nor strictTypes, since the
  // patterns of DisplayName sit in an allOf without their type. Ajv's defaults give patterns
  // the `u` flag and count lengths in code points, as the server counts characters.
  const ajv = new Ajv({
    allErrors: true,
    strict: true,
    strictRequired: false,
    strictTypes: false,
    allowUnionTypes: true,
  });
  return {
    actions: messagesOf(document, 'send', 'action', ajv),
    frames: messagesOf(document, 'receive', 'type', ajv),
  };
}

/** Ajv's errors, one per line, for a person. */
export function describeErrors(errors) {
  return (errors ?? [])
    .map((e) => `    ${e.instancePath || '(frame)'} ${e.message}${e.params ? ' ' + JSON.stringify(e.params) : ''}`)
    .join('\n');
}
