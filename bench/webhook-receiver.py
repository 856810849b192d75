"""A webhook receiver for bench/notify-latency.sh: takes every POST, records how long after the
event's `at_ms` (when the verdict was applied) it arrived, and on SIGTERM prints the count and
the p50/p99/max latency in ms as JSON. Repeats of an Idempotency-Key are counted apart.

    python3 bench/webhook-receiver.py PORT
"""
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

lat, seen, repeats = [], set(), [0]
lock = threading.Lock()


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        now = time.time() * 1000
        event = json.loads(body)
        with lock:
            key = self.headers.get("idempotency-key")
            if key in seen:
                repeats[0] += 1
            else:
                seen.add(key)
                lat.append(now - event["at_ms"])
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def report(*_):
    with lock:
        xs = sorted(lat)
    q = lambda p: round(xs[min(len(xs) - 1, int(p * len(xs)))], 1) if xs else None
    print(json.dumps({"events": len(xs), "repeats": repeats[0], "p50_ms": q(0.50),
                      "p99_ms": q(0.99), "max_ms": round(xs[-1], 1) if xs else None}), flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, report)
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Hook).serve_forever()
