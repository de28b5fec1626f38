// The browser build of the TypeScript client (clients/typescript), bundled by esbuild.
