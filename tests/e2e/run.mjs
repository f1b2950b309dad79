// Runs every tests/e2e/*.test.mjs with node's test runner, one file at a time, prints the usual
// spec output and a closing line "N passed, N failed". Exit status 1 if anything failed.
import { run } from 'node:test';
import { spec } from 'node:test/reporters';
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const files = readdirSync(here)
  .filter((f) => f.endsWith('.test.mjs'))
  .sort()
  .map((f) => join(here, f));

let passed = 0;
let failed = 0;
const stream = run({ files, concurrency: 1 });
stream.on('test:pass', (d) => {
  if (d.details?.type !== 'suite' && !d.skip && !d.todo) passed++;
});
stream.on('test:fail', (d) => {
  if (d.details?.type !== 'suite') failed++;
});
stream.compose(spec).pipe(process.stdout);
await new Promise((ok) => stream.on('end', ok));
// Let the reporter flush before the summary.
await new Promise((ok) => setImmediate(ok));
console.log(`\ne2e: ${passed} passed, ${failed} failed`);
process.exitCode = failed || passed === 0 ? 1 : 0;
