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
// stream() makes a streamed call ("stream": true) and returns an async
// iterable of the chunks as they arrive, with the final answer in `.final`:
//
//   const s = fender.stream('openai', '/v1/chat/completions',
//     { model: 'gpt-4o-mini', stream: true, messages: [{ role: 'user', content: 'Name a dragon.' }] });
//   for await (const chunk of s) console.log(chunk); // each SSE event's data, "[DONE]" included
//   console.log((await s.final).meta.chunks);
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

// FenderStream is one streamed call (SPEC section 6), as returned by
// Client.stream. Iterate over it with `for await` for the chunks (strings:
// an SSE event's data, an NDJSON line, or a piece of another body), each as
// soon as it has arrived; a final ok:false throws a FenderError from the
// iteration after the chunks received before it. `final` is a promise of
// the final answer (status, headers, meta with chunks and bytes; no body):
// it resolves when the stream ends with ok:true and rejects with the
// FenderError otherwise (it is marked handled, so leaving it unawaited is
// safe). Chunks are buffered for the stream as they arrive, so a slow
// consumer never holds up other calls on the same Client. Leaving the loop
// early (break, return, throw) or calling close() stops the stream: its
// remaining lines are dropped and `final` rejects with code "closed"
// (fender has no cancel op, so the upstream call goes on until it ends).
class FenderStream {
  constructor(client, id) {
    this.id = id;
    this._client = client;
    this._chunks = []; // received, not yet taken by the iterator
    this._waits = []; // resolve the iterator's waits for the next line
    this._end = null; // { answer } or { error } once the stream is over
    this._thrown = false; // the end error was thrown from the iteration
    this.final = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    this.final.catch(() => {});
  }

  _push(chunk) {
    if (this._end) return;
    this._chunks.push(chunk);
    this._notify();
  }

  _finish(answer, error) {
    if (this._end) return;
    this._end = error ? { error } : { answer };
    if (error) this._reject(error);
    else this._resolve(answer);
    this._notify();
  }

  _notify() {
    const waits = this._waits;
    this._waits = [];
    for (const wake of waits) wake();
  }

  // close stops the stream: lines still to come for it are dropped.
  close() {
    if (this._end) return;
    this._client._forget(this.id);
    this._chunks = [];
    this._finish(null, new FenderError('closed', `stream ${this.id} closed by the client`));
  }

  [Symbol.asyncIterator]() {
    return {
      next: async () => {
        for (;;) {
          if (this._chunks.length > 0) return { value: this._chunks.shift(), done: false };
          if (this._end) {
            if (this._end.error && !this._thrown) {
              this._thrown = true;
              throw this._end.error;
            }
            return { value: undefined, done: true };
          }
          await new Promise((resolve) => this._waits.push(resolve));
        }
      },
      return: async () => {
        this.close();
        return { value: undefined, done: true };
      },
    };
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
    return new Promise((resolve, reject) => {
      this._send(req, { resolve, reject, onChunk }, timeoutMs, false);
    });
  }

  // _send registers p under a fresh id, writes req with that id and returns
  // the id. With `idle`, the wait limit bounds each gap between lines.
  _send(req, p, timeoutMs, idle) {
    const id = this._nextId++;
    const line = JSON.stringify({ ...req, id }) + '\n';
    if (timeoutMs === undefined) {
      // Wait a little longer than fender's deadline so that its own timeout
      // answer, with meta, is what the caller sees.
      timeoutMs = Number.isFinite(req.timeout_ms) ? req.timeout_ms + 5000 : this.timeoutMs;
    }
    p.timer = setTimeout(() => {
      this._forget(id);
      const what = idle ? `no line of stream ${id}` : `no answer to request ${id}`;
      p.reject(new FenderError('client_timeout', `${what} within ${timeoutMs}ms`, { retryable: true }));
    }, timeoutMs);
    p.timer.unref();
    p.idle = idle;
    this._pending.set(id, p);
    this._sock.ref();
    this._sock.write(line);
    return id;
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

  // stream calls `upstream` at `path` with "stream": true and returns a
  // FenderStream at once: `for await (const chunk of s)` gives the chunks as
  // they arrive, and `s.final` the final answer; a final ok:false throws a
  // FenderError from the iteration after the chunks that came before it.
  // `body` and `fields` are as for call. opts.timeoutMs (default: the
  // client's, or timeout_ms plus 5s) bounds the wait for each next line, not
  // the whole stream. Any number of streams and calls may run at once.
  stream(upstream, path = '/', body = undefined, fields = {}, { timeoutMs } = {}) {
    for (const k of Object.keys(fields)) {
      if (!CALL_FIELDS.has(k)) throw new TypeError(`stream: unknown request field ${k}`);
    }
    const req = { op: 'call', upstream, path, ...fields, stream: true };
    if (body !== undefined && body !== null) req.body = body;
    const s = new FenderStream(this, 0);
    if (this._closedErr) {
      s._finish(null, this._closedErr);
      return s;
    }
    s.id = this._send(req, {
      resolve: (answer) => s._finish(answer, answer.ok ? null : FenderError.fromAnswer(answer)),
      reject: (e) => s._finish(null, e),
      onChunk: (chunk) => s._push(chunk),
    }, timeoutMs, true);
    return s;
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
      if (p.idle) p.timer.refresh();
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

module.exports = { Client, FenderStream, FenderError, DEFAULT_SOCKET };

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
