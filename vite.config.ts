import { defineConfig } from 'vite';

// The page lives in web/; its build goes to dist/ (served by `npm start`, tested by tests/e2e/).
// web/pkg/ is the wasm-bindgen output of scripts/build-wasm.sh (git-ignored).
export default defineConfig({
  root: 'web',
  base: './',
  publicDir: 'public',
  build: {
    outDir: '../dist',
    emptyOutDir: true,
    target: 'es2022',
    // The wasm is an asset of its own (streamed and compiled by the browser), never inlined.
    assetsInlineLimit: 0,
  },
  worker: { format: 'es' },
  server: { fs: { allow: ['..'] } },
});
