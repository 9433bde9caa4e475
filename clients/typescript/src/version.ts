export const VERSION = '0.1.0'; // keep in step with package.json (test/builds.test.ts checks)
