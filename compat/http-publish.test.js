// POST /api/publish from Node's own HTTP client, as a Node back end of the Users server would
// call it: a body streamed with req.write() (sent chunked), Expect: 100-continue, and 10,000
// publishes over one keep-alive connection, each reaching a WebSocket client (npm `ws`) in order.
'use strict';

const test = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');
const WebSocket = require('ws');

const BROKER = process.env.BROKER_BIN || path.join(__dirname, '..', 'target', 'debug', 'broker');
const DEADLINE_MS = 10000;
const KEY = 'compat-publisher-key';

/** Starts the broker on an ephemeral port; resolves with the child and its WebSocket port. */
function startBroker() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'broker-compat-'));
  const file = path.join(dir, 'config.json');
  fs.writeFileSync(file, JSON.stringify({
    websocket: { host: '127.0.0.1', port: 0, approvedSocketDomains: ['^http://localhost$'], socketApiKey: KEY },
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
        resolve({ child, port: Number(m[1]) });
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

/** A WebSocket client that collects every event it receives. */
async function listener(port) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { headers: { origin: 'http://localhost' } });
  const events = [];
  ws.on('message', (data) => events.push(JSON.parse(data)));
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  return { ws, events };
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

/** One request; `send(req)` writes the body and ends it. Resolves with status, body, socket. */
function request(port, options, send) {
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: '127.0.0.1', port, method: 'POST', path: '/api/publish', ...options,
      headers: { 'users-api-key': KEY, 'content-type': 'application/json', ...options.headers },
    }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode, body, socket: req.socket }));
    });
    req.setTimeout(DEADLINE_MS, () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
    send(req);
  });
}

test('a body streamed with req.write() (chunked) is published', async () => {
  const { child, port } = await startBroker();
  try {
    const l = await listener(port);
    let header;
    const res = await request(port, {}, (req) => {
      // Two writes and no Content-Length: Node sends Transfer-Encoding: chunked.
      req.write('[{"eventType":6,"files":[1]},');
      req.write('{"eventType":8,"bucket":{}}]');
      header = req.getHeader('transfer-encoding') ?? (req.chunkedEncoding ? 'chunked' : 'none');
      req.end();
    });
    assert.strictEqual(header, 'chunked');
    assert.strictEqual(res.status, 202, res.body);
    assert.strictEqual(JSON.parse(res.body).accepted, 2);
    await waitUntil('both events', () => l.events.length === 2);
    assert.deepStrictEqual(l.events.map((e) => e.eventType), [6, 8]);
    l.ws.close();
  } finally {
    await stopBroker(child);
  }
});

test('Expect: 100-continue gets its 100 before the body is sent', async () => {
  const { child, port } = await startBroker();
  try {
    const l = await listener(port);
    let continued = false;
    const res = await request(port, { headers: { expect: '100-continue' } }, (req) => {
      req.on('continue', () => {
        continued = true;
        req.end(JSON.stringify({ eventType: 10, message: 'after 100' }));
      });
      req.flushHeaders();
    });
    assert.ok(continued, 'the broker sent 100 Continue');
    assert.strictEqual(res.status, 202, res.body);
    await waitUntil('the event', () => l.events.length === 1);
    assert.strictEqual(l.events[0].message, 'after 100');
    // A wrong key is refused before the body: no 100, a 403.
    let refusedContinued = false;
    const refused = await request(port, { headers: { expect: '100-continue', 'users-api-key': 'nope' } },
      (req) => {
        req.on('continue', () => { refusedContinued = true; req.end('{}'); });
        req.flushHeaders();
      });
    assert.strictEqual(refused.status, 403);
    assert.strictEqual(refusedContinued, false, 'no 100 Continue for a refused request');
    l.ws.close();
  } finally {
    await stopBroker(child);
  }
});

test('10,000 publishes over one keep-alive connection arrive in order', async () => {
  const { child, port } = await startBroker();
  try {
    const l = await listener(port);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const sockets = new Set();
    for (let i = 0; i < 10000; i++) {
      const res = await request(port, { agent },
        (req) => req.end(JSON.stringify({ eventType: 6, files: [], i })));
      assert.strictEqual(res.status, 202, res.body);
      sockets.add(res.socket);
    }
    assert.strictEqual(sockets.size, 1, 'every request went over one connection');
    await waitUntil('10,000 events', () => l.events.length === 10000);
    l.events.forEach((e, i) => assert.strictEqual(e.i, i));
    agent.destroy();
    l.ws.close();
  } finally {
    await stopBroker(child);
  }
});
