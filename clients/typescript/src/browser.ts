// Entry of the browser bundle: an IIFE exposing the global `Switchboard` (see scripts/build.mjs).
export * from "./index.js";
