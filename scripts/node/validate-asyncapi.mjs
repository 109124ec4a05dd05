// Validates AsyncAPI documents against the official AsyncAPI 3.0.0 JSON Schema
// shipped in the @asyncapi/specs package, with Ajv.
//
//   node validate-asyncapi.mjs doc.json...
//
// Run from the tools directory that scripts/validate-renderings.sh installs
// (outside the repository), so the packages resolve from there.
import fs from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const specs = require('@asyncapi/specs');
const Ajv = require('ajv');
const addFormats = require('ajv-formats');

const schema = specs.schemas['3.0.0'];
if (!schema) {
  console.error('@asyncapi/specs has no 3.0.0 schema');
  process.exit(2);
}
// The bundled schema carries its own copy of the draft-07 meta-schema, so
// Ajv's built-in copy is left out (it would be ambiguous) and schema
// self-validation is off (the spec's schema is trusted as published).
const ajv = new Ajv({ allErrors: true, strict: false, meta: false, validateSchema: false });
addFormats(ajv);
const validate = ajv.compile(schema);

// Every local "$ref" ("#/a/b") in `doc` that does not resolve.
function dangling(doc) {
  const bad = [];
  const resolve = (ref) => {
    let at = doc;
    for (const raw of ref.slice(2).split('/')) {
      const key = raw.replace(/~1/g, '/').replace(/~0/g, '~');
      if (at === null || typeof at !== 'object' || !(key in at)) return false;
      at = at[key];
    }
    return true;
  };
  const walk = (node) => {
    if (Array.isArray(node)) return node.forEach(walk);
    if (node === null || typeof node !== 'object') return;
    for (const [k, v] of Object.entries(node)) {
      if (k === '$ref' && typeof v === 'string' && v.startsWith('#/') && !resolve(v)) bad.push(v);
      else walk(v);
    }
  };
  walk(doc);
  return bad;
}

let failed = 0;
for (const file of process.argv.slice(2)) {
  const doc = JSON.parse(fs.readFileSync(file, 'utf8'));
  if (doc.asyncapi !== '3.0.0') {
    failed++;
    console.log(`FAIL ${file}: asyncapi is ${JSON.stringify(doc.asyncapi)}, expected "3.0.0"`);
  } else if (!validate(doc)) {
    failed++;
    console.log(`FAIL ${file}:`);
    for (const e of validate.errors.slice(0, 20)) {
      console.log(`  ${e.instancePath || '/'} ${e.message} ${JSON.stringify(e.params)}`);
    }
  } else if (dangling(doc).length > 0) {
    // The JSON Schema checks shapes; a local $ref must also point somewhere.
    failed++;
    console.log(`FAIL ${file}: $ref to nothing: ${dangling(doc).join(', ')}`);
  } else {
    console.log(`ok   ${file}: valid AsyncAPI 3.0.0`);
  }
}
if (process.argv.length <= 2) {
  console.error('no documents given');
  process.exit(2);
}
process.exit(failed ? 1 : 0);
