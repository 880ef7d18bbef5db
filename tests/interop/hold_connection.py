"""Holds one mTLS keep-alive connection open with Python's ssl module: one GET,
then "ready" on stdout, then waits (at most 60 s) until the server closes the
connection and prints "closed" — or "timeout" if it never did. Usage:
hold_connection.py HOST PORT CERT KEY CA"""

import socket
import ssl
import sys

host, port, cert, key, ca = sys.argv[1:]
context = ssl.create_default_context(cafile=ca)
context.load_cert_chain(cert, key)
with socket.create_connection((host, int(port)), timeout=30) as tcp:
    with context.wrap_socket(tcp, server_hostname=host) as tls:
        tls.sendall(f"GET /held HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = tls.recv(4096)
            if not chunk:
                sys.exit(f"closed before an answer: {answer!r}")
            answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
        while len(body) < length:
            chunk = tls.recv(4096)
            if not chunk:
                sys.exit("closed in the middle of the body")
            body += chunk
        print("ready", head.split(b"\r\n")[0].decode(), flush=True)
        tls.settimeout(60)
        try:
            while tls.recv(4096):
                pass
        except socket.timeout:
            print("timeout", flush=True)
            sys.exit(0)
        except (ssl.SSLError, OSError):
            pass
        print("closed", flush=True)
