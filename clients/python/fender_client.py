"""A client for the fender sidecar, standard library only (Python 3.8+).

fender listens on a Unix socket and speaks newline-delimited JSON: one request
object per line in, one answer object per line out, matched by ``id`` and in
any order. A :class:`Client` keeps one connection and a reader thread that
hands each answer to the request waiting for its id, so any number of threads
may share one client and have calls in flight at the same time.

    from fender_client import Client, FenderError

    with Client("/tmp/fender.sock") as fender:
        try:
            answer = fender.call("ollama", "/api/generate",
                                 {"model": "phi3", "prompt": "Name a dragon.", "stream": False},
                                 timeout_ms=20000)
            print(answer["body"]["response"], answer["meta"]["attempts"])
        except FenderError as e:
            print("failed:", e.code, e.retryable, e.status)

:meth:`Client.stream` makes a streamed call (``"stream": true``) and returns
an iterator of the chunks as they arrive; the final answer is then in
``.final``:

    with Client() as fender:
        s = fender.stream("openai", "/v1/chat/completions",
                          {"model": "gpt-4o-mini", "stream": True,
                           "messages": [{"role": "user", "content": "Name a dragon."}]})
        for chunk in s:               # each SSE event's data, "[DONE]" included
            print(chunk)
        print(s.final["meta"]["chunks"])

Copy this one file into your project; it has no dependencies. Run it as a
script for a quick check: ``python3 fender_client.py [UPSTREAM PATH [JSON_BODY]]``.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import socket
import threading
from typing import Any, Callable, Dict, Optional

__all__ = ["Client", "Stream", "FenderError", "FenderConnectionError", "FenderTimeout", "DEFAULT_SOCKET"]

#: The socket fender listens on when FENDER_SOCKET is not set.
DEFAULT_SOCKET = "/tmp/fender.sock"

# Request fields a call may set besides upstream, path and body (SPEC section 1).
_CALL_FIELDS = frozenset(
    ["method", "headers", "body_text", "model", "timeout_ms", "retries", "cache", "cache_ttl_ms", "stream"]
)


class FenderError(Exception):
    """An answer with ``ok: false``.

    ``code`` is fender's error code (``circuit_open``, ``timeout``,
    ``upstream_status``, ...), ``retryable`` whether trying again later may
    succeed, ``status`` the upstream's HTTP status when an upstream answer was
    received (else None), and ``answer`` the whole answer dict (``meta``,
    ``body``, ``headers``).
    """

    def __init__(self, code: str, message: str, retryable: bool = False,
                 status: Optional[int] = None, answer: Optional[Dict[str, Any]] = None) -> None:
        super().__init__("%s: %s" % (code, message) if message else code)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.status = status
        self.answer = answer if answer is not None else {}

    @classmethod
    def from_answer(cls, answer: Dict[str, Any]) -> "FenderError":
        err = answer.get("error") or {}
        status = answer.get("status")
        return cls(
            code=str(err.get("code", "internal")),
            message=str(err.get("message", "")),
            retryable=bool(err.get("retryable", False)),
            status=status if isinstance(status, int) else None,
            answer=answer,
        )


class FenderConnectionError(FenderError, ConnectionError):
    """The connection to fender failed or was closed; requests in flight on
    it have no answer. Retryable: a new Client may succeed."""

    def __init__(self, message: str) -> None:
        super().__init__("connection", message, retryable=True)


class FenderTimeout(FenderError, TimeoutError):
    """No answer came within the client's own wait limit (fender's deadline
    normally answers first, with code ``timeout``)."""

    def __init__(self, message: str) -> None:
        super().__init__("client_timeout", message, retryable=True)


class _Waiter(object):
    __slots__ = ("event", "answer", "error", "on_chunk", "queue")

    def __init__(self, on_chunk: Optional[Callable[[Any], None]],
                 q: "Optional[queue.Queue[Any]]" = None) -> None:
        self.event = threading.Event()
        self.answer = None  # type: Optional[Dict[str, Any]]
        self.error = None  # type: Optional[BaseException]
        self.on_chunk = on_chunk
        # For a Stream: the reader puts ("chunk", text), then ("final", answer)
        # or ("error", exception), in the order the lines came.
        self.queue = q


class Stream(object):
    """One streamed call (SPEC section 6), as returned by :meth:`Client.stream`.

    Iterate over it for the chunks (strings: an SSE event's data, an NDJSON
    line, or a piece of another body), each as soon as it has arrived. When
    the stream ends, ``final`` is the final answer dict (``status``,
    ``headers``, ``meta`` with ``chunks`` and ``bytes``; no ``body``). A
    final ``ok: false`` raises FenderError from the iteration after the
    chunks received before it, and is in ``final`` too. ``final`` is None
    until the end has been reached by iterating.

    Chunks are queued for the stream as they arrive, so a slow consumer
    never holds up other calls on the same Client. A stream is meant to be
    consumed by one thread; :meth:`close` (or leaving a ``with`` block)
    stops it early: its remaining lines are dropped (fender has no cancel
    op, so the upstream call goes on until it ends).
    """

    def __init__(self, client: "Client", rid: int, waiter: _Waiter, timeout: float) -> None:
        self.id = rid
        self.final = None  # type: Optional[Dict[str, Any]]
        self._client = client
        self._waiter = waiter
        self._timeout = timeout
        self._done = False

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> str:
        if self._done:
            raise StopIteration
        q = self._waiter.queue
        assert q is not None
        try:
            kind, value = q.get(timeout=self._timeout)
        except queue.Empty:
            self._finish()
            raise FenderTimeout("no line of stream %s within %.1fs" % (self.id, self._timeout)) from None
        if kind == "chunk":
            return value
        self._finish()
        if kind == "error":
            if isinstance(value, FenderConnectionError):
                raise FenderConnectionError(value.message)  # one instance per raiser
            raise value
        self.final = value
        if not value.get("ok"):
            raise FenderError.from_answer(value)
        raise StopIteration

    def _finish(self) -> None:
        self._done = True
        self._client._forget(self.id)

    def close(self) -> None:
        """Stop reading this stream; lines still to come for it are dropped."""
        if not self._done:
            self._finish()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Client(object):
    """One connection to fender, safe to share between threads.

    ``path`` defaults to $FENDER_SOCKET, then /tmp/fender.sock. ``timeout``
    (seconds) bounds how long a request waits for its answer when the
    request gives no ``timeout_ms`` of its own; fender's own deadline
    (FENDER_DEADLINE, 30s by default) normally ends a call first. The
    connection is opened at once; a failure raises FenderConnectionError.
    """

    def __init__(self, path: Optional[str] = None, timeout: float = 60.0,
                 connect_timeout: float = 5.0) -> None:
        self.path = path or os.environ.get("FENDER_SOCKET") or DEFAULT_SOCKET
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # guards _pending and _closed_err
        self._wlock = threading.Lock()  # one writer at a time: lines never interleave
        self._pending = {}  # type: Dict[Any, _Waiter]
        self._closed_err = None  # type: Optional[FenderConnectionError]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(connect_timeout)
            sock.connect(self.path)
            sock.settimeout(None)
        except OSError as e:
            sock.close()
            raise FenderConnectionError("connect to %s: %s" % (self.path, e)) from e
        self._sock = sock
        self._reader = threading.Thread(target=self._read_loop, name="fender-client-reader", daemon=True)
        self._reader.start()

    # -- lifecycle ---------------------------------------------------------

    def close(self) -> None:
        """Close the connection. Requests still waiting fail with
        FenderConnectionError; fender cancels their upstream calls."""
        self._fail_all(FenderConnectionError("client closed"))
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        if threading.current_thread() is not self._reader:
            self._reader.join(5)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- requests ----------------------------------------------------------

    def request(self, req: Dict[str, Any], timeout: Optional[float] = None,
                on_chunk: Optional[Callable[[Any], None]] = None) -> Dict[str, Any]:
        """Send one request object and return its final answer dict as is,
        ``ok: false`` included. An ``id`` is added. ``on_chunk`` receives the
        ``chunk`` of each streamed line (SPEC section 6) before the answer."""
        timeout = self._wait_limit(req, timeout)
        w = _Waiter(on_chunk)
        rid = self._send(req, w)
        if not w.event.wait(timeout):
            self._forget(rid)
            raise FenderTimeout("no answer to request %s within %.1fs" % (rid, timeout))
        if isinstance(w.error, FenderConnectionError):
            raise FenderConnectionError(w.error.message)  # one instance per raiser
        if w.error is not None:
            raise w.error
        assert w.answer is not None
        return w.answer

    def _wait_limit(self, req: Dict[str, Any], timeout: Optional[float]) -> float:
        if timeout is not None:
            return timeout
        if isinstance(req.get("timeout_ms"), (int, float)):
            # Wait a little longer than fender's deadline so that its own
            # timeout answer, with meta, is what the caller sees.
            return req["timeout_ms"] / 1000.0 + 5.0
        return self.timeout

    def _send(self, req: Dict[str, Any], w: _Waiter) -> int:
        """Register w under a fresh id and write req with that id."""
        req = dict(req)
        rid = next(self._ids)
        req["id"] = rid
        line = json.dumps(req, separators=(",", ":")).encode("ascii") + b"\n"
        with self._lock:
            if self._closed_err is not None:
                raise FenderConnectionError(self._closed_err.message)
            self._pending[rid] = w
        try:
            with self._wlock:
                self._sock.sendall(line)
        except OSError as e:
            self._forget(rid)
            raise FenderConnectionError("send to %s: %s" % (self.path, e)) from e
        return rid

    def _forget(self, rid: int) -> None:
        with self._lock:
            self._pending.pop(rid, None)

    def _checked(self, req: Dict[str, Any], timeout: Optional[float] = None,
                 on_chunk: Optional[Callable[[Any], None]] = None) -> Dict[str, Any]:
        answer = self.request(req, timeout=timeout, on_chunk=on_chunk)
        if not answer.get("ok"):
            raise FenderError.from_answer(answer)
        return answer

    def call(self, upstream: str, path: str = "/", body: Any = None,
             timeout: Optional[float] = None, on_chunk: Optional[Callable[[Any], None]] = None,
             **opts: Any) -> Dict[str, Any]:
        """Call ``upstream`` at ``path`` through fender and return the answer
        dict (``status``, ``headers``, ``body``, ``meta``). ``body`` is sent
        as JSON when not None. ``opts`` are the other request fields:
        ``method``, ``headers``, ``body_text``, ``model``, ``timeout_ms``,
        ``retries``, ``cache`` (use|bypass|refresh), ``cache_ttl_ms``.
        Raises FenderError when the answer is ``ok: false``."""
        unknown = set(opts) - _CALL_FIELDS
        if unknown:
            raise TypeError("call() got unknown request fields: %s" % ", ".join(sorted(unknown)))
        req = {"op": "call", "upstream": upstream, "path": path}  # type: Dict[str, Any]
        if body is not None:
            req["body"] = body
        req.update(opts)
        return self._checked(req, timeout=timeout, on_chunk=on_chunk)

    def stream(self, upstream: str, path: str = "/", body: Any = None,
               timeout: Optional[float] = None, **opts: Any) -> Stream:
        """Call ``upstream`` at ``path`` with ``"stream": true`` and return a
        :class:`Stream`: iterate over it for the chunks as they arrive; its
        ``final`` is then the final answer. A final ``ok: false`` raises
        FenderError from the iteration, after the chunks that came before it.
        ``body`` and ``opts`` are as for :meth:`call`. The request is sent
        at once. ``timeout`` (default: the Client's, or ``timeout_ms`` plus
        5s) bounds the wait for each next line, not the whole stream.
        Streams and other calls may run at once, from many threads."""
        opts.pop("stream", None)
        unknown = set(opts) - _CALL_FIELDS
        if unknown:
            raise TypeError("stream() got unknown request fields: %s" % ", ".join(sorted(unknown)))
        req = {"op": "call", "upstream": upstream, "path": path, "stream": True}  # type: Dict[str, Any]
        if body is not None:
            req["body"] = body
        req.update(opts)
        w = _Waiter(None, queue.Queue())
        rid = self._send(req, w)
        return Stream(self, rid, w, self._wait_limit(req, timeout))

    def ping(self, timeout: Optional[float] = None) -> bool:
        """True when fender answers; raises otherwise."""
        return bool(self._checked({"op": "ping"}, timeout=timeout).get("ok"))

    def health(self, timeout: Optional[float] = None) -> Dict[str, Any]:
        """The health answer: ``status`` (serving|draining) and ``upstreams``
        with their breaker states."""
        return self._checked({"op": "health"}, timeout=timeout)

    def stats(self, timeout: Optional[float] = None) -> Dict[str, Any]:
        """The ``stats`` object: counts, rates and latency percentiles,
        overall and under ``upstreams``."""
        return self._checked({"op": "stats"}, timeout=timeout)["stats"]

    # Admin ops: only for peers whose uid is in FENDER_ADMIN_UIDS.

    def purge(self, upstream: Optional[str] = None) -> int:
        """Drop cache entries (of one upstream, or all); returns how many."""
        req = {"op": "purge"}  # type: Dict[str, Any]
        if upstream is not None:
            req["upstream"] = upstream
        return int(self._checked(req)["purged"])

    def reset(self, upstream: str, model: Optional[str] = None) -> int:
        """Close breakers of upstream (and model); returns how many matched."""
        req = {"op": "reset", "upstream": upstream}  # type: Dict[str, Any]
        if model is not None:
            req["model"] = model
        return int(self._checked(req)["reset"])

    def configure(self, upstream: str, url: Optional[str] = None,
                  policy: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Add or change an upstream; returns the effective policy."""
        req = {"op": "configure", "upstream": upstream}  # type: Dict[str, Any]
        if url is not None:
            req["url"] = url
        if policy is not None:
            req["policy"] = policy
        return self._checked(req)["policy"]

    # -- reader ------------------------------------------------------------

    def _read_loop(self) -> None:
        parts = []  # pieces of a line not yet ended: an answer may span many reads
        err = "connection closed by fender"
        try:
            while True:
                data = self._sock.recv(65536)
                if not data:
                    break
                start = 0
                while True:
                    nl = data.find(b"\n", start)
                    if nl < 0:
                        if start < len(data):
                            parts.append(data[start:])
                        break
                    parts.append(data[start:nl])
                    line = b"".join(parts)
                    parts = []
                    start = nl + 1
                    if line.strip():
                        self._dispatch(line)
        except OSError as e:
            err = "read from %s: %s" % (self.path, e)
        finally:
            self._fail_all(FenderConnectionError(err))

    def _dispatch(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            return  # fender only writes JSON lines; nothing to match
        if not isinstance(msg, dict):
            return
        rid = msg.get("id")
        if isinstance(rid, bool) or not isinstance(rid, int):
            return  # id null (a line fender could not read) or not one of ours
        is_chunk = "chunk" in msg and "ok" not in msg
        with self._lock:
            w = self._pending.get(rid)
            if w is None:
                return  # its caller gave up waiting
            if not is_chunk:
                del self._pending[rid]
        if w.queue is not None:
            if is_chunk:
                w.queue.put(("chunk", msg["chunk"]))
            else:
                w.queue.put(("final", msg))
            return
        if is_chunk:
            if w.on_chunk is not None and w.error is None:
                try:
                    w.on_chunk(msg["chunk"])
                except Exception as e:  # the caller's callback: re-raised from request()
                    w.error = e
            return
        w.answer = msg
        w.event.set()

    def _fail_all(self, err: FenderConnectionError) -> None:
        with self._lock:
            if self._closed_err is None:
                self._closed_err = err
            pending, self._pending = self._pending, {}
        for w in pending.values():
            w.error = err
            w.event.set()
            if w.queue is not None:
                w.queue.put(("error", err))


def _main(argv: list) -> int:
    """ping, health and stats, or one call: fender_client.py [UPSTREAM PATH [JSON_BODY]]."""
    if len(argv) not in (0, 2, 3):
        print("usage: fender_client.py [UPSTREAM PATH [JSON_BODY]]   (socket: $FENDER_SOCKET)")
        return 2
    try:
        with Client() as fender:
            if not argv:
                print("ping:", fender.ping())
                print("health:", json.dumps(fender.health()))
                print("stats:", json.dumps(fender.stats()))
                return 0
            body = json.loads(argv[2]) if len(argv) == 3 else None
            opts = {} if body is not None else {"method": "GET"}
            answer = fender.call(argv[0], argv[1], body, **opts)
            print(json.dumps(answer))
            return 0
    except FenderError as e:
        print("error: code=%s retryable=%s status=%s: %s" % (e.code, e.retryable, e.status, e.message))
        if e.answer:
            print(json.dumps(e.answer))
        return 1


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
