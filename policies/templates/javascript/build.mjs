// Builds policy.js into a policy component with the componentize-js API:
//   node build.mjs [OUT.wasm]     (default: build/block_package_js.wasm)
// (`jco componentize` on the command line fails with a path error here; the
// API does not.) OPAMP_POLICY_WIT: the WIT folder (default: this
// repository's wit/).
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const wit = resolve(process.env.OPAMP_POLICY_WIT ?? resolve(here, '../../../wit/policy.wit'));
const out = resolve(process.argv[2] ?? resolve(here, 'build/block_package_js.wasm'));

let componentize;
try {
  ({ componentize } = await import('@bytecodealliance/componentize-js'));
} catch (e) {
  console.error(`componentize-js is not installed: run policies/templates/install.sh (or npm ci in ${here})\n${e}`);
  process.exit(1);
}

const { component } = await componentize({
  sourcePath: resolve(here, 'policy.js'),
  witPath: wit,
  worldName: 'gateway-policy',
  // The gateway grants no I/O: leave out what would import it.
  disableFeatures: ['random', 'clocks', 'http', 'fetch-event'],
});
await mkdir(dirname(out), { recursive: true });
await writeFile(out, component);
console.log(`built ${out} (${component.length} bytes)`);
