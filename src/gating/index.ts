export * from './gating.js';
