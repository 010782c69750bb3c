// BrokerClient against the real broker over loopback: positions, resuming across forced
// disconnects under a steady stream, an unresumable position, refused upgrades, and the backoff
// between failed attempts. Every wait has a deadline; nothing sleeps to wait for an event.
'use strict';

const test = require('node:test');
const assert = require('node:assert');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const vm = require('node:vm');
const { spawn } = require('node:child_process');
const WebSocket = require('ws');
const { BrokerClient } = require('../broker-client');

const BROKER = process.env.BROKER_BIN || path.join(__dirname, '..', '..', '..', 'target', 'debug', 'broker');
const DEADLINE_MS = 10000;
const KEY = 'client-test-publisher-key';
const SECRET = 'client-test-jwt-secret-0123456789';
const ORIGIN = 'http://localhost';
/** Short waits so the tests are quick; the delays themselves are checked in backoff.test.js. */
const FAST = { initialMs: 20, maxMs: 200, factor: 2, jitter: 1 };

/** Starts the broker on an ephemeral port; resolves with the child and its WebSocket port. */
function startBroker(brokerConfig = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'broker-client-'));
  const file = path.join(dir, 'config.json');
  fs.writeFileSync(file, JSON.stringify({
    websocket: { host: '127.0.0.1', port: 0, approvedSocketDomains: ['^http://localhost$'], socketApiKey: KEY },
    broker: { jwtSecret: SECRET, ...brokerConfig },
  }));
  const child = spawn(BROKER, ['--config', file], {
    env: { ...process.env, BROKER_OPS_PORT: '0', RUST_LOG: 'info', NO_COLOR: '1' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('broker did not start')), DEADLINE_MS);
    let seen = '';
    child.stderr.on('data', (chunk) => {
      seen += chunk;
      const m = seen.match(/listening.* ws=127\.0\.0\.1:(\d+)/);
      if (m) {
        clearTimeout(timer);
        fs.rmSync(dir, { recursive: true, force: true }); // the config has been read
        resolve({ child, port: Number(m[1]) });
      }
    });
    child.on('error', reject);
    child.on('exit', (code) => reject(new Error(`broker exited with ${code}: ${seen}`)));
  });
}

function stopBroker(child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.removeAllListeners('exit');
    child.on('exit', resolve);
    child.kill('SIGTERM');
  });
}

/** An HS256 token for `sub`, signed with the broker's secret. */
function token(sub) {
  const part = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  const unsigned = `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ sub })}`;
  return `${unsigned}.${crypto.createHmac('sha256', SECRET).update(unsigned).digest('base64url')}`;
}

/** A publisher WebSocket (the back end), open. */
async function publisher(port) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { headers: { 'users-api-key': KEY } });
  await once(ws, 'open');
  return ws;
}

/** Resolves with the arguments of `emitter`'s next `event`, or rejects after the deadline. */
function once(emitter, event) {
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
      setTimeout(poll, 5);
    };
    poll();
  });
}

/** Every client a test opens, closed after it whatever the outcome, so a failure never hangs. */
const clients = new Set();
test.afterEach(() => {
  for (const client of clients) client.close();
  clients.clear();
});

/** A BrokerClient that afterEach will close. */
function connect(url, options) {
  const client = new BrokerClient(url, options);
  clients.add(client);
  return client;
}

/** The sequence part of a position; the tests may know the format, the client does not. */
const seq = (position) => Number(position.split('-')[1]);

/** A `ws` class that records every URL it is asked to open. */
function recordingWebSocket(urls) {
  return class extends WebSocket {
    constructor(url, options) {
      urls.push(url);
      super(url, options);
    }
  };
}

test('a client gets a recovery notice, then events without brokerPosition and increasing positions', async () => {
  const { child, port } = await startBroker();
  try {
    const client = connect(`ws://127.0.0.1:${port}/`, { origin: ORIGIN, token: token('alice'), backoff: FAST });
    const events = [];
    client.on('event', (event, position) => events.push({ event, position }));
    const [notice] = await once(client, 'recovery');
    assert.strictEqual(notice.complete, true);
    assert.strictEqual(notice.since, null);
    const start = client.position;
    assert.match(start, /^[0-9a-f]+-\d+$/, 'the notice gives a position to resume from');

    const pub = await publisher(port);
    pub.send(JSON.stringify({ eventType: 6, files: ['a'] }));
    pub.send(JSON.stringify({ eventType: 1, username: 'alice' }));
    pub.send(JSON.stringify({ eventType: 1, username: 'bob' })); // not alice's: not delivered
    pub.send(JSON.stringify({ eventType: 6, files: ['b'] }));
    await waitUntil('three events', () => events.length === 3);
    assert.deepStrictEqual(events.map((e) => e.event), [
      { eventType: 6, files: ['a'] },
      { eventType: 1, username: 'alice' },
      { eventType: 6, files: ['b'] },
    ]);
    const seqs = [start, ...events.map((e) => e.position)].map(seq);
    for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i] > seqs[i - 1], `positions increase: ${seqs}`);
    assert.strictEqual(client.position, events[2].position);

    // An Echo answer goes to this connection alone: no position, and the last one is kept.
    assert.strictEqual(client.send({ eventType: 10, message: 'hi' }), true);
    await waitUntil('the echo', () => events.length === 4);
    assert.deepStrictEqual(events[3], { event: { eventType: 10, message: 'hi' }, position: null });
    assert.strictEqual(client.position, events[2].position);

    // SIGTERM: the broker closes with 1001 and the client starts reconnecting.
    const closed = once(client, 'close');
    const reconnecting = once(client, 'reconnecting');
    pub.terminate();
    await stopBroker(child);
    assert.strictEqual((await closed)[0], 1001);
    const [attempt] = await reconnecting;
    assert.strictEqual(attempt, 1);
    client.close();
    assert.strictEqual(client._timer, null, 'close() cancels the pending reconnect');
  } finally {
    await stopBroker(child);
  }
});

test("the root README's example runs as printed (URL and require path aside) and gets its echo", async () => {
  const readme = fs.readFileSync(path.join(__dirname, '..', '..', '..', 'README.md'), 'utf8');
  const example = [...readme.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1])
    .find((block) => block.includes("require('./clients/js/broker-client')"));
  assert.ok(example, 'README.md shows the client');
  const { child, port } = await startBroker();
  try {
    const log = [];
    const context = vm.createContext({
      require: (name) => require(name === './clients/js/broker-client' ? '../broker-client' : name),
      console: { log: (...args) => log.push(args.join(' ')) },
    });
    const code = example.replace("'ws://localhost:8080'", `'ws://127.0.0.1:${port}'`);
    assert.notStrictEqual(code, example);
    vm.runInContext(`${code}\nglobalThis.client = client;`, context);
    clients.add(context.client);
    await waitUntil('the echo', () => log.length > 0);
    assert.deepStrictEqual(log, ['We got an echo: Hello world?']);
  } finally {
    await stopBroker(child);
  }
});

test('forced disconnects under a steady stream: every numbered event arrives once, in order', async () => {
  const { child, port } = await startBroker();
  const TOTAL = 500;
  const CUT_AT = [100, 250, 400];
  try {
    const urls = [];
    const client = connect(`ws://127.0.0.1:${port}/?app=test`, {
      origin: ORIGIN, token: token('alice'), backoff: FAST, WebSocket: recordingWebSocket(urls),
    });
    const seen = [];
    const notices = [];
    const delays = [];
    client.on('recovery', (notice) => notices.push(notice));
    client.on('reconnecting', (attempt, delay) => delays.push({ attempt, delay }));
    client.on('event', (event) => {
      seen.push(event.n);
      // Cut the socket as the test's "network failure", while the publisher keeps going.
      if (CUT_AT.includes(seen.length)) setImmediate(() => client._ws.terminate());
    });
    await once(client, 'recovery');

    // Numbered events at a steady pace, alternating broadcasts and alice's own events.
    const pub = await publisher(port);
    for (let n = 0; n < TOTAL; n++) {
      pub.send(JSON.stringify(n % 2 ? { eventType: 6, files: [], n } : { eventType: 5, username: 'alice', files: [], n }));
      if (n % 5 === 4) await new Promise((resolve) => setTimeout(resolve, 2));
    }
    await waitUntil(`all ${TOTAL} events`, () => seen.length >= TOTAL);
    client.close();
    pub.close();

    assert.deepStrictEqual(seen, Array.from({ length: TOTAL }, (_, n) => n), 'each event once, in order');
    assert.strictEqual(delays.length, CUT_AT.length, 'one reconnect per cut');
    assert.ok(delays.every((d) => d.attempt === 1), 'a connection that got its notice resets the backoff');
    assert.strictEqual(notices.length, 1 + CUT_AT.length);
    assert.ok(notices.every((n) => n.complete), 'every resume was complete');
    assert.ok(notices.slice(1).some((n) => n.replayed > 0), `something was replayed: ${JSON.stringify(notices)}`);

    // Reconnects resume from the last position and keep the caller's query and the token.
    assert.strictEqual(urls.length, 1 + CUT_AT.length);
    assert.strictEqual(new URL(urls[0]).searchParams.get('recover'), '1');
    for (const url of urls.map((u) => new URL(u))) {
      assert.strictEqual(url.searchParams.get('app'), 'test');
      assert.strictEqual(url.searchParams.get('token'), token('alice'));
    }
    for (const url of urls.slice(1).map((u) => new URL(u))) {
      assert.match(url.searchParams.get('since'), /-\d+$/);
      assert.strictEqual(url.searchParams.get('recover'), null);
    }
  } finally {
    await stopBroker(child);
  }
});

test('a position from another history gets incomplete, and live events keep coming', async () => {
  const { child, port } = await startBroker();
  try {
    // The broker draws its epoch at start; this one is from no history it knows.
    const client = connect(`ws://127.0.0.1:${port}/`, { origin: ORIGIN, since: 'feedface-42', backoff: FAST });
    const events = [];
    client.on('event', (event, position) => events.push({ event, position }));
    const incomplete = once(client, 'incomplete');
    const [notice] = await once(client, 'recovery');
    assert.strictEqual(notice.complete, false);
    assert.strictEqual(typeof notice.reason, 'string');
    assert.ok(notice.reason.length > 0);
    assert.strictEqual((await incomplete)[0], notice);
    assert.notStrictEqual(client.position, 'feedface-42', 'the notice gives a position in the current history');

    const pub = await publisher(port);
    pub.send(JSON.stringify({ eventType: 6, files: ['after'] }));
    await waitUntil('the live event', () => events.length === 1);
    assert.deepStrictEqual(events[0].event, { eventType: 6, files: ['after'] });
    assert.strictEqual(client.position, events[0].position);
    client.close();
    pub.close();
  } finally {
    await stopBroker(child);
  }
});

test('with the history off the client is told, served without positions, and asks again on reconnect', async () => {
  const { child, port } = await startBroker({ history: { maxBytes: 0 } });
  try {
    const urls = [];
    const client = connect(`ws://127.0.0.1:${port}/`, { origin: ORIGIN, since: '', backoff: FAST, WebSocket: recordingWebSocket(urls) });
    const events = [];
    client.on('event', (event, position) => events.push({ event, position }));
    const [notice] = await once(client, 'incomplete');
    assert.strictEqual(notice.complete, false);
    assert.match(notice.reason, /history/);
    assert.strictEqual(client.position, null);

    const pub = await publisher(port);
    pub.send(JSON.stringify({ eventType: 6, files: [] }));
    await waitUntil('the event', () => events.length === 1);
    assert.deepStrictEqual(events[0], { event: { eventType: 6, files: [] }, position: null });

    client._ws.terminate();
    await once(client, 'incomplete');
    assert.deepStrictEqual(urls.map((u) => new URL(u).search), ['?recover=1', '?recover=1'],
      'no position to resume from: it asks again (an empty since would opt out of positions)');
    pub.close();
  } finally {
    await stopBroker(child);
  }
});

test('a refused upgrade (403 origin, 401 token) is an error and is not retried', async () => {
  const { child, port } = await startBroker();
  try {
    for (const [options, status] of [
      [{ origin: 'http://evil.example' }, 403],
      [{ origin: ORIGIN, token: 'not-a-token' }, 401],
    ]) {
      const urls = [];
      const client = connect(`ws://127.0.0.1:${port}/`, { ...options, backoff: FAST, WebSocket: recordingWebSocket(urls) });
      let retried = false;
      client.on('reconnecting', () => { retried = true; });
      const [err] = await once(client, 'error');
      assert.strictEqual(err.status, status);
      assert.match(err.message, new RegExp(`HTTP ${status} \\{"error"`), 'the message carries the broker\'s reason');
      assert.strictEqual(retried, false);
      assert.strictEqual(client._timer, null, 'no reconnect is scheduled');
      assert.strictEqual(urls.length, 1);
    }
  } finally {
    await stopBroker(child);
  }
});

test('503 and 429 are retried; a frame that is not a JSON object is an error the client survives', async () => {
  // A stand-in server: 503, then 429, then an upgrade that sends one bad frame and one event.
  const answers = [503, 429];
  const server = http.createServer();
  const wss = new WebSocket.Server({ noServer: true });
  server.on('upgrade', (req, socket, head) => {
    const status = answers.shift();
    if (status) {
      socket.end(`HTTP/1.1 ${status} Busy\r\nContent-Length: 17\r\nConnection: close\r\n\r\n{"error":"busy"}\n`);
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.send('not json');
      ws.send(JSON.stringify({ eventType: 6, files: [] }));
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    const client = connect(`ws://127.0.0.1:${server.address().port}/`, { origin: ORIGIN, backoff: FAST });
    const statuses = [];
    client.on('reconnecting', (attempt, delay, err) => statuses.push(err.status));
    const errors = [];
    client.on('error', (err) => errors.push(err));
    const [event, position] = await once(client, 'event');
    assert.deepStrictEqual(statuses, [503, 429]);
    assert.strictEqual(errors.length, 1);
    assert.match(errors[0].message, /not a JSON object: not json/);
    assert.deepStrictEqual([event, position], [{ eventType: 6, files: [] }, null]);
    client.close();
  } finally {
    for (const ws of wss.clients) ws.terminate();
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
});

test('failed attempts back off: growing, capped, jittered by the injected source', async () => {
  // A port with nothing listening: every attempt fails at once.
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));

  const draws = [0, 0.5, 0, 0.5, 0, 0];
  const client = connect(`ws://127.0.0.1:${port}/`, {
    origin: ORIGIN,
    backoff: { initialMs: 4, maxMs: 16, factor: 2, jitter: 1 },
    random: () => draws.shift(),
  });
  const seen = [];
  client.on('reconnecting', (attempt, delay, err) => {
    seen.push([attempt, delay, err && err.code]);
    if (seen.length === 6) client.close();
  });
  await waitUntil('six attempts', () => seen.length === 6);
  assert.deepStrictEqual(seen, [
    [1, 4, 'ECONNREFUSED'], [2, 4, 'ECONNREFUSED'], [3, 16, 'ECONNREFUSED'],
    [4, 8, 'ECONNREFUSED'], [5, 16, 'ECONNREFUSED'], [6, 16, 'ECONNREFUSED'],
  ]);
  assert.strictEqual(client._timer, null);
});

test('an upgrade that is never answered times out and is retried', async () => {
  // Accepts TCP connections and never says a word.
  const sockets = [];
  const server = net.createServer((socket) => sockets.push(socket));
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    const client = connect(`ws://127.0.0.1:${server.address().port}/`, {
      origin: ORIGIN, handshakeTimeoutMs: 50, backoff: FAST,
    });
    const [attempt, , err] = await once(client, 'reconnecting');
    assert.strictEqual(attempt, 1);
    assert.match(err.message, /handshake has timed out/);
    client.close();
  } finally {
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => server.close(resolve));
  }
});
