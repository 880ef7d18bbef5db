"""A plain-HTTP app that trusts whatever headers it gets, like the seed tutorial's
server: it answers every request with its method, path, headers and body as JSON.
Bodies are read by Content-Length or, chunked, to their last chunk; a request whose
body ends early gets no answer and is not counted. GET /__completed lists the
paths of the requests it answered, so a test can tell that a cut body never
looked whole. The proxy tests put it behind `zt proxy`. Usage: echo_app.py PORT"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

completed = []
lock = threading.Lock()


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = b""
            while True:
                size_line = self.rfile.readline()
                if not size_line.endswith(b"\r\n"):
                    raise EOFError("the chunked body ended early")
                size = int(size_line.split(b";")[0], 16)
                chunk = self.rfile.read(size + 2)
                if len(chunk) != size + 2:
                    raise EOFError("the chunked body ended early")
                if size == 0:
                    return body
                body += chunk[:-2]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if len(body) != length:
            raise EOFError("the body ended early")
        return body

    def answer(self):
        try:
            body = self.read_body()
        except (EOFError, ValueError):
            self.close_connection = True
            return
        if self.path == "/__completed":
            with lock:
                payload = json.dumps(completed).encode()
        else:
            with lock:
                completed.append(self.path)
            headers = {}
            for name, value in self.headers.items():
                headers.setdefault(name.lower(), []).append(value)
            payload = json.dumps(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": headers,
                    "body": body.decode("utf-8", "replace"),
                }
            ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = answer

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
