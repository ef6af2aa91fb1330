"""Stand-in for an agent runtime slot: 200 on every GET (so /health/ready), a JSON body naming the slot
and echoing the Authorization header it received. Usage: responder.py PORT SLOT PIDFILE."""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        auth = self.headers.get("Authorization")
        body = json.dumps({"slot": sys.argv[2], "path": self.path, "authorization": auth}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


with open(sys.argv[3], "w", encoding="ascii") as pidfile:
    pidfile.write(str(os.getpid()))
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
