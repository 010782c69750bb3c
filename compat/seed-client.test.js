// Runs the Users WebSocket API document's own client example, as printed there, against the
// broker: Node, the npm `ws` package, socket URL ws://localhost:8020 and origin "trusted-host".
//
// The example's code blocks are taken from the document (seed/users-websocket-api.md) and the
// document's two known typos are fixed (`wsClient..on(` and the missing `)` after
// `wsClient.send(...)`); nothing else is changed. The first block (connect) runs as soon as the
// broker is up; the second (send an echo) runs once the socket is open, since `ws` refuses to
// send before then. The test's own listeners observe what the example's code does.
'use strict';

const test = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const vm = require('node:vm');
const { spawn } = require('node:child_process');

const BROKER = process.env.BROKER_BIN || path.join(__dirname, '..', 'target', 'debug', 'broker');
const DEADLINE_MS = 10000;

function exampleBlocks() {
  const doc = fs.readFileSync(path.join(__dirname, 'seed', 'users-websocket-api.md'), 'utf8');
  const blocks = [...doc.matchAll(/```\n([\s\S]*?)```/g)].map((m) => m[1]);
  const connect = blocks.find((b) => b.includes("require('ws')"));
  let send = blocks.find((b) => b.includes('wsClient.send('));
  assert.ok(connect && send, 'the document has both client examples');
  const fixed = send
    .replace('wsClient..on(', 'wsClient.on(')
    .replace('message : "Hello world?" })\n', 'message : "Hello world?" }))\n');
  // Exactly the two typo fixes, nothing else.
  assert.strictEqual(fixed.length, send.length);
  assert.notStrictEqual(fixed, send);
  return { connect, send: fixed };
}

/** Starts the broker with `config` and resolves once it listens. */
function startBroker(config) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'broker-compat-'));
  const file = path.join(dir, 'config.json');
  fs.writeFileSync(file, JSON.stringify(config));
  const child = spawn(BROKER, ['--config', file], {
    env: { ...process.env, BROKER_OPS_PORT: '0', RUST_LOG: 'info', NO_COLOR: '1' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('broker did not start')), DEADLINE_MS);
    let seen = '';
    child.stderr.on('data', (chunk) => {
      seen += chunk;
      if (seen.includes('listening')) {
        clearTimeout(timer);
        resolve(child);
      }
    });
    child.on('exit', (code) => reject(new Error(`broker exited with ${code}: ${seen}`)));
  });
}

function stopBroker(child) {
  return new Promise((resolve) => {
    child.removeAllListeners('exit');
    child.on('exit', resolve);
    child.kill('SIGTERM');
  });
}

/** Runs the example's first block in a fresh context; returns the context and its log. */
function runConnectExample(code) {
  const log = [];
  const context = vm.createContext({
    require,
    console: { log: (...args) => log.push(args.join(' ')) },
  });
  vm.runInContext(code, context);
  return { context, log };
}

function waitFor(emitter, event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within the deadline`)), DEADLINE_MS);
    emitter.once(event, (...args) => {
      clearTimeout(timer);
      resolve(args);
    });
  });
}

function waitUntil(what, cond) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const poll = () => {
      if (cond()) return resolve();
      if (Date.now() - started > DEADLINE_MS) return reject(new Error(`timed out: ${what}`));
      setTimeout(poll, 10);
    };
    poll();
  });
}

const approving = {
  websocket: { host: '::', port: 8020, approvedSocketDomains: ['^trusted-host$'] },
};

test('the example echoes to the sender, and broadcast reaches two clients once each', async () => {
  const { connect, send } = exampleBlocks();
  const broker = await startBroker(approving);
  try {
    const a = runConnectExample(connect);
    const b = runConnectExample(connect);
    await Promise.all([waitFor(a.context.wsClient, 'open'), waitFor(b.context.wsClient, 'open')]);

    // The second example: a message handler that logs echoes, and one echo sent.
    vm.runInContext(send, a.context);
    await waitUntil('the echo of Hello world?', () => a.log.length === 1);
    assert.deepStrictEqual(a.log, ['We got an echo: Hello world?']);
    assert.deepStrictEqual(b.log, [], 'a plain echo goes to the sender alone');

    // Both clients run the example's handler; a broadcast echo reaches each once.
    vm.runInContext(send, b.context);
    await waitUntil("b's own echo", () => b.log.length === 1);
    a.context.wsClient.send(JSON.stringify({ eventType: 10, message: 'to everyone', broadcast: true }));
    await waitUntil('the broadcast on both', () => a.log.length === 2 && b.log.length === 2);
    assert.strictEqual(a.log[1], 'We got an echo: to everyone');
    assert.strictEqual(b.log[1], 'We got an echo: to everyone');
    // Exactly once: a later echo on each is the next thing each one logs.
    a.context.wsClient.send(JSON.stringify({ eventType: 10, message: 'a again' }));
    b.context.wsClient.send(JSON.stringify({ eventType: 10, message: 'b again' }));
    await waitUntil('the last echoes', () => a.log.length === 3 && b.log.length === 3);
    assert.strictEqual(a.log[2], 'We got an echo: a again');
    assert.strictEqual(b.log[2], 'We got an echo: b again');
    a.context.wsClient.close();
    b.context.wsClient.close();
  } finally {
    await stopBroker(broker);
  }
});

test('a refused origin gets an error and a close', async () => {
  const { connect } = exampleBlocks();
  const broker = await startBroker({
    websocket: { host: '::', port: 8020, approvedSocketDomains: ['^https://example\\.com$'] },
  });
  try {
    const a = runConnectExample(connect);
    const errored = waitFor(a.context.wsClient, 'error');
    const closed = waitFor(a.context.wsClient, 'close');
    const [err] = await errored;
    assert.match(String(err.message), /403/);
    await closed;
  } finally {
    await stopBroker(broker);
  }
});
