#!/usr/bin/env bash
# A one-minute tour of fender for newcomers: it builds fender, starts a flaky
# fake LLM on loopback (scripts/demo/flaky_llm.py), and drives traffic through
# fender with `fender call` and the Python client, showing retries, a circuit
# breaker opening and recovering, cache hits, a stale answer during an outage,
# many concurrent calls on one connection, and the final `fender stats`.
#
#   bash scripts/demo.sh
#
# Needs Go and python3; no network beyond 127.0.0.1. Everything it starts is
# stopped on exit, and its files live in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export PYTHONDONTWRITEBYTECODE=1 # leave no __pycache__ in clients/python

tmp=$(mktemp -d "${TMPDIR:-/tmp}/fender-demo.XXXXXX")
fender_pid=""
upstream_pid=""
cleanup() {
  # fender first, so that it drains while its upstream is still there.
  for pid in $fender_pid $upstream_pid; do
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT

bold="" plain=""
if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; fi
step() { printf '\n%s%s%s\n' "$bold" "$*" "$plain"; }
note() { printf '   %s\n' "$*"; }

# ask PROMPT: one call through the CLI, shown as the command and one line.
ask() {
  local body
  body=$(printf '{"model":"phi3","prompt":"%s"}' "$1")
  printf "   \$ fender call llm /api/generate '%s'\n" "$body"
  "$tmp/fender" call llm /api/generate "$body" | python3 scripts/demo/show.py || true
}

# outage on|off: switch the fake LLM's outage (no curl needed).
outage() {
  python3 -c 'import sys,urllib.request as u; u.urlopen(u.Request(sys.argv[1], data=b"", method="POST"), timeout=5).read()' \
    "http://127.0.0.1:$port/outage/$1"
}

# sleep_until NS: sleep until the clock (date +%s%N) reaches NS.
sleep_until() {
  local left=$(( ($1 - $(date +%s%N)) / 1000000 ))
  if (( left > 0 )); then sleep "$(printf '%d.%03d' $((left / 1000)) $((left % 1000)))"; fi
}

step "0. Build fender and start a flaky fake LLM on 127.0.0.1"
go build -ldflags "-X main.version=demo" -o "$tmp/fender" .
python3 scripts/demo/flaky_llm.py "$tmp/port" &
upstream_pid=$!
for _ in $(seq 100); do [ -s "$tmp/port" ] && break; sleep 0.05; done
port=$(cat "$tmp/port")

export FENDER_SOCKET="$tmp/fender.sock"
export FENDER_UPSTREAMS="llm=http://127.0.0.1:$port"
export FENDER_METRICS_ADDR=""           # no TCP port needed for the tour
export FENDER_RETRIES=2                 # 3 attempts at most
export FENDER_BACKOFF_INITIAL=100ms     # then 200ms
export FENDER_BREAKER_FAILURES=5        # failed attempts (within the cooldown) that open the breaker
export FENDER_BREAKER_COOLDOWN=4s       # how long it stays open
export FENDER_CACHE_TTL=1s              # short, to see an answer go stale
export FENDER_LOG_FORMAT=console FENDER_LOG_LEVEL=warn
"$tmp/fender" 2>"$tmp/fender.log" &
fender_pid=$!
for _ in $(seq 100); do "$tmp/fender" ping >/dev/null 2>&1 && break; sleep 0.05; done
note "fender $("$tmp/fender" version | cut -d' ' -f2) on $FENDER_SOCKET, upstreams $FENDER_UPSTREAMS"
note "$ fender ping  ->  $("$tmp/fender" ping)"

step "1. Retries: the LLM answers this prompt with 503 twice; fender retries with backoff"
ask "flaky: name a dragon"
note "attempts=3: two 503s, then 200. The application saw one answer."

step "2. Cache: the same request again is served from fender's cache"
ask "flaky: name a dragon"

step "3. Circuit breaker: the LLM goes down (every call 500)"
outage on
ask "what is a circuit breaker?"
note "3 failed attempts here + 2 in step 1 = 5 failures within the cooldown: the breaker opens."
opened=$(date +%s%N)
ask "why is the sky blue?"
note "circuit_open at once (attempts=0): while it is open no request reaches the LLM."

step "4. Stale-if-error: the cached dragon answer has expired (TTL 1s), the LLM is still down"
sleep 1.2
ask "flaky: name a dragon"
note "served from the expired entry: ok with stale and fallback=stale, instead of an error."

step "5. Recovery: the LLM comes back; after the 4s cooldown the breaker lets probes through"
outage off
sleep_until $(( opened + 4300000000 ))
ask "what is a circuit breaker?"
ask "why is the sky blue?"
note "two successful probes (FENDER_BREAKER_SUCCESSES=2) close it: half_open, then closed."

step "6. Many calls at once, one connection: the Python client (clients/python/fender_client.py)"
python3 - "$root/clients/python" <<'EOF'
import sys, threading
sys.path.insert(0, sys.argv[1])
from fender_client import Client

prompts = ["tell a joke %d" % (i % 5) for i in range(40)]   # 40 calls, 5 distinct prompts
answers = [None] * len(prompts)
with Client() as fender:                                      # socket from $FENDER_SOCKET
    def worker(k):
        for i in range(k, len(prompts), 8):                   # 8 threads share the client
            answers[i] = fender.call("llm", "/api/generate", {"model": "phi3", "prompt": prompts[i]})
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads: t.start()
    for t in threads: t.join()
matched = sum(a["body"]["response"] == "echo: " + p for a, p in zip(answers, prompts))
upstream = sum(a["meta"]["attempts"] for a in answers)
print("   40 answers, %d matched to their own request by id" % matched)
print("   upstream calls: %d; coalesced onto another's call: %d; cache hits: %d" % (
    upstream, sum(a["meta"]["coalesced"] for a in answers), sum(a["meta"]["cached"] for a in answers)))
EOF

step "7. What fender saw: \$ fender stats"
"$tmp/fender" stats | python3 -c '
import json, sys
s = json.load(sys.stdin)["stats"]
def line(name, d):
    lat = d["latency_ms"]
    print("   %-8s requests=%-3d success_rate=%.2f retries=%-2d breaker_opens=%d fallbacks=%d cache_hits=%d coalesced=%d p50=%.0fms p99=%.0fms" % (
        name, d["requests"], d["success_rate"], d["retries"], d["breaker_opens"], d["fallbacks"],
        d["cache_hits"], d["coalesced"], lat["p50"], lat["p99"]))
line("overall", s)
for name, u in sorted(s["upstreams"].items()):
    line(name, u)
print("   cache: %d entries, %d bytes" % (s["cache_entries"], s["cache_bytes"]))'
note "upstream calls the fake LLM received in all: $(python3 -c 'import json,sys,urllib.request as u; print(json.load(u.urlopen(sys.argv[1], timeout=5))["calls"])' "http://127.0.0.1:$port/calls")"

step "8. fender's own log of the breaker (warn level, console format)"
grep -i breaker "$tmp/fender.log" | sed 's/^/   /' || note "(no breaker lines)"

step "Done. fender drains and removes its socket on SIGTERM; see README.md for more."
