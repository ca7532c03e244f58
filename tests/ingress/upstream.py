"""A stand-in instance: answers every GET with its name, the path and one request header.

`python upstream.py NAME ADDRESS PORT [HEADER]`; the body tells the test which
instance answered and whether the ingress passed HEADER through.
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms stall

    def do_GET(self) -> None:
        watched = sys.argv[4] if len(sys.argv) > 4 else "X-Ember-Test"
        body = f"{sys.argv[1]} {self.path} {watched}={self.headers.get(watched, '-')}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    ThreadingHTTPServer((sys.argv[2], int(sys.argv[3])), Handler).serve_forever()
