// A client for the broker's Users WebSocket API that reconnects and resumes.
//
// It asks for positions (`?recover=1`), remembers the last `brokerPosition` it was given (from
// events and from the recovery notice) and reconnects with `?since=<that position>`, so the
// broker replays what was missed while the socket was down. Reconnects wait with exponential
// backoff and full jitter, so a broker restart is not met by every client at the same instant.
// Positions are opaque strings: the client never parses or compares them.
'use strict';

const { EventEmitter } = require('node:events');

/** Backoff used when the caller gives none: 0.5 s, 1 s, 2 s, ... up to 30 s, full jitter. */
const DEFAULT_BACKOFF = Object.freeze({ initialMs: 500, maxMs: 30000, factor: 2, jitter: 1 });

/**
 * The wait before reconnect attempt `attempt` (1 for the first retry).
 *
 * The ceiling grows as `initialMs * factor^(attempt-1)` and is capped at `maxMs`. `jitter` (0..1)
 * is the share of the ceiling that is random: 1 is "full jitter" (uniform in [0, ceiling)),
 * 0 waits exactly the ceiling.
 *
 * @example backoffDelay(3, { initialMs: 100, maxMs: 1000, factor: 2, jitter: 1 }, () => 0.5) // 200
 * @param {number} attempt
 * @param {{initialMs: number, maxMs: number, factor: number, jitter: number}} backoff
 * @param {() => number} [random] a source of numbers in [0, 1), injectable for tests
 * @returns {number} milliseconds
 */
function backoffDelay(attempt, backoff, random = Math.random) {
  const { initialMs, maxMs, factor, jitter } = backoff;
  const ceiling = Math.min(maxMs, initialMs * factor ** Math.max(0, attempt - 1));
  return Math.round(ceiling * (1 - jitter * random()));
}

/**
 * An HTTP status that answers an upgrade and will not change by asking again (a refused origin,
 * a bad token). 408 and 429 are 4xx but say "later", and 5xx (503: too many connections) too.
 * @param {number} status
 */
function isFatalRefusal(status) {
  return status >= 400 && status < 500 && status !== 408 && status !== 429;
}

/**
 * A connection to the broker that survives disconnects without losing events.
 *
 * Events:
 * - `open` (): a socket is open (each time, reconnects included).
 * - `recovery` (notice): the broker's `brokerRecovery` object, first on every connection.
 * - `incomplete` (notice): the same, when `complete` is false: events may have been missed,
 *   so the application should refresh its state from the source of truth.
 * - `event` (event, position): an event without its `brokerPosition` field; `position` is that
 *   field, or null for frames that carry none (Echo answers, error events, `to` replies).
 * - `close` (code, reason): an open socket closed.
 * - `reconnecting` (attempt, delayMs, error): the next attempt starts in `delayMs`;
 *   `error` is why the last one failed, when there was one.
 * - `error` (err): the client gave up (an upgrade refused with 4xx: `err.status`) or the broker
 *   sent a frame that is not a JSON object. Listen for it, as for any Node emitter.
 *
 * @example
 * const client = new BrokerClient('ws://localhost:8080', { origin: 'http://localhost' });
 * client.on('event', (event) => console.log(event.eventType));
 * client.on('incomplete', () => reloadEverything());
 */
class BrokerClient extends EventEmitter {
  /**
   * @param {string} url the broker's WebSocket URL; its query parameters are kept
   * @param {object} [options]
   * @param {string} [options.origin] the `Origin` header (must be approved by the broker)
   * @param {string} [options.token] a user token, sent as `?token=`
   * @param {object} [options.headers] more upgrade headers
   * @param {Partial<typeof DEFAULT_BACKOFF>} [options.backoff]
   * @param {string} [options.since] a position to resume from on the first connect (default:
   *   the URL's own `since`, else none)
   * @param {number} [options.handshakeTimeoutMs] an attempt whose upgrade is not answered within
   *   this (default 10 s) fails and is retried, so a black-holed connect cannot stall the client
   * @param {typeof import('ws')} [options.WebSocket] the WebSocket class (default: npm `ws`)
   * @param {() => number} [options.random] the jitter's random source (for tests)
   */
  constructor(url, options = {}) {
    super();
    this._url = new URL(url);
    if (options.token !== undefined) this._url.searchParams.set('token', options.token);
    this._headers = { ...options.headers };
    if (options.origin !== undefined) this._headers.origin = options.origin;
    this._backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this._WebSocket = options.WebSocket || require('ws');
    this._random = options.random || Math.random;
    this._handshakeTimeout = options.handshakeTimeoutMs ?? 10000;
    // An empty `since` would make the broker treat the client as not asking for positions at all.
    this._position = options.since || this._url.searchParams.get('since') || null;
    this._attempt = 0; // failed attempts since the last connection that got its notice
    this._stopped = false;
    this._timer = null;
    /** The current socket; tests may `terminate()` it to cut the connection. */
    this._ws = null;
    this._connect();
  }

  /** The last position seen (opaque), or null before the first. */
  get position() {
    return this._position;
  }

  /**
   * Sends one event as JSON. Returns false (and sends nothing) while not connected: events are
   * not queued across reconnects, since the caller knows best whether a late one still matters.
   * @param {object} event
   * @returns {boolean}
   */
  send(event) {
    const ws = this._ws;
    if (!ws || ws.readyState !== this._WebSocket.OPEN) return false;
    ws.send(JSON.stringify(event));
    return true;
  }

  /** Closes the connection (code 1000) and stops reconnecting. */
  close() {
    this._stopped = true;
    clearTimeout(this._timer);
    this._timer = null;
    if (this._ws) this._ws.close(1000);
  }

  /** The URL of the next attempt: `?since=` the last position, else `?recover=1`. */
  _nextUrl() {
    const url = new URL(this._url);
    url.searchParams.delete('recover');
    url.searchParams.delete('since');
    if (this._position !== null) url.searchParams.set('since', this._position);
    else url.searchParams.set('recover', '1');
    return url.toString();
  }

  _connect() {
    this._timer = null;
    const ws = new this._WebSocket(this._nextUrl(), {
      headers: this._headers,
      handshakeTimeout: this._handshakeTimeout,
    });
    this._ws = ws;
    let opened = false;
    let failure = null; // why this attempt failed, if it did
    let refusal = null; // a fatal HTTP answer to the upgrade

    ws.on('unexpected-response', (req, res) => {
      // Read the broker's `{"error": "..."}` body so the error says why, then drop the attempt.
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => { if (body.length < 1024) body += chunk; });
      res.on('end', () => {
        const err = new Error(`upgrade refused: HTTP ${res.statusCode} ${body.trim()}`.trim());
        err.status = res.statusCode;
        if (isFatalRefusal(res.statusCode)) refusal = err;
        failure = err;
        ws.terminate();
      });
    });
    ws.on('error', (err) => { failure = failure || err; });
    ws.on('open', () => {
      opened = true;
      this.emit('open');
    });
    ws.on('message', (data) => this._receive(data));
    ws.on('close', (code, reason) => {
      if (opened) this.emit('close', code, reason.toString());
      if (this._stopped) return;
      if (refusal) {
        this._stopped = true;
        this.emit('error', refusal);
        return;
      }
      this._attempt += 1;
      const delay = backoffDelay(this._attempt, this._backoff, this._random);
      // Armed before the event, so a listener that calls close() cancels it.
      this._timer = setTimeout(() => this._connect(), delay);
      this.emit('reconnecting', this._attempt, delay, failure);
    });
  }

  _receive(data) {
    let frame;
    try {
      frame = JSON.parse(data.toString());
    } catch (err) {
      frame = null;
    }
    if (frame === null || typeof frame !== 'object' || Array.isArray(frame)) {
      this.emit('error', new Error(`the broker sent a frame that is not a JSON object: ${String(data).slice(0, 100)}`));
      return;
    }
    const position = typeof frame.brokerPosition === 'string' ? frame.brokerPosition : null;
    if (position !== null) this._position = position;
    if (frame.brokerRecovery) {
      this._attempt = 0; // this connection worked: the next disconnect starts the backoff over
      this.emit('recovery', frame.brokerRecovery);
      if (!frame.brokerRecovery.complete) this.emit('incomplete', frame.brokerRecovery);
      return;
    }
    delete frame.brokerPosition;
    this.emit('event', frame, position);
  }
}

module.exports = { BrokerClient, backoffDelay, DEFAULT_BACKOFF };
