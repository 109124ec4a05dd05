// Parses Mermaid diagrams with Mermaid's own parser (mermaid.parse), headless:
// jsdom stands in for the browser, so no browser is downloaded.
//
//   node check-mermaid.mjs diagram.mmd...
//
// Run from the tools directory that scripts/validate-renderings.sh installs.
import fs from 'node:fs';
import { JSDOM } from 'jsdom';

const dom = new JSDOM('<!doctype html><html><body></body></html>');
globalThis.window = dom.window;
globalThis.document = dom.window.document;
const { default: mermaid } = await import('mermaid');
mermaid.initialize({ startOnLoad: false });

let failed = 0;
const files = process.argv.slice(2);
if (files.length === 0) {
  console.error('no diagrams given');
  process.exit(2);
}
for (const file of files) {
  const text = fs.readFileSync(file, 'utf8');
  try {
    const result = await mermaid.parse(text);
    if (result.diagramType !== 'flowchart-v2') {
      failed++;
      console.log(`FAIL ${file}: parsed as ${result.diagramType}, expected a flowchart`);
    } else {
      console.log(`ok   ${file}: valid Mermaid ${result.diagramType}`);
    }
  } catch (e) {
    failed++;
    console.log(`FAIL ${file}: ${e.message}`);
  }
}
process.exit(failed ? 1 : 0);
