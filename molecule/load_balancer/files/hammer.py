"""Load during reloads: THREADS clients (half on keep-alive connections, half on a new connection
per request) for SECONDS; prints {"ok": n, "failed": n, "errors": [...]}. Usage: hammer.py PORT SECONDS."""

import http.client
import json
import sys
import threading
import time

PORT, SECONDS, THREADS = int(sys.argv[1]), float(sys.argv[2]), 8
counts = {"ok": 0, "failed": 0, "errors": []}
lock = threading.Lock()


def client(keep_alive: bool) -> None:
    deadline = time.monotonic() + SECONDS
    conn = None
    while time.monotonic() < deadline:
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
            conn.request("GET", "/v1/probe")
            response = conn.getresponse()
            response.read()
            good = response.status == 200
            with lock:
                counts["ok" if good else "failed"] += 1
                if not good:
                    counts["errors"].append(response.status)
            if not keep_alive or response.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as exc:
            with lock:
                counts["failed"] += 1
                counts["errors"].append(repr(exc))
            conn = None


threads = [threading.Thread(target=client, args=(i % 2 == 0,)) for i in range(THREADS)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
counts["errors"] = counts["errors"][:10]
print(json.dumps(counts))
