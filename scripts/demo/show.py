"""Prints one fender answer (a JSON line on stdin) as one readable line; used by scripts/demo.sh."""

import json
import sys

line = sys.stdin.readline()
try:
    a = json.loads(line)
except ValueError:
    print("   (no answer) " + line.strip())
    sys.exit(0)
meta = a.get("meta") or {}
flags = "attempts=%s breaker=%s" % (meta.get("attempts"), meta.get("breaker"))
for k in ("cached", "stale", "coalesced"):
    if meta.get(k):
        flags += " " + k
if meta.get("fallback"):
    flags += " fallback=%s" % meta["fallback"]
if a.get("ok"):
    body = a.get("body")
    text = body.get("response") if isinstance(body, dict) else body
    print("   ok   status=%s %s  -> %r" % (a.get("status"), flags, text))
else:
    e = a.get("error") or {}
    status = " status=%s" % a["status"] if "status" in a else ""
    print("   FAIL code=%s retryable=%s%s %s" % (e.get("code"), str(e.get("retryable")).lower(), status, flags))
