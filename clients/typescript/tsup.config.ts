import { defineConfig } from 'tsup';

// ESM (dist/index.js + index.d.ts) and CommonJS (dist/index.cjs + index.d.cts): package.json's
// `exports` maps `import` and `require` to them; `npm run attw` checks the packed result.
export default defineConfig({
  entry: ['src/index.ts'],
  format: ['esm', 'cjs'],
  dts: true,
  sourcemap: true,
  clean: true,
  target: 'node20',
  platform: 'node',
  splitting: false,
});
