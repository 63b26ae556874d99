'use strict';
// A client for the fender sidecar, Node.js standard library only (Node 18+).
//
// fender listens on a Unix socket and speaks newline-delimited JSON: one
// request object per line in, one answer object per line out, matched by
// `id` and in any order. A Client keeps one connection; every method returns
// a promise, and any number of requests may be in flight at once.
//
//   const { Client, FenderError } = require('./fender-client');
//   const fender = new Client('/tmp/fender.sock');
//   try {
//     const answer = await fender.call('ollama', '/api/generate',
//       { model: 'phi3', prompt: 'Name a dragon.', stream: false }, { timeout_ms: 20000 });
//     console.log(answer.body.response, answer.meta.attempts);
//   } catch (e) {
//     if (e instanceof FenderError) console.log(e.code, e.retryable, e.status);
//   } finally {
//     fender.close();
//   }
//
// Copy this one file into your project; it has no dependencies. Run it for a
// quick check: `node fender-client.js [UPSTREAM PATH [JSON_BODY]]`.

const net = require('net');
const { StringDecoder } = require('string_decoder');

const DEFAULT_SOCKET = '/tmp/fender.sock';

// Request fields a call may set besides upstream, path and body (SPEC section 1).
const CALL_FIELDS = new Set([
  'method', 'headers', 'body_text', 'model', 'timeout_ms', 'retries', 'cache', 'cache_ttl_ms', 'stream',
]);

// FenderError is an answer with ok:false. `code` is fender's error code
// (circuit_open, timeout, upstream_status, ...), `retryable` whether trying
// again later may succeed, `status` the upstream's HTTP status when one was
// received (else undefined), `answer` the whole answer (meta, body, headers).
class FenderError extends Error {
  constructor(code, message, { retryable = false, status, answer } = {}) {
    super(message ? `${code}: ${message}` : code);
    this.name = 'FenderError';
    this.code = code;
    this.retryable = retryable;
    this.status = status;
    this.answer = answer;
  }

  static fromAnswer(answer) {
    const err = answer.error || {};
    return new FenderError(String(err.code || 'internal'), String(err.message || ''), {
      retryable: Boolean(err.retryable),
      status: Number.isInteger(answer.status) ? answer.status : undefined,
      answer,
    });
  }
}

// Client is one connection to fender. `path` defaults to $FENDER_SOCKET, then
// /tmp/fender.sock. `timeoutMs` bounds how long a request waits for its answer
// when it gives no timeout_ms of its own; fender's own deadline
// (FENDER_DEADLINE, 30s by default) normally answers first. The connection
// is opened at once; requests sent before it is up are queued by the socket.
// The socket does not keep the process alive while no request is waiting.
class Client {
  constructor(path, { timeoutMs = 60000 } = {}) {
    this.path = path || process.env.FENDER_SOCKET || DEFAULT_SOCKET;
    this.timeoutMs = timeoutMs;
    this._nextId = 1;
    this._pending = new Map(); // id -> { resolve, reject, timer, onChunk }
    this._closedErr = null;
    this._parts = []; // pieces of a line not yet ended
    this._decoder = new StringDecoder('utf8'); // a character may span two reads
    this._sock = net.createConnection(this.path);
    this._sock.unref();
    this._sock.on('data', (data) => this._onData(data));
    this._sock.on('error', (e) => this._failAll(new FenderError('connection', `${this.path}: ${e.message}`, { retryable: true })));
    this._sock.on('close', () => this._failAll(new FenderError('connection', 'connection closed', { retryable: true })));
  }

  // request sends one request object and resolves with its final answer as
  // is, ok:false included. An id is added. opts.timeoutMs overrides the wait
  // limit; opts.onChunk receives each streamed chunk (SPEC section 6).
  request(req, { timeoutMs, onChunk } = {}) {
    if (this._closedErr) return Promise.reject(this._closedErr);
    const id = this._nextId++;
    const line = JSON.stringify({ ...req, id }) + '\n';
    if (timeoutMs === undefined) {
      // Wait a little longer than fender's deadline so that its own timeout
      // answer, with meta, is what the caller sees.
      timeoutMs = Number.isFinite(req.timeout_ms) ? req.timeout_ms + 5000 : this.timeoutMs;
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._forget(id);
        reject(new FenderError('client_timeout', `no answer to request ${id} within ${timeoutMs}ms`, { retryable: true }));
      }, timeoutMs);
      timer.unref();
      this._pending.set(id, { resolve, reject, timer, onChunk });
      this._sock.ref();
      this._sock.write(line);
    });
  }

  async _checked(req, opts) {
    const answer = await this.request(req, opts);
    if (!answer.ok) throw FenderError.fromAnswer(answer);
    return answer;
  }

  // call calls `upstream` at `path` through fender and resolves with the
  // answer (status, headers, body, meta); it rejects with a FenderError when
  // the answer is ok:false. `body` is sent as JSON when not undefined/null.
  // `fields` are the other request fields: method, headers, body_text, model,
  // timeout_ms, retries, cache (use|bypass|refresh), cache_ttl_ms. `opts` as
  // for request.
  call(upstream, path = '/', body = undefined, fields = {}, opts = {}) {
    for (const k of Object.keys(fields)) {
      if (!CALL_FIELDS.has(k)) return Promise.reject(new TypeError(`call: unknown request field ${k}`));
    }
    const req = { op: 'call', upstream, path, ...fields };
    if (body !== undefined && body !== null) req.body = body;
    return this._checked(req, opts);
  }

  // ping resolves with true when fender answers.
  async ping(opts) {
    return (await this._checked({ op: 'ping' }, opts)).ok === true;
  }

  // health resolves with the health answer: status (serving|draining) and
  // upstreams with their breaker states.
  health(opts) {
    return this._checked({ op: 'health' }, opts);
  }

  // stats resolves with the stats object: counts, rates and latency
  // percentiles, overall and under `upstreams`.
  async stats(opts) {
    return (await this._checked({ op: 'stats' }, opts)).stats;
  }

  // Admin ops: only for peers whose uid is in FENDER_ADMIN_UIDS.
  async purge(upstream) {
    return (await this._checked(upstream === undefined ? { op: 'purge' } : { op: 'purge', upstream })).purged;
  }

  async reset(upstream, model) {
    return (await this._checked(model === undefined ? { op: 'reset', upstream } : { op: 'reset', upstream, model })).reset;
  }

  async configure(upstream, { url, policy } = {}) {
    const req = { op: 'configure', upstream };
    if (url !== undefined) req.url = url;
    if (policy !== undefined) req.policy = policy;
    return (await this._checked(req)).policy;
  }

  // close ends the connection; requests still waiting reject with code
  // "connection" and fender cancels their upstream calls.
  close() {
    this._failAll(new FenderError('connection', 'client closed', { retryable: true }));
    this._sock.destroy();
  }

  _onData(data) {
    // Only the new text is searched for a line end, so a long answer that
    // arrives in many reads costs linear time.
    const s = this._decoder.write(data);
    let start = 0;
    let nl;
    while ((nl = s.indexOf('\n', start)) >= 0) {
      this._parts.push(s.slice(start, nl));
      const line = this._parts.join('');
      this._parts = [];
      start = nl + 1;
      if (line.trim() !== '') this._dispatch(line);
    }
    if (start < s.length) this._parts.push(s.slice(start));
  }

  _dispatch(line) {
    let msg;
    try {
      msg = JSON.parse(line);
    } catch {
      return; // fender only writes JSON lines; nothing to match
    }
    if (msg === null || typeof msg !== 'object' || !Number.isInteger(msg.id)) return;
    const p = this._pending.get(msg.id);
    if (!p) return; // id null, or its caller gave up waiting
    if ('chunk' in msg && !('ok' in msg)) {
      if (p.onChunk && !p.error) {
        try {
          p.onChunk(msg.chunk);
        } catch (e) {
          p.error = e; // the caller's callback: the request rejects with it
        }
      }
      return;
    }
    this._forget(msg.id);
    if (p.error) p.reject(p.error);
    else p.resolve(msg);
  }

  _forget(id) {
    const p = this._pending.get(id);
    if (!p) return;
    clearTimeout(p.timer);
    this._pending.delete(id);
    if (this._pending.size === 0) this._sock.unref();
  }

  _failAll(err) {
    if (!this._closedErr) this._closedErr = err;
    const pending = [...this._pending.values()];
    this._pending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      p.reject(err);
    }
  }
}

module.exports = { Client, FenderError, DEFAULT_SOCKET };

// node fender-client.js [UPSTREAM PATH [JSON_BODY]]: ping, health and stats,
// or one call, against $FENDER_SOCKET.
if (require.main === module) {
  const argv = process.argv.slice(2);
  if (![0, 2, 3].includes(argv.length)) {
    console.log('usage: node fender-client.js [UPSTREAM PATH [JSON_BODY]]   (socket: $FENDER_SOCKET)');
    process.exit(2);
  }
  const fender = new Client();
  (async () => {
    try {
      if (argv.length === 0) {
        console.log('ping:', await fender.ping());
        console.log('health:', JSON.stringify(await fender.health()));
        console.log('stats:', JSON.stringify(await fender.stats()));
      } else {
        const body = argv.length === 3 ? JSON.parse(argv[2]) : undefined;
        const fields = body === undefined ? { method: 'GET' } : {};
        console.log(JSON.stringify(await fender.call(argv[0], argv[1], body, fields)));
      }
    } catch (e) {
      console.log(`error: code=${e.code} retryable=${e.retryable} status=${e.status}: ${e.message}`);
      if (e.answer) console.log(JSON.stringify(e.answer));
      process.exitCode = 1;
    } finally {
      fender.close();
    }
  })();
}
