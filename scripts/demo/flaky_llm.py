"""A flaky fake LLM for scripts/demo.sh: loopback only, standard library only.

    python3 flaky_llm.py PORT_FILE

listens on 127.0.0.1 on a free port, writes the port to PORT_FILE and serves:

    POST /api/generate   Ollama-like: {"model":..,"prompt":..} -> {"model":..,"response":..,"done":true}
                         after 100ms. A prompt starting with "flaky" fails with 503 on its
                         first two tries (counted per prompt), then answers.
                         While the outage is on, every call fails with 500.
    POST /outage/on      start the outage
    POST /outage/off     end it
    GET  /calls          how many generate calls arrived, as JSON

It stops on SIGTERM or SIGINT.
"""

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LATENCY = 0.1
FLAKY_FAILURES = 2

state = {"outage": False, "calls": 0, "tries": {}}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet: the demo prints what matters
        pass

    def _send(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/calls":
            with lock:
                self._send(200, {"calls": state["calls"]})
            return
        self._send(404, {"error": "not found"})

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if self.path in ("/outage/on", "/outage/off"):
            with lock:
                state["outage"] = self.path.endswith("on")
            self._send(200, {"outage": state["outage"]})
            return
        if self.path != "/api/generate":
            self._send(404, {"error": "not found"})
            return
        try:
            req = json.loads(raw or b"{}")
        except ValueError:
            self._send(400, {"error": "body is not JSON"})
            return
        prompt = str(req.get("prompt", ""))
        with lock:
            state["calls"] += 1
            tries = state["tries"][prompt] = state["tries"].get(prompt, 0) + 1
            outage = state["outage"]
        time.sleep(LATENCY)
        if outage:
            self._send(500, {"error": "model server crashed"})
        elif prompt.startswith("flaky") and tries <= FLAKY_FAILURES:
            self._send(503, {"error": "overloaded, try again"})
        else:
            self._send(200, {"model": req.get("model", ""), "response": "echo: " + prompt, "done": True})


def main():
    if len(sys.argv) != 2:
        print("usage: flaky_llm.py PORT_FILE", file=sys.stderr)
        return 2
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    tmp = sys.argv[1] + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.server_address[1]))
    os.replace(tmp, sys.argv[1])  # the demo never reads half a port

    def stop(*_):
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    srv.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
