"""Asks for `Upgrade: echo` over mTLS with Python's ssl module, then sends a line
and prints what came back. Usage: upgrade_client.py HOST PORT CERT KEY CA"""

import socket
import ssl
import sys

host, port, cert, key, ca = sys.argv[1:]
context = ssl.create_default_context(cafile=ca)
context.load_cert_chain(cert, key)
with socket.create_connection((host, int(port)), timeout=10) as tcp:
    with context.wrap_socket(tcp, server_hostname=host) as tls:
        tls.sendall(f"GET /chat HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += tls.recv(4096)
        head, _, rest = data.partition(b"\r\n\r\n")
        print(head.split(b"\r\n")[0].decode())
        while b"\n" not in rest:
            rest += tls.recv(4096)
        greeting, _, rest = rest.partition(b"\n")
        print(greeting.decode())
        tls.sendall(b"ping over the upgraded connection\n")
        while b"\n" not in rest:
            rest += tls.recv(4096)
        print(rest.partition(b"\n")[0].decode())
