import { defineConfig } from 'vitest/config';

// One real `srl serve` for the whole run (test/global-setup.ts); files run one after another so
// the single llama.cpp worker is not shared by several test files at once.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/global-setup.ts'],
    fileParallelism: false,
    pool: 'forks',
    testTimeout: 180_000,
    hookTimeout: 60_000,
  },
});
