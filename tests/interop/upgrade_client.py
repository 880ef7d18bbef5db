"""Asks for `Upgrade: websocket` over mTLS with Python's ssl module, then sends a
line and prints what came back. Every read has a deadline and stops at the end of
the stream, so a regression fails instead of hanging. Usage: upgrade_client.py
HOST PORT CERT KEY CA"""

import socket
import ssl
import sys

host, port, cert, key, ca = sys.argv[1:]
context = ssl.create_default_context(cafile=ca)
context.load_cert_chain(cert, key)


def read_until(tls, data, marker):
    while marker not in data:
        chunk = tls.recv(4096)
        if not chunk:
            sys.exit(f"the connection ended before {marker!r}; got {data!r}")
        data += chunk
    return data


with socket.create_connection((host, int(port)), timeout=10) as tcp:
    with context.wrap_socket(tcp, server_hostname=host) as tls:
        tls.sendall(f"GET /chat HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n".encode())
        data = read_until(tls, b"", b"\r\n\r\n")
        head, _, rest = data.partition(b"\r\n\r\n")
        print(head.split(b"\r\n")[0].decode())
        greeting, _, rest = read_until(tls, rest, b"\n").partition(b"\n")
        print(greeting.decode())
        tls.sendall(b"ping over the upgraded connection\n")
        print(read_until(tls, rest, b"\n").partition(b"\n")[0].decode())
