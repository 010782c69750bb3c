// The reconnect delay, with an injected random source: no timers, no timing assertions.
'use strict';

const test = require('node:test');
const assert = require('node:assert');
const { backoffDelay, DEFAULT_BACKOFF } = require('../broker-client');

const backoff = { initialMs: 100, maxMs: 1000, factor: 2, jitter: 1 };
const attempts = [1, 2, 3, 4, 5, 6, 7, 20];

test('the ceiling doubles from initialMs and is capped at maxMs', () => {
  // random() = 0 leaves the whole ceiling.
  assert.deepStrictEqual(attempts.map((n) => backoffDelay(n, backoff, () => 0)),
    [100, 200, 400, 800, 1000, 1000, 1000, 1000]);
  assert.deepStrictEqual(attempts.map((n) => backoffDelay(n, { ...backoff, factor: 3 }, () => 0)),
    [100, 300, 900, 1000, 1000, 1000, 1000, 1000]);
});

test('full jitter spreads each delay over [0, ceiling)', () => {
  assert.deepStrictEqual(attempts.map((n) => backoffDelay(n, backoff, () => 0.5)),
    [50, 100, 200, 400, 500, 500, 500, 500]);
  assert.deepStrictEqual(attempts.map((n) => backoffDelay(n, backoff, () => 0.999)),
    [0, 0, 0, 1, 1, 1, 1, 1]);
  // Different random draws give different delays for the same attempt: clients spread out.
  const draws = [0.1, 0.4, 0.7].map((r) => backoffDelay(4, backoff, () => r));
  assert.deepStrictEqual(draws, [720, 480, 240]);
});

test('partial jitter keeps the delay in [ceiling * (1 - jitter), ceiling]', () => {
  const half = { ...backoff, jitter: 0.5 };
  for (const n of attempts) {
    const ceiling = backoffDelay(n, backoff, () => 0);
    assert.strictEqual(backoffDelay(n, half, () => 0), ceiling);
    assert.strictEqual(backoffDelay(n, half, () => 0.999), Math.round(ceiling * 0.5005));
  }
  assert.strictEqual(backoffDelay(3, { ...backoff, jitter: 0 }, () => 0.7), 400, 'no jitter: exactly the ceiling');
});

test('the defaults start at half a second and stop at 30 s', () => {
  assert.strictEqual(backoffDelay(1, DEFAULT_BACKOFF, () => 0), 500);
  assert.strictEqual(backoffDelay(50, DEFAULT_BACKOFF, () => 0), 30000);
  assert.ok(Number.isFinite(backoffDelay(5000, DEFAULT_BACKOFF, () => 0)), 'a huge attempt count stays capped');
});
