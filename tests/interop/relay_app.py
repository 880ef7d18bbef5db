"""A service that calls the next one on a person's behalf, as apps behind the
gateway do: every request is passed on to the next service through the local
sidecar's outbound port, with the Authorization header it came with (the
person's token) and nothing else of it; a path under /no-token is passed on
without it. It answers with the next service's status, and its body wrapped in
{"status", "next"}. The gateway tests put it between two zt proxies.
Usage: relay_app.py PORT NEXT_PORT"""

import json
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NEXT = int(sys.argv[2])


class Relay(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        headers = {}
        token = self.headers.get("Authorization")
        if token and not self.path.startswith("/chain/no-token"):
            headers["Authorization"] = token
        request = urllib.request.Request(f"http://127.0.0.1:{NEXT}{self.path}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                status, body = answer.status, answer.read()
        except urllib.error.HTTPError as error:
            status, body = error.code, error.read()
        payload = json.dumps({"status": status, "next": body.decode("utf-8", "replace")}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Relay).serve_forever()
